//! A directory tree as data (a "view"): what a merged overlay or a flattened
//! rootfs shows, captured by a readdir walk AND a lookup of every listed name,
//! and compared field by field.
//!
//! Captured: type, permission bits, owner, size and sha256 of files (with the
//! text of small UTF-8 files, for readable case files), symlink targets,
//! device numbers, xattrs except overlay-private ones, mtimes of
//! non-directories, and hardlink groups. Directory mtimes are left out: they
//! change whenever a child is written, and no spec fixes them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, OFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::spec;
use crate::sys;

/// Files up to this size with UTF-8 content also carry their text.
const INLINE_TEXT_MAX: u64 = 64;

/// The type of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    Dir,
    File,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

/// One node of a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(rename = "type")]
    pub kind: Type,
    /// Permission bits, octal text (`"0755"`).
    #[serde(with = "octal")]
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<[u32; 2]>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// For a file with other names in the view: the first of its names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<String>,
}

mod octal {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{mode:04o}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = String::deserialize(d)?;
        u32::from_str_radix(&text, 8).map_err(serde::de::Error::custom)
    }
}

/// A captured view: relative path (`.` for the root) → node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub nodes: BTreeMap<String, Node>,
    /// Names readdir listed that a lookup could not find (a whiteout left in a
    /// directory the kernel lists raw, for instance): always a defect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub defects: Vec<String>,
}

/// Encodes an xattr value: text when printable UTF-8, else `hex:…`.
pub fn xattr_text(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(s) if s.chars().all(|c| !c.is_control()) && !s.starts_with("hex:") => s.to_string(),
        _ => format!("hex:{}", hex::encode(value)),
    }
}

/// Captures the view of the directory `root`.
pub fn capture(root: &Path) -> Result<View> {
    let fd = rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rfs::Mode::empty(),
    )
    .map_err(|e| Error::path(root.display(), "open", e.into()))?;
    let mut view = View::default();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let stat = rfs::fstat(&fd).map_err(|e| Error::path(root.display(), "stat", e.into()))?;
    let node = describe(fd.as_fd(), None, root, &stat)?;
    view.nodes.insert(".".into(), node);
    walk(fd.as_fd(), root, "", &mut view, &mut inodes)?;
    for mut names in inodes.into_values() {
        if names.len() > 1 {
            names.sort();
            for name in &names {
                view.nodes.get_mut(name).expect("captured").links = Some(names[0].clone());
            }
        }
    }
    view.defects.sort();
    Ok(view)
}

fn walk(
    dir: BorrowedFd<'_>,
    root: &Path,
    prefix: &str,
    view: &mut View,
    inodes: &mut HashMap<(u64, u64), Vec<String>>,
) -> Result<()> {
    let here = if prefix.is_empty() { "." } else { prefix };
    let listing = rfs::Dir::read_from(dir).map_err(|e| Error::path(here, "readdir", e.into()))?;
    let mut names = Vec::new();
    for item in listing {
        let item = item.map_err(|e| Error::path(here, "readdir", e.into()))?;
        let name = item.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    names.sort();
    for name in names {
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let stat = match rfs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => {
                view.defects
                    .push(format!("{rel}: listed by readdir but lookup says ENOENT"));
                continue;
            }
            Err(e) => return Err(Error::path(&rel, "stat", e.into())),
        };
        let node = describe(dir, Some(&name), &root.join(&rel), &stat)?;
        let is_dir = node.kind == Type::Dir;
        if !is_dir && stat.st_nlink > 1 {
            inodes
                .entry((stat.st_dev, stat.st_ino))
                .or_default()
                .push(rel.clone());
        }
        view.nodes.insert(rel.clone(), node);
        if is_dir {
            let fd = sys::open_entry(dir, &name, OFlags::RDONLY | OFlags::DIRECTORY)
                .map_err(|e| Error::path(&rel, "open", e))?;
            walk(fd.as_fd(), root, &rel, view, inodes)?;
        }
    }
    Ok(())
}

fn describe(
    dir: BorrowedFd<'_>,
    name: Option<&str>,
    full: &Path,
    stat: &rfs::Stat,
) -> Result<Node> {
    let rel = full.display().to_string();
    let kind = match rfs::FileType::from_raw_mode(stat.st_mode) {
        rfs::FileType::Directory => Type::Dir,
        rfs::FileType::RegularFile => Type::File,
        rfs::FileType::Symlink => Type::Symlink,
        rfs::FileType::Fifo => Type::Fifo,
        rfs::FileType::CharacterDevice => Type::Char,
        rfs::FileType::BlockDevice => Type::Block,
        _ => Type::Socket,
    };
    let mut node = Node {
        kind,
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        size: None,
        text: None,
        sha256: None,
        target: None,
        rdev: None,
        xattrs: BTreeMap::new(),
        mtime: (kind != Type::Dir).then_some(stat.st_mtime),
        links: None,
    };
    match (kind, name) {
        (Type::File, Some(name)) => {
            let fd = sys::open_entry(dir, name, OFlags::RDONLY)
                .map_err(|e| Error::path(&rel, "open", e))?;
            let mut hasher = Sha256::new();
            let mut file = File::from(fd);
            let mut buf = vec![0u8; 64 * 1024];
            let mut head = Vec::new();
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| Error::path(&rel, "read", e))?;
                if n == 0 {
                    break;
                }
                if (head.len() as u64) <= INLINE_TEXT_MAX {
                    head.extend_from_slice(&buf[..n]);
                }
                hasher.update(&buf[..n]);
            }
            node.size = Some(stat.st_size as u64);
            node.sha256 = Some(hex::encode(hasher.finalize()));
            if (stat.st_size as u64) <= INLINE_TEXT_MAX {
                node.text = String::from_utf8(head).ok();
            }
        }
        (Type::Symlink, Some(name)) => {
            let target = rfs::readlinkat(dir, name, Vec::new())
                .map_err(|e| Error::path(&rel, "readlink", e.into()))?;
            node.target = Some(String::from_utf8_lossy(target.as_bytes()).into_owned());
        }
        (Type::Char | Type::Block, _) => {
            node.rdev = Some([rfs::major(stat.st_rdev), rfs::minor(stat.st_rdev)]);
        }
        _ => {}
    }
    // Through the directory fd, so paths near PATH_MAX still work.
    let at = match name {
        Some(name) => {
            use std::os::fd::AsRawFd;
            std::path::PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
        }
        None => full.to_path_buf(),
    };
    for (key, value) in sys::list_xattrs(&at).map_err(|e| Error::path(&rel, "listxattr", e))? {
        if !spec::is_overlay_private_xattr(&key) {
            node.xattrs.insert(key, xattr_text(&value));
        }
    }
    Ok(node)
}

/// One field that differs between two views at one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub path: String,
    /// `presence`, `type`, `mode`, `uid`, `gid`, `size`, `sha256`, `target`,
    /// `rdev`, `xattrs`, `mtime`, `links` or `defect`.
    pub field: &'static str,
    pub left: String,
    pub right: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {} ≠ {}",
            self.path, self.field, self.left, self.right
        )
    }
}

/// Compares two views field by field; empty means equal.
pub fn diff(left: &View, right: &View) -> Vec<Difference> {
    let mut out = Vec::new();
    for (side, view) in [("left", left), ("right", right)] {
        for defect in &view.defects {
            out.push(Difference {
                path: defect.split(':').next().unwrap_or_default().to_string(),
                field: "defect",
                left: if side == "left" {
                    defect.clone()
                } else {
                    "-".into()
                },
                right: if side == "right" {
                    defect.clone()
                } else {
                    "-".into()
                },
            });
        }
    }
    let paths: std::collections::BTreeSet<&String> =
        left.nodes.keys().chain(right.nodes.keys()).collect();
    for path in paths {
        let (a, b) = match (left.nodes.get(path), right.nodes.get(path)) {
            (Some(a), Some(b)) => (a, b),
            (a, b) => {
                let show = |n: Option<&Node>| match n {
                    Some(n) => format!("{:?}", n.kind).to_lowercase(),
                    None => "absent".into(),
                };
                out.push(Difference {
                    path: path.clone(),
                    field: "presence",
                    left: show(a),
                    right: show(b),
                });
                continue;
            }
        };
        let mut field = |name: &'static str, l: String, r: String| {
            if l != r {
                out.push(Difference {
                    path: path.clone(),
                    field: name,
                    left: l,
                    right: r,
                });
            }
        };
        field("type", format!("{:?}", a.kind), format!("{:?}", b.kind));
        if a.kind != b.kind {
            continue;
        }
        field("mode", format!("{:04o}", a.mode), format!("{:04o}", b.mode));
        field("uid", a.uid.to_string(), b.uid.to_string());
        field("gid", a.gid.to_string(), b.gid.to_string());
        field("size", opt(&a.size), opt(&b.size));
        field("sha256", opt(&a.sha256), opt(&b.sha256));
        field("target", opt(&a.target), opt(&b.target));
        field("rdev", format!("{:?}", a.rdev), format!("{:?}", b.rdev));
        field(
            "xattrs",
            format!("{:?}", a.xattrs),
            format!("{:?}", b.xattrs),
        );
        field("mtime", opt(&a.mtime), opt(&b.mtime));
        field("links", opt(&a.links), opt(&b.links));
    }
    out
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}
