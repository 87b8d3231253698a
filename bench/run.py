#!/usr/bin/env python3
"""The measurements of `make bench` (run by bench/bench.sh inside `unshare -m`).

    run.py --bin target/release/overlayer --cache bench/cache --results bench/results.md [--runs 5]

Inputs are copied to a private tmpfs and every output goes to that tmpfs, so neither side touches
a disk. Commands compared with each other run round-robin (one warm-up round, then RUNS rounds),
each under `/usr/bin/time -f '%e %U %S %M'` for CPU time and peak RSS; wall time is measured
around it with a monotonic clock. Times are the median over the runs, with min and max; a ratio
is the median of the rounds' ratios, each taken between two commands of the same round.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from private_mounts import require_private_mounts

P = argparse.ArgumentParser()
P.add_argument("--bin", required=True)
P.add_argument("--cache", required=True)
P.add_argument("--results", required=True)
P.add_argument("--json")
P.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "5")))
P.add_argument("--prop-cases", type=int, default=5000)
P.add_argument("--prop-runs", type=int, default=3)
P.add_argument("--vm", action="store_true", default=os.environ.get("BENCH_VM") == "1")
A = P.parse_args()

BIN = os.path.abspath(A.bin)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAR_X = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*"]


def say(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


require_private_mounts("run.py")
T = tempfile.mkdtemp(prefix="overlayer-bench.")
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12g,mode=0755", "overlayer-bench", T], check=True)
IN = os.path.join(T, "in")
OUT = os.path.join(T, "out")
os.makedirs(IN)
for name in ["base.tar", "base.tar.gz"] + [f"layer{i}.tar.gz" for i in range(1, 6)]:
    shutil.copy(os.path.join(A.cache, name), IN)
shutil.copytree(os.path.join(A.cache, "oci"), os.path.join(IN, "oci"))
LAYERS = [os.path.join(IN, "base.tar.gz")] + [os.path.join(IN, f"layer{i}.tar.gz") for i in range(1, 6)]


SETTLE = 0.3


def clean_out():
    if os.path.exists(OUT):
        subprocess.run(["rm", "-rf", OUT], check=True)


def timed(cmd, mkdir_out=False, capture=False):
    """One run on a clean OUT: (wall s, user s, sys s, max RSS KiB, stdout)."""
    clean_out()
    if mkdir_out:
        os.makedirs(OUT)
    # Let the kernel finish freeing the removed tree (RCU callbacks in ksoftirqd) before timing,
    # or that work preempts the next command.
    time.sleep(SETTLE)
    tf = os.path.join(T, "time.txt")
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", tf] + cmd, cwd=T,
                       stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"run.py: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    e, u, s, m = open(tf).read().split()[-4:]
    return wall, float(u), float(s), int(m), (r.stdout or "") + (r.stderr or "")


def stats(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def stat_snap():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    t = os.times()
    hz = os.sysconf("SC_CLK_TCK")
    own = t.user + t.system + t.children_user + t.children_system
    return (sum(f) - f[3] - f[4]) / hz, own, time.perf_counter()


OTHERS = {}  # group title -> cores used by other processes on the machine during the group


def others_cores(a, b):
    busy, own, wall = (b[i] - a[i] for i in range(3))
    return max(0.0, (busy - own) / wall)


def bench_group(title, cmds):
    """cmds: list of (key, label, argv, mkdir_out). Round-robin, 1 warm-up round."""
    say(f"{title}: {len(cmds)} commands x (1 warm-up + {A.runs}) runs")
    samples = {k: [] for k, *_ in cmds}
    s0 = stat_snap()
    for rnd in range(A.runs + 1):
        for key, label, argv, mk in cmds:
            w, u, s, m, _ = timed(argv, mk)
            if rnd > 0:
                samples[key].append((w, u + s, m))
    clean_out()
    OTHERS[title] = others_cores(s0, stat_snap())
    if OTHERS[title] > 0.2:
        say(f"  warning: other processes used {OTHERS[title]:.2f} cores during this group")
    res = {}
    for key, label, argv, mk in cmds:
        xs = samples[key]
        res[key] = {"label": label, "cmd": " ".join(argv).replace(T + "/", ""),
                    "wall": stats([x[0] for x in xs]), "cpu": stats([x[1] for x in xs]),
                    "rss_kib": stats([x[2] for x in xs]),
                    "rounds": {"wall": [x[0] for x in xs], "cpu": [x[1] for x in xs]}}
        r = res[key]
        say(f"  {label:34} wall {r['wall']['median']:7.3f}s  cpu {r['cpu']['median']:7.3f}s  "
            f"rss {r['rss_kib']['max'] / 1024:7.1f} MB")
    return res


def inp(n):
    return os.path.join(IN, n)


def loadavg():
    return open("/proc/loadavg").read().split()[0]


def busy_cores(seconds=2.0):
    """CPU use of everything else on the machine, in cores, sampled while the bench is idle."""
    def snap():
        f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(f), f[3] + f[4]
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return (os.cpu_count() or 1) * (1 - (i1 - i0) / max(1, t1 - t0))


LOAD0 = loadavg()
BUSY0 = busy_cores()
if BUSY0 > 0.2:
    say(f"warning: other processes use {BUSY0:.1f} of {os.cpu_count()} cores: the figures will be noisy")
started = time.time()
R = {}
o = OUT
R.update(bench_group("plain base layer (base.tar)", [
    ("apply", "overlayer apply base.tar", [BIN, "apply", inp("base.tar"), "--out", o], False),
    ("convert", "overlayer convert base.tar", [BIN, "convert", inp("base.tar"), "--out", o], False),
    ("tar", "tar -xf base.tar", TAR_X + ["-xf", inp("base.tar"), "-C", o], True),
]))
R.update(bench_group("gzip base layer (base.tar.gz)", [
    ("apply_gz", "overlayer apply base.tar.gz", [BIN, "apply", inp("base.tar.gz"), "--out", o], False),
    ("convert_gz", "overlayer convert base.tar.gz", [BIN, "convert", inp("base.tar.gz"), "--out", o], False),
    ("tar_gz", "tar -xzf base.tar.gz", TAR_X + ["-xzf", inp("base.tar.gz"), "-C", o], True),
]))
sum_tar = "for l in " + " ".join(LAYERS) + '; do tar --numeric-owner --xattrs --xattrs-include="*" -xzf "$l" -C ' + o + " || exit 1; done"
R.update(bench_group("6-layer image (6 x tar.gz)", [
    ("apply_img", "overlayer apply 6 layers", [BIN, "apply"] + LAYERS + ["--out", o], False),
    ("convert_img", "overlayer convert 6 layers", [BIN, "convert"] + LAYERS + ["--out", o], False),
    ("umoci", "umoci unpack (6 layers)", ["umoci", "unpack", "--image", inp("oci") + ":bench", o], False),
    ("tar_img", "tar -xzf x 6 (no whiteouts)", ["sh", "-c", sum_tar], True),
]))

# Do overlayer and umoci agree on the 6-layer rootfs? (A sanity check of the data, not timed.)
say("checking: overlayer apply (6 layers) = umoci unpack rootfs")
subprocess.run(["rm", "-rf", OUT], check=True)
os.makedirs(OUT)
subprocess.run([BIN, "apply"] + LAYERS + ["--out", OUT + "/apply"], check=True)
subprocess.run(["umoci", "unpack", "--image", inp("oci") + ":bench", OUT + "/umoci"], check=True,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
d = subprocess.run([BIN, "diff", OUT + "/apply", OUT + "/umoci/rootfs"], capture_output=True, text=True)
DIFF = {"status": d.returncode, "lines": (d.stdout + d.stderr).strip().splitlines()}
say(f"  overlayer diff: exit {d.returncode}; " + (DIFF["lines"][-1] if DIFF["lines"] else ""))
for line in DIFF["lines"][:10]:
    say("   ", line)
clean_out()

# Harness throughput.
say(f"harness: overlayer prop --cases {A.prop_cases} --seed 1, {A.prop_runs} runs")
rates, props = [], []
s0 = stat_snap()
for i in range(A.prop_runs):
    w, u, s, m, out = timed([BIN, "prop", "--cases", str(A.prop_cases), "--seed", "1"], capture=True)
    mm = re.search(r"([\d.,]+) stacks/s", out)
    if not mm:
        sys.exit("run.py: no 'stacks/s' in the prop output:\n" + out[-2000:])
    rates.append(float(mm.group(1).replace(",", "")))
    props.append((w, u + s, m))
    say(f"  run {i + 1}: {rates[-1]:.0f} stacks/s ({w:.1f} s wall)")
OTHERS["harness"] = others_cores(s0, stat_snap())
R["prop"] = {"label": f"overlayer prop --cases {A.prop_cases} --seed 1", "rate": stats(rates),
             "wall": stats([p[0] for p in props]), "cpu": stats([p[1] for p in props]),
             "rss_kib": stats([p[2] for p in props])}

# VM figures (optional).
VM = None
if A.vm:
    say("BENCH_VM=1: running vm/vm-test.sh (slow)")
    t0 = time.perf_counter()
    v = subprocess.run([os.path.join(ROOT, "vm", "vm-test.sh")], cwd=ROOT, capture_output=True, text=True)
    VM = {"status": v.returncode, "seconds": time.perf_counter() - t0, "rows": []}
    for line in (v.stdout + "\n" + v.stderr).splitlines():
        f = line.split()
        if len(f) >= 6 and re.match(r"^\d+\.\d+", f[0]) and re.match(r"^(-|[\d.]+s)$", f[-2]):
            VM["rows"].append({"kernel": " ".join(f[:2]), "stacks": f[-5].strip("()"), "boot": f[-4],
                               "init": f[-3], "total": f[-2], "result": f[-1]})
    if v.returncode != 0:
        say(f"  vm-test.sh exited {v.returncode}:\n" + (v.stdout + v.stderr)[-2000:])
else:
    say("VM figures skipped (set BENCH_VM=1 to run vm/vm-test.sh, several minutes)")

# Syscalls per entry of base.tar (strace -c -f), next to GNU tar's: the profile behind the
# plain-layer rows, printed with the table whatever the timings say.
def base_entries():
    n = 0
    r = subprocess.run(["tar", "-tf", inp("base.tar")], capture_output=True, text=True, check=True)
    n = len(r.stdout.splitlines())
    return n


def strace_counts(argv, mkdir_out=False):
    clean_out()
    if mkdir_out:
        os.makedirs(OUT)
    out = os.path.join(T, "strace.txt")
    subprocess.run(["strace", "-f", "-c", "-o", out] + argv, check=True, cwd=T,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    calls = {}
    for line in open(out):
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and not f[-1].startswith("total"):
            calls[f[-1]] = int(f[3])
    clean_out()
    return calls


SYS = None
if shutil.which("strace"):
    say("syscalls per entry of base.tar (strace -c -f)")
    entries = base_entries()
    SYS = {"entries": entries,
           "apply": strace_counts([BIN, "apply", inp("base.tar"), "--out", OUT]),
           "convert": strace_counts([BIN, "convert", inp("base.tar"), "--out", OUT]),
           "tar": strace_counts(TAR_X + ["-xf", inp("base.tar"), "-C", OUT], True)}
else:
    say("strace missing: no syscall counts")


# ---- report ---------------------------------------------------------------------------------
rows = []  # (what, ratio text, target, verdict, detail)


def paired(num, den, what="wall"):
    """The median and quartiles of the rounds' ratios num/den: each round ran both commands one
    after the other, so a ratio within a round cancels the machine's drift between rounds
    (tar's own median moves by 20% between runs of the bench here)."""
    rs = [a / b for a, b in zip(R[num]["rounds"][what], R[den]["rounds"][what])]
    q = statistics.quantiles(rs, n=4) if len(rs) > 1 else [rs[0]] * 3
    return statistics.median(rs), q[0], q[2]


def ratio_row(what, num, den, target, ok):
    r, lo, hi = paired(num, den)
    rc, _, _ = paired(num, den, "cpu")
    rows.append((what, f"{r:.2f}x ({lo:.2f}-{hi:.2f})", f"cpu {rc:.2f}x", target, "met" if ok(r) else "MISSED"))


ratio_row("apply base.tar / tar -xf", "apply", "tar", "<= 1.0x", lambda r: r <= 1.0)
ratio_row("convert base.tar / tar -xf", "convert", "tar", "<= 1.0x", lambda r: r <= 1.0)
ratio_row("apply base.tar.gz / tar -xzf", "apply_gz", "tar_gz", "<= 0.30x", lambda r: r <= 0.30)
ratio_row("convert base.tar.gz / tar -xzf", "convert_gz", "tar_gz", "<= 0.8x", lambda r: r <= 0.8)
sp, lo, hi = paired("umoci", "apply_img")
rows.append(("umoci unpack / apply (6 layers)", f"{sp:.2f}x faster ({lo:.2f}-{hi:.2f})",
             f"cpu {paired('umoci', 'apply_img', 'cpu')[0]:.2f}x", ">= 5x faster", "met" if sp >= 5 else "MISSED"))
ratio_row("apply 6 layers / sum tar -xzf", "apply_img", "tar_img", "(info)", lambda r: True)
rows[-1] = rows[-1][:4] + ("-",)
ratio_row("convert 6 layers / sum tar -xzf", "convert_img", "tar_img", "(info)", lambda r: True)
rows[-1] = rows[-1][:4] + ("-",)
rate = R["prop"]["rate"]["median"]
rows.append(("harness stacks/s", f"{rate:.0f}/s", f"min {R['prop']['rate']['min']:.0f}", ">= 200/s",
             "met" if rate >= 200 else "MISSED"))
rss = max(R[k]["rss_kib"]["max"] for k in ("apply", "apply_gz", "apply_img")) / 1024
rows.append(("peak RSS of apply (max)", f"{rss:.1f} MB", "", "< 64 MB", "met" if rss < 64 else "MISSED"))


# Every missed target gets the profile of its overlayer command, taken here in the same run:
# where the CPU time goes (perf, software cpu-clock: works without a PMU), so a miss says why.
ROW_CMD = {"apply base.tar / tar -xf": "apply", "convert base.tar / tar -xf": "convert",
           "apply base.tar.gz / tar -xzf": "apply_gz", "convert base.tar.gz / tar -xzf": "convert_gz",
           "umoci unpack / apply (6 layers)": "apply_img"}
ARGV = {"apply": [BIN, "apply", inp("base.tar"), "--out", o],
        "convert": [BIN, "convert", inp("base.tar"), "--out", o],
        "apply_gz": [BIN, "apply", inp("base.tar.gz"), "--out", o],
        "convert_gz": [BIN, "convert", inp("base.tar.gz"), "--out", o],
        "apply_img": [BIN, "apply"] + LAYERS + ["--out", o]}


def perf_profile(argv, top=14):
    """(kernel share of samples, top self symbols) of one run, or None without perf."""
    if not shutil.which("perf"):
        return None
    clean_out()
    data = os.path.join(T, "perf.data")
    r = subprocess.run(["perf", "record", "-q", "-F", "4000", "-e", "cpu-clock", "-o", data, "--"] + argv,
                       cwd=T, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    clean_out()
    if r.returncode != 0:
        return None
    rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "--stdio"],
                         capture_output=True, text=True).stdout
    threads = thread_busy(data)
    os.remove(data)
    lines = [ln.strip() for ln in rep.splitlines() if ln.strip() and not ln.startswith("#")]
    kernel = sum(float(ln.split("%")[0]) for ln in lines if "[k]" in ln and ln[0].isdigit())
    by_dso = {}
    for ln in lines:
        f = ln.split()
        if len(f) >= 3 and f[0].endswith("%"):
            by_dso[f[1]] = by_dso.get(f[1], 0.0) + float(f[0].rstrip("%"))
    return kernel, by_dso, lines[:top], threads


def thread_busy(data):
    """'name: N ms on CPU, P% of the M ms sampled' per thread of a perf.data (cpu-clock: a
    sample's period is nanoseconds), busiest first: a thread near 100% bounds the wall time."""
    head = subprocess.run(["perf", "report", "-i", data, "--header-only"], capture_output=True, text=True).stdout
    span = next((float(ln.split(":")[1].split()[0]) for ln in head.splitlines()
                 if "sample duration" in ln), None)
    rep = subprocess.run(["perf", "report", "-i", data, "--sort", "pid", "--stdio"],
                         capture_output=True, text=True).stdout
    total = next((int(ln.split(":")[1]) for ln in rep.splitlines() if ln.startswith("# Event count")), None)
    if not span or not total:
        return []
    out = []
    for ln in rep.splitlines():
        f = ln.split()
        if len(f) == 2 and f[0].endswith("%") and ":" in f[1]:
            ms = float(f[0].rstrip("%")) / 100 * total / 1e6
            name = f[1].split(":", 1)[1]
            out.append((ms, f"{name} {ms:.0f} ms on CPU, {100 * ms / span:.0f}% of the {span:.0f} ms sampled"))
    return [text for _, text in sorted(out, reverse=True)]


PROFILES = {}
for what, _, _, _, verdict in rows:
    if verdict == "MISSED" and what in ROW_CMD:
        say(f"profiling the miss: {what}")
        PROFILES[what] = perf_profile(ARGV[ROW_CMD[what]])

subprocess.run(["umount", T], check=True)
os.rmdir(T)
elapsed = time.time() - started
LOAD1 = loadavg()


def profile_text():
    if not PROFILES:
        return "every target met: no profile taken"
    out = []
    for what, prof in PROFILES.items():
        cmd = " ".join(ARGV[ROW_CMD[what]]).replace(T + "/", "")
        if prof is None:
            out.append(f"{what}: MISSED; perf unavailable, no profile (bench/profile.sh)")
            continue
        kernel, by_dso, top, threads = prof
        dsos = ", ".join(f"{k} {v:.0f}%" for k, v in sorted(by_dso.items(), key=lambda kv: -kv[1])[:4])
        busy = "".join(f"\n    {t}" for t in threads)
        out.append(f"{what}: MISSED; profile of `{cmd}` (perf cpu-clock samples, both threads):\n"
                   f"  per thread:{busy}\n"
                   f"  kernel {kernel:.0f}% of samples; by object: {dsos}\n  top symbols (self):\n"
                   + "\n".join("    " + ln for ln in top))
    return "\n\n".join(out)


def table(headers, body):
    w = [max(len(str(x)) for x in col) for col in zip(headers, *body)]
    fmt = "  ".join("{:<%d}" % n for n in w)
    return "\n".join([fmt.format(*headers)] + [fmt.format(*map(str, r)) for r in body])


def fmt_s(s):
    return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


detail = []
for k in ("apply", "convert", "tar", "apply_gz", "convert_gz", "tar_gz",
          "apply_img", "convert_img", "umoci", "tar_img"):
    r = R[k]
    detail.append((r["label"], fmt_s(r["wall"]), fmt_s(r["cpu"]),
                   f"{r['rss_kib']['median'] / 1024:.1f} ({r['rss_kib']['min'] / 1024:.1f}-{r['rss_kib']['max'] / 1024:.1f})"))
p = R["prop"]
detail.append((p["label"], fmt_s(p["wall"]), fmt_s(p["cpu"]), f"{p['rss_kib']['max'] / 1024:.1f}"))

others_t = ", ".join(f"{k.split(' (')[0]} {v:.2f}" for k, v in OTHERS.items())
ratios_t = table(["ratio (lower is better)", "wall (quartiles)", "cpu", "target", "result"], rows)

sys_t = "skipped (strace missing)"
if SYS:
    names = sorted(set().union(SYS["apply"], SYS["convert"], SYS["tar"]),
                   key=lambda k: -max(SYS[n].get(k, 0) for n in ("apply", "convert", "tar")))
    e = SYS["entries"]
    body = [(k, SYS["apply"].get(k, 0), SYS["convert"].get(k, 0), SYS["tar"].get(k, 0)) for k in names[:14]]
    tot = {n: sum(SYS[n].values()) for n in ("apply", "convert", "tar")}
    body.append(("total", tot["apply"], tot["convert"], tot["tar"]))
    body.append(("per entry", f"{tot['apply'] / e:.2f}", f"{tot['convert'] / e:.2f}", f"{tot['tar'] / e:.2f}"))
    sys_t = (f"base.tar, {e} entries, syscalls (strace -c -f):\n"
             + table(["syscall", "apply", "convert", "tar -xf"], body))
    missed = [r[0] for r in rows if r[4] == "MISSED" and "base.tar /" in r[0]]
    if missed:
        verdicts = []
        for what in ("apply", "convert"):
            if not any(m.startswith(what + " ") for m in missed):
                continue
            mine, tars = tot[what] / e, tot["tar"] / e
            verdicts.append(f"{what} makes {mine:.2f} syscalls per entry, tar {tars:.2f}: "
                            + (f"{tars - mine:.2f} fewer than tar, so the gap is not in the syscall count"
                               if mine <= tars else f"{mine - tars:.2f} more than tar"))
        sys_t += ("\nmissed: " + "; ".join(missed) + ". " + "; ".join(verdicts)
                  + ". The profiles below (and bench/profile.sh, bench/cache/profile/) show where the time goes.")
detail_t = table(["command", "wall s median (min-max)", "cpu s (user+sys)", "peak RSS MB"], detail)
prof_t = profile_text()


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def sizes():
    out = []
    for n in ["base.tar", "base.tar.gz"] + [f"layer{i}.tar.gz" for i in range(1, 6)]:
        out.append(f"{n} {os.path.getsize(os.path.join(A.cache, n)) / 1e6:.1f} MB")
    return ", ".join(out)


rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "harness", "Cargo.toml", "Cargo.lock"],
                       capture_output=True, text=True).stdout.strip()
machine = (f"{os.cpu_count()} CPUs ({cpu_model()}), kernel {platform.release()}, "
           f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM")
vm_t = "skipped (set BENCH_VM=1)"
if VM is not None:
    vm_t = table(["kernel", "prop stacks", "boot", "init", "total", "result"],
                 [(r["kernel"], r["stacks"], r["boot"], r["init"], r["total"], r["result"]) for r in VM["rows"]]) \
        if VM["rows"] else f"vm-test.sh exit {VM['status']}, no rows parsed"
    vm_t += f"\n(whole vm/vm-test.sh: {VM['seconds']:.0f} s, exit {VM['status']})"

report = f"""# overlayer bench results

- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}, commit {rev or '?'}{' with uncommitted changes in src/, harness/ or Cargo files' if dirty else ''}
- machine: {machine}; other CPU use just before the run {BUSY0:.2f} cores, load average {LOAD0} before and {LOAD1} after (the bench included)
- data: {sizes()}
- method: inputs and outputs on tmpfs; {A.runs} rounds after 1 warm-up round, each round runs
  every command of its group once, one after the other; a ratio is the median (and quartiles)
  of the rounds' ratios, each taken within one round; times are medians with (min-max);
  CPU = user+sys and peak RSS from `/usr/bin/time`;
  tar runs as root with `--numeric-owner --xattrs --xattrs-include=*`; the 6-layer tar baseline
  extracts each layer in order and does not process whiteouts
- other processes' CPU use during each group (machine busy time minus the bench's own, in cores;
  above ~0.2 the figures are disturbed): {others_t}
- check: overlayer apply (6 layers) vs umoci rootfs: `overlayer diff` exit {DIFF['status']}{': ' + DIFF['lines'][-1] if DIFF['lines'] else ''}

## Ratios and targets

```
{ratios_t}
```

## Syscalls per entry

```
{sys_t}
```

## Profiles of missed targets

```
{prof_t}
```

## Measurements

```
{detail_t}
```

## VM

```
{vm_t}
```

Measurement run: {elapsed:.0f} s.
"""
print()
print(ratios_t)
print()
print(detail_t)
print()
print(sys_t)
print()
print(prof_t)
print()
print("VM: " + vm_t)
print(f"other processes' CPU use during the groups (cores): {others_t}")
if max(OTHERS.values()) > 0.2:
    print("warning: other work on the machine disturbed this run; rerun when it is idle")
if DIFF["status"] != 0:
    print(f"note: overlayer apply and umoci unpack differ on the 6-layer image (overlayer diff exit {DIFF['status']}); see {A.results}")
with open(A.results, "w") as f:
    f.write(report)
    if DIFF["status"] != 0:
        f.write("\n## overlayer apply vs umoci rootfs differences (first 40)\n\n```\n" +
                "\n".join(DIFF["lines"][:40]) + "\n```\n")
if A.json:
    with open(A.json, "w") as f:
        json.dump({"results": R, "diff": DIFF, "vm": VM, "machine": machine, "syscalls": SYS}, f, indent=1)
print(f"\nwritten {A.results} ({elapsed:.0f} s of measurements)")
