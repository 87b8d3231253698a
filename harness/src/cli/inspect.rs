//! `mount`, `diff`, `hidden` and `probe`: the commands that look at the
//! kernel's merged view, two trees, an image's layers or the kernel itself,
//! and print what they find.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use overlayer::tree::{self, View};
use overlayer::{ConvertOptions, ReadOptions};

use super::args::ReadArgs;
use crate::kernel;

pub(super) fn mount(
    layers: Vec<PathBuf>,
    userxattr: bool,
    json: bool,
    read: ReadArgs,
) -> Result<ExitCode> {
    if let Some(reason) = kernel::unavailable() {
        anyhow::bail!("cannot mount: {reason}");
    }
    let tars = layers
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("read layer {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let opts = ConvertOptions {
        userxattr,
        read: read.options(),
        ..Default::default()
    };
    let view = kernel::with_scratch(|s| s.kernel_view(&tars, opts))?.context("convert")?;
    print_view(&view, json)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn diff(a: PathBuf, b: PathBuf, json: bool) -> Result<ExitCode> {
    let va = tree::capture(&a).with_context(|| format!("capture {}", a.display()))?;
    let vb = tree::capture(&b).with_context(|| format!("capture {}", b.display()))?;
    let diffs = tree::diff(&va, &vb);
    if json {
        println!("{}", serde_json::to_string_pretty(&diffs)?);
    } else {
        for d in &diffs {
            println!("{d}");
        }
        if diffs.is_empty() {
            eprintln!("same");
        } else {
            eprintln!("{} difference(s)", diffs.len());
        }
    }
    Ok(if diffs.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(super) fn hidden(image: Vec<String>, platform: String, json: bool) -> Result<ExitCode> {
    let img = overlayer::image::open_any(&image, &platform)?;
    let found = overlayer::hidden::hidden(img.readers()?, &ReadOptions::default())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        println!("{:<6} {:>10}  {:<28} path", "layer", "size", "hidden by");
        for h in &found {
            let by = format!("layer {} ({})", h.hidden_by, h.how);
            println!("{:<6} {:>10}  {:<28} {}", h.layer, h.size, by, h.path);
        }
        eprintln!("{} hidden path(s)", found.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn probe(json: bool) -> Result<ExitCode> {
    let f = kernel::probe();
    if json {
        println!("{}", serde_json::to_string(&f)?);
    } else {
        println!("kernel        {}", f.kernel);
        println!("overlay       {}", f.overlay);
        println!("userxattr     {}", f.userxattr);
        println!("xwhiteouts    {}", f.xwhiteouts);
        println!("lowerdir+     {}", f.lowerdir_plus);
        if let Some(r) = &f.reason {
            println!("note          {r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_view(view: &View, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    for (path, n) in &view.nodes {
        let kind = format!("{:?}", n.kind).to_lowercase();
        let mut line = format!("{kind:7} {:04o} {:>4}:{:<4} {path}", n.mode, n.uid, n.gid);
        if let Some(t) = &n.target {
            line.push_str(&format!(" -> {t}"));
        }
        if let Some(text) = &n.text {
            line.push_str(&format!("  {text:?}"));
        } else if let (Some(size), Some(sha)) = (n.size, &n.sha256) {
            line.push_str(&format!("  {size} bytes sha256:{}", &sha[..12]));
        }
        for (k, v) in &n.xattrs {
            line.push_str(&format!("  {k}={v}"));
        }
        writeln!(out, "{line}")?;
    }
    for d in &view.defects {
        writeln!(out, "DEFECT  {d}")?;
    }
    Ok(())
}
