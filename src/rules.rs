//! The OCI layer application rules, written once and run against two
//! targets: the disk (`apply`) and an in-memory tree (`to_overlay`, which
//! then expresses each layer's effect as an overlay-native directory).
//!
//! Entries are applied in archive order (a single streaming pass). Rules, from
//! OCI image spec layer.md unless noted:
//! * A whiteout `P/.wh.N` deletes `P/N` from the lower layers only: what this
//!   layer itself wrote at `P/N` survives, in either archive order. If this
//!   layer wrote below `P/N`, `P/N` stays and only its lower content goes.
//! * `P/.wh..wh..opq` hides every lower child of `P`, wherever it sits in the
//!   archive: everything below `P` that this layer did not write goes.
//! * A whiteout or opaque marker whose directory does not exist creates
//!   nothing (catalogue scenario 50). If that directory is a non-directory
//!   written by this same layer, the marker turns it into an empty directory
//!   (scenario 40).
//! * A directory entry over a directory replaces its attributes (the xattr set
//!   included) and keeps its children; any other existing node is removed
//!   first (unlink + recreate).
//! * Hardlinks may name files of lower layers; a hardlink to a symlink links
//!   the symlink itself; the link's own header metadata is not applied.
//! * A directory this layer only implies (a parent of one of its entries)
//!   that already existed keeps its attributes, even if an opaque marker
//!   later in the layer hides its lower children; a marker earlier in the
//!   layer removes it first, and it is then re-created as a fresh implied
//!   directory. Paths and contents do not depend on the marker's position.
//! * Parent components are resolved as `RESOLVE_IN_ROOT` does, which is what
//!   the container itself will see: an absolute symlink restarts at the root
//!   and a `..` at the root stays there (catalogue scenarios 24, 29), so a
//!   layer's symlinks never lead out of it. The entry's last component is
//!   never followed. Missing parents are created 0755 root:root; a
//!   non-directory parent is an error.
//! * Overlay-private xattrs in a layer are escaped (see `spec`), never set live.

use std::borrow::Cow;
use std::collections::VecDeque;

use crate::error::{Fault, Rule};
use crate::fast_hash::{HashSet, HashSetExt};
use crate::layer::{Entry, EntryBody, EntryKind, Meta, RelPath};
use crate::spec;

/// The type of an existing node, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    Symlink,
    Other,
}

/// Limit on symlinks followed while resolving one path (as the kernel's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// Where the rules write. Paths given to a target are already resolved: no
/// component but possibly the last is a symlink, and implementations must not
/// follow symlinks anywhere.
pub(crate) trait Target {
    /// The node at `path`, or `None` if it is missing or not reachable without
    /// following a symlink.
    fn kind(&mut self, path: &[String]) -> Result<Option<Kind>, Fault>;
    fn readlink(&mut self, path: &[String]) -> Result<String, Fault>;
    fn children(&mut self, path: &[String]) -> Result<Vec<String>, Fault>;
    fn remove_all(&mut self, path: &[String]) -> Result<(), Fault>;
    /// Whether `path` is known to be a directory without asking the
    /// filesystem (a cheap hint; `false` says nothing).
    fn known_dir(&mut self, _path: &[String]) -> bool {
        false
    }
    /// Creates a directory at `path`; `Ok(false)` if something exists
    /// there already (nothing is changed then).
    fn make_dir(&mut self, path: &[String], meta: &Meta) -> Result<bool, Fault>;
    /// A directory the layer implies but does not list: 0755, root:root.
    fn make_implied_dir(&mut self, path: &[String]) -> Result<(), Fault>;
    fn replace_dir_meta(&mut self, path: &[String], meta: &Meta) -> Result<(), Fault>;
    /// Creates a file, symlink, fifo or device node at `path`; `Ok(false)`
    /// if something exists there already (nothing is changed then and
    /// nothing is read from `data`). Creating first and looking only when
    /// the name is taken saves a lookup per entry, as `tar` does.
    fn make_node(
        &mut self,
        path: &[String],
        kind: &EntryKind,
        meta: &Meta,
        data: &mut dyn EntryBody,
    ) -> Result<bool, Fault>;
    /// Makes `path` (which does not exist) another name of `target`.
    fn hard_link(&mut self, target: &[String], path: &[String]) -> Result<(), Fault>;
    /// Told when a marker cleared the lower content of the directory `dir`.
    fn cleared_below(&mut self, _dir: &[String]) {}
}

/// Metadata of an implied directory.
pub(crate) fn implied_dir_meta() -> Meta {
    Meta {
        mode: 0o755,
        ..Meta::default()
    }
}

/// Metadata with overlay-private xattrs escaped by the nesting convention.
pub(crate) fn escaped(meta: &Meta) -> std::borrow::Cow<'_, Meta> {
    if meta
        .xattrs
        .iter()
        .any(|(n, _)| spec::is_overlay_private_xattr(n))
    {
        let mut m = meta.clone();
        for (name, _) in &mut m.xattrs {
            *name = spec::escape_overlay_xattr(name);
        }
        std::borrow::Cow::Owned(m)
    } else {
        std::borrow::Cow::Borrowed(meta)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Resolve {
    /// Create missing directories; a non-directory is an error.
    Create,
    /// For whiteouts and opaque markers: missing means nothing to do.
    Marker,
    /// For hardlink targets: missing means the target is missing.
    Lookup,
}

/// Applies the entries of one layer to a target.
pub(crate) struct LayerRules<'t, T: Target> {
    target: &'t mut T,
    /// Every path this layer wrote, with its ancestors.
    touched: HashSet<RelPath>,
}

impl<'t, T: Target> LayerRules<'t, T> {
    pub(crate) fn new(target: &'t mut T) -> Self {
        LayerRules {
            target,
            touched: HashSet::new(),
        }
    }

    pub(crate) fn entry(&mut self, entry: &Entry, data: &mut dyn EntryBody) -> Result<(), Fault> {
        match &entry.kind {
            EntryKind::Whiteout => self.whiteout(&entry.path),
            EntryKind::Opaque => self.opaque(&entry.path),
            EntryKind::Hardlink(target) => self.hardlink(&entry.path, target),
            EntryKind::Dir => self.dir(&entry.path, &escaped(&entry.meta)),
            kind => self.node(&entry.path, kind, &escaped(&entry.meta), data),
        }
    }

    fn whiteout(&mut self, path: &[String]) -> Result<(), Fault> {
        let (parent, name) = split(path);
        let Some(victim) = self.resolve(parent, Resolve::Marker)? else {
            return Ok(());
        };
        let mut victim = victim.into_owned();
        victim.push(name.to_string());
        let kind = self.target.kind(&victim)?;
        if self.touched.contains(&victim) {
            if kind == Some(Kind::Dir) {
                self.target.cleared_below(&victim);
                self.remove_untouched_below(&victim)?;
            }
        } else if kind.is_some() {
            self.target.remove_all(&victim)?;
        }
        Ok(())
    }

    fn opaque(&mut self, dir: &[String]) -> Result<(), Fault> {
        if let Some(dir) = self.resolve(dir, Resolve::Marker)? {
            self.target.cleared_below(&dir);
            self.remove_untouched_below(&dir)?;
        }
        Ok(())
    }

    fn dir(&mut self, path: &[String], meta: &Meta) -> Result<(), Fault> {
        if path.is_empty() {
            // `./`: layer.md, the root's attributes are replaced like any directory's.
            return self.target.replace_dir_meta(path, meta);
        }
        let path = self.place(path)?;
        if self.target.known_dir(&path) {
            self.target.replace_dir_meta(&path, meta)?;
        } else if !self.target.make_dir(&path, meta)? {
            match self.target.kind(&path)? {
                Some(Kind::Dir) => self.target.replace_dir_meta(&path, meta)?,
                _ => {
                    self.target.remove_all(&path)?;
                    if !self.target.make_dir(&path, meta)? {
                        return Err(still_exists("mkdir"));
                    }
                }
            }
        }
        self.touch(&path);
        Ok(())
    }

    fn node(
        &mut self,
        path: &[String],
        kind: &EntryKind,
        meta: &Meta,
        data: &mut dyn EntryBody,
    ) -> Result<(), Fault> {
        let path = self.place(path)?;
        if !self.target.make_node(&path, kind, meta, data)? {
            self.target.remove_all(&path)?;
            if !self.target.make_node(&path, kind, meta, data)? {
                return Err(still_exists("create node"));
            }
        }
        self.touch(&path);
        Ok(())
    }

    fn hardlink(&mut self, path: &[String], target: &[String]) -> Result<(), Fault> {
        let missing = |detail: &str| Fault::Rule(Rule::HardlinkTargetMissing, Some(detail.into()));
        if target.is_empty() {
            return Err(Rule::HardlinkToDirectory.into());
        }
        let (tparent, tname) = split(target);
        let Some(resolved) = self.resolve(tparent, Resolve::Lookup)? else {
            return Err(missing("its directory does not exist"));
        };
        let mut resolved = resolved.into_owned();
        resolved.push(tname.to_string());
        match self.target.kind(&resolved)? {
            None => return Err(missing("no such file")),
            Some(Kind::Dir) => return Err(Rule::HardlinkToDirectory.into()),
            Some(_) => {}
        }
        let path = self.place(path)?;
        if path == resolved {
            self.touch(&path);
            return Ok(());
        }
        if resolved.starts_with(&path) {
            return Err(missing("the target lies inside the path the link replaces"));
        }
        if self.target.kind(&path)?.is_some() {
            self.target.remove_all(&path)?;
        }
        self.target.hard_link(&resolved, &path)?;
        self.touch(&path);
        Ok(())
    }

    /// Resolves the parent of an entry (creating it) and returns the entry's
    /// resolved path; the last component is not followed. Most parents are
    /// directories already: then the path is its own resolution, borrowed.
    fn place<'p>(&mut self, path: &'p [String]) -> Result<Cow<'p, [String]>, Fault> {
        let (parent, name) = split(path);
        match self.resolve(parent, Resolve::Create)? {
            Some(Cow::Borrowed(_)) => Ok(Cow::Borrowed(path)),
            Some(Cow::Owned(mut resolved)) => {
                resolved.push(name.to_string());
                Ok(Cow::Owned(resolved))
            }
            None => unreachable!("Create mode always resolves"),
        }
    }

    fn remove_untouched_below(&mut self, dir: &[String]) -> Result<(), Fault> {
        let mut child = dir.to_vec();
        for name in self.target.children(dir)? {
            child.push(name);
            if !self.touched.contains(&child) {
                self.target.remove_all(&child)?;
            } else if self.target.kind(&child)? == Some(Kind::Dir) {
                self.remove_untouched_below(&child)?;
            }
            child.pop();
        }
        Ok(())
    }

    /// Marks `path` and its ancestors; stops at the first one already
    /// marked (its ancestors are too). Looked up before cloned: most
    /// entries' parents are marked already.
    fn touch(&mut self, path: &[String]) {
        for n in (0..=path.len()).rev() {
            if !mark(&mut self.touched, &path[..n]) {
                break;
            }
        }
    }

    /// Resolves a directory path, following symlinks inside the root.
    /// A path that is a directory already is its own resolution, borrowed.
    fn resolve<'p>(
        &mut self,
        path: &'p [String],
        mode: Resolve,
    ) -> Result<Option<Cow<'p, [String]>>, Fault> {
        if self.target.kind(path)? == Some(Kind::Dir) {
            return Ok(Some(Cow::Borrowed(path)));
        }
        let mut queue: VecDeque<String> = path.iter().cloned().collect();
        let mut stack: RelPath = Vec::with_capacity(path.len());
        let mut links = 0;
        while let Some(comp) = queue.pop_front() {
            match comp.as_str() {
                "" | "." => continue,
                ".." => {
                    // Clamped at the root, like `..` in `/`.
                    stack.pop();
                    continue;
                }
                _ => {}
            }
            stack.push(comp);
            match self.target.kind(&stack)? {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Rule::SymlinkLoop.into());
                    }
                    let link = self.target.readlink(&stack)?;
                    stack.pop();
                    if link.starts_with('/') {
                        stack.clear();
                    }
                    for comp in link.split('/').rev() {
                        queue.push_front(comp.to_string());
                    }
                }
                None => match mode {
                    Resolve::Create => {
                        self.target.make_implied_dir(&stack)?;
                        self.touch(&stack);
                    }
                    Resolve::Marker | Resolve::Lookup => return Ok(None),
                },
                Some(Kind::Other) => match mode {
                    Resolve::Create => {
                        return Err(Fault::Rule(
                            Rule::ParentNotDirectory,
                            Some(format!("{} is not a directory", stack.join("/"))),
                        ))
                    }
                    Resolve::Marker if queue.is_empty() && self.touched.contains(&stack) => {
                        self.target.remove_all(&stack)?;
                        self.target.make_implied_dir(&stack)?;
                    }
                    Resolve::Marker | Resolve::Lookup => return Ok(None),
                },
            }
        }
        Ok(Some(Cow::Owned(stack)))
    }
}

/// A name that is still taken after its removal (only a concurrent writer
/// can do that).
fn still_exists(op: &'static str) -> Fault {
    Fault::Io(op, std::io::Error::from(std::io::ErrorKind::AlreadyExists))
}

fn split(path: &[String]) -> (&[String], &str) {
    let (name, parent) = path.split_last().expect("entry paths below the root");
    (parent, name)
}

/// Inserts `path` into `set` unless it is there; true if it was not. The
/// lookup borrows, so a present path costs no allocation.
pub(crate) fn mark(set: &mut HashSet<RelPath>, path: &[String]) -> bool {
    if set.contains(path) {
        return false;
    }
    set.insert(path.to_vec());
    true
}
