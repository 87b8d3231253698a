//! Atomic output: a result is built in a temporary sibling of its final path
//! and renamed into place only on success, so a failure leaves nothing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Temporary outputs under construction, so a signal handler can remove
/// them if the work cannot stop in time (a read blocked on a silent pipe).
static IN_PROGRESS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes every temporary output still under construction (directories
/// and files). For a signal handler that is about to exit the process.
pub fn abandon_all() {
    let paths = std::mem::take(&mut *IN_PROGRESS.lock().unwrap_or_else(|e| e.into_inner()));
    for path in paths {
        if std::fs::remove_dir_all(&path).is_err() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Records a temporary output file, for [`abandon_all`].
pub(crate) fn register(path: &Path) {
    IN_PROGRESS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.to_path_buf());
}

pub(crate) fn forget(dir: &Path) {
    IN_PROGRESS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|d| d != dir);
}

/// A directory under construction next to its final path.
pub struct Staged {
    tmp: Option<tempfile::TempDir>,
    out: PathBuf,
}

impl Staged {
    /// Reserves `out` (which must not exist) and creates the temporary sibling.
    pub fn new(out: &Path) -> Result<Staged> {
        if out.symlink_metadata().is_ok() {
            return Err(Error::path(
                out.display(),
                "create output",
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.overlayer-"))
            .tempdir_in(parent)
            .map_err(|e| Error::path(parent.display(), "create temporary output", e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::path(tmp.path().display(), "chmod", e))?;
        IN_PROGRESS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tmp.path().to_path_buf());
        Ok(Staged {
            tmp: Some(tmp),
            out: out.to_path_buf(),
        })
    }

    /// Where to build.
    pub fn path(&self) -> &Path {
        self.tmp.as_ref().expect("not committed").path()
    }

    /// Renames the result into place; fails rather than replace an existing path.
    pub fn commit(mut self) -> Result<()> {
        let tmp = self.tmp.take().expect("not committed").keep();
        forget(&tmp);
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            &self.out,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            Error::path(self.out.display(), "rename into place", e.into())
        })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            forget(tmp.path());
            // TempDir's own drop removes the directory.
        }
    }
}
