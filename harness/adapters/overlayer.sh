#!/bin/sh
# overlayer's own unpacker, for `overlayer check --image-format oci|docker-save`.
#   overlayer.sh IMAGE ROOTFS
exec "${OVERLAYER:-overlayer}" unpack "$1" --out "$2"
