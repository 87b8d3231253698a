//! `prop`: generated layer stacks, checked kernel(convert) = apply = model.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::write_file;
use crate::case;
use crate::kernel;
use crate::prop::{self, PropOptions};

pub(super) fn prop_cmd(
    opts: PropOptions,
    save: Option<PathBuf>,
    json: Option<PathBuf>,
) -> Result<ExitCode> {
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(opts.cases as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} stacks {per_sec} {msg}")
                .expect("template"),
        );
        Some(bar)
    } else {
        None
    };
    let report = kernel::with_scratch(|scratch| {
        if opts.kernel && !scratch.can_mount() {
            eprintln!(
                "kernel side skipped: {}",
                kernel::unavailable().unwrap_or_default()
            );
        }
        Ok(prop::run(scratch, &opts, |n| {
            if let Some(bar) = &bar {
                bar.set_position(n.min(opts.cases as u64));
            }
        }))
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!(
        "{} stacks, seed {}, kernel {}: {} failed ({} merged views compared, {} refused alike), {:.1} s, {:.0} stacks/s",
        report.cases,
        report.seed,
        if report.kernel { "checked" } else { "skipped" },
        report.failed,
        report.mounted,
        report.refused.values().sum::<u64>(),
        report.seconds,
        report.stacks_per_second
    );
    if report.renamed_dirs + report.metacopy_files > 0 {
        println!(
            "export materialised {} renamed directories and {} metacopy files",
            report.renamed_dirs, report.metacopy_files
        );
    }
    if report.cross_layer_links > 0 {
        println!(
            "{} compared stacks hardlink a lower layer's file (groups convert copies up)",
            report.cross_layer_links
        );
    }
    if !report.refused.is_empty() {
        let parts: Vec<String> = report
            .refused
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("refusals by rule: {}", parts.join(", "));
    }
    if let (Some(failure), Some(stack)) = (&report.failure, &report.minimal) {
        let case = prop::as_case(stack, &report.damaged, failure, opts.seed);
        println!(
            "minimal failing stack:\n{failure}\n{}",
            case::to_pretty_json(&case)?
        );
        if let Some(dir) = &save {
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("generated-seed-{}.json", opts.seed));
            write_file(&path, &case::to_pretty_json(&case)?)?;
            println!("saved {}", path.display());
        }
    }
    if let Some(path) = json {
        write_file(&path, &serde_json::to_string_pretty(&report)?)?;
    }
    Ok(if report.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
