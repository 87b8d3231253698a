//! Conversion of a stack of OCI layers into overlay-native layer directories
//! (`DIR/0` bottom … `DIR/N-1` top), so that a read-only overlay mount with
//! `lowerdir=N-1:…:0` shows exactly what `apply` produces.
//!
//! The converter runs the same rules as `apply` against an in-memory tree of
//! the merged view, then writes the difference each layer made, in the
//! kernel's terms (overlayfs.rst):
//! * a deleted lower name becomes a whiteout, a char device 0/0, but only in a
//!   directory that merges with a lower directory: a directory that exists in
//!   one layer only is listed raw, and a whiteout in it would show up;
//! * a directory deleted and re-created in one layer, or hit by an opaque
//!   marker, gets `overlay.opaque=y` and its whole content;
//! * the kernel ignores `opaque` on a layer's root, so a root opaque marker is
//!   expressed as whiteouts of each hidden top-level name;
//! * every directory the layer needs but did not change (an implied parent)
//!   copies its attributes from the merged lower view, since the topmost
//!   layer holding a directory gives the merged directory its attributes;
//! * a hardlink to a file of a lower layer copies the file up: layer
//!   directories cannot share an inode, so the linking layer holds one copy
//!   (content, mode, owner, xattrs, mtime) and every name the merged view
//!   gives that inode, lower names included, as links to it; the merged view
//!   then has the same hardlink groups as the flat rootfs;
//! * overlay-private xattrs from a layer are stored escaped (`spec`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};

use crate::error::{Error, Fault, Result};
use crate::fast_hash::{HashMap, HashMapExt};
use crate::layer::{LayerInput, Meta, StackReader};
use crate::limits::{ReadOptions, Summary};
use crate::output::Staged;
use crate::rules::LayerRules;
use crate::spec;
use crate::sys;

/// How the overlay layers are marked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvertOptions {
    /// Write `user.overlay.*` markers (for `-o userxattr` mounts) instead of
    /// `trusted.overlay.*`.
    pub userxattr: bool,
    /// Limits and strict mode.
    pub read: ReadOptions,
    /// Write whiteouts as xattr whiteouts (Linux 6.7+): an empty regular
    /// file with `overlay.whiteout`, its directory and the layer root marked
    /// `overlay.opaque="x"`, in both the `trusted.` and `user.` namespaces
    /// so the layer works with and without `-o userxattr`. They need no
    /// CAP_MKNOD, and nest (an outer overlay sees them as plain files).
    pub xwhiteouts: bool,
}

impl ConvertOptions {
    fn opaque_xattr(&self) -> String {
        spec::overlay_xattr(self.userxattr, spec::OPAQUE_XATTR_SUFFIX)
    }
}

/// The result of a conversion: one directory per layer, bottom first.
#[derive(Debug, Clone)]
pub struct Converted {
    pub layers: Vec<PathBuf>,
    pub summary: Summary,
}

impl Converted {
    /// The `lowerdir=` value with the layer paths as given.
    pub fn lowerdir(&self) -> String {
        let names: Vec<String> = self
            .layers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        names.join(":")
    }
}

/// Converts `layers` (bottom first) into a new directory `out` (which must
/// not exist), built in a temporary sibling and renamed on success.
pub fn convert_to_new_dir<R: LayerInput>(
    layers: Vec<R>,
    out: &Path,
    opts: ConvertOptions,
) -> Result<Converted> {
    let staged = Staged::new(out)?;
    let done = convert_into(layers, staged.path(), opts)?;
    staged.commit()?;
    Ok(Converted {
        layers: (0..done.layers.len())
            .map(|i| out.join(i.to_string()))
            .collect(),
        summary: done.summary,
    })
}

/// Converts `layers` (bottom first) into `out/0` … `out/N-1`; `out` exists
/// and holds none of those names.
pub fn convert_into<R: LayerInput>(
    layers: Vec<R>,
    out: &Path,
    opts: ConvertOptions,
) -> Result<Converted> {
    let staging = out.join(".overlayer-staging");
    std::fs::create_dir(&staging).map_err(|e| Error::path(staging.display(), "mkdir", e))?;
    let result = convert_layers(layers, out, &staging, opts);
    // Empty unless a run failed: rmdir spares the directory walk.
    if std::fs::remove_dir(&staging).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

fn convert_layers<R: LayerInput>(
    layers: Vec<R>,
    out: &Path,
    staging: &Path,
    opts: ConvertOptions,
) -> Result<Converted> {
    // Before the inflating threads start: see `sys::reserve_fd_table`.
    sys::reserve_fd_table();
    let out_fd = rfs::open(
        out,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::path(out.display(), "open", e.into()))?;
    let staging_fd = rfs::open(
        staging,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::path(staging.display(), "open", e.into()))?;
    let tree_out = out_fd
        .try_clone()
        .map_err(|e| Error::path(out.display(), "dup", e))?;
    let mut tree = MemTree::new(staging_fd, tree_out);
    let mut dirs = Vec::new();
    let mut stack = StackReader::new(opts.read);
    let mut layers = layers;
    stack.read_stack(&mut layers, |stack, index, layer| {
        tree.start_layer(index).map_err(|f| f.at(index, "."))?;
        let mut rules = LayerRules::new(&mut tree);
        stack.read_ready(index, layer, |entry, data| {
            rules
                .entry(entry, data)
                .map_err(|f| f.at(index, &entry.name))
        })?;
        drop(rules);
        let name = index.to_string();
        let layer_dir = out.join(&name);
        let mut emitter = Emitter {
            tree: &tree,
            layer: index,
            layer_dirs: &dirs,
            out: out_fd.as_fd(),
            opts,
            emitted_inodes: HashMap::new(),
            moved: Vec::new(),
            wrote_xwhiteouts: false,
            at: Vec::new(),
            at_name: None,
        };
        emitter
            .emit(&name)
            .map_err(|f| f.at(index, &emitter.at_display()))?;
        let moved = std::mem::take(&mut emitter.moved);
        tree.content.extend(moved);
        tree.finish_layer(index);
        dirs.push(layer_dir);
        Ok(())
    })?;
    Ok(Converted {
        layers: dirs,
        summary: stack.summary(),
    })
}

mod emit;
mod mem_tree;

use emit::Emitter;
use mem_tree::MemTree;

/// A broken invariant of the tree (the rules keep them): an error, not a
/// panic, should one ever break.
fn internal(what: &'static str) -> Fault {
    Fault::Io(what, io::Error::other(what))
}

fn set_meta(fd: BorrowedFd<'_>, meta: &Meta, with_mtime: bool) -> io::Result<()> {
    set_meta_chown(fd, meta, with_mtime, true)
}

/// `set_meta`, with the chown left out where the node has its owner already.
fn set_meta_chown(
    fd: BorrowedFd<'_>,
    meta: &Meta,
    with_mtime: bool,
    chown: bool,
) -> io::Result<()> {
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
