//! A pure in-memory model of the OCI layer rules: the third, independent
//! implementation the property compares with `apply` and with the kernel.
//! It reads case entries directly (no tar, no filesystem) and yields a view.
//!
//! The rules it models are the library's documented ones (`overlayer::rules`
//! doc comment, OCI layer.md): stream order; whiteouts and opaque markers
//! delete lower content only; implied parents 0755 root; symlinks followed in
//! parent components inside the root, `..` clamped at the root.

use std::collections::{BTreeMap, HashMap, HashSet};

use overlayer::tree::{xattr_text, Node, Type, View};
use sha2::{Digest, Sha256};

use crate::case::{xattr_bytes, EntryType, ExpectedError, TarEntry};

#[derive(Debug, Clone)]
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone)]
enum Leaf {
    File(Vec<u8>),
    Symlink(String),
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
}

#[derive(Debug, Clone)]
enum MNode {
    Dir {
        attrs: Attrs,
        kids: BTreeMap<String, MNode>,
    },
    Leaf {
        leaf: Leaf,
        attrs: Attrs,
        ino: u64,
    },
}

impl MNode {
    fn empty_dir(attrs: Attrs) -> MNode {
        MNode::Dir {
            attrs,
            kids: BTreeMap::new(),
        }
    }
    fn is_dir(&self) -> bool {
        matches!(self, MNode::Dir { .. })
    }
}

fn implied() -> Attrs {
    Attrs {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        xattrs: BTreeMap::new(),
    }
}

type Fail = (String, Option<()>);

/// What an entry is, after the whiteout names are read.
enum Op {
    Skip,
    Whiteout(Vec<String>),
    Opaque(Vec<String>),
    Put(Vec<String>),
}

/// Applies a stack of layers to an empty root; the view, or the error the
/// library must report (layer, entry, rule code).
pub fn run(layers: &[Vec<TarEntry>]) -> Result<View, ExpectedError> {
    let mut fs = Model {
        root: MNode::empty_dir(implied()),
        next_ino: 1,
        written: HashSet::new(),
    };
    for (index, layer) in layers.iter().enumerate() {
        fs.written.clear();
        for entry in layer {
            let name = shown_name(&entry.path);
            fs.entry(entry).map_err(|(rule, _)| ExpectedError {
                layer: index,
                entry: name.clone(),
                rule,
            })?;
        }
    }
    Ok(fs.view())
}

fn shown_name(raw: &str) -> String {
    let parts: Vec<&str> = raw
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

fn fail(rule: &str) -> Fail {
    (rule.to_string(), None)
}

struct Model {
    root: MNode,
    next_ino: u64,
    /// Paths this layer wrote, with all their ancestors.
    written: HashSet<Vec<String>>,
}

impl Model {
    fn classify(&self, entry: &TarEntry) -> Result<Op, Fail> {
        let mut parts: Vec<String> = Vec::new();
        for c in entry.path.split('/') {
            if c.is_empty() || c == "." {
                continue;
            }
            if c == ".." {
                return Err(fail("parent-component"));
            }
            if c.len() > 255 {
                return Err(fail("name-too-long"));
            }
            parts.push(c.to_string());
        }
        if parts
            .iter()
            .map(|c| c.len() + 1)
            .sum::<usize>()
            .saturating_sub(1)
            > 4094
        {
            return Err(fail("name-too-long"));
        }
        let aufs = |c: &str| c.starts_with(".wh..wh.") && c != ".wh..wh..opq" && c != ".wh..wh.";
        if parts.iter().any(|c| aufs(c)) {
            return Ok(Op::Skip);
        }
        if entry.uid == u32::MAX || entry.gid == u32::MAX {
            return Err(fail("invalid-owner"));
        }
        if entry.kind == EntryType::Char && entry.rdev.unwrap_or([0, 0]) == [0, 0] {
            return Err(fail("whiteout-device-entry"));
        }
        if entry.kind == EntryType::Symlink && entry.target.as_deref() == Some("") {
            return Err(fail("unsupported-entry-type"));
        }
        if entry.kind == EntryType::Hardlink {
            for c in entry.target.as_deref().unwrap_or("").split('/') {
                if c == ".." {
                    return Err(fail("parent-component"));
                }
                if c.len() > 255 {
                    return Err(fail("name-too-long"));
                }
            }
        }
        let Some(last) = parts.last().cloned() else {
            return if entry.kind == EntryType::Dir {
                Ok(Op::Put(parts))
            } else {
                Err(fail("root-not-directory"))
            };
        };
        if last == ".wh..wh..opq" {
            parts.pop();
            return Ok(Op::Opaque(parts));
        }
        if let Some(name) = last.strip_prefix(".wh.") {
            let name = if last == ".wh..wh." { ".wh." } else { name };
            match name {
                "" => return Err(fail("bare-whiteout")),
                "." | ".." => return Err(fail("whiteout-of-dot")),
                _ => {}
            }
            *parts.last_mut().unwrap() = name.to_string();
            return Ok(Op::Whiteout(parts));
        }
        Ok(Op::Put(parts))
    }

    fn entry(&mut self, entry: &TarEntry) -> Result<(), Fail> {
        match self.classify(entry)? {
            Op::Skip => Ok(()),
            Op::Whiteout(path) => {
                let (name, parent) = path.split_last().unwrap();
                let Some(mut at) = self.walk(parent, Walk::Marker)? else {
                    return Ok(());
                };
                at.push(name.clone());
                let is_dir = self.get(&at).map(MNode::is_dir);
                if self.written.contains(&at) {
                    if is_dir == Some(true) {
                        self.keep_only_written(&at);
                    }
                } else if is_dir.is_some() {
                    self.remove(&at);
                }
                Ok(())
            }
            Op::Opaque(dir) => {
                if let Some(at) = self.walk(&dir, Walk::Marker)? {
                    self.keep_only_written(&at);
                }
                Ok(())
            }
            Op::Put(path) => self.put(entry, &path),
        }
    }

    fn put(&mut self, entry: &TarEntry, path: &[String]) -> Result<(), Fail> {
        let attrs = Attrs {
            mode: entry.mode_bits() & 0o7777,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
            xattrs: entry
                .xattrs
                .iter()
                .map(|(k, v)| (k.clone(), xattr_bytes(v).unwrap_or_default()))
                // Linux keeps user.* xattrs on files and directories only,
                // and none in other namespaces, with longer names or larger
                // values: lenient mode drops them.
                .filter(|(k, v)| {
                    storable(k, v)
                        && (!k.starts_with("user.")
                            || !matches!(
                                entry.kind,
                                EntryType::Symlink
                                    | EntryType::Fifo
                                    | EntryType::Char
                                    | EntryType::Block
                            ))
                })
                .collect(),
        };
        if path.is_empty() {
            if let MNode::Dir { attrs: a, .. } = &mut self.root {
                *a = attrs;
            }
            return Ok(());
        }
        // A hardlink's target is looked up before its own parent is made.
        let link_to = if entry.kind == EntryType::Hardlink {
            let raw = entry.target.clone().unwrap_or_default();
            let tparts: Vec<String> = raw
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(String::from)
                .collect();
            let Some((tname, tparent)) = tparts.split_last() else {
                return Err(fail("hardlink-to-directory"));
            };
            let Some(mut t) = self.walk(tparent, Walk::Lookup)? else {
                return Err(fail("hardlink-target-missing"));
            };
            t.push(tname.clone());
            match self.get(&t) {
                None => return Err(fail("hardlink-target-missing")),
                Some(n) if n.is_dir() => return Err(fail("hardlink-to-directory")),
                Some(n) => Some((t, n.clone())),
            }
        } else {
            None
        };
        let (name, parent) = path.split_last().unwrap();
        let mut at = self.walk(parent, Walk::Create)?.expect("create walks");
        at.push(name.clone());
        let existing = self.get(&at).cloned();
        match entry.kind {
            EntryType::Dir => match existing {
                Some(MNode::Dir { .. }) => {
                    if let Some(MNode::Dir { attrs: a, .. }) = self.get_mut(&at) {
                        *a = attrs;
                    }
                }
                _ => self.set(&at, MNode::empty_dir(attrs)),
            },
            EntryType::Hardlink => {
                let (t, node) = link_to.unwrap();
                if t != at {
                    if t.starts_with(&at) {
                        return Err(fail("hardlink-target-missing"));
                    }
                    self.set(&at, node);
                }
            }
            kind => {
                let leaf = match kind {
                    EntryType::File => Leaf::File(entry.text.as_bytes().to_vec()),
                    EntryType::Symlink => Leaf::Symlink(entry.target.clone().unwrap_or_default()),
                    EntryType::Fifo => Leaf::Fifo,
                    EntryType::Char => {
                        let [a, b] = entry.rdev.unwrap_or([0, 0]);
                        Leaf::Char(a, b)
                    }
                    EntryType::Block => {
                        let [a, b] = entry.rdev.unwrap_or([0, 0]);
                        Leaf::Block(a, b)
                    }
                    _ => unreachable!(),
                };
                let mut attrs = attrs;
                if matches!(leaf, Leaf::Symlink(_)) {
                    attrs.mode = 0o777;
                }
                self.next_ino += 1;
                let ino = self.next_ino;
                self.set(&at, MNode::Leaf { leaf, attrs, ino });
            }
        }
        self.mark(&at);
        Ok(())
    }

    fn mark(&mut self, path: &[String]) {
        for n in 0..=path.len() {
            self.written.insert(path[..n].to_vec());
        }
    }

    fn get(&self, path: &[String]) -> Option<&MNode> {
        let mut node = &self.root;
        for c in path {
            match node {
                MNode::Dir { kids, .. } => node = kids.get(c)?,
                MNode::Leaf { .. } => return None,
            }
        }
        Some(node)
    }

    fn get_mut(&mut self, path: &[String]) -> Option<&mut MNode> {
        let mut node = &mut self.root;
        for c in path {
            match node {
                MNode::Dir { kids, .. } => node = kids.get_mut(c)?,
                MNode::Leaf { .. } => return None,
            }
        }
        Some(node)
    }

    fn set(&mut self, path: &[String], value: MNode) {
        let (name, parent) = path.split_last().unwrap();
        if let Some(MNode::Dir { kids, .. }) = self.get_mut(parent) {
            kids.insert(name.clone(), value);
        }
    }

    fn remove(&mut self, path: &[String]) {
        let (name, parent) = path.split_last().unwrap();
        if let Some(MNode::Dir { kids, .. }) = self.get_mut(parent) {
            kids.remove(name);
        }
    }

    /// Drops everything below `dir` that this layer did not write.
    fn keep_only_written(&mut self, dir: &[String]) {
        let written = self.written.clone();
        fn prune(node: &mut MNode, path: &mut Vec<String>, written: &HashSet<Vec<String>>) {
            if let MNode::Dir { kids, .. } = node {
                kids.retain(|name, _| {
                    path.push(name.clone());
                    let keep = written.contains(path);
                    path.pop();
                    keep
                });
                for (name, kid) in kids.iter_mut() {
                    path.push(name.clone());
                    prune(kid, path, written);
                    path.pop();
                }
            }
        }
        let mut path = dir.to_vec();
        if let Some(node) = self.get_mut(dir) {
            prune(node, &mut path, &written);
        }
    }

    /// Resolves a directory path inside the root.
    fn walk(&mut self, path: &[String], how: Walk) -> Result<Option<Vec<String>>, Fail> {
        let mut todo: Vec<String> = path.iter().rev().cloned().collect();
        let mut at: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c.is_empty() || c == "." {
                continue;
            }
            if c == ".." {
                at.pop();
                continue;
            }
            at.push(c);
            let found = self.get(&at).cloned();
            match found {
                Some(MNode::Dir { .. }) => {}
                Some(MNode::Leaf {
                    leaf: Leaf::Symlink(target),
                    ..
                }) => {
                    hops += 1;
                    if hops > 40 {
                        return Err(fail("symlink-loop"));
                    }
                    at.pop();
                    if target.starts_with('/') {
                        at.clear();
                    }
                    todo.extend(target.split('/').rev().map(String::from));
                }
                None => match how {
                    Walk::Create => {
                        self.set(&at, MNode::empty_dir(implied()));
                        self.mark(&at);
                    }
                    _ => return Ok(None),
                },
                Some(MNode::Leaf { .. }) => match how {
                    Walk::Create => return Err(fail("parent-not-directory")),
                    Walk::Marker if todo.is_empty() && self.written.contains(&at) => {
                        self.set(&at, MNode::empty_dir(implied()));
                    }
                    _ => return Ok(None),
                },
            }
        }
        Ok(Some(at))
    }

    fn view(&self) -> View {
        let mut view = View::default();
        let mut groups: HashMap<u64, Vec<String>> = HashMap::new();
        fn visit(
            node: &MNode,
            path: String,
            view: &mut View,
            groups: &mut HashMap<u64, Vec<String>>,
        ) {
            let (kind, attrs) = match node {
                MNode::Dir { attrs, .. } => (Type::Dir, attrs),
                MNode::Leaf { leaf, attrs, .. } => (
                    match leaf {
                        Leaf::File(_) => Type::File,
                        Leaf::Symlink(_) => Type::Symlink,
                        Leaf::Fifo => Type::Fifo,
                        Leaf::Char(..) => Type::Char,
                        Leaf::Block(..) => Type::Block,
                    },
                    attrs,
                ),
            };
            let mut out = Node {
                kind,
                mode: attrs.mode,
                uid: attrs.uid,
                gid: attrs.gid,
                size: None,
                text: None,
                sha256: None,
                target: None,
                rdev: None,
                xattrs: attrs
                    .xattrs
                    .iter()
                    .filter(|(k, _)| {
                        !k.starts_with("trusted.overlay.") && !k.starts_with("user.overlay.")
                    })
                    .map(|(k, v)| (k.clone(), xattr_text(v)))
                    .collect(),
                mtime: (kind != Type::Dir).then_some(attrs.mtime),
                links: None,
            };
            if let MNode::Leaf { leaf, ino, .. } = node {
                groups.entry(*ino).or_default().push(path.clone());
                match leaf {
                    Leaf::File(data) => {
                        out.size = Some(data.len() as u64);
                        out.sha256 = Some(hex::encode(Sha256::digest(data)));
                        if data.len() <= 64 {
                            out.text = String::from_utf8(data.clone()).ok();
                        }
                    }
                    Leaf::Symlink(t) => out.target = Some(t.clone()),
                    Leaf::Char(a, b) | Leaf::Block(a, b) => out.rdev = Some([*a, *b]),
                    Leaf::Fifo => {}
                }
            }
            view.nodes.insert(path.clone(), out);
            if let MNode::Dir { kids, .. } = node {
                for (name, kid) in kids {
                    let p = if path == "." {
                        name.clone()
                    } else {
                        format!("{path}/{name}")
                    };
                    visit(kid, p, view, groups);
                }
            }
        }
        visit(&self.root, ".".into(), &mut view, &mut groups);
        for mut names in groups.into_values() {
            if names.len() > 1 {
                names.sort();
                for n in &names {
                    view.nodes.get_mut(n).unwrap().links = Some(names[0].clone());
                }
            }
        }
        view
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    Create,
    Marker,
    Lookup,
}

/// xattr(7), written out here apart from the library: one of the four
/// namespaces, a name after it, at most 255 bytes of name and 64 KiB of value.
fn storable(name: &str, value: &[u8]) -> bool {
    let namespaced = ["security.", "system.", "trusted.", "user."]
        .iter()
        .any(|ns| name.len() > ns.len() && name.starts_with(ns));
    namespaced && name.len() <= 255 && !name.contains('\0') && value.len() <= 65536
}
