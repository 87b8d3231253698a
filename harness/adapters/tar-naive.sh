#!/bin/sh
# The naive baseline: GNU tar -x of each layer in order, whiteouts not
# interpreted. For `overlayer check --image-format layers`.
#   tar-naive.sh LAYERS_DIR ROOTFS
set -e
mkdir "$2"
n=0
while [ -f "$1/$n.tar" ]; do
    tar -xpf "$1/$n.tar" -C "$2" --numeric-owner --xattrs --xattrs-include='*'
    n=$((n + 1))
done
