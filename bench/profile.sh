#!/usr/bin/env bash
# Profiling helper for the bench misses (not part of `make bench`; run after it, as root):
#
#   bench/profile.sh [apply|convert|image|all]      (default all)
#
# On a private tmpfs, with the cached data of bench/mkdata.sh and target/release/overlayer:
#   1. syscall counts (strace -c) of overlayer apply / convert of base.tar next to GNU tar -xf;
#   2. a CPU profile with perf: hardware cycles if `perf stat -e instructions true` counts,
#      else the software cpu-clock event (works in VMs without a PMU, and, unlike callgrind, sees
#      the kernel side, which is most of the cost here), with DWARF call graphs;
#      valgrind --tool=callgrind only as the last resort: valgrind 3.19 (bookworm) does not know
#      openat2 (syscall 437), so overlayer fails under it.
# Reports go to bench/cache/profile/ (*.txt) and the top of each is printed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cache=${BENCH_CACHE:-$here/cache}
bin=${CARGO_TARGET_DIR:-$root/target}/release/overlayer
what=${1:-all}
out=$cache/profile

if [[ ${1:-} != --inner ]]; then
    for pkg in strace linux-perf; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
    done
    [[ -x $bin && -f $cache/layers.done ]] || { echo "run make bench first (binary and data)" >&2; exit 2; }
    mkdir -p "$out"
    exec unshare -m --propagation private -- "$0" --inner "$what"
fi
what=$2
t=$(mktemp -d /tmp/overlayer-profile.XXXXXX)
mount -t tmpfs -o size=8g tmpfs "$t"
trap 'cd /; umount "$t" 2>/dev/null || umount -l "$t"; rmdir "$t"' EXIT
cp "$cache"/base.tar "$cache"/base.tar.gz "$cache"/layer?.tar.gz "$t"/
cd "$t"
tarx=(tar --numeric-owner --xattrs --xattrs-include='*')

if perf stat -e instructions true 2>&1 | grep -q 'not supported'; then
    event=cpu-clock
else
    event=cycles
fi
perf record -e "$event" -o /dev/null true >/dev/null 2>&1 || event=

prof() { # name command...
    local name=$1; shift
    rm -rf o
    [[ $name != tar ]] || mkdir o
    if [[ -n $event ]]; then
        perf record -q -F 5000 -e "$event" --call-graph dwarf,16384 -o "$name.perf" "$@" >/dev/null 2>&1
        perf report -i "$name.perf" --no-children --sort dso,sym -g none --stdio 2>/dev/null |
            grep '%' | head -40 >"$out/$name.self.txt" || true
        perf report -i "$name.perf" --children --sort sym -g none --stdio 2>/dev/null |
            grep '%' | grep -E 'overlayer::|tar::|zlib_rs|std::io::copy::copy|__x64_sys|__do_sys|ksys_(read|write)' |
            head -60 >"$out/$name.children.txt" || true
        rm -f "$name.perf"
        echo "== $name: top self ($event samples; full: $out/$name.self.txt)"
        head -15 "$out/$name.self.txt"
        echo "== $name: inclusive, overlayer functions and syscalls (full: $out/$name.children.txt)"
        head -30 "$out/$name.children.txt"
    else
        valgrind --tool=callgrind --callgrind-out-file="$out/$name.callgrind" "$@" >/dev/null 2>&1 || true
        callgrind_annotate --inclusive=yes "$out/$name.callgrind" 2>/dev/null | head -60 >"$out/$name.children.txt" || true
        echo "== $name: callgrind (user space only)"; head -40 "$out/$name.children.txt"
    fi
}

sys() { # name command... ; syscall counts
    local name=$1; shift
    rm -rf o
    strace -f -c -o "$out/$name.strace.txt" "$@" >/dev/null
}

if [[ $what == all || $what == apply || $what == convert ]]; then
    sys apply "$bin" apply base.tar --out o
    sys convert "$bin" convert base.tar --out o
    rm -rf o && mkdir o && strace -f -c -o "$out/tar.strace.txt" "${tarx[@]}" -xf base.tar -C o
    echo "== syscalls for base.tar (calls): overlayer apply | overlayer convert | GNU tar -xf"
    python3 - "$out" <<'EOF'
import sys, os
d = sys.argv[1]
tabs = {}
for n in ("apply", "convert", "tar"):
    t = {}
    for line in open(os.path.join(d, n + ".strace.txt")):
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and not f[-1].startswith("total"):
            t[f[-1]] = int(f[3])
    tabs[n] = t
keys = sorted(set().union(*tabs.values()), key=lambda k: -max(t.get(k, 0) for t in tabs.values()))
for k in keys[:16]:
    print(f"  {k:14} {tabs['apply'].get(k, 0):8} {tabs['convert'].get(k, 0):8} {tabs['tar'].get(k, 0):8}")
print(f"  {'total':14} " + " ".join(f"{sum(tabs[n].values()):8}" for n in ("apply", "convert", "tar")))
EOF
fi
case $what in
all)
    prof apply "$bin" apply base.tar --out o
    prof convert "$bin" convert base.tar --out o
    prof tar "${tarx[@]}" -xf base.tar -C o
    prof image "$bin" apply base.tar.gz layer1.tar.gz layer2.tar.gz layer3.tar.gz layer4.tar.gz layer5.tar.gz --out o
    ;;
apply) prof apply "$bin" apply base.tar --out o ;;
convert) prof convert "$bin" convert base.tar --out o ;;
image) prof image "$bin" apply base.tar.gz layer1.tar.gz layer2.tar.gz layer3.tar.gz layer4.tar.gz layer5.tar.gz --out o ;;
esac
