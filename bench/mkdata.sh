#!/usr/bin/env bash
# Make (or reuse) the bench data in bench/cache/ (BENCH_CACHE overrides):
#   base-root/                 debootstrap --variant=minbase bookworm
#   base.tar, base.tar.gz      the base layer (GNU tar, numeric owners, xattrs, sorted names)
#   layer1..5.tar[.gz]         5 build steps on top, exported from overlay upper dirs
#   oci/                       OCI image layout of the 6 gzip layers, tag "bench" (for umoci)
# Each artefact is made once and reused; delete bench/cache (or a file in it) to remake it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${BENCH_CACHE:-$here/cache}
mirror=${BENCH_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$cache"
cd "$cache"
say() { printf '[bench-data] %s\n' "$*" >&2; }
t0=$SECONDS

if [[ ! -f base-root.done ]]; then
    say "debootstrap --variant=minbase bookworm (log: $cache/debootstrap.log)"
    rm -rf base-root base-root.tmp
    debootstrap --variant=minbase bookworm base-root.tmp "$mirror" >debootstrap.log 2>&1 ||
        { tail -20 debootstrap.log >&2; exit 1; }
    mv base-root.tmp base-root
    touch base-root.done
    rm -f base.tar base.tar.gz layers.done
fi

if [[ ! -f base.tar.gz ]]; then
    say "packing base.tar and base.tar.gz"
    tar --numeric-owner --xattrs --xattrs-include='*' --sort=name -C base-root -cf base.tar.tmp .
    gzip -n -6 -c base.tar.tmp >base.tar.gz.tmp
    mv base.tar.tmp base.tar
    mv base.tar.gz.tmp base.tar.gz
    rm -f layers.done
fi

if [[ ! -f layers.done ]]; then
    say "building the 5 layers on top (overlay + chroot, inside unshare -m)"
    rm -f layer*.tar layer*.tar.gz layer*.tar.tmp
    unshare -m --propagation private -- "$here/build-image.sh" "$cache/base-root" "$cache"
    for n in 1 2 3 4 5; do gzip -n -6 -c "layer$n.tar" >"layer$n.tar.gz"; done
    touch layers.done
    rm -rf oci
fi

if [[ ! -f oci/index.json ]]; then
    say "writing the OCI image layout oci/ (tag bench)"
    rm -rf oci oci.tmp
    python3 "$here/oci-layout.py" oci.tmp bench base.tar.gz layer{1,2,3,4,5}.tar.gz
    mv oci.tmp oci
fi

# What the layers hold: the image is only a fair test if whiteouts and opaque markers are there.
if [[ -s counts.txt && counts.txt -nt layers.done ]]; then
    cat counts.txt >&2
    say "data ready in $cache (reused)"
    exit 0
fi
python3 - base.tar layer{1,2,3,4,5}.tar >counts.txt.tmp <<'EOF'
import os, sys, tarfile
tot = [0, 0, 0, 0]
for p in sys.argv[1:]:
    n = wh = opq = hl = 0
    with tarfile.open(p) as t:
        for m in t:
            n += 1
            b = os.path.basename(m.name.rstrip("/"))
            if b == ".wh..wh..opq": opq += 1
            elif b.startswith(".wh."): wh += 1
            if m.islnk(): hl += 1
    gz = os.path.getsize(p + ".gz")
    print(f"[bench-data] {p:11} {os.path.getsize(p)/1e6:7.1f} MB  gz {gz/1e6:6.1f} MB  "
          f"{n:6} entries  {wh:5} whiteouts  {opq:2} opaque  {hl:3} hardlinks")
    for i, v in enumerate((n, wh, opq, hl)): tot[i] += v
if tot[1] == 0 or tot[2] == 0:
    sys.exit("bench data: the layers have no whiteouts or no opaque marker; delete bench/cache and remake")
EOF
mv counts.txt.tmp counts.txt
cat counts.txt >&2
say "data ready in $cache ($((SECONDS - t0)) s)"
