//! The named, documented differences between the kernel's merged view and the
//! flat rootfs. Comparisons allow exactly these, and report when they did.

use std::collections::HashMap;

use overlayer::tree::{diff, Difference, View};

/// A difference the kernel cannot avoid showing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub name: &'static str,
    pub doc: &'static str,
}

/// OCI layer.md lets a hardlink name a file of a lower layer; overlay layer
/// directories cannot share an inode, so the converter copies the file into
/// the upper layer and the merged view shows separate inodes where the flat
/// rootfs has one. Allowed: the merged view's hardlink groups are a
/// refinement of the flat rootfs's (same content and metadata, fewer links).
pub const CROSS_LAYER_HARDLINK: Known = Known {
    name: "cross-layer-hardlink",
    doc: "hardlinks spanning layers are copies in overlay form: the merged view's link groups refine the flat ones",
};

/// Every known difference, in one place.
pub const KNOWN: &[Known] = &[CROSS_LAYER_HARDLINK];

/// The result of comparing a kernel-side view with a flat-side view.
#[derive(Debug, Default)]
pub struct Comparison {
    pub differences: Vec<Difference>,
    pub allowed: Vec<&'static str>,
}

impl Comparison {
    pub fn same(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Compares `kernel_side` (whose hardlink groups may be finer) with
/// `flat_side`, allowing exactly the known differences.
pub fn compare(kernel_side: &View, flat_side: &View) -> Comparison {
    let mut differences = diff(kernel_side, flat_side);
    let mut allowed = Vec::new();
    if differences.iter().any(|d| d.field == "links") && refines(kernel_side, flat_side) {
        differences.retain(|d| d.field != "links");
        allowed.push(CROSS_LAYER_HARDLINK.name);
    }
    Comparison {
        differences,
        allowed,
    }
}

/// True if every hardlink group of `finer` lies inside one group of `coarser`.
fn refines(finer: &View, coarser: &View) -> bool {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (path, node) in &finer.nodes {
        let Some(group) = node.links.as_deref() else {
            continue;
        };
        let Some(outer) = coarser.nodes.get(path).and_then(|n| n.links.as_deref()) else {
            return false;
        };
        match seen.insert(group, outer) {
            Some(prev) if prev != outer => return false,
            _ => {}
        }
    }
    true
}
