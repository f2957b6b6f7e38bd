#!/usr/bin/env bash
# Runs the HA lab (tests/tests/ha.rs) RUNS times (default 3) and prints, for every measurement
# it takes (failover times, write gaps, replacement and restore times, resident memory), the
# median and the worst over the runs. Needs what the test command needs: run scripts/test.sh
# once first (it builds the image and installs the prerequisites), as root.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-${RUNS:-3}}"
report="$(mktemp /tmp/strake-ha-bench.XXXXXX)"
trap 'rm -f "$report"' EXIT
cargo build --locked -p strakectl
for i in $(seq 1 "$runs"); do
  echo "==> HA lab run $i of $runs" >&2
  STRAKE_HA_REPORT="$report" cargo test --locked -p strake-e2e --test ha -- --nocapture 2>&1 |
    grep '^ha:' >&2
done
python3 - "$report" "$runs" <<'PY'
import json, sys, statistics
from collections import OrderedDict
values = OrderedDict()
for line in open(sys.argv[1]):
    m = json.loads(line)
    values.setdefault(m["metric"], []).append(m["value"])
print(f"HA lab, {sys.argv[2]} runs (3 control planes with 1 vCPU and 768 MiB each, TCG)")
print(f"{'measurement':<50} {'n':>3} {'p50':>8} {'max':>8}")
for metric, vs in values.items():
    print(f"{metric:<50} {len(vs):>3} {statistics.median(vs):>8.2f} {max(vs):>8.2f}")
PY
