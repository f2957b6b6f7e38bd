#!/usr/bin/env bash
# The main job: build everything, boot a one-node Strake cluster in QEMU (TCG; set
# STRAKE_QEMU_ACCEL=kvm to opt into KVM), wait until it is ready, write a kubeconfig and print
# how to use it. Extra arguments go to `strakectl cluster up` (e.g. --api-port 7443).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
install_prereqs
build_image
cd "$REPO"
./target/debug/strakectl cluster down --state-dir "$REPO/.cache/cluster" >/dev/null 2>&1 || true
log "booting the cluster"
./target/debug/strakectl cluster up --image "$IMAGE_DIR" --state-dir "$REPO/.cache/cluster" "$@"
echo "kubectl: $KUBECTL (any kubectl 1.32 works)"
