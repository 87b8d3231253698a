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
    /// Strict: an xattr no Linux filesystem can store (a namespace other
    /// than security, system, trusted or user, an empty or over-255-byte
    /// name, a value over 64 KiB; xattr(7)); lenient mode drops it with a
    /// notice.
    XattrNotStorable,
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
            Rule::XattrNotStorable => "xattr-not-storable",
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
            Rule::XattrNotStorable => {
                "no Linux filesystem stores this xattr: its namespace, name length or value size (xattr(7); --strict)"
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.explain(), self.code())
    }
}

/// A rule of the image formats that an OCI image layout or a `docker save`
/// archive broke: the image-spec's image-layout.md, image-index.md,
/// manifest.md, config.md and descriptor.md, docker save's `manifest.json`,
/// and overlayer's confinement of blob paths. `code()` is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRule {
    /// A single file that is neither an OCI layout (in a tar) nor a `docker
    /// save` archive: `open_any` reads it as a raw layer instead.
    NotAnImage,
    /// A directory without `index.json` (image-layout.md: REQUIRED).
    NoIndex,
    /// A JSON document (`index.json`, a manifest, an index, a config,
    /// `manifest.json`) that does not parse as JSON.
    NotJson,
    /// JSON whose fields do not have the types and presence the schema
    /// requires (serde's message, with its line and column).
    BadField,
    /// A digest whose algorithm is not one descriptor.md registers and
    /// overlayer verifies: `sha256` and `sha512`.
    DigestAlgorithm,
    /// A digest whose encoded part is not lowercase hex of the algorithm's
    /// length (descriptor.md), or with no `algorithm:` at all. Refused
    /// before any path is built from it.
    DigestEncoding,
    /// A blob whose length is not the descriptor's `size` (descriptor.md:
    /// the content SHOULD NOT be trusted).
    SizeMismatch,
    /// A blob whose content does not hash to its digest (image-layout.md:
    /// `blobs/<alg>/<encoded>` MUST match `<alg>:<encoded>`).
    DigestMismatch,
    /// An uncompressed layer that does not hash to the config's
    /// `rootfs.diff_ids` entry (config.md).
    DiffIdMismatch,
    /// A blob or file the image refers to is not in it.
    MissingBlob,
    /// A blob (or `index.json`, or a directory on the way to a blob) that is
    /// a symlink, or not a regular file (directory, fifo, device): blob
    /// paths are never followed out of the layout.
    BlobNotRegular,
    /// A `mediaType` that is not what the place requires: an index's or
    /// manifest's own, a config's, a layer's.
    MediaType,
    /// An index that lists no usable manifest.
    NoManifest,
    /// No manifest for the platform asked for (`--platform`).
    PlatformNotFound,
    /// No manifest or image with the tag asked for (`DIR:TAG`, `FILE:TAG`).
    TagNotFound,
    /// Several manifests or images match: one must be named by tag.
    SeveralManifests,
    /// The config's `rootfs.diff_ids` and the manifest's layers differ in
    /// number.
    LayerCount,
    /// A name in `manifest.json` or in the archive that is absolute or
    /// climbs out with `..`.
    PathOutside,
    /// The archive cannot be read as a tar.
    BadArchive,
    /// A JSON document larger than `image::MAX_DOCUMENT` (64 MiB).
    TooLarge,
    /// An image archive that unpacks to more bytes or files than
    /// `--max-bytes` or `--max-entries`.
    ArchiveTooLarge,
}

impl ImageRule {
    /// Stable identifier, used in messages and JSON.
    pub fn code(self) -> &'static str {
        match self {
            ImageRule::NotAnImage => "not-an-image",
            ImageRule::NoIndex => "no-index",
            ImageRule::NotJson => "not-json",
            ImageRule::BadField => "bad-field",
            ImageRule::DigestAlgorithm => "digest-algorithm",
            ImageRule::DigestEncoding => "digest-encoding",
            ImageRule::SizeMismatch => "size-mismatch",
            ImageRule::DigestMismatch => "digest-mismatch",
            ImageRule::DiffIdMismatch => "diff-id-mismatch",
            ImageRule::MissingBlob => "missing-blob",
            ImageRule::BlobNotRegular => "blob-not-regular",
            ImageRule::MediaType => "media-type",
            ImageRule::NoManifest => "no-manifest",
            ImageRule::PlatformNotFound => "platform-not-found",
            ImageRule::TagNotFound => "tag-not-found",
            ImageRule::SeveralManifests => "several-manifests",
            ImageRule::LayerCount => "layer-count",
            ImageRule::PathOutside => "path-outside",
            ImageRule::BadArchive => "bad-archive",
            ImageRule::TooLarge => "too-large",
            ImageRule::ArchiveTooLarge => "archive-too-large",
        }
    }

    /// What the rule asks, in a sentence.
    pub fn explain(self) -> &'static str {
        match self {
            ImageRule::NotAnImage => "neither an OCI layout nor a docker save archive",
            ImageRule::NoIndex => "an OCI layout holds index.json (image-layout.md)",
            ImageRule::NotJson => "the document is not JSON",
            ImageRule::BadField => "a field is missing or has the wrong type",
            ImageRule::DigestAlgorithm => {
                "digests are sha256 or sha512, the algorithms descriptor.md registers"
            }
            ImageRule::DigestEncoding => {
                "a digest is algorithm:encoded, encoded in lowercase hex of the algorithm's length (descriptor.md)"
            }
            ImageRule::SizeMismatch => "the blob's length is not the descriptor's size (descriptor.md)",
            ImageRule::DigestMismatch => "the blob does not hash to its digest (image-layout.md)",
            ImageRule::DiffIdMismatch => {
                "the uncompressed layer does not hash to the config's diff_id (config.md)"
            }
            ImageRule::MissingBlob => "a blob or file the image refers to is not in it",
            ImageRule::BlobNotRegular => {
                "blobs are regular files inside the image, reached without following a symlink"
            }
            ImageRule::MediaType => "the mediaType is not one this place takes",
            ImageRule::NoManifest => "the index lists no image manifest",
            ImageRule::PlatformNotFound => "no manifest for the platform",
            ImageRule::TagNotFound => "no manifest or image with the tag",
            ImageRule::SeveralManifests => "several manifests match: name one as IMAGE:TAG",
            ImageRule::LayerCount => "the config's diff_ids and the layers differ in number",
            ImageRule::PathOutside => "a name is absolute or climbs out of the image with `..`",
            ImageRule::BadArchive => "the archive cannot be read as a tar",
            ImageRule::TooLarge => "a JSON document is larger than 64 MiB",
            ImageRule::ArchiveTooLarge => {
                "the image archive unpacks to more than --max-bytes or --max-entries"
            }
        }
    }
}

impl fmt::Display for ImageRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.explain(), self.code())
    }
}

/// An image that broke an [`ImageRule`]: which image, which file in it
/// (relative to the image root: `index.json`, `blobs/sha256/…`,
/// `manifest.json`), where in that file, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError {
    /// The image as named: the layout directory or the archive.
    pub image: String,
    /// The file, relative to the image root; empty for the image itself.
    pub file: String,
    /// A position (`line 1, column 37`) or a field (`manifests[0].digest`).
    pub at: Option<String>,
    pub rule: ImageRule,
    /// What was wrong, specifically.
    pub detail: String,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "image {}: ", self.image)?;
        if !self.file.is_empty() {
            write!(f, "{}: ", self.file)?;
        }
        if let Some(at) = &self.at {
            write!(f, "{at}: ")?;
        }
        write!(f, "{} [{}]", self.detail, self.rule.code())
    }
}

impl std::error::Error for ImageError {}

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
    /// An image (OCI layout or `docker save` archive) broke a rule.
    #[error(transparent)]
    Image(Box<ImageError>),
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

    /// The broken image rule, if this is an image that broke one.
    pub fn image_rule(&self) -> Option<ImageRule> {
        match self {
            Error::Image(e) => Some(e.rule),
            _ => None,
        }
    }

    /// The layer index and entry name, if the error concerns an entry.
    pub fn location(&self) -> Option<(usize, &str)> {
        match self {
            Error::Invalid { layer, entry, .. } | Error::Io { layer, entry, .. } => {
                Some((*layer, entry.as_str()))
            }
            Error::Path { .. } | Error::Image(_) | Error::Cancelled => None,
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
