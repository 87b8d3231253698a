//! The merged view of a stack in memory, as the rules change it layer by
//! layer, and the files placed in the current layer's directory meanwhile.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, Mode, OFlags};

use super::{internal, set_meta_chown};
use crate::error::{Fault, IoOp, Result, Rule};
use crate::fast_hash::{HashMap, HashMapExt, HashSet, HashSetExt};
use crate::layer::{EntryBody, EntryKind, Meta, RelPath};
use crate::rules::{self, Kind, Target};
use crate::sys;

/// A node's place in `MemTree::slots`.
pub(super) type Ix = u32;
/// The root directory's place; it is never removed.
pub(super) const ROOT: Ix = 0;

#[derive(Debug)]
pub(super) enum NodeKind {
    /// A directory and its children by name.
    Dir(BTreeMap<Box<str>, Ix>),
    /// A non-directory; `inode` is shared by hardlinks.
    Leaf { kind: EntryKind, inode: u64 },
}

#[derive(Debug)]
pub(super) struct Node {
    pub(super) kind: NodeKind,
    pub(super) meta: Meta,
    /// Identity: a directory deleted and re-created gets a new one.
    pub(super) id: u64,
    /// The layer (index + 1) that created this node, 0 for the root. Nodes
    /// never move, so one born before the current layer was at its path in
    /// the lower view.
    pub(super) born: usize,
    /// The last layer (index + 1) that created, changed or removed this
    /// node or something below it: the emitter visits only those.
    pub(super) dirty: usize,
    /// The layer (index + 1) whose directory holds this directory already,
    /// created as the parent of a file written there.
    pub(super) made: usize,
    pub(super) parent: Ix,
}

/// Where a regular file's bytes are. Paths are `/`-joined, relative to a
/// layer directory.
#[derive(Debug, Clone)]
pub(super) enum Content {
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
pub(super) struct MemTree {
    pub(super) slots: Vec<Option<Node>>,
    /// Places of removed nodes, for reuse.
    pub(super) free: Vec<Ix>,
    /// The directory found last and its path: most entries sit in the
    /// directory of the one before, or close to it.
    pub(super) last_dir: Option<(RelPath, Ix)>,
    pub(super) content: HashMap<u64, Content>,
    pub(super) next_id: u64,
    pub(super) staging: OwnedFd,
    /// The output directory, holding one directory per layer.
    pub(super) out: OwnedFd,
    /// The directory of the layer being read, where its files are written.
    pub(super) layer: Option<LayerDir>,
    /// Files placed in the current layer.
    pub(super) placed: Vec<u64>,
    /// The current layer's index + 1, for `Node::born`, `dirty` and `made`.
    pub(super) stamp: usize,
    /// Directories (by id) an opaque marker, or a whiteout of a touched
    /// directory, cleared in the current layer.
    pub(super) opaqued: HashSet<u64>,
    /// Names of the lower view the current layer removed, by the id of the
    /// directory that held them, each with whether it was a directory.
    pub(super) removed: HashMap<u64, Vec<(Box<str>, bool)>>,
    /// The names hardlinks gave each linked inode (possibly stale: a name
    /// counts while the tree still holds that inode there).
    pub(super) names: HashMap<u64, HashSet<RelPath>>,
    /// Linked inodes whose names were all copied up in the current layer.
    pub(super) copied_up: HashSet<u64>,
    /// The process's uid and gid, where files created while the current
    /// layer is read get exactly those (see `start_layer`).
    pub(super) new_file_ids: Option<(u32, u32)>,
}

impl MemTree {
    pub(super) fn new(staging: OwnedFd, out: OwnedFd) -> Self {
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
    pub(super) fn start_layer(&mut self, index: usize) -> Result<(), Fault> {
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
    pub(super) fn finish_layer(&mut self, index: usize) {
        for inode in std::mem::take(&mut self.placed) {
            if let Some(content) = self.content.get_mut(&inode) {
                if let Content::Placed { path, .. } = content {
                    *content = Content::InLayer(index, std::mem::take(path));
                }
            }
        }
        self.layer = None;
    }

    pub(super) fn node(&self, ix: Ix) -> &Node {
        self.slots[ix as usize].as_ref().expect("a live node")
    }

    pub(super) fn node_mut(&mut self, ix: Ix) -> &mut Node {
        self.slots[ix as usize].as_mut().expect("a live node")
    }

    pub(super) fn child(&self, dir: Ix, name: &str) -> Option<Ix> {
        match &self.node(dir).kind {
            NodeKind::Dir(children) => children.get(name).copied(),
            NodeKind::Leaf { .. } => None,
        }
    }

    /// The node at `path`, from the root.
    pub(super) fn lookup(&self, path: &[String]) -> Option<Ix> {
        path.iter().try_fold(ROOT, |at, name| self.child(at, name))
    }

    /// The node at `path`, found from the last directory found.
    pub(super) fn find(&mut self, path: &[String]) -> Option<Ix> {
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
    pub(super) fn find_dir(&mut self, dir: &[String]) -> Option<Ix> {
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

    pub(super) fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Adds a node at `path`, whose parent is a directory of the tree and
    /// which holds nothing of that name (the rules see to both).
    pub(super) fn insert(
        &mut self,
        path: &[String],
        kind: NodeKind,
        meta: Meta,
    ) -> Result<u64, Fault> {
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
    pub(super) fn mark_from(&mut self, mut ix: Ix) {
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
    pub(super) fn mark_path(&mut self, path: &[String]) {
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
    pub(super) fn move_aside(&mut self, path: &str, inode: u64) -> Result<(), Fault> {
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
    pub(super) fn layer_subdir(&mut self, dir: &[String]) -> io::Result<BorrowedFd<'_>> {
        let target = self.find_dir(dir).ok_or_else(not_in_tree)?;
        let layer = self.layer.as_mut().expect("a layer is being read");
        layer.subdir(&mut self.slots, self.stamp, target, dir)
    }

    pub(super) fn layer_dir(&mut self) -> &mut LayerDir {
        self.layer.as_mut().expect("a layer is being read")
    }
}

/// Directory fds kept at most (see apply's cache: the fd table stays small).
const DIR_CACHE: usize = 128;

/// The directory of the layer being read, as far as files were written in
/// it. Only overlayer writes there, and only directories and regular files,
/// so its paths are those of the tree; each is still opened one component
/// at a time with `O_NOFOLLOW`.
pub(super) struct LayerDir {
    pub(super) root: OwnedFd,
    /// Open directories, by the id of their tree node.
    pub(super) fds: HashMap<u64, OwnedFd>,
}

fn not_in_tree() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "directory not in the tree")
}

impl LayerDir {
    /// The directory `dir`, the tree node `target`, created with its
    /// missing parents (see `MemTree::layer_subdir`).
    pub(super) fn subdir(
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
