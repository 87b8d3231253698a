//! What layers hide: every file or symlink some layer holds that the final
//! view does not show as that layer wrote it, because a later layer
//! whited it out, made a parent opaque, or replaced it (a deleted secret
//! stays readable in the lower layer's blob).

use std::collections::HashMap;

use crate::error::Result;
use crate::layer::{EntryKind, LayerInput, RelPath, StackReader};
use crate::limits::ReadOptions;

/// One hidden path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hidden {
    /// `/`-rooted path as the layer wrote it.
    pub path: String,
    /// The layer holding it (0 = bottom).
    pub layer: usize,
    pub size: u64,
    /// The layer that hid it.
    pub hidden_by: usize,
    /// `whiteout`, `opaque directory`, `replaced` or `parent replaced`.
    pub how: &'static str,
}

#[derive(Default)]
struct LayerIndex {
    /// Files and symlinks written, with sizes.
    written: Vec<(RelPath, u64)>,
    /// Every path written (any kind).
    paths: HashMap<RelPath, bool>,
    whiteouts: Vec<RelPath>,
    opaques: Vec<RelPath>,
}

/// Lists what the layers (bottom first) hide. Paths are compared as the
/// archive names them (symlinked parents are not followed).
pub fn hidden<R: LayerInput>(layers: Vec<R>, opts: &ReadOptions) -> Result<Vec<Hidden>> {
    let mut stack = StackReader::new(*opts);
    let mut index: Vec<LayerIndex> = Vec::new();
    let mut layers = layers;
    stack.read_stack(&mut layers, |stack, i, layer| {
        let mut li = LayerIndex::default();
        stack.read_ready(i, layer, |entry, data| {
            match &entry.kind {
                EntryKind::Whiteout => li.whiteouts.push(entry.path.clone()),
                EntryKind::Opaque => li.opaques.push(entry.path.clone()),
                kind => {
                    let is_dir = *kind == EntryKind::Dir;
                    li.paths.insert(entry.path.clone(), is_dir);
                    if matches!(
                        kind,
                        EntryKind::File | EntryKind::Symlink(_) | EntryKind::Hardlink(_)
                    ) {
                        let size = std::io::copy(data, &mut std::io::sink()).unwrap_or(0);
                        li.written.push((entry.path.clone(), size));
                    }
                }
            }
            Ok(())
        })?;
        index.push(li);
        Ok(())
    })?;
    let mut out = Vec::new();
    for (i, li) in index.iter().enumerate() {
        for (path, size) in &li.written {
            if let Some((by, how)) = hider(&index[i + 1..], path) {
                out.push(Hidden {
                    path: format!("/{}", path.join("/")),
                    layer: i,
                    size: *size,
                    hidden_by: i + 1 + by,
                    how,
                });
            }
        }
    }
    Ok(out)
}

/// The first later layer that hides `path`, and how.
fn hider(later: &[LayerIndex], path: &[String]) -> Option<(usize, &'static str)> {
    for (j, li) in later.iter().enumerate() {
        if li.paths.contains_key(path) {
            return Some((j, "replaced"));
        }
        if li.whiteouts.iter().any(|w| path.starts_with(w)) {
            return Some((j, "whiteout"));
        }
        if li
            .opaques
            .iter()
            .any(|o| path.len() > o.len() && path.starts_with(o) && !li.paths.contains_key(path))
        {
            return Some((j, "opaque directory"));
        }
        for n in 1..path.len() {
            if li.paths.get(&path[..n]) == Some(&false) {
                return Some((j, "parent replaced"));
            }
        }
    }
    None
}
