//! Typed errors: every one names the layer (0 = bottom), the entry and the
//! rule it broke, so a user can find the offending header.

use std::fmt;
use std::io;

/// A rule of the OCI layer format or of overlayer's confinement that an entry
/// broke. `code()` is stable and used in case files and JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A `..` component in an entry name (OCI layer.md: entries are relative
    /// to the root; `..` could climb out of it).
    ParentComponent,
    /// A name that is not valid UTF-8 (overlayer handles UTF-8 names only).
    NonUtf8Name,
    /// A path component longer than NAME_MAX (255 bytes), which no Linux
    /// filesystem can hold.
    NameTooLong,
    /// A bare `.wh.`: a whiteout of nothing (layer.md: SHOULD be an error).
    BareWhiteout,
    /// `.wh..` or `.wh...`: a whiteout of `.` or `..`.
    WhiteoutOfDot,
    /// A character device 0/0 entry: on an overlay layer it would be a
    /// whiteout, so it cannot be content.
    WhiteoutDevice,
    /// The root (`.`, `/`) given as something other than a directory.
    RootNotDirectory,
    /// More than 40 symlinks while resolving one path.
    SymlinkLoop,
    /// A path component below which the entry lives is not a directory.
    ParentNotDirectory,
    /// A hardlink names a target that does not exist.
    HardlinkTargetMissing,
    /// A hardlink names a directory.
    HardlinkToDirectory,
    /// A tar entry type overlayer does not apply (e.g. GNU sparse, socket).
    UnsupportedEntryType,
    /// The archive cannot be read (truncated, corrupt compression, bad header).
    CorruptArchive,
    /// A uid or gid of 4294967295: `(uid_t)-1`, which chown reads as
    /// "leave unchanged", so the entry would silently keep another owner.
    InvalidOwner,
    /// More inflated bytes than `--max-bytes` (all layers together).
    LimitBytes,
    /// More entries than `--max-entries` (all layers together).
    LimitEntries,
    /// A file larger than `--max-file-bytes`.
    LimitFileBytes,
    /// A path deeper than `--max-depth` components.
    LimitDepth,
    /// An extension record (PAX `x`/`g`, GNU `L`/`K`) larger than
    /// `--max-extension-bytes`, refused at its header before it is read.
    LimitExtensionBytes,
    /// Strict: the same path twice in one layer (layer.md forbids it).
    DuplicateEntry,
    /// Strict: `.wh.` at the start of a directory component.
    WhiteoutInnerComponent,
    /// Strict: a whiteout or opaque marker that is not an empty regular file.
    WhiteoutNotRegular,
    /// Strict: AUFS `.wh..wh.*` metadata, which lenient mode skips.
    AufsMetadata,
    /// Strict: `user.*` xattrs on a symlink, fifo or device node, which
    /// Linux allows only on regular files and directories (xattr(7));
    /// lenient mode drops them with a notice.
    UserXattrOnSpecialFile,
}

impl Rule {
    /// Stable identifier, used in case files and JSON.
    pub fn code(self) -> &'static str {
        match self {
            Rule::ParentComponent => "parent-component",
            Rule::NonUtf8Name => "non-utf8-name",
            Rule::NameTooLong => "name-too-long",
            Rule::BareWhiteout => "bare-whiteout",
            Rule::WhiteoutOfDot => "whiteout-of-dot",
            Rule::WhiteoutDevice => "whiteout-device-entry",
            Rule::RootNotDirectory => "root-not-directory",
            Rule::SymlinkLoop => "symlink-loop",
            Rule::ParentNotDirectory => "parent-not-directory",
            Rule::HardlinkTargetMissing => "hardlink-target-missing",
            Rule::HardlinkToDirectory => "hardlink-to-directory",
            Rule::UnsupportedEntryType => "unsupported-entry-type",
            Rule::CorruptArchive => "corrupt-archive",
            Rule::InvalidOwner => "invalid-owner",
            Rule::LimitBytes => "limit-bytes",
            Rule::LimitEntries => "limit-entries",
            Rule::LimitFileBytes => "limit-file-bytes",
            Rule::LimitDepth => "limit-depth",
            Rule::LimitExtensionBytes => "limit-extension-bytes",
            Rule::DuplicateEntry => "duplicate-entry",
            Rule::WhiteoutInnerComponent => "whiteout-inner-component",
            Rule::WhiteoutNotRegular => "whiteout-not-regular",
            Rule::AufsMetadata => "aufs-metadata",
            Rule::UserXattrOnSpecialFile => "user-xattr-on-special-file",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Rule::ParentComponent => "a `..` component would leave the root",
            Rule::NonUtf8Name => "the name is not valid UTF-8",
            Rule::NameTooLong => {
                "a path component is longer than NAME_MAX (255 bytes), or the path longer than PATH_MAX"
            }
            Rule::BareWhiteout => "a bare `.wh.` whites out nothing (OCI layer.md)",
            Rule::WhiteoutOfDot => "`.wh..` and `.wh...` would white out `.` or `..`",
            Rule::WhiteoutDevice => {
                "a character device 0/0 is a whiteout on an overlay layer, not content"
            }
            Rule::RootNotDirectory => "the root entry must be a directory",
            Rule::SymlinkLoop => "too many symlinks while resolving the path",
            Rule::ParentNotDirectory => "a component of the parent path is not a directory",
            Rule::HardlinkTargetMissing => "the hardlink's target does not exist",
            Rule::HardlinkToDirectory => "the hardlink's target is a directory",
            Rule::UnsupportedEntryType => "overlayer does not apply this tar entry type",
            Rule::CorruptArchive => "the archive is truncated or corrupt",
            Rule::InvalidOwner => {
                "uid or gid 4294967295 is (uid_t)-1, which chown ignores; it cannot be applied"
            }
            Rule::LimitBytes => "the layers inflate past --max-bytes",
            Rule::LimitEntries => "the layers hold more entries than --max-entries",
            Rule::LimitFileBytes => "a file is larger than --max-file-bytes",
            Rule::LimitDepth => "a path is deeper than --max-depth components",
            Rule::LimitExtensionBytes => {
                "an extension record (PAX, GNU long name) is larger than --max-extension-bytes"
            }
            Rule::DuplicateEntry => "the path appears twice in the layer (OCI layer.md; --strict)",
            Rule::WhiteoutInnerComponent => "a directory component starts with `.wh.` (--strict)",
            Rule::WhiteoutNotRegular => {
                "a whiteout must be an empty regular file (OCI layer.md; --strict)"
            }
            Rule::AufsMetadata => "AUFS `.wh..wh.` metadata in the layer (--strict)",
            Rule::UserXattrOnSpecialFile => {
                "Linux allows user.* xattrs only on regular files and directories (xattr(7); --strict)"
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.explain(), self.code())
    }
}

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An entry broke a rule of the layer format or of confinement.
    #[error("layer {layer}: entry {entry:?}: {rule}{}", detail_suffix(.detail))]
    Invalid {
        layer: usize,
        entry: String,
        rule: Rule,
        detail: Option<String>,
    },
    /// A filesystem operation failed while handling an entry.
    #[error("layer {layer}: entry {entry:?}: {op}: {source}")]
    Io {
        layer: usize,
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The work was cancelled (Ctrl-C); nothing was left behind.
    #[error("cancelled")]
    Cancelled,
    /// An operation on an output or captured directory failed, outside any layer.
    #[error("{path}: {op}: {source}")]
    Path {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail
        .as_ref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

impl Error {
    /// The broken rule, if this is a rule violation.
    pub fn rule(&self) -> Option<Rule> {
        match self {
            Error::Invalid { rule, .. } => Some(*rule),
            _ => None,
        }
    }

    /// The layer index and entry name, if the error concerns an entry.
    pub fn location(&self) -> Option<(usize, &str)> {
        match self {
            Error::Invalid { layer, entry, .. } | Error::Io { layer, entry, .. } => {
                Some((*layer, entry.as_str()))
            }
            Error::Path { .. } | Error::Cancelled => None,
        }
    }

    pub(crate) fn path(path: impl fmt::Display, op: &'static str, source: io::Error) -> Self {
        Error::Path {
            path: path.to_string(),
            op,
            source,
        }
    }
}

/// Library result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error without its layer and entry, filled in by the layer loop.
#[derive(Debug)]
pub(crate) enum Fault {
    Rule(Rule, Option<String>),
    Io(&'static str, io::Error),
}

impl Fault {
    pub(crate) fn at(self, layer: usize, entry: &str) -> Error {
        match self {
            Fault::Rule(rule, detail) => Error::Invalid {
                layer,
                entry: entry.to_string(),
                rule,
                detail,
            },
            Fault::Io(op, source) => Error::Io {
                layer,
                entry: entry.to_string(),
                op,
                source,
            },
        }
    }
}

impl From<Rule> for Fault {
    fn from(rule: Rule) -> Self {
        Fault::Rule(rule, None)
    }
}

/// Attaches an operation name to an io::Error.
pub(crate) trait IoOp<T> {
    fn op(self, op: &'static str) -> Result<T, Fault>;
}

impl<T> IoOp<T> for io::Result<T> {
    fn op(self, op: &'static str) -> Result<T, Fault> {
        self.map_err(|e| Fault::Io(op, e))
    }
}
