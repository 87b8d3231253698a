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

/// How long one unpacker run may take.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The outcome of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    /// `pass`, `fail` or `skip`.
    pub verdict: &'static str,
    /// The first difference, the reason of a skip, or what was accepted.
    pub detail: String,
    pub ms: f64,
}

/// Runs `command` (with `{image}` and `{rootfs}` replaced) on `case`.
pub fn check_case(
    name: &str,
    case: &Case,
    command: &str,
    format: ImageFormat,
    user_xattrs: bool,
) -> Result<CheckResult> {
    let start = Instant::now();
    let done = |verdict, detail: String| CheckResult {
        name: name.to_string(),
        verdict,
        detail,
        ms: start.elapsed().as_secs_f64() * 1e3,
    };
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
    let (status, stderr) = run(command, &image, &rootfs)?;
    if sentinels(work)? != before {
        return Ok(done(
            "fail",
            "wrote outside {rootfs}: the sentinels changed".into(),
        ));
    }
    let refused = !status;
    let got = if refused {
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
            format!("refused a valid image: {}", last_line(&stderr)),
        ),
        (Expect::View(want), Some(view)) => compare(want, &view, done),
    })
}

fn compare(
    want: &View,
    got: &View,
    done: impl Fn(&'static str, String) -> CheckResult,
) -> CheckResult {
    let mut got = got.clone();
    // The rootfs directory itself is the unpacker's to create.
    got.nodes.remove(".");
    let mut want = want.clone();
    want.nodes.remove(".");
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

/// Runs the unpacker; returns whether it exited 0, and its stderr.
fn run(command: &str, image: &Path, rootfs: &Path) -> Result<(bool, String)> {
    let line = command
        .replace("{image}", &shell_quote(image))
        .replace("{rootfs}", &shell_quote(rootfs));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&line)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {line}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Ok((status.success(), err));
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the unpacker ran longer than {} s", TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
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
            let case = crate::prop::as_case(&stack, "generated for overlayer check", seed);
            (format!("generated-{seed}-{i}"), case)
        })
        .collect()
}
