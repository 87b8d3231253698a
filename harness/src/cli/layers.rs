//! `apply`, `convert`, `export`, `changes` and `unpack`: the commands that
//! read layers (or an upper directory) and write them out in another form.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use overlayer::ConvertOptions;

use super::args::{MarkArgs, ReadArgs, UnpackFormat, UpperArgs};

fn report_notices(summary: &overlayer::Summary) {
    for n in &summary.notices {
        eprintln!(
            "overlayer: notice: layer {}: entry {:?}: {}",
            n.layer, n.entry, n.what
        );
    }
}

fn open_layers(paths: &[PathBuf]) -> Result<Vec<File>> {
    paths
        .iter()
        .map(|p| File::open(p).with_context(|| format!("open layer {}", p.display())))
        .collect()
}

pub(super) fn apply(layers: Vec<PathBuf>, out: PathBuf, read: ReadArgs) -> Result<ExitCode> {
    let files = open_layers(&layers)?;
    let summary = overlayer::apply_to_new_dir_with(files, &out, &read.options())
        .with_context(|| format!("apply into {}", out.display()))?;
    report_notices(&summary);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn convert(
    layers: Vec<PathBuf>,
    out: PathBuf,
    marks: MarkArgs,
    read: ReadArgs,
) -> Result<ExitCode> {
    let files = open_layers(&layers)?;
    let opts = marks.convert_options(&read);
    let converted = overlayer::convert_to_new_dir(files, &out, opts)
        .with_context(|| format!("convert into {}", out.display()))?;
    report_notices(&converted.summary);
    println!("lowerdir={}", converted.lowerdir());
    Ok(ExitCode::SUCCESS)
}

pub(super) fn export(from: UpperArgs, out: PathBuf) -> Result<ExitCode> {
    let s = overlayer::export_to_file(&from.upper, &from.lowers, &out, from.options())
        .with_context(|| format!("export {}", from.upper.display()))?;
    eprintln!(
        "{}: {} entries, {} whiteouts, {} opaque directories, {} renamed directories \
         and {} metacopy files materialised",
        out.display(),
        s.entries,
        s.whiteouts,
        s.opaque_dirs,
        s.redirected_dirs,
        s.metacopy_files
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn changes(from: UpperArgs, json: bool) -> Result<ExitCode> {
    let changes = overlayer::changes(&from.upper, &from.lowers, from.options())
        .with_context(|| format!("changes of {}", from.upper.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
    } else {
        for c in &changes {
            println!("{c}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn unpack(
    image: Vec<String>,
    out: PathBuf,
    format: UnpackFormat,
    platform: String,
    marks: MarkArgs,
    read: ReadArgs,
) -> Result<ExitCode> {
    let img = overlayer::image::open_any_with(&image, &platform, &read.options().limits)?;
    let readers = img.readers()?;
    match format {
        UnpackFormat::Flat => {
            let summary = overlayer::apply_to_new_dir_with(readers, &out, &read.options())
                .with_context(|| format!("unpack into {}", out.display()))?;
            report_notices(&summary);
        }
        UnpackFormat::Overlay => {
            let opts = marks.convert_options(&read);
            unpack_overlay(&img, readers, &out, opts)
                .with_context(|| format!("unpack into {}", out.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Converts into OUT/0 … OUT/N-1 and writes OUT/layers.json, atomically.
fn unpack_overlay(
    img: &overlayer::image::Image,
    readers: Vec<File>,
    out: &Path,
    opts: ConvertOptions,
) -> Result<()> {
    let staged = overlayer::output::Staged::new(out)?;
    let converted = overlayer::convert_into(readers, staged.path(), opts)?;
    report_notices(&converted.summary);
    let abs = std::path::absolute(out)?;
    let top_first: Vec<String> = (0..converted.layers.len())
        .rev()
        .map(|i| abs.join(i.to_string()).display().to_string())
        .collect();
    if top_first.len() == 1 {
        std::fs::create_dir(staged.path().join("empty"))?;
    }
    let empty = abs.join("empty").display().to_string();
    let lowerdir = overlayer::mount::readonly_lowerdir(top_first, &empty);
    let mut options = format!("ro,lowerdir={lowerdir}");
    if opts.userxattr {
        options.push_str(",userxattr");
    }
    let layers: Vec<serde_json::Value> = img
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::json!({
                "dir": i.to_string(),
                "source": l.path.display().to_string(),
                "digest": l.digest,
                "diff_id": l.diff_id,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "layers": layers,
        "order": "bottom first; lowerdir lists the top layer first",
        "lowerdir": lowerdir,
        "mount": format!("mount -t overlay overlay -o {options} MOUNTPOINT"),
        "userxattr": opts.userxattr,
        "xwhiteouts": opts.xwhiteouts,
    });
    std::fs::write(
        staged.path().join("layers.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    staged.commit()?;
    Ok(())
}
