//! Guest result frames, the per-kernel row they add up to, and the table.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Start of every result line the guest emits.
pub const MARKER: &str = "@@OVERLAYER@@";

/// One `@@OVERLAYER@@ <kind> <payload>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: String,
    pub payload: String,
}

/// Find a frame in a line of guest output. The marker may be preceded by
/// other output (a kernel message on the same console line) and the line may
/// end in `\r`.
pub fn parse_frame(line: &str) -> Option<Frame> {
    let at = line.find(MARKER)?;
    let rest = line[at + MARKER.len()..].trim_end_matches(['\r', '\n']);
    let rest = rest.strip_prefix(' ')?;
    let (kind, payload) = match rest.split_once(' ') {
        Some((k, p)) => (k, p.trim()),
        None => (rest, ""),
    };
    if kind.is_empty()
        || !kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return None;
    }
    Some(Frame {
        kind: kind.to_string(),
        payload: payload.to_string(),
    })
}

/// One side (apply or kernel) of a replayed case, normalised from either
/// `"pass"` or `{"verdict":"pass","detail":...}`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Side {
    pub verdict: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Side {
    pub fn failed(&self) -> bool {
        self.verdict == "fail"
    }
}

impl<'de> Deserialize<'de> for Side {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Word(String),
            Tagged {
                verdict: String,
                #[serde(default)]
                detail: Option<Value>,
            },
        }
        Ok(match Repr::deserialize(d)? {
            Repr::Word(w) => Side {
                verdict: w.to_ascii_lowercase(),
                detail: String::new(),
            },
            Repr::Tagged { verdict, detail } => Side {
                verdict: verdict.to_ascii_lowercase(),
                detail: match detail {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s,
                    Some(v) => v.to_string(),
                },
            },
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ReplayCase {
    pub name: String,
    pub apply: Side,
    pub kernel: Side,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub ms: f64,
}

impl ReplayCase {
    pub fn failed(&self) -> bool {
        self.apply.failed() || self.kernel.failed()
    }

    /// Name plus whatever explains the failure.
    pub fn describe(&self) -> String {
        let mut why = Vec::new();
        for (side, s) in [("apply", &self.apply), ("kernel", &self.kernel)] {
            if s.failed() && !s.detail.is_empty() {
                why.push(format!("{side}: {}", s.detail));
            }
        }
        if !self.detail.is_empty() {
            why.push(self.detail.clone());
        }
        if why.is_empty() {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, why.join("; "))
        }
    }
}

/// `overlayer replay --json` output.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Replay {
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub cases: Vec<ReplayCase>,
}

/// `overlayer prop --json` output (both `--mode convert`, the `prop` step,
/// and `--mode roundtrip`, the `roundtrip` step).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Prop {
    pub cases: u64,
    pub passed: u64,
    pub failed: u64,
    /// Whether the third side (the kernel's merged view, or the applied
    /// exports) was checked; `false` when the harness could not mount, in
    /// which case only apply was compared with the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<bool>,
    /// Stacks whose third-side view was compared (the rest were refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounted: Option<u64>,
    pub seconds: f64,
    pub stacks_per_second: f64,
    pub seed: u64,
    /// Why the first failing stack failed, when the harness says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// The part of `overlayer prop`'s stdout that shows the shrunk failing stack
/// (from `minimal failing stack:` on, at most 300 lines), for the report; the
/// guest's init.sh sends the same lines with `sed`.
pub fn failing_stack(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("minimal failing stack:"))
        .take(300)
        .collect()
}

/// Exit status of one step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StepExit {
    pub step: String,
    pub rc: i64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Insmod {
    pub module: String,
    pub ok: bool,
    pub error: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

/// Everything the guest (or the host run) reported, accumulated frame by frame.
#[derive(Debug, Default)]
pub struct Collector {
    pub boot_uptime: Option<f64>,
    pub kernel: Option<String>,
    pub insmod: Vec<Insmod>,
    pub overlay: Option<bool>,
    pub probe: Option<Value>,
    pub replay: Option<Replay>,
    pub prop: Option<Prop>,
    pub roundtrip: Option<Prop>,
    pub write: Option<Prop>,
    pub write_redirect: Option<Prop>,
    pub exits: Vec<StepExit>,
    pub skips: Vec<(String, String)>,
    pub logs: Vec<String>,
    pub bad: Vec<String>,
    pub done: bool,
}

fn parse<T: for<'de> Deserialize<'de>>(f: &Frame, bad: &mut Vec<String>) -> Option<T> {
    match serde_json::from_str(&f.payload) {
        Ok(v) => Some(v),
        Err(e) => {
            let mut p = f.payload.clone();
            p.truncate(200);
            bad.push(format!("{} frame is not valid JSON ({e}): {p}", f.kind));
            None
        }
    }
}

/// Features of a probe result: the keys whose value is `true`, `overlay` aside.
pub fn probe_features(probe: &Value) -> Vec<String> {
    probe
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| k.as_str() != "overlay" && v.as_bool() == Some(true))
                .map(|(k, _)| k.replace("lowerdir_plus", "lowerdir+"))
                .collect()
        })
        .unwrap_or_default()
}

impl Collector {
    /// Take one frame; returns a progress message worth printing, if any.
    pub fn push(&mut self, f: &Frame) -> Option<String> {
        match f.kind.as_str() {
            "boot" => {
                let v: Value = parse(f, &mut self.bad)?;
                self.boot_uptime = v["uptime"].as_f64();
                self.kernel = v["kernel"].as_str().map(str::to_string);
                Some(format!(
                    "init started {:.2} s after boot (guest clock), kernel {}",
                    self.boot_uptime.unwrap_or(f64::NAN),
                    self.kernel.as_deref().unwrap_or("?")
                ))
            }
            "insmod" => {
                let m: Insmod = parse(f, &mut self.bad)?;
                let msg = if m.ok {
                    format!("insmod {}: ok", m.module)
                } else {
                    format!("insmod {}: FAILED: {}", m.module, m.error)
                };
                self.insmod.push(m);
                Some(msg)
            }
            "overlay" => {
                let v: Value = parse(f, &mut self.bad)?;
                self.overlay = v["available"].as_bool();
                None
            }
            "probe" => {
                let v: Value = parse(f, &mut self.bad)?;
                let feats = probe_features(&v);
                let msg = format!(
                    "probe: overlay={} features: {}",
                    v["overlay"],
                    if feats.is_empty() {
                        "-".into()
                    } else {
                        feats.join(",")
                    }
                );
                if self.kernel.is_none() {
                    self.kernel = v["kernel"].as_str().map(str::to_string);
                }
                self.probe = Some(v);
                Some(msg)
            }
            "replay" => {
                let r: Replay = parse(f, &mut self.bad)?;
                let msg = format!(
                    "replay: {} cases: {} passed, {} failed, {} skipped",
                    r.total, r.passed, r.failed, r.skipped
                );
                self.replay = Some(r);
                Some(msg)
            }
            "prop" | "roundtrip" | "write" | "write-redirect" => {
                let p: Prop = parse(f, &mut self.bad)?;
                let msg = format!(
                    "{}: {}/{} stacks passed in {:.1} s ({:.1} stacks/s, seed {})",
                    f.kind, p.passed, p.cases, p.seconds, p.stacks_per_second, p.seed
                );
                match f.kind.as_str() {
                    "prop" => self.prop = Some(p),
                    "roundtrip" => self.roundtrip = Some(p),
                    "write" => self.write = Some(p),
                    _ => self.write_redirect = Some(p),
                }
                Some(msg)
            }
            "exit" => {
                let e: StepExit = parse(f, &mut self.bad)?;
                let msg = (e.rc != 0).then(|| format!("{} exited with status {}", e.step, e.rc));
                self.exits.push(e);
                msg
            }
            "skip" => {
                let v: Value = parse(f, &mut self.bad)?;
                let step = v["step"].as_str().unwrap_or("?").to_string();
                let reason = v["reason"].as_str().unwrap_or("?").to_string();
                let msg = format!("{step} skipped: {reason}");
                self.skips.push((step, reason));
                Some(msg)
            }
            "log" => {
                self.logs.push(f.payload.clone());
                None
            }
            "done" => {
                self.done = true;
                None
            }
            other => {
                self.bad.push(format!("unknown frame kind {other:?}"));
                None
            }
        }
    }

    /// Turn what was collected into a table row. `steps` are the steps that
    /// were asked for; `abort` says why the run ended early, if it did.
    pub fn into_row(self, ctx: RowContext, steps: &[&str], abort: Option<String>) -> Row {
        let mut problems = Vec::new();
        let mut notes = ctx.notes;
        if let Some(a) = abort {
            problems.push(a);
        } else if !self.done {
            problems.push("the guest did not report completion".into());
        }
        for m in &self.insmod {
            if !m.ok {
                problems.push(format!("insmod {} failed: {}", m.module, m.error));
            }
        }
        for step in steps {
            let skipped = self.skips.iter().find(|(s, _)| s == step);
            if let Some((_, reason)) = skipped {
                notes.push(format!("{step} skipped: {reason}"));
                continue;
            }
            match self.exits.iter().find(|e| e.step == *step) {
                None => problems.push(format!("{step} did not finish")),
                Some(e) if e.rc != 0 => {
                    problems.push(format!("{step} exited with status {}", e.rc))
                }
                Some(_) => {}
            }
            let have = match *step {
                "probe" => self.probe.is_some(),
                "replay" => self.replay.is_some(),
                "prop" => self.prop.is_some(),
                "roundtrip" => self.roundtrip.is_some(),
                "write" => self.write.is_some(),
                "write-redirect" => self.write_redirect.is_some(),
                _ => true,
            };
            if !have && self.exits.iter().any(|e| e.step == *step && e.rc == 0) {
                problems.push(format!("{step} wrote no JSON result"));
            }
        }
        if let Some(r) = &self.replay {
            if r.failed > 0 {
                let names: Vec<String> = r
                    .cases
                    .iter()
                    .filter(|c| c.failed())
                    .take(10)
                    .map(ReplayCase::describe)
                    .collect();
                problems.push(format!(
                    "replay: {} case(s) failed: {}",
                    r.failed,
                    names.join("; ")
                ));
            }
        }
        for (step, p) in [
            ("prop", &self.prop),
            ("roundtrip", &self.roundtrip),
            ("write", &self.write),
            ("write-redirect", &self.write_redirect),
        ] {
            let Some(p) = p else { continue };
            // prop stops at the first failing stack (then shrinks it):
            // `failed` is 0 or 1 and `passed` counts the stacks before it.
            let why = p
                .failure
                .as_ref()
                .map(|f| format!(": {f}"))
                .unwrap_or_default();
            if p.failed > 0 {
                problems.push(format!(
                    "{step}: stack {} of {} failed (seed {}){why}",
                    p.passed + 1,
                    p.cases,
                    p.seed,
                ));
            } else if p.passed < p.cases {
                problems.push(format!(
                    "{step}: only {} of {} stacks passed (seed {}){why}",
                    p.passed, p.cases, p.seed,
                ));
            }
            if p.kernel == Some(false) {
                notes.push(format!(
                    "{step}: could not mount, so only apply was compared with the model"
                ));
            }
        }
        problems.extend(self.bad.iter().cloned());
        let status = if !problems.is_empty() {
            Status::Fail
        } else if !self.skips.is_empty() {
            Status::Skip
        } else {
            Status::Pass
        };
        Row {
            name: ctx.name,
            package: ctx.package,
            kernel: self
                .kernel
                .or(ctx.release)
                .unwrap_or_else(|| "?".to_string()),
            accel: ctx.accel,
            overlay: self
                .overlay
                .or_else(|| self.probe.as_ref().and_then(|p| p["overlay"].as_bool())),
            features: self.probe.as_ref().map(probe_features).unwrap_or_default(),
            probe: self.probe,
            replay: self.replay.map(|mut r| {
                r.cases.retain(ReplayCase::failed);
                r
            }),
            prop: self.prop,
            roundtrip: self.roundtrip,
            write: self.write,
            write_redirect: self.write_redirect,
            boot_seconds: self.boot_uptime,
            boot_host_seconds: ctx.boot_host_seconds,
            total_seconds: ctx.total_seconds,
            status,
            problems,
            notes,
            logs: self.logs,
            console_tail: Vec::new(),
        }
    }
}

/// What the runner knows about a run besides the frames.
#[derive(Debug, Default, Clone)]
pub struct RowContext {
    pub name: String,
    pub package: Option<String>,
    pub release: Option<String>,
    pub accel: String,
    pub boot_host_seconds: Option<f64>,
    pub total_seconds: f64,
    pub notes: Vec<String>,
}

/// One line of the report: one kernel (or the host).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    /// Debian package the kernel came from.
    pub package: Option<String>,
    pub kernel: String,
    pub accel: String,
    pub overlay: Option<bool>,
    pub features: Vec<String>,
    pub probe: Option<Value>,
    /// Counts, with only the failing cases kept.
    pub replay: Option<Replay>,
    pub prop: Option<Prop>,
    /// `overlayer prop --mode roundtrip`: export of the conversion, applied.
    pub roundtrip: Option<Prop>,
    /// `--mode write` and `--mode write-redirect`: writes on a writable
    /// overlay, the upper exported and applied.
    pub write: Option<Prop>,
    pub write_redirect: Option<Prop>,
    /// Guest `/proc/uptime` when `/init` started.
    pub boot_seconds: Option<f64>,
    /// Host wall clock from starting QEMU to the guest's boot frame.
    pub boot_host_seconds: Option<f64>,
    pub total_seconds: f64,
    pub status: Status,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
    pub logs: Vec<String>,
    pub console_tail: Vec<String>,
}

impl Row {
    /// A row for a kernel that never got to boot.
    pub fn failed(name: &str, accel: &str, problem: String) -> Row {
        Row {
            name: name.to_string(),
            package: None,
            kernel: "?".into(),
            accel: accel.to_string(),
            overlay: None,
            features: Vec::new(),
            probe: None,
            replay: None,
            prop: None,
            roundtrip: None,
            write: None,
            write_redirect: None,
            boot_seconds: None,
            boot_host_seconds: None,
            total_seconds: 0.0,
            status: Status::Fail,
            problems: vec![problem],
            notes: Vec::new(),
            logs: Vec::new(),
            console_tail: Vec::new(),
        }
    }
}

/// The last `n` console lines, preceded by earlier lines that explain a
/// crash (panic, BUG, Oops, ...) when those scrolled out of the tail.
pub fn console_excerpt(lines: &[String], n: usize) -> Vec<String> {
    const KEYS: [&str; 6] = [
        "Kernel panic",
        "BUG:",
        "Oops",
        "general protection fault",
        "Call Trace:",
        "RIP:",
    ];
    let cut = lines.len().saturating_sub(n);
    let mut out: Vec<String> = lines[..cut]
        .iter()
        .filter(|l| KEYS.iter().any(|k| l.contains(k)))
        .take(8)
        .cloned()
        .collect();
    if !out.is_empty() {
        out.push("...".into());
    }
    out.extend(lines[cut..].iter().cloned());
    out
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1}s")).unwrap_or_else(|| "-".into())
}

/// A STACKS or ROUNDTRIP cell: stacks that passed, and the rate.
fn stacks(p: Option<&Prop>) -> String {
    p.map(|p| format!("{} ({:.0}/s)", p.passed, p.stacks_per_second))
        .unwrap_or_else(|| "-".into())
}

/// The report table, one row per kernel, with columns aligned.
pub fn format_table(rows: &[Row]) -> String {
    let header = [
        "KERNEL",
        "ACCEL",
        "OVERLAY",
        "FEATURES",
        "CASES p/f/s",
        "STACKS",
        "ROUNDTRIP",
        "WRITE",
        "WRITE-REDIR",
        "BOOT",
        "INIT",
        "TOTAL",
        "RESULT",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        cells.push(vec![
            if r.name == r.kernel
                || r.name.starts_with("linux-image-")
                || r.kernel == "?" && r.name.contains('/')
            {
                r.kernel.clone()
            } else {
                format!("{} ({})", r.kernel, r.name)
            },
            r.accel.clone(),
            match r.overlay {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "-".into(),
            },
            if r.features.is_empty() {
                "-".into()
            } else {
                r.features.join(",")
            },
            r.replay
                .as_ref()
                .map(|c| format!("{}/{}/{}", c.passed, c.failed, c.skipped))
                .unwrap_or_else(|| "-".into()),
            stacks(r.prop.as_ref()),
            stacks(r.roundtrip.as_ref()),
            stacks(r.write.as_ref()),
            stacks(r.write_redirect.as_ref()),
            secs(r.boot_seconds),
            secs(r.boot_host_seconds),
            format!("{:.1}s", r.total_seconds),
            match r.status {
                Status::Pass => "ok".into(),
                Status::Skip => "skip".into(),
                Status::Fail => "FAIL".into(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Problems and notes under the table, one block per row that has any.
pub fn format_details(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows {
        if r.problems.is_empty() && r.notes.is_empty() {
            continue;
        }
        out.push_str(&format!("{} [{}]:\n", r.kernel, r.name));
        for n in &r.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        for p in &r.problems {
            out.push_str(&format!("  FAIL: {p}\n"));
        }
        if !r.problems.is_empty() {
            for l in &r.logs {
                out.push_str(&format!("  log: {l}\n"));
            }
            if !r.console_tail.is_empty() {
                out.push_str("  last console lines:\n");
                for l in &r.console_tail {
                    out.push_str(&format!("  | {l}\n"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("@@OVERLAYER@@ boot {\"uptime\":2.05}", Some(("boot", "{\"uptime\":2.05}")))]
    #[case("@@OVERLAYER@@ done {}\r", Some(("done", "{}")))]
    #[case("@@OVERLAYER@@ done\r\n", Some(("done", "")))]
    #[case("[    3.1] overlayfs: x@@OVERLAYER@@ log prop: oops", Some(("log", "prop: oops")))]
    #[case("@@OVERLAYER@@  boot {}", None)]
    #[case("@@OVERLAYER@@bootx", None)]
    #[case("@@OVERLAYER@@ b\"ad {}", None)]
    #[case("plain console line", None)]
    fn frames(#[case] line: &str, #[case] want: Option<(&str, &str)>) {
        let got = parse_frame(line);
        assert_eq!(
            got.as_ref().map(|f| (f.kind.as_str(), f.payload.as_str())),
            want
        );
    }

    fn collect(lines: &[&str]) -> Collector {
        let mut c = Collector::default();
        for l in lines {
            c.push(&parse_frame(l).expect(l));
        }
        c
    }

    fn ctx() -> RowContext {
        RowContext {
            name: "6.1".into(),
            accel: "tcg".into(),
            total_seconds: 40.0,
            ..Default::default()
        }
    }

    const STEPS: [&str; 4] = ["probe", "replay", "prop", "roundtrip"];

    fn good_run() -> Vec<&'static str> {
        vec![
            r#"@@OVERLAYER@@ boot {"uptime":2.05,"kernel":"6.1.0-30-amd64"}"#,
            r#"@@OVERLAYER@@ insmod {"module":"00-overlay","ok":true}"#,
            r#"@@OVERLAYER@@ overlay {"available":true}"#,
            r#"@@OVERLAYER@@ probe {"kernel":"6.1.0-30-amd64","overlay":true,"userxattr":true,"xwhiteouts":false,"lowerdir_plus":true}"#,
            r#"@@OVERLAYER@@ exit {"step":"probe","rc":0,"seconds":0.1}"#,
            r#"@@OVERLAYER@@ replay {"total":3,"passed":2,"failed":0,"skipped":1,"cases":[{"name":"a","apply":"pass","kernel":"pass","detail":"","ms":1.0}]}"#,
            r#"@@OVERLAYER@@ exit {"step":"replay","rc":0,"seconds":1.5}"#,
            r#"@@OVERLAYER@@ prop {"cases":300,"passed":300,"failed":0,"seconds":12.0,"stacks_per_second":25.0,"seed":7}"#,
            r#"@@OVERLAYER@@ exit {"step":"prop","rc":0,"seconds":12.1}"#,
            r#"@@OVERLAYER@@ roundtrip {"cases":200,"passed":200,"failed":0,"kernel":true,"mounted":70,"refused":{"parent-not-directory":88},"seconds":2.5,"stacks_per_second":80.0,"seed":7}"#,
            r#"@@OVERLAYER@@ exit {"step":"roundtrip","rc":0,"seconds":2.6}"#,
            r#"@@OVERLAYER@@ done {"uptime":20.0}"#,
        ]
    }

    /// Index of the first line of `good_run()` that starts with `prefix`.
    fn at(lines: &[&str], prefix: &str) -> usize {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix}"))
    }

    #[test]
    fn complete_run_passes() {
        let row = collect(&good_run()).into_row(ctx(), &STEPS, None);
        assert_eq!(row.status, Status::Pass, "{:?}", row.problems);
        assert_eq!(row.kernel, "6.1.0-30-amd64");
        assert_eq!(row.features, ["userxattr", "lowerdir+"]);
        assert_eq!(row.boot_seconds, Some(2.05));
        assert_eq!(row.prop.as_ref().unwrap().passed, 300);
        let rt = row.roundtrip.as_ref().unwrap();
        assert_eq!(
            (rt.passed, rt.kernel, rt.mounted),
            (200, Some(true), Some(70))
        );
        assert!(row.notes.is_empty(), "{:?}", row.notes);
    }

    #[rstest]
    #[case("prop", "@@OVERLAYER@@ prop ", r#"@@OVERLAYER@@ prop {"cases":300,"passed":41,"failed":1,"seconds":1.0,"stacks_per_second":42.0,"seed":7,"failure":"model vs kernel: a: mode 0644 != 0755"}"#)]
    #[case("roundtrip", "@@OVERLAYER@@ roundtrip ", r#"@@OVERLAYER@@ roundtrip {"cases":200,"passed":12,"failed":1,"kernel":true,"mounted":5,"seconds":1.0,"stacks_per_second":13.0,"seed":7,"failure":"model vs roundtrip: d/.wh.x: missing"}"#)]
    fn stack_failures_are_reported(#[case] step: &str, #[case] prefix: &str, #[case] line: &str) {
        let mut lines = good_run();
        let i = at(&lines, prefix);
        lines[i] = line;
        lines[i + 1] = if step == "prop" {
            r#"@@OVERLAYER@@ exit {"step":"prop","rc":1,"seconds":1.0}"#
        } else {
            r#"@@OVERLAYER@@ exit {"step":"roundtrip","rc":1,"seconds":1.0}"#
        };
        lines.insert(i + 1, "@@OVERLAYER@@ log STEP: minimal failing stack:");
        let row = collect(&lines).into_row(ctx(), &STEPS, None);
        assert_eq!(row.status, Status::Fail);
        let all = row.problems.join("\n");
        assert!(
            all.contains(&format!("{step} exited with status 1")),
            "{all}"
        );
        let want = match step {
            "prop" => "prop: stack 42 of 300 failed (seed 7): model vs kernel: a: mode",
            _ => "roundtrip: stack 13 of 200 failed (seed 7): model vs roundtrip: d/.wh.x",
        };
        assert!(all.contains(want), "{all}");
        assert_eq!(row.problems.len(), 2, "{all}");
        let d = format_details(&[row]);
        assert!(d.contains("  log: STEP: minimal failing stack:"), "{d}");
    }

    #[test]
    fn unchecked_kernel_side_is_noted() {
        let mut lines = good_run();
        let i = at(&lines, "@@OVERLAYER@@ roundtrip ");
        lines[i] = r#"@@OVERLAYER@@ roundtrip {"cases":200,"passed":200,"failed":0,"kernel":false,"mounted":0,"seconds":0.5,"stacks_per_second":400.0,"seed":7}"#;
        let row = collect(&lines).into_row(ctx(), &STEPS, None);
        assert_eq!(row.status, Status::Pass, "{:?}", row.problems);
        assert_eq!(row.notes.len(), 1);
        assert!(
            row.notes[0].starts_with("roundtrip: could not mount"),
            "{:?}",
            row.notes
        );
    }

    #[test]
    fn missing_roundtrip_result_fails() {
        let mut lines = good_run();
        lines.remove(at(&lines, "@@OVERLAYER@@ roundtrip "));
        let row = collect(&lines).into_row(ctx(), &STEPS, None);
        assert_eq!(row.status, Status::Fail);
        assert_eq!(row.problems, ["roundtrip wrote no JSON result"]);
        // Not asked for: not expected.
        let mut lines = good_run();
        lines.truncate(at(&lines, "@@OVERLAYER@@ roundtrip "));
        lines.push(r#"@@OVERLAYER@@ done {}"#);
        let row = collect(&lines).into_row(ctx(), &STEPS[..3], None);
        assert_eq!(row.status, Status::Pass, "{:?}", row.problems);
        assert!(row.roundtrip.is_none());
    }

    #[test]
    fn failing_stack_section() {
        let out = "200 stacks, seed 1, kernel checked: 1 failed\nrefusals by rule: x 1\n\
                   minimal failing stack:\nmodel vs roundtrip: a\n{\n  \"layers\": []\n}\n";
        assert_eq!(
            failing_stack(out),
            [
                "minimal failing stack:",
                "model vs roundtrip: a",
                "{",
                "  \"layers\": []",
                "}"
            ]
        );
        assert!(failing_stack("3 stacks, seed 1: 0 failed\n").is_empty());
        let long = format!("minimal failing stack:\n{}", "x\n".repeat(500));
        assert_eq!(failing_stack(&long).len(), 300);
    }

    #[test]
    fn failures_are_reported() {
        let mut lines = good_run();
        lines[5] = r#"@@OVERLAYER@@ replay {"total":3,"passed":1,"failed":2,"skipped":0,"cases":[{"name":"whiteout-dir","apply":"pass","kernel":"fail","detail":"differs","ms":1.0},{"name":"opaque","apply":{"verdict":"fail","detail":"mode 0700 != 0755"},"kernel":{"verdict":"skip","detail":"no xattr"},"ms":2.0},{"name":"ok","apply":{"verdict":"pass"},"kernel":"pass","ms":2.0}]}"#;
        lines[6] = r#"@@OVERLAYER@@ exit {"step":"replay","rc":1,"seconds":1.5}"#;
        let row = collect(&lines).into_row(ctx(), &STEPS, None);
        assert_eq!(row.status, Status::Fail);
        let all = row.problems.join("\n");
        assert!(all.contains("replay exited with status 1"), "{all}");
        assert!(all.contains("whiteout-dir (differs)"), "{all}");
        assert!(all.contains("opaque (apply: mode 0700 != 0755)"), "{all}");
        assert_eq!(row.replay.unwrap().cases.len(), 2);
    }

    #[test]
    fn missing_steps_and_timeouts_fail() {
        let row =
            collect(&good_run()[..4]).into_row(ctx(), &STEPS, Some("timed out after 60 s".into()));
        assert_eq!(row.status, Status::Fail);
        let all = row.problems.join("\n");
        assert!(all.contains("timed out"), "{all}");
        assert!(all.contains("probe did not finish"), "{all}");
        assert!(all.contains("prop did not finish"), "{all}");
        assert!(all.contains("roundtrip did not finish"), "{all}");
    }

    #[test]
    fn skip_is_not_failure() {
        let mut lines = good_run();
        lines.truncate(at(&lines, "@@OVERLAYER@@ prop "));
        lines.push(r#"@@OVERLAYER@@ skip {"step":"prop","reason":"no overlay"}"#);
        lines.push(r#"@@OVERLAYER@@ skip {"step":"roundtrip","reason":"no overlay"}"#);
        lines.push(r#"@@OVERLAYER@@ done {}"#);
        let row = collect(&lines).into_row(ctx(), &STEPS, None);
        assert_eq!(row.status, Status::Skip, "{:?}", row.problems);
        assert_eq!(
            row.notes,
            ["prop skipped: no overlay", "roundtrip skipped: no overlay"]
        );
        let t = format_table(&[row]);
        let (head, line) = (t.lines().next().unwrap(), t.lines().nth(1).unwrap());
        for col in ["STACKS", "ROUNDTRIP"] {
            let at = head.find(col).unwrap();
            assert!(line[at..].starts_with("- "), "{col}: {t}");
        }
        assert!(line.ends_with("skip"), "{t}");
    }

    #[test]
    fn bad_json_is_a_problem() {
        let mut lines = good_run();
        lines[3] = "@@OVERLAYER@@ probe {not json";
        let row = collect(&lines).into_row(ctx(), &STEPS, None);
        assert_eq!(row.status, Status::Fail);
        assert!(row.problems.iter().any(|p| p.contains("not valid JSON")));
    }

    #[test]
    fn console_excerpt_keeps_panic_line() {
        let mut lines: Vec<String> = vec!["[ 1.0] Kernel panic - not syncing: sysrq".into()];
        lines.extend((0..40).map(|i| format!("line {i}")));
        let ex = console_excerpt(&lines, 30);
        assert_eq!(ex.len(), 32);
        assert!(ex[0].contains("Kernel panic"));
        assert_eq!(ex[1], "...");
        assert_eq!(ex[31], "line 39");
        let short: Vec<String> = vec!["a".into(), "b".into()];
        assert_eq!(console_excerpt(&short, 30), short);
    }

    #[test]
    fn table_is_aligned() {
        let mut a = collect(&good_run()).into_row(ctx(), &STEPS, None);
        a.boot_host_seconds = Some(5.0);
        let b = Row::failed("6.12", "tcg", "boom".into());
        let t = format_table(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("KERNEL"));
        let col = lines[0].find("ACCEL").unwrap();
        assert_eq!(&lines[1][col..col + 3], "tcg");
        assert_eq!(&lines[2][col..col + 3], "tcg");
        assert!(lines[1].contains("6.1.0-30-amd64 (6.1)"));
        assert!(lines[1].contains("2/0/1"));
        let stacks = lines[0].find("STACKS").unwrap();
        let roundtrip = lines[0].find("ROUNDTRIP").unwrap();
        assert!(stacks < roundtrip, "{t}");
        assert!(lines[1][stacks..].starts_with("300 (25/s)"), "{t}");
        assert!(lines[1][roundtrip..].starts_with("200 (80/s)"), "{t}");
        assert!(lines[2][roundtrip..].starts_with('-'), "{t}");
        assert!(lines[1].contains("2.0s  5.0s  40.0s"), "{t}");
        assert!(lines[1].ends_with("ok"));
        assert!(lines[2].ends_with("FAIL"));
        let d = format_details(&[Row::failed("6.12", "tcg", "boom".into())]);
        assert!(d.contains("FAIL: boom"));
    }
}
