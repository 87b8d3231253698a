//! Writing one layer's difference from the tree as an overlay-native
//! directory: whiteouts, opaque directories, copied-up hardlink groups.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::mem_tree::{Content, MemTree, Node, NodeKind, ROOT};
use super::{internal, set_meta, ConvertOptions};
use crate::error::{Fault, IoOp, Result};
use crate::fast_hash::HashMap;
use crate::layer::{EntryKind, Meta};
use crate::spec;
use crate::sys;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Merge {
    /// The directory merges with a lower directory: unchanged children come
    /// from below, deleted ones need whiteouts.
    Merged,
    /// Only this layer's directory is seen: write everything, no whiteouts.
    Raw,
}

/// Writes one layer's difference as an overlay-native directory. It only
/// reads the tree, so names are borrowed from it, not cloned.
pub(super) struct Emitter<'a> {
    pub(super) tree: &'a MemTree,
    pub(super) layer: usize,
    pub(super) layer_dirs: &'a [PathBuf],
    pub(super) out: BorrowedFd<'a>,
    pub(super) opts: ConvertOptions,
    /// Linked inodes written in this layer by this emitter, at a `/`-joined
    /// path, for their other names (files placed while the layer was read
    /// are found by their content).
    pub(super) emitted_inodes: HashMap<u64, String>,
    /// Files moved into this layer: their new content, for later layers.
    pub(super) moved: Vec<(u64, Content)>,
    /// Whether this layer holds xattr whiteouts (its root is then marked).
    pub(super) wrote_xwhiteouts: bool,
    /// The path being written, for errors, and the whiteout name below it.
    pub(super) at: Vec<&'a str>,
    pub(super) at_name: Option<String>,
}

impl<'a> Emitter<'a> {
    pub(super) fn at_display(&self) -> String {
        let mut at = self.at.join("/");
        if let Some(name) = &self.at_name {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(name);
        }
        if at.is_empty() {
            at.push('.');
        }
        at
    }

    pub(super) fn emit(&mut self, name: &str) -> Result<(), Fault> {
        let root = self.tree.node(ROOT);
        // Made by MemTree::start_layer, and holding this layer's files.
        let fd =
            sys::open_entry(self.out, name, OFlags::RDONLY | OFlags::DIRECTORY).op("open layer")?;
        // The kernel ignores opaque on a layer root: always merge, whiteouts.
        self.emit_dir(fd.as_fd(), root, Merge::Merged)?;
        if self.wrote_xwhiteouts {
            mark_xwhiteouts_dir(fd.as_fd()).op("mark layer root for xattr whiteouts")?;
        }
        Ok(())
    }

    pub(super) fn emit_dir(
        &mut self,
        fd: BorrowedFd<'_>,
        dir: &'a Node,
        merge: Merge,
    ) -> Result<(), Fault> {
        set_meta(fd, &dir.meta, false).op("set directory metadata")?;
        let tree = self.tree;
        let NodeKind::Dir(children) = &dir.kind else {
            return Err(internal("not a directory"));
        };
        for (name, &ix) in children {
            let node = tree.node(ix);
            // Unchanged children of a merged directory come from below.
            if merge == Merge::Raw || node.dirty == self.layer + 1 {
                self.at.push(name);
                self.emit_node(fd, dir, name, node, merge)?;
                self.at.pop();
            }
        }
        if merge == Merge::Merged {
            let mut gone: Vec<&str> = tree
                .removed
                .get(&dir.id)
                .into_iter()
                .flatten()
                .map(|(name, _)| &**name)
                .filter(|name| !children.contains_key(*name))
                .collect();
            gone.sort_unstable();
            if self.opts.xwhiteouts && !gone.is_empty() {
                for name in &gone {
                    self.at_name = Some(name.to_string());
                    make_xwhiteout(fd, name).op("create xattr whiteout")?;
                }
                self.at_name = None;
                mark_xwhiteouts_dir(fd).op("mark directory for xattr whiteouts")?;
                self.wrote_xwhiteouts = true;
            } else {
                for name in gone {
                    self.at_name = Some(name.to_string());
                    sys::make_whiteout(fd, name).op("mknod whiteout (needs CAP_MKNOD)")?;
                }
                self.at_name = None;
            }
        }
        rfs::futimens(fd, &sys::times(dir.meta.mtime))
            .map_err(io::Error::from)
            .op("set directory mtime")
    }

    pub(super) fn emit_node(
        &mut self,
        dir: BorrowedFd<'_>,
        parent: &Node,
        name: &str,
        node: &'a Node,
        parent_merge: Merge,
    ) -> Result<(), Fault> {
        match &node.kind {
            NodeKind::Dir(_) => {
                let stamp = self.layer + 1;
                // A directory merges with the one below where that is the
                // same directory, not cleared in this layer. Opaque is needed
                // where a lower directory would otherwise merge.
                let (merge, opaque) = if parent_merge == Merge::Raw {
                    (Merge::Raw, false)
                } else if node.born < stamp {
                    if self.tree.opaqued.contains(&node.id) {
                        (Merge::Raw, true)
                    } else {
                        (Merge::Merged, false)
                    }
                } else {
                    let lower_dir = self
                        .tree
                        .removed
                        .get(&parent.id)
                        .is_some_and(|gone| gone.iter().any(|(n, d)| *d && &**n == name));
                    (Merge::Raw, lower_dir)
                };
                if node.made != stamp {
                    rfs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
                        .map_err(io::Error::from)
                        .op("mkdir")?;
                }
                let fd =
                    sys::open_entry(dir, name, OFlags::RDONLY | OFlags::DIRECTORY).op("open")?;
                if opaque {
                    sys::fset_xattr(fd.as_fd(), &self.opts.opaque_xattr(), spec::OPAQUE_YES)
                        .op("set opaque xattr")?;
                }
                self.emit_dir(fd.as_fd(), node, merge)
            }
            NodeKind::Leaf { kind, inode } => self.emit_leaf(dir, name, node, kind, *inode),
        }
    }

    pub(super) fn emit_leaf(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &str,
        node: &Node,
        kind: &EntryKind,
        inode: u64,
    ) -> Result<(), Fault> {
        let meta = &node.meta;
        let content = match kind {
            EntryKind::File => self.tree.content.get(&inode),
            _ => None,
        };
        if let Some(Content::Placed { node: id, .. }) = &content {
            if *id == node.id {
                // Written here while the layer was read, metadata included;
                // its other names link to it through `Placed` below.
                return Ok(());
            }
        }
        if let Some(first) = self.emitted_inodes.get(&inode) {
            return self.link_in_layer(first, dir, name);
        }
        match kind {
            EntryKind::File => match content {
                // Another name of a file placed in this layer.
                Some(Content::Placed { path, .. }) => self.link_in_layer(path, dir, name)?,
                Some(Content::Staged(blob)) => {
                    rfs::renameat(&self.tree.staging, blob.as_str(), dir, name)
                        .map_err(io::Error::from)
                        .op("place file")?;
                    self.moved
                        .push((inode, Content::InLayer(self.layer, self.at.join("/"))));
                }
                Some(Content::InLayer(layer, from)) => {
                    self.copy_from_layer(*layer, from, dir, name, meta)?;
                    self.moved
                        .push((inode, Content::InLayer(self.layer, self.at.join("/"))));
                }
                None => return Err(internal("a file without content")),
            },
            other => {
                match other {
                    EntryKind::Symlink(target) => rfs::symlinkat(target.as_str(), dir, name),
                    EntryKind::Fifo => rfs::mknodat(
                        dir,
                        name,
                        rfs::FileType::Fifo,
                        Mode::from_raw_mode(0o600),
                        0,
                    ),
                    EntryKind::Char(ma, mi) => rfs::mknodat(
                        dir,
                        name,
                        rfs::FileType::CharacterDevice,
                        Mode::from_raw_mode(0o600),
                        rfs::makedev(*ma, *mi),
                    ),
                    EntryKind::Block(ma, mi) => rfs::mknodat(
                        dir,
                        name,
                        rfs::FileType::BlockDevice,
                        Mode::from_raw_mode(0o600),
                        rfs::makedev(*ma, *mi),
                    ),
                    k => unreachable!("not a leaf: {k:?}"),
                }
                .map_err(io::Error::from)
                .op("mknod (needs CAP_MKNOD)")?;
                rfs::chownat(
                    dir,
                    name,
                    Some(rfs::Uid::from_raw(meta.uid)),
                    Some(rfs::Gid::from_raw(meta.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io::Error::from)
                .op("chown")?;
                if !matches!(other, EntryKind::Symlink(_)) {
                    rfs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                        .map_err(io::Error::from)
                        .op("chmod")?;
                }
                for (key, value) in &meta.xattrs {
                    sys::set_xattr_at(dir, name, key, value).op("set xattr")?;
                }
                sys::set_mtime_at(dir, name, meta.mtime).op("set mtime")?;
            }
        }
        if self.tree.names.contains_key(&inode) {
            self.emitted_inodes.insert(inode, self.at.join("/"));
        }
        Ok(())
    }

    /// Links `from` (`/`-joined) of this layer's directory, already written,
    /// as `name` in `dir`.
    pub(super) fn link_in_layer(
        &self,
        from: &str,
        dir: BorrowedFd<'_>,
        name: &str,
    ) -> Result<(), Fault> {
        let layer_fd = self.layer_root()?;
        let (fparent, fname) = from.rsplit_once('/').unwrap_or(("", from));
        let fdir = sys::open_dir_path(layer_fd.as_fd(), fparent).op("open")?;
        rfs::linkat(&fdir, fname, dir, name, AtFlags::empty())
            .map_err(io::Error::from)
            .op("link")
    }

    pub(super) fn layer_root(&self) -> Result<OwnedFd, Fault> {
        sys::open_entry(
            self.out,
            &self.layer.to_string(),
            OFlags::PATH | OFlags::DIRECTORY,
        )
        .op("open layer")
    }

    pub(super) fn copy_from_layer(
        &self,
        layer: usize,
        from: &str,
        dir: BorrowedFd<'_>,
        name: &str,
        meta: &Meta,
    ) -> Result<(), Fault> {
        let layer_name = self.layer_dirs[layer]
            .file_name()
            .expect("layer dir name")
            .to_string_lossy()
            .into_owned();
        let root = sys::open_entry(self.out, &layer_name, OFlags::PATH | OFlags::DIRECTORY)
            .op("open lower layer")?;
        let src = sys::open_beneath(root.as_fd(), from, OFlags::RDONLY)
            .op("open hardlink target in lower layer")?;
        let dst = rfs::openat(
            dir,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io::Error::from)
        .op("create copy")?;
        let mut dst = File::from(dst);
        io::copy(&mut File::from(src), &mut dst).op("copy hardlink target")?;
        set_meta(dst.as_fd(), meta, true).op("set file metadata")
    }
}

/// Both namespaces, so the layer works with and without `-o userxattr`.
pub(super) const MARKER_NAMESPACES: [&str; 2] = [spec::TRUSTED_OVERLAY, spec::USER_OVERLAY];

/// overlayfs.rst (6.7+): an xattr whiteout is an empty regular file with
/// `overlay.whiteout`.
pub(super) fn make_xwhiteout(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    for ns in MARKER_NAMESPACES {
        sys::fset_xattr(
            fd.as_fd(),
            &format!("{ns}{}", spec::WHITEOUT_XATTR_SUFFIX),
            b"",
        )?;
    }
    Ok(())
}

/// overlayfs.rst (6.7+): a directory holding xattr whiteouts, and the layer
/// root, carry `overlay.opaque="x"` (not opaque: "may hold xattr whiteouts").
pub(super) fn mark_xwhiteouts_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    for ns in MARKER_NAMESPACES {
        let key = format!("{ns}{}", spec::OPAQUE_XATTR_SUFFIX);
        sys::fset_xattr(dir, &key, spec::OPAQUE_XWHITEOUTS)?;
    }
    Ok(())
}
