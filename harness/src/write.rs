//! The write-path property: generated lower stacks, a writable overlay over
//! their conversion, a generated sequence of real syscalls on the merged
//! view, then `export` of the upper. Property: applying the lower layers
//! plus the exported layer gives the kernel's merged view after the writes.
//!
//! Lower layers hold symlinks to `/` and `..`, so every operation resolves
//! its parent with `openat2(RESOLVE_IN_ROOT)` from the merged root and acts
//! on the last component without following it: nothing reaches the host.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use proptest::prelude::*;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};

/// One syscall-level operation on the merged view. Case files write them
/// as text, e.g. `rename d1 d2` (see [`WriteOp::from_str`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Create(String, String),
    Append(String, String),
    Truncate(String),
    Chmod(String, u32),
    Chown(String, u32),
    SetXattr(String, String),
    Unlink(String),
    RemoveTree(String),
    Rename(String, String),
    Mkdir(String),
    Symlink(String, String),
    Hardlink(String, String),
}

impl std::str::FromStr for WriteOp {
    type Err = String;

    /// `create PATH TEXT`, `append PATH TEXT`, `truncate PATH`, `chmod PATH
    /// OCTAL`, `chown PATH ID` (uid and gid), `setxattr PATH VALUE`
    /// (`user.w`), `unlink PATH`, `rm-r PATH`, `rename FROM TO`, `mkdir
    /// PATH`, `symlink TARGET PATH`, `hardlink EXISTING NEW`.
    fn from_str(text: &str) -> Result<Self, String> {
        let words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
        let bad = || format!("cannot read the write {text:?}");
        let number = |w: &str, radix| u32::from_str_radix(w, radix).map_err(|_| bad());
        Ok(match words.as_slice() {
            [op, p, t] if op == "create" => WriteOp::Create(p.clone(), t.clone()),
            [op, p, t] if op == "append" => WriteOp::Append(p.clone(), t.clone()),
            [op, p] if op == "truncate" => WriteOp::Truncate(p.clone()),
            [op, p, m] if op == "chmod" => WriteOp::Chmod(p.clone(), number(m, 8)?),
            [op, p, id] if op == "chown" => WriteOp::Chown(p.clone(), number(id, 10)?),
            [op, p, v] if op == "setxattr" => WriteOp::SetXattr(p.clone(), v.clone()),
            [op, p] if op == "unlink" => WriteOp::Unlink(p.clone()),
            [op, p] if op == "rm-r" => WriteOp::RemoveTree(p.clone()),
            [op, a, b] if op == "rename" => WriteOp::Rename(a.clone(), b.clone()),
            [op, p] if op == "mkdir" => WriteOp::Mkdir(p.clone()),
            [op, t, p] if op == "symlink" => WriteOp::Symlink(t.clone(), p.clone()),
            [op, a, b] if op == "hardlink" => WriteOp::Hardlink(a.clone(), b.clone()),
            _ => return Err(bad()),
        })
    }
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..=3)
        .prop_map(|p| p.join("/"))
}

/// A sequence of up to 10 operations. `redirect`: for a mount with
/// `redirect_dir` and `metacopy` on, renames and metadata changes (what
/// makes renamed directories and metacopy files) are made more likely.
pub fn ops(redirect: bool) -> impl Strategy<Value = Vec<WriteOp>> {
    let (rename, meta) = if redirect { (6, 3) } else { (2, 1) };
    let op = prop_oneof![
        3 => (path(), prop_oneof![Just("x"), Just("yy")]).prop_map(|(p, t)| WriteOp::Create(p, t.into())),
        1 => path().prop_map(|p| WriteOp::Append(p, "+".into())),
        1 => path().prop_map(WriteOp::Truncate),
        meta => (path(), prop_oneof![Just(0o600u32), Just(0o755), Just(0o4755)]).prop_map(|(p, m)| WriteOp::Chmod(p, m)),
        meta => (path(), prop_oneof![Just(0u32), Just(1000)]).prop_map(|(p, u)| WriteOp::Chown(p, u)),
        1 => (path(), prop_oneof![Just("1"), Just("2")]).prop_map(|(p, v)| WriteOp::SetXattr(p, v.into())),
        2 => path().prop_map(WriteOp::Unlink),
        2 => path().prop_map(WriteOp::RemoveTree),
        rename => (path(), path()).prop_map(|(a, b)| WriteOp::Rename(a, b)),
        2 => path().prop_map(WriteOp::Mkdir),
        1 => (prop_oneof![Just("a"), Just("/b"), Just("../c")], path()).prop_map(|(t, p)| WriteOp::Symlink(t.into(), p)),
        1 => (path(), path()).prop_map(|(a, b)| WriteOp::Hardlink(a, b)),
    ];
    prop::collection::vec(op, 0..10)
}

/// The parent directory of `rel` inside `root`, resolved like a chroot, and
/// the last component.
fn parent<'p>(root: BorrowedFd<'_>, rel: &'p str) -> Option<(OwnedFd, &'p str)> {
    let (dir, name) = match rel.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => (".", rel),
    };
    let fd = rfs::openat2(
        root,
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    Some((fd, name))
}

fn is_symlink(dir: BorrowedFd<'_>, name: &str) -> bool {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|s| rfs::FileType::from_raw_mode(s.st_mode) == rfs::FileType::Symlink)
}

fn remove_tree(dir: BorrowedFd<'_>, name: &str) {
    if rfs::unlinkat(dir, name, AtFlags::empty()).is_ok() {
        return;
    }
    if let Ok(fd) = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        let names: Vec<String> = rfs::Dir::read_from(&fd)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| String::from_utf8_lossy(e.file_name().to_bytes()).into_owned())
                    .filter(|n| n != "." && n != "..")
                    .collect()
            })
            .unwrap_or_default();
        for n in names {
            remove_tree(fd.as_fd(), &n);
        }
    }
    let _ = rfs::unlinkat(dir, name, AtFlags::REMOVEDIR);
}

/// Runs `ops` on the merged view at `merged`; failures (ENOENT, EXDEV, …)
/// are part of the game and ignored.
pub fn run_ops(merged: &Path, ops: &[WriteOp]) {
    let Ok(root) = rfs::open(
        merged,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let root = root.as_fd();
    for op in ops {
        let _ = run_op(root, op);
    }
}

fn run_op(root: BorrowedFd<'_>, op: &WriteOp) -> Option<()> {
    let open_file = |rel: &str, flags: OFlags| -> Option<OwnedFd> {
        let (dir, name) = parent(root, rel)?;
        // NONBLOCK: opening a fifo for writing must fail (ENXIO), not wait.
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        rfs::openat(&dir, name, flags, Mode::from_raw_mode(0o644)).ok()
    };
    match op {
        WriteOp::Create(p, text) => {
            let fd = open_file(p, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC)?;
            std::fs::File::from(fd).write_all(text.as_bytes()).ok()
        }
        WriteOp::Append(p, text) => {
            let fd = open_file(p, OFlags::WRONLY | OFlags::APPEND)?;
            std::fs::File::from(fd).write_all(text.as_bytes()).ok()
        }
        WriteOp::Truncate(p) => {
            let fd = open_file(p, OFlags::WRONLY)?;
            rfs::ftruncate(&fd, 0).ok()
        }
        WriteOp::Chmod(p, mode) => {
            let (dir, name) = parent(root, p)?;
            if is_symlink(dir.as_fd(), name) {
                return None;
            }
            rfs::chmodat(&dir, name, Mode::from_raw_mode(*mode), AtFlags::empty()).ok()
        }
        WriteOp::Chown(p, uid) => {
            let (dir, name) = parent(root, p)?;
            let id = Some(rfs::Uid::from_raw(*uid));
            rfs::chownat(
                &dir,
                name,
                id,
                Some(rfs::Gid::from_raw(*uid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .ok()
        }
        WriteOp::SetXattr(p, value) => {
            let (dir, name) = parent(root, p)?;
            overlayer::sys::set_xattr_at(dir.as_fd(), name, "user.w", value.as_bytes()).ok()
        }
        WriteOp::Unlink(p) => {
            let (dir, name) = parent(root, p)?;
            rfs::unlinkat(&dir, name, AtFlags::empty()).ok()
        }
        WriteOp::RemoveTree(p) => {
            let (dir, name) = parent(root, p)?;
            remove_tree(dir.as_fd(), name);
            Some(())
        }
        WriteOp::Rename(a, b) => {
            let (da, na) = parent(root, a)?;
            let (db, nb) = parent(root, b)?;
            rfs::renameat(&da, na, &db, nb).ok()
        }
        WriteOp::Mkdir(p) => {
            let (dir, name) = parent(root, p)?;
            rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)).ok()
        }
        WriteOp::Symlink(target, p) => {
            let (dir, name) = parent(root, p)?;
            rfs::symlinkat(target.as_str(), &dir, name).ok()
        }
        WriteOp::Hardlink(a, b) => {
            let (da, na) = parent(root, a)?;
            let (db, nb) = parent(root, b)?;
            rfs::linkat(&da, na, &db, nb, AtFlags::empty()).ok()
        }
    }
}
