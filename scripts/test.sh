#!/usr/bin/env bash
# The whole test suite: installs prerequisites, builds the image, runs every test including the
# end-to-end boot in QEMU. Run as root on Debian 12.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
install_prereqs
build_image
log "running the test suite"
cd "$REPO"
cargo test --locked --workspace --no-fail-fast -- --nocapture 2>&1
