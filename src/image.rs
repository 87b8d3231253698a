//! Images: OCI image layouts (index.json → manifest → config → layers,
//! image-spec image-layout.md) and `docker save` archives (manifest.json and
//! `*/layer.tar`, or the newer OCI-in-docker-save form with `blobs/`).
//!
//! Every document is checked before it is trusted, and every problem is an
//! [`ImageError`] naming the image, the file in it, the position or field,
//! and the [`ImageRule`] broken:
//!
//! * documents must be JSON ([`ImageRule::NotJson`]) of the schema
//!   ([`ImageRule::BadField`], serde's message with its line and column);
//! * digests must be `sha256:` or `sha512:` and lowercase hex of the right
//!   length, checked before any path is built from them;
//! * a blob must be a regular file below `blobs/`, reached without following
//!   a symlink, as long as its descriptor's `size`, and hash to its digest;
//! * the uncompressed layers must hash to the config's `diff_ids`.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

use crate::error::{Error, ImageError, ImageRule, Result};
use crate::layer::normalise;
use crate::tar_stream::TarStream;
use crate::Limits;

/// The annotation naming a manifest's tag in an OCI layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// image-layout.md: "This REQUIRED file is the entry point for references
/// and descriptors of the image-layout."
pub const INDEX_JSON: &str = "index.json";
/// image-layout.md: blobs live at `blobs/<alg>/<encoded>`.
pub const BLOBS: &str = "blobs";
/// The `docker save` archive's list of images.
pub const SAVE_MANIFEST: &str = "manifest.json";

/// descriptor.md, registered algorithms: SHA-256, which implementations
/// MUST verify; its encoding is `/[a-f0-9]{64}/`.
pub const SHA256: &str = "sha256";
/// descriptor.md, registered algorithms: SHA-512, which implementations MAY
/// verify (overlayer does); its encoding is `/[a-f0-9]{128}/`.
pub const SHA512: &str = "sha512";

/// image-index.md: an image index (index.json is one, image-layout.md).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// manifest.md: an image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// config.md: an image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// layer.md: the layer media types manifest.md says implementations MUST
/// support (plus zstd and the deprecated non-distributable forms).
pub const OCI_LAYERS: [&str; 6] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];
/// Docker's image manifest list (media-types.md compatibility matrix).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker's layer media types.
pub const DOCKER_LAYERS: [&str; 2] = [
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// The largest JSON document (index, manifest, config) read into memory.
pub const MAX_DOCUMENT: u64 = 64 << 20;

/// One layer of an image, bottom first.
#[derive(Debug, Clone)]
pub struct ImageLayer {
    pub path: PathBuf,
    /// `sha256:…` (or `sha512:…`) of the blob as stored (compressed), if known.
    pub digest: Option<String>,
    /// `sha256:…` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Option<String>,
    /// How `readers` re-opens and verifies the blob; none for a raw layer.
    check: Option<Check>,
}

/// What is known of a layer blob inside an image, to verify it when read.
#[derive(Debug, Clone)]
struct Check {
    /// The blob's path below the image root, as components.
    rel: Vec<String>,
    /// The file and field that name the blob (`blobs/sha256/…`,
    /// `layers[1].digest`; `manifest.json`, `[0].Layers[1]`).
    from: String,
    field: String,
    digest: Option<BlobDigest>,
    /// The descriptor's size and the descriptor (`layers[1]`).
    size: Option<(u64, String)>,
    diff_id: Option<DiffId>,
}

#[derive(Debug, Clone)]
struct DiffId {
    want: BlobDigest,
    /// The config file and the field (`rootfs.diff_ids[1]`) it came from.
    config: String,
    field: String,
}

/// An image opened for reading.
#[derive(Debug)]
pub struct Image {
    pub layers: Vec<ImageLayer>,
    /// The image as named, for messages.
    name: String,
    /// The layout directory, or the unpacked archive.
    root: PathBuf,
    /// Where a `docker save` archive was unpacked (removed on drop).
    _scratch: Option<tempfile::TempDir>,
}

/// Opens what a command was given: one OCI layout (`DIR[:TAG]`) or `docker
/// save` archive (`FILE[:TAG]`), or one or more raw layer tars, bottom first.
pub fn open_any(args: &[String], platform: &str) -> Result<Image> {
    open_any_with(args, platform, &Limits::default())
}

/// [`open_any`], a `docker save` archive unpacked within `limits`
/// (`max_bytes`, `max_entries`).
pub fn open_any_with(args: &[String], platform: &str, limits: &Limits) -> Result<Image> {
    if let [one] = args {
        match open_with(one, platform, limits) {
            Err(Error::Image(e)) if e.rule == ImageRule::NotAnImage => {}
            other => return other,
        }
    }
    Ok(Image {
        layers: args
            .iter()
            .map(|p| ImageLayer {
                path: PathBuf::from(p),
                digest: None,
                diff_id: None,
                check: None,
            })
            .collect(),
        name: String::new(),
        root: PathBuf::new(),
        _scratch: None,
    })
}

/// Opens `spec`: an OCI layout directory, `DIR:TAG`, or a `docker save`
/// archive (`FILE` or `FILE:TAG`, possibly compressed). `platform` is
/// `os/arch` (`linux/amd64`).
pub fn open(spec: &str, platform: &str) -> Result<Image> {
    open_with(spec, platform, &Limits::default())
}

/// [`open`], a `docker save` archive unpacked within `limits`: its regular
/// files count against `max_bytes` and `max_entries` as a layer's would,
/// and an archive past them is [`ImageRule::ArchiveTooLarge`] before the
/// file that crosses the limit is written.
pub fn open_with(spec: &str, platform: &str, limits: &Limits) -> Result<Image> {
    let (path, tag) = split_tag(spec);
    let meta = std::fs::metadata(&path).map_err(|e| Error::path(&path, "open image", e))?;
    let (root, scratch) = if meta.is_dir() {
        (PathBuf::from(&path), None)
    } else {
        let scratch = unpack_archive(&path, limits)?;
        (scratch.path().to_path_buf(), Some(scratch))
    };
    let cx = Ctx {
        image: &path,
        root: &root,
    };
    let layers = if scratch.is_some() && root.join(SAVE_MANIFEST).is_file() {
        docker_save(&cx, tag.as_deref())?
    } else {
        oci_layout(&cx, tag.as_deref(), platform)?
    };
    Ok(Image {
        layers,
        name: path,
        root,
        _scratch: scratch,
    })
}

fn split_tag(spec: &str) -> (String, Option<String>) {
    if Path::new(spec).exists() {
        return (spec.to_string(), None);
    }
    match spec.rsplit_once(':') {
        Some((p, t)) if Path::new(p).exists() => (p.to_string(), Some(t.to_string())),
        _ => (spec.to_string(), None),
    }
}

/// The image being read: its name for messages and its root directory.
struct Ctx<'a> {
    image: &'a str,
    root: &'a Path,
}

impl Ctx<'_> {
    fn err(
        &self,
        file: &str,
        at: Option<String>,
        rule: ImageRule,
        detail: impl Into<String>,
    ) -> Error {
        Error::Image(Box::new(ImageError {
            image: self.image.to_string(),
            file: file.to_string(),
            at,
            rule,
            detail: detail.into(),
        }))
    }

    /// Opens the blob or file `rel` that field `field` of `from` names.
    fn open_named(&self, rel: &[String], from: &str, field: &str) -> Result<(File, u64)> {
        open_in(self.root, rel).map_err(|fault| match fault {
            Fault::Missing => self.err(
                from,
                Some(field.to_string()),
                ImageRule::MissingBlob,
                format!("{} is not in the image", rel.join("/")),
            ),
            Fault::NotRegular {
                shown,
                what,
                wanted,
            } => self.err(
                from,
                Some(field.to_string()),
                ImageRule::BlobNotRegular,
                format!("{shown} is {what}, not {wanted}"),
            ),
            Fault::Io(path, e) => Error::path(path.display(), "open blob", e),
        })
    }

    /// Reads a top-level document (`index.json`, `manifest.json`).
    fn read_top(&self, name: &str, missing: ImageRule) -> Result<Vec<u8>> {
        let (file, len) = open_in(self.root, &[name.to_string()]).map_err(|fault| match fault {
            Fault::Missing => self.err(name, None, missing, "missing"),
            Fault::NotRegular { what, wanted, .. } => self.err(
                name,
                None,
                ImageRule::BlobNotRegular,
                format!("{what}, not {wanted}"),
            ),
            Fault::Io(path, e) => Error::path(path.display(), "open image", e),
        })?;
        self.read_document(name, file, len)
    }

    fn read_document(&self, name: &str, file: File, len: u64) -> Result<Vec<u8>> {
        if len > MAX_DOCUMENT {
            return Err(self.err(
                name,
                None,
                ImageRule::TooLarge,
                format!("{len} bytes, more than {MAX_DOCUMENT}"),
            ));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(MAX_DOCUMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::path(self.root.join(name).display(), "read image", e))?;
        Ok(bytes)
    }

    /// Reads the JSON blob a descriptor (field `field` of `from`) names,
    /// after checking its digest syntax, that it is a regular file, its size
    /// (descriptor.md: before the digest) and its digest.
    fn read_blob(&self, from: &str, field: &str, desc: &Descriptor) -> Result<(String, Vec<u8>)> {
        let digest = self.digest(from, &format!("{field}.digest"), desc.digest().as_ref())?;
        let rel = digest.rel();
        let (file, len) = self.open_named(&rel, from, &format!("{field}.digest"))?;
        self.check_size(from, field, &rel, desc.size(), len)?;
        let name = rel.join("/");
        let bytes = self.read_document(&name, file, len)?;
        let got = digest
            .algorithm
            .hash(&mut bytes.as_slice())
            .expect("reading memory");
        if got != digest.to_string() {
            return Err(self.err(
                &name,
                None,
                ImageRule::DigestMismatch,
                format!("the content hashes to {got}"),
            ));
        }
        Ok((name, bytes))
    }

    fn check_size(
        &self,
        from: &str,
        field: &str,
        rel: &[String],
        want: u64,
        have: u64,
    ) -> Result<()> {
        if want != have {
            return Err(self.err(
                from,
                Some(format!("{field}.size")),
                ImageRule::SizeMismatch,
                format!("{want} bytes, but {} has {have}", rel.join("/")),
            ));
        }
        Ok(())
    }

    fn digest(&self, file: &str, field: &str, text: &str) -> Result<BlobDigest> {
        BlobDigest::parse(text)
            .map_err(|(rule, detail)| self.err(file, Some(field.to_string()), rule, detail))
    }

    /// Parses `bytes` as a `doc`: JSON first ([`ImageRule::NotJson`]), then
    /// its own `mediaType` and its digests, then the schema
    /// ([`ImageRule::BadField`]).
    fn parse<T: DeserializeOwned>(
        &self,
        file: &str,
        bytes: &[u8],
        doc: Doc,
        own_type: Option<(&str, &str)>,
    ) -> Result<T> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| self.json_err(file, ImageRule::NotJson, &e))?;
        if let (Some((want, why)), Some(Value::String(have))) = (own_type, value.get("mediaType")) {
            if have != want {
                return Err(self.err(
                    file,
                    Some("mediaType".into()),
                    ImageRule::MediaType,
                    format!("{:?}, but {why} {want:?}", shown(have)),
                ));
            }
        }
        for (field, text) in digest_fields(doc, &value) {
            self.digest(file, &field, text)?;
        }
        serde_json::from_slice(bytes).map_err(|e| self.json_err(file, ImageRule::BadField, &e))
    }

    /// serde_json's error, its position moved to the front.
    fn json_err(&self, file: &str, rule: ImageRule, e: &serde_json::Error) -> Error {
        let text = e.to_string();
        if e.line() == 0 {
            return self.err(file, None, rule, text);
        }
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let detail = text.strip_suffix(&suffix).unwrap_or(&text).to_string();
        let at = format!("line {}, column {}", e.line(), e.column());
        self.err(file, Some(at), rule, detail)
    }
}

/// A value from the image, shortened for a message.
fn shown(text: &str) -> String {
    const MAX: usize = 100;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Which schema a document has, for the digests in it.
#[derive(Debug, Clone, Copy)]
enum Doc {
    Index,
    Manifest,
    Config,
    SaveManifest,
}

/// The digest strings of a document and their fields, checked before the
/// schema is (so a bad one is named by its rule, not by serde).
fn digest_fields(doc: Doc, v: &Value) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    let list = |key: &str| v.get(key).and_then(Value::as_array).into_iter().flatten();
    match doc {
        Doc::Index => {
            for (i, d) in list("manifests").enumerate() {
                if let Some(s) = d.get("digest").and_then(Value::as_str) {
                    out.push((format!("manifests[{i}].digest"), s));
                }
            }
        }
        Doc::Manifest => {
            if let Some(s) = v.pointer("/config/digest").and_then(Value::as_str) {
                out.push(("config.digest".to_string(), s));
            }
            for (i, d) in list("layers").enumerate() {
                if let Some(s) = d.get("digest").and_then(Value::as_str) {
                    out.push((format!("layers[{i}].digest"), s));
                }
            }
        }
        Doc::Config => {
            let ids = v.pointer("/rootfs/diff_ids").and_then(Value::as_array);
            for (i, d) in ids.into_iter().flatten().enumerate() {
                if let Some(s) = d.as_str() {
                    out.push((format!("rootfs.diff_ids[{i}]"), s));
                }
            }
        }
        Doc::SaveManifest => {}
    }
    out
}

/// A digest algorithm overlayer verifies (descriptor.md, registered
/// algorithms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => SHA256,
            Algorithm::Sha512 => SHA512,
        }
    }

    /// descriptor.md: the encoded part is lowercase hex of this length.
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// `<alg>:<hex>` of everything `reader` yields.
    fn hash(self, reader: &mut dyn Read) -> io::Result<String> {
        let hex = match self {
            Algorithm::Sha256 => hash_with::<Sha256>(reader)?,
            Algorithm::Sha512 => hash_with::<Sha512>(reader)?,
        };
        Ok(format!("{}:{hex}", self.name()))
    }
}

fn hash_with<D: Digest>(reader: &mut dyn Read) -> io::Result<String> {
    let mut hasher = D::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A digest that has passed descriptor.md's rules for its algorithm, so
/// `blobs/<alg>/<encoded>` is a plain path below the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BlobDigest {
    algorithm: Algorithm,
    encoded: String,
}

impl BlobDigest {
    /// descriptor.md: `digest := algorithm ":" encoded`; only the registered
    /// `sha256` and `sha512` are taken, and their encoding MUST be lowercase
    /// hex of 64 and 128 digits. Anything else (`..`, `/`, uppercase, the
    /// wrong length) is refused here, before a path is built.
    fn parse(text: &str) -> std::result::Result<Self, (ImageRule, String)> {
        let Some((alg, encoded)) = text.split_once(':') else {
            return Err((
                ImageRule::DigestEncoding,
                format!("{:?} is not algorithm:encoded", shown(text)),
            ));
        };
        let algorithm = match alg {
            SHA256 => Algorithm::Sha256,
            SHA512 => Algorithm::Sha512,
            _ => {
                return Err((
                    ImageRule::DigestAlgorithm,
                    format!(
                        "{:?}: algorithm {:?} is neither {SHA256} nor {SHA512}",
                        shown(text),
                        shown(alg)
                    ),
                ))
            }
        };
        let hex = encoded
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if encoded.len() != algorithm.hex_len() || !hex {
            return Err((
                ImageRule::DigestEncoding,
                format!(
                    "{:?}: a {alg} digest is {} lowercase hex digits",
                    shown(text),
                    algorithm.hex_len()
                ),
            ));
        }
        Ok(BlobDigest {
            algorithm,
            encoded: encoded.to_string(),
        })
    }

    /// image-layout.md: `blobs/<alg>/<encoded>`.
    fn rel(&self) -> Vec<String> {
        vec![
            BLOBS.to_string(),
            self.algorithm.name().to_string(),
            self.encoded.clone(),
        ]
    }
}

impl std::fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.encoded)
    }
}

/// Why a path below the image root could not be opened as a regular file.
enum Fault {
    Missing,
    NotRegular {
        shown: String,
        what: &'static str,
        wanted: &'static str,
    },
    Io(PathBuf, io::Error),
}

fn kind(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a fifo",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "of an unknown type",
    }
}

/// Opens `root/rel…` one component at a time with `O_NOFOLLOW`, every
/// component but the last a directory and the last a regular file, so no
/// symlink is followed out of the image; returns the file and its length.
fn open_in(root: &Path, rel: &[String]) -> std::result::Result<(File, u64), Fault> {
    let io_at = |i: usize, e: io::Error| Fault::Io(root.join(rel[..=i].join("/")), e);
    let mut dir: OwnedFd = rfs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Fault::Io(root.to_path_buf(), e.into()))?;
    for (i, name) in rel.iter().enumerate() {
        let last = i + 1 == rel.len();
        let (want, wanted) = if last {
            (FileType::RegularFile, "a regular file")
        } else {
            (FileType::Directory, "a directory")
        };
        let not = |what| Fault::NotRegular {
            shown: rel[..=i].join("/"),
            what,
            wanted,
        };
        let stat = match rfs::statat(dir.as_fd(), name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(Errno::NOENT) => return Err(Fault::Missing),
            Err(e) => return Err(io_at(i, e.into())),
        };
        let have = FileType::from_raw_mode(stat.st_mode);
        if have != want {
            return Err(not(kind(have)));
        }
        // O_NONBLOCK: a fifo swapped in after the stat does not hang the open.
        let flags = if last {
            OFlags::RDONLY | OFlags::NONBLOCK
        } else {
            OFlags::PATH | OFlags::DIRECTORY
        };
        // Swapped since the stat: refused all the same.
        let fd = match crate::sys::open_entry(dir.as_fd(), name, flags) {
            Ok(fd) => fd,
            Err(e) => match Errno::from_io_error(&e) {
                Some(Errno::LOOP) => return Err(not("a symlink")),
                Some(Errno::NOTDIR) => return Err(not("of another type")),
                Some(Errno::NOENT) => return Err(Fault::Missing),
                _ => return Err(io_at(i, e)),
            },
        };
        if last {
            let stat = rfs::fstat(&fd).map_err(|e| io_at(i, e.into()))?;
            let have = FileType::from_raw_mode(stat.st_mode);
            if have != FileType::RegularFile {
                return Err(not(kind(have)));
            }
            return Ok((File::from(fd), stat.st_size as u64));
        }
        dir = fd;
    }
    Err(Fault::Missing)
}

fn platform_matches(p: Option<&oci_spec::image::Platform>, want: &str) -> bool {
    let Some(p) = p else { return true };
    let have = format!("{}/{}", p.os(), p.architecture());
    have == want
}

fn tag_of(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

fn is_index(media_type: &str) -> bool {
    [OCI_INDEX, DOCKER_MANIFEST_LIST].contains(&media_type)
}

fn is_manifest(media_type: &str) -> bool {
    [OCI_MANIFEST, DOCKER_MANIFEST].contains(&media_type)
}

fn listed(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

fn oci_layout(cx: &Ctx, tag: Option<&str>, platform: &str) -> Result<Vec<ImageLayer>> {
    let bytes = cx.read_top(INDEX_JSON, ImageRule::NoIndex)?;
    let index: ImageIndex = cx.parse(
        INDEX_JSON,
        &bytes,
        Doc::Index,
        Some((OCI_INDEX, "index.json is an image index (image-layout.md):")),
    )?;
    let mut from = INDEX_JSON.to_string();
    let mut entries: Vec<(usize, Descriptor)> =
        index.manifests().iter().cloned().enumerate().collect();
    if let Some(t) = tag {
        let tags = listed(
            entries
                .iter()
                .filter_map(|(_, d)| tag_of(d))
                .map(|t| format!("{t:?}")),
        );
        entries.retain(|(_, d)| tag_of(d) == Some(t));
        if entries.is_empty() {
            return Err(cx.err(
                INDEX_JSON,
                None,
                ImageRule::TagNotFound,
                format!("no manifest is tagged {t:?} (tags: {tags})"),
            ));
        }
    }
    loop {
        let top_untagged = from == INDEX_JSON && tag.is_none();
        let (i, desc) = choose(cx, &from, entries, platform, top_untagged)?;
        let field = format!("manifests[{i}]");
        let media_type = desc.media_type().as_ref().to_string();
        let (file, bytes) = cx.read_blob(&from, &field, &desc)?;
        let why = format!("{field} of {from} says");
        if is_index(&media_type) {
            let nested: ImageIndex =
                cx.parse(&file, &bytes, Doc::Index, Some((&media_type, &why)))?;
            entries = nested.manifests().iter().cloned().enumerate().collect();
            from = file;
        } else {
            let manifest: ImageManifest =
                cx.parse(&file, &bytes, Doc::Manifest, Some((&media_type, &why)))?;
            return manifest_layers(cx, &file, &manifest);
        }
    }
}

/// The one manifest of `entries` (of the index `from`) for `platform`.
fn choose(
    cx: &Ctx,
    from: &str,
    entries: Vec<(usize, Descriptor)>,
    platform: &str,
    untagged: bool,
) -> Result<(usize, Descriptor)> {
    let Some((first, first_desc)) = entries.first().cloned() else {
        return Err(cx.err(from, None, ImageRule::NoManifest, "lists no manifests"));
    };
    // image-index.md: "An encountered mediaType that is unknown to the
    // implementation MUST be ignored."
    let known: Vec<_> = entries
        .into_iter()
        .filter(|(_, d)| {
            let t = d.media_type().as_ref();
            is_index(t) || is_manifest(t)
        })
        .collect();
    if known.is_empty() {
        return Err(cx.err(
            from,
            Some(format!("manifests[{first}].mediaType")),
            ImageRule::MediaType,
            format!(
                "{:?} is neither an image manifest nor an index, and no entry is",
                shown(first_desc.media_type().as_ref())
            ),
        ));
    }
    let platforms = listed(known.iter().filter_map(|(_, d)| {
        d.platform()
            .as_ref()
            .map(|p| format!("{}/{}", p.os(), p.architecture()))
    }));
    let mut fit: Vec<_> = known
        .into_iter()
        .filter(|(_, d)| platform_matches(d.platform().as_ref(), platform))
        .collect();
    match fit.len() {
        1 => Ok(fit.remove(0)),
        0 => Err(cx.err(
            from,
            None,
            ImageRule::PlatformNotFound,
            format!("no manifest for {platform} (platforms: {platforms})"),
        )),
        n => {
            let tags = listed(
                fit.iter()
                    .filter_map(|(_, d)| tag_of(d))
                    .map(|t| format!("{t:?}")),
            );
            let hint = if untagged {
                format!(": name one as IMAGE:TAG (tags: {tags})")
            } else {
                String::new()
            };
            Err(cx.err(
                from,
                None,
                ImageRule::SeveralManifests,
                format!("{n} manifests for {platform}{hint}"),
            ))
        }
    }
}

fn check_media_type(
    cx: &Ctx,
    file: &str,
    field: &str,
    have: &str,
    allowed: &[&str],
    what: &str,
) -> Result<()> {
    if allowed.contains(&have) {
        return Ok(());
    }
    Err(cx.err(
        file,
        Some(format!("{field}.mediaType")),
        ImageRule::MediaType,
        format!("{:?} is not {what}", shown(have)),
    ))
}

/// The layers of `manifest` (the blob `file`), each checked to be a regular
/// file of its descriptor's size; digests are verified when read.
fn manifest_layers(cx: &Ctx, file: &str, manifest: &ImageManifest) -> Result<Vec<ImageLayer>> {
    let config = manifest.config();
    // manifest.md: config's mediaType MUST be supported:
    // application/vnd.oci.image.config.v1+json (Docker's is taken too).
    check_media_type(
        cx,
        file,
        "config",
        config.media_type().as_ref(),
        &[OCI_CONFIG, DOCKER_CONFIG],
        "an image config",
    )?;
    let (config_file, bytes) = cx.read_blob(file, "config", config)?;
    let config: ImageConfiguration = cx.parse(&config_file, &bytes, Doc::Config, None)?;
    let diff_ids = config.rootfs().diff_ids();
    let layers = manifest.layers();
    if diff_ids.len() != layers.len() {
        return Err(cx.err(
            file,
            Some("layers".into()),
            ImageRule::LayerCount,
            format!(
                "{} layers, but {config_file} has {} rootfs.diff_ids",
                layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let layer_types: Vec<&str> = OCI_LAYERS.iter().chain(&DOCKER_LAYERS).copied().collect();
    layers
        .iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(i, (d, diff_id))| {
            let field = format!("layers[{i}]");
            // manifest.md lists the layer types implementations MUST support
            // and says unknown ones MUST be ignored; ignoring a layer would
            // unpack another filesystem, so an unknown one is refused.
            check_media_type(
                cx,
                file,
                &field,
                d.media_type().as_ref(),
                &layer_types,
                "a layer type overlayer unpacks",
            )?;
            let digest_field = format!("{field}.digest");
            let digest = cx.digest(file, &digest_field, d.digest().as_ref())?;
            let rel = digest.rel();
            let (_, len) = cx.open_named(&rel, file, &digest_field)?;
            cx.check_size(file, &field, &rel, d.size(), len)?;
            let field_id = format!("rootfs.diff_ids[{i}]");
            let want = cx.digest(&config_file, &field_id, diff_id)?;
            Ok(ImageLayer {
                path: cx.root.join(rel.join("/")),
                digest: Some(digest.to_string()),
                diff_id: Some(diff_id.clone()),
                check: Some(Check {
                    rel,
                    from: file.to_string(),
                    field: digest_field,
                    digest: Some(digest),
                    size: Some((d.size(), field)),
                    diff_id: Some(DiffId {
                        want,
                        config: config_file.clone(),
                        field: field_id,
                    }),
                }),
            })
        })
        .collect()
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A name from `manifest.json`, relative to the archive root: refused if
/// absolute or if it climbs out with `..`.
fn save_path(cx: &Ctx, field: &str, name: &str) -> Result<Vec<String>> {
    let outside = |why: &str| {
        Err(cx.err(
            SAVE_MANIFEST,
            Some(field.to_string()),
            ImageRule::PathOutside,
            format!("{:?} {why}", shown(name)),
        ))
    };
    if name.starts_with('/') {
        return outside("is absolute; names in manifest.json are relative to the archive root");
    }
    if name.split('/').any(|c| c == "..") {
        return outside("climbs out of the archive with `..`");
    }
    match normalise(name.as_bytes()) {
        Ok(rel) if !rel.is_empty() => Ok(rel),
        Ok(_) => Err(cx.err(
            SAVE_MANIFEST,
            Some(field.to_string()),
            ImageRule::MissingBlob,
            format!("{:?} names no file", shown(name)),
        )),
        Err(rule) => Err(cx.err(
            SAVE_MANIFEST,
            Some(field.to_string()),
            ImageRule::MissingBlob,
            format!(
                "{:?} cannot be in the archive [{}]",
                shown(name),
                rule.code()
            ),
        )),
    }
}

fn docker_save(cx: &Ctx, tag: Option<&str>) -> Result<Vec<ImageLayer>> {
    let bytes = cx.read_top(SAVE_MANIFEST, ImageRule::NotAnImage)?;
    let manifests: Vec<SaveManifest> = cx.parse(SAVE_MANIFEST, &bytes, Doc::SaveManifest, None)?;
    if manifests.is_empty() {
        return Err(cx.err(
            SAVE_MANIFEST,
            None,
            ImageRule::NoManifest,
            "lists no images",
        ));
    }
    let tagged = |m: &SaveManifest, t: &str| {
        m.repo_tags
            .iter()
            .flatten()
            .any(|r| r == t || r.ends_with(&format!(":{t}")))
    };
    let chosen: Vec<(usize, &SaveManifest)> = manifests
        .iter()
        .enumerate()
        .filter(|(_, m)| tag.is_none_or(|t| tagged(m, t)))
        .collect();
    let all_tags = || {
        listed(
            manifests
                .iter()
                .flat_map(|m| m.repo_tags.iter().flatten())
                .map(|t| format!("{t:?}")),
        )
    };
    let (idx, m) = match chosen.as_slice() {
        [one] => *one,
        [] => {
            return Err(cx.err(
                SAVE_MANIFEST,
                None,
                ImageRule::TagNotFound,
                format!(
                    "no image is tagged {:?} (tags: {})",
                    tag.unwrap_or_default(),
                    all_tags()
                ),
            ))
        }
        several => {
            return Err(cx.err(
                SAVE_MANIFEST,
                None,
                ImageRule::SeveralManifests,
                format!(
                    "{} images: name one as FILE:TAG (tags: {})",
                    several.len(),
                    all_tags()
                ),
            ))
        }
    };
    let config_field = format!("[{idx}].Config");
    let config_rel = save_path(cx, &config_field, &m.config)?;
    let config_file = config_rel.join("/");
    let (file, len) = cx.open_named(&config_rel, SAVE_MANIFEST, &config_field)?;
    let bytes = cx.read_document(&config_file, file, len)?;
    let config: ImageConfiguration = cx.parse(&config_file, &bytes, Doc::Config, None)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != m.layers.len() {
        return Err(cx.err(
            SAVE_MANIFEST,
            Some(format!("[{idx}].Layers")),
            ImageRule::LayerCount,
            format!(
                "{} layers, but {config_file} has {} rootfs.diff_ids",
                m.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    m.layers
        .iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(i, (name, diff_id))| {
            let field = format!("[{idx}].Layers[{i}]");
            let rel = save_path(cx, &field, name)?;
            cx.open_named(&rel, SAVE_MANIFEST, &field)?;
            // OCI-in-docker-save names blobs by digest.
            let digest = match rel.as_slice() {
                [b, alg, enc] if b == BLOBS => BlobDigest::parse(&format!("{alg}:{enc}")).ok(),
                _ => None,
            };
            let field_id = format!("rootfs.diff_ids[{i}]");
            let want = cx.digest(&config_file, &field_id, diff_id)?;
            Ok(ImageLayer {
                path: cx.root.join(rel.join("/")),
                digest: digest.as_ref().map(ToString::to_string),
                diff_id: Some(diff_id.clone()),
                check: Some(Check {
                    rel,
                    from: SAVE_MANIFEST.to_string(),
                    field,
                    digest,
                    size: None,
                    diff_id: Some(DiffId {
                        want,
                        config: config_file.clone(),
                        field: field_id,
                    }),
                }),
            })
        })
        .collect()
}

/// Unpacks the regular files of an archive (possibly compressed) into a
/// scratch directory, names confined (no `..`, no links). An archive with
/// neither `manifest.json` nor `index.json` at its root is
/// [`ImageRule::NotAnImage`], whatever else is wrong with it, so that
/// `open_any` reads it as a raw layer and the layer rules judge it.
///
/// The archive's names are read first, writing nothing: a raw layer given
/// where an image may be (`unpack`, `hidden`) is not copied into the
/// scratch directory, unbounded by the limits, before it is found to be no
/// image.
fn unpack_archive(path: &str, limits: &Limits) -> Result<tempfile::TempDir> {
    let cx = Ctx {
        image: path,
        root: Path::new(path),
    };
    if !names_an_image_root(path)? {
        return Err(cx.err(
            "",
            None,
            ImageRule::NotAnImage,
            "neither an OCI layout nor a docker save archive",
        ));
    }
    let scratch = tempfile::Builder::new()
        .prefix(".overlayer-image-")
        .tempdir()
        .map_err(|e| Error::path("temporary directory", "create", e))?;
    let mut stream = archive_stream(path)?;
    let mut bad_name: Option<(String, crate::Rule)> = None;
    let mut broken: Option<String> = None;
    let mut unwritable: Option<Error> = None;
    let (mut files, mut bytes) = (0u64, 0u64);
    loop {
        let member = match stream.next_member() {
            Ok(Some(member)) => member,
            Ok(None) => break,
            Err(e) => {
                broken = Some(e.to_string());
                break;
            }
        };
        if member.header.entry_type() != tar::EntryType::Regular {
            continue;
        }
        files += 1;
        bytes = bytes.saturating_add(member.size);
        if files > limits.max_entries || bytes > limits.max_bytes {
            let name = String::from_utf8_lossy(&member.path_bytes()).into_owned();
            return Err(cx.err(
                &name,
                None,
                ImageRule::ArchiveTooLarge,
                format!(
                    "{files} files and {bytes} bytes with this one; limits {} files, {} bytes",
                    limits.max_entries, limits.max_bytes
                ),
            ));
        }
        let name = member.path_bytes().into_owned();
        let rel = match normalise(&name) {
            Ok(rel) => rel,
            Err(rule) => {
                let shown = String::from_utf8_lossy(&name).into_owned();
                bad_name.get_or_insert((shown, rule));
                continue;
            }
        };
        if rel.is_empty() {
            continue;
        }
        let dest = scratch.path().join(rel.join("/"));
        // A raw layer may hold `a` and then `a/b`: no image does,
        // and a raw layer is judged later by the layer rules.
        let parent = dest.parent().expect("below the scratch directory");
        if let Err(e) = std::fs::create_dir_all(parent) {
            unwritable.get_or_insert(Error::path(parent.display(), "mkdir", e));
            continue;
        }
        let mut out = match File::create(&dest) {
            Ok(out) => out,
            Err(e) => {
                unwritable.get_or_insert(Error::path(dest.display(), "create", e));
                continue;
            }
        };
        match copy_entry(&mut stream.body(), &mut out) {
            Ok(()) => {}
            Err(CopyFault::Read(e)) => {
                broken = Some(e.to_string());
                break;
            }
            Err(CopyFault::Write(e)) => return Err(Error::path(dest.display(), "write", e)),
        }
    }
    if let Some(e) = broken {
        return Err(cx.err("", None, ImageRule::BadArchive, e));
    }
    if let Some(e) = unwritable {
        return Err(e);
    }
    if let Some((name, rule)) = bad_name {
        let (rule, why) = match rule {
            crate::Rule::ParentComponent => (
                ImageRule::PathOutside,
                "climbs out of the archive with `..`".to_string(),
            ),
            other => (
                ImageRule::BadArchive,
                format!("cannot be unpacked [{}]", other.code()),
            ),
        };
        return Err(cx.err(&shown(&name), None, rule, format!("the entry {why}")));
    }
    Ok(scratch)
}

/// Whether the archive at `path` has a regular file `manifest.json` or
/// `index.json` at its root, read from its headers alone (bodies skipped)
/// up to the first one found, or to where the archive stops being readable.
fn names_an_image_root(path: &str) -> Result<bool> {
    let mut stream = archive_stream(path)?;
    while let Ok(Some(member)) = stream.next_member() {
        if member.header.entry_type() != tar::EntryType::Regular {
            continue;
        }
        if let Ok(rel) = normalise(&member.path_bytes()) {
            if let [top] = rel.as_slice() {
                if top == SAVE_MANIFEST || top == INDEX_JSON {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// The members of the archive at `path`, inflated by its magic. Headers
/// are read by the layer reader's stream, so an extension record (PAX, GNU
/// long name) is bounded as in a layer.
fn archive_stream(path: &str) -> Result<TarStream<std::io::BufReader<Box<dyn Read>>>> {
    let file = File::open(path).map_err(|e| Error::path(path, "open image", e))?;
    let reader = crate::layer::decompress(file).map_err(|e| Error::path(path, "read image", e))?;
    Ok(TarStream::new(
        std::io::BufReader::new(reader),
        crate::Limits::DEFAULT_MAX_EXTENSION_BYTES,
    ))
}

enum CopyFault {
    Read(io::Error),
    Write(io::Error),
}

/// Copies a tar entry to a file, telling a corrupt archive from a full disk.
fn copy_entry(entry: &mut impl Read, out: &mut File) -> std::result::Result<(), CopyFault> {
    use std::io::Write;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyFault::Read(e)),
        };
        out.write_all(&buf[..n]).map_err(CopyFault::Write)?;
    }
}

/// `sha256:…` of everything `reader` yields.
pub fn sha256_of(reader: &mut dyn Read) -> io::Result<String> {
    Algorithm::Sha256.hash(reader)
}

impl Image {
    /// Opens each layer for reading, after checking its blob digest and its
    /// `diff_id` (the digest of the uncompressed tar). The file checked is
    /// the file returned.
    pub fn readers(&self) -> Result<Vec<File>> {
        let cx = Ctx {
            image: &self.name,
            root: &self.root,
        };
        self.layers
            .iter()
            .map(|l| match &l.check {
                None => {
                    File::open(&l.path).map_err(|e| Error::path(l.path.display(), "open layer", e))
                }
                Some(c) => verified(&cx, l, c),
            })
            .collect()
    }
}

fn verified(cx: &Ctx, l: &ImageLayer, c: &Check) -> Result<File> {
    let (mut file, len) = cx.open_named(&c.rel, &c.from, &c.field)?;
    let name = c.rel.join("/");
    if let Some((size, desc)) = &c.size {
        cx.check_size(&c.from, desc, &c.rel, *size, len)?;
    }
    let read_err = |e| Error::path(l.path.display(), "read layer", e);
    if let Some(d) = &c.digest {
        let got = d.algorithm.hash(&mut file).map_err(read_err)?;
        if got != d.to_string() {
            return Err(cx.err(
                &name,
                None,
                ImageRule::DigestMismatch,
                format!("the content hashes to {got}"),
            ));
        }
        file.rewind().map_err(read_err)?;
    }
    if let Some(id) = &c.diff_id {
        let decompress = |e| Error::path(l.path.display(), "decompress layer", e);
        let mut tar = crate::layer::decompress(&file).map_err(decompress)?;
        let got = id.want.algorithm.hash(&mut tar).map_err(decompress)?;
        drop(tar);
        if got != id.want.to_string() {
            return Err(cx.err(
                &id.config,
                Some(id.field.clone()),
                ImageRule::DiffIdMismatch,
                format!("{}, but {name} uncompresses to {got}", id.want),
            ));
        }
        file.rewind().map_err(read_err)?;
    }
    Ok(file)
}
