#!/usr/bin/env bash
# Entry point of `make vm-test`: boot Debian kernels in QEMU and run the
# overlayer harness in each, then natively on the host kernel.
#
#   vm/vm-test.sh [overlayer-vm options...]
#
# Environment (all optional; see vm/README.md):
#   VM_KERNELS     kernels to boot (default "5.10,6.1,6.12,7.2")
#   VM_PROP_CASES  generated stacks per kernel (default 3000)
#   VM_ROUNDTRIP_CASES  round-trip stacks per kernel (default 1000)
#   VM_TIMEOUT     per-kernel timeout in seconds
#   VM_OVERLAYER   use this overlayer binary instead of building it
#   VM_SHELL=1     busybox sh on the guest console instead of the tests
#   VM_ACCEL, VM_SEED, VM_JSON, VM_VERBOSE, VM_MEMORY, VM_CPUS, VM_STEPS
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cd "$root"

say() { printf '[vm-test] %s\n' "$*" >&2; }

# Host packages: QEMU, a static busybox, and the module decompressors
# (overlayer-vm checks the tools again and installs anything still missing).
need=()
for pkg in qemu-system-x86 busybox-static xz-utils zstd; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
if [[ -z ${VM_OVERLAYER:-} ]]; then
    say "building the static overlayer binary"
    RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --target x86_64-unknown-linux-gnu -p overlayer-harness
    export VM_OVERLAYER=$target_dir/x86_64-unknown-linux-gnu/release/overlayer
fi

say "building overlayer-vm"
cargo build -q -p overlayer-vm
exec "$target_dir/debug/overlayer-vm" "$@"
