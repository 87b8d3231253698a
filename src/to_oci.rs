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
//! * an upper written with `redirect_dir` or `metacopy` keeps part of its
//!   content in the lower layers under other names. By default that content
//!   is materialised: a renamed directory (`mv d1 d2`) becomes `.wh.d1`
//!   (the kernel's own whiteout) plus the whole merged `d2` tree behind an
//!   opaque marker, and a metacopy file is written with the lower file's
//!   data. [`Redirects::Refuse`] refuses such an upper instead. A lower
//!   file written in full keeps its hardlink group: the other names of its
//!   inode that the merged view still shows from the lower layer are
//!   written as hardlinks to it, at the end of the layer.
//!
//! One walk serves both `export` (a tar stream) and `changes` (the
//! `docker diff` list), so the two always agree.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::lower::{is_whiteout, Found, LowerStack};
use crate::spec;
use crate::sys;

/// What to do with directories renamed under `redirect_dir=on` and files
/// copied up under `metacopy=on`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Redirects {
    /// Write their content, read from the lower layers, into the layer.
    #[default]
    Materialise,
    /// Refuse the upper with an error naming the entry.
    Refuse,
}

/// How to read the upper directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Overlay markers are `user.overlay.*` (`-o userxattr` mounts).
    pub userxattr: bool,
    pub redirects: Redirects,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExportSummary {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Renamed (`redirect_dir`) directories written in full.
    pub redirected_dirs: u64,
    /// `metacopy` files written with their lower data.
    pub metacopy_files: u64,
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
    let sink = TarSink {
        tar: tar::Builder::new(writer),
    };
    let mut walk = Walk::new(upper, lowers, opts, sink);
    walk.run()?;
    walk.sink
        .tar
        .finish()
        .map_err(|e| Error::path(upper.display(), "write tar", e))?;
    Ok(walk.summary)
}

/// One line of the `docker diff` view of an upper directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Change {
    /// `/`-rooted path.
    pub path: String,
    /// `A` added, `C` changed, `D` deleted.
    pub kind: char,
}

/// `KIND /path`, as `docker diff` prints it.
impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.path)
    }
}

/// What `upper` adds, changes and deletes over `lowers` (bottom first): the
/// entries `export` would write, each `A` or `C` by whether the lower
/// layers hold its path; a whiteout is a deletion when the lower layers hold
/// the name; an opaque directory deletes every lower child it does not hold
/// itself.
pub fn changes(upper: &Path, lowers: &[PathBuf], opts: ExportOptions) -> Result<Vec<Change>> {
    let sink = ChangeSink::default();
    let mut walk = Walk::new(upper, lowers, opts, sink);
    walk.run()?;
    Ok(walk.sink.finish(&walk.lower))
}

/// An entry of the exported layer.
enum Kind {
    Dir,
    /// A regular file; its data is read from this path (the upper file, or
    /// the lower one for a metacopy file).
    File(PathBuf),
    Symlink(PathBuf),
    /// A hardlink to the first exported name of the same inode.
    Link(String),
    Fifo,
    Char,
    Block,
    /// The path is the deleted name; written as `.wh.NAME`.
    Whiteout,
    /// The path is the directory; written as `DIR/.wh..wh..opq`.
    Opaque,
}

struct Item<'a> {
    /// The path in the layer, as components; empty for the root.
    rel: &'a [String],
    /// Where metadata and xattrs come from.
    src: &'a Path,
    meta: &'a Metadata,
    kind: Kind,
}

/// Where the walk's entries go.
trait Sink {
    fn emit(&mut self, item: &Item, lower: &LowerStack) -> Result<()>;
}

/// Walks an upper directory in export order and hands every entry of the
/// resulting layer to a sink.
struct Walk<S: Sink> {
    upper: PathBuf,
    lower: LowerStack,
    opts: ExportOptions,
    sink: S,
    /// (dev, ino) → first exported name, for hardlinks.
    links: HashMap<(u64, u64), String>,
    /// Per lower layer root, (dev, ino) → its names, for files with more
    /// than one link; built when first needed.
    lower_links: HashMap<PathBuf, LinkIndex>,
    /// Names in the lower layers to write as hardlinks to an exported name
    /// once the walk is done: (name, lower file, exported name).
    pending_links: BTreeMap<Vec<String>, (PathBuf, String)>,
    summary: ExportSummary,
}

impl<S: Sink> Walk<S> {
    fn new(upper: &Path, lowers: &[PathBuf], opts: ExportOptions, sink: S) -> Self {
        Walk {
            upper: upper.to_path_buf(),
            lower: LowerStack::new(lowers, opts.userxattr),
            opts,
            sink,
            links: HashMap::new(),
            lower_links: HashMap::new(),
            pending_links: BTreeMap::new(),
            summary: ExportSummary::default(),
        }
    }

    fn run(&mut self) -> Result<()> {
        let root = self.upper.clone();
        let meta = stat(&root)?;
        self.emit(&[], &root, &meta, Kind::Dir)?;
        self.upper_dir(&mut Vec::new(), &root, Some(Vec::new()))?;
        for (name, (file, first)) in std::mem::take(&mut self.pending_links) {
            let meta = stat(&file)?;
            self.emit(&name, &file, &meta, Kind::Link(first))?;
        }
        Ok(())
    }

    fn emit(&mut self, rel: &[String], src: &Path, meta: &Metadata, kind: Kind) -> Result<()> {
        match kind {
            Kind::Whiteout => self.summary.whiteouts += 1,
            Kind::Opaque => self.summary.opaque_dirs += 1,
            _ => {}
        }
        self.summary.entries += 1;
        let item = Item {
            rel,
            src,
            meta,
            kind,
        };
        self.sink.emit(&item, &self.lower)
    }

    /// An upper directory outside any renamed one: its whiteouts and opaque
    /// marker are written as such. `lower` is the path of the lower
    /// directory merged into it, `None` if none is.
    fn upper_dir(
        &mut self,
        rel: &mut Vec<String>,
        here: &Path,
        lower: Option<Vec<String>>,
    ) -> Result<()> {
        let opaque = self.lower.is_opaque(here);
        if opaque && !rel.is_empty() && matches!(self.lower.lookup(rel), Found::Dir(_)) {
            self.emit(rel, here, &stat(here)?, Kind::Opaque)?;
        }
        let lower = if opaque { None } else { lower };
        let (whiteouts, others): (Vec<String>, Vec<String>) = sorted_names(here)?
            .into_iter()
            .partition(|n| is_whiteout(&here.join(n), self.opts.userxattr));
        for name in whiteouts {
            let path = here.join(&name);
            rel.push(name);
            self.emit(rel, &path, &stat(&path)?, Kind::Whiteout)?;
            rel.pop();
        }
        for name in others {
            let path = here.join(&name);
            rel.push(name);
            self.upper_entry(rel, &path, lower.as_deref(), false)?;
            rel.pop();
        }
        Ok(())
    }

    /// A directory written in full (inside a renamed directory): the merged
    /// content of the upper directory `upper` and the lower directory at
    /// `lower`, with no whiteouts or markers of its own.
    fn merged_dir(
        &mut self,
        rel: &mut Vec<String>,
        upper: Option<&Path>,
        lower: Option<Vec<String>>,
    ) -> Result<()> {
        let mut hidden = BTreeSet::new();
        let mut children: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
        let mut lower = lower;
        if let Some(up) = upper {
            if self.lower.is_opaque(up) {
                lower = None;
            }
            for name in sorted_names(up)? {
                let path = up.join(&name);
                if is_whiteout(&path, self.opts.userxattr) {
                    hidden.insert(name);
                } else {
                    children.insert(name, Some(path));
                }
            }
        }
        if let Some(lp) = &lower {
            for name in self.lower.children(lp) {
                if !hidden.contains(&name) {
                    children.entry(name).or_insert(None);
                }
            }
        }
        for (name, up) in children {
            rel.push(name);
            match up {
                Some(path) => self.upper_entry(rel, &path, lower.as_deref(), true)?,
                None => {
                    let lp = joined(lower.as_deref(), rel.last().unwrap());
                    self.lower_entry(rel, lp.unwrap_or_default())?;
                }
            }
            rel.pop();
        }
        Ok(())
    }

    /// An entry of the upper directory. `parent_lower` is the path of the
    /// lower directory merged into its parent; `full`: inside a renamed
    /// directory, written in full.
    fn upper_entry(
        &mut self,
        rel: &mut Vec<String>,
        path: &Path,
        parent_lower: Option<&[String]>,
        full: bool,
    ) -> Result<()> {
        let meta = stat(path)?;
        let name = rel.last().cloned().unwrap_or_default();
        let redirect = self.lower.marker(path, spec::REDIRECT_XATTR_SUFFIX);
        if meta.is_dir() {
            self.emit(rel, path, &meta, Kind::Dir)?;
            let Some(target) = redirect else {
                let lower = joined(parent_lower, &name);
                return if full {
                    self.merged_dir(rel, Some(path), lower)
                } else {
                    self.upper_dir(rel, path, lower)
                };
            };
            self.refuse(path, "redirect_dir")?;
            let from = resolve_redirect(path, &target, parent_lower)?;
            if !full && matches!(self.lower.lookup(rel), Found::Dir(_)) {
                // What the lower layers hold under the new name is not part
                // of the renamed directory.
                self.emit(rel, path, &meta, Kind::Opaque)?;
            }
            self.summary.redirected_dirs += 1;
            return self.merged_dir(rel, Some(path), from);
        }
        if self
            .lower
            .marker(path, spec::METACOPY_XATTR_SUFFIX)
            .is_some()
            && meta.is_file()
        {
            self.refuse(path, "metacopy")?;
            let from = match redirect {
                Some(target) => resolve_redirect(path, &target, parent_lower)?,
                None => joined(parent_lower, &name),
            };
            let data = match from.map(|f| self.lower.lookup(&f)) {
                Some(Found::Other(p)) if stat(&p)?.is_file() => p,
                _ => {
                    return Err(Error::path(
                        path.display(),
                        "export",
                        io::Error::other(
                            "a metacopy file whose data is not in the lower layers \
                             (are these the lower layers it was mounted with?)",
                        ),
                    ))
                }
            };
            self.summary.metacopy_files += 1;
            return self.plain(rel, path, &meta, Some(data));
        }
        self.plain(rel, path, &meta, None)
    }

    /// An entry only the lower layers hold, inside a renamed directory.
    fn lower_entry(&mut self, rel: &mut Vec<String>, lower: Vec<String>) -> Result<()> {
        match self.lower.lookup(&lower) {
            Found::Missing => Ok(()),
            Found::Dir(stack) => {
                // A merged directory takes the attributes of its top layer.
                let top = stack[0].clone();
                self.emit(rel, &top, &stat(&top)?, Kind::Dir)?;
                self.merged_dir(rel, None, Some(lower))
            }
            Found::Other(path) => {
                let meta = stat(&path)?;
                let first = meta.nlink() > 1 && !self.links.contains_key(&(meta.dev(), meta.ino()));
                self.plain(rel, &path, &meta, None)?;
                if first {
                    self.keep_lower_links(rel, &path, &lower, &meta)?;
                }
                Ok(())
            }
        }
    }

    /// `path` (a lower file at `lower`, just written as `rel`) has other
    /// links: the names of its inode that the merged view still shows from
    /// the lower layer must stay in its group, so they are written as
    /// hardlinks to `rel`.
    fn keep_lower_links(
        &mut self,
        rel: &[String],
        path: &Path,
        lower: &[String],
        meta: &Metadata,
    ) -> Result<()> {
        let Some(root) = path.ancestors().nth(lower.len()).map(Path::to_path_buf) else {
            return Ok(());
        };
        if !self.lower_links.contains_key(&root) {
            let mut index = HashMap::new();
            index_links(&root, &mut Vec::new(), &mut index)?;
            self.lower_links.insert(root.clone(), index);
        }
        let names = self.lower_links[&root]
            .get(&(meta.dev(), meta.ino()))
            .cloned()
            .unwrap_or_default();
        for name in names {
            if name.as_slice() != lower
                && self.shown_from_lower(&name)
                && self.lower.lookup(&name) == Found::Other(root.join(name.join("/")))
            {
                self.pending_links
                    .insert(name.clone(), (root.join(name.join("/")), rel.join("/")));
            }
        }
        Ok(())
    }

    /// True if the upper leaves `name` to the lower layers: nothing in the
    /// upper at it, and no upper directory on the way that is opaque,
    /// renamed, or not a directory.
    fn shown_from_lower(&self, name: &[String]) -> bool {
        let mut here = self.upper.clone();
        for (i, c) in name.iter().enumerate() {
            let p = here.join(c);
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                return true;
            };
            if i + 1 == name.len()
                || !meta.is_dir()
                || self.lower.is_opaque(&p)
                || self.lower.marker(&p, spec::REDIRECT_XATTR_SUFFIX).is_some()
            {
                return false;
            }
            here = p;
        }
        true
    }

    /// A non-directory; `data` overrides where a regular file's data is read.
    fn plain(
        &mut self,
        rel: &[String],
        path: &Path,
        meta: &Metadata,
        data: Option<PathBuf>,
    ) -> Result<()> {
        let ft = meta.file_type();
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                let first = first.clone();
                return self.emit(rel, path, meta, Kind::Link(first));
            }
            self.links.insert((meta.dev(), meta.ino()), rel.join("/"));
        }
        let kind = if ft.is_file() {
            Kind::File(data.unwrap_or_else(|| path.to_path_buf()))
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(path).map_err(|e| Error::path(path.display(), "readlink", e))?;
            Kind::Symlink(target)
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else {
            return Ok(()); // sockets are not layer content
        };
        self.emit(rel, path, meta, kind)
    }

    fn refuse(&self, path: &Path, what: &str) -> Result<()> {
        if self.opts.redirects != Redirects::Refuse {
            return Ok(());
        }
        Err(Error::path(
            path.display(),
            "export",
            io::Error::other(format!(
                "written with {what}: its content lives in the lower layers under other \
                 names, and export was asked to refuse such an upper (materialising \
                 writes it in full)"
            )),
        ))
    }
}

/// The lower path of `name` in the lower directory `parent`.
fn joined(parent: Option<&[String]>, name: &str) -> Option<Vec<String>> {
    parent.map(|p| {
        let mut v = p.to_vec();
        v.push(name.to_string());
        v
    })
}

/// The lower path an `overlay.redirect` value names (overlayfs.rst,
/// "Redirect dir"): absolute from the root when it starts with `/`, else a
/// single name in the parent's lower directory (`None` if that has none).
/// `.`, `..` and empty names are refused: the lookup must stay inside the
/// lower layers.
fn resolve_redirect(
    path: &Path,
    value: &[u8],
    parent_lower: Option<&[String]>,
) -> Result<Option<Vec<String>>> {
    let text = String::from_utf8_lossy(value);
    let (absolute, rest) = match text.strip_prefix('/') {
        Some(rest) => (true, rest),
        None => (false, text.as_ref()),
    };
    let parts: Vec<String> = rest
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let bad = parts.iter().any(|c| c == "." || c == "..")
        || (!absolute && parts.len() != 1)
        || text.contains('\0');
    if bad {
        return Err(Error::path(
            path.display(),
            "export",
            io::Error::other(format!("an invalid overlay.redirect {text:?}")),
        ));
    }
    Ok(if absolute {
        Some(parts)
    } else {
        joined(parent_lower, &parts[0])
    })
}

/// (dev, ino) → the names of that inode in one layer.
type LinkIndex = HashMap<(u64, u64), Vec<Vec<String>>>;

/// Files with more than one link under `dir`, by (dev, ino).
fn index_links(dir: &Path, rel: &mut Vec<String>, index: &mut LinkIndex) -> Result<()> {
    for name in sorted_names(dir)? {
        let path = dir.join(&name);
        let meta = stat(&path)?;
        rel.push(name);
        if meta.is_dir() {
            index_links(&path, rel, index)?;
        } else if meta.nlink() > 1 {
            index
                .entry((meta.dev(), meta.ino()))
                .or_default()
                .push(rel.clone());
        }
        rel.pop();
    }
    Ok(())
}

fn stat(path: &Path) -> Result<Metadata> {
    std::fs::symlink_metadata(path).map_err(|e| Error::path(path.display(), "stat", e))
}

fn sorted_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::path(dir.display(), "read directory", e))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<_>>()
        .map_err(|e| Error::path(dir.display(), "read directory", e))?;
    names.sort();
    Ok(names)
}

/// Writes the entries as a tar stream.
struct TarSink<W: Write> {
    tar: tar::Builder<W>,
}

impl<W: Write> Sink for TarSink<W> {
    fn emit(&mut self, item: &Item, _: &LowerStack) -> Result<()> {
        let show = item.src.display().to_string();
        let werr = |e: io::Error| Error::path(&show, "write tar", e);
        let meta = item.meta;
        let mut h = tar::Header::new_ustar();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut name = item.rel.join("/");
        match &item.kind {
            Kind::Dir if item.rel.is_empty() => name = "./".into(),
            Kind::Dir => name.push('/'),
            Kind::Whiteout => {
                let (last, dir) = item.rel.split_last().expect("a whiteout has a name");
                let mut parts = dir.to_vec();
                parts.push(format!("{}{last}", spec::WHITEOUT_PREFIX));
                name = parts.join("/");
            }
            Kind::Opaque => {
                let mut parts = item.rel.to_vec();
                parts.push(spec::OPAQUE_MARKER.into());
                name = parts.join("/");
            }
            _ => {}
        }
        let (ty, mode) = match &item.kind {
            Kind::Dir => (tar::EntryType::Directory, meta.mode()),
            Kind::File(_) => (tar::EntryType::Regular, meta.mode()),
            Kind::Symlink(_) => (tar::EntryType::Symlink, 0o777),
            Kind::Link(_) => (tar::EntryType::Link, meta.mode()),
            Kind::Fifo => (tar::EntryType::Fifo, meta.mode()),
            Kind::Char => (tar::EntryType::Char, meta.mode()),
            Kind::Block => (tar::EntryType::Block, meta.mode()),
            Kind::Whiteout | Kind::Opaque => (tar::EntryType::Regular, 0o644),
        };
        h.set_entry_type(ty);
        h.set_mode(mode & 0o7777);
        let marker = matches!(item.kind, Kind::Whiteout | Kind::Opaque);
        h.set_uid(if marker { 0 } else { meta.uid() as u64 });
        h.set_gid(if marker { 0 } else { meta.gid() as u64 });
        h.set_mtime(if marker {
            0
        } else {
            meta.mtime().max(0) as u64
        });
        let data = match &item.kind {
            Kind::File(data) => {
                let file = File::open(data).map_err(|e| Error::path(data.display(), "open", e))?;
                let len = file
                    .metadata()
                    .map_err(|e| Error::path(data.display(), "stat", e))?
                    .len();
                h.set_size(len);
                Some(file)
            }
            _ => {
                h.set_size(0);
                None
            }
        };
        if matches!(item.kind, Kind::Char | Kind::Block) {
            let rdev = meta.rdev();
            h.set_device_major(rustix::fs::major(rdev)).map_err(werr)?;
            h.set_device_minor(rustix::fs::minor(rdev)).map_err(werr)?;
        }
        set_name(&mut h.as_old_mut().name, "path", name.as_bytes(), &mut pax);
        let link = match &item.kind {
            Kind::Symlink(target) => Some(target.as_os_str().as_encoded_bytes()),
            Kind::Link(first) => Some(first.as_bytes()),
            _ => None,
        };
        if let Some(link) = link {
            set_name(&mut h.as_old_mut().linkname, "linkpath", link, &mut pax);
        }
        if !marker {
            for (key, value) in
                sys::list_xattrs(item.src).map_err(|e| Error::path(&show, "listxattr", e))?
            {
                if let Some(key) = exported_xattr(&key) {
                    pax.push((format!("{}{key}", spec::PAX_XATTR_PREFIX), value));
                }
            }
        }
        if !pax.is_empty() {
            self.tar
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(werr)?;
        }
        h.set_cksum();
        match data {
            Some(file) => self.tar.append(&h, file).map_err(werr),
            None => self.tar.append(&h, io::empty()).map_err(werr),
        }
    }
}

/// Collects the `docker diff` view of the entries.
#[derive(Default)]
struct ChangeSink {
    out: BTreeSet<Change>,
    /// Directories with an opaque marker.
    opaque: Vec<Vec<String>>,
    /// Every path written, `/`-joined.
    present: HashSet<String>,
}

impl Sink for ChangeSink {
    fn emit(&mut self, item: &Item, lower: &LowerStack) -> Result<()> {
        let path = format!("/{}", item.rel.join("/"));
        match item.kind {
            Kind::Opaque => self.opaque.push(item.rel.to_vec()),
            Kind::Whiteout => {
                if lower.lookup(item.rel) != Found::Missing {
                    self.out.insert(Change { path, kind: 'D' });
                }
            }
            _ if item.rel.is_empty() => {}
            _ => {
                let kind = if lower.lookup(item.rel) == Found::Missing {
                    'A'
                } else {
                    'C'
                };
                self.present.insert(path.clone());
                self.out.insert(Change { path, kind });
            }
        }
        Ok(())
    }
}

impl ChangeSink {
    fn finish(mut self, lower: &LowerStack) -> Vec<Change> {
        for dir in &self.opaque {
            for child in lower.children(dir) {
                let mut rel = dir.clone();
                rel.push(child);
                let path = format!("/{}", rel.join("/"));
                if !self.present.contains(&path) {
                    self.out.insert(Change { path, kind: 'D' });
                }
            }
        }
        self.out.into_iter().collect()
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
