//! Reading options: limits against decompression bombs and hostile archives,
//! strict mode, and cancellation.

use std::sync::atomic::{AtomicBool, Ordering};

const GIB: u64 = 1 << 30;

/// Limits on what a stack of layers may hold, checked while reading so work
/// stops at once when one is exceeded. The defaults are far above real
/// images (the largest Debian-based images inflate to a few GB with a few
/// hundred thousand entries), so only hostile input meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Inflated bytes of all layers together (tar headers included).
    pub max_bytes: u64,
    /// Entries of all layers together.
    pub max_entries: u64,
    /// Size of one file.
    pub max_file_bytes: u64,
    /// Components of one path (also bounds resolution work per entry).
    pub max_depth: usize,
    /// Body of one extension record (PAX `x`/`g`, GNU `L`/`K`), checked at
    /// its header before the body is read: these records are held in memory
    /// whole, so this bounds what one header can make the reader allocate.
    pub max_extension_bytes: u64,
}

impl Limits {
    /// 64 GiB inflated in all.
    pub const DEFAULT_MAX_BYTES: u64 = 64 * GIB;
    /// Ten million entries in all.
    pub const DEFAULT_MAX_ENTRIES: u64 = 10_000_000;
    /// 32 GiB for one file.
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 32 * GIB;
    /// 1,024 path components (a path that deep is already longer than
    /// PATH_MAX with names of more than three bytes).
    pub const DEFAULT_MAX_DEPTH: usize = 1024;
    /// 1 MiB for one extension record: real ones hold a long name (at most
    /// PATH_MAX) or a few xattrs (Linux caps a value at 64 KiB).
    pub const DEFAULT_MAX_EXTENSION_BYTES: u64 = 1 << 20;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
            max_depth: Self::DEFAULT_MAX_DEPTH,
            max_extension_bytes: Self::DEFAULT_MAX_EXTENSION_BYTES,
        }
    }
}

/// How layers are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    pub limits: Limits,
    /// Refuse what the spec forbids or tools disagree on (duplicate entries,
    /// `.wh.` directory components, whiteouts that are not empty regular
    /// files, AUFS metadata) instead of the lenient handling, and report
    /// setuid/setgid files and device nodes.
    pub strict: bool,
}

/// Something reported without refusing the layer: in strict mode setuid and
/// setgid files and device nodes; in lenient mode what was dropped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Notice {
    pub layer: usize,
    pub entry: String,
    pub what: &'static str,
}

/// What reading a stack took.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub entries: u64,
    /// Inflated bytes read.
    pub bytes: u64,
    pub notices: Vec<Notice>,
}

static CANCEL: AtomicBool = AtomicBool::new(false);

/// Asks every running apply or convert to stop (for a Ctrl-C handler); the
/// work fails with [`crate::Error::Cancelled`] and leaves nothing behind.
pub fn cancel() {
    CANCEL.store(true, Ordering::Relaxed);
}

/// True once [`cancel`] was called.
pub fn cancelled() -> bool {
    CANCEL.load(Ordering::Relaxed)
}
