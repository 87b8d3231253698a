//! The `overlayer` command.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use overlayer::tree::{self, View};
use overlayer::{ConvertOptions, ExportOptions, Limits, ReadOptions};

use crate::case;
use crate::kernel;
use crate::prop::{self, PropOptions};
use crate::replay::{self, ReplayOptions, Verdict};

#[derive(Parser)]
#[command(
    name = "overlayer",
    version,
    about = "OCI layer tars ⇄ overlayfs-native layers, checked against the kernel",
    long_about = "overlayer converts OCI image layers (tar, tar+gzip, tar+zstd) into \
overlayfs-native layer directories, applies them in userspace exactly as the OCI image \
spec says, and checks both against the kernel's own overlay merge.\n\n\
Exit status: 0 success, 1 a comparison found differences or a case failed, \
2 bad input or an error (the message names the layer, entry and rule)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Limits and strict mode, shared by the commands that read layers.
#[derive(clap::Args, Debug, Clone)]
struct ReadArgs {
    /// Refuse what the OCI spec forbids or tools disagree on (duplicate
    /// entries, `.wh.` directory components, whiteouts that are not empty
    /// regular files, AUFS metadata) and report setuid/setgid files and
    /// device nodes.
    #[arg(long)]
    strict: bool,
    /// Most inflated bytes of all layers together.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_BYTES)]
    max_bytes: u64,
    /// Most entries of all layers together.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_ENTRIES)]
    max_entries: u64,
    /// Largest single file.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_FILE_BYTES)]
    max_file_bytes: u64,
    /// Deepest path, in components.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_DEPTH)]
    max_depth: usize,
    /// Largest extension record (PAX header, GNU long name), refused at its
    /// header before it is read, since it is held in memory whole.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_EXTENSION_BYTES)]
    max_extension_bytes: u64,
}

impl ReadArgs {
    fn options(&self) -> ReadOptions {
        ReadOptions {
            strict: self.strict,
            limits: Limits {
                max_bytes: self.max_bytes,
                max_entries: self.max_entries,
                max_file_bytes: self.max_file_bytes,
                max_depth: self.max_depth,
                max_extension_bytes: self.max_extension_bytes,
            },
        }
    }
}

fn report_notices(summary: &overlayer::Summary) {
    for n in &summary.notices {
        eprintln!(
            "overlayer: notice: layer {}: entry {:?}: {}",
            n.layer, n.entry, n.what
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum UnpackFormat {
    /// A flattened rootfs (the userspace apply).
    Flat,
    /// One overlay-native directory per layer, plus layers.json.
    Overlay,
}

/// What export does with `redirect_dir` and `metacopy` uppers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RedirectsArg {
    /// Write renamed directories in full (`.wh.OLD` plus the whole NEW
    /// tree) and metacopy files with their lower data.
    Materialise,
    /// Refuse such an upper, naming the entry.
    Refuse,
}

/// An upper directory and the lower layers it was mounted over, as
/// `export` and `changes` read them.
#[derive(clap::Args)]
struct UpperArgs {
    upper: PathBuf,
    /// Lower layer directories (overlay-native), bottom first.
    #[arg(long = "lower", num_args = 1..)]
    lowers: Vec<PathBuf>,
    /// The upper uses user.overlay.* markers (-o userxattr).
    #[arg(long)]
    userxattr: bool,
    /// Renamed directories (redirect_dir) and metacopy files.
    #[arg(long, value_enum, default_value = "materialise")]
    redirects: RedirectsArg,
}

impl UpperArgs {
    fn options(&self) -> ExportOptions {
        ExportOptions {
            userxattr: self.userxattr,
            redirects: match self.redirects {
                RedirectsArg::Materialise => overlayer::Redirects::Materialise,
                RedirectsArg::Refuse => overlayer::Redirects::Refuse,
            },
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Apply layers (bottom first) into a new flat rootfs directory.
    ///
    /// ROOTFS must not exist; it is built in a temporary sibling and renamed
    /// into place, so a failure leaves nothing behind.
    Apply {
        /// Layer tars, bottom first (plain, gzip or zstd; detected by magic).
        #[arg(required = true)]
        layers: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Convert layers into overlay-native directories OUT/0 … OUT/N-1.
    ///
    /// Prints the `lowerdir=` value to mount them (top first). Whiteouts are
    /// char devices 0/0, opaque directories carry trusted.overlay.opaque=y
    /// (user.overlay.opaque with --userxattr).
    Convert {
        #[arg(required = true)]
        layers: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Write user.overlay.* markers, for `mount -o userxattr`.
        #[arg(long)]
        userxattr: bool,
        /// Write xattr whiteouts (Linux 6.7+) instead of char devices 0/0.
        #[arg(long)]
        xwhiteouts: bool,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Convert on a private tmpfs, mount with overlayfs, print the kernel's
    /// merged view, unmount. Needs root.
    Mount {
        #[arg(required = true)]
        layers: Vec<PathBuf>,
        #[arg(long)]
        userxattr: bool,
        /// Print the view as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Compare two directory trees; exit 0 if the same, 1 if different.
    ///
    /// Compares type, permission bits, owner, size, content, symlink target,
    /// device numbers, xattrs (overlay-private ones excluded), mtimes of
    /// non-directories and hardlink groups.
    Diff {
        a: PathBuf,
        b: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Replay regression cases: userspace apply, and convert + kernel mount
    /// where possible, each against the case's expected outcome.
    Replay {
        /// Case files or directories (recursive); default `cases`.
        paths: Vec<PathBuf>,
        /// Write a JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a JUnit XML report here.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Check the kernel side with these overlay markings (repeatable);
        /// default: every marking the running kernel supports.
        #[arg(long = "marks", value_enum)]
        modes: Vec<replay::Mode>,
        /// Rewrite each case's expected outcome from the kernel's view.
        #[arg(long)]
        record: bool,
    },
    /// Generate layer stacks and check kernel(convert) = apply = model.
    Prop {
        /// Number of stacks to generate.
        #[arg(long, default_value_t = 256)]
        cases: u32,
        /// Seed; the same seed reproduces a run.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Most layers in one stack.
        #[arg(long, default_value_t = 8)]
        max_layers: usize,
        /// Write the shrunk failing stack here as a new case file.
        #[arg(long)]
        save: Option<PathBuf>,
        /// Write a JSON summary here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The property: `convert` (kernel merge of the conversion) or
        /// `roundtrip` (export of the conversion, applied).
        #[arg(long, value_enum, default_value = "convert")]
        mode: prop::PropKind,
        /// Overlay markings of the converted layers.
        #[arg(long, value_enum, default_value = "trusted")]
        marks: replay::Mode,
        /// Compare apply with the model only, without mounting.
        #[arg(long)]
        no_kernel: bool,
    },
    /// Export an overlay upper directory (or a converted layer) as an OCI layer.
    ///
    /// Whiteouts become `.wh.NAME`, opaque directories `.wh..wh..opq` (only
    /// where the directory exists in the lower layers); overlay-private
    /// xattrs are dropped, all others kept; the output is deterministic
    /// (sorted, stable headers). OUT ending in .gz or .zst is compressed.
    /// An upper written with redirect_dir or metacopy keeps content in the
    /// lower layers under other names: by default it is materialised from
    /// the lower layers given, which must be the ones it was mounted with.
    Export {
        #[command(flatten)]
        from: UpperArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// What an upper directory adds (A), changes (C) and deletes (D) over
    /// its lower layers, like `docker diff`.
    Changes {
        #[command(flatten)]
        from: UpperArgs,
        #[arg(long)]
        json: bool,
    },
    /// Unpack an image: an OCI layout (`DIR` or `DIR:TAG`), a `docker save`
    /// archive (`FILE` or `FILE:TAG`), or raw layer tars (bottom first).
    ///
    /// Blob digests and diff_ids are verified. `--format flat` writes a
    /// rootfs; `--format overlay` writes OUT/0 … OUT/N-1 plus OUT/layers.json
    /// with the order and the exact `mount -t overlay` command. Nothing is
    /// left behind on failure.
    Unpack {
        #[arg(required = true)]
        image: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "flat")]
        format: UnpackFormat,
        /// os/arch of the manifest to pick from a multi-platform index.
        #[arg(long, default_value = "linux/amd64")]
        platform: String,
        #[arg(long)]
        userxattr: bool,
        #[arg(long)]
        xwhiteouts: bool,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// List what the layers hide: files a later layer whited out or replaced
    /// (a deleted secret stays in the earlier layer's blob).
    Hidden {
        #[arg(required = true)]
        image: Vec<String>,
        #[arg(long, default_value = "linux/amd64")]
        platform: String,
        #[arg(long)]
        json: bool,
    },
    /// Check a third-party unpacker against the kernel's merged views.
    ///
    /// For each case (the whole corpus, hostile cases included) and N
    /// generated stacks, the layers are written as an image in the chosen
    /// form, CMD runs in a fresh sandbox with sentinel files around
    /// `{rootfs}`, and the tree it produced is compared with the expected
    /// view (recorded from the kernel; the model's for generated stacks).
    /// A refusal passes where the case expects one or accepts one.
    /// Example: --unpacker 'harness/adapters/umoci.sh {image} {rootfs}'.
    Check {
        /// The command; `{image}` and `{rootfs}` are replaced (quoted).
        #[arg(long)]
        unpacker: String,
        #[arg(long, value_enum, default_value = "oci")]
        image_format: crate::imagefmt::ImageFormat,
        /// Case files or directories [default: cases].
        #[arg(long)]
        cases: Vec<PathBuf>,
        /// Generated stacks to add.
        #[arg(long, default_value_t = 0)]
        generated: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Probe the running kernel's overlayfs features by trial mounts.
    Probe {
        #[arg(long)]
        json: bool,
    },
}

/// Entry point: runs the command and maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
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

fn open_layers(paths: &[PathBuf]) -> Result<Vec<File>> {
    paths
        .iter()
        .map(|p| File::open(p).with_context(|| format!("open layer {}", p.display())))
        .collect()
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Apply { layers, out, read } => {
            let files = open_layers(&layers)?;
            let summary = overlayer::apply_to_new_dir_with(files, &out, &read.options())
                .with_context(|| format!("apply into {}", out.display()))?;
            report_notices(&summary);
            Ok(ExitCode::SUCCESS)
        }
        Command::Convert {
            layers,
            out,
            userxattr,
            xwhiteouts,
            read,
        } => {
            let files = open_layers(&layers)?;
            let opts = ConvertOptions {
                userxattr,
                xwhiteouts,
                read: read.options(),
            };
            let converted = overlayer::convert_to_new_dir(files, &out, opts)
                .with_context(|| format!("convert into {}", out.display()))?;
            report_notices(&converted.summary);
            println!("lowerdir={}", converted.lowerdir());
            Ok(ExitCode::SUCCESS)
        }
        Command::Mount {
            layers,
            userxattr,
            json,
            read,
        } => {
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
        Command::Diff { a, b, json } => {
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
        Command::Replay {
            paths,
            json,
            junit,
            modes,
            record,
        } => replay_cmd(paths, json, junit, ReplayOptions { modes }, record),
        Command::Prop {
            cases,
            seed,
            max_layers,
            save,
            json,
            mode,
            marks,
            no_kernel,
        } => prop_cmd(
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
        Command::Export { from, out } => {
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
        Command::Changes { from, json } => {
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
        Command::Unpack {
            image,
            out,
            format,
            platform,
            userxattr,
            xwhiteouts,
            read,
        } => {
            let img = overlayer::image::open_any(&image, &platform)
                .with_context(|| format!("open image {}", image.join(" ")))?;
            let readers = img.readers()?;
            match format {
                UnpackFormat::Flat => {
                    let summary = overlayer::apply_to_new_dir_with(readers, &out, &read.options())
                        .with_context(|| format!("unpack into {}", out.display()))?;
                    report_notices(&summary);
                }
                UnpackFormat::Overlay => {
                    let opts = ConvertOptions {
                        userxattr,
                        xwhiteouts,
                        read: read.options(),
                    };
                    unpack_overlay(&img, readers, &out, opts)
                        .with_context(|| format!("unpack into {}", out.display()))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Hidden {
            image,
            platform,
            json,
        } => {
            let img = overlayer::image::open_any(&image, &platform)
                .with_context(|| format!("open image {}", image.join(" ")))?;
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
        Command::Check {
            unpacker,
            image_format,
            cases,
            generated,
            seed,
            json,
            junit,
        } => check_cmd(&unpacker, image_format, cases, generated, seed, json, junit),
        Command::Probe { json } => {
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
    }
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

fn replay_cmd(
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
    let width = results
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
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

fn check_cmd(
    unpacker: &str,
    format: crate::imagefmt::ImageFormat,
    cases: Vec<PathBuf>,
    generated: u32,
    seed: u64,
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
        let r = crate::check::check_case(name, case, unpacker, format, user_xattrs)
            .with_context(|| format!("case {name}"))?;
        results.push(r);
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let width = results
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("{:width$}  {:7} first difference", "case", "verdict");
    for r in &results {
        println!("{:width$}  {:7} {}", r.name, r.verdict, r.detail);
    }
    let count = |v: &str| results.iter().filter(|r| r.verdict == v).count();
    let (passed, failed, skipped) = (count("pass"), count("fail"), count("skip"));
    println!(
        "{unpacker} ({format:?}): {} cases, {passed} passed, {failed} failed, {skipped} skipped",
        results.len()
    );
    if let Some(path) = json {
        let doc = serde_json::json!({
            "unpacker": unpacker, "image_format": format,
            "total": results.len(), "passed": passed, "failed": failed, "skipped": skipped,
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

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

fn prop_cmd(opts: PropOptions, save: Option<PathBuf>, json: Option<PathBuf>) -> Result<ExitCode> {
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
    if !report.refused.is_empty() {
        let parts: Vec<String> = report
            .refused
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("refusals by rule: {}", parts.join(", "));
    }
    if let (Some(failure), Some(stack)) = (&report.failure, &report.minimal) {
        let case = prop::as_case(stack, failure, opts.seed);
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
