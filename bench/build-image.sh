#!/usr/bin/env bash
# Bench helper: build a 5-step image on top of the debootstrap base the way image builders do,
# one writable overlay per step (lowerdir = the merged lower layers, upperdir/workdir on tmpfs),
# real work in a chroot, then export each step's upper dir as an OCI layer tar
# (bench/export-upper.py). Run by bench/mkdata.sh inside `unshare -m`, so every mount made here
# vanishes with the process.
#
#   build-image.sh BASE_ROOTFS OUTDIR     -> OUTDIR/layer1.tar ... layer5.tar
set -euo pipefail

base=$1
out=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
say() { printf '[bench-data] %s\n' "$*" >&2; }

[[ $(findmnt -n -o PROPAGATION / 2>/dev/null) == private ]] ||
    { echo "build-image.sh: run me inside unshare -m" >&2; exit 2; }

work=$(mktemp -d /tmp/overlayer-bench-image.XXXXXX)
mount -t tmpfs -o size=4g,mode=0755 bench-image "$work"
trap 'umount -R "$work" 2>/dev/null || true; rmdir "$work" 2>/dev/null || true' EXIT

# The steps. Each runs with /bin/sh -e in the chroot of the merged view of all layers so far.
read -r -d '' CLEAN <<'EOF' || true
rm -rf /usr/share/doc/* /usr/share/man/* /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/log/apt/eipp.log.xz
EOF

steps=()
# 1: install curl (with its libraries and the CA store); drop the docs of the base (whiteouts).
steps+=("
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null
$CLEAN
")
# 2: install python3-minimal and less; an application directory with compiled bytecode.
steps+=("
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends python3-minimal less >/dev/null
mkdir -p /opt/app/lib /opt/app/static
echo 1.0 > /opt/app/VERSION
printf 'import lib.util\nprint(lib.util.hello())\n' > /opt/app/main.py
printf 'def hello():\n    return \"v1\"\n' > /opt/app/lib/util.py
touch /opt/app/lib/__init__.py
for i in \$(seq 1 50); do head -c 4096 /dev/urandom > /opt/app/static/blob\$i.bin; done
python3 -m compileall -q /opt/app
$CLEAN
")
# 3: replace the application directory and the apt log directory wholesale (rm -rf + mkdir: the
#    upper holds opaque directories), delete some base files (whiteouts).
steps+=("
rm -rf /opt/app
mkdir -p /opt/app/lib
echo 2.0 > /opt/app/VERSION
printf 'import lib.core\nprint(lib.core.hello())\n' > /opt/app/main.py
printf 'def hello():\n    return \"v2\"\n' > /opt/app/lib/core.py
touch /opt/app/lib/__init__.py
rm -rf /var/log/apt
mkdir /var/log/apt
echo 'rebuilt' > /var/log/apt/history.log
rm -f /etc/motd /etc/issue.net
rm -rf /usr/share/locale/*
")
# 4: purge less (installed in step 2), install procps instead.
steps+=("
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get purge -y -qq less >/dev/null
apt-get install -y -qq --no-install-recommends procps >/dev/null
$CLEAN
")
# 5: a service user, ownership, a hardlink and an xattr in the application; remove curl's
#    leftovers and old dpkg/debconf backups.
steps+=("
useradd -r -u 999 -d /opt/app -s /usr/sbin/nologin app
chown -R app:app /opt/app
ln /opt/app/main.py /opt/app/run.py
python3 -c \"import os; os.setxattr('/opt/app/main.py', 'user.bench', b'layer5')\"
rm -f /var/cache/debconf/*-old /var/lib/dpkg/*-old
rm -rf /usr/share/common-licenses /usr/share/info
")

lowers=$base
for i in "${!steps[@]}"; do
    n=$((i + 1))
    up=$work/up$n wk=$work/wk$n mnt=$work/mnt$n
    mkdir -p "$up" "$wk" "$mnt"
    mount -t overlay overlay \
        -o "lowerdir=$lowers,upperdir=$up,workdir=$wk,redirect_dir=off,metacopy=off,index=off,xino=off" "$mnt"
    mount -t proc proc "$mnt/proc"
    mount -t devpts -o newinstance,ptmxmode=0666 devpts "$mnt/dev/pts"
    mount --bind /etc/resolv.conf "$mnt/etc/resolv.conf"
    say "step $n: building"
    chroot "$mnt" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 /bin/sh -ec "${steps[$i]}"
    umount "$mnt/etc/resolv.conf"
    umount "$mnt/dev/pts"
    umount "$mnt/proc"
    umount "$mnt"
    say "step $n: exporting $(du -sh "$up" | cut -f1) upper dir: $(python3 "$here/export-upper.py" "$up" "$out/layer$n.tar.tmp")"
    mv "$out/layer$n.tar.tmp" "$out/layer$n.tar"
    lowers=$up:$lowers
done
