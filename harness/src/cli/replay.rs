//! `replay`: the case corpus through apply and the kernel, as a table and
//! optional JSON and JUnit reports.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{name_column, write_file};
use crate::case;
use crate::kernel;
use crate::replay::{self, ReplayOptions, Verdict};

pub(super) fn replay_cmd(
    paths: Vec<PathBuf>,
    json: Option<PathBuf>,
    junit: Option<PathBuf>,
    opts: ReplayOptions,
    record: bool,
) -> Result<ExitCode> {
    let roots = if paths.is_empty() {
        vec![PathBuf::from("cases")]
    } else {
        paths
    };
    let files = case::discover(&roots)?;
    anyhow::ensure!(!files.is_empty(), "no case files under {roots:?}");
    let cases = files
        .iter()
        .map(|p| case::load(p))
        .collect::<Result<Vec<_>>>()?;
    let results = kernel::with_scratch(|scratch| {
        let modes = opts.modes(scratch)?;
        if scratch.can_mount() {
            let names: Vec<String> = modes
                .iter()
                .map(|m| format!("{m:?}").to_lowercase())
                .collect();
            eprintln!("kernel side in modes: {}", names.join(", "));
        }
        let mut results = Vec::new();
        for file in &cases {
            if record {
                let updated = replay::record(scratch, &file.case)?;
                std::fs::write(&file.path, case::to_pretty_json(&updated)?)
                    .with_context(|| format!("write {}", file.path.display()))?;
                let mut file = file.clone();
                file.case = updated;
                results.push(replay::run_case(scratch, &file, &modes)?);
            } else {
                results.push(replay::run_case(scratch, file, &modes)?);
            }
        }
        Ok(results)
    })?;
    let width = name_column(results.iter().map(|r| r.name.as_str()));
    println!(
        "{:width$}  {:6} {:6} {:>8}",
        "case", "apply", "kernel", "ms"
    );
    for r in &results {
        println!(
            "{:width$}  {:6} {:6} {:>8.1}",
            r.name,
            r.apply.word(),
            r.kernel.word(),
            r.ms
        );
        for (side, v) in [("apply", &r.apply), ("kernel", &r.kernel)] {
            match v {
                Verdict::Fail(d) => println!("    {side}: {d}"),
                Verdict::Skip(d) if side == "kernel" && r.name == results[0].name => {
                    println!("    {side} skipped: {d}")
                }
                _ => {}
            }
        }
    }
    let t = replay::totals(&results);
    println!(
        "{} cases: {} passed, {} failed, {} skipped",
        t.total, t.passed, t.failed, t.skipped
    );
    if t.skipped > 0 {
        let reasons: std::collections::BTreeSet<String> = results
            .iter()
            .flat_map(|r| [&r.apply, &r.kernel])
            .filter_map(|v| match v {
                Verdict::Skip(d) => Some(d.clone()),
                _ => None,
            })
            .collect();
        for reason in reasons {
            println!("  skipped because: {reason}");
        }
    }
    if let Some(path) = json {
        let report = serde_json::json!({
            "total": t.total, "passed": t.passed, "failed": t.failed, "skipped": t.skipped,
            "cases": results,
        });
        write_file(&path, &serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = junit {
        write_file(&path, &replay::junit(&results))?;
    }
    Ok(if t.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
