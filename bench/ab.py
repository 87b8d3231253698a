#!/usr/bin/env python3
"""Interleaved A/B timing of overlayer builds (and tar) on a layer or a stack, for changes too small
for `make bench` to tell apart from the machine's noise.

    unshare -m --propagation private bench/ab.py [--layer base.tar[,layer1.tar.gz...]] [--runs 10] SPEC...

SPEC is `tar`, or `apply:BIN` / `convert:BIN` (BIN an overlayer binary, e.g. a copy of
target/release/overlayer from before a change); tar extracts the layers one after the other
(compression detected, whiteouts not processed). The layers (from bench/cache/, made by `make bench`)
are copied to a private tmpfs; every round runs each SPEC once, in order, on a clean output, after the
same 0.3 s pause as run.py. Prints the median and min wall time and the median user and sys time
of each SPEC over the rounds after the first (a warm-up), then the median and quartiles of each
round's ratio of every other SPEC to the first.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from private_mounts import require_private_mounts

HERE = os.path.dirname(os.path.abspath(__file__))
P = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
P.add_argument("--layer", default="base.tar",
               help="files in bench/cache/, bottom first, comma-separated (default base.tar)")
P.add_argument("--runs", type=int, default=10, help="timed rounds after one warm-up (default 10)")
P.add_argument("specs", nargs="+", metavar="SPEC")
A = P.parse_args()

for spec in A.specs:
    if spec != "tar" and (":" not in spec or spec.split(":", 1)[0] not in ("apply", "convert")):
        sys.exit(f"ab.py: {spec!r}: expected tar, apply:BIN or convert:BIN")
names = A.layer.split(",")
for name in names:
    if not os.path.isfile(os.path.join(HERE, "cache", name)):
        sys.exit(f"ab.py: bench/cache/{name} is missing: run `make bench` once to make the data")
require_private_mounts("ab.py")

T = tempfile.mkdtemp(prefix="overlayer-ab-")
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12g,mode=0755", "overlayer-ab", T], check=True)
try:
    layers = [os.path.join(T, name) for name in names]
    subprocess.run(["cp"] + [os.path.join(HERE, "cache", name) for name in names] + [T], check=True)
    out = os.path.join(T, "out")
    samples = {spec: [] for spec in A.specs}
    for rnd in range(A.runs + 1):
        for spec in A.specs:
            subprocess.run(["rm", "-rf", out], check=True)
            if spec == "tar":
                os.makedirs(out)
                # Layer after layer, whiteouts left as files: the baseline, not a rootfs.
                tar = "tar --numeric-owner --xattrs --xattrs-include='*' -C \"$0\" -xf"
                cmd = ["sh", "-c", " && ".join(f'{tar} "${i + 1}"' for i in range(len(layers))), out] + layers
            else:
                what, binary = spec.split(":", 1)
                cmd = [binary, what] + layers + ["--out", out]
            time.sleep(0.3)
            t0 = time.perf_counter()
            child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, cwd=T)
            _, status, usage = os.wait4(child.pid, 0)
            wall = time.perf_counter() - t0
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"ab.py: {' '.join(cmd)} failed")
            if rnd > 0:
                samples[spec].append((wall, usage.ru_utime, usage.ru_stime))
    width = max(len(s) for s in A.specs)
    for spec, xs in samples.items():
        walls = [x[0] for x in xs]
        print(f"{spec:{width}}  wall {statistics.median(walls):.3f} s (min {min(walls):.3f})  "
              f"user {statistics.median(x[1] for x in xs):.3f}  sys {statistics.median(x[2] for x in xs):.3f}")
    # Each round's ratio to the first SPEC: the machine's drift between rounds cancels out.
    first = A.specs[0]
    for spec in A.specs[1:]:
        ratios = sorted(x[0] / y[0] for x, y in zip(samples[spec], samples[first]))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        print(f"{spec:{width}}  / {first}: median of the rounds' ratios {statistics.median(ratios):.3f} "
              f"(quartiles {q[0]:.3f}-{q[2]:.3f})")
finally:
    subprocess.run(["rm", "-rf", os.path.join(T, "out")])
    subprocess.run(["umount", T])
    os.rmdir(T)
