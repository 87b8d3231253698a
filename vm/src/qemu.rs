//! QEMU command line (one small pure function per group of flags) and the
//! runner that boots a guest, collects its frames and reaps QEMU.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::accel::Accel;
use crate::report::{parse_frame, Collector};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// Exit status QEMU reports when the guest wrote 0x10 to isa-debug-exit.
pub const GUEST_DONE_STATUS: i32 = (0x10 << 1) | 1;

/// Console lines kept in memory (the report shows an excerpt).
pub const CONSOLE_KEEP: usize = 400;

/// What the guest init is told through the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOptions {
    pub prop_cases: u64,
    /// Stacks for `overlayer prop --mode roundtrip`.
    pub roundtrip_cases: u64,
    pub seed: u64,
    pub shell: bool,
    /// Steps to run, in order (`probe`, `replay`, `prop`, `roundtrip`).
    pub steps: Vec<String>,
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// Flags every run uses: no default devices, no config files, and exit
/// instead of rebooting (with `panic=-1` a guest panic ends QEMU).
pub fn base_args() -> Vec<OsString> {
    os(&["-nodefaults", "-no-user-config", "-no-reboot"])
}

/// Machine type, accelerator and CPU model.
pub fn machine_args(accel: Accel) -> Vec<OsString> {
    match accel {
        Accel::Kvm => os(&["-machine", "pc,accel=kvm", "-cpu", "host"]),
        Accel::Tcg => os(&["-machine", "pc,accel=tcg", "-cpu", "max"]),
    }
}

/// Memory and vCPUs.
pub fn resource_args(memory_mb: u32, cpus: u32) -> Vec<OsString> {
    let mem = if memory_mb.is_multiple_of(1024) {
        format!("{}G", memory_mb / 1024)
    } else {
        format!("{memory_mb}M")
    };
    vec![
        "-m".into(),
        mem.into(),
        "-smp".into(),
        cpus.to_string().into(),
    ]
}

/// Kernel, initramfs and command line.
pub fn kernel_args(kernel: &Path, initrd: &Path, cmdline: &str) -> Vec<OsString> {
    vec![
        "-kernel".into(),
        kernel.as_os_str().to_owned(),
        "-initrd".into(),
        initrd.as_os_str().to_owned(),
        "-append".into(),
        cmdline.into(),
    ]
}

/// The kernel command line: serial console, quiet, panic ends the VM, and
/// the guest options as `OVL_*` variables (the kernel passes unknown
/// `name=value` parameters to init as environment variables).
pub fn kernel_cmdline(opts: &GuestOptions) -> String {
    let mut s = String::from("console=ttyS0 panic=-1 oops=panic quiet loglevel=3 mitigations=off");
    s.push_str(&format!(
        " OVL_PROP_CASES={} OVL_ROUNDTRIP_CASES={} OVL_SEED={}",
        opts.prop_cases, opts.roundtrip_cases, opts.seed
    ));
    if !opts.steps.is_empty() {
        s.push_str(&format!(" OVL_STEPS={}", opts.steps.join(",")));
    }
    if opts.shell {
        s.push_str(" OVL_SHELL=1");
    }
    s
}

/// Serial ports: ttyS0 is the console on QEMU's stdio (with the monitor
/// multiplexed in for interactive use), ttyS1 carries the result frames to a
/// unix socket the runner listens on.
pub fn console_args(interactive: bool, results_socket: &Path) -> Vec<OsString> {
    let path = results_socket.to_string_lossy().replace(',', ",,");
    vec![
        "-display".into(),
        "none".into(),
        "-serial".into(),
        if interactive { "mon:stdio" } else { "stdio" }.into(),
        "-chardev".into(),
        format!("socket,id=results,path={path}").into(),
        "-serial".into(),
        "chardev:results".into(),
    ]
}

/// isa-debug-exit, so the guest can end QEMU with a recognisable status.
pub fn exit_device_args() -> Vec<OsString> {
    os(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
}

/// One boot.
#[derive(Debug, Clone)]
pub struct Boot {
    pub qemu: PathBuf,
    pub accel: Accel,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mb: u32,
    pub cpus: u32,
    pub guest: GuestOptions,
    /// Whole-run limit.
    pub timeout: Duration,
    /// Give up (outcome `Silent`) if the guest prints nothing for this long
    /// after start: used to catch KVM hangs quickly.
    pub silent_limit: Option<Duration>,
    /// Echo the guest console to stderr.
    pub verbose: bool,
}

/// All flags for a boot.
pub fn qemu_args(b: &Boot, results_socket: &Path) -> Vec<OsString> {
    let mut a = base_args();
    a.extend(machine_args(b.accel));
    a.extend(resource_args(b.memory_mb, b.cpus));
    a.extend(kernel_args(&b.kernel, &b.initrd, &kernel_cmdline(&b.guest)));
    a.extend(console_args(b.guest.shell, results_socket));
    a.extend(exit_device_args());
    a
}

/// How a boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest reported `done`.
    Finished,
    /// QEMU exited before the guest reported `done` (panic, crash, bad flags).
    Exited(Option<i32>),
    TimedOut(Duration),
    /// Nothing at all from the guest within the silent limit.
    Silent(Duration),
}

pub struct BootResult {
    pub outcome: Outcome,
    pub collector: Collector,
    pub console_tail: Vec<String>,
    pub stderr: String,
    /// Host time from spawning QEMU to the guest's boot frame.
    pub boot_host: Option<Duration>,
    pub exit: Option<ExitStatus>,
    /// Whether the guest printed anything at all.
    pub heard: bool,
}

/// Kills and reaps QEMU however the runner leaves its scope.
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A line from the serial console (`console`) or the results port, or the
/// end of one of the two streams.
enum Event {
    Line { console: bool, text: String },
    Closed,
}

fn spawn_line_reader<R: Read + Send + 'static>(
    r: R,
    tx: mpsc::Sender<Event>,
    console: bool,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&buf);
                    let s = s.trim_end_matches(['\r', '\n']).replace('\r', "");
                    if tx.send(Event::Line { console, text: s }).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Closed);
    })
}

/// Accept QEMU's connection to the results socket and forward its lines.
fn spawn_results(
    listener: UnixListener,
    tx: mpsc::Sender<Event>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let _ = listener.set_nonblocking(true);
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if stop.load(Ordering::Relaxed) {
                        let _ = tx.send(Event::Closed);
                        return;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(_) => {
                    let _ = tx.send(Event::Closed);
                    return;
                }
            }
        };
        let _ = stream.set_nonblocking(false);
        spawn_line_reader(stream, tx, false).join().ok();
    })
}

/// Boot and collect. `progress` gets human-readable lines as frames arrive.
pub fn run(b: &Boot, progress: &mut dyn FnMut(&str)) -> Result<BootResult> {
    let dir = tempfile::Builder::new()
        .prefix("overlayer-vm-")
        .tempdir()
        .context("creating a temp dir for the results socket")?;
    let sock = dir.path().join("results.sock");
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    let args = qemu_args(b, &sock);

    let mut cmd = Command::new(&b.qemu);
    cmd.args(&args);
    if b.verbose {
        let words: Vec<String> = args
            .iter()
            .map(|a| {
                let a = a.to_string_lossy();
                if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.into_owned()
                }
            })
            .collect();
        eprintln!("  $ {} {}", b.qemu.display(), words.join(" "));
    }
    if b.guest.shell {
        cmd.stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
    } else {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| {
        format!(
            "starting {} (is qemu-system-x86 installed?)",
            b.qemu.display()
        )
    })?;
    let mut guard = QemuGuard(child);

    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = vec![spawn_results(listener, tx.clone(), stop.clone())];
    let mut open_streams = 1;
    let stderr_reader = guard.0.stderr.take().map(|mut e| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    if let Some(out) = guard.0.stdout.take() {
        readers.push(spawn_line_reader(out, tx.clone(), true));
        open_streams += 1;
    }
    drop(tx);

    let mut collector = Collector::default();
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut heard = false;
    let mut boot_host = None;
    let mut outcome = None;
    let mut exit = None;
    let mut last_news = Instant::now();
    let mut step = "boot".to_string();
    let steps: Vec<&str> = b.guest.steps.iter().map(String::as_str).collect();
    let mut done_at: Option<Instant> = None;

    let handle_line = |line: &str,
                       from_console: bool,
                       collector: &mut Collector,
                       tail: &mut VecDeque<String>,
                       progress: &mut dyn FnMut(&str)|
     -> Option<String> {
        if from_console {
            if b.verbose {
                eprintln!("  | {line}");
            }
            tail.push_back(line.to_string());
            while tail.len() > CONSOLE_KEEP {
                tail.pop_front();
            }
        }
        let f = parse_frame(line)?;
        if let Some(msg) = collector.push(&f) {
            progress(&msg);
        }
        Some(f.kind)
    };

    loop {
        let now = Instant::now();
        let elapsed = now - start;
        if let Some(limit) = b.silent_limit {
            if !heard && elapsed > limit {
                outcome = Some(Outcome::Silent(limit));
                break;
            }
        }
        if elapsed > b.timeout && !b.guest.shell {
            outcome = Some(Outcome::TimedOut(b.timeout));
            break;
        }
        if let Some(t) = done_at {
            if now - t > Duration::from_secs(10) {
                // Reported done but did not power off; good enough.
                outcome = Some(Outcome::Finished);
                break;
            }
        }
        if open_streams == 0 {
            // QEMU's output is closed: it has exited (or is about to).
            exit = guard.0.wait().ok();
            break;
        }
        if now - last_news > Duration::from_secs(30) && !b.guest.shell {
            progress(&format!(
                "still running ({step}), {:.0} s so far",
                elapsed.as_secs_f64()
            ));
            last_news = now;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Line { console, text }) => {
                heard = true;
                if let Some(kind) = handle_line(&text, console, &mut collector, &mut tail, progress)
                {
                    on_kind(
                        &kind,
                        &steps,
                        &mut step,
                        &mut boot_host,
                        &mut done_at,
                        start,
                        &mut last_news,
                    );
                }
            }
            Ok(Event::Closed) => open_streams -= 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if b.guest.shell {
                    if let Ok(Some(st)) = guard.0.try_wait() {
                        exit = Some(st);
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                exit = guard.0.wait().ok();
                break;
            }
        }
    }
    // Kill QEMU if still running, then reap it and the reader threads.
    stop.store(true, Ordering::Relaxed);
    if exit.is_none() {
        if let Ok(None) = guard.0.try_wait() {
            let _ = guard.0.kill();
        }
        exit = guard.0.wait().ok();
    }
    drop(rx);
    for r in readers {
        let _ = r.join();
    }
    let stderr = stderr_reader
        .and_then(|h| h.join().ok())
        .unwrap_or_default();
    drop(guard);

    let outcome = match outcome {
        Some(o) => o,
        None if collector.done => Outcome::Finished,
        None => Outcome::Exited(exit.and_then(|s| s.code())),
    };
    Ok(BootResult {
        outcome,
        collector,
        console_tail: tail.into_iter().collect(),
        stderr,
        boot_host,
        exit,
        heard,
    })
}

/// The step after `current` (what the guest runs once it reports `current`
/// finished or skipped), or `finishing`.
fn next_step(steps: &[&str], current: &str) -> String {
    steps
        .iter()
        .position(|s| *s == current)
        .and_then(|i| steps.get(i + 1))
        .map_or_else(|| "finishing".into(), |s| s.to_string())
}

fn on_kind(
    kind: &str,
    steps: &[&str],
    step: &mut String,
    boot_host: &mut Option<Duration>,
    done_at: &mut Option<Instant>,
    start: Instant,
    last_news: &mut Instant,
) {
    *last_news = Instant::now();
    match kind {
        "boot" => {
            *boot_host = Some(start.elapsed());
            *step = "loading modules".into();
        }
        "overlay" => *step = steps.first().map_or("finishing", |s| s).into(),
        "exit" | "skip" => *step = next_step(steps, step),
        "done" => *done_at = Some(Instant::now()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn strs(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[rstest]
    #[case(Accel::Tcg, &["-machine", "pc,accel=tcg", "-cpu", "max"])]
    #[case(Accel::Kvm, &["-machine", "pc,accel=kvm", "-cpu", "host"])]
    fn machine(#[case] accel: Accel, #[case] want: &[&str]) {
        assert_eq!(strs(machine_args(accel)), want);
    }

    #[rstest]
    #[case(1024, 2, &["-m", "1G", "-smp", "2"])]
    #[case(1536, 1, &["-m", "1536M", "-smp", "1"])]
    #[case(4096, 4, &["-m", "4G", "-smp", "4"])]
    fn resources(#[case] mem: u32, #[case] cpus: u32, #[case] want: &[&str]) {
        assert_eq!(strs(resource_args(mem, cpus)), want);
    }

    #[test]
    fn kernel() {
        assert_eq!(
            strs(kernel_args(
                Path::new("/k/vmlinuz"),
                Path::new("/i.cpio"),
                "console=ttyS0"
            )),
            [
                "-kernel",
                "/k/vmlinuz",
                "-initrd",
                "/i.cpio",
                "-append",
                "console=ttyS0"
            ]
        );
    }

    fn opts(shell: bool, steps: &[&str]) -> GuestOptions {
        GuestOptions {
            prop_cases: 300,
            roundtrip_cases: 200,
            seed: 42,
            shell,
            steps: steps.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[rstest]
    #[case(opts(false, &[]), &["console=ttyS0", "panic=-1", "quiet", "OVL_PROP_CASES=300", "OVL_ROUNDTRIP_CASES=200", "OVL_SEED=42"], &["OVL_SHELL", "OVL_STEPS"])]
    #[case(opts(true, &[]), &["OVL_SHELL=1"], &["OVL_STEPS"])]
    #[case(opts(false, &["probe", "prop"]), &["OVL_STEPS=probe,prop"], &["OVL_SHELL"])]
    #[case(opts(false, &["probe", "replay", "prop", "roundtrip"]), &["OVL_STEPS=probe,replay,prop,roundtrip"], &["OVL_SHELL"])]
    fn cmdline(#[case] o: GuestOptions, #[case] has: &[&str], #[case] lacks: &[&str]) {
        let c = kernel_cmdline(&o);
        let words: Vec<&str> = c.split(' ').collect();
        for h in has {
            assert!(words.contains(h), "{c} lacks {h}");
        }
        for l in lacks {
            assert!(!c.contains(l), "{c} has {l}");
        }
        assert!(c.starts_with("console=ttyS0"));
    }

    #[rstest]
    #[case(false, "/t/r.sock", &["-display", "none", "-serial", "stdio", "-chardev", "socket,id=results,path=/t/r.sock", "-serial", "chardev:results"])]
    #[case(true, "/t/a,b.sock", &["-display", "none", "-serial", "mon:stdio", "-chardev", "socket,id=results,path=/t/a,,b.sock", "-serial", "chardev:results"])]
    fn console(#[case] interactive: bool, #[case] sock: &str, #[case] want: &[&str]) {
        assert_eq!(strs(console_args(interactive, Path::new(sock))), want);
    }

    #[rstest]
    #[case(&["probe", "replay", "prop", "roundtrip"], "probe", "replay")]
    #[case(&["probe", "replay", "prop", "roundtrip"], "prop", "roundtrip")]
    #[case(&["probe", "replay", "prop", "roundtrip"], "roundtrip", "finishing")]
    #[case(&["probe", "roundtrip"], "probe", "roundtrip")]
    #[case(&["probe"], "probe", "finishing")]
    #[case(&["probe"], "loading modules", "finishing")]
    fn steps_advance(#[case] steps: &[&str], #[case] current: &str, #[case] want: &str) {
        assert_eq!(next_step(steps, current), want);
    }

    #[test]
    fn exit_device() {
        assert_eq!(
            strs(exit_device_args()),
            ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        );
        assert_eq!(GUEST_DONE_STATUS, 33);
    }

    #[test]
    fn full_command_line() {
        let b = Boot {
            qemu: QEMU.into(),
            accel: Accel::Tcg,
            kernel: "/k".into(),
            initrd: "/i".into(),
            memory_mb: 1024,
            cpus: 2,
            guest: opts(false, &[]),
            timeout: Duration::from_secs(60),
            silent_limit: None,
            verbose: false,
        };
        let a = strs(qemu_args(&b, Path::new("/s")));
        assert_eq!(&a[..3], ["-nodefaults", "-no-user-config", "-no-reboot"]);
        for w in [
            "-kernel",
            "-initrd",
            "-append",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-smp",
        ] {
            assert!(a.iter().any(|x| x == w), "missing {w}");
        }
    }
}
