//! The row model: one kernel's (or the host's) outcome, as the report
//! shows it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::frames::{Prop, Replay};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
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
    /// Probed features this kernel does not have, with the release that
    /// brought each (`userxattr (5.11)`).
    pub lacks: Vec<String>,
    /// Replayed cases skipped, counted by the reason given.
    pub skip_reasons: BTreeMap<String, u64>,
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
            lacks: Vec::new(),
            skip_reasons: BTreeMap::new(),
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

    /// A row for a kernel that was not run, and why (a series the mirror
    /// no longer serves): reported, and the run does not fail for it.
    pub fn not_run(name: &str, accel: &str, why: String) -> Row {
        Row {
            status: Status::Skip,
            notes: vec![why],
            problems: Vec::new(),
            ..Row::failed(name, accel, String::new())
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
