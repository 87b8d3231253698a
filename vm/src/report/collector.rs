//! The collector: frames accumulated one by one, then turned into a row.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::frames::{Frame, Insmod, Prop, Replay, ReplayCase, StepExit};
use super::row::{Row, RowContext, Status};

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

/// The probed overlay features and the kernel release that brought each,
/// from Documentation/filesystems/overlayfs.rst: `userxattr` (5.11), xattr
/// whiteouts (6.7), `lowerdir+` through the new mount API (6.8).
pub const FEATURE_SINCE: [(&str, &str); 3] = [
    ("userxattr", "5.11"),
    ("xwhiteouts", "6.7"),
    ("lowerdir_plus", "6.8"),
];

/// What a probe found missing: every known feature whose value is `false`,
/// with the release that brought it (e.g. `userxattr (5.11)`). Empty when
/// overlay itself is missing: then nothing was probed.
pub fn probe_lacks(probe: &Value) -> Vec<String> {
    if probe["overlay"].as_bool() != Some(true) {
        return Vec::new();
    }
    FEATURE_SINCE
        .iter()
        .filter(|(k, _)| probe[*k].as_bool() == Some(false))
        .map(|(k, since)| format!("{} ({since})", k.replace("lowerdir_plus", "lowerdir+")))
        .collect()
}

/// Why replayed cases were skipped, by reason (either side's), with counts.
pub fn skip_reasons(replay: &Replay) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for c in &replay.cases {
        for side in [&c.kernel, &c.apply] {
            if side.verdict == "skip" {
                *out.entry(side.detail.clone()).or_insert(0) += 1;
                break;
            }
        }
    }
    out
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
                let lacks = probe_lacks(&v);
                let mut msg = format!(
                    "probe: overlay={} features: {}",
                    v["overlay"],
                    if feats.is_empty() {
                        "-".into()
                    } else {
                        feats.join(",")
                    }
                );
                if !lacks.is_empty() {
                    msg.push_str(&format!("; lacks: {}", lacks.join(", ")));
                }
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
            lacks: self.probe.as_ref().map(probe_lacks).unwrap_or_default(),
            probe: self.probe,
            skip_reasons: self.replay.as_ref().map(skip_reasons).unwrap_or_default(),
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
