#!/usr/bin/env bash
# The whole test suite: installs prerequisites, builds the image, runs every test including the
# end-to-end boot in QEMU. Run as root on Debian 12.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
install_prereqs
build_image
cd "$REPO"
log "checking formatting (cargo fmt --check)"
cargo fmt --all --check
log "linting (cargo clippy -D warnings)"
cargo clippy --locked --workspace --all-targets -- -D warnings
log "running the test suite"
cargo test --locked --workspace --no-fail-fast -- --nocapture 2>&1
log "fuzzing the decoders and patch engines (scripts/fuzz.sh, ${FUZZ_SECONDS:-30}s a target)"
"$REPO/scripts/fuzz.sh"
