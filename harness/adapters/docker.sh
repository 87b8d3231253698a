#!/bin/sh
# Docker (moby, Debian package `docker.io`), for `overlayer check
# --image-format docker-save`: starts a private dockerd (and its own
# containerd) with the given storage driver in a temporary directory under
# /var/tmp (no networking, no host state), `docker load`s the archive, and
# copies out the image's filesystem as the storage driver stacks it:
#  - overlay2: the image's layer directories (`GraphDriver` UpperDir:LowerDir)
#    are mounted read-only with the options dockerd uses (`index=off`), the
#    lower part of every container's mount, and copied with `cp -a` (owners,
#    modes, times, hardlinks, all xattrs). A one-layer image gets an empty
#    directory below it (overlayfs needs two read-only layers).
#  - vfs: the top layer's directory (a complete copy) is moved out.
# A container adds docker's init layer (/etc/hosts, /.dockerenv, ...) and its
# writable layer on top; both come from docker, not from the image, and are
# left out. `docker export` is not used: it keeps only the
# security.capability xattr and adds the init layer's files. dockerd runs
# in its own mount namespace with a tmpfs on /run, because dockerd 20.10
# always creates /run/docker/plugins whatever --exec-root says.
#   docker.sh overlay2|vfs IMAGE ROOTFS
set -eu
driver=$1 image=$2 rootfs=$3
base=$(mktemp -d /var/tmp/ovl-docker-XXXXXX)
sock=$base/docker.sock
ctd_pid='' dockerd_pid='' mnt=''
d() { /usr/bin/docker --host "unix://$sock" "$@"; }
stop() { # PID: SIGTERM, then SIGKILL after 5 s
    [ -n "$1" ] || return 0
    kill -TERM "$1" 2>/dev/null || return 0
    i=0
    while kill -0 "$1" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
cleanup() {
    trap '' INT TERM
    [ -z "$mnt" ] || umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    stop "$dockerd_pid"
    stop "$(cat "$base/dockerd.pid" 2>/dev/null)"
    stop "$ctd_pid"
    # anything the drivers left mounted below the private directory
    grep -o " $base/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$base"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir "$base/empty" "$base/mnt"
cat >"$base/containerd.toml" <<EOF
version = 2
root = "$base/containerd/root"
state = "$base/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$base/containerd.sock"
[ttrpc]
  address = "$base/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$base/containerd/opt"
EOF
# the daemon.json replaces /etc/docker/daemon.json; the trust key would
# otherwise be created as /etc/docker/key.json
printf '{"deprecated-key-path": "%s"}\n' "$base/key.json" >"$base/daemon.json"
: >"$base/dockerd.log"
/usr/bin/containerd --config "$base/containerd.toml" >"$base/containerd.log" 2>&1 &
ctd_pid=$!
unshare --mount --propagation private /bin/sh -c 'mount -t tmpfs -o mode=0755 tmpfs /run && exec "$@"' \
    sh /usr/sbin/dockerd --config-file "$base/daemon.json" --containerd "$base/containerd.sock" \
    --data-root "$base/data" --exec-root "$base/exec" --pidfile "$base/dockerd.pid" \
    --host "unix://$sock" --storage-driver "$driver" --bridge=none --iptables=false \
    --ip6tables=false --ip-forward=false --ip-masq=false --userland-proxy=false \
    --oom-score-adjust=0 --exec-opt native.cgroupdriver=cgroupfs >"$base/dockerd.log" 2>&1 &
dockerd_pid=$!
i=0
until grep -q 'API listen on' "$base/dockerd.log"; do
    if ! kill -0 "$dockerd_pid" 2>/dev/null || [ $i -ge 600 ]; then
        echo "dockerd did not start: $(grep -E 'level=(error|fatal)|failed' "$base/dockerd.log" | tail -n1)" >&2
        exit 1
    fi
    sleep 0.05
    i=$((i + 1))
done
if ! d load --quiet --input "$image" >"$base/load.out" 2>"$base/load.err"; then
    # vfs reports on two lines ("ApplyLayer MESSAGE stdout: ...", " stderr: ")
    echo "docker refused the image: $(tr -s '\n' ' ' <"$base/load.err")" >&2
    exit 1
fi
id=$(d image ls --all --quiet --no-trunc | head -n1)
if [ "$driver" = vfs ]; then
    # vfs keeps each layer as a full directory, found by the top layer's
    # chain ID: chain(n) = sha256(chain(n-1) + " " + diff(n))
    chain=''
    for diff in $(d image inspect --format '{{range .RootFS.Layers}}{{.}} {{end}}' "$id"); do
        if [ -z "$chain" ]; then chain=$diff; else
            chain=sha256:$(printf '%s %s' "$chain" "$diff" | sha256sum | cut -d' ' -f1)
        fi
    done
    cache=$(cat "$base/data/image/vfs/layerdb/sha256/${chain#sha256:}/cache-id")
    mv "$base/data/vfs/dir/$cache" "$rootfs"
    exit 0
fi
upper=$(d image inspect --format '{{.GraphDriver.Data.UpperDir}}' "$id")
lower=$(d image inspect --format '{{with .GraphDriver.Data.LowerDir}}{{.}}{{end}}' "$id")
opts=ro,lowerdir=$upper:${lower:-$base/empty}
[ ! -e /sys/module/overlay/parameters/index ] || opts=index=off,$opts
mount -t overlay overlay -o "$opts" "$base/mnt"
mnt=$base/mnt
if ! { mkdir "$rootfs" && cp -a "$mnt/." "$rootfs/"; } 2>"$base/cp.err"; then
    # A container would see the same listing: say so, don't hide it.
    echo "docker's image mount lists names that cannot be read (e.g. raw whiteouts):" \
        "$(head -n1 "$base/cp.err")" >&2
    exit 1
fi
