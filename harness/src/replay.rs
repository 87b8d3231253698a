//! `overlayer replay`: every case through the userspace apply and, where it
//! can mount, through convert + the kernel, against the expected outcome.

use std::time::Instant;

use anyhow::Result;
use overlayer::tree::diff;
use overlayer::{Limits, ReadOptions};

use serde::Serialize;

use crate::case::{Case, CaseFile, CaseOptions, Expect, ExpectedError, Mode};
use crate::kernel::{Outcome, Scratch, WriteOutcome};

/// The verdict of one side (apply or kernel) of one case.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", tag = "verdict", content = "detail")]
pub enum Verdict {
    Pass,
    Fail(String),
    Skip(String),
}

impl Verdict {
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "FAIL",
            Verdict::Skip(_) => "skip",
        }
    }
}

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub apply: Verdict,
    pub kernel: Verdict,
    pub ms: f64,
}

/// Options of a replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Modes to check the kernel side in; empty means every mode this
    /// kernel supports.
    pub modes: Vec<Mode>,
}

impl ReplayOptions {
    /// The modes to run here; an explicitly asked mode the kernel lacks is an error.
    pub fn modes(&self, scratch: &Scratch) -> Result<Vec<Mode>> {
        if self.modes.is_empty() {
            return Ok([Mode::Trusted, Mode::Userxattr, Mode::Xwhiteouts]
                .into_iter()
                .filter(|m| !scratch.can_mount() || m.unavailable(scratch).is_none())
                .collect());
        }
        for m in &self.modes {
            if let Some(why) = m.unavailable(scratch) {
                anyhow::bail!("mode {m:?} cannot run here: {why}");
            }
        }
        Ok(self.modes.clone())
    }
}

/// Features this build of the harness can exercise.
const SUPPORTED_FEATURES: &[&str] = &["userxattr"];

/// Runs one case, the kernel side in every mode of `modes`.
pub fn run_case(scratch: &mut Scratch, file: &CaseFile, modes: &[Mode]) -> Result<CaseResult> {
    let start = Instant::now();
    let case = &file.case;
    if let Some(ex) = &case.export {
        let (apply, kernel) = run_export_case(scratch, case, ex)?;
        return Ok(CaseResult {
            name: file.name.clone(),
            apply,
            kernel,
            ms: start.elapsed().as_secs_f64() * 1e3,
        });
    }
    let tars = case.layer_bytes()?;
    if uses_user_xattrs(case) && !scratch.user_xattrs() {
        let skip = Verdict::Skip(crate::kernel::NO_USER_XATTRS.into());
        return Ok(CaseResult {
            name: file.name.clone(),
            apply: skip.clone(),
            kernel: skip,
            ms: start.elapsed().as_secs_f64() * 1e3,
        });
    }
    let read = read_options(&case.options);
    let host = HostPaths::record(case);
    let applied = scratch.apply_view(&tars, &read)?;
    let apply = judge(case, &applied);
    let kernel = match kernel_skip(scratch, case) {
        Some(reason) => Verdict::Skip(reason),
        None => {
            let mut verdict = Verdict::Pass;
            for mode in modes {
                let merged = scratch.kernel_view(&tars, mode.convert_options(read))?;
                if let Verdict::Fail(d) = judge(case, &merged) {
                    verdict = Verdict::Fail(format!("{mode:?}: {d}"));
                    break;
                }
            }
            verdict
        }
    };
    if let Some(changed) = host.changed() {
        anyhow::bail!(
            "{}: the host changed outside the root: {changed}",
            file.name
        );
    }
    Ok(CaseResult {
        name: file.name.clone(),
        apply,
        kernel,
        ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

/// An upper-dir case, in each of its markings: the kernel side is the merged
/// view after the writes; the apply side is the layers plus the exported
/// upper, the exported entry names and `changes`.
fn run_export_case(
    scratch: &mut Scratch,
    case: &Case,
    ex: &crate::case::ExportCase,
) -> Result<(Verdict, Verdict)> {
    if !scratch.can_mount() {
        let why = crate::kernel::unavailable().unwrap_or_else(|| "cannot mount".into());
        let skip = Verdict::Skip(format!("needs a writable overlay mount: {why}"));
        return Ok((skip.clone(), skip));
    }
    let tars = case.layer_bytes()?;
    let ops = ex.ops()?;
    let mut ran = Vec::new();
    let mut skipped = Vec::new();
    for mode in ex.marks() {
        if let Some(why) = mode.unavailable(scratch) {
            skipped.push(format!("{mode:?}: {why}"));
            continue;
        }
        let opts = mode.convert_options(read_options(&case.options));
        match scratch.write_view(&tars, &ops, ex.redirect, opts)? {
            WriteOutcome::LowerRefused(e) => {
                let v = Verdict::Fail(format!("convert refused the layers: {e}"));
                return Ok((tagged(v.clone(), mode), tagged(v, mode)));
            }
            WriteOutcome::Views {
                kernel,
                flat,
                layer,
                changes,
                ..
            } => {
                let mut apply = judge(case, &Ok(without_mtimes(flat)));
                let entries = layer_entries(&layer)?;
                if apply == Verdict::Pass && entries != ex.entries {
                    apply = Verdict::Fail(format!("exported entries: {entries:?}"));
                }
                let lines = change_lines(&changes);
                if apply == Verdict::Pass && lines != ex.changes {
                    apply = Verdict::Fail(format!("changes: {lines:?}"));
                }
                let kernel = judge(case, &Ok(without_mtimes(kernel)));
                if apply != Verdict::Pass || kernel != Verdict::Pass {
                    return Ok((tagged(apply, mode), tagged(kernel, mode)));
                }
                ran.push(mode);
            }
        }
    }
    if skipped.is_empty() {
        return Ok((Verdict::Pass, Verdict::Pass));
    }
    // A marking the case asks for did not run: the case is not passed,
    // whatever the others showed.
    let mut why = skipped.join("; ");
    if !ran.is_empty() {
        why.push_str(&format!(" (passed in {ran:?})"));
    }
    let skip = Verdict::Skip(why);
    Ok((skip.clone(), skip))
}

/// Upper-dir cases write files now: their times differ from run to run.
/// (That export keeps times is checked by `prop --mode write`, which
/// compares the two sides of one run.)
fn without_mtimes(mut view: overlayer::tree::View) -> overlayer::tree::View {
    for node in view.nodes.values_mut() {
        node.mtime = None;
    }
    view
}

fn tagged(v: Verdict, mode: Mode) -> Verdict {
    match v {
        Verdict::Fail(d) => Verdict::Fail(format!("{mode:?}: {d}")),
        v => v,
    }
}

/// The entry names of a layer tar, in order.
pub fn layer_entries(layer: &[u8]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in tar::Archive::new(layer).entries()? {
        let entry = entry?;
        names.push(String::from_utf8_lossy(&entry.path_bytes()).into_owned());
    }
    Ok(names)
}

fn change_lines(changes: &[overlayer::Change]) -> Vec<String> {
    changes.iter().map(ToString::to_string).collect()
}

/// The library's reading options for a case's `options`.
pub fn read_options(o: &CaseOptions) -> ReadOptions {
    let d = Limits::default();
    ReadOptions {
        strict: o.strict,
        limits: Limits {
            max_bytes: o.max_bytes.unwrap_or(d.max_bytes),
            max_entries: o.max_entries.unwrap_or(d.max_entries),
            max_file_bytes: o.max_file_bytes.unwrap_or(d.max_file_bytes),
            max_depth: o.max_depth.unwrap_or(d.max_depth),
            max_extension_bytes: o.max_extension_bytes.unwrap_or(d.max_extension_bytes),
        },
    }
}

/// Host paths named by a case's absolute symlink targets that did not exist
/// before the case ran: a layer written through such a symlink must never
/// create them. (Existing host directories are not compared: other work on
/// the machine changes them.)
struct HostPaths(Vec<String>);

impl HostPaths {
    fn record(case: &Case) -> Self {
        let mut paths: Vec<String> = case
            .layers
            .iter()
            .flatten()
            .filter_map(|e| e.target.clone())
            .filter(|t| t.starts_with('/') && t.len() > 1)
            .filter(|t| std::fs::symlink_metadata(t).is_err())
            .collect();
        paths.sort();
        paths.dedup();
        HostPaths(paths)
    }

    fn changed(&self) -> Option<String> {
        self.0
            .iter()
            .find(|p| std::fs::symlink_metadata(p).is_ok())
            .cloned()
    }
}

/// A case that writes `user.*` xattrs (or mounts with userxattr) needs a
/// scratch filesystem that takes them.
fn uses_user_xattrs(case: &Case) -> bool {
    case.requires.iter().any(|r| r == "userxattr")
        || case
            .layers
            .iter()
            .flatten()
            .any(|e| e.xattrs.keys().any(|k| k.starts_with("user.")))
}

fn kernel_skip(scratch: &Scratch, case: &Case) -> Option<String> {
    if !scratch.can_mount() {
        return Some(crate::kernel::unavailable().unwrap_or_else(|| "cannot mount".into()));
    }
    for feature in &case.requires {
        if !SUPPORTED_FEATURES.contains(&feature.as_str()) {
            return Some(format!(
                "needs {feature}, which this harness does not exercise yet"
            ));
        }
        if feature == "userxattr" && !crate::kernel::probe_cached().userxattr {
            return Some("the kernel's overlay has no userxattr mount option (Linux 5.11)".into());
        }
    }
    None
}

fn judge(case: &Case, got: &Outcome) -> Verdict {
    match (&case.expect, got) {
        (Expect::View(want), Ok(view)) => {
            let differences = diff(want, view);
            if differences.is_empty() {
                Verdict::Pass
            } else {
                let shown: Vec<String> =
                    differences.iter().take(5).map(|d| d.to_string()).collect();
                Verdict::Fail(format!(
                    "{} difference(s): {}",
                    differences.len(),
                    shown.join("; ")
                ))
            }
        }
        (Expect::View(_), Err(e)) => Verdict::Fail(format!("unexpected error: {e}")),
        (Expect::Error(want), Ok(_)) => Verdict::Fail(format!(
            "expected refusal {} at layer {} entry {:?}, but it succeeded",
            want.rule, want.layer, want.entry
        )),
        (Expect::Error(want), Err(e)) => match matches_error(want, e) {
            true => Verdict::Pass,
            false => Verdict::Fail(format!(
                "expected {} at layer {} entry {:?}, got: {e}",
                want.rule, want.layer, want.entry
            )),
        },
    }
}

/// True if `error` is the refusal `want` names (`entry` `*` matches any).
pub fn matches_error(want: &ExpectedError, error: &overlayer::Error) -> bool {
    let rule_ok = error.rule().map(|r| r.code()) == Some(want.rule.as_str());
    let loc_ok = match error.location() {
        Some((layer, entry)) => layer == want.layer && (want.entry == "*" || entry == want.entry),
        None => false,
    };
    rule_ok && loc_ok
}

/// Records the expected outcome of a case from the kernel (trusted mode), or the error.
pub fn record(scratch: &mut Scratch, case: &Case) -> Result<Case> {
    anyhow::ensure!(
        scratch.can_mount(),
        "recording needs the kernel oracle: {}",
        crate::kernel::unavailable().unwrap_or_default()
    );
    let tars = case.layer_bytes()?;
    let mut updated = case.clone();
    if let Some(ex) = &mut updated.export {
        let opts = ex.marks()[0].convert_options(read_options(&case.options));
        match scratch.write_view(&tars, &ex.ops()?, ex.redirect, opts)? {
            WriteOutcome::LowerRefused(e) => anyhow::bail!("convert refused the layers: {e}"),
            WriteOutcome::Views {
                kernel,
                layer,
                changes,
                ..
            } => {
                ex.entries = layer_entries(&layer)?;
                ex.changes = change_lines(&changes);
                updated.expect = Expect::View(without_mtimes(kernel));
            }
        }
        return Ok(updated);
    }
    updated.expect = record_expect(scratch, case, &tars)?;
    Ok(updated)
}

fn record_expect(scratch: &mut Scratch, case: &Case, tars: &[Vec<u8>]) -> Result<Expect> {
    let merged = scratch.kernel_view(
        tars,
        Mode::Trusted.convert_options(read_options(&case.options)),
    )?;
    Ok(match merged {
        Ok(view) => Expect::View(view),
        Err(e) => {
            let (layer, entry) = e.location().unwrap_or((0, "*"));
            Expect::Error(ExpectedError {
                layer,
                entry: entry.to_string(),
                rule: e.rule().map(|r| r.code()).unwrap_or("io").to_string(),
            })
        }
    })
}

/// Totals of a run.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// A case passes if no side failed and at least one side passed; it is
/// skipped if any side was skipped and none failed (reported with the reason).
pub fn totals(results: &[CaseResult]) -> Totals {
    let mut t = Totals {
        total: results.len(),
        ..Default::default()
    };
    for r in results {
        let sides = [&r.apply, &r.kernel];
        if sides.iter().any(|v| matches!(v, Verdict::Fail(_))) {
            t.failed += 1;
        } else if sides.iter().any(|v| matches!(v, Verdict::Skip(_))) {
            t.skipped += 1;
        } else {
            t.passed += 1;
        }
    }
    t
}

/// JUnit XML for CI systems.
pub fn junit(results: &[CaseResult]) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let t = totals(results);
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"overlayer-replay\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">\n",
        t.total, t.failed, t.skipped
    );
    for r in results {
        out.push_str(&format!(
            "  <testcase name=\"{}\" time=\"{:.3}\">",
            esc(&r.name),
            r.ms / 1e3
        ));
        for (side, v) in [("apply", &r.apply), ("kernel", &r.kernel)] {
            match v {
                Verdict::Fail(d) => {
                    out.push_str(&format!("<failure message=\"{side}\">{}</failure>", esc(d)))
                }
                Verdict::Skip(d) => {
                    out.push_str(&format!("<skipped message=\"{side}: {}\"/>", esc(d)))
                }
                Verdict::Pass => {}
            }
        }
        out.push_str("</testcase>\n");
    }
    out.push_str("</testsuite>\n");
    out
}
