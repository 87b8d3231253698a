#!/bin/sh
# containerd (Debian package `containerd`), for `overlayer check --image-format oci`
# or `--image-format docker-save`: starts a private containerd (own root, state,
# socket; CRI and unused snapshotters off), `ctr images import`s the image
# (an OCI layout is tarred first; it is named `ovl/image:latest`) and unpacks it
# with the given snapshotter, then prepares a container's snapshot on the top
# chain id (`ctr snapshots prepare`), i.e. what a container would see.
# overlayfs: its mount is applied and the tree copied to ROOTFS with `cp -a`
# (owners, modes, times, hardlinks, xattrs); native: the prepared snapshot is
# containerd's own copy of the top layer's tree, and that directory is moved there.
# The daemon is stopped and its directories removed on any exit.
#   containerd.sh overlayfs|native IMAGE ROOTFS
set -eu
snapshotter=$1 image=$2 rootfs=$3
store=/var/tmp/ovl-containerd-$$-$(date +%N)
pid=
mkdir -m 0700 "$store"
c() { ctr --address "$store/sock" --namespace ovl "$@"; }
s() { c snapshots --snapshotter "$snapshotter" "$@"; }
cleanup() {
    trap '' INT TERM # a signal must not cut the cleanup short
    set +e           # nor a failing step
    mountpoint -q "$store/mnt" && umount "$store/mnt"
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    fi
    # containerd's temporary mounts (tmpmounts/) and ours, deepest first
    grep -o " $store/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$store"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
# The daemon died: pass on its Go crash report (so check sees a crash), or its last error.
died() {
    if grep -q '^panic: \|^fatal error: ' "$store/containerd.log"; then
        sed -n '/^panic: \|^fatal error: /,$p' "$store/containerd.log" >&2
    else
        echo "containerd exited: $(grep 'level=\(error\|fatal\)' "$store/containerd.log" | tail -n1)" >&2
    fi
    exit 1
}
# Fail with ctr's one-line error, unless the daemon itself went away.
refused() {
    kill -0 "$pid" 2>/dev/null || died
    echo "containerd ($snapshotter) $1: $(tail -n1 "$store/ctr.err")" >&2
    exit 1
}
cat >"$store/config.toml" <<EOF
version = 2
root = "$store/root"
state = "$store/state"
temp = "$store/tmp"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$store/sock"
[ttrpc]
  address = "$store/sock.ttrpc"
EOF
mkdir "$store/tmp" "$store/mnt"
containerd --config "$store/config.toml" </dev/null >"$store/containerd.log" 2>&1 &
pid=$!
i=0
until c version >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || died
    i=$((i + 1))
    if [ $i -gt 200 ]; then
        echo "containerd did not answer on $store/sock within 10 s" >&2
        exit 1
    fi
    sleep 0.05
done
if [ -d "$image" ]; then
    tar -C "$image" -cf "$store/image.tar" .
    set -- --base-name ovl/image "$store/image.tar"
else
    set -- "$image"
fi
c images import --snapshotter "$snapshotter" "$@" >/dev/null 2>"$store/ctr.err" ||
    refused "refused the image"
# The one chain in this fresh store: its top is the snapshot no other names as parent.
s ls >"$store/snapshots" 2>"$store/ctr.err" || refused "cannot list snapshots"
top=$(awk 'NR > 1 { key[$1] = 1; if (NF == 3) parent[$2] = 1 }
    END { for (k in key) if (!(k in parent)) print k }' "$store/snapshots")
if [ -z "$top" ]; then
    mkdir "$rootfs" # no layers: an empty root
    exit 0
fi
# `prepare` (a container's writable snapshot) labels it containerd.io/gc.root;
# a `view` has no label and containerd's garbage collector may remove it at once.
s prepare rootfs "$top" >/dev/null 2>"$store/ctr.err" || refused "cannot prepare a snapshot of the image"
# e.g. `mount -t overlay overlay TARGET -o …,upperdir=…` or `mount -t bind SRC TARGET -o rbind,rw`
s mounts "$store/mnt" rootfs >"$store/mounts" 2>"$store/ctr.err" || refused "has no mounts for the snapshot"
if [ "$(wc -l <"$store/mounts")" -ne 1 ]; then
    echo "containerd ($snapshotter) gave more than one mount for the snapshot: $(tr '\n' ' ' <"$store/mounts")" >&2
    exit 1
fi
read -r _ _ type source target _ options <"$store/mounts"
if [ "$type" = bind ]; then
    # native: the snapshot is a complete directory; move it out of the (discarded)
    # store, so no copied path grows past PATH_MAX.
    mv "$source" "$rootfs"
    exit 0
fi
mount -t "$type" -o "$options" "$source" "$target"
if ! { mkdir "$rootfs" && cp -a "$store/mnt/." "$rootfs/"; } 2>"$store/cp.err"; then
    # A container would see the same listing: say so, don't hide it.
    echo "containerd's mounted snapshot lists names that cannot be read (e.g. raw whiteouts):" \
        "$(head -n1 "$store/cp.err")" >&2
    exit 1
fi
