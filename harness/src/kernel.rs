//! The kernel oracle: converted layers mounted read-only with overlayfs on a
//! private tmpfs, in a private mount namespace, and the merged view captured.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use overlayer::layer::Compression;
use overlayer::mount::{self, OverlayMount};
use overlayer::tree::{self, View};
use overlayer::{ConvertOptions, ReadOptions};

/// The outcome of applying or converting a stack: a view, or the library's error.
pub type Outcome = std::result::Result<View, overlayer::Error>;

/// Why the kernel oracle cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root to mount (run as root)".into());
    }
    match std::fs::read_to_string("/proc/filesystems") {
        Ok(fs) if fs.lines().any(|l| l.trim_end().ends_with("overlay")) => None,
        Ok(_) => Some("overlay filesystem not available (modprobe overlay)".into()),
        Err(e) => Some(format!("cannot read /proc/filesystems: {e}")),
    }
}

/// For tests that need the kernel oracle (root, overlay): true if it can
/// run; otherwise prints `SKIPPED:` with the reason and what was skipped,
/// so a skip is never silent.
pub fn available_or_skip(what: &str) -> bool {
    match unavailable() {
        Some(reason) => {
            eprintln!("SKIPPED: {what}: {reason}");
            false
        }
        None => true,
    }
}

/// A private tmpfs for one thread's runs. Create it with [`with_scratch`].
pub struct Scratch {
    dir: PathBuf,
    serial: u64,
    /// Whether `dir` is a tmpfs in a private namespace (kernel runs possible).
    mounted: bool,
    /// Whether the scratch filesystem takes `user.*` xattrs (tmpfs: 6.6+).
    user_xattrs: bool,
}

/// Runs `work` with a scratch area: a tmpfs in a private mount namespace when
/// the kernel oracle is available, else a plain temporary directory (apply
/// and the model only). Nothing mounted survives `work`, even a panic.
pub fn with_scratch<T: Send>(work: impl FnOnce(&mut Scratch) -> Result<T> + Send) -> Result<T> {
    let tmp = tempfile::Builder::new()
        .prefix("overlayer-scratch-")
        .tempdir()
        .context("create scratch directory")?;
    let dir = tmp.path().to_path_buf();
    if unavailable().is_some() {
        let user_xattrs = takes_user_xattrs(&dir);
        let mut scratch = Scratch {
            dir,
            serial: 0,
            mounted: false,
            user_xattrs,
        };
        return work(&mut scratch);
    }
    mount::in_private_namespace(|| {
        mount::mount_tmpfs(&dir)?;
        let mut scratch = Scratch {
            dir: dir.clone(),
            serial: 0,
            mounted: true,
            user_xattrs: takes_user_xattrs(&dir),
        };
        Ok(work(&mut scratch))
    })?
}

/// True if a file in `dir` accepts a `user.*` xattr.
fn takes_user_xattrs(dir: &Path) -> bool {
    let probe = dir.join(".user-xattr-probe");
    let ok = std::fs::write(&probe, b"").is_ok()
        && xattr_set(&probe, "user.overlayer-probe", b"1").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// Why the scratch filesystem cannot hold `user.*` xattrs.
pub const NO_USER_XATTRS: &str =
    "the scratch tmpfs takes no user.* xattrs (tmpfs gained them in Linux 6.6)";

impl Scratch {
    pub fn can_mount(&self) -> bool {
        self.mounted
    }

    /// Whether `user.*` xattrs can be written here.
    pub fn user_xattrs(&self) -> bool {
        self.user_xattrs
    }

    fn fresh(&mut self) -> Result<PathBuf> {
        self.serial += 1;
        let dir = self.dir.join(self.serial.to_string());
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(dir)
    }

    /// The flat rootfs of `tars` (userspace apply), as a view. Sentinels
    /// around the output must come through untouched, or this is an error.
    pub fn apply_view(&mut self, tars: &[Vec<u8>], opts: &ReadOptions) -> Result<Outcome> {
        let work = self.fresh()?;
        let out = work.join("rootfs");
        let sentinels = Sentinels::plant(&work)?;
        let readers: Vec<&[u8]> = tars.iter().map(Vec::as_slice).collect();
        let outcome = match overlayer::apply_to_new_dir_with(readers, &out, opts) {
            Ok(_) => Ok(tree::capture(&out)?),
            Err(e) => Err(e),
        };
        sentinels.check(&work, outcome.is_ok())?;
        remove(&work);
        Ok(outcome)
    }

    /// The kernel's merged view of `convert(tars)`.
    pub fn kernel_view(&mut self, tars: &[Vec<u8>], opts: ConvertOptions) -> Result<Outcome> {
        anyhow::ensure!(self.mounted, "the kernel oracle is not available here");
        let work = self.fresh()?;
        let converted = match convert_in(&work, tars, opts)? {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let merged = work.join("m");
        std::fs::create_dir(&merged)?;
        let mount = OverlayMount {
            base: work.join("l"),
            layers: (0..converted.layers.len()).map(|i| i.to_string()).collect(),
            userxattr: opts.userxattr,
        };
        mount.mount(&merged)?;
        let view = tree::capture(&merged);
        mount::unmount(&merged)?;
        remove(&work);
        Ok(Ok(view?))
    }
}

/// Files and a directory next to an output, which nothing may touch.
struct Sentinels {
    before: View,
}

const SENTINEL_FILE: &str = "sentinel-file";
const SENTINEL_DIR: &str = "sentinel-dir";

impl Sentinels {
    fn plant(work: &Path) -> Result<Self> {
        std::fs::write(work.join(SENTINEL_FILE), b"must not change")?;
        std::fs::create_dir(work.join(SENTINEL_DIR))?;
        std::fs::write(work.join(SENTINEL_DIR).join("passwd"), b"root:x:0:0")?;
        Ok(Sentinels {
            before: tree::capture(work)?,
        })
    }

    /// Everything around the output is as planted, and the output exists
    /// only if the work succeeded (no partial output on failure).
    fn check(&self, work: &Path, succeeded: bool) -> Result<()> {
        let mut after = tree::capture(work)?;
        let had_output = after
            .nodes
            .keys()
            .any(|k| k == "rootfs" || k.starts_with("rootfs/"));
        after
            .nodes
            .retain(|k, _| k != "rootfs" && !k.starts_with("rootfs/"));
        let mut before = self.before.clone();
        // The work directory's own mtime changes when the output appears.
        before.nodes.remove(".");
        after.nodes.remove(".");
        let changed = tree::diff(&before, &after);
        anyhow::ensure!(
            changed.is_empty(),
            "apply changed files outside its output: {}",
            changed
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        );
        anyhow::ensure!(
            had_output == succeeded,
            "apply left {} output after {}",
            if had_output { "an" } else { "no" },
            if succeeded { "success" } else { "failure" }
        );
        Ok(())
    }
}

impl Scratch {
    /// The round trip: `convert(tars)`, each converted layer exported as an
    /// OCI layer over the ones below it, the exports applied. An error of
    /// export or of applying an export is a finding, not an outcome.
    pub fn roundtrip_view(&mut self, tars: &[Vec<u8>], opts: ConvertOptions) -> Result<Outcome> {
        let work = self.fresh()?;
        let converted = match convert_in(&work, tars, opts)? {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        // A converted layer never has renamed directories or metacopy files.
        let export_opts = overlayer::ExportOptions {
            userxattr: opts.userxattr,
            redirects: overlayer::Redirects::Refuse,
        };
        let mut exported = Vec::new();
        for (i, layer) in converted.layers.iter().enumerate() {
            let mut bytes = Vec::new();
            overlayer::export(layer, &converted.layers[..i], &mut bytes, export_opts)
                .with_context(|| format!("export of converted layer {i}"))?;
            exported.push(bytes);
        }
        let readers: Vec<&[u8]> = exported.iter().map(Vec::as_slice).collect();
        let out = work.join("r");
        overlayer::apply_to_new_dir_with(readers, &out, &ReadOptions::default())
            .context("apply of the exported layers")?;
        let view = tree::capture(&out)?;
        remove(&work);
        Ok(Ok(view))
    }
}

/// What the write-path property saw.
pub enum WriteOutcome {
    /// The lower stack itself was refused by convert.
    LowerRefused(overlayer::Error),
    /// The kernel's merged view after the writes, the flat view of the
    /// lower layers plus the exported upper, and what export wrote.
    Views {
        kernel: View,
        flat: View,
        export: overlayer::ExportSummary,
        /// The exported layer, and `changes` of the upper.
        layer: Vec<u8>,
        changes: Vec<overlayer::Change>,
    },
}

impl Scratch {
    /// Converts `tars`, mounts them writable (upper and work dirs on this
    /// tmpfs; `redirect` turns `redirect_dir` and `metacopy` on), runs
    /// `ops`, captures the merged view, unmounts, exports the upper
    /// (materialising renamed directories and metacopy files) and applies
    /// lowers + export.
    pub fn write_view(
        &mut self,
        tars: &[Vec<u8>],
        ops: &[crate::write::WriteOp],
        redirect: bool,
        opts: ConvertOptions,
    ) -> Result<WriteOutcome> {
        anyhow::ensure!(self.mounted, "the kernel oracle is not available here");
        let features = match (redirect, opts.userxattr) {
            (true, false) => ",redirect_dir=on,metacopy=on",
            (false, false) => ",redirect_dir=off,metacopy=off",
            // userxattr implies redirect_dir=nofollow and refuses "off".
            (false, true) => ",userxattr",
            (true, true) => {
                anyhow::bail!("the kernel refuses redirect_dir and metacopy with userxattr")
            }
        };
        let work = self.fresh()?;
        let converted = match convert_in(&work, tars, opts)? {
            Ok(c) => c,
            Err(e) => return Ok(WriteOutcome::LowerRefused(e)),
        };
        for d in ["u", "w", "m"] {
            std::fs::create_dir(work.join(d))?;
        }
        // With an upper dir, one lower layer is enough.
        let options = format!(
            "lowerdir={},upperdir={},workdir={}{features}",
            converted.lowerdir(),
            work.join("u").display(),
            work.join("w").display(),
        );
        let merged = work.join("m");
        overlayer::sys::mount_overlay(&merged, &options, false)
            .with_context(|| format!("mount overlay {options}"))?;
        crate::write::run_ops(&merged, ops);
        let kernel = tree::capture(&merged);
        mount::unmount(&merged)?;
        let kernel = kernel?;
        let mut exported = Vec::new();
        let export_opts = overlayer::ExportOptions {
            userxattr: opts.userxattr,
            redirects: overlayer::Redirects::Materialise,
        };
        let export = overlayer::export(
            &work.join("u"),
            &converted.layers,
            &mut exported,
            export_opts,
        );
        let export = export.and_then(|summary| {
            let changes = overlayer::changes(&work.join("u"), &converted.layers, export_opts)?;
            Ok((summary, changes))
        });
        let (export, changes) = match export {
            Ok(done) => done,
            Err(e) => {
                remove(&work);
                anyhow::bail!("export of the upper failed: {e}");
            }
        };
        let mut layers: Vec<&[u8]> = tars.iter().map(Vec::as_slice).collect();
        layers.push(&exported);
        let out = work.join("r");
        overlayer::apply_to_new_dir_with(layers, &out, &ReadOptions::default())
            .context("apply of the lower layers plus the exported upper")?;
        let flat = tree::capture(&out)?;
        remove(&work);
        Ok(WriteOutcome::Views {
            kernel,
            flat,
            export,
            layer: exported,
            changes,
        })
    }
}

/// Converts `tars` into `work/l`; on a refusal the work directory is
/// removed and the library's error returned.
///
/// The layers are read from files, as the command reads them, while
/// [`Oracle::apply_view`] reads them from memory: every case and generated
/// stack compares the input paths too. Even layers are plain (`work/N.tar`:
/// `pread` and `copy_file_range`), odd ones gzip (`work/N.tar.gz`: inflated
/// ahead while the layer below is read) against one buffered reader. A
/// layer that is compressed already (a damaged-archive case) is written
/// as it is: wrapping it again would hide its damage behind a tar error.
fn convert_in(
    work: &Path,
    tars: &[Vec<u8>],
    opts: ConvertOptions,
) -> Result<overlayer::Result<overlayer::Converted>> {
    let mut files = Vec::with_capacity(tars.len());
    for (i, tar) in tars.iter().enumerate() {
        let plain = Compression::detect(tar) == Compression::None;
        let (path, bytes) = if i % 2 == 0 || !plain {
            (
                work.join(format!("{i}.tar")),
                std::borrow::Cow::Borrowed(&tar[..]),
            )
        } else {
            (
                work.join(format!("{i}.tar.gz")),
                std::borrow::Cow::Owned(gzip(tar)?),
            )
        };
        let file = std::fs::write(&path, &bytes).and_then(|()| std::fs::File::open(&path));
        files.push(file.with_context(|| format!("write layer {}", path.display()))?);
    }
    Ok(overlayer::convert_to_new_dir(files, &work.join("l"), opts).inspect_err(|_| remove(work)))
}

/// `tar` gzip-compressed at the fastest level.
fn gzip(tar: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(tar)?;
    Ok(enc.finish()?)
}

fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Kernel features, probed by trial mounts (never by version number).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Features {
    pub kernel: String,
    pub overlay: bool,
    pub userxattr: bool,
    pub xwhiteouts: bool,
    pub lowerdir_plus: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// [`probe`], once per process.
pub fn probe_cached() -> Features {
    static FEATURES: std::sync::OnceLock<Features> = std::sync::OnceLock::new();
    FEATURES.get_or_init(probe).clone()
}

/// Probes what this kernel's overlayfs supports.
pub fn probe() -> Features {
    let kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut features = Features {
        kernel,
        overlay: false,
        userxattr: false,
        xwhiteouts: false,
        lowerdir_plus: false,
        reason: unavailable(),
    };
    if features.reason.is_some() {
        return features;
    }
    let probed = with_scratch(|scratch| {
        let base = scratch.fresh()?;
        for d in ["0", "1", "m"] {
            std::fs::create_dir(base.join(d))?;
        }
        std::fs::write(base.join("0/f"), b"x")?;
        let mut m = OverlayMount {
            base: base.clone(),
            layers: vec!["0".into(), "1".into()],
            userxattr: false,
        };
        let overlay = m.mount(&base.join("m")).is_ok();
        if overlay {
            mount::unmount(&base.join("m"))?;
        }
        m.userxattr = true;
        let userxattr = m.mount(&base.join("m")).is_ok();
        if userxattr {
            mount::unmount(&base.join("m"))?;
        }
        // xattr whiteout: an empty file with overlay.whiteout in a directory
        // marked opaque="x", above a layer holding the name.
        std::fs::write(base.join("1/f"), b"")?;
        let x1 = base.join("1");
        let xw = xattr_set(&base.join("1/f"), "trusted.overlay.whiteout", b"")
            .and_then(|_| xattr_set(&x1, "trusted.overlay.opaque", b"x"))
            .is_ok();
        let mut xwhiteouts = false;
        m.userxattr = false;
        if xw && m.mount(&base.join("m")).is_ok() {
            xwhiteouts = !base.join("m/f").exists();
            mount::unmount(&base.join("m"))?;
        }
        Ok((overlay, userxattr, xwhiteouts, lowerdir_plus(&base)))
    });
    match probed {
        Ok((overlay, userxattr, xwhiteouts, plus)) => {
            features.overlay = overlay;
            features.userxattr = userxattr;
            features.xwhiteouts = xwhiteouts;
            features.lowerdir_plus = plus;
        }
        Err(e) => features.reason = Some(format!("probe failed: {e:#}")),
    }
    features
}

fn xattr_set(path: &Path, key: &str, value: &[u8]) -> std::io::Result<()> {
    rustix::fs::lsetxattr(path, key, value, rustix::fs::XattrFlags::empty()).map_err(Into::into)
}

/// Layers added one by one with `fsconfig(…, "lowerdir+", …)` (6.8+) make
/// a superblock. Before 6.5 overlay went through the legacy context, which
/// accepts any key and fails only at creation, so creation is the test.
fn lowerdir_plus(base: &Path) -> bool {
    use rustix::mount::{fsconfig_create, fsconfig_set_string, fsopen, FsOpenFlags};
    let Ok(fs) = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) else {
        return false;
    };
    ["1", "0"]
        .iter()
        .all(|l| fsconfig_set_string(&fs, "lowerdir+", base.join(l).as_path()).is_ok())
        && fsconfig_create(&fs).is_ok()
}
