//! `check`: a third-party unpacker against the kernel's merged views.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{name_column, write_file};
use crate::case;
use crate::check::Peer;
use crate::replay::{self, Verdict};

#[allow(clippy::too_many_arguments)]
pub(super) fn check_cmd(
    unpacker: &str,
    format: crate::imagefmt::ImageFormat,
    cases: Vec<PathBuf>,
    generated: u32,
    seed: u64,
    timeout: std::time::Duration,
    json: Option<PathBuf>,
    junit: Option<PathBuf>,
) -> Result<ExitCode> {
    let roots = if cases.is_empty() {
        vec![PathBuf::from("cases")]
    } else {
        cases
    };
    let mut all: Vec<(String, case::Case)> = case::discover(&roots)?
        .iter()
        .map(|p| case::load(p).map(|f| (f.name, f.case)))
        .collect::<Result<_>>()?;
    all.extend(crate::check::generated(generated, seed));
    let user_xattrs = crate::check::tmp_takes_user_xattrs();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(all.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .expect("template"),
        );
        bar
    });
    let mut results = Vec::new();
    for (name, case) in &all {
        if let Some(bar) = &bar {
            bar.set_message(name.clone());
        }
        let r = crate::check::check_case(name, case, unpacker, format, user_xattrs, timeout)
            .with_context(|| format!("case {name}"))?;
        results.push(r);
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let width = name_column(results.iter().map(|r| r.name.as_str()));
    println!(
        "{:width$}  {:7} {:8} first difference",
        "case", "verdict", "unpacker"
    );
    for r in &results {
        println!(
            "{:width$}  {:7} {:8} {}",
            r.name,
            r.verdict,
            peer_word(r.peer),
            r.detail
        );
    }
    let count = |v: &str| results.iter().filter(|r| r.verdict == v).count();
    let (passed, failed, skipped) = (count("pass"), count("fail"), count("skip"));
    let peers = |p: Peer| results.iter().filter(|r| r.peer == p).count();
    println!(
        "{unpacker} ({format:?}): {} cases, {passed} passed, {failed} failed, {skipped} skipped; \
         the unpacker accepted {}, refused {}, crashed {}, timed out {}",
        results.len(),
        peers(Peer::Accepted),
        peers(Peer::Refused),
        peers(Peer::Crashed),
        peers(Peer::Timeout),
    );
    if let Some(path) = json {
        let doc = serde_json::json!({
            "unpacker": unpacker, "image_format": format,
            "total": results.len(), "passed": passed, "failed": failed, "skipped": skipped,
            "accepted": peers(Peer::Accepted), "refused": peers(Peer::Refused),
            "crashed": peers(Peer::Crashed), "timed_out": peers(Peer::Timeout),
            "timeout_seconds": timeout.as_secs(),
            "cases": results,
        });
        write_file(&path, &serde_json::to_string_pretty(&doc)?)?;
    }
    if let Some(path) = junit {
        let rows: Vec<replay::CaseResult> = results
            .iter()
            .map(|r| replay::CaseResult {
                name: r.name.clone(),
                apply: match r.verdict {
                    "pass" => Verdict::Pass,
                    "skip" => Verdict::Skip(r.detail.clone()),
                    _ => Verdict::Fail(r.detail.clone()),
                },
                kernel: Verdict::Pass,
                ms: r.ms,
            })
            .collect();
        write_file(&path, &replay::junit(&rows))?;
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn peer_word(p: Peer) -> &'static str {
    match p {
        Peer::Accepted => "accepted",
        Peer::Refused => "refused",
        Peer::Crashed => "CRASHED",
        Peer::Timeout => "TIMEOUT",
        Peer::NotRun => "-",
    }
}
