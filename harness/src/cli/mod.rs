//! The `overlayer` command.

mod args;
mod check;
mod inspect;
mod layers;
mod prop;
mod replay;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use overlayer::ReadOptions;

use crate::prop::PropOptions;
use crate::replay::ReplayOptions;
use args::{Cli, Command};

/// Entry point: runs the command and maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // While this is the only thread, growing the descriptor table is free;
    // once the Ctrl-C thread runs, each growth waits for an RCU grace period.
    overlayer::sys::reserve_fd_table();
    // Ctrl-C stops the work at the next read and its temporary output is
    // removed; if no read comes (a silent pipe), the handler removes the
    // temporary outputs itself after a grace period and exits.
    let _ = ctrlc::set_handler(|| {
        overlayer::limits::cancel();
        std::thread::sleep(std::time::Duration::from_secs(2));
        overlayer::output::abandon_all();
        eprintln!("overlayer: cancelled; nothing was left behind");
        std::process::exit(130);
    });
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let cancelled = e
                .chain()
                .any(|c| matches!(c.downcast_ref(), Some(overlayer::Error::Cancelled)));
            if cancelled {
                eprintln!("overlayer: cancelled; nothing was left behind");
                return ExitCode::from(130);
            }
            eprintln!("overlayer: error: {}", error_text(&e));
            ExitCode::from(2)
        }
    }
}

/// The error's chain, `: `-joined; a cause already shown at the end of its
/// context (library errors print their source) is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Apply { layers, out, read } => layers::apply(layers, out, read),
        Command::Convert {
            layers,
            out,
            marks,
            read,
        } => layers::convert(layers, out, marks, read),
        Command::Mount {
            layers,
            userxattr,
            json,
            read,
        } => inspect::mount(layers, userxattr, json, read),
        Command::Diff { a, b, json } => inspect::diff(a, b, json),
        Command::Replay {
            paths,
            json,
            junit,
            modes,
            record,
        } => replay::replay_cmd(paths, json, junit, ReplayOptions { modes }, record),
        Command::Prop {
            cases,
            seed,
            max_layers,
            save,
            json,
            mode,
            marks,
            no_kernel,
        } => prop::prop_cmd(
            PropOptions {
                cases,
                seed,
                max_layers,
                marks,
                kernel: !no_kernel,
                read: ReadOptions::default(),
                kind: mode,
            },
            save,
            json,
        ),
        Command::Export { from, out } => layers::export(from, out),
        Command::Changes { from, json } => layers::changes(from, json),
        Command::Unpack {
            image,
            out,
            format,
            platform,
            marks,
            read,
        } => layers::unpack(image, out, format, platform, marks, read),
        Command::Hidden {
            image,
            platform,
            json,
        } => inspect::hidden(image, platform, json),
        Command::Check {
            unpacker,
            image_format,
            cases,
            generated,
            seed,
            timeout,
            json,
            junit,
        } => check::check_cmd(
            &unpacker,
            image_format,
            cases,
            generated,
            seed,
            std::time::Duration::from_secs(timeout),
            json,
            junit,
        ),
        Command::Probe { json } => inspect::probe(json),
    }
}

/// The width of a table's case-name column: the longest name, at least the
/// heading `case`.
fn name_column<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(str::len).max().unwrap_or(0).max("case".len())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
