//! The frames the guest prints, and the JSON results they carry.

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
