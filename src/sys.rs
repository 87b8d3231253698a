//! The only module that talks to the kernel directly: confined opens,
//! xattrs on any node type, and mounts. Everything else is plain Rust.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};

/// `openat2(root, path, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS)`: opens a path below `root` and fails (ELOOP,
/// EXDEV) rather than follow any symlink or leave the root.
pub fn open_beneath(root: BorrowedFd<'_>, path: &str, flags: OFlags) -> io::Result<OwnedFd> {
    let path = if path.is_empty() { "." } else { path };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    loop {
        match rfs::openat2(root, path, flags | OFlags::CLOEXEC, Mode::empty(), resolve) {
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Opens a directory below `root` for `*at` calls (`O_PATH`).
pub fn open_dir_path(root: BorrowedFd<'_>, path: &str) -> io::Result<OwnedFd> {
    open_beneath(root, path, OFlags::PATH | OFlags::DIRECTORY)
}

/// Opens the single entry `name` of `dir` without following it.
pub fn open_entry(dir: BorrowedFd<'_>, name: &str, flags: OFlags) -> io::Result<OwnedFd> {
    Ok(rfs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Sets an xattr on the entry `name` of `dir`, whatever its type.
///
/// Regular files and directories are opened and `fsetxattr`ed; symlinks,
/// fifos and devices cannot be opened for that, so an `O_PATH|O_NOFOLLOW` fd
/// is used through `/proc/self/fd`, which reaches the inode itself.
pub fn set_xattr_at(dir: BorrowedFd<'_>, name: &str, key: &str, value: &[u8]) -> io::Result<()> {
    let fd = open_entry(dir, name, OFlags::PATH)?;
    rfs::setxattr(
        proc_fd_path(fd.as_fd()),
        key,
        value,
        rfs::XattrFlags::empty(),
    )?;
    Ok(())
}

/// Sets an xattr on an open file or directory.
pub fn fset_xattr(fd: BorrowedFd<'_>, key: &str, value: &[u8]) -> io::Result<()> {
    Ok(rfs::fsetxattr(fd, key, value, rfs::XattrFlags::empty())?)
}

/// Removes every xattr of an open file or directory.
pub fn fclear_xattrs(fd: BorrowedFd<'_>) -> io::Result<()> {
    for key in split_names(&flist(fd)?) {
        match rfs::fremovexattr(fd, key.as_str()) {
            Ok(()) | Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn flist(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match rfs::flistxattr(fd, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// All xattrs of a path (not following a final symlink), sorted by name.
pub fn list_xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rfs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    names.truncate(n);
    let mut out = Vec::new();
    for key in split_names(&names) {
        let mut value = vec![0u8; 256];
        let len = loop {
            match rfs::lgetxattr(path, key.as_str(), &mut value[..]) {
                Ok(len) => break Some(len),
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 16, 0),
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(len) = len {
            value.truncate(len);
            out.push((key, value));
        }
    }
    out.sort();
    Ok(out)
}

/// One xattr of a path (not following a final symlink), if set.
pub fn get_xattr(path: &Path, key: &str) -> io::Result<Option<Vec<u8>>> {
    let mut value = vec![0u8; 256];
    match rfs::lgetxattr(path, key, &mut value[..]) {
        Ok(len) => {
            value.truncate(len);
            Ok(Some(value))
        }
        Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn split_names(list: &[u8]) -> Vec<String> {
    list.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    use std::os::fd::AsRawFd;
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

/// `mknodat(dir, name, S_IFCHR, 0, makedev(0, 0))`: an overlay whiteout.
pub fn make_whiteout(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    Ok(rfs::mknodat(
        dir,
        name,
        rfs::FileType::CharacterDevice,
        Mode::empty(),
        rfs::makedev(0, 0),
    )?)
}

/// Access and modification time both `mtime` seconds (layers carry one).
pub fn times(mtime: i64) -> rfs::Timestamps {
    let ts = rfs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    rfs::Timestamps {
        last_access: ts,
        last_modification: ts,
    }
}

/// `utimensat(dir, name, {mtime, mtime}, AT_SYMLINK_NOFOLLOW)`.
pub fn set_mtime_at(dir: BorrowedFd<'_>, name: &str, mtime: i64) -> io::Result<()> {
    Ok(rfs::utimensat(
        dir,
        name,
        &times(mtime),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Creates a tmpfs at `target` (in the caller's mount namespace).
pub fn mount_tmpfs(target: &Path) -> io::Result<()> {
    use rustix::mount::{mount, MountFlags};
    let data = CString::new("mode=0755").expect("no NUL");
    Ok(mount(
        "overlayer",
        target,
        "tmpfs",
        MountFlags::empty(),
        Some(data.as_c_str()),
    )?)
}

/// Mounts an overlay with the legacy option string `data` at `target`.
pub fn mount_overlay(target: &Path, data: &str, read_only: bool) -> io::Result<()> {
    use rustix::mount::{mount, MountFlags};
    let data = CString::new(data).map_err(|_| io::Error::other("NUL in mount options"))?;
    let flags = if read_only {
        MountFlags::RDONLY
    } else {
        MountFlags::empty()
    };
    Ok(mount(
        "overlay",
        target,
        "overlay",
        flags,
        Some(data.as_c_str()),
    )?)
}

/// `umount2(target, MNT_DETACH)`.
pub fn unmount(target: &Path) -> io::Result<()> {
    Ok(rustix::mount::unmount(
        target,
        rustix::mount::UnmountFlags::DETACH,
    )?)
}

/// Gives the calling thread its own mount namespace and working directory,
/// with every mount private, so nothing it mounts is seen outside it and all
/// of it vanishes when the thread ends.
#[allow(unsafe_code)]
pub fn unshare_mount_namespace() -> io::Result<()> {
    use rustix::thread::UnshareFlags;
    // SAFETY: FILES is not unshared, so fds stay valid across threads; NEWNS
    // and FS only change this thread's view of mounts and its cwd/root.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS | UnshareFlags::FS)? };
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::REC | rustix::mount::MountPropagationFlags::PRIVATE,
    )?;
    Ok(())
}

/// Changes the calling thread's working directory (per-thread after
/// `unshare_mount_namespace`).
pub fn chdir(path: &Path) -> io::Result<()> {
    Ok(rustix::process::chdir(path)?)
}

/// Descriptors the directory caches of apply and convert can hold at once,
/// with room for the files being written.
pub const FD_TABLE_SLOTS: i32 = 256;

/// Grows this process's descriptor table to at least [`FD_TABLE_SLOTS`]
/// now, by duplicating a descriptor to slot `FD_TABLE_SLOTS - 1` and
/// closing it again (the table never shrinks).
///
/// Why: a process with more than one thread (an inflating thread, a signal
/// thread) pays a full RCU grace period each time the table grows
/// (`expand_fdtable` waits in `synchronize_rcu` when the table is shared),
/// measured at ~20 ms per growth here; the directory caches grow it from 64
/// to 256 slots in two steps. Called before any thread is started, the
/// growth is free. Best effort: a lower `RLIMIT_NOFILE` leaves it as it is.
pub fn reserve_fd_table() {
    reserve_fd_slots(FD_TABLE_SLOTS);
}

fn reserve_fd_slots(slots: i32) {
    let Ok(fd) = rfs::open("/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()) else {
        return;
    };
    let _ = rustix::io::fcntl_dupfd_cloexec(&fd, slots - 1);
}

/// `pread(2)` at `offset`, retried on EINTR.
pub fn pread(from: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        match rustix::io::pread(from, &mut *buf, offset) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// `copy_file_range(2)` of up to `len` bytes from `from` at `*offset` (which
/// it advances) to `to` at its file position: the bytes go file to file in
/// the kernel, without a copy through user space. `Ok(None)` where this
/// pair of files cannot do it: EXDEV (different filesystems before 5.3 and
/// again since 5.19), EINVAL, EOPNOTSUPP or ENOSYS; the caller copies
/// through a buffer instead. `Ok(Some(0))` is the end of `from`.
pub fn copy_range(
    from: BorrowedFd<'_>,
    offset: &mut u64,
    to: BorrowedFd<'_>,
    len: usize,
) -> io::Result<Option<usize>> {
    use rustix::io::Errno;
    loop {
        match rfs::copy_file_range(from, Some(&mut *offset), to, None, len) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::INTR) => continue,
            Err(Errno::XDEV | Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    fn fd_slots() -> i32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .expect("FDSize in /proc/self/status")
            .trim()
            .parse()
            .unwrap()
    }

    /// `FDSize` is the table's slot count. 4096, not the 256 in use: the
    /// runner's other tests may have grown the table that far already.
    #[test]
    fn reserving_grows_the_descriptor_table() {
        let before = fd_slots();
        assert!(before < 4096, "FDSize {before} already");
        super::reserve_fd_slots(4096);
        assert!(fd_slots() >= 4096, "FDSize {} after", fd_slots());
    }
}
