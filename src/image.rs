//! Images: OCI image layouts (index.json → manifest → config → layers,
//! image-spec image-layout.md) and `docker save` archives (manifest.json and
//! `*/layer.tar`, or the newer OCI-in-docker-save form with `blobs/`).
//! Blob digests and the config's `diff_id`s are verified while reading.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::layer::normalise;

/// The annotation naming a manifest's tag in an OCI layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One layer of an image, bottom first.
#[derive(Debug, Clone)]
pub struct ImageLayer {
    pub path: PathBuf,
    /// `sha256:…` of the blob as stored (compressed), if known.
    pub digest: Option<String>,
    /// `sha256:…` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Option<String>,
}

/// An image opened for reading.
#[derive(Debug)]
pub struct Image {
    pub layers: Vec<ImageLayer>,
    /// Where a `docker save` archive was unpacked (removed on drop).
    _scratch: Option<tempfile::TempDir>,
}

fn bad(what: impl std::fmt::Display, why: impl Into<String>) -> Error {
    Error::path(what, "read image", io::Error::other(why.into()))
}

/// Opens what a command was given: one OCI layout (`DIR[:TAG]`) or `docker
/// save` archive (`FILE[:TAG]`), or one or more raw layer tars, bottom first.
pub fn open_any(args: &[String], platform: &str) -> Result<Image> {
    if let [one] = args {
        match open(one, platform) {
            Err(Error::Path {
                op: "read image",
                source,
                ..
            }) if source.to_string() == NEITHER => {}
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
            })
            .collect(),
        _scratch: None,
    })
}

const NEITHER: &str = "neither an OCI layout nor a docker save archive";

/// Opens `spec`: an OCI layout directory, `DIR:TAG`, or a `docker save`
/// archive (`FILE` or `FILE:TAG`). `platform` is `os/arch` (`linux/amd64`).
pub fn open(spec: &str, platform: &str) -> Result<Image> {
    let (path, tag) = split_tag(spec);
    let meta = std::fs::metadata(&path).map_err(|e| Error::path(&path, "open image", e))?;
    if meta.is_dir() {
        let layers = oci_layout(Path::new(&path), tag.as_deref(), platform)?;
        return Ok(Image {
            layers,
            _scratch: None,
        });
    }
    let scratch = unpack_archive(Path::new(&path))?;
    let root = scratch.path().to_path_buf();
    let layers = if root.join("manifest.json").exists() {
        docker_save(&root, tag.as_deref())?
    } else if root.join("index.json").exists() {
        oci_layout(&root, tag.as_deref(), platform)?
    } else {
        return Err(bad(&path, NEITHER));
    };
    Ok(Image {
        layers,
        _scratch: Some(scratch),
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

fn blob(root: &Path, digest: &oci_spec::image::Digest) -> Result<PathBuf> {
    let hex = digest.digest();
    let algo = digest.algorithm().to_string();
    if !hex.bytes().all(|b| b.is_ascii_hexdigit())
        || !algo.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(bad(root.display(), format!("malformed digest {digest}")));
    }
    Ok(root.join("blobs").join(algo).join(hex))
}

fn platform_matches(p: Option<&oci_spec::image::Platform>, want: &str) -> bool {
    let Some(p) = p else { return true };
    let have = format!("{}/{}", p.os(), p.architecture());
    have == want
}

fn oci_layout(root: &Path, tag: Option<&str>, platform: &str) -> Result<Vec<ImageLayer>> {
    let index = ImageIndex::from_file(root.join("index.json"))
        .map_err(|e| bad(root.display(), format!("index.json: {e}")))?;
    let mut candidates: Vec<_> = index
        .manifests()
        .iter()
        .filter(|d| match tag {
            Some(t) => {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .map(String::as_str)
                    == Some(t)
            }
            None => true,
        })
        .cloned()
        .collect();
    let mut manifest = None;
    while manifest.is_none() {
        candidates.retain(|d| platform_matches(d.platform().as_ref(), platform));
        let desc = match candidates.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(bad(
                    root.display(),
                    format!("no manifest for {} {platform}", tag.unwrap_or("the image")),
                ))
            }
            _ => {
                return Err(bad(
                    root.display(),
                    "several manifests: name one as DIR:TAG",
                ))
            }
        };
        let path = blob(root, desc.digest())?;
        verify_file(&path, desc.digest().as_ref())?;
        if *desc.media_type() == MediaType::ImageIndex {
            let nested =
                ImageIndex::from_file(&path).map_err(|e| bad(path.display(), e.to_string()))?;
            candidates = nested.manifests().to_vec();
        } else {
            manifest = Some(
                ImageManifest::from_file(&path).map_err(|e| bad(path.display(), e.to_string()))?,
            );
        }
    }
    let manifest = manifest.expect("loop ends with a manifest");
    let config_path = blob(root, manifest.config().digest())?;
    verify_file(&config_path, manifest.config().digest().as_ref())?;
    let config = ImageConfiguration::from_file(&config_path)
        .map_err(|e| bad(config_path.display(), e.to_string()))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(bad(
            root.display(),
            "the config's diff_ids do not match the manifest's layers",
        ));
    }
    manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(d, diff_id)| {
            Ok(ImageLayer {
                path: blob(root, d.digest())?,
                digest: Some(d.digest().to_string()),
                diff_id: Some(diff_id.clone()),
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

fn docker_save(root: &Path, tag: Option<&str>) -> Result<Vec<ImageLayer>> {
    let text = std::fs::read_to_string(root.join("manifest.json"))
        .map_err(|e| Error::path("manifest.json", "read image", e))?;
    let manifests: Vec<SaveManifest> =
        serde_json::from_str(&text).map_err(|e| bad("manifest.json", e.to_string()))?;
    let chosen: Vec<&SaveManifest> = manifests
        .iter()
        .filter(|m| match tag {
            Some(t) => m
                .repo_tags
                .iter()
                .flatten()
                .any(|r| r == t || r.ends_with(&format!(":{t}"))),
            None => true,
        })
        .collect();
    let m = match chosen.as_slice() {
        [one] => *one,
        [] => return Err(bad("manifest.json", "no image with that tag")),
        _ => return Err(bad("manifest.json", "several images: name one as FILE:TAG")),
    };
    let inside = |name: &str| -> Result<PathBuf> {
        let rel = normalise(name.as_bytes()).map_err(|r| bad(name, r.to_string()))?;
        Ok(root.join(rel.join("/")))
    };
    let config = ImageConfiguration::from_file(inside(&m.config)?)
        .map_err(|e| bad(&m.config, e.to_string()))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != m.layers.len() {
        return Err(bad(
            "manifest.json",
            "the config's diff_ids do not match the layers",
        ));
    }
    m.layers
        .iter()
        .zip(diff_ids)
        .map(|(name, diff_id)| {
            // OCI-in-docker-save names blobs by digest.
            let digest = name
                .strip_prefix("blobs/sha256/")
                .map(|hex| format!("sha256:{hex}"));
            Ok(ImageLayer {
                path: inside(name)?,
                digest,
                diff_id: Some(diff_id.clone()),
            })
        })
        .collect()
}

/// Unpacks the regular files of a `docker save` archive into a scratch
/// directory, names confined (no `..`, no absolute paths, no links).
fn unpack_archive(path: &Path) -> Result<tempfile::TempDir> {
    let scratch = tempfile::Builder::new()
        .prefix(".overlayer-image-")
        .tempdir()
        .map_err(|e| Error::path("temporary directory", "create", e))?;
    let file = File::open(path).map_err(|e| Error::path(path.display(), "open image", e))?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    let entries = archive
        .entries()
        .map_err(|e| Error::path(path.display(), "read image", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::path(path.display(), "read image", e))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path_bytes().into_owned();
        let rel = normalise(&name).map_err(|r| bad(path.display(), r.to_string()))?;
        if rel.is_empty() {
            continue;
        }
        let dest = scratch.path().join(rel.join("/"));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::path(parent.display(), "mkdir", e))?;
        }
        let mut out = File::create(&dest).map_err(|e| Error::path(dest.display(), "create", e))?;
        io::copy(&mut entry, &mut out).map_err(|e| Error::path(dest.display(), "write", e))?;
    }
    Ok(scratch)
}

/// Checks that the file at `path` has the digest `want` (`sha256:…`).
pub fn verify_file(path: &Path, want: &str) -> Result<()> {
    let mut file = File::open(path).map_err(|e| Error::path(path.display(), "open blob", e))?;
    let got = sha256_of(&mut file).map_err(|e| Error::path(path.display(), "read blob", e))?;
    if got != want {
        return Err(bad(
            path.display(),
            format!("digest mismatch: want {want}, have {got}"),
        ));
    }
    Ok(())
}

/// `sha256:…` of everything `reader` yields.
pub fn sha256_of(reader: &mut dyn Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

impl Image {
    /// Opens each layer for reading, after checking its blob digest and its
    /// `diff_id` (the digest of the uncompressed tar).
    pub fn readers(&self) -> Result<Vec<File>> {
        self.layers
            .iter()
            .map(|l| {
                if let Some(d) = &l.digest {
                    verify_file(&l.path, d)?;
                }
                let open = || {
                    File::open(&l.path).map_err(|e| Error::path(l.path.display(), "open layer", e))
                };
                if let Some(want) = &l.diff_id {
                    let mut tar = crate::layer::decompress(open()?)
                        .map_err(|e| Error::path(l.path.display(), "decompress layer", e))?;
                    let got = sha256_of(&mut tar)
                        .map_err(|e| Error::path(l.path.display(), "decompress layer", e))?;
                    if &got != want {
                        return Err(bad(
                            l.path.display(),
                            format!("diff_id mismatch: want {want}, have {got}"),
                        ));
                    }
                }
                open()
            })
            .collect()
    }
}
