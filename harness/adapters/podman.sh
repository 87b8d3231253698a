#!/bin/sh
# containers-storage through podman (Debian package `podman`), for
# `overlayer check --image-format oci` or `--image-format docker-save`:
# loads the image into a private store with the given storage driver,
# mounts it with `podman image mount`, and copies the mounted tree (what a
# container would see) to ROOTFS with `cp -a` (owners, modes, times,
# hardlinks, xattrs); with vfs the mounted directory itself is moved there.
#   podman.sh overlay|vfs IMAGE ROOTFS
set -eu
driver=$1 image=$2 rootfs=$3
# podman names an `oci:` image after its path, which must be lowercase
store=/var/tmp/ovl-podman-$$-$(date +%N)
mkdir -m 0700 "$store"
p() {
    podman --root "$store/root" --runroot "$store/run" --storage-driver "$driver" \
        --events-backend none --cgroup-manager cgroupfs "$@"
}
cleanup() {
    p image unmount --all >/dev/null 2>&1 || true
    p rmi --all --force >/dev/null 2>&1 || true
    # the overlay driver leaves its own mounts under the store
    grep -o " $store/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$store"
}
trap cleanup EXIT INT TERM
if [ -d "$image" ]; then
    ln -s "$(realpath "$image")" "$store/image"
    id=$(p pull --quiet "oci:$store/image:latest")
else
    p load --quiet --input "$image" >/dev/null
    id=$(p images --quiet | head -n1)
fi
mnt=$(p image mount "$id")
if [ "$driver" = vfs ]; then
    # vfs "mounts" the top layer's complete directory: move it out of the
    # (discarded) store, so no copied path grows past PATH_MAX.
    mv "$mnt" "$rootfs"
elif ! { mkdir "$rootfs" && cp -a "$mnt/." "$rootfs/"; } 2>"$store/cp.err"; then
    # A container would see the same listing: say so, don't hide it.
    echo "podman's mounted image lists names that cannot be read (e.g. raw whiteouts):" \
        "$(head -n1 "$store/cp.err")" >&2
    exit 1
fi
