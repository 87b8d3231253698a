//! Mounting converted layers read-only with overlayfs, inside a private
//! mount namespace that dies with the thread that made it: no mount outlives
//! a run, even one that panics.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sys;

/// Runs `work` on a fresh thread with its own mount namespace (all mounts
/// private) and working directory. Every mount `work` makes disappears when
/// it returns or panics.
pub fn in_private_namespace<T, F>(work: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            sys::unshare_mount_namespace()
                .map_err(|e| Error::path("/", "unshare mount namespace (needs root)", e))?;
            work()
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Mounts a tmpfs on `dir`; call inside [`in_private_namespace`].
pub fn mount_tmpfs(dir: &Path) -> Result<()> {
    sys::mount_tmpfs(dir).map_err(|e| Error::path(dir.display(), "mount tmpfs", e))
}

/// The empty bottom layer added under a single-layer stack.
const EMPTY_LOWER: &str = ".empty-lower";

/// Options of a read-only overlay mount.
#[derive(Debug, Clone, Default)]
pub struct OverlayMount {
    /// Directory the layer names are relative to (it becomes the thread's
    /// working directory, so the option string stays short).
    pub base: PathBuf,
    /// Layer directory names under `base`, bottom first.
    pub layers: Vec<String>,
    /// `-o userxattr`: read `user.overlay.*` markers.
    pub userxattr: bool,
}

impl OverlayMount {
    /// The legacy option string: `lowerdir=top:…:bottom[,userxattr]`. A
    /// read-only overlay needs two lowers, so a single layer gets an empty
    /// directory below it.
    pub fn options(&self) -> String {
        let top_first: Vec<String> = self.layers.iter().rev().cloned().collect();
        let mut data = format!("lowerdir={}", readonly_lowerdir(top_first, EMPTY_LOWER));
        if self.userxattr {
            data.push_str(",userxattr");
        }
        data
    }

    /// Mounts at `target`; call inside [`in_private_namespace`]. The working
    /// directory is `base` during the mount call only.
    pub fn mount(&self, target: &Path) -> Result<()> {
        let target = std::path::absolute(target)
            .map_err(|e| Error::path(target.display(), "absolute path", e))?;
        let back = std::env::current_dir().map_err(|e| Error::path(".", "getcwd", e))?;
        let result = self.mount_from_base(&target);
        sys::chdir(&back).map_err(|e| Error::path(back.display(), "chdir back", e))?;
        result
    }

    fn mount_from_base(&self, target: &Path) -> Result<()> {
        sys::chdir(&self.base).map_err(|e| Error::path(self.base.display(), "chdir", e))?;
        if self.layers.len() == 1 {
            let empty = self.base.join(EMPTY_LOWER);
            if !empty.exists() {
                std::fs::create_dir(&empty)
                    .map_err(|e| Error::path(empty.display(), "mkdir", e))?;
            }
        }
        let options = self.options();
        sys::mount_overlay(target, &options, true)
            .map_err(|e| Error::path(target.display(), "mount overlay", e))
    }
}

/// The `lowerdir=` value of a read-only mount of `top_first`: overlayfs
/// needs two lower layers without an upper, so a single layer gets the
/// (empty) directory `empty` below it.
pub fn readonly_lowerdir(mut top_first: Vec<String>, empty: &str) -> String {
    if top_first.len() == 1 {
        top_first.push(empty.to_string());
    }
    top_first.join(":")
}

/// Unmounts `target` (lazily).
pub fn unmount(target: &Path) -> Result<()> {
    sys::unmount(target).map_err(|e| Error::path(target.display(), "unmount", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_lists_top_layer_first() {
        let m = OverlayMount {
            base: PathBuf::new(),
            layers: vec!["0".into(), "1".into(), "2".into()],
            userxattr: true,
        };
        assert_eq!(m.options(), "lowerdir=2:1:0,userxattr");
    }

    #[test]
    fn single_layer_gets_an_empty_lower() {
        let m = OverlayMount {
            base: PathBuf::new(),
            layers: vec!["0".into()],
            userxattr: false,
        };
        assert_eq!(m.options(), "lowerdir=0:.empty-lower");
    }
}
