//! Export of an overlay upper directory (or any overlay-native layer) as an
//! OCI layer tar, the reverse of `to_overlay` (OCI layer.md, "Creating";
//! overlayfs.rst, "whiteouts and opaque directories"):
//! * a whiteout (char device 0/0, or an xattr whiteout in an `opaque="x"`
//!   directory) becomes an empty regular file `.wh.NAME`;
//! * an opaque directory (`opaque="y"`) gets `.wh..wh..opq`, but only if the
//!   directory exists in the lower layers: a new directory created over a
//!   whiteout is opaque in the kernel yet has nothing to hide;
//! * in each directory the opaque marker comes first, then the whiteouts,
//!   then the other entries, all sorted by name, with stable headers (no
//!   user or group names), so the same upper gives the same bytes;
//! * every xattr is exported except overlay-private ones; escaped ones
//!   (`trusted.overlay.overlay.X`) are exported unescaped;
//! * hardlinks within the upper stay hardlinks;
//! * an upper written with `redirect_dir` or `metacopy` is refused: its
//!   content lives partly in the lower layers under other names.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::lower::{is_whiteout, Found, LowerStack};
use crate::spec;
use crate::sys;

/// How to read the upper directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Overlay markers are `user.overlay.*` (`-o userxattr` mounts).
    pub userxattr: bool,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExportSummary {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
}

/// Exports `upper` over `lowers` (overlay-native layer directories, bottom
/// first) to the file `out`: `.tar`, `.tar.gz`/`.tgz` or `.tar.zst` by its
/// name. Written to a temporary sibling and renamed, so a failure leaves
/// nothing.
pub fn export_to_file(
    upper: &Path,
    lowers: &[PathBuf],
    out: &Path,
    opts: ExportOptions,
) -> Result<ExportSummary> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fail = |op, e| Error::path(out.display(), op, e);
    if out.symlink_metadata().is_ok() {
        return Err(fail("create output", io::ErrorKind::AlreadyExists.into()));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".overlayer-export-")
        .tempfile_in(parent)
        .map_err(|e| fail("create temporary output", e))?;
    crate::output::register(tmp.path());
    let result = write_export(upper, lowers, out, opts, &tmp);
    crate::output::forget(tmp.path());
    let summary = result?;
    tmp.persist_noclobber(out)
        .map_err(|e| fail("rename into place", e.error))?;
    Ok(summary)
}

fn write_export(
    upper: &Path,
    lowers: &[PathBuf],
    out: &Path,
    opts: ExportOptions,
    tmp: &tempfile::NamedTempFile,
) -> Result<ExportSummary> {
    let fail = |op, e| Error::path(out.display(), op, e);
    let name = out.to_string_lossy();
    let file = tmp.reopen().map_err(|e| fail("open", e))?;
    let summary = if name.ends_with(".gz") || name.ends_with(".tgz") {
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let s = export(upper, lowers, &mut gz, opts)?;
        gz.finish().map_err(|e| fail("gzip", e))?;
        s
    } else if name.ends_with(".zst") {
        let mut z = zstd::stream::write::Encoder::new(file, 3).map_err(|e| fail("zstd", e))?;
        let s = export(upper, lowers, &mut z, opts)?;
        z.finish().map_err(|e| fail("zstd", e))?;
        s
    } else {
        let mut f = io::BufWriter::new(file);
        let s = export(upper, lowers, &mut f, opts)?;
        f.flush().map_err(|e| fail("write", e))?;
        s
    };
    Ok(summary)
}

/// Writes the OCI layer of `upper` over `lowers` (bottom first) to `writer`.
pub fn export<W: Write>(
    upper: &Path,
    lowers: &[PathBuf],
    writer: W,
    opts: ExportOptions,
) -> Result<ExportSummary> {
    let mut ex = Exporter {
        upper: upper.to_path_buf(),
        lower: LowerStack::new(lowers, opts.userxattr),
        opts,
        tar: tar::Builder::new(writer),
        links: HashMap::new(),
        summary: ExportSummary::default(),
    };
    let meta =
        std::fs::symlink_metadata(upper).map_err(|e| Error::path(upper.display(), "stat", e))?;
    ex.header(&[], &meta, Kind::Dir)?;
    ex.dir(&mut Vec::new())?;
    ex.tar
        .finish()
        .map_err(|e| Error::path(upper.display(), "write tar", e))?;
    Ok(ex.summary)
}

struct Exporter<W: Write> {
    upper: PathBuf,
    lower: LowerStack,
    opts: ExportOptions,
    tar: tar::Builder<W>,
    /// (dev, ino) → first exported name, for hardlinks.
    links: HashMap<(u64, u64), String>,
    summary: ExportSummary,
}

enum Kind {
    Dir,
    File,
    Symlink(PathBuf),
    Link(String),
    Fifo,
    Char,
    Block,
    Whiteout,
    Opaque,
}

impl<W: Write> Exporter<W> {
    fn ns(&self) -> &'static str {
        if self.opts.userxattr {
            spec::USER_OVERLAY
        } else {
            spec::TRUSTED_OVERLAY
        }
    }

    fn marker(&self, path: &Path, suffix: &str) -> Option<Vec<u8>> {
        sys::get_xattr(path, &format!("{}{suffix}", self.ns()))
            .ok()
            .flatten()
    }

    fn dir(&mut self, rel: &mut Vec<String>) -> Result<()> {
        let here = self.upper.join(rel.join("/"));
        let mut names: Vec<String> = std::fs::read_dir(&here)
            .map_err(|e| Error::path(here.display(), "read directory", e))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()
            .map_err(|e| Error::path(here.display(), "read directory", e))?;
        names.sort();
        let opaque =
            self.marker(&here, spec::OPAQUE_XATTR_SUFFIX).as_deref() == Some(spec::OPAQUE_YES);
        if opaque && !rel.is_empty() && matches!(self.lower.lookup(rel), Found::Dir(_)) {
            let meta = std::fs::symlink_metadata(&here)
                .map_err(|e| Error::path(here.display(), "stat", e))?;
            rel.push(spec::OPAQUE_MARKER.into());
            self.header(rel, &meta, Kind::Opaque)?;
            rel.pop();
            self.summary.opaque_dirs += 1;
        }
        let (whiteouts, others): (Vec<String>, Vec<String>) = names
            .into_iter()
            .partition(|n| is_whiteout(&here.join(n), self.opts.userxattr));
        for name in whiteouts {
            let meta = std::fs::symlink_metadata(here.join(&name))
                .map_err(|e| Error::path(here.join(&name).display(), "stat", e))?;
            rel.push(format!("{}{name}", spec::WHITEOUT_PREFIX));
            self.header(rel, &meta, Kind::Whiteout)?;
            rel.pop();
            self.summary.whiteouts += 1;
        }
        for name in others {
            rel.push(name);
            self.entry(rel)?;
            rel.pop();
        }
        Ok(())
    }

    fn entry(&mut self, rel: &mut Vec<String>) -> Result<()> {
        let path = self.upper.join(rel.join("/"));
        let show = path.display().to_string();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::path(&show, "stat", e))?;
        let ft = meta.file_type();
        for (suffix, what) in [("redirect", "redirect_dir"), ("metacopy", "metacopy")] {
            if self.marker(&path, suffix).is_some() {
                return Err(Error::path(
                    &show,
                    "export",
                    io::Error::other(format!(
                        "written with {what}: its content lives in the lower layers under \
                         other names; export an upper made without {what}"
                    )),
                ));
            }
        }
        if ft.is_dir() {
            self.header(rel, &meta, Kind::Dir)?;
            return self.dir(rel);
        }
        let name = rel.join("/");
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                let first = first.clone();
                return self.header(rel, &meta, Kind::Link(first));
            }
            self.links.insert((meta.dev(), meta.ino()), name);
        }
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink(std::fs::read_link(&path).map_err(|e| Error::path(&show, "readlink", e))?)
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else {
            return Ok(()); // sockets are not layer content
        };
        self.header(rel, &meta, kind)
    }

    fn header(&mut self, rel: &[String], meta: &std::fs::Metadata, kind: Kind) -> Result<()> {
        let path = self.upper.join(rel.join("/"));
        let show = path.display().to_string();
        let werr = |e: io::Error| Error::path(&show, "write tar", e);
        let mut h = tar::Header::new_ustar();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut name = if rel.is_empty() {
            "./".to_string()
        } else {
            rel.join("/")
        };
        let (ty, mode) = match &kind {
            Kind::Dir => (tar::EntryType::Directory, meta.mode()),
            Kind::File => (tar::EntryType::Regular, meta.mode()),
            Kind::Symlink(_) => (tar::EntryType::Symlink, 0o777),
            Kind::Link(_) => (tar::EntryType::Link, meta.mode()),
            Kind::Fifo => (tar::EntryType::Fifo, meta.mode()),
            Kind::Char => (tar::EntryType::Char, meta.mode()),
            Kind::Block => (tar::EntryType::Block, meta.mode()),
            Kind::Whiteout | Kind::Opaque => (tar::EntryType::Regular, 0o644),
        };
        if matches!(kind, Kind::Dir) && !rel.is_empty() {
            name.push('/');
        }
        h.set_entry_type(ty);
        h.set_mode(mode & 0o7777);
        let marker = matches!(kind, Kind::Whiteout | Kind::Opaque);
        h.set_uid(if marker { 0 } else { meta.uid() as u64 });
        h.set_gid(if marker { 0 } else { meta.gid() as u64 });
        h.set_mtime(if marker {
            0
        } else {
            meta.mtime().max(0) as u64
        });
        h.set_size(if matches!(kind, Kind::File) {
            meta.len()
        } else {
            0
        });
        if matches!(kind, Kind::Char | Kind::Block) {
            let rdev = meta.rdev();
            h.set_device_major(rustix::fs::major(rdev)).map_err(werr)?;
            h.set_device_minor(rustix::fs::minor(rdev)).map_err(werr)?;
        }
        set_name(&mut h.as_old_mut().name, "path", name.as_bytes(), &mut pax);
        match &kind {
            Kind::Symlink(target) => {
                let t = target.as_os_str().as_encoded_bytes();
                set_name(&mut h.as_old_mut().linkname, "linkpath", t, &mut pax);
            }
            Kind::Link(first) => {
                set_name(
                    &mut h.as_old_mut().linkname,
                    "linkpath",
                    first.as_bytes(),
                    &mut pax,
                );
            }
            _ => {}
        }
        if !marker {
            for (key, value) in
                sys::list_xattrs(&path).map_err(|e| Error::path(&show, "listxattr", e))?
            {
                if let Some(key) = exported_xattr(&key) {
                    pax.push((format!("SCHILY.xattr.{key}"), value));
                }
            }
        }
        if !pax.is_empty() {
            self.tar
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(werr)?;
        }
        h.set_cksum();
        if matches!(kind, Kind::File) {
            let file = File::open(&path).map_err(|e| Error::path(&show, "open", e))?;
            self.tar.append(&h, file).map_err(werr)?;
        } else {
            self.tar.append(&h, io::empty()).map_err(werr)?;
        }
        self.summary.entries += 1;
        Ok(())
    }
}

/// The name an xattr is exported under: overlay-private ones are dropped,
/// escaped ones (`trusted.overlay.overlay.X`) lose one level of escaping.
fn exported_xattr(key: &str) -> Option<String> {
    for ns in [spec::TRUSTED_OVERLAY, spec::USER_OVERLAY] {
        if let Some(rest) = key.strip_prefix(ns) {
            return rest
                .strip_prefix(spec::ESCAPE_INFIX)
                .map(|inner| format!("{ns}{inner}"));
        }
    }
    Some(key.to_string())
}

/// Stores a name in a tar header field (`name`, `linkname`), or, when it is
/// longer than the field, its prefix there and the whole in a PAX record
/// (`path`, `linkpath`). Written raw: no validation, so tests can write
/// hostile names too.
pub fn set_name(field: &mut [u8], pax_key: &str, value: &[u8], pax: &mut Vec<(String, Vec<u8>)>) {
    field.fill(0);
    if value.len() <= field.len() {
        field[..value.len()].copy_from_slice(value);
    } else {
        let cut = field.len();
        field.copy_from_slice(&value[..cut]);
        pax.push((pax_key.to_string(), value.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_xattrs_are_dropped_and_escaped_ones_unescaped() {
        assert_eq!(exported_xattr("trusted.overlay.opaque"), None);
        assert_eq!(exported_xattr("user.overlay.origin"), None);
        assert_eq!(
            exported_xattr("trusted.overlay.overlay.opaque").as_deref(),
            Some("trusted.overlay.opaque")
        );
        assert_eq!(exported_xattr("user.a").as_deref(), Some("user.a"));
    }
}

/// One line of the `docker diff` view of an upper directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Change {
    /// `/`-rooted path.
    pub path: String,
    /// `A` added, `C` changed, `D` deleted.
    pub kind: char,
}

/// What `upper` adds, changes and deletes over `lowers` (bottom first).
/// A whiteout is a deletion when the lower layers hold the name; an opaque
/// directory deletes every lower child it does not hold itself.
pub fn changes(upper: &Path, lowers: &[PathBuf], opts: ExportOptions) -> Result<Vec<Change>> {
    let lower = LowerStack::new(lowers, opts.userxattr);
    let mut out = Vec::new();
    walk_changes(upper, &lower, &mut Vec::new(), opts, &mut out)?;
    out.sort();
    Ok(out)
}

fn walk_changes(
    upper: &Path,
    lower: &LowerStack,
    rel: &mut Vec<String>,
    opts: ExportOptions,
    out: &mut Vec<Change>,
) -> Result<()> {
    let here = upper.join(rel.join("/"));
    let mut names: Vec<String> = std::fs::read_dir(&here)
        .map_err(|e| Error::path(here.display(), "read directory", e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let show = |rel: &[String]| format!("/{}", rel.join("/"));
    let ns = if opts.userxattr {
        spec::USER_OVERLAY
    } else {
        spec::TRUSTED_OVERLAY
    };
    let opaque = !rel.is_empty()
        && sys::get_xattr(&here, &format!("{ns}{}", spec::OPAQUE_XATTR_SUFFIX))
            .ok()
            .flatten()
            .as_deref()
            == Some(spec::OPAQUE_YES);
    if opaque {
        for child in lower.children(rel) {
            if !names.contains(&child) {
                rel.push(child);
                out.push(Change {
                    path: show(rel),
                    kind: 'D',
                });
                rel.pop();
            }
        }
    }
    for name in names {
        rel.push(name);
        let path = upper.join(rel.join("/"));
        let below = lower.lookup(rel);
        if is_whiteout(&path, opts.userxattr) {
            if below != Found::Missing {
                out.push(Change {
                    path: show(rel),
                    kind: 'D',
                });
            }
        } else {
            let kind = if below == Found::Missing { 'A' } else { 'C' };
            out.push(Change {
                path: show(rel),
                kind,
            });
            if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                walk_changes(upper, lower, rel, opts, out)?;
            }
        }
        rel.pop();
    }
    Ok(())
}
