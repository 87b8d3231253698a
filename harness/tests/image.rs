//! Images end to end through the `overlayer` binary: unpack of OCI layouts
//! and docker-save archives (digests verified), and `hidden`.

use std::path::Path;
use std::process::Command;

use overlayer_harness::case::{build_tar, TarEntry};
use overlayer_harness::imagefmt::{write_image, ImageFormat};

fn file(path: &str, text: &str) -> TarEntry {
    TarEntry {
        path: path.into(),
        text: text.into(),
        ..Default::default()
    }
}

/// base: app/.env (a secret), app/main.py; top: deletes the secret, adds a log.
fn layers() -> Vec<Vec<u8>> {
    vec![
        build_tar(&[
            file("app/.env", "DB_PASSWORD=hunter2"),
            file("app/main.py", "print(1)"),
        ])
        .unwrap(),
        build_tar(&[file("app/.wh..env", ""), file("var/log/x", "started")]).unwrap(),
    ]
}

fn overlayer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_overlayer"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn files(root: &Path) -> Vec<String> {
    overlayer::tree::capture(root)
        .unwrap()
        .nodes
        .into_iter()
        .filter(|(_, n)| n.kind == overlayer::tree::Type::File)
        .map(|(p, _)| p)
        .collect()
}

#[test]
fn unpack_flat_reads_oci_layouts_and_docker_save_archives() {
    let tmp = tempfile::tempdir().unwrap();
    for (format, dest) in [
        (ImageFormat::Oci, "oci"),
        (ImageFormat::DockerSave, "save.tar"),
    ] {
        let image = tmp.path().join(dest);
        write_image(&layers(), format, &image).unwrap();
        let out = tmp.path().join(format!("rootfs-{dest}"));
        let o = overlayer(&["unpack", s(&image), "--out", s(&out)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(files(&out), ["app/main.py", "var/log/x"]);
    }
    // DIR:TAG names the manifest.
    let out = tmp.path().join("tagged");
    let tagged = format!("{}:latest", s(&tmp.path().join("oci")));
    assert!(overlayer(&["unpack", &tagged, "--out", s(&out)])
        .status
        .success());
}

#[test]
fn a_tampered_layer_blob_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("oci");
    write_image(&layers(), ImageFormat::Oci, &image).unwrap();
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(image.join("index.json")).unwrap()).unwrap();
    let manifest_hex = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(image.join("blobs/sha256").join(manifest_hex)).unwrap(),
    )
    .unwrap();
    let layer_hex = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let blob = image.join("blobs/sha256").join(layer_hex);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = tmp.path().join("rootfs");
    let o = overlayer(&["unpack", s(&image), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("digest mismatch"));
    assert!(!out.exists());
}

#[test]
fn unpack_overlay_writes_layer_dirs_and_the_mount_command() {
    if !overlayer_harness::kernel::available_or_skip("unpack --format overlay and its mount") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("oci");
    write_image(&layers(), ImageFormat::Oci, &image).unwrap();
    let out = tmp.path().join("layers");
    let o = overlayer(&["unpack", s(&image), "--out", s(&out), "--format", "overlay"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("layers.json")).unwrap()).unwrap();
    let mount = doc["mount"].as_str().unwrap();
    assert!(
        mount.starts_with("mount -t overlay overlay -o ro,lowerdir="),
        "{mount}"
    );
    assert!(mount.contains(&format!("{}:{}", s(&out.join("1")), s(&out.join("0")))));
    // The command works: mount it in a private namespace and look.
    let merged = tmp.path().join("m");
    std::fs::create_dir(&merged).unwrap();
    let options = mount
        .split(" -o ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let seen = overlayer::mount::in_private_namespace(|| {
        overlayer::sys::mount_overlay(&merged, options.trim_start_matches("ro,"), true).map_err(
            |e| overlayer::Error::Path {
                path: "m".into(),
                op: "mount",
                source: e,
            },
        )?;
        Ok(files(&merged))
    })
    .unwrap();
    assert_eq!(seen, ["app/main.py", "var/log/x"]);
}

#[test]
fn hidden_names_the_deleted_secret_and_its_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("save.tar");
    write_image(&layers(), ImageFormat::DockerSave, &image).unwrap();
    let o = overlayer(&["hidden", s(&image), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let found: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        found,
        serde_json::json!([{
            "path": "/app/.env", "layer": 0, "size": 19, "hidden_by": 1, "how": "whiteout"
        }])
    );
}

fn check(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_overlayer"))
        .arg("check")
        .args(args)
        .env("OVERLAYER", env!("CARGO_BIN_EXE_overlayer"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn check_passes_overlayers_own_unpacker_on_the_corpus() {
    if !overlayer_harness::kernel::available_or_skip("some cases need root to unpack") {
        return;
    }
    let (code, out) = check(&[
        "--unpacker",
        "harness/adapters/overlayer.sh {image} {rootfs}",
        "--generated",
        "20",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(" 0 failed"), "{out}");
}

#[test]
fn check_catches_a_naive_unpacker_and_one_that_writes_outside() {
    let (code, out) = check(&[
        "--image-format",
        "layers",
        "--cases",
        "cases/file-whiteout.json",
        "--unpacker",
        "harness/adapters/tar-naive.sh {image} {rootfs}",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("file-whiteout") && out.contains("fail"),
        "{out}"
    );
    let (code, out) = check(&[
        "--cases",
        "cases/file-whiteout.json",
        "--unpacker",
        "harness/adapters/overlayer.sh {image} {rootfs} && echo x >> {rootfs}/../sentinel-file",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("wrote outside"), "{out}");
}
