//! The command line: the subcommands with their flags and help, and the
//! argument groups several of them share.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use overlayer::{ExportOptions, Limits, ReadOptions};

use crate::case;
use crate::prop;

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
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

/// How converted layers are marked, shared by `convert` and `unpack --format overlay`.
#[derive(clap::Args, Debug, Clone, Copy)]
pub(super) struct MarkArgs {
    /// Write user.overlay.* markers, for `mount -o userxattr`.
    #[arg(long)]
    userxattr: bool,
    /// Write xattr whiteouts (Linux 6.7+) instead of char devices 0/0.
    #[arg(long)]
    xwhiteouts: bool,
}

impl MarkArgs {
    pub(super) fn convert_options(self, read: &ReadArgs) -> overlayer::ConvertOptions {
        overlayer::ConvertOptions {
            userxattr: self.userxattr,
            xwhiteouts: self.xwhiteouts,
            read: read.options(),
        }
    }
}

/// Limits and strict mode, shared by the commands that read layers.
#[derive(clap::Args, Debug, Clone)]
pub(super) struct ReadArgs {
    /// Refuse what the OCI spec forbids or tools disagree on (duplicate
    /// entries, `.wh.` directory components, whiteouts that are not empty
    /// regular files, AUFS metadata) and report setuid/setgid files and
    /// device nodes.
    #[arg(long)]
    strict: bool,
    /// Most inflated bytes of all layers together (`unpack`: and of the
    /// files of a `docker save` archive, unpacked first).
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_BYTES)]
    max_bytes: u64,
    /// Most entries of all layers together (`unpack`: and files of a
    /// `docker save` archive).
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
    pub(super) fn options(&self) -> ReadOptions {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum UnpackFormat {
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
pub(super) struct UpperArgs {
    pub(super) upper: PathBuf,
    /// Lower layer directories (overlay-native), bottom first.
    #[arg(long = "lower", num_args = 1..)]
    pub(super) lowers: Vec<PathBuf>,
    /// The upper uses user.overlay.* markers (-o userxattr).
    #[arg(long)]
    userxattr: bool,
    /// Renamed directories (redirect_dir) and metacopy files.
    #[arg(long, value_enum, default_value = "materialise")]
    redirects: RedirectsArg,
}

impl UpperArgs {
    pub(super) fn options(&self) -> ExportOptions {
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
pub(super) enum Command {
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
        #[command(flatten)]
        marks: MarkArgs,
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
        modes: Vec<case::Mode>,
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
        /// The property: `convert` (kernel merge of the conversion),
        /// `roundtrip` (export of the conversion, applied), `write` and
        /// `write-redirect` (writes on a writable overlay, exported), or
        /// `damaged` (one layer compressed with a byte flipped or cut
        /// short: refused at that layer, or the intact view).
        #[arg(long, value_enum, default_value = "convert")]
        mode: prop::PropKind,
        /// Overlay markings of the converted layers.
        #[arg(long, value_enum, default_value = "trusted")]
        marks: case::Mode,
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
        #[command(flatten)]
        marks: MarkArgs,
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
    /// A refusal (a non-zero exit) passes where the case expects one or
    /// accepts one; a crash (a signal, or a Go or Rust panic report) or a
    /// timeout never does, and each is reported as such.
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
        /// Seconds one unpacker run may take; then its process group gets
        /// SIGTERM (15 s for its cleanup) and SIGKILL, and the case fails
        /// as a timeout.
        #[arg(long, default_value_t = crate::check::TIMEOUT.as_secs())]
        timeout: u64,
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
