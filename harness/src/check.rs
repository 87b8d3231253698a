//! `overlayer check`: runs a third-party unpacker on every case (and on
//! generated stacks) and compares the tree it produces with the kernel's
//! merged view, recorded in the case. Each run happens in a fresh sandbox
//! with sentinel files around the output, so a write outside `{rootfs}` is
//! caught.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use overlayer::tree::{self, View};
use serde::Serialize;

use crate::case::{Case, Expect};
use crate::imagefmt::{write_image, ImageFormat};

/// How long one unpacker run may take by default (`check --timeout`).
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// How long a timed-out unpacker gets between SIGTERM and SIGKILL, so an
/// adapter's cleanup trap can stop its daemon and unmount its store.
const GRACE: Duration = Duration::from_secs(15);

/// What the unpacker did, kept apart from the verdict: a refusal (a
/// non-zero exit) is an answer; a crash (killed by a signal) or a timeout is
/// not, and never passes as a required refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// Exited 0.
    Accepted,
    /// Exited non-zero.
    Refused,
    /// Killed by a signal it did not get from `check`.
    Crashed,
    /// Ran longer than the timeout and was killed.
    Timeout,
    /// Not run (a skipped case).
    #[serde(rename = "not-run")]
    NotRun,
}

/// The outcome of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    /// `pass`, `fail` or `skip`.
    pub verdict: &'static str,
    /// The first difference, the reason of a skip, or what was accepted.
    pub detail: String,
    /// What the unpacker did.
    pub peer: Peer,
    pub ms: f64,
}

/// Runs `command` (with `{image}` and `{rootfs}` replaced) on `case`.
pub fn check_case(
    name: &str,
    case: &Case,
    command: &str,
    format: ImageFormat,
    user_xattrs: bool,
    timeout: Duration,
) -> Result<CheckResult> {
    let start = Instant::now();
    let result = |peer, verdict, detail: String| CheckResult {
        name: name.to_string(),
        verdict,
        detail,
        peer,
        ms: start.elapsed().as_secs_f64() * 1e3,
    };
    let done = |verdict, detail| result(Peer::NotRun, verdict, detail);
    let uses_user = case
        .layers
        .iter()
        .flatten()
        .any(|e| e.xattrs.keys().any(|k| k.starts_with("user.")));
    if uses_user && !user_xattrs {
        return Ok(done("skip", crate::kernel::NO_USER_XATTRS.into()));
    }
    if case.export.is_some() {
        return Ok(done(
            "skip",
            "an upper-dir case: checks overlayer's export, not an unpacker".into(),
        ));
    }
    if case.options != crate::case::CaseOptions::default() {
        return Ok(done(
            "skip",
            "checks overlayer's own --strict or limits, not a property of the image".into(),
        ));
    }
    let layers = case.layer_bytes()?;
    let sandbox = tempfile::Builder::new()
        .prefix("overlayer-check-")
        .tempdir()
        .context("create sandbox")?;
    let work = sandbox.path();
    std::fs::write(work.join("sentinel-file"), b"must not change")?;
    std::fs::create_dir(work.join("sentinel-dir"))?;
    std::fs::write(work.join("sentinel-dir/passwd"), b"root:x:0:0")?;
    let image = work.join(match format {
        ImageFormat::Oci => "image",
        ImageFormat::DockerSave => "image.tar",
        ImageFormat::Layers => "layers",
    });
    if let Err(e) = write_image(&layers, format, &image) {
        // A corrupt layer has no diff_id; only the `layers` form carries it.
        return Ok(done(
            "skip",
            format!("cannot build a {format:?} image of it: {e:#}"),
        ));
    }
    let before = sentinels(work)?;
    let rootfs = work.join("rootfs");
    let (exit, stderr) = run(command, &image, &rootfs, timeout)?;
    let exit = crash_of(exit, &stderr);
    let peer = match exit {
        Exit::Code(0) => Peer::Accepted,
        Exit::Code(_) => Peer::Refused,
        Exit::Signal(_) | Exit::Panic => Peer::Crashed,
        Exit::Timeout => Peer::Timeout,
    };
    let done = |verdict, detail| result(peer, verdict, detail);
    if sentinels(work)? != before {
        return Ok(done(
            "fail",
            "wrote outside {rootfs}: the sentinels changed".into(),
        ));
    }
    match exit {
        Exit::Signal(sig) => {
            return Ok(done(
                "fail",
                format!("crashed: killed by signal {sig}: {}", last_line(&stderr)),
            ))
        }
        Exit::Panic => {
            return Ok(done(
                "fail",
                format!("crashed: {}", panic_line(&stderr).unwrap_or_default()),
            ))
        }
        Exit::Timeout => {
            return Ok(done(
                "fail",
                format!(
                    "timed out: still running after {} s, killed",
                    timeout.as_secs()
                ),
            ))
        }
        Exit::Code(_) => {}
    }
    let got = if peer == Peer::Refused {
        None
    } else if rootfs.is_dir() {
        Some(tree::capture(&rootfs)?)
    } else {
        return Ok(done(
            "fail",
            "exited 0 but produced no {rootfs} directory".into(),
        ));
    };
    Ok(match (&case.expect, got) {
        (Expect::Error(e), None) => done("pass", format!("refused, as required ({})", e.rule)),
        (Expect::Error(e), Some(_)) => done(
            "fail",
            format!(
                "accepted an image that must be refused ({} at layer {} entry {:?})",
                e.rule, e.layer, e.entry
            ),
        ),
        (Expect::View(_), None) if case.accept.iter().any(|a| a == "refusal") => {
            done("pass", "refused, which this case accepts".into())
        }
        (Expect::View(_), None) => done(
            "fail",
            format!(
                "refused a valid image (exit {}): {}",
                match exit {
                    Exit::Code(c) => c,
                    _ => -1,
                },
                last_line(&stderr)
            ),
        ),
        (Expect::View(want), Some(view)) => compare(want, &view, sets_root(&layers), done),
    })
}

/// Whether a layer has a root directory entry (`./`, `/`): layer.md
/// applies its attributes to the root like any directory's, so the rootfs
/// directory's owner, mode, xattrs and mtime are then compared.
fn sets_root(layers: &[Vec<u8>]) -> bool {
    layers.iter().enumerate().any(|(i, layer)| {
        let mut found = false;
        // A layer the library refuses still counts up to the refusal.
        let _ = overlayer::layer::read_layer(i, &layer[..], |entry, _| {
            found |= entry.path.is_empty() && entry.kind == overlayer::layer::EntryKind::Dir;
            Ok(())
        });
        found
    })
}

fn compare(
    want: &View,
    got: &View,
    root_set: bool,
    done: impl Fn(&'static str, String) -> CheckResult,
) -> CheckResult {
    let mut got = got.clone();
    let mut want = want.clone();
    if !root_set {
        // No layer says what the root is: the rootfs directory itself is
        // the unpacker's to create.
        got.nodes.remove(".");
        want.nodes.remove(".");
    }
    let differences = tree::diff(&want, &got);
    match differences.first() {
        None => done("pass", String::new()),
        Some(d) => done("fail", format!("{d} ({} difference(s))", differences.len())),
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

/// How an unpacker run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Code(i32),
    Signal(i32),
    /// A runtime's own crash report (Go `panic:`/`fatal error:`, Rust
    /// `panicked at`): a crash, whatever the exit code.
    Panic,
    Timeout,
}

/// Shells report a child killed by signal N as exit 128+N; runtimes that
/// catch their own crash print a report and exit with a plain code. Both
/// are crashes, not refusals.
fn crash_of(exit: Exit, stderr: &str) -> Exit {
    match exit {
        Exit::Code(c) if (129..=128 + 64).contains(&c) => Exit::Signal(c - 128),
        Exit::Code(c) if c != 0 && panic_line(stderr).is_some() => Exit::Panic,
        e => e,
    }
}

/// The first line of a runtime crash report in `stderr`, if there is one.
fn panic_line(stderr: &str) -> Option<String> {
    let goroutines = stderr.contains("\ngoroutine ");
    stderr
        .lines()
        .find(|l| {
            (goroutines && (l.starts_with("panic: ") || l.starts_with("fatal error: ")))
                || l.contains("' panicked at ")
                || l.starts_with("thread '") && l.contains(" panicked at ")
        })
        .map(|l| l.chars().take(200).collect())
}

/// Runs the unpacker in its own process group; returns how it ended and its
/// stderr. On timeout the whole group gets SIGTERM, then SIGKILL after
/// [`GRACE`], so nothing it started keeps running.
fn run(command: &str, image: &Path, rootfs: &Path, timeout: Duration) -> Result<(Exit, String)> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let line = command
        .replace("{image}", &shell_quote(image))
        .replace("{rootfs}", &shell_quote(rootfs));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&line)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {line}"))?;
    // Read stderr on a thread so a chatty unpacker cannot fill the pipe.
    let mut pipe = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut err = Vec::new();
        let _ = pipe.read_to_end(&mut err);
        String::from_utf8_lossy(&err).into_owned()
    });
    let group = rustix::process::Pid::from_child(&child);
    let started = Instant::now();
    let mut timed_out = false;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let elapsed = started.elapsed();
        if !timed_out && elapsed > timeout {
            timed_out = true;
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
        } else if timed_out && !killed && elapsed > timeout + GRACE {
            killed = true;
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if timed_out {
        // Whatever is left of the group after its leader went.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    let err = reader.join().unwrap_or_default();
    let exit = if timed_out {
        Exit::Timeout
    } else if let Some(code) = status.code() {
        Exit::Code(code)
    } else {
        Exit::Signal(status.signal().unwrap_or(0))
    };
    Ok((exit, err))
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Everything in the sandbox but the image and the output.
fn sentinels(work: &Path) -> Result<View> {
    let mut view = tree::capture(work)?;
    view.nodes.retain(|k, _| k.starts_with("sentinel-"));
    Ok(view)
}

/// True if files under the system temporary directory take `user.*` xattrs.
pub fn tmp_takes_user_xattrs() -> bool {
    let Ok(f) = tempfile::NamedTempFile::new() else {
        return false;
    };
    rustix::fs::setxattr(
        f.path(),
        "user.overlayer-probe",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok()
}

/// Generated stacks as cases, expected outcome from the model.
pub fn generated(n: u32, seed: u64) -> Vec<(String, Case)> {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let strategy = crate::strategy::stack(8, crate::strategy::XattrNamespace::User);
    (0..n)
        .map(|i| {
            let stack = strategy.new_tree(&mut runner).expect("strategy").current();
            let case = crate::prop::as_case(&stack, &[], "generated for overlayer check", seed);
            (format!("generated-{seed}-{i}"), case)
        })
        .collect()
}
