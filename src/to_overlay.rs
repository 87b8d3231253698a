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

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use crate::error::{Error, Fault, IoOp, Result};
use crate::fast_hash::{HashMap, HashMapExt, HashSet, HashSetExt};
use crate::layer::{EntryBody, EntryKind, LayerInput, Meta, RelPath, StackReader};
use crate::limits::{ReadOptions, Summary};
use crate::output::Staged;
use crate::rules::{self, Kind, LayerRules, Target};
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
    for (index, reader) in layers.into_iter().enumerate() {
        let before = tree.nodes.clone();
        tree.start_layer(index).map_err(|f| f.at(index, "."))?;
        let mut rules = LayerRules::new(&mut tree);
        stack.read_layer(index, reader, |entry, data| {
            rules
                .entry(entry, data)
                .map_err(|f| f.at(index, &entry.name))
        })?;
        drop(rules);
        let name = index.to_string();
        let layer_dir = out.join(&name);
        let mut emitter = Emitter {
            tree: &tree,
            before: &before,
            layer: index,
            layer_dirs: &dirs,
            out: out_fd.as_fd(),
            opts,
            emitted_inodes: HashMap::new(),
            moved: Vec::new(),
            wrote_xwhiteouts: false,
            at: &[],
            at_name: None,
        };
        emitter
            .emit(&name)
            .map_err(|f| f.at(index, &emitter.at_display()))?;
        let moved = std::mem::take(&mut emitter.moved);
        tree.content.extend(moved);
        tree.finish_layer(index);
        dirs.push(layer_dir);
    }
    Ok(Converted {
        layers: dirs,
        summary: stack.summary(),
    })
}

#[derive(Debug, Clone)]
enum NodeKind {
    Dir,
    /// A non-directory; `inode` is shared by hardlinks.
    Leaf {
        kind: EntryKind,
        inode: u64,
    },
}

#[derive(Debug, Clone)]
struct Node {
    kind: NodeKind,
    meta: Meta,
    /// Identity: a directory deleted and re-created gets a new one.
    id: u64,
    /// The last layer (index + 1) that created, changed or removed this
    /// node or something below it: the emitter visits only those.
    dirty: usize,
}

/// Where a regular file's bytes are.
#[derive(Debug, Clone)]
enum Content {
    /// Read in the current layer and written at this path of its directory,
    /// metadata included (so emitting it there costs nothing).
    Placed(RelPath),
    /// Read in the current layer, then moved aside to the staging directory
    /// (metadata set) because its path was replaced within the layer while
    /// a hardlink may still name it.
    Staged(String),
    /// Written into an emitted layer directory.
    InLayer(usize, RelPath),
}

/// The merged view, in memory.
struct MemTree {
    nodes: BTreeMap<RelPath, Node>,
    content: HashMap<u64, Content>,
    next_id: u64,
    staging: OwnedFd,
    /// The output directory, holding one directory per layer.
    out: OwnedFd,
    /// The directory of the layer being read, where its files are written.
    layer: Option<LayerDir>,
    /// Files placed in the current layer.
    placed: Vec<u64>,
    /// The current layer's index + 1, for `Node::dirty`.
    stamp: usize,
    /// Directories an opaque marker (or a whiteout of a touched directory)
    /// cleared in the current layer.
    opaqued: HashSet<RelPath>,
    /// The names hardlinks gave each linked inode (possibly stale: a name
    /// counts while `nodes` still holds that inode there).
    names: HashMap<u64, HashSet<RelPath>>,
    /// Linked inodes whose names were all copied up in the current layer.
    copied_up: HashSet<u64>,
}

impl MemTree {
    fn new(staging: OwnedFd, out: OwnedFd) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            Vec::new(),
            Node {
                kind: NodeKind::Dir,
                meta: rules::implied_dir_meta(),
                id: 0,
                dirty: 0,
            },
        );
        MemTree {
            nodes,
            content: HashMap::new(),
            next_id: 1,
            staging,
            out,
            layer: None,
            placed: Vec::new(),
            stamp: 0,
            opaqued: HashSet::new(),
            names: HashMap::new(),
            copied_up: HashSet::new(),
        }
    }

    /// Creates the layer's directory `out/INDEX`, where its files are
    /// written as they are read.
    fn start_layer(&mut self, index: usize) -> Result<(), Fault> {
        self.stamp = index + 1;
        self.opaqued.clear();
        self.copied_up.clear();
        let name = index.to_string();
        rfs::mkdirat(&self.out, name.as_str(), Mode::from_raw_mode(0o700))
            .map_err(io::Error::from)
            .op("mkdir layer")?;
        let root = sys::open_entry(self.out.as_fd(), &name, OFlags::PATH | OFlags::DIRECTORY)
            .op("open layer")?;
        self.layer = Some(LayerDir {
            root,
            made: HashSet::new(),
            fds: HashMap::new(),
        });
        Ok(())
    }

    /// After the layer is emitted: its placed files are where later layers
    /// find them (for copies up).
    fn finish_layer(&mut self, index: usize) {
        for inode in std::mem::take(&mut self.placed) {
            if let Some(content) = self.content.get_mut(&inode) {
                if let Content::Placed(at) = content {
                    *content = Content::InLayer(index, std::mem::take(at));
                }
            }
        }
        self.layer = None;
    }

    fn layer_dir(&mut self) -> &mut LayerDir {
        self.layer.as_mut().expect("a layer is being read")
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn insert(&mut self, path: &[String], kind: NodeKind, meta: Meta) {
        let id = self.id();
        let dirty = self.stamp;
        self.nodes.insert(
            path.to_vec(),
            Node {
                kind,
                meta,
                id,
                dirty,
            },
        );
        self.mark_ancestors(path);
    }

    /// Stamps `path` (if it still exists) and its ancestors as changed in
    /// this layer; stops at the first ancestor already stamped.
    fn mark_dirty(&mut self, path: &[String]) {
        if let Some(node) = self.nodes.get_mut(path) {
            node.dirty = self.stamp;
        }
        self.mark_ancestors(path);
    }

    fn mark_ancestors(&mut self, path: &[String]) {
        for n in (0..path.len()).rev() {
            match self.nodes.get_mut(&path[..n]) {
                Some(node) if node.dirty == self.stamp => return,
                Some(node) => node.dirty = self.stamp,
                None => {}
            }
        }
    }
}

impl MemTree {
    /// Moves a file placed at `path` in the current layer to the staging
    /// directory: its path is being replaced, but a hardlink of this layer
    /// may still name the inode.
    fn move_aside(&mut self, path: &[String], inode: u64) -> Result<(), Fault> {
        let (name, parent) = path.split_last().expect("below the root");
        let blob = inode.to_string();
        let layer = self.layer.as_mut().expect("a layer is being read");
        let dir = layer.subdir(parent).op("open directory in layer")?;
        rfs::renameat(dir, name.as_str(), &self.staging, blob.as_str())
            .map_err(io::Error::from)
            .op("move replaced file aside")?;
        self.content.insert(inode, Content::Staged(blob));
        Ok(())
    }
}

/// Directory fds kept at most (see apply's cache: the fd table stays small).
const DIR_CACHE: usize = 128;

/// The directory of the layer being read, as far as files were written in
/// it. Only overlayer writes there, and only directories and regular files,
/// so its paths are those of the tree; each is still opened one component
/// at a time with `O_NOFOLLOW`.
struct LayerDir {
    root: OwnedFd,
    /// Directories created (parents of placed files).
    made: HashSet<RelPath>,
    fds: HashMap<RelPath, OwnedFd>,
}

impl LayerDir {
    /// The directory `dir` of the layer, created (0700; the emitter sets its
    /// attributes) with its missing parents.
    fn subdir(&mut self, dir: &[String]) -> io::Result<BorrowedFd<'_>> {
        if dir.is_empty() {
            return Ok(self.root.as_fd());
        }
        if !self.fds.contains_key(dir) {
            let mut start = dir.len() - 1;
            while start > 0 && !self.fds.contains_key(&dir[..start]) {
                start -= 1;
            }
            let mut fd: Option<OwnedFd> = None;
            for i in start..dir.len() {
                let parent = match &fd {
                    Some(fd) => fd.as_fd(),
                    None if i == 0 => self.root.as_fd(),
                    None => self.fds[&dir[..i]].as_fd(),
                };
                let name = dir[i].as_str();
                if !self.made.contains(&dir[..=i]) {
                    match rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    self.made.insert(dir[..=i].to_vec());
                }
                let next = sys::open_entry(parent, name, OFlags::PATH | OFlags::DIRECTORY)?;
                fd = Some(next);
            }
            if self.fds.len() >= DIR_CACHE {
                self.fds.clear();
            }
            self.fds
                .insert(dir.to_vec(), fd.expect("one component at least"));
        }
        Ok(self.fds[dir].as_fd())
    }
}

/// Names of the children of `dir` in `nodes`, in order.
fn children_of<'a>(
    nodes: &'a BTreeMap<RelPath, Node>,
    dir: &'a [String],
) -> impl Iterator<Item = (&'a RelPath, &'a Node)> + 'a {
    let depth = dir.len() + 1;
    nodes
        .range::<[String], _>((Bound::Excluded(dir), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(dir))
        .filter(move |(k, _)| k.len() == depth)
}

impl Target for MemTree {
    fn kind(&mut self, path: &[String]) -> Result<Option<Kind>, Fault> {
        Ok(self.nodes.get(path).map(|n| match &n.kind {
            NodeKind::Dir => Kind::Dir,
            NodeKind::Leaf {
                kind: EntryKind::Symlink(_),
                ..
            } => Kind::Symlink,
            NodeKind::Leaf { .. } => Kind::Other,
        }))
    }

    fn readlink(&mut self, path: &[String]) -> Result<String, Fault> {
        match self.nodes.get(path).map(|n| &n.kind) {
            Some(NodeKind::Leaf {
                kind: EntryKind::Symlink(target),
                ..
            }) => Ok(target.clone()),
            _ => Err(io::Error::from(io::ErrorKind::InvalidInput)).op("readlink"),
        }
    }

    fn children(&mut self, path: &[String]) -> Result<Vec<String>, Fault> {
        Ok(children_of(&self.nodes, path)
            .map(|(k, _)| k.last().expect("child").clone())
            .collect())
    }

    fn remove_all(&mut self, path: &[String]) -> Result<(), Fault> {
        let doomed: Vec<RelPath> = self
            .nodes
            .range::<[String], _>((Bound::Included(path), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(path))
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            if let Some(Node {
                kind:
                    NodeKind::Leaf {
                        kind: EntryKind::File,
                        inode,
                    },
                ..
            }) = self.nodes.remove(&key)
            {
                if matches!(self.content.get(&inode), Some(Content::Placed(at)) if *at == key) {
                    self.move_aside(&key, inode)?;
                }
            }
        }
        self.mark_dirty(path);
        // What is left of a directory files were placed in: directories.
        if let Some((name, parent)) = path.split_last() {
            if self.layer_dir().made.contains(path) {
                let layer = self.layer_dir();
                let dir = layer.subdir(parent).op("open directory in layer")?;
                crate::apply::remove_at(dir, name).op("remove from layer")?;
                layer.made.retain(|d| !d.starts_with(path));
                layer.fds.clear();
            }
        }
        Ok(())
    }

    fn known_dir(&mut self, path: &[String]) -> bool {
        matches!(self.nodes.get(path), Some(n) if matches!(n.kind, NodeKind::Dir))
    }

    fn make_dir(&mut self, path: &[String], meta: &Meta) -> Result<bool, Fault> {
        if self.nodes.contains_key(path) {
            return Ok(false);
        }
        self.insert(path, NodeKind::Dir, meta.clone());
        Ok(true)
    }

    fn make_implied_dir(&mut self, path: &[String]) -> Result<(), Fault> {
        self.insert(path, NodeKind::Dir, rules::implied_dir_meta());
        Ok(())
    }

    fn replace_dir_meta(&mut self, path: &[String], meta: &Meta) -> Result<(), Fault> {
        if let Some(node) = self.nodes.get_mut(path) {
            node.meta = meta.clone();
            self.mark_dirty(path);
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
        if self.nodes.contains_key(path) {
            return Ok(false);
        }
        let inode = self.id();
        if *kind == EntryKind::File {
            // Written in place in the layer's directory, metadata set on the
            // open fd: emitting the layer then leaves it where it is.
            let (name, parent) = path.split_last().expect("below the root");
            let dir = self
                .layer_dir()
                .subdir(parent)
                .op("create directory in layer")?;
            let fd = rfs::openat(
                dir,
                name.as_str(),
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(io::Error::from)
            .op("create file")?;
            let mut file = File::from(fd);
            data.write_to(&mut file).op("write file")?;
            set_meta(file.as_fd(), meta, true).op("set file metadata")?;
            self.content.insert(inode, Content::Placed(path.to_vec()));
            self.placed.push(inode);
        }
        let kind = NodeKind::Leaf {
            kind: kind.clone(),
            inode,
        };
        self.insert(path, kind, meta.clone());
        Ok(true)
    }

    fn hard_link(&mut self, target: &[String], path: &[String]) -> Result<(), Fault> {
        let node = self
            .nodes
            .get(target)
            .expect("rules checked the target")
            .clone();
        if let NodeKind::Leaf { inode, .. } = node.kind {
            let names = self.names.entry(inode).or_default();
            names.insert(target.to_vec());
            names.insert(path.to_vec());
            if self.copied_up.insert(inode) {
                // Layer directories cannot share an inode, so every name the
                // merged view gives this one is written again in this layer,
                // all linked to one copy (the kernel then shows one inode,
                // as apply does).
                let nodes = &self.nodes;
                names.retain(|p| {
                    matches!(nodes.get(p).map(|n| &n.kind),
                        Some(NodeKind::Leaf { inode: i, .. }) if *i == inode)
                        || p == path
                });
                for name in names.clone() {
                    self.mark_dirty(&name);
                }
            }
        }
        self.insert(path, node.kind, node.meta);
        Ok(())
    }

    fn cleared_below(&mut self, dir: &[String]) {
        self.opaqued.insert(dir.to_vec());
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Merge {
    /// The directory merges with a lower directory: unchanged children come
    /// from below, deleted ones need whiteouts.
    Merged,
    /// Only this layer's directory is seen: write everything, no whiteouts.
    Raw,
}

/// Writes one layer's difference as an overlay-native directory. It only
/// reads the tree, so children and paths are borrowed from it, not cloned.
struct Emitter<'a> {
    tree: &'a MemTree,
    before: &'a BTreeMap<RelPath, Node>,
    layer: usize,
    layer_dirs: &'a [PathBuf],
    out: BorrowedFd<'a>,
    opts: ConvertOptions,
    /// Inodes written in this layer by this emitter, for links within it
    /// (files placed while the layer was read are found by their content).
    emitted_inodes: HashMap<u64, &'a [String]>,
    /// Files moved into this layer: their new content, for later layers.
    moved: Vec<(u64, Content)>,
    /// Whether this layer holds xattr whiteouts (its root is then marked).
    wrote_xwhiteouts: bool,
    /// The path being written, for errors, and the whiteout name below it.
    at: &'a [String],
    at_name: Option<String>,
}

impl<'a> Emitter<'a> {
    fn at_display(&self) -> String {
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

    fn emit(&mut self, name: &str) -> Result<(), Fault> {
        let tree = self.tree;
        let root_meta = &tree.nodes[&Vec::<String>::new()].meta;
        // Made by MemTree::start_layer, and holding this layer's files.
        let fd =
            sys::open_entry(self.out, name, OFlags::RDONLY | OFlags::DIRECTORY).op("open layer")?;
        // The kernel ignores opaque on a layer root: always merge, whiteouts.
        self.emit_dir(fd.as_fd(), &[], root_meta, Merge::Merged)?;
        if self.wrote_xwhiteouts {
            mark_xwhiteouts_dir(fd.as_fd()).op("mark layer root for xattr whiteouts")?;
        }
        Ok(())
    }

    fn emit_dir(
        &mut self,
        fd: BorrowedFd<'_>,
        path: &'a [String],
        meta: &Meta,
        merge: Merge,
    ) -> Result<(), Fault> {
        set_meta(fd, meta, false).op("set directory metadata")?;
        let tree = self.tree;
        for (child, node) in children_of(&tree.nodes, path) {
            // Unchanged children of a merged directory come from below.
            if merge == Merge::Raw || node.dirty == self.layer + 1 {
                self.at = child;
                self.emit_node(fd, child, node, merge)?;
            }
        }
        self.at = path;
        if merge == Merge::Merged {
            let gone: Vec<&String> = children_of(self.before, path)
                .filter(|(k, _)| !tree.nodes.contains_key(*k))
                .map(|(k, _)| k.last().expect("child"))
                .collect();
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
        rfs::futimens(fd, &sys::times(meta.mtime))
            .map_err(io::Error::from)
            .op("set directory mtime")
    }

    fn emit_node(
        &mut self,
        dir: BorrowedFd<'_>,
        path: &'a [String],
        node: &'a Node,
        parent: Merge,
    ) -> Result<(), Fault> {
        let name = path.last().expect("below the root").as_str();
        match &node.kind {
            NodeKind::Dir => {
                let merge = match (parent, self.before.get(path)) {
                    (Merge::Merged, Some(lower)) if matches!(lower.kind, NodeKind::Dir) => {
                        if lower.id == node.id && !self.tree.opaqued.contains(path) {
                            Merge::Merged
                        } else {
                            Merge::Raw
                        }
                    }
                    _ => Merge::Raw,
                };
                // Opaque is needed where a lower directory would otherwise merge.
                let opaque = merge == Merge::Raw
                    && parent == Merge::Merged
                    && matches!(self.before.get(path), Some(l) if matches!(l.kind, NodeKind::Dir));
                let made = self
                    .tree
                    .layer
                    .as_ref()
                    .is_some_and(|l| l.made.contains(path));
                if !made {
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
                self.emit_dir(fd.as_fd(), path, &node.meta, merge)
            }
            NodeKind::Leaf { kind, inode } => {
                self.emit_leaf(dir, path, name, kind, *inode, &node.meta)
            }
        }
    }

    fn emit_leaf(
        &mut self,
        dir: BorrowedFd<'_>,
        path: &'a [String],
        name: &str,
        kind: &EntryKind,
        inode: u64,
        meta: &Meta,
    ) -> Result<(), Fault> {
        let content = match kind {
            EntryKind::File => self.tree.content.get(&inode),
            _ => None,
        };
        if let Some(Content::Placed(at)) = &content {
            if at == path {
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
                Some(Content::Placed(at)) => self.link_in_layer(at, dir, name)?,
                Some(Content::Staged(blob)) => {
                    rfs::renameat(&self.tree.staging, blob.as_str(), dir, name)
                        .map_err(io::Error::from)
                        .op("place file")?;
                    self.moved
                        .push((inode, Content::InLayer(self.layer, path.to_vec())));
                }
                Some(Content::InLayer(layer, from)) => {
                    self.copy_from_layer(*layer, from, dir, name, meta)?;
                    self.moved
                        .push((inode, Content::InLayer(self.layer, path.to_vec())));
                }
                None => unreachable!("every file inode has content"),
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
        self.emitted_inodes.insert(inode, path);
        Ok(())
    }

    /// Links `path` of this layer's directory (already written) as `name`
    /// in `dir`.
    fn link_in_layer(&self, from: &[String], dir: BorrowedFd<'_>, name: &str) -> Result<(), Fault> {
        let layer_fd = self.layer_root()?;
        let (fname, fparent) = from.split_last().expect("below the root");
        let fdir = sys::open_dir_path(layer_fd.as_fd(), &fparent.join("/")).op("open")?;
        rfs::linkat(&fdir, fname.as_str(), dir, name, AtFlags::empty())
            .map_err(io::Error::from)
            .op("link")
    }

    fn layer_root(&self) -> Result<OwnedFd, Fault> {
        sys::open_entry(
            self.out,
            &self.layer.to_string(),
            OFlags::PATH | OFlags::DIRECTORY,
        )
        .op("open layer")
    }

    fn copy_from_layer(
        &self,
        layer: usize,
        from: &[String],
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
        let src = sys::open_beneath(root.as_fd(), &from.join("/"), OFlags::RDONLY)
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
const MARKER_NAMESPACES: [&str; 2] = [spec::TRUSTED_OVERLAY, spec::USER_OVERLAY];

/// overlayfs.rst (6.7+): an xattr whiteout is an empty regular file with
/// `overlay.whiteout`.
fn make_xwhiteout(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
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
fn mark_xwhiteouts_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    for ns in MARKER_NAMESPACES {
        let key = format!("{ns}{}", spec::OPAQUE_XATTR_SUFFIX);
        sys::fset_xattr(dir, &key, spec::OPAQUE_XWHITEOUTS)?;
    }
    Ok(())
}

fn set_meta(fd: BorrowedFd<'_>, meta: &Meta, with_mtime: bool) -> io::Result<()> {
    rfs::fchown(
        fd,
        Some(rfs::Uid::from_raw(meta.uid)),
        Some(rfs::Gid::from_raw(meta.gid)),
    )?;
    rfs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    for (key, value) in &meta.xattrs {
        sys::fset_xattr(fd, key, value)?;
    }
    if with_mtime {
        rfs::futimens(fd, &sys::times(meta.mtime))?;
    }
    Ok(())
}
