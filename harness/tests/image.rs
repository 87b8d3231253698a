//! Images end to end through the `overlayer` binary: unpack of OCI layouts
//! and docker-save archives (digests verified), `hidden`, and every way a
//! malformed image is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use overlayer::{Error, ImageRule};
use overlayer_harness::case::{build_tar, TarEntry};
use overlayer_harness::imagefmt::{write_image, ImageFormat};
use serde_json::{json, Value};
use sha2::Digest;

/// base: app/.env (a secret), app/main.py; top: deletes the secret, adds a log.
fn layers() -> Vec<Vec<u8>> {
    vec![
        build_tar(&[
            TarEntry::file("app/.env", "DB_PASSWORD=hunter2"),
            TarEntry::file("app/main.py", "print(1)"),
        ])
        .unwrap(),
        build_tar(&[
            TarEntry::file("app/.wh..env", ""),
            TarEntry::file("var/log/x", "started"),
        ])
        .unwrap(),
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
    let stderr = String::from_utf8_lossy(&o.stderr);
    let want = format!(
        "image {}: blobs/sha256/{layer_hex}: the content hashes to sha256:",
        s(&image)
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert!(stderr.trim_end().ends_with("[digest-mismatch]"), "{stderr}");
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

/// A raw layer where an image may be given is read as a layer without
/// being unpacked into a scratch directory first (which no limit bounds):
/// with no writable temporary directory, `hidden` and `unpack` of a raw
/// gzip layer still work, while an image archive, which needs one, says so.
#[test]
fn a_raw_layer_given_as_an_image_is_not_unpacked_to_scratch() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &layers()[0]).unwrap();
    std::fs::write(&layer, gz.finish().unwrap()).unwrap();
    let image = tmp.path().join("save.tar");
    write_image(&layers(), ImageFormat::DockerSave, &image).unwrap();
    let no_tmp = tmp.path().join("no-such-dir");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_overlayer"))
            .args(args)
            .env("TMPDIR", &no_tmp)
            .output()
            .unwrap()
    };
    let o = run(&["hidden", s(&layer), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = tmp.path().join("rootfs");
    let o = run(&["unpack", s(&layer), "--out", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(files(&out), ["app/.env", "app/main.py"]);
    let o = run(&["hidden", s(&image)]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("temporary directory"),
        "{stderr}"
    );
}

/// A `docker save` archive's files count against `--max-bytes` and
/// `--max-entries` while it is unpacked: past them it is refused with
/// archive-too-large, naming the file that crossed the limit, and no output
/// is left.
#[test]
fn an_image_archive_past_the_limits_is_refused_while_unpacked() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("save.tar");
    write_image(&layers(), ImageFormat::DockerSave, &image).unwrap();
    let out = tmp.path().join("rootfs");
    let o = overlayer(&["unpack", s(&image), "--out", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&out).unwrap();
    for limit in [["--max-bytes", "100"], ["--max-entries", "1"]] {
        let o = overlayer(&["unpack", s(&image), "--out", s(&out), limit[0], limit[1]]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{limit:?}: {stderr}");
        assert!(
            stderr.contains("[archive-too-large]"),
            "{limit:?}: {stderr}"
        );
        assert!(!out.exists(), "{limit:?}: output left");
    }
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

/// layer.md: a root entry (`./`) sets the root's attributes, so `check`
/// compares the rootfs directory where a layer has one, and leaves it to
/// the unpacker where none has.
#[test]
fn check_compares_the_root_only_where_a_layer_sets_it() {
    if !overlayer_harness::kernel::available_or_skip("unpacking the root entry's owner needs root")
    {
        return;
    }
    let ignores_root = "harness/adapters/overlayer.sh {image} {rootfs} && chmod 0700 {rootfs}";
    let (code, out) = check(&[
        "--cases",
        "cases/root-entry-updates-root-metadata.json",
        "--unpacker",
        ignores_root,
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(".: mode: 0751 ≠ 0700"), "{out}");
    let (code, out) = check(&[
        "--cases",
        "cases/file-whiteout.json",
        "--unpacker",
        ignores_root,
    ]);
    assert_eq!(code, Some(0), "{out}");
}

/// A refusal is an answer; a crash or a timeout is not, even where the case
/// requires a refusal, and each is reported as what it was.
#[test]
fn check_keeps_a_refusal_apart_from_a_crash_and_a_timeout() {
    let refused_case = "cases/hostile/name-dotdot-relative-refused.json";
    let row = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("name-dotdot-relative-refused "))
            .unwrap_or_else(|| panic!("no row in {out}"))
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (code, out) = check(&["--cases", refused_case, "--unpacker", "exit 3"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        row(&out),
        "name-dotdot-relative-refused pass refused",
        "{out}"
    );
    assert!(out.contains("refused 1, crashed 0, timed out 0"), "{out}");

    let (code, out) = check(&["--cases", refused_case, "--unpacker", "kill -SEGV $$"]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        row(&out),
        "name-dotdot-relative-refused fail CRASHED",
        "{out}"
    );
    assert!(out.contains("killed by signal 11"), "{out}");

    let go_panic = "printf 'panic: runtime error\\n\\ngoroutine 1 [running]:\\n' >&2; exit 2";
    let (code, out) = check(&["--cases", refused_case, "--unpacker", go_panic]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        row(&out),
        "name-dotdot-relative-refused fail CRASHED",
        "{out}"
    );
    assert!(out.contains("crashed: panic: runtime error"), "{out}");

    // The whole process group goes, the sleeping grandchild included.
    let marker = tempfile::tempdir().unwrap();
    let left = marker.path().join("left-running");
    let sleeper = format!("(sleep 3; touch {}) & sleep 30", left.display());
    let (code, out) = check(&[
        "--cases",
        refused_case,
        "--timeout",
        "1",
        "--unpacker",
        &sleeper,
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        row(&out),
        "name-dotdot-relative-refused fail TIMEOUT",
        "{out}"
    );
    assert!(out.contains("timed out: still running after 1 s"), "{out}");
    assert!(out.contains("crashed 0, timed out 1"), "{out}");
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        !left.exists(),
        "a child of the timed-out unpacker kept running"
    );
}

// Malformed images: every problem is an image error naming the image once,
// the file in it, the position or field, and the rule broken.

const PLATFORM: &str = "linux/amd64";

/// An OCI layout of `layers()` to break, with its parts at hand.
struct Layout {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn layout() -> Layout {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("oci");
    write_image(&layers(), ImageFormat::Oci, &root).unwrap();
    Layout { _tmp: tmp, root }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

impl Layout {
    fn name(&self) -> &str {
        s(&self.root)
    }

    /// A directory beside the layout, outside it.
    fn outside(&self) -> PathBuf {
        self.root.parent().unwrap().join("outside")
    }

    fn blob(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').unwrap();
        self.root.join("blobs").join(alg).join(hex)
    }

    fn json(path: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn index(&self) -> Value {
        Self::json(&self.root.join("index.json"))
    }

    fn set_index(&self, index: &Value) {
        std::fs::write(self.root.join("index.json"), index.to_string()).unwrap();
    }

    /// Stores `bytes` as a sha256 blob: its digest and size.
    fn put(&self, bytes: &[u8]) -> (String, usize) {
        let digest = format!("sha256:{}", sha256(bytes));
        std::fs::write(self.blob(&digest), bytes).unwrap();
        (digest, bytes.len())
    }

    fn manifest_digest(&self) -> String {
        self.index()["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn manifest_file(&self) -> String {
        format!(
            "blobs/sha256/{}",
            self.manifest_digest().trim_start_matches("sha256:")
        )
    }

    fn manifest(&self) -> Value {
        Self::json(&self.blob(&self.manifest_digest()))
    }

    /// Replaces the manifest by `bytes`, the index naming it rightly.
    fn set_manifest_bytes(&self, bytes: &[u8]) {
        let (digest, size) = self.put(bytes);
        let mut index = self.index();
        index["manifests"][0]["digest"] = json!(digest);
        index["manifests"][0]["size"] = json!(size);
        self.set_index(&index);
    }

    fn set_manifest(&self, manifest: &Value) {
        self.set_manifest_bytes(manifest.to_string().as_bytes());
    }

    fn config_digest(&self) -> String {
        self.manifest()["config"]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn config(&self) -> Value {
        Self::json(&self.blob(&self.config_digest()))
    }

    /// Replaces the config by `bytes`, manifest and index naming it rightly.
    fn set_config_bytes(&self, bytes: &[u8]) -> String {
        let (digest, size) = self.put(bytes);
        let mut manifest = self.manifest();
        manifest["config"]["digest"] = json!(digest);
        manifest["config"]["size"] = json!(size);
        self.set_manifest(&manifest);
        format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
    }

    fn layer_digest(&self, i: usize) -> String {
        self.manifest()["layers"][i]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// The error opening `spec` (and reading its layers) gives.
fn image_error(spec: &str) -> Error {
    match overlayer::image::open(spec, PLATFORM).and_then(|img| img.readers()) {
        Ok(_) => panic!("{spec} opened"),
        Err(e) => e,
    }
}

/// `err` is `rule`, and reads `image IMAGE: FILE: AT…[code]` with the image
/// named once.
fn assert_image_error(err: &Error, image: &str, rule: ImageRule, file: &str, at: &str) -> String {
    let text = err.to_string();
    assert_eq!(err.image_rule(), Some(rule), "{text}");
    let head = if file.is_empty() {
        format!("image {image}: {at}")
    } else {
        format!("image {image}: {file}: {at}")
    };
    assert!(text.starts_with(&head), "want {head:?}…, have {text}");
    assert!(text.ends_with(&format!(" [{}]", rule.code())), "{text}");
    assert_eq!(text.matches(image).count(), 1, "{text}");
    text
}

#[test]
fn a_truncated_index_json_names_its_line_and_column() {
    let l = layout();
    let index = std::fs::read(l.root.join("index.json")).unwrap();
    std::fs::write(l.root.join("index.json"), &index[..40]).unwrap();
    let text = assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::NotJson,
        "index.json",
        "line 1, column 40: EOF while parsing",
    );
    assert!(!text.contains("serde failed"), "{text}");
    // The command says the same.
    let out = l.root.parent().unwrap().join("rootfs");
    let o = overlayer(&["unpack", l.name(), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(&text), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn an_index_json_that_is_not_json_at_all() {
    let l = layout();
    std::fs::write(l.root.join("index.json"), "hello, world\n").unwrap();
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::NotJson,
        "index.json",
        "line 1, column 1: expected value",
    );
}

#[test]
fn a_directory_without_index_json_is_not_a_layout() {
    let l = layout();
    std::fs::remove_file(l.root.join("index.json")).unwrap();
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::NoIndex,
        "index.json",
        "missing",
    );
}

#[test]
fn a_manifest_that_is_not_json_names_its_blob() {
    let l = layout();
    l.set_manifest_bytes(b"{\"schemaVersion\": 2,\n \"config\": nope}");
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::NotJson,
        &l.manifest_file(),
        "line 2, column 13: expected ident",
    );
}

#[test]
fn a_config_with_a_field_of_the_wrong_type_keeps_serdes_position() {
    let l = layout();
    let mut config = l.config();
    config["architecture"] = json!(5);
    let file = l.set_config_bytes(serde_json::to_string_pretty(&config).unwrap().as_bytes());
    let text = assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::BadField,
        &file,
        "line 2, column ",
    );
    assert!(text.contains("invalid type: integer `5`"), "{text}");
}

#[test]
fn a_config_without_diff_ids_names_the_missing_field() {
    let l = layout();
    let mut config = l.config();
    config["rootfs"].as_object_mut().unwrap().remove("diff_ids");
    let file = l.set_config_bytes(config.to_string().as_bytes());
    let text = assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::BadField,
        &file,
        "line 1, column ",
    );
    assert!(text.contains("missing field `diff_ids`"), "{text}");
}

fn hex64() -> String {
    "0123456789abcdef".repeat(4)
}

#[rstest::rstest]
#[case::traversal("sha256:../../etc/hostname", ImageRule::DigestEncoding)]
#[case::slash_of_the_right_length(
    &format!("sha256:{}/{}", &hex64()[..31], &hex64()[..32]),
    ImageRule::DigestEncoding
)]
#[case::uppercase(&format!("sha256:{}", hex64().to_uppercase()), ImageRule::DigestEncoding)]
#[case::too_short("sha256:abc", ImageRule::DigestEncoding)]
#[case::sha512_too_short("sha512:abc", ImageRule::DigestEncoding)]
#[case::sha512_of_sha256_length(&format!("sha512:{}", hex64()), ImageRule::DigestEncoding)]
#[case::no_algorithm(&hex64(), ImageRule::DigestEncoding)]
#[case::md5("md5:d41d8cd98f00b204e9800998ecf8427e", ImageRule::DigestAlgorithm)]
#[case::traversal_algorithm(&format!("../sha256:{}", hex64()), ImageRule::DigestAlgorithm)]
#[case::blake3(&format!("blake3:{}", hex64()), ImageRule::DigestAlgorithm)]
fn a_bad_digest_in_the_index_is_refused_before_a_path_is_built(
    #[case] digest: &str,
    #[case] rule: ImageRule,
) {
    let l = layout();
    // If a path were built from it, this is what it would find.
    std::fs::create_dir_all(l.root.join("blobs/sha256/..")).unwrap();
    let mut index = l.index();
    index["manifests"][0]["digest"] = json!(digest);
    l.set_index(&index);
    let text = assert_image_error(
        &image_error(l.name()),
        l.name(),
        rule,
        "index.json",
        "manifests[0].digest: ",
    );
    assert!(text.contains(&format!("{digest:?}")), "{text}");
}

#[rstest::rstest]
#[case::layer("layers", 1)]
#[case::config("config", 0)]
fn a_bad_digest_in_the_manifest_names_its_field(#[case] which: &str, #[case] i: usize) {
    let l = layout();
    let mut manifest = l.manifest();
    let at = if which == "config" {
        manifest["config"]["digest"] = json!("sha256:../../../../etc/hostname");
        "config.digest".to_string()
    } else {
        manifest["layers"][i]["digest"] = json!("sha256:../../../../etc/hostname");
        format!("layers[{i}].digest")
    };
    l.set_manifest(&manifest);
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::DigestEncoding,
        &l.manifest_file(),
        &format!("{at}: \"sha256:../../../../etc/hostname\""),
    );
}

#[test]
fn a_bad_diff_id_in_the_config_names_its_field() {
    let l = layout();
    let mut config = l.config();
    config["rootfs"]["diff_ids"][1] = json!("md5:d41d8cd98f00b204e9800998ecf8427e");
    let file = l.set_config_bytes(config.to_string().as_bytes());
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::DigestAlgorithm,
        &file,
        "rootfs.diff_ids[1]: ",
    );
}

#[rstest::rstest]
#[case::bigger(1)]
#[case::smaller(-1)]
fn a_descriptor_size_that_lies_is_refused(#[case] delta: i64) {
    let l = layout();
    let mut index = l.index();
    let size = index["manifests"][0]["size"].as_i64().unwrap();
    index["manifests"][0]["size"] = json!(size + delta);
    l.set_index(&index);
    let text = assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::SizeMismatch,
        "index.json",
        &format!(
            "manifests[0].size: {} bytes, but {} has {size}",
            size + delta,
            l.manifest_file()
        ),
    );
    assert!(text.contains(&format!("has {size} [")), "{text}");
}

#[test]
fn a_layer_size_that_lies_is_refused_before_any_layer_is_read() {
    let l = layout();
    let mut manifest = l.manifest();
    let size = manifest["layers"][0]["size"].as_i64().unwrap();
    manifest["layers"][0]["size"] = json!(size * 2);
    l.set_manifest(&manifest);
    let err = overlayer::image::open(l.name(), PLATFORM).unwrap_err();
    assert_image_error(
        &err,
        l.name(),
        ImageRule::SizeMismatch,
        &l.manifest_file(),
        &format!("layers[0].size: {} bytes", size * 2),
    );
}

#[rstest::rstest]
#[case::manifest("manifest")]
#[case::config("config")]
#[case::layer("layer")]
fn a_missing_blob_names_the_field_that_refers_to_it(#[case] which: &str) {
    let l = layout();
    let (digest, file, at) = match which {
        "manifest" => (
            l.manifest_digest(),
            "index.json".to_string(),
            "manifests[0].digest",
        ),
        "config" => (l.config_digest(), l.manifest_file(), "config.digest"),
        _ => (l.layer_digest(1), l.manifest_file(), "layers[1].digest"),
    };
    std::fs::remove_file(l.blob(&digest)).unwrap();
    let rel = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::MissingBlob,
        &file,
        &format!("{at}: {rel} is not in the image"),
    );
}

/// Moves the blob out of the layout and leaves a symlink to it: following
/// it would find exactly the right bytes.
fn symlink_out(l: &Layout, digest: &str) -> String {
    std::fs::create_dir_all(l.outside()).unwrap();
    let outside = l.outside().join(digest.trim_start_matches("sha256:"));
    std::fs::rename(l.blob(digest), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, l.blob(digest)).unwrap();
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

#[test]
fn a_manifest_blob_that_is_a_symlink_out_of_the_layout_is_not_followed() {
    let l = layout();
    let rel = symlink_out(&l, &l.manifest_digest());
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::BlobNotRegular,
        "index.json",
        &format!("manifests[0].digest: {rel} is a symlink, not a regular file"),
    );
}

#[test]
fn a_layer_blob_that_is_a_symlink_out_of_the_layout_is_not_followed() {
    let l = layout();
    let rel = symlink_out(&l, &l.layer_digest(0));
    let manifest = l.manifest_file();
    let err = overlayer::image::open(l.name(), PLATFORM).unwrap_err();
    assert_image_error(
        &err,
        l.name(),
        ImageRule::BlobNotRegular,
        &manifest,
        &format!("layers[0].digest: {rel} is a symlink, not a regular file"),
    );
    let out = l.root.parent().unwrap().join("rootfs");
    let o = overlayer(&["unpack", l.name(), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("[blob-not-regular]"));
    assert!(!out.exists());
}

#[test]
fn a_blobs_directory_that_is_a_symlink_out_of_the_layout_is_not_followed() {
    let l = layout();
    std::fs::create_dir_all(l.outside()).unwrap();
    let moved = l.outside().join("sha256");
    std::fs::rename(l.root.join("blobs/sha256"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, l.root.join("blobs/sha256")).unwrap();
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::BlobNotRegular,
        "index.json",
        "manifests[0].digest: blobs/sha256 is a symlink, not a directory",
    );
}

#[rstest::rstest]
#[case::directory("directory")]
#[case::fifo("fifo")]
fn a_blob_that_is_not_a_regular_file_is_refused(#[case] what: &str) {
    let l = layout();
    let digest = l.config_digest();
    let path = l.blob(&digest);
    std::fs::remove_file(&path).unwrap();
    if what == "directory" {
        std::fs::create_dir(&path).unwrap();
    } else {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }
    let rel = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::BlobNotRegular,
        &l.manifest_file(),
        &format!("config.digest: {rel} is a {what}, not a regular file"),
    );
}

#[test]
fn an_index_json_that_is_a_symlink_is_not_followed() {
    let l = layout();
    std::fs::create_dir_all(l.outside()).unwrap();
    let moved = l.outside().join("index.json");
    std::fs::rename(l.root.join("index.json"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, l.root.join("index.json")).unwrap();
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::BlobNotRegular,
        "index.json",
        "a symlink, not a regular file",
    );
}

#[test]
fn a_config_descriptor_with_a_layer_media_type_is_refused() {
    let l = layout();
    let mut manifest = l.manifest();
    manifest["config"]["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar");
    l.set_manifest(&manifest);
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::MediaType,
        &l.manifest_file(),
        "config.mediaType: \"application/vnd.oci.image.layer.v1.tar\" is not an image config",
    );
}

#[test]
fn a_layer_of_an_unknown_media_type_is_refused() {
    let l = layout();
    let mut manifest = l.manifest();
    manifest["layers"][1]["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+lz4");
    l.set_manifest(&manifest);
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::MediaType,
        &l.manifest_file(),
        "layers[1].mediaType: ",
    );
}

#[test]
fn a_manifest_whose_own_media_type_contradicts_its_descriptor_is_refused() {
    let l = layout();
    let mut manifest = l.manifest();
    manifest["mediaType"] = json!("application/vnd.oci.image.index.v1+json");
    l.set_manifest(&manifest);
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::MediaType,
        &l.manifest_file(),
        "mediaType: \"application/vnd.oci.image.index.v1+json\", but manifests[0] of index.json says",
    );
}

#[test]
fn an_index_listing_only_unknown_media_types_names_the_first() {
    let l = layout();
    let mut index = l.index();
    index["manifests"][0]["mediaType"] = json!("application/vnd.example.thing");
    l.set_index(&index);
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::MediaType,
        "index.json",
        "manifests[0].mediaType: \"application/vnd.example.thing\"",
    );
}

#[test]
fn tags_platforms_and_choices_are_named() {
    let l = layout();
    let tagged = format!("{}:v2", l.name());
    assert_image_error(
        &image_error(&tagged),
        l.name(),
        ImageRule::TagNotFound,
        "index.json",
        "no manifest is tagged \"v2\" (tags: \"latest\")",
    );
    let err = overlayer::image::open(l.name(), "linux/arm64").unwrap_err();
    assert_image_error(
        &err,
        l.name(),
        ImageRule::PlatformNotFound,
        "index.json",
        "no manifest for linux/arm64 (platforms: linux/amd64)",
    );
    let mut index = l.index();
    let mut other = index["manifests"][0].clone();
    other["annotations"][overlayer::image::REF_NAME] = json!("other");
    index["manifests"].as_array_mut().unwrap().push(other);
    l.set_index(&index);
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::SeveralManifests,
        "index.json",
        "2 manifests for linux/amd64: name one as IMAGE:TAG (tags: \"latest\", \"other\")",
    );
    assert!(overlayer::image::open(&format!("{}:other", l.name()), PLATFORM).is_ok());
    index["manifests"] = json!([]);
    l.set_index(&index);
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::NoManifest,
        "index.json",
        "lists no manifests",
    );
}

#[test]
fn a_diff_id_that_does_not_match_the_uncompressed_layer_is_refused() {
    let l = layout();
    let mut config = l.config();
    let want = format!("sha256:{}", sha256(b"another layer"));
    config["rootfs"]["diff_ids"][1] = json!(want);
    let file = l.set_config_bytes(config.to_string().as_bytes());
    let layer = l.layer_digest(1);
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::DiffIdMismatch,
        &file,
        &format!(
            "rootfs.diff_ids[1]: {want}, but blobs/sha256/{} uncompresses to sha256:",
            layer.trim_start_matches("sha256:")
        ),
    );
}

#[test]
fn diff_ids_and_layers_of_different_number_are_refused() {
    let l = layout();
    let mut config = l.config();
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
    l.set_config_bytes(config.to_string().as_bytes());
    assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::LayerCount,
        &l.manifest_file(),
        "layers: 2 layers, but ",
    );
}

/// Rewrites every blob of the layout under sha512, diff_ids too, and removes
/// the sha256 ones.
fn to_sha512(l: &Layout) {
    let sha512 = |bytes: &[u8]| hex::encode(sha2::Sha512::digest(bytes));
    std::fs::create_dir_all(l.root.join("blobs/sha512")).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex = sha512(bytes);
        std::fs::write(l.root.join("blobs/sha512").join(&hex), bytes).unwrap();
        (format!("sha512:{hex}"), bytes.len())
    };
    let mut manifest = l.manifest();
    let mut config = l.config();
    let mut diff_ids = Vec::new();
    for layer in manifest["layers"].as_array_mut().unwrap() {
        let bytes = std::fs::read(l.blob(layer["digest"].as_str().unwrap())).unwrap();
        let mut plain = Vec::new();
        std::io::copy(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut plain).unwrap();
        diff_ids.push(json!(format!("sha512:{}", sha512(&plain))));
        layer["digest"] = json!(put(&bytes).0);
    }
    config["rootfs"]["diff_ids"] = json!(diff_ids);
    let (digest, size) = put(config.to_string().as_bytes());
    manifest["config"]["digest"] = json!(digest);
    manifest["config"]["size"] = json!(size);
    let (digest, size) = put(manifest.to_string().as_bytes());
    let mut index = l.index();
    index["manifests"][0]["digest"] = json!(digest);
    index["manifests"][0]["size"] = json!(size);
    l.set_index(&index);
    std::fs::remove_dir_all(l.root.join("blobs/sha256")).unwrap();
}

#[test]
fn a_layout_of_sha512_blobs_is_verified_and_unpacked() {
    let l = layout();
    to_sha512(&l);
    let out = l.root.parent().unwrap().join("rootfs");
    let o = overlayer(&["unpack", l.name(), "--out", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(files(&out), ["app/main.py", "var/log/x"]);
    // And a tampered sha512 layer is caught.
    let manifest: Value = {
        let index = l.index();
        let hex = index["manifests"][0]["digest"].as_str().unwrap();
        Layout::json(&l.blob(hex))
    };
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bytes = std::fs::read(l.blob(&layer)).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    std::fs::write(l.blob(&layer), bytes).unwrap();
    let text = assert_image_error(
        &image_error(l.name()),
        l.name(),
        ImageRule::DigestMismatch,
        &format!("blobs/sha512/{}", layer.trim_start_matches("sha512:")),
        "the content hashes to sha512:",
    );
    assert!(!text.contains(&layer), "{text}");
}

/// The entries of a tar, in order.
fn tar_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (name, data)
        })
        .collect()
}

/// A tar of regular files, names stored exactly as given.
fn tar_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, &data[..]).unwrap();
    }
    tar.into_inner().unwrap()
}

/// A docker-save archive of `layers()` with its manifest.json edited.
fn save_with(edit: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("save.tar");
    write_image(&layers(), ImageFormat::DockerSave, &image).unwrap();
    let mut entries = tar_entries(&std::fs::read(&image).unwrap());
    edit(&mut entries);
    std::fs::write(&image, tar_of(&entries)).unwrap();
    let name = s(&image).to_string();
    (tmp, name)
}

fn edit_save_manifest(entries: &mut [(String, Vec<u8>)], edit: impl FnOnce(&mut Value)) {
    let (_, data) = entries
        .iter_mut()
        .find(|(n, _)| n == "manifest.json")
        .unwrap();
    let mut manifest: Value = serde_json::from_slice(data).unwrap();
    edit(&mut manifest);
    *data = manifest.to_string().into_bytes();
}

#[test]
fn a_truncated_docker_save_manifest_json_names_its_position() {
    let (_tmp, image) = save_with(|entries| {
        let (_, data) = entries
            .iter_mut()
            .find(|(n, _)| n == "manifest.json")
            .unwrap();
        data.truncate(20);
    });
    assert_image_error(
        &image_error(&image),
        &image,
        ImageRule::NotJson,
        "manifest.json",
        "line 1, column 20: EOF while parsing",
    );
}

#[rstest::rstest]
#[case::parent_layer(
    "Layers",
    "../../../../etc/hostname",
    "climbs out of the archive with `..`"
)]
#[case::inner_parent_layer("Layers", "a/../../b/layer.tar", "climbs out of the archive with `..`")]
#[case::absolute_layer("Layers", "/etc/hostname", "is absolute")]
#[case::parent_config("Config", "../config.json", "climbs out of the archive with `..`")]
#[case::absolute_config("Config", "/etc/hostname", "is absolute")]
fn a_docker_save_name_outside_the_archive_is_refused(
    #[case] field: &str,
    #[case] name: &str,
    #[case] why: &str,
) {
    let (_tmp, image) = save_with(|entries| {
        edit_save_manifest(entries, |m| {
            if field == "Layers" {
                m[0]["Layers"][0] = json!(name);
            } else {
                m[0]["Config"] = json!(name);
            }
        })
    });
    let at = if field == "Layers" {
        "[0].Layers[0]"
    } else {
        "[0].Config"
    };
    assert_image_error(
        &image_error(&image),
        &image,
        ImageRule::PathOutside,
        "manifest.json",
        &format!("{at}: {name:?} {why}"),
    );
}

#[test]
fn a_docker_save_manifest_naming_a_missing_layer_is_refused() {
    let (_tmp, image) = save_with(|entries| {
        edit_save_manifest(entries, |m| m[0]["Layers"][1] = json!("nope/layer.tar"))
    });
    assert_image_error(
        &image_error(&image),
        &image,
        ImageRule::MissingBlob,
        "manifest.json",
        "[0].Layers[1]: nope/layer.tar is not in the image",
    );
}

#[test]
fn a_docker_save_archive_entry_climbing_out_is_refused() {
    let (_tmp, image) = save_with(|entries| {
        entries.push(("../../escape".to_string(), b"x".to_vec()));
    });
    assert_image_error(
        &image_error(&image),
        &image,
        ImageRule::PathOutside,
        "../../escape",
        "the entry climbs out of the archive with `..`",
    );
}

#[test]
fn a_docker_save_with_a_wrong_diff_id_is_refused() {
    let (_tmp, image) = save_with(|entries| {
        let config = entries
            .iter_mut()
            .find(|(n, _)| n.ends_with(".json") && n != "manifest.json")
            .unwrap();
        let mut value: Value = serde_json::from_slice(&config.1).unwrap();
        value["rootfs"]["diff_ids"][0] = json!(format!("sha256:{}", sha256(b"x")));
        config.1 = value.to_string().into_bytes();
    });
    let err = image_error(&image);
    assert_eq!(err.image_rule(), Some(ImageRule::DiffIdMismatch), "{err}");
    assert!(err.to_string().contains(": rootfs.diff_ids[0]: "), "{err}");
}

#[test]
fn a_single_file_that_is_no_image_is_read_as_a_raw_layer() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("layer.tar", layers()[0].clone()),
        ("layer.tar.gz", {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut enc, &layers()[0]).unwrap();
            enc.finish().unwrap()
        }),
    ] {
        let layer = tmp.path().join(name);
        std::fs::write(&layer, bytes).unwrap();
        let err = overlayer::image::open(s(&layer), PLATFORM).unwrap_err();
        assert_eq!(err.image_rule(), Some(ImageRule::NotAnImage), "{err}");
        let out = tmp.path().join(format!("rootfs-{name}"));
        let o = overlayer(&["unpack", s(&layer), "--out", s(&out)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(files(&out), ["app/.env", "app/main.py"]);
    }
}

#[test]
fn a_single_raw_layer_with_a_parent_entry_is_judged_by_the_layer_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer.tar");
    std::fs::write(
        &layer,
        tar_of(&[
            ("a".to_string(), b"1".to_vec()),
            ("../b".to_string(), b"2".to_vec()),
        ]),
    )
    .unwrap();
    let out = tmp.path().join("rootfs");
    let o = overlayer(&["unpack", s(&layer), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("[parent-component]"), "{stderr}");
}

/// A `docker save` archive is read with the layer reader's header stream:
/// a PAX header claiming 1 GiB is refused at its header, not read whole.
#[test]
fn a_docker_save_archive_with_a_huge_pax_header_is_refused_at_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("save.tar");
    let mut data = Vec::new();
    let mut manifest = tar::Header::new_ustar();
    manifest.set_path("manifest.json").unwrap();
    manifest.set_size(2);
    manifest.set_cksum();
    data.extend(manifest.as_bytes());
    data.extend(b"[]");
    data.resize(1024, 0);
    let mut pax = tar::Header::new_ustar();
    pax.set_path("PaxHeaders.0/x").unwrap();
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_size(1 << 30);
    pax.set_cksum();
    data.extend(pax.as_bytes());
    std::fs::write(&archive, &data).unwrap();
    let err = image_error(s(&archive));
    let text = assert_image_error(&err, s(&archive), ImageRule::BadArchive, "", "");
    assert!(
        text.contains("PAX extended header (x) of 1073741824 bytes, limit 1048576"),
        "{text}"
    );
}
