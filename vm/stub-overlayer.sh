#!/bin/sh
# A stand-in for the overlayer binary, for testing the VM machinery only
# (boot, module loading, frames, report) when the harness does not build:
# it answers each step with well-formed JSON and checks nothing.
json=""
prev=""
for a in "$@"; do
    [ "$prev" = "--json" ] && json=$a
    prev=$a
done
out() { if [ -n "$json" ]; then echo "$1" >"$json"; else echo "$1"; fi; }
case "$1" in
probe) out "{\"kernel\":\"$(uname -r)\",\"overlay\":true,\"userxattr\":false,\"xwhiteouts\":false,\"lowerdir_plus\":false}" ;;
replay) out '{"total":0,"passed":0,"failed":0,"skipped":0,"cases":[]}' ;;
prop) out '{"cases":0,"passed":0,"failed":0,"kernel":true,"mounted":0,"refused":{},"seconds":0.0,"stacks_per_second":0.0,"seed":1}' ;;
*) echo "stub-overlayer: unknown command $1" >&2; exit 2 ;;
esac
