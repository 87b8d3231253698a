#!/usr/bin/env bash
# Entry point of `make bench` (root, Debian): install the tools, build the release binary, make or
# reuse the data in bench/cache/, measure on a private tmpfs, print the table, write bench/results.md.
#
# Environment: BENCH_RUNS (default 5), BENCH_VM=1 (also run vm/vm-test.sh and report its boot and
# total times; slow), BENCH_CACHE (data directory), BENCH_MIRROR (Debian mirror for debootstrap and
# the image build steps: only the base's sources.list is used by apt in the chroot).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cd "$root"
say() { printf '[bench] %s\n' "$*" >&2; }
t0=$SECONDS

[[ $(id -u) == 0 ]] || { echo "bench: run as root (debootstrap, chroot, mounts)" >&2; exit 2; }

need=()
for pkg in debootstrap umoci time gzip tar python3 util-linux strace linux-perf; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi
grep -qw overlay /proc/filesystems || modprobe overlay

say "building the release binary"
target_dir=${CARGO_TARGET_DIR:-$root/target}
for try in 1 2 3 4 5 6; do
    cargo build --release -q -p overlayer-harness && break
    ((try < 6)) || exit 1
    say "cargo build failed (try $try); retrying in 20 s"
    sleep 20
done

"$here/mkdata.sh"
t1=$SECONDS

unshare -m --propagation private -- /usr/bin/python3 "$here/run.py" \
    --bin "$target_dir/release/overlayer" --cache "${BENCH_CACHE:-$here/cache}" \
    --results "$here/results.md" --json "${BENCH_CACHE:-$here/cache}/results.json"
say "done in $((SECONDS - t0)) s (data $((t1 - t0)) s, measurements $((SECONDS - t1)) s)"
