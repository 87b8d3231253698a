#!/bin/sh
# umoci (Debian package `umoci`), for `overlayer check --image-format oci`:
# unpacks the `latest` tag into a bundle and moves its rootfs into place.
#   umoci.sh OCI_LAYOUT ROOTFS
set -e
bundle="$2.bundle"
umoci unpack --image "$1:latest" "$bundle" >/dev/null
mv "$bundle/rootfs" "$2"
rm -rf "$bundle"
