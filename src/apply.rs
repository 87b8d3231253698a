//! Userspace application: layers applied in order onto one root directory,
//! the flattened rootfs (OCI layer.md, "Applying Changesets").
//!
//! Every write goes through a directory fd opened with `openat2` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, then a single-component `*at`
//! call with `O_NOFOLLOW` / `AT_SYMLINK_NOFOLLOW`: symlinks planted by a layer
//! are resolved by the rules (inside the root), never by the kernel.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use crate::error::{Error, Fault, IoOp, Result};
use crate::fast_hash::{HashMap, HashMapExt};
use crate::layer::{EntryBody, EntryKind, LayerInput, Meta, Ready, StackReader};
use crate::limits::{ReadOptions, Summary};
use crate::output::Staged;
use crate::rules::{self, Kind, LayerRules, Target};
use crate::sys;

/// Applies `layers` (bottom first) to a new directory `out`, which must not
/// exist, with default limits. See [`apply_to_new_dir_with`].
pub fn apply_to_new_dir<R: LayerInput>(layers: Vec<R>, out: &Path) -> Result<()> {
    apply_to_new_dir_with(layers, out, &ReadOptions::default()).map(|_| ())
}

/// Applies `layers` (bottom first) to a new directory `out`, which must not
/// exist. The rootfs is built in a temporary sibling and renamed into place,
/// so on failure (or cancellation) nothing is left behind.
pub fn apply_to_new_dir_with<R: LayerInput>(
    layers: Vec<R>,
    out: &Path,
    opts: &ReadOptions,
) -> Result<Summary> {
    let staged = Staged::new(out)?;
    let summary = apply_into(layers, staged.path(), opts)?;
    staged.commit()?;
    Ok(summary)
}

/// Applies `layers` (bottom first) onto the existing directory `root`.
pub fn apply_into<R: LayerInput>(
    layers: Vec<R>,
    root: &Path,
    opts: &ReadOptions,
) -> Result<Summary> {
    let root_fd = rfs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::path(root.display(), "open root", e.into()))?;
    // Before the inflating threads start: see `sys::reserve_fd_table`.
    sys::reserve_fd_table();
    let mut disk = Disk::new(root_fd);
    let mut stack = StackReader::new(*opts);
    let mut layers = layers;
    stack.read_stack(&mut layers, |stack, index, layer| {
        apply_layer(&mut disk, stack, index, layer)
    })?;
    Ok(stack.summary())
}

fn apply_layer<R: LayerInput>(
    disk: &mut Disk,
    stack: &mut StackReader,
    index: usize,
    layer: Ready<'_, R>,
) -> Result<()> {
    let mut rules = LayerRules::new(disk);
    stack.read_ready(index, layer, |entry, data| {
        rules
            .entry(entry, data)
            .map_err(|f| f.at(index, &entry.name))
    })?;
    drop(rules);
    disk.finish_layer()
        .map_err(|f| f.at(index, "<directory mtimes>"))
}

/// Directory fds kept at most. Small on purpose: growing the fd table past
/// 256 (or 512) waits for an RCU grace period, about 12 ms each time, once a
/// process has a second thread (the Ctrl-C handler, the inflater).
const DIR_CACHE: usize = 128;

/// The rootfs on disk.
struct Disk {
    root: OwnedFd,
    /// Directories resolved so far (symlink-free paths, opened with
    /// `RESOLVE_NO_SYMLINKS`), so runs of entries cost one `*at` call each.
    /// A removal forgets those at or below the removed path, the only way a
    /// resolved path can change.
    dirs: HashMap<Vec<String>, CachedDir>,
    /// Whether new entries in the root get the process's ids.
    root_ours: bool,
    /// Directory mtimes to set once the layer's children are written; the
    /// last entry for a directory wins, and removal forgets them.
    dir_mtimes: BTreeMap<Vec<String>, i64>,
    euid: u32,
    egid: u32,
}

/// A cached directory.
struct CachedDir {
    fd: OwnedFd,
    /// New entries in it get exactly the process's uid and gid: its group
    /// is the process's (a new entry gets fsuid and fsgid, or the
    /// directory's group where it is setgid or the filesystem is mounted
    /// `grpid`). An entry the layer gives those ids then needs no chown.
    ours: bool,
}

impl Disk {
    fn new(root: OwnedFd) -> Self {
        let egid = rustix::process::getegid().as_raw();
        Disk {
            root_ours: gives_ids(root.as_fd(), egid),
            root,
            dirs: HashMap::new(),
            dir_mtimes: BTreeMap::new(),
            euid: rustix::process::geteuid().as_raw(),
            egid,
        }
    }

    /// A directory fd for `dir` (already resolved, symlink-free), and
    /// whether new entries in it get the process's ids.
    fn dir(&mut self, dir: &[String]) -> io::Result<(BorrowedFd<'_>, bool)> {
        if dir.is_empty() {
            return Ok((self.root.as_fd(), self.root_ours));
        }
        if !self.dirs.contains_key(dir) {
            let fd = sys::open_dir_path(self.root.as_fd(), &dir.join("/"))?;
            let ours = gives_ids(fd.as_fd(), self.egid);
            self.remember(dir, fd, ours);
        }
        let cached = &self.dirs[dir];
        Ok((cached.fd.as_fd(), cached.ours))
    }

    /// Caches `fd` as the directory `dir` (symlink-free: opened below a
    /// cached directory with `O_NOFOLLOW`, or with `RESOLVE_NO_SYMLINKS`).
    fn remember(&mut self, dir: &[String], fd: OwnedFd, ours: bool) {
        if self.dirs.len() >= DIR_CACHE {
            self.dirs.clear();
        }
        self.dirs.insert(dir.to_vec(), CachedDir { fd, ours });
    }

    fn split<'p>(&mut self, path: &'p [String]) -> io::Result<(BorrowedFd<'_>, &'p str)> {
        let (parent, name, _) = self.split_ours(path)?;
        Ok((parent, name))
    }

    /// `split`, and whether new entries in the parent get the process's ids.
    fn split_ours<'p>(
        &mut self,
        path: &'p [String],
    ) -> io::Result<(BorrowedFd<'_>, &'p str, bool)> {
        let (name, parent) = path.split_last().expect("below the root");
        let (dir, ours) = self.dir(parent)?;
        Ok((dir, name.as_str(), ours))
    }

    /// Whether a directory given `meta` (owner and mode set as given) gives
    /// new entries the process's ids.
    fn meta_gives_ids(&self, meta: &Meta) -> bool {
        meta.gid == self.egid
    }

    /// Whether a new entry made in a directory (`parent_ours`, see
    /// `CachedDir`) needs a chown to get `meta`'s owner.
    fn needs_chown(&self, parent_ours: bool, meta: &Meta) -> bool {
        needs_chown(parent_ours, meta, (self.euid, self.egid))
    }

    fn finish_layer(&mut self) -> Result<(), Fault> {
        let dirs = std::mem::take(&mut self.dir_mtimes);
        for (path, mtime) in dirs {
            let result = if path.is_empty() {
                sys::open_beneath(self.root.as_fd(), "", OFlags::RDONLY | OFlags::DIRECTORY)
                    .and_then(|fd| rfs::futimens(&fd, &sys::times(mtime)).map_err(io::Error::from))
            } else {
                match self.split(&path) {
                    Ok((dir, name)) => sys::set_mtime_at(dir, name, mtime),
                    Err(e) => Err(e),
                }
            };
            result.op("set directory mtime")?;
        }
        Ok(())
    }
}

/// Whether a new entry in a directory whose new entries get the process's
/// `ids` exactly or not (`parent_ours`) needs a chown to get `meta`'s owner.
fn needs_chown(parent_ours: bool, meta: &Meta, ids: (u32, u32)) -> bool {
    !parent_ours || (meta.uid, meta.gid) != ids
}

/// Whether new entries in the directory `fd` get exactly the process's
/// uid and gid (see `CachedDir::ours`); false where it cannot be told.
fn gives_ids(fd: BorrowedFd<'_>, egid: u32) -> bool {
    rfs::fstat(fd).is_ok_and(|st| st.st_gid == egid)
}

/// Owner (where `chown`), mode, xattrs and mtime of an open file or
/// directory. A new node already owned as the layer says needs no chown, so
/// layers owned by an unprivileged caller apply.
fn set_meta_fd(fd: BorrowedFd<'_>, meta: &Meta, with_mtime: bool, chown: bool) -> io::Result<()> {
    {
        if chown {
            rfs::fchown(
                fd,
                Some(rfs::Uid::from_raw(meta.uid)),
                Some(rfs::Gid::from_raw(meta.gid)),
            )?;
        }
        rfs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
        for (key, value) in &meta.xattrs {
            sys::fset_xattr(fd, key, value)?;
        }
        if with_mtime {
            rfs::futimens(fd, &sys::times(meta.mtime))?;
        }
        Ok(())
    }
}

fn kind_of(stat: &rfs::Stat) -> Kind {
    match rfs::FileType::from_raw_mode(stat.st_mode) {
        rfs::FileType::Directory => Kind::Dir,
        rfs::FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// Removes the entry `name` of `dir`, recursively, using fds only. Most
/// removed entries are not directories: unlink first, and only where Linux
/// says EISDIR open and empty the directory (no stat per entry).
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Err(rustix::io::Errno::ISDIR) => remove_dir_at(dir, name),
        other => other.map_err(io::Error::from),
    }
}

/// Empties and removes the directory `name` of `dir`. A child's type comes
/// with its name from `getdents`, so a non-directory costs one `unlinkat`
/// and a directory no failed one.
fn remove_dir_at<P: rustix::path::Arg + Copy>(dir: BorrowedFd<'_>, name: P) -> io::Result<()> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut listing = rfs::Dir::new(fd)?;
    // Listed before anything goes: a directory changed while read may
    // skip or repeat names.
    let mut children = Vec::new();
    for item in &mut listing {
        let item = item?;
        let name = item.file_name();
        if !matches!(name.to_bytes(), b"." | b"..") {
            children.push((name.to_owned(), item.file_type()));
        }
    }
    let here = listing.fd()?;
    for (child, kind) in &children {
        remove_child(here, child.as_c_str(), *kind)?;
    }
    drop(listing);
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// Removes `name` of `dir`, of the type `getdents` gave.
fn remove_child(dir: BorrowedFd<'_>, name: &std::ffi::CStr, kind: rfs::FileType) -> io::Result<()> {
    match kind {
        rfs::FileType::Directory => remove_dir_at(dir, name),
        rfs::FileType::Unknown => match rfs::unlinkat(dir, name, AtFlags::empty()) {
            Err(rustix::io::Errno::ISDIR) => remove_dir_at(dir, name),
            other => Ok(other?),
        },
        _ => Ok(rfs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

impl Target for Disk {
    fn known_dir(&mut self, path: &[String]) -> bool {
        path.is_empty() || self.dirs.contains_key(path)
    }

    fn kind(&mut self, path: &[String]) -> Result<Option<Kind>, Fault> {
        if self.known_dir(path) {
            return Ok(Some(Kind::Dir));
        }
        let (dir, name) = match self.split(path) {
            Ok(v) => v,
            // Missing, or only reachable through a symlink: the rules walk.
            Err(_) => return Ok(None),
        };
        match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(kind_of(&stat))),
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => Ok(None),
            Err(e) => Err(io::Error::from(e)).op("stat"),
        }
    }

    fn readlink(&mut self, path: &[String]) -> Result<String, Fault> {
        let (dir, name) = self.split(path).op("open parent")?;
        let target = rfs::readlinkat(dir, name, Vec::new())
            .map_err(io::Error::from)
            .op("readlink")?;
        Ok(String::from_utf8_lossy(target.as_bytes()).into_owned())
    }

    /// A name that is not UTF-8 (which `apply_into` can meet in a tree a
    /// layer did not write) is lower content by definition, as no entry can
    /// name it: it is removed here, where its bytes are at hand.
    fn children(&mut self, path: &[String]) -> Result<Vec<String>, Fault> {
        let fd = sys::open_beneath(
            self.root.as_fd(),
            &path.join("/"),
            OFlags::RDONLY | OFlags::DIRECTORY,
        )
        .op("open directory")?;
        let mut listing = rfs::Dir::new(fd)
            .map_err(io::Error::from)
            .op("read directory")?;
        let mut names = Vec::new();
        let mut foreign = Vec::new();
        for item in &mut listing {
            let item = item.map_err(io::Error::from).op("read directory")?;
            let name = item.file_name();
            match std::str::from_utf8(name.to_bytes()) {
                Ok("." | "..") => {}
                Ok(text) => names.push(text.to_string()),
                Err(_) => foreign.push((name.to_owned(), item.file_type())),
            }
        }
        if !foreign.is_empty() {
            let here = listing.fd().map_err(io::Error::from).op("read directory")?;
            for (name, kind) in &foreign {
                remove_child(here, name.as_c_str(), *kind).op("remove")?;
            }
            // No cached fd or mtime lies below them: their paths have no
            // String form.
        }
        Ok(names)
    }

    fn remove_all(&mut self, path: &[String]) -> Result<(), Fault> {
        let result = {
            let (dir, name) = self.split(path).op("open parent")?;
            remove_at(dir, name)
        };
        // Only what was at or below `path` changed; other cached fds still
        // name the directories at their paths.
        self.dirs.retain(|dir, _| !dir.starts_with(path));
        self.dir_mtimes.retain(|dir, _| !dir.starts_with(path));
        result.op("remove")
    }

    fn make_dir(&mut self, path: &[String], meta: &Meta) -> Result<bool, Fault> {
        let (dir, name, parent_ours) = self.split_ours(path).op("open parent")?;
        match rfs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => return Ok(false),
            Err(e) => return Err(io::Error::from(e)).op("mkdir"),
        }
        let fd = sys::open_entry(dir, name, OFlags::RDONLY | OFlags::DIRECTORY).op("open dir")?;
        let chown = self.needs_chown(parent_ours, meta);
        set_meta_fd(fd.as_fd(), meta, false, chown).op("set directory metadata")?;
        self.dir_mtimes.insert(path.to_vec(), meta.mtime);
        // Its entries come next: keep the fd instead of opening it again.
        let ours = self.meta_gives_ids(meta);
        self.remember(path, fd, ours);
        Ok(true)
    }

    fn make_implied_dir(&mut self, path: &[String]) -> Result<(), Fault> {
        let meta = rules::implied_dir_meta();
        let (dir, name, parent_ours) = self.split_ours(path).op("open parent")?;
        rfs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
            .map_err(io::Error::from)
            .op("mkdir")?;
        // Owner and mode explicitly: under a setgid parent, mkdir inherits
        // the parent's group and setgid bit (found by fuzzing).
        let fd = sys::open_entry(dir, name, OFlags::RDONLY | OFlags::DIRECTORY).op("open")?;
        let chown = self.needs_chown(parent_ours, &meta);
        set_meta_fd(fd.as_fd(), &meta, false, chown).op("set implied directory owner and mode")?;
        let ours = self.meta_gives_ids(&meta);
        self.remember(path, fd, ours);
        Ok(())
    }

    fn replace_dir_meta(&mut self, path: &[String], meta: &Meta) -> Result<(), Fault> {
        let fd = sys::open_beneath(
            self.root.as_fd(),
            &path.join("/"),
            OFlags::RDONLY | OFlags::DIRECTORY,
        )
        .op("open directory")?;
        sys::fclear_xattrs(fd.as_fd()).op("remove old xattrs")?;
        // An existing directory may have any owner: unprivileged, a chown
        // to the caller's own ids is left out (it changes nothing there).
        let chown = self.euid == 0 || (meta.uid, meta.gid) != (self.euid, self.egid);
        set_meta_fd(fd.as_fd(), meta, false, chown).op("set directory metadata")?;
        self.dir_mtimes.insert(path.to_vec(), meta.mtime);
        let ours = self.meta_gives_ids(meta);
        if path.is_empty() {
            self.root_ours = ours;
        } else if let Some(cached) = self.dirs.get_mut(path) {
            cached.ours = ours;
        }
        Ok(())
    }

    fn make_node(
        &mut self,
        path: &[String],
        kind: &EntryKind,
        meta: &Meta,
        data: &mut dyn EntryBody,
    ) -> Result<bool, Fault> {
        self.make_node_with(path, kind, meta, data)
    }

    fn hard_link(&mut self, target: &[String], path: &[String]) -> Result<(), Fault> {
        self.link(target, path)
    }
}

impl Disk {
    fn make_node_with(
        &mut self,
        path: &[String],
        kind: &EntryKind,
        meta: &Meta,
        data: &mut dyn EntryBody,
    ) -> Result<bool, Fault> {
        let ids = (self.euid, self.egid);
        let (dir, name, parent_ours) = self.split_ours(path).op("open parent")?;
        let chown = needs_chown(parent_ours, meta, ids);
        if *kind == EntryKind::File {
            let fd = match rfs::openat(
                dir,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::EXIST) => return Ok(false),
                Err(e) => return Err(io::Error::from(e)).op("create file"),
            };
            let mut file = File::from(fd);
            data.write_to(&mut file).op("write file")?;
            set_meta_fd(file.as_fd(), meta, true, chown).op("set file metadata")?;
            return Ok(true);
        }
        let created = match kind {
            EntryKind::Symlink(target) => rfs::symlinkat(target.as_str(), dir, name),
            EntryKind::Fifo => rfs::mknodat(
                dir,
                name,
                rfs::FileType::Fifo,
                Mode::from_raw_mode(0o600),
                0,
            ),
            EntryKind::Char(major, minor) | EntryKind::Block(major, minor) => {
                let file_type = if matches!(kind, EntryKind::Char(..)) {
                    rfs::FileType::CharacterDevice
                } else {
                    rfs::FileType::BlockDevice
                };
                rfs::mknodat(
                    dir,
                    name,
                    file_type,
                    Mode::from_raw_mode(0o600),
                    rfs::makedev(*major, *minor),
                )
            }
            other => unreachable!("not a node kind: {other:?}"),
        };
        match created {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => return Ok(false),
            Err(e) => return Err(io::Error::from(e)).op("create node"),
        }
        if chown {
            rfs::chownat(
                dir,
                name,
                Some(rfs::Uid::from_raw(meta.uid)),
                Some(rfs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io::Error::from)
            .op("chown")?;
        }
        if !matches!(kind, EntryKind::Symlink(_)) {
            rfs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(io::Error::from)
                .op("chmod")?;
        }
        for (key, value) in &meta.xattrs {
            sys::set_xattr_at(dir, name, key, value).op("set xattr")?;
        }
        sys::set_mtime_at(dir, name, meta.mtime).op("set mtime")?;
        Ok(true)
    }

    fn link(&mut self, target: &[String], path: &[String]) -> Result<(), Fault> {
        let (tname, tparent) = target.split_last().expect("below the root");
        let tdir = if tparent.is_empty() {
            self.root.try_clone().op("dup")?
        } else {
            sys::open_dir_path(self.root.as_fd(), &tparent.join("/")).op("open link target")?
        };
        let (dir, name) = self.split(path).op("open parent")?;
        rfs::linkat(&tdir, tname.as_str(), dir, name, AtFlags::empty())
            .map_err(io::Error::from)
            .op("link")
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    #[test]
    fn remove_at_removes_a_tree_without_following_its_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let root = tmp.path().join("root");
        let d = root.join("d");
        std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
        std::fs::write(d.join("sub/deeper/f"), "x").unwrap();
        std::fs::write(d.join("f"), "x").unwrap();
        // A name that is not UTF-8 is removed by its bytes.
        std::fs::write(d.join(OsStr::from_bytes(b"caf\xe9")), "x").unwrap();
        std::os::unix::fs::symlink(&outside, d.join("to-outside")).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("sub/to-outside")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let root_fd = rfs::open(&root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        remove_at(root_fd.as_fd(), "d").unwrap();
        assert!(!d.exists(), "tree left");
        assert!(outside.join("keep").exists(), "followed a symlink");
        // A non-directory goes with one call, and a missing name is an error.
        std::fs::write(root.join("file"), "x").unwrap();
        remove_at(root_fd.as_fd(), "file").unwrap();
        assert!(!root.join("file").exists());
        assert!(remove_at(root_fd.as_fd(), "file").is_err());
    }

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in entries {
            let mut h = tar::Header::new_gnu();
            if let Some(dir) = path.strip_suffix('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, dir, &[][..]).unwrap();
            } else {
                h.set_mode(0o644);
                h.set_size(body.len() as u64);
                b.append_data(&mut h, path, *body).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    /// A tree `apply_into` writes over may hold names no layer can carry
    /// (not UTF-8): they are lower content, and markers remove them.
    #[test]
    fn markers_remove_names_that_are_not_utf8() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for dir in ["opq", "wh/gone"] {
            let dir = root.join(dir);
            std::fs::create_dir_all(dir.join(OsStr::from_bytes(b"d\xe9j\xe0"))).unwrap();
            std::fs::write(dir.join(OsStr::from_bytes(b"caf\xe9")), "x").unwrap();
            std::fs::write(dir.join(OsStr::from_bytes(b"d\xe9j\xe0/f")), "x").unwrap();
            std::fs::write(dir.join("old"), "x").unwrap();
        }
        let top = layer(&[
            ("opq/", b""),
            ("opq/.wh..wh..opq", b""),
            ("opq/new", b"n"),
            // `wh/gone` is written by this layer and whited out: its lower
            // content goes, what the layer put there stays.
            ("wh/gone/mine", b"m"),
            ("wh/.wh.gone", b""),
        ]);
        apply_into(vec![&top[..]], root, &ReadOptions::default()).unwrap();
        let names = |dir: &str| {
            let mut v: Vec<_> = std::fs::read_dir(root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names("opq"), ["new"]);
        assert_eq!(names("wh/gone"), ["mine"]);
    }
}
