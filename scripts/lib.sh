# Shared steps of the two README commands. Sourced, not run.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET=x86_64-unknown-linux-gnu
STRAKE_BIN="$REPO/target/$TARGET/release/strake"
IMAGE_DIR="$REPO/build/image"
KUBECTL="${STRAKE_KUBECTL:-/usr/lib/google-cloud-sdk/bin/kubectl.1.32}"
# Incremental state is gigabytes that a fresh checkout never reuses; set it to 1 when iterating.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Each step says how far into the run it starts (bash's SECONDS), so a slow phase shows.
log() { printf '\n==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }

# Debian packages the build, the VM and the tests need.
install_prereqs() {
    if [ "$(id -u)" != 0 ]; then
        echo "run this as root: it installs packages, mounts overlays and runs containers" >&2
        exit 1
    fi
    local pkgs=(qemu-system-x86 docker-registry busybox-static kmod zstd ca-certificates iproute2 e2fsprogs mtools ovmf systemd-boot-efi qemu-utils xorriso isolinux syslinux-common binutils)
    # Twice: installing one package can remove another that was there (a newer qemu-utils
    # from elsewhere conflicts with Debian's qemu-system-x86), and the second pass puts it back.
    local missing pass
    for pass in 1 2 3; do
        missing=()
        for p in "${pkgs[@]}"; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
        done
        [ "${#missing[@]}" -eq 0 ] && break
        if [ "$pass" = 3 ]; then
            echo "these Debian packages would not stay installed: ${missing[*]}" >&2
            exit 1
        fi
        log "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    done
    # The registry must not run as a system service on a port we did not pick.
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
    command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (1.95) first" >&2; exit 1; }
    [ -x "$KUBECTL" ] || { echo "$KUBECTL not found: kubectl 1.32 is needed (set STRAKE_KUBECTL)" >&2; exit 1; }
    install_python_clients
}

# The Python clients the API tests drive (the official client, lightkube, kopf), pinned, in a
# virtualenv under .cache so the host's Python is left alone.
PY_CLIENTS="$REPO/.cache/pyclients"
install_python_clients() {
    local want="kubernetes==37.0.2 lightkube==1.0.1 kopf==1.45.2"
    if [ -x "$PY_CLIENTS/bin/python3" ] && [ "$(cat "$PY_CLIENTS/.installed" 2>/dev/null)" = "$want" ]; then
        return
    fi
    log "installing the Python API clients into $PY_CLIENTS: $want"
    command -v python3 >/dev/null || { echo "python3 not found: the API client tests need CPython 3" >&2; exit 1; }
    rm -rf "$PY_CLIENTS"
    python3 -m venv "$PY_CLIENTS"
    # shellcheck disable=SC2086
    "$PY_CLIENTS/bin/pip" install --quiet --disable-pip-version-check $want
    echo "$want" > "$PY_CLIENTS/.installed"
}

# The static strake binary, strakectl, and the boot image (kernel package fetched and verified).
build_image() {
    log "building the static strake binary (release, $TARGET)"
    # Each step checks its own status: errexit does not apply inside a function called from
    # an && list, and a stale strakectl must never build the image.
    (cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --release --target "$TARGET" -p strake) || return 1
    log "building strakectl"
    (cd "$REPO" && cargo build --locked -p strakectl) || return 1
    log "building the boot image into $IMAGE_DIR"
    (cd "$REPO" && ./target/debug/strakectl image build --strake "$STRAKE_BIN" --out "$IMAGE_DIR" --cache "$REPO/.cache") || return 1
    ls -l "$IMAGE_DIR" >&2
}
