#!/bin/busybox sh
# Guest /init written into the initramfs by overlayer-vm (vm/src/init.sh).
#
# Results leave the guest as framed lines "@@OVERLAYER@@ <kind> <payload>"
# on /dev/ttyS1, a serial port used only for them (QEMU connects it to a
# socket of the host runner); when that port is missing they go to the
# console instead. Human-readable progress goes to the console (ttyS0).
#
# Settings come from the kernel command line, which the kernel hands to init
# as environment variables:
#   OVL_PROP_CASES       generated stacks for `overlayer prop` (set by the host)
#   OVL_ROUNDTRIP_CASES  generated stacks for `overlayer prop --mode roundtrip`,
#                        and for each of `--mode write` and `--mode write-redirect`
#   OVL_SEED             seed for both (set by the host)
#   OVL_STEPS            comma-separated steps to run
#                        (default probe,replay,prop,roundtrip,write,write-redirect)
#   OVL_SHELL=1          drop into busybox sh on the console instead of the steps

/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root RUST_BACKTRACE=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp

OUT=/dev/console
if stty -F /dev/ttyS1 raw -echo 2>/dev/null; then
    OUT=/dev/ttyS1
fi

frame() { echo "@@OVERLAYER@@ $1 $2" >"$OUT"; }
say() { echo "overlayer-vm: $*" >/dev/console; }
uptime_s() { read -r up _ </proc/uptime; echo "$up"; }
# Text made safe to put between JSON quotes.
jstr() { printf '%s' "$1" | tr '\n\t' '  ' | tr -d '\000-\037' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }

boot=$(uptime_s)
frame boot "{\"uptime\":$boot,\"kernel\":\"$(uname -r)\"}"
say "init started $boot s after boot (kernel $(uname -r))"

while read -r mod; do
    [ -n "$mod" ] || continue
    name=$(basename "$mod" .ko)
    name=${name#[0-9][0-9]-}
    if err=$(insmod "$mod" 2>&1); then
        frame insmod "{\"module\":\"$name\",\"ok\":true}"
    else
        frame insmod "{\"module\":\"$name\",\"ok\":false,\"error\":\"$(jstr "$err")\"}"
        say "insmod $mod failed: $err"
    fi
done </etc/overlayer/modules

if grep -qw overlay /proc/filesystems; then
    overlay=true
else
    overlay=false
fi
frame overlay "{\"available\":$overlay}"

finish() {
    frame done "{\"uptime\":$(uptime_s)}"
    sync
    # isa-debug-exit at 0xf4: QEMU exits with status (0x10 << 1) | 1 = 33,
    # which tells the host the guest finished on purpose.
    printf '\020' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    poweroff -f
}

if [ "$OVL_SHELL" = 1 ]; then
    say "VM_SHELL=1: busybox sh on the console; the steps would be:"
    say "  overlayer probe --json"
    say "  overlayer replay /cases --json /tmp/replay.json"
    say "  overlayer prop --cases ${OVL_PROP_CASES:-300} --seed ${OVL_SEED:-1} --json /tmp/prop.json"
    say "  overlayer prop --mode roundtrip --cases ${OVL_ROUNDTRIP_CASES:-300} --seed ${OVL_SEED:-1} --json /tmp/roundtrip.json"
    say "  overlayer prop --mode write --cases ${OVL_ROUNDTRIP_CASES:-300} --seed ${OVL_SEED:-1} --json /tmp/write.json"
    say "  overlayer prop --mode write-redirect --cases ${OVL_ROUNDTRIP_CASES:-300} --seed ${OVL_SEED:-1} --json /tmp/write-redirect.json"
    say "exit the shell (or Ctrl-A X) to power off"
    setsid cttyhack sh -l
    finish
fi

# run_step NAME JSON_FILE CMD... : run CMD, send the JSON it wrote (JSON_FILE,
# or its stdout when JSON_FILE is empty) as a NAME frame; when it fails, the
# minimal failing stack `overlayer prop` prints on stdout and the tail of its
# stderr as log frames; and its status as an exit frame.
run_step() {
    step=$1
    json=$2
    shift 2
    say "running $*"
    t0=$(uptime_s)
    "$@" >"/tmp/$step.out" 2>"/tmp/$step.err"
    rc=$?
    t1=$(uptime_s)
    src=${json:-/tmp/$step.out}
    if [ -s "$src" ]; then
        { printf '@@OVERLAYER@@ %s ' "$step"; tr '\n' ' ' <"$src"; echo; } >"$OUT"
    fi
    if [ "$rc" != 0 ]; then
        if [ -n "$json" ]; then
            sed -n '/^minimal failing stack:/,$p' "/tmp/$step.out" | head -n 300 |
                while IFS= read -r line; do
                    frame log "$step: $line"
                done
        fi
        tail -n 25 "/tmp/$step.err" | while IFS= read -r line; do
            frame log "$step: $line"
        done
    fi
    frame exit "{\"step\":\"$step\",\"rc\":$rc,\"seconds\":$(awk "BEGIN { print $t1 - $t0 }")}"
    say "$step exited with $rc after $(awk "BEGIN { print $t1 - $t0 }") s"
}

for step in $(echo "${OVL_STEPS:-probe,replay,prop,roundtrip,write,write-redirect}" | tr , " "); do
    case $step in
    probe)
        run_step probe "" overlayer probe --json
        ;;
    replay)
        run_step replay /tmp/replay.json overlayer replay /cases --json /tmp/replay.json
        ;;
    prop)
        if [ "$overlay" = true ]; then
            run_step prop /tmp/prop.json overlayer prop --cases "${OVL_PROP_CASES:-300}" \
                --seed "${OVL_SEED:-1}" --json /tmp/prop.json
        else
            frame skip "{\"step\":\"prop\",\"reason\":\"overlay filesystem not available in this kernel\"}"
        fi
        ;;
    roundtrip)
        # No mount, but overlayer checks the round trip only where it can
        # mount (the converted layers need the overlay xattrs and root).
        if [ "$overlay" = true ]; then
            run_step roundtrip /tmp/roundtrip.json overlayer prop --mode roundtrip \
                --cases "${OVL_ROUNDTRIP_CASES:-300}" --seed "${OVL_SEED:-1}" \
                --json /tmp/roundtrip.json
        else
            frame skip "{\"step\":\"roundtrip\",\"reason\":\"overlay filesystem not available in this kernel\"}"
        fi
        ;;
    write | write-redirect)
        # A writable overlay (upper and work on tmpfs), generated writes,
        # export of the upper; write-redirect with redirect_dir and metacopy.
        if [ "$overlay" = true ]; then
            run_step "$step" "/tmp/$step.json" overlayer prop --mode "$step" \
                --cases "${OVL_ROUNDTRIP_CASES:-300}" --seed "${OVL_SEED:-1}" \
                --json "/tmp/$step.json"
        else
            frame skip "{\"step\":\"$step\",\"reason\":\"overlay filesystem not available in this kernel\"}"
        fi
        ;;
    *)
        frame log "init: unknown step $step"
        ;;
    esac
done

finish
