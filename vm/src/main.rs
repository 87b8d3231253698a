//! overlayer-vm: boot Debian kernels in QEMU with a tiny initramfs that runs
//! the static `overlayer` binary and the regression cases, then report one
//! row per kernel (plus the host kernel, run natively).

mod accel;
mod apt;
mod deps;
mod host;
mod initramfs;
mod kernel;
mod qemu;
mod report;
mod spec;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use accel::{Accel, AccelChoice};
use kernel::{KernelAssets, OverlaySource};
use qemu::{Boot, GuestOptions, Outcome};
use report::{Row, RowContext, Status};

static START: OnceLock<Instant> = OnceLock::new();

/// Print a progress line on stderr, stamped with the time since start.
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {
        $crate::progress_line(&format!($($arg)*))
    };
}

pub fn progress_line(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[vm {t:6.1}s] {msg}");
}

/// Default generated stacks per kernel (`VM_PROP_CASES`): 46-56 stacks/s
/// under TCG here with two boots at a time, about a minute per kernel; the
/// four default kernels took 258 s in all (2026-12-02), inside the 8-minute
/// budget with room for a machine half as fast.
pub const DEFAULT_PROP_CASES: u64 = 3000;

/// Default round-trip stacks per kernel (`VM_ROUNDTRIP_CASES`), also the
/// write and write-redirect steps' count: 52-89 stacks/s under TCG here,
/// so the three take 35-55 s per kernel.
pub const DEFAULT_ROUNDTRIP_CASES: u64 = 1000;

/// Default `VM_PARALLEL`: two boots at a time, one per host core of the
/// 2-core machines this runs on.
pub const DEFAULT_PARALLEL: usize = 2;

/// Default `VM_CPUS`.
pub const DEFAULT_CPUS: u32 = 2;

/// The steps a guest (and the host) can run, in their default order.
pub const STEPS: [&str; 6] = [
    "probe",
    "replay",
    "prop",
    "roundtrip",
    "write",
    "write-redirect",
];

/// Default `VM_STEPS`: all of them.
pub const DEFAULT_STEPS: &str = "probe,replay,prop,roundtrip,write,write-redirect";

/// Default per-boot timeout: 90 s for boot, modules and replay, plus 125 ms
/// per generated stack of the steps that run. TCG has run 17 to 70 stacks/s
/// on 2-core machines here (15 to 60 ms each, the slow end with the host
/// busy), so this keeps a 2x margin on the slowest seen and still catches a
/// hang within about fifteen minutes.
pub fn default_timeout(stacks: u64) -> Duration {
    Duration::from_secs(90 + stacks / 8)
}

/// Generated stacks the requested steps check in one kernel.
pub fn stacks_to_run(steps: &[String], prop_cases: u64, roundtrip_cases: u64) -> u64 {
    steps
        .iter()
        .map(|s| match s.as_str() {
            "prop" => prop_cases,
            // The write steps run as many stacks as roundtrip.
            "roundtrip" | "write" | "write-redirect" => roundtrip_cases,
            _ => 0,
        })
        .sum()
}

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Boot Debian kernels in QEMU and run the overlayer harness in them"
)]
struct Args {
    /// Kernels: comma/space separated series (6.1, 6.12), Debian package
    /// names, or paths to a bzImage with optional `:MODULES_DIR`.
    #[arg(long, env = "VM_KERNELS", default_value = spec::DEFAULT_KERNELS)]
    kernels: String,
    /// The statically linked overlayer binary to put in the guest
    /// [default: target/x86_64-unknown-linux-gnu/release/overlayer].
    #[arg(long, env = "VM_OVERLAYER")]
    overlayer: Option<PathBuf>,
    /// Regression cases directory, copied to /cases [default: cases].
    #[arg(long, env = "VM_CASES")]
    cases: Option<PathBuf>,
    /// Download/unpack cache [default: vm/cache].
    #[arg(long, env = "VM_CACHE")]
    cache: Option<PathBuf>,
    /// Generated stacks for `overlayer prop` per kernel.
    #[arg(long, env = "VM_PROP_CASES", default_value_t = DEFAULT_PROP_CASES)]
    prop_cases: u64,
    /// Generated stacks for `overlayer prop --mode roundtrip` per kernel, and
    /// for each of `--mode write` and `--mode write-redirect`.
    #[arg(long, env = "VM_ROUNDTRIP_CASES", default_value_t = DEFAULT_ROUNDTRIP_CASES)]
    roundtrip_cases: u64,
    /// Seed for `overlayer prop` (both modes); fixed by default so runs (and
    /// CI) are reproducible; set another to explore new stacks.
    #[arg(long, env = "VM_SEED", default_value_t = 1)]
    seed: u64,
    /// Per-kernel timeout in seconds [default: 90 + (prop_cases +
    /// roundtrip_cases)/8, counting the steps that run].
    #[arg(long, env = "VM_TIMEOUT")]
    timeout: Option<u64>,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, env = "VM_ACCEL", default_value = "auto")]
    accel: AccelChoice,
    /// Seconds a KVM boot may stay silent before falling back to TCG.
    #[arg(long, env = "VM_KVM_SILENT", default_value_t = 3)]
    kvm_silent: u64,
    /// Guest memory in MiB.
    #[arg(long, env = "VM_MEMORY", default_value_t = 1024)]
    memory: u32,
    /// Guest vCPUs.
    #[arg(long, env = "VM_CPUS", default_value_t = DEFAULT_CPUS)]
    cpus: u32,
    /// Kernels booted at the same time (each boot is one QEMU process).
    #[arg(long, env = "VM_PARALLEL", default_value_t = DEFAULT_PARALLEL)]
    parallel: usize,
    /// Steps to run in each kernel (comma separated).
    #[arg(long, env = "VM_STEPS", default_value = DEFAULT_STEPS)]
    steps: String,
    /// Drop into busybox sh on the guest console instead of running the
    /// steps (also VM_SHELL=1).
    #[arg(long)]
    shell: bool,
    /// Echo the guest console (also VM_VERBOSE=1).
    #[arg(long, short)]
    verbose: bool,
    /// Write the report as JSON here too.
    #[arg(long, env = "VM_JSON")]
    json: Option<PathBuf>,
    /// Do not add the host kernel row.
    #[arg(long)]
    no_host: bool,
    /// Do not apt-get install missing host tools.
    #[arg(long)]
    no_install: bool,
    /// Workspace root [default: the one this binary was built from].
    #[arg(long)]
    root: Option<PathBuf>,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "no" | "off"))
}

fn main() -> ExitCode {
    START.get_or_init(Instant::now);
    let mut args = Args::parse();
    args.shell |= env_flag("VM_SHELL");
    args.verbose |= env_flag("VM_VERBOSE");
    match real_main(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("overlayer-vm: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Everything shared by the boots.
struct Ctx {
    args: Args,
    overlayer: PathBuf,
    /// What goes into the initramfs: `overlayer` without debug info.
    guest_bin: PathBuf,
    cases: PathBuf,
    cache: PathBuf,
    busybox: PathBuf,
    guest: GuestOptions,
    timeout: Duration,
}

fn real_main(args: Args) -> Result<bool> {
    let root = args
        .root
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let root = root.canonicalize().unwrap_or(root);
    let overlayer = args
        .overlayer
        .clone()
        .unwrap_or_else(|| root.join("target/x86_64-unknown-linux-gnu/release/overlayer"));
    let cases = args.cases.clone().unwrap_or_else(|| root.join("cases"));
    let cache = args.cache.clone().unwrap_or_else(|| root.join("vm/cache"));
    let specs = spec::parse_kernel_list(&args.kernels)?;
    let steps: Vec<String> = args
        .steps
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for s in &steps {
        if !STEPS.contains(&s.as_str()) {
            bail!("unknown step {s:?} (want {})", STEPS.join(", "));
        }
    }

    deps::ensure(!args.no_install)?;
    let busybox = deps::static_busybox().context("no static busybox found")?;
    let bin = std::fs::read(&overlayer).with_context(|| {
        format!(
            "reading the overlayer binary {} (build it with RUSTFLAGS='-C target-feature=+crt-static' \
             cargo build --release --target x86_64-unknown-linux-gnu -p overlayer-harness, or pass --overlayer)",
            overlayer.display()
        )
    })?;
    if let Err(e) = initramfs::runs_in_guest(&bin) {
        bail!("{} cannot run in the guest: {e}", overlayer.display());
    }
    drop(bin);
    if !cases.is_dir() {
        bail!("cases directory {} does not exist", cases.display());
    }
    let guest_bin = guest_binary(&overlayer, &cache)?;

    let seed = args.seed;
    let guest = GuestOptions {
        prop_cases: args.prop_cases,
        roundtrip_cases: args.roundtrip_cases,
        seed,
        shell: args.shell,
        steps,
    };
    let timeout = args.timeout.map(Duration::from_secs).unwrap_or_else(|| {
        default_timeout(stacks_to_run(
            &guest.steps,
            guest.prop_cases,
            guest.roundtrip_cases,
        ))
    });
    progress!(
        "overlayer {} | cases {} | steps {} | prop {} stacks, roundtrip {} stacks, seed {} | \
         timeout {} s per kernel",
        overlayer.display(),
        cases.display(),
        guest.steps.join(","),
        guest.prop_cases,
        guest.roundtrip_cases,
        seed,
        timeout.as_secs()
    );

    let decision = accel::detect(args.accel);
    progress!("accel: {} ({})", decision.accel, decision.reason);
    let ctx = Ctx {
        args,
        overlayer,
        guest_bin,
        cases,
        cache,
        busybox,
        guest,
        timeout,
    };

    // Fetch everything first so network trouble shows up before long boots.
    let mut fetcher = kernel::Fetcher::new(&ctx.cache)?;
    let mut prepared = Vec::new();
    for s in &specs {
        let r = kernel::prepare(s, &ctx.cache, &mut fetcher);
        if let Err(e) = &r {
            progress!("kernel {}: FAILED: {e:#}", s.label());
        }
        prepared.push((s.label(), r));
    }

    let parallel = if ctx.guest.shell {
        1
    } else {
        ctx.args.parallel.max(1)
    };
    let (mut rows, accel_note) = boot_all(&ctx, prepared, decision.accel, parallel);
    if ctx.guest.shell {
        return Ok(true);
    }

    if !ctx.args.no_host {
        progress!("host kernel: running {} natively", ctx.overlayer.display());
        let mut p = |m: &str| progress!("  host: {m}");
        rows.push(host::run(
            &ctx.overlayer,
            &ctx.cases,
            &ctx.guest,
            ctx.timeout,
            &mut p,
        ));
    }

    let ok = rows.iter().all(|r| r.status != Status::Fail) && rows.len() >= specs.len();
    println!();
    print!("{}", report::format_table(&rows));
    let details = report::format_details(&rows);
    if !details.is_empty() {
        println!();
        print!("{details}");
    }
    println!(
        "\nprop: {} stacks, roundtrip, write and write-redirect: {} stacks each per kernel, \
         seed {} (VM_SEED={} reproduces); \
         total {:.1} s; {}",
        ctx.guest.prop_cases,
        ctx.guest.roundtrip_cases,
        ctx.guest.seed,
        ctx.guest.seed,
        START.get_or_init(Instant::now).elapsed().as_secs_f64(),
        if ok { "all ok" } else { "FAILED" }
    );
    if let Some(path) = &ctx.args.json {
        let doc = serde_json::json!({
            "ok": ok,
            "seed": ctx.guest.seed,
            "prop_cases": ctx.guest.prop_cases,
            "roundtrip_cases": ctx.guest.roundtrip_cases,
            "steps": ctx.guest.steps,
            "accel": decision.accel.to_string(),
            "accel_reason": decision.reason,
            "accel_fallback": accel_note,
            "total_seconds": START.get_or_init(Instant::now).elapsed().as_secs_f64(),
            "rows": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        progress!("wrote {}", path.display());
    }
    Ok(ok)
}

/// Boots the prepared kernels, `parallel` at a time, and returns their rows
/// in the order asked for, with the note of a KVM-to-TCG fallback if one
/// happened (the fallback sticks for the boots that start after it).
fn boot_all(
    ctx: &Ctx,
    prepared: Vec<(String, Result<KernelAssets>)>,
    accel: Accel,
    parallel: usize,
) -> (Vec<Row>, Option<String>) {
    use std::sync::Mutex;
    let queue = Mutex::new(prepared.into_iter().enumerate().collect::<Vec<_>>());
    let shared = Mutex::new((accel, None::<String>));
    let done = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| loop {
                // Take from the front so kernels start in the order asked for.
                let next = {
                    let mut q = queue.lock().unwrap();
                    (!q.is_empty()).then(|| q.remove(0))
                };
                let Some((i, (label, assets))) = next else {
                    break;
                };
                let (mut accel, mut note) = shared.lock().unwrap().clone();
                let row = match assets {
                    Err(e) if e.downcast_ref::<kernel::NotServed>().is_some() => {
                        progress!("kernel {label}: {e:#}");
                        Row::not_run(&label, &accel.to_string(), format!("{e:#}"))
                    }
                    Err(e) => Row::failed(
                        &label,
                        &accel.to_string(),
                        format!("kernel fetch failed: {e:#}"),
                    ),
                    Ok(a) => match boot_kernel(ctx, &a, &mut accel, &mut note) {
                        Ok(row) => row,
                        Err(e) => Row::failed(&label, &accel.to_string(), format!("{e:#}")),
                    },
                };
                if note.is_some() {
                    *shared.lock().unwrap() = (accel, note);
                }
                if !ctx.guest.shell {
                    progress!(
                        "{} [{}]: {}",
                        row.kernel,
                        row.name,
                        match row.status {
                            Status::Pass => "ok",
                            Status::Skip => "skipped",
                            Status::Fail => "FAILED",
                        }
                    );
                }
                done.lock().unwrap().push((i, row));
            });
        }
    });
    let mut rows = done.into_inner().unwrap();
    rows.sort_by_key(|(i, _)| *i);
    let note = shared.into_inner().unwrap().1;
    (rows.into_iter().map(|(_, r)| r).collect(), note)
}

/// A copy of the overlayer binary without debug info (about 9x smaller, so
/// the initramfs loads faster under TCG; symbols stay for backtraces), when
/// `strip` is available; otherwise the binary itself.
fn guest_binary(overlayer: &Path, cache: &Path) -> Result<PathBuf> {
    let Some(strip) = deps::which("strip") else {
        return Ok(overlayer.to_path_buf());
    };
    if std::fs::read(overlayer)?.starts_with(b"#!") {
        return Ok(overlayer.to_path_buf());
    }
    std::fs::create_dir_all(cache)?;
    let out = cache.join("overlayer.guest");
    let st = std::process::Command::new(strip)
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(overlayer)
        .status()
        .context("running strip")?;
    if !st.success() {
        progress!("strip failed ({st}); using the unstripped binary");
        return Ok(overlayer.to_path_buf());
    }
    Ok(out)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".+-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Build the initramfs for one kernel and boot it (falling back from KVM to
/// TCG when KVM stays silent; the fallback sticks for later kernels).
fn boot_kernel(
    ctx: &Ctx,
    a: &KernelAssets,
    accel: &mut Accel,
    accel_note: &mut Option<String>,
) -> Result<Row> {
    let start = Instant::now();
    let name = a.release.clone().unwrap_or_else(|| a.label.clone());
    let mut notes = Vec::new();
    let modules = match &a.modules_dir {
        None => {
            notes.push("no modules dir: relying on a built-in overlay".to_string());
            Vec::new()
        }
        Some(dir) => match kernel::module_chain(dir, "overlay")? {
            OverlaySource::Modules(m) => m,
            OverlaySource::BuiltIn => {
                notes.push("overlay is built in".into());
                Vec::new()
            }
            OverlaySource::Missing(why) => {
                notes.push(format!("overlay module: {why}"));
                Vec::new()
            }
        },
    };
    let dir = ctx.cache.join("initramfs");
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join(format!("{}.cpio", sanitize(&name)));
    let size = initramfs::build(
        &initrd,
        &initramfs::Inputs {
            busybox: &ctx.busybox,
            overlayer: &ctx.guest_bin,
            cases: &ctx.cases,
            modules: &modules,
        },
    )?;
    let mods: Vec<String> = modules
        .iter()
        .map(|m| format!("{} ({} KiB)", m.rel, m.data.len() / 1024))
        .collect();
    progress!(
        "{name}: initramfs {:.1} MiB, modules: {}",
        size as f64 / (1 << 20) as f64,
        if mods.is_empty() {
            "none".into()
        } else {
            mods.join(", ")
        }
    );

    // Boot the uncompressed vmlinux through PVH when possible (VM_PVH=0 to
    // boot the bzImage as is): decompressing in the guest is slow under TCG.
    let mut kernel_image = a.bzimage.clone();
    if std::env::var("VM_PVH").map_or(true, |v| v != "0") {
        let out = ctx
            .cache
            .join("vmlinux")
            .join(format!("{}.pvh", sanitize(&name)));
        match kernel::pvh_vmlinux(&a.bzimage, &out) {
            Ok(Some(p)) => kernel_image = p,
            Ok(None) => progress!("{name}: no PVH entry in the kernel; booting the bzImage"),
            Err(e) => progress!("{name}: cannot extract vmlinux ({e:#}); booting the bzImage"),
        }
    }
    let mut boot = Boot {
        qemu: deps::which(qemu::QEMU).unwrap_or_else(|| qemu::QEMU.into()),
        accel: *accel,
        kernel: kernel_image,
        initrd,
        memory_mb: ctx.args.memory,
        cpus: ctx.args.cpus,
        guest: ctx.guest.clone(),
        timeout: ctx.timeout,
        silent_limit: None,
        verbose: ctx.args.verbose,
    };
    if ctx.guest.shell {
        progress!("{name}: VM_SHELL: busybox sh on the serial console; `exit` or Ctrl-A X ends it");
    }
    let mut p = |m: &str| progress!("  {name}: {m}");
    let result = loop {
        boot.silent_limit = (boot.accel == Accel::Kvm && !ctx.guest.shell)
            .then(|| Duration::from_secs(ctx.args.kvm_silent));
        progress!(
            "{name}: booting under {} ({} MiB, {} vCPUs, timeout {} s)",
            boot.accel,
            boot.memory_mb,
            boot.cpus,
            boot.timeout.as_secs()
        );
        let r = qemu::run(&boot, &mut p)?;
        let kvm_failed = match &r.outcome {
            _ if boot.accel != Accel::Kvm || r.heard => None,
            Outcome::Silent(limit) => Some(format!(
                "KVM boot printed nothing within {} s (kvm_pvm or a broken KVM?)",
                limit.as_secs()
            )),
            Outcome::Exited(code) => Some(format!(
                "QEMU exited under KVM ({}) before the guest printed anything",
                code.map(|c| format!("status {c}"))
                    .unwrap_or_else(|| "killed by a signal".into())
            )),
            _ => None,
        };
        if let Some(why) = kvm_failed {
            let stderr = r.stderr.trim();
            let why = if stderr.is_empty() {
                format!("{why}; falling back to TCG")
            } else {
                format!(
                    "{why}; falling back to TCG. QEMU stderr: {}",
                    stderr.lines().take(3).collect::<Vec<_>>().join(" | ")
                )
            };
            progress!("{name}: {why}");
            *accel = Accel::Tcg;
            *accel_note = Some(why.clone());
            notes.push(why);
            boot.accel = Accel::Tcg;
            continue;
        }
        break r;
    };
    if ctx.guest.shell {
        return Ok(Row::failed(
            &a.label,
            &boot.accel.to_string(),
            "interactive".into(),
        ));
    }
    if let Some(b) = result.boot_host {
        progress!("  {name}: host saw init after {:.1} s", b.as_secs_f64());
    }
    let abort = match &result.outcome {
        Outcome::Finished => None,
        Outcome::Exited(code) => Some(format!(
            "QEMU exited (status {}) before the guest finished: kernel panic, crash or bad flags",
            code.map(|c| c.to_string())
                .unwrap_or_else(|| "signal".into())
        )),
        Outcome::TimedOut(t) => Some(format!("timed out after {} s (VM_TIMEOUT)", t.as_secs())),
        Outcome::Silent(_) => unreachable!("handled above"),
    };
    if let (Outcome::Finished, Some(code)) = (&result.outcome, result.exit.and_then(|s| s.code())) {
        if code != 0 && code != qemu::GUEST_DONE_STATUS {
            notes.push(format!("QEMU exit status {code} after the guest finished"));
        }
    }
    let steps: Vec<&str> = ctx.guest.steps.iter().map(String::as_str).collect();
    let boot_failed = abort.is_some();
    let mut row = result.collector.into_row(
        RowContext {
            name: a.label.clone(),
            package: a.package.clone(),
            release: a.release.clone(),
            accel: boot.accel.to_string(),
            boot_host_seconds: result.boot_host.map(|d| d.as_secs_f64()),
            total_seconds: start.elapsed().as_secs_f64(),
            notes,
        },
        &steps,
        abort,
    );
    // A boot that went wrong (panic, timeout, QEMU death) gets the console
    // tail and QEMU's stderr; a step failure has its own log lines.
    let stderr = result.stderr.trim();
    if boot_failed {
        row.console_tail = report::console_excerpt(&result.console_tail, 30);
        row.problems.push(if stderr.is_empty() {
            "QEMU stderr: (empty)".into()
        } else {
            format!("QEMU stderr: {stderr}")
        });
    } else if !stderr.is_empty() {
        row.notes.push(format!("QEMU stderr: {stderr}"));
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(0, 90)]
    #[case(1000, 215)]
    #[case(10000, 1340)]
    fn timeouts(#[case] cases: u64, #[case] secs: u64) {
        assert_eq!(default_timeout(cases), Duration::from_secs(secs));
    }

    #[rstest]
    #[case(&["probe", "replay", "prop", "roundtrip"], 4000)]
    #[case(&["probe", "replay", "prop"], 3000)]
    #[case(&["roundtrip"], 1000)]
    #[case(&["probe"], 0)]
    fn stacks_of_steps(#[case] steps: &[&str], #[case] want: u64) {
        let steps: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        assert_eq!(stacks_to_run(&steps, 3000, 1000), want);
    }

    #[test]
    fn default_steps_are_all_steps() {
        assert_eq!(DEFAULT_STEPS, STEPS.join(","));
    }

    #[rstest]
    #[case("6.12.117+deb12-amd64", "6.12.117+deb12-amd64")]
    #[case("/tmp/my kernel", "_tmp_my_kernel")]
    fn sanitized(#[case] input: &str, #[case] want: &str) {
        assert_eq!(sanitize(input), want);
    }

    /// End to end with QEMU: boots a kernel already unpacked in vm/cache
    /// under TCG with the stub overlayer (no network needed).
    #[test]
    #[ignore = "boots QEMU (~10 s) and needs a kernel unpacked in vm/cache by a previous \
                `make vm-test`; run with `cargo test -p overlayer-vm -- --ignored`"]
    fn boots_cached_kernel_with_stub() {
        let vm = Path::new(env!("CARGO_MANIFEST_DIR"));
        let qemu = deps::which(qemu::QEMU).expect(
            "cannot run: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
        );
        let busybox = deps::static_busybox()
            .expect("cannot run: no static busybox (apt-get install busybox-static)");
        let cache = vm.join("cache");
        let pkg = std::fs::read_dir(cache.join("kernels"))
            .ok()
            .and_then(|rd| {
                rd.filter_map(|e| e.ok())
                    .find(|e| e.path().join(".complete").is_file())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
            })
            .expect("cannot run: no unpacked kernel in vm/cache/kernels (run make vm-test once)");
        let mut fetcher = kernel::Fetcher::new(&cache).unwrap();
        let assets =
            kernel::prepare(&spec::KernelSpec::Package(pkg), &cache, &mut fetcher).unwrap();
        let modules =
            match kernel::module_chain(assets.modules_dir.as_ref().unwrap(), "overlay").unwrap() {
                OverlaySource::Modules(m) => m,
                _ => Vec::new(),
            };
        let tmp = tempfile::tempdir().unwrap();
        let cases = tmp.path().join("cases");
        std::fs::create_dir_all(&cases).unwrap();
        std::fs::write(cases.join("one.json"), "{}").unwrap();
        let initrd = tmp.path().join("initrd.cpio");
        initramfs::build(
            &initrd,
            &initramfs::Inputs {
                busybox: &busybox,
                overlayer: &vm.join("stub-overlayer.sh"),
                cases: &cases,
                modules: &modules,
            },
        )
        .unwrap();
        let steps: Vec<String> = STEPS.iter().map(|s| s.to_string()).collect();
        let boot = Boot {
            qemu,
            accel: Accel::Tcg,
            kernel: assets.bzimage.clone(),
            initrd,
            memory_mb: 512,
            cpus: 1,
            guest: GuestOptions {
                prop_cases: 5,
                roundtrip_cases: 4,
                seed: 1,
                shell: false,
                steps: steps.clone(),
            },
            timeout: Duration::from_secs(90),
            silent_limit: None,
            verbose: false,
        };
        let r = qemu::run(&boot, &mut |m| eprintln!("{m}")).unwrap();
        assert_eq!(
            r.outcome,
            Outcome::Finished,
            "console: {:#?}\nstderr: {}",
            r.console_tail,
            r.stderr
        );
        let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
        let row = r.collector.into_row(RowContext::default(), &steps, None);
        assert_eq!(row.status, Status::Pass, "{:?}", row.problems);
        assert_eq!(row.replay.as_ref().map(|r| r.passed), Some(1));
        assert_eq!(row.prop.as_ref().map(|p| p.passed), Some(5));
        assert_eq!(row.roundtrip.as_ref().map(|p| p.passed), Some(4));
        assert!(
            row.boot_seconds.is_some_and(|b| b < 8.0),
            "{:?}",
            row.boot_seconds
        );
    }
}
