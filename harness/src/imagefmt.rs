//! Writing test images from layer bytes: an OCI image layout, a `docker
//! save` archive, or plain layer files, for `unpack` tests and `check`.

use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The image forms `check` can hand an unpacker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    /// An OCI image layout directory, tag `latest`, gzip layers.
    Oci,
    /// A `docker save` archive (manifest.json, `<id>/layer.tar`).
    DockerSave,
    /// Layer files `0.tar` … `N-1.tar` in a directory, bottom first, as
    /// the case has them (possibly compressed).
    Layers,
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

/// Plain tar bytes of a layer (decompressed if needed).
fn plain(layer: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    std::io::copy(&mut overlayer::layer::decompress(layer)?, &mut out)?;
    Ok(out)
}

fn config(diff_ids: &[String]) -> serde_json::Value {
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
}

/// Writes `layers` (bottom first) as an image of `format` at `dest`
/// (a directory for `oci` and `layers`, a file for `docker-save`).
pub fn write_image(layers: &[Vec<u8>], format: ImageFormat, dest: &Path) -> Result<()> {
    if format == ImageFormat::Layers {
        // As they are: compressed or corrupt layers reach the unpacker too.
        std::fs::create_dir_all(dest)?;
        for (i, l) in layers.iter().enumerate() {
            std::fs::write(dest.join(format!("{i}.tar")), l)?;
        }
        return Ok(());
    }
    let plains = layers
        .iter()
        .map(|l| plain(l))
        .collect::<Result<Vec<_>>>()?;
    let diff_ids: Vec<String> = plains
        .iter()
        .map(|p| format!("sha256:{}", sha(p)))
        .collect();
    match format {
        ImageFormat::Layers => unreachable!("written above"),
        ImageFormat::Oci => {
            let blobs = dest.join("blobs/sha256");
            std::fs::create_dir_all(&blobs)?;
            let put = |bytes: &[u8]| -> Result<(String, usize)> {
                let hex = sha(bytes);
                std::fs::write(blobs.join(&hex), bytes)?;
                Ok((format!("sha256:{hex}"), bytes.len()))
            };
            let mut layer_descs = Vec::new();
            for p in &plains {
                let (digest, size) = put(&gzip(p)?)?;
                layer_descs.push(serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest, "size": size,
                }));
            }
            let (cdigest, csize) = put(serde_json::to_string(&config(&diff_ids))?.as_bytes())?;
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
                "layers": layer_descs,
            });
            let (mdigest, msize) = put(serde_json::to_string(&manifest)?.as_bytes())?;
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": mdigest, "size": msize,
                    "annotations": {"org.opencontainers.image.ref.name": "latest"},
                    "platform": {"architecture": "amd64", "os": "linux"},
                }],
            });
            std::fs::write(dest.join("index.json"), serde_json::to_string(&index)?)?;
            std::fs::write(dest.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        ImageFormat::DockerSave => {
            let mut tar = tar::Builder::new(Vec::new());
            let mut add = |name: &str, bytes: &[u8]| -> Result<()> {
                let mut h = tar::Header::new_ustar();
                h.set_size(bytes.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                tar.append_data(&mut h, name, bytes)
                    .with_context(|| format!("add {name}"))
            };
            let mut names = Vec::new();
            for (i, p) in plains.iter().enumerate() {
                let name = format!("{:064x}/layer.tar", i + 1);
                add(&name, p)?;
                names.push(name);
            }
            let cfg = serde_json::to_vec(&config(&diff_ids))?;
            let cfg_name = format!("{}.json", sha(&cfg));
            add(&cfg_name, &cfg)?;
            let manifest = serde_json::json!([{
                "Config": cfg_name, "RepoTags": ["overlayer-check:latest"], "Layers": names,
            }]);
            add(
                "manifest.json",
                serde_json::to_string(&manifest)?.as_bytes(),
            )?;
            std::fs::write(dest, tar.into_inner()?)?;
        }
    }
    Ok(())
}
