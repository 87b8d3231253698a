//! Looking paths up in a stack of overlay-native lower layers the way the
//! kernel does (overlayfs.rst, "Directories" and "whiteouts and opaque
//! directories"): a whiteout ends the lookup, a non-directory hides
//! everything below it, an opaque directory stops merging.

use std::path::{Path, PathBuf};

use crate::spec;
use crate::sys;

/// What a lower stack holds at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Missing,
    /// A directory: the layer directories that merge into it, top first.
    Dir(Vec<PathBuf>),
    /// A non-directory, in this layer file.
    Other(PathBuf),
}

/// A read-only stack of overlay-native layer directories.
#[derive(Debug, Clone)]
pub struct LowerStack {
    /// Top first, as in `lowerdir=`.
    layers: Vec<PathBuf>,
    userxattr: bool,
}

impl LowerStack {
    /// `bottom_first`: the layer directories, bottom first.
    pub fn new(bottom_first: &[PathBuf], userxattr: bool) -> Self {
        LowerStack {
            layers: bottom_first.iter().rev().cloned().collect(),
            userxattr,
        }
    }

    /// The value of the overlay xattr `overlay.SUFFIX` of `path`, in this
    /// stack's namespace.
    pub fn marker(&self, path: &Path, suffix: &str) -> Option<Vec<u8>> {
        sys::get_xattr(path, &spec::overlay_xattr(self.userxattr, suffix))
            .ok()
            .flatten()
    }

    /// True if `path` (a file in a layer) is a whiteout: a char device 0/0,
    /// or (6.7+) an empty regular file with `overlay.whiteout` whose parent
    /// carries `overlay.opaque="x"`.
    pub fn is_whiteout(&self, path: &Path) -> bool {
        is_whiteout(path, self.userxattr)
    }

    /// True if `dir` is an opaque directory (`overlay.opaque="y"`).
    pub fn is_opaque(&self, dir: &Path) -> bool {
        self.marker(dir, spec::OPAQUE_XATTR_SUFFIX).as_deref() == Some(spec::OPAQUE_YES)
    }

    /// Looks `rel` (components) up through the stack.
    pub fn lookup(&self, rel: &[String]) -> Found {
        let mut stack: Vec<PathBuf> = self.layers.clone();
        for (depth, name) in rel.iter().enumerate() {
            let last = depth + 1 == rel.len();
            let mut next = Vec::new();
            for dir in &stack {
                let p = dir.join(name);
                let Ok(meta) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if self.is_whiteout(&p) {
                    break;
                }
                if meta.is_dir() {
                    next.push(p.clone());
                    if self.is_opaque(&p) {
                        break;
                    }
                } else {
                    if next.is_empty() && last {
                        return Found::Other(p);
                    }
                    break;
                }
            }
            if next.is_empty() {
                return Found::Missing;
            }
            stack = next;
        }
        Found::Dir(stack)
    }

    /// Names visible in the merged lower directory `rel`.
    pub fn children(&self, rel: &[String]) -> Vec<String> {
        let Found::Dir(dirs) = self.lookup(rel) else {
            return Vec::new();
        };
        let mut names = std::collections::BTreeSet::new();
        let mut hidden = std::collections::BTreeSet::new();
        for dir in dirs {
            let Ok(list) = std::fs::read_dir(&dir) else {
                continue;
            };
            for item in list.flatten() {
                let name = item.file_name().to_string_lossy().into_owned();
                if hidden.contains(&name) || names.contains(&name) {
                    continue;
                }
                if self.is_whiteout(&item.path()) {
                    hidden.insert(name);
                } else {
                    names.insert(name);
                }
            }
        }
        names.into_iter().collect()
    }
}

/// See [`LowerStack::is_whiteout`].
pub fn is_whiteout(path: &Path, userxattr: bool) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if meta.file_type().is_char_device() {
        return meta.rdev() == 0;
    }
    if !meta.is_file() || meta.len() != 0 {
        return false;
    }
    let has = |p: &Path, suffix| {
        sys::get_xattr(p, &spec::overlay_xattr(userxattr, suffix))
            .ok()
            .flatten()
    };
    let marked = has(path, spec::WHITEOUT_XATTR_SUFFIX).is_some();
    let parent_x = path
        .parent()
        .and_then(|d| has(d, spec::OPAQUE_XATTR_SUFFIX))
        .is_some_and(|v| v == spec::OPAQUE_XWHITEOUTS);
    marked && parent_x
}
