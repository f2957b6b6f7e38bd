#!/usr/bin/env bash
# Coverage-guided fuzzing of the API's decoders and patch engines (JSON, YAML and protobuf bodies;
# JSON, merge and strategic merge patches) and of the credential parsers (service-account tokens,
# client certificates) with cargo-fuzz and libFuzzer, each for a bounded time.
# A crash fails the run and leaves its input under fuzz/artifacts/<target>/.
#   FUZZ_SECONDS (default 30): how long each target runs.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SECONDS_EACH="${FUZZ_SECONDS:-30}"
TOOLS="$REPO/target/tools"
CARGO_FUZZ="$TOOLS/bin/cargo-fuzz"
if [ "$("$CARGO_FUZZ" --version 2>/dev/null)" != "cargo-fuzz 0.13.2" ]; then
    log "installing cargo-fuzz 0.13.2 into $TOOLS"
    cargo install --locked --quiet cargo-fuzz --version 0.13.2 --root "$TOOLS"
fi
# libFuzzer's instrumentation flags are unstable rustc options; the one stable toolchain takes
# them with RUSTC_BOOTSTRAP. No sanitizer: the code under test is safe Rust, and debug
# assertions (overflow checks included) stay on.
export RUSTC_BOOTSTRAP=1
FUZZ=("$CARGO_FUZZ" --sanitizer none --target-dir "$REPO/target/fuzz" -O)
cd "$REPO/fuzz"
log "building the fuzz targets"
"${FUZZ[0]}" build "${FUZZ[@]:1}"
for t in $("${FUZZ[0]}" list); do
    corpus="$REPO/target/fuzz-corpus/$t"
    mkdir -p "$corpus"
    log "fuzzing $t for ${SECONDS_EACH}s"
    "${FUZZ[0]}" run "${FUZZ[@]:1}" "$t" "$corpus" "seeds/$t" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 \
        | grep -v '^#[0-9]' || { echo "fuzz target $t failed: its input is under fuzz/artifacts/$t/" >&2; exit 1; }
done
