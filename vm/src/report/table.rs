//! The report's text: the aligned table, and the details under it.

use super::frames::Prop;
use super::row::{Row, Status};

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
        if r.problems.is_empty()
            && r.notes.is_empty()
            && r.lacks.is_empty()
            && r.skip_reasons.is_empty()
        {
            continue;
        }
        out.push_str(&format!("{} [{}]:\n", r.kernel, r.name));
        if !r.lacks.is_empty() {
            out.push_str(&format!("  lacks: {}\n", r.lacks.join(", ")));
        }
        for (why, n) in &r.skip_reasons {
            out.push_str(&format!("  skipped {n} case(s): {why}\n"));
        }
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
