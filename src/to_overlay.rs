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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use crate::error::{Error, Fault, IoOp, Result, Rule};
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

/// A node's place in `MemTree::slots`.
type Ix = u32;
/// The root directory's place; it is never removed.
const ROOT: Ix = 0;

#[derive(Debug)]
enum NodeKind {
    /// A directory and its children by name.
    Dir(BTreeMap<Box<str>, Ix>),
    /// A non-directory; `inode` is shared by hardlinks.
    Leaf { kind: EntryKind, inode: u64 },
}

#[derive(Debug)]
struct Node {
    kind: NodeKind,
    meta: Meta,
    /// Identity: a directory deleted and re-created gets a new one.
    id: u64,
    /// The layer (index + 1) that created this node, 0 for the root. Nodes
    /// never move, so one born before the current layer was at its path in
    /// the lower view.
    born: usize,
    /// The last layer (index + 1) that created, changed or removed this
    /// node or something below it: the emitter visits only those.
    dirty: usize,
    /// The layer (index + 1) whose directory holds this directory already,
    /// created as the parent of a file written there.
    made: usize,
    parent: Ix,
}

/// Where a regular file's bytes are. Paths are `/`-joined, relative to a
/// layer directory.
#[derive(Debug, Clone)]
enum Content {
    /// Read in the current layer and written, metadata included, in its
    /// directory at `path`, the path of the tree node `node` (so emitting
    /// that node costs nothing).
    Placed { node: u64, path: String },
    /// Read in the current layer, then moved aside to the staging directory
    /// (metadata set) because its path was replaced within the layer while
    /// a hardlink may still name it.
    Staged(String),
    /// Written into an emitted layer directory.
    InLayer(usize, String),
}

/// The merged view, in memory: an arena of nodes, each directory holding
/// its children by name, so a path costs one small map lookup per
/// component and a node one allocation (its name). What the lower view was
/// before the current layer is kept as a journal of the names it removed,
/// not as a copy of the tree.
struct MemTree {
    slots: Vec<Option<Node>>,
    /// Places of removed nodes, for reuse.
    free: Vec<Ix>,
    /// The directory found last and its path: most entries sit in the
    /// directory of the one before, or close to it.
    last_dir: Option<(RelPath, Ix)>,
    content: HashMap<u64, Content>,
    next_id: u64,
    staging: OwnedFd,
    /// The output directory, holding one directory per layer.
    out: OwnedFd,
    /// The directory of the layer being read, where its files are written.
    layer: Option<LayerDir>,
    /// Files placed in the current layer.
    placed: Vec<u64>,
    /// The current layer's index + 1, for `Node::born`, `dirty` and `made`.
    stamp: usize,
    /// Directories (by id) an opaque marker, or a whiteout of a touched
    /// directory, cleared in the current layer.
    opaqued: HashSet<u64>,
    /// Names of the lower view the current layer removed, by the id of the
    /// directory that held them, each with whether it was a directory.
    removed: HashMap<u64, Vec<(Box<str>, bool)>>,
    /// The names hardlinks gave each linked inode (possibly stale: a name
    /// counts while the tree still holds that inode there).
    names: HashMap<u64, HashSet<RelPath>>,
    /// Linked inodes whose names were all copied up in the current layer.
    copied_up: HashSet<u64>,
    /// The process's uid and gid, where files created while the current
    /// layer is read get exactly those (see `start_layer`).
    new_file_ids: Option<(u32, u32)>,
}

impl MemTree {
    fn new(staging: OwnedFd, out: OwnedFd) -> Self {
        let root = Node {
            kind: NodeKind::Dir(BTreeMap::new()),
            meta: rules::implied_dir_meta(),
            id: 0,
            born: 0,
            dirty: 0,
            made: 0,
            parent: ROOT,
        };
        MemTree {
            slots: vec![Some(root)],
            free: Vec::new(),
            last_dir: None,
            content: HashMap::new(),
            next_id: 1,
            staging,
            out,
            layer: None,
            placed: Vec::new(),
            stamp: 0,
            opaqued: HashSet::new(),
            removed: HashMap::new(),
            names: HashMap::new(),
            copied_up: HashSet::new(),
            new_file_ids: None,
        }
    }

    /// Creates the layer's directory `out/INDEX`, where its files are
    /// written as they are read.
    fn start_layer(&mut self, index: usize) -> Result<(), Fault> {
        self.stamp = index + 1;
        self.opaqued.clear();
        self.removed.clear();
        self.copied_up.clear();
        let name = index.to_string();
        rfs::mkdirat(&self.out, name.as_str(), Mode::from_raw_mode(0o700))
            .map_err(io::Error::from)
            .op("mkdir layer")?;
        let root = sys::open_entry(self.out.as_fd(), &name, OFlags::PATH | OFlags::DIRECTORY)
            .op("open layer")?;
        // A file gets the creator's fsuid and fsgid, or its directory's group
        // where that is setgid or the filesystem is mounted `grpid`. Files are
        // placed below directories made here, which inherit the layer root's
        // group and are chowned only when the layer is emitted: if the layer
        // root's group is the process's, a file owned by the process needs
        // no fchown.
        let stat = rfs::fstat(&root)
            .map_err(io::Error::from)
            .op("stat layer")?;
        let ids = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        self.new_file_ids = (stat.st_gid == ids.1).then_some(ids);
        self.layer = Some(LayerDir {
            root,
            fds: HashMap::new(),
        });
        Ok(())
    }

    /// After the layer is emitted: its placed files are where later layers
    /// find them (for copies up).
    fn finish_layer(&mut self, index: usize) {
        for inode in std::mem::take(&mut self.placed) {
            if let Some(content) = self.content.get_mut(&inode) {
                if let Content::Placed { path, .. } = content {
                    *content = Content::InLayer(index, std::mem::take(path));
                }
            }
        }
        self.layer = None;
    }

    fn node(&self, ix: Ix) -> &Node {
        self.slots[ix as usize].as_ref().expect("a live node")
    }

    fn node_mut(&mut self, ix: Ix) -> &mut Node {
        self.slots[ix as usize].as_mut().expect("a live node")
    }

    fn child(&self, dir: Ix, name: &str) -> Option<Ix> {
        match &self.node(dir).kind {
            NodeKind::Dir(children) => children.get(name).copied(),
            NodeKind::Leaf { .. } => None,
        }
    }

    /// The node at `path`, from the root.
    fn lookup(&self, path: &[String]) -> Option<Ix> {
        path.iter().try_fold(ROOT, |at, name| self.child(at, name))
    }

    /// The node at `path`, found from the last directory found.
    fn find(&mut self, path: &[String]) -> Option<Ix> {
        match path.split_last() {
            None => Some(ROOT),
            Some((name, dir)) => {
                let dir = self.find_dir(dir)?;
                self.child(dir, name)
            }
        }
    }

    /// The node at `dir`: up from the last directory found to the path the
    /// two share, then down; remembered if it lies deeper.
    fn find_dir(&mut self, dir: &[String]) -> Option<Ix> {
        let (common, mut at) = match &self.last_dir {
            None => (0, ROOT),
            Some((cached, ix)) => {
                let common = cached.iter().zip(dir).take_while(|(a, b)| a == b).count();
                let mut at = *ix;
                for _ in common..cached.len() {
                    at = self.node(at).parent;
                }
                (common, at)
            }
        };
        if common == dir.len() {
            return Some(at);
        }
        for name in &dir[common..] {
            at = self.child(at, name)?;
        }
        let (cached, ix) = self.last_dir.get_or_insert_with(|| (Vec::new(), ROOT));
        cached.truncate(common);
        cached.extend_from_slice(&dir[common..]);
        *ix = at;
        Some(at)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Adds a node at `path`, whose parent is a directory of the tree and
    /// which holds nothing of that name (the rules see to both).
    fn insert(&mut self, path: &[String], kind: NodeKind, meta: Meta) -> Result<u64, Fault> {
        let (name, dir) = path.split_last().expect("below the root");
        let parent = self
            .find_dir(dir)
            .ok_or_else(|| internal("the parent is not in the tree"))?;
        let id = self.id();
        let node = Node {
            kind,
            meta,
            id,
            born: self.stamp,
            dirty: self.stamp,
            made: 0,
            parent,
        };
        let ix = match self.free.pop() {
            Some(ix) => {
                self.slots[ix as usize] = Some(node);
                ix
            }
            None => {
                self.slots.push(Some(node));
                Ix::try_from(self.slots.len() - 1)
                    .map_err(|_| internal("more than 2^32 tree nodes"))?
            }
        };
        match &mut self.node_mut(parent).kind {
            NodeKind::Dir(children) => {
                if children.insert(name.as_str().into(), ix).is_some() {
                    return Err(internal("the name is taken"));
                }
            }
            NodeKind::Leaf { .. } => return Err(internal("the parent is not a directory")),
        }
        self.mark_from(parent);
        Ok(id)
    }

    /// Stamps `ix` and its ancestors as changed in this layer; stops at the
    /// first one stamped already (its ancestors are too).
    fn mark_from(&mut self, mut ix: Ix) {
        let stamp = self.stamp;
        loop {
            let node = self.node_mut(ix);
            if node.dirty == stamp {
                return;
            }
            node.dirty = stamp;
            if ix == ROOT {
                return;
            }
            ix = node.parent;
        }
    }

    /// Stamps the node at `path`, or its deepest ancestor in the tree.
    fn mark_path(&mut self, path: &[String]) {
        let mut at = ROOT;
        for name in path {
            match self.child(at, name) {
                Some(next) => at = next,
                None => break,
            }
        }
        self.mark_from(at);
    }

    /// Moves a file placed at `path` in the current layer to the staging
    /// directory: its path is being replaced, but a hardlink of this layer
    /// may still name the inode.
    fn move_aside(&mut self, path: &str, inode: u64) -> Result<(), Fault> {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent: RelPath = parent
            .split('/')
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        let blob = inode.to_string();
        let target = self.find_dir(&parent).ok_or_else(not_in_tree);
        let layer = self.layer.as_mut().expect("a layer is being read");
        let dir = target
            .and_then(|target| layer.subdir(&mut self.slots, self.stamp, target, &parent))
            .op("open directory in layer")?;
        rfs::renameat(dir, name, &self.staging, blob.as_str())
            .map_err(io::Error::from)
            .op("move replaced file aside")?;
        self.content.insert(inode, Content::Staged(blob));
        Ok(())
    }

    /// The directory `dir` of the current layer's directory, created (0700;
    /// the emitter sets its attributes) with its missing parents. `dir` is
    /// a directory of the tree.
    fn layer_subdir(&mut self, dir: &[String]) -> io::Result<BorrowedFd<'_>> {
        let target = self.find_dir(dir).ok_or_else(not_in_tree)?;
        let layer = self.layer.as_mut().expect("a layer is being read");
        layer.subdir(&mut self.slots, self.stamp, target, dir)
    }

    fn layer_dir(&mut self) -> &mut LayerDir {
        self.layer.as_mut().expect("a layer is being read")
    }
}

/// A broken invariant of the tree (the rules keep them): an error, not a
/// panic, should one ever break.
fn internal(what: &'static str) -> Fault {
    Fault::Io(what, io::Error::other(what))
}

/// Directory fds kept at most (see apply's cache: the fd table stays small).
const DIR_CACHE: usize = 128;

/// The directory of the layer being read, as far as files were written in
/// it. Only overlayer writes there, and only directories and regular files,
/// so its paths are those of the tree; each is still opened one component
/// at a time with `O_NOFOLLOW`.
struct LayerDir {
    root: OwnedFd,
    /// Open directories, by the id of their tree node.
    fds: HashMap<u64, OwnedFd>,
}

fn not_in_tree() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "directory not in the tree")
}

impl LayerDir {
    /// The directory `dir`, the tree node `target`, created with its
    /// missing parents (see `MemTree::layer_subdir`).
    fn subdir(
        &mut self,
        slots: &mut [Option<Node>],
        stamp: usize,
        target: Ix,
        dir: &[String],
    ) -> io::Result<BorrowedFd<'_>> {
        if target == ROOT {
            return Ok(self.root.as_fd());
        }
        let live = |slots: &[Option<Node>], ix: Ix| -> io::Result<u64> {
            slots[ix as usize]
                .as_ref()
                .map(|n| n.id)
                .ok_or_else(not_in_tree)
        };
        let id = live(slots, target)?;
        if !self.fds.contains_key(&id) {
            // The directory and its ancestors, up to the first one open.
            let mut chain = vec![target];
            let mut at = target;
            while at != ROOT {
                if at != target && self.fds.contains_key(&live(slots, at)?) {
                    break;
                }
                at = slots[at as usize].as_ref().ok_or_else(not_in_tree)?.parent;
                chain.push(at);
            }
            chain.reverse();
            let start = dir.len() + 1 - chain.len();
            let mut fd: Option<OwnedFd> = None;
            for (i, pair) in chain.windows(2).enumerate() {
                let (above, ix) = (pair[0], pair[1]);
                let parent = match &fd {
                    Some(fd) => fd.as_fd(),
                    None if above == ROOT => self.root.as_fd(),
                    None => self.fds[&live(slots, above)?].as_fd(),
                };
                let name = dir[start + i].as_str();
                let node = slots[ix as usize].as_mut().ok_or_else(not_in_tree)?;
                if node.made != stamp {
                    match rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    node.made = stamp;
                }
                fd = Some(sys::open_entry(
                    parent,
                    name,
                    OFlags::PATH | OFlags::DIRECTORY,
                )?);
            }
            if self.fds.len() >= DIR_CACHE {
                self.fds.clear();
            }
            self.fds.insert(id, fd.expect("one component at least"));
        }
        Ok(self.fds[&id].as_fd())
    }
}

impl Target for MemTree {
    fn kind(&mut self, path: &[String]) -> Result<Option<Kind>, Fault> {
        Ok(self.find(path).map(|ix| match &self.node(ix).kind {
            NodeKind::Dir(_) => Kind::Dir,
            NodeKind::Leaf {
                kind: EntryKind::Symlink(_),
                ..
            } => Kind::Symlink,
            NodeKind::Leaf { .. } => Kind::Other,
        }))
    }

    fn readlink(&mut self, path: &[String]) -> Result<String, Fault> {
        match self.find(path).map(|ix| &self.node(ix).kind) {
            Some(NodeKind::Leaf {
                kind: EntryKind::Symlink(target),
                ..
            }) => Ok(target.clone()),
            _ => Err(io::Error::from(io::ErrorKind::InvalidInput)).op("readlink"),
        }
    }

    fn children(&mut self, path: &[String]) -> Result<Vec<String>, Fault> {
        Ok(match self.find(path).map(|ix| &self.node(ix).kind) {
            Some(NodeKind::Dir(children)) => children.keys().map(|k| k.to_string()).collect(),
            _ => Vec::new(),
        })
    }

    fn remove_all(&mut self, path: &[String]) -> Result<(), Fault> {
        let Some((name, _)) = path.split_last() else {
            // The root stays; what it holds goes.
            for name in self.children(path)? {
                self.remove_all(&[name])?;
            }
            return Ok(());
        };
        let Some(ix) = self.find(path) else {
            self.mark_path(path);
            return Ok(());
        };
        // Files placed below are moved aside first, while their
        // directories are still in the tree.
        let mut below = vec![ix];
        let mut placed = Vec::new();
        while let Some(at) = below.pop() {
            let node = self.node(at);
            match &node.kind {
                NodeKind::Dir(children) => below.extend(children.values().copied()),
                NodeKind::Leaf {
                    kind: EntryKind::File,
                    inode,
                } => {
                    if let Some(Content::Placed { node: id, path }) = self.content.get(inode) {
                        if *id == node.id {
                            placed.push((path.clone(), *inode));
                        }
                    }
                }
                NodeKind::Leaf { .. } => {}
            }
        }
        for (at, inode) in placed {
            self.move_aside(&at, inode)?;
        }
        // What is left of a directory files were placed in: directories.
        if self.node(ix).made == self.stamp {
            let parent = &path[..path.len() - 1];
            let dir = self.layer_subdir(parent).op("open directory in layer")?;
            crate::apply::remove_at(dir, name).op("remove from layer")?;
            self.layer_dir().fds.clear();
        }
        let (parent, born, was_dir) = {
            let node = self.node(ix);
            (
                node.parent,
                node.born,
                matches!(node.kind, NodeKind::Dir(_)),
            )
        };
        if let NodeKind::Dir(children) = &mut self.node_mut(parent).kind {
            children.remove(name.as_str());
        }
        if born < self.stamp {
            let parent_id = self.node(parent).id;
            self.removed
                .entry(parent_id)
                .or_default()
                .push((name.as_str().into(), was_dir));
        }
        self.last_dir = None;
        let mut doomed = vec![ix];
        while let Some(at) = doomed.pop() {
            if let Some(Node {
                kind: NodeKind::Dir(children),
                ..
            }) = self.slots[at as usize].take()
            {
                doomed.extend(children.into_values());
            }
            self.free.push(at);
        }
        self.mark_from(parent);
        Ok(())
    }

    fn known_dir(&mut self, path: &[String]) -> bool {
        matches!(
            self.find(path).map(|ix| &self.node(ix).kind),
            Some(NodeKind::Dir(_))
        )
    }

    fn make_dir(&mut self, path: &[String], meta: &Meta) -> Result<bool, Fault> {
        if self.find(path).is_some() {
            return Ok(false);
        }
        self.insert(path, NodeKind::Dir(BTreeMap::new()), meta.clone())?;
        Ok(true)
    }

    fn make_implied_dir(&mut self, path: &[String]) -> Result<(), Fault> {
        self.insert(
            path,
            NodeKind::Dir(BTreeMap::new()),
            rules::implied_dir_meta(),
        )?;
        Ok(())
    }

    fn replace_dir_meta(&mut self, path: &[String], meta: &Meta) -> Result<(), Fault> {
        if let Some(ix) = self.find(path) {
            self.node_mut(ix).meta = meta.clone();
            self.mark_from(ix);
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
        if self.find(path).is_some() {
            return Ok(false);
        }
        let inode = self.id();
        let leaf = NodeKind::Leaf {
            kind: kind.clone(),
            inode,
        };
        if *kind != EntryKind::File {
            self.insert(path, leaf, meta.clone())?;
            return Ok(true);
        }
        {
            // Written in place in the layer's directory, metadata set on the
            // open fd: emitting the layer then leaves it where it is.
            let (name, parent) = path.split_last().expect("below the root");
            let dir = self.layer_subdir(parent).op("create directory in layer")?;
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
            let owned = self.new_file_ids == Some((meta.uid, meta.gid));
            set_meta_chown(file.as_fd(), meta, true, !owned).op("set file metadata")?;
        }
        let node = self.insert(path, leaf, meta.clone())?;
        let path = path.join("/");
        self.content.insert(inode, Content::Placed { node, path });
        self.placed.push(inode);
        Ok(true)
    }

    fn hard_link(&mut self, target: &[String], path: &[String]) -> Result<(), Fault> {
        let at = self
            .find(target)
            .ok_or_else(|| internal("the hardlink target is not in the tree"))?;
        let node = self.node(at);
        let (kind, inode, meta) = match &node.kind {
            NodeKind::Leaf { kind, inode } => (kind.clone(), *inode, node.meta.clone()),
            NodeKind::Dir(_) => return Err(Rule::HardlinkToDirectory.into()),
        };
        let mut names = self.names.remove(&inode).unwrap_or_default();
        names.insert(target.to_vec());
        names.insert(path.to_vec());
        if self.copied_up.insert(inode) {
            // Layer directories cannot share an inode, so every name the
            // merged view gives this one is written again in this layer,
            // all linked to one copy (the kernel then shows one inode, as
            // apply does).
            names.retain(|p| {
                p == path
                    || matches!(self.lookup(p).map(|ix| &self.node(ix).kind),
                        Some(NodeKind::Leaf { inode: i, .. }) if *i == inode)
            });
            for name in &names {
                self.mark_path(name);
            }
        }
        self.names.insert(inode, names);
        self.insert(path, NodeKind::Leaf { kind, inode }, meta)?;
        Ok(())
    }

    fn cleared_below(&mut self, dir: &[String]) {
        if let Some(ix) = self.find(dir) {
            let id = self.node(ix).id;
            self.opaqued.insert(id);
        }
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
/// reads the tree, so names are borrowed from it, not cloned.
struct Emitter<'a> {
    tree: &'a MemTree,
    layer: usize,
    layer_dirs: &'a [PathBuf],
    out: BorrowedFd<'a>,
    opts: ConvertOptions,
    /// Linked inodes written in this layer by this emitter, at a `/`-joined
    /// path, for their other names (files placed while the layer was read
    /// are found by their content).
    emitted_inodes: HashMap<u64, String>,
    /// Files moved into this layer: their new content, for later layers.
    moved: Vec<(u64, Content)>,
    /// Whether this layer holds xattr whiteouts (its root is then marked).
    wrote_xwhiteouts: bool,
    /// The path being written, for errors, and the whiteout name below it.
    at: Vec<&'a str>,
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

    fn emit_dir(&mut self, fd: BorrowedFd<'_>, dir: &'a Node, merge: Merge) -> Result<(), Fault> {
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

    fn emit_node(
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

    fn emit_leaf(
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
    fn link_in_layer(&self, from: &str, dir: BorrowedFd<'_>, name: &str) -> Result<(), Fault> {
        let layer_fd = self.layer_root()?;
        let (fparent, fname) = from.rsplit_once('/').unwrap_or(("", from));
        let fdir = sys::open_dir_path(layer_fd.as_fd(), fparent).op("open")?;
        rfs::linkat(&fdir, fname, dir, name, AtFlags::empty())
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
