//! Exporting an upper directory as an OCI layer, and its `changes` view.
//! Uppers are built by hand as the kernel writes them (char device 0/0
//! whiteouts, `trusted.overlay.opaque`), so these need root.

use std::path::{Path, PathBuf};

use overlayer::ExportOptions;
use overlayer_harness::kernel;

fn xattr(path: &Path, key: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, key, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn whiteout(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
}

/// lower: `bin/{a,tools/t}`, `etc/passwd`, `var/x`.
fn lower(root: &Path) -> PathBuf {
    let l = root.join("lower");
    for d in ["bin/tools", "etc", "var"] {
        std::fs::create_dir_all(l.join(d)).unwrap();
    }
    for f in ["bin/a", "bin/tools/t", "etc/passwd", "var/x"] {
        std::fs::write(l.join(f), f).unwrap();
    }
    l
}

/// A temporary directory holding `lower()`, or `None` (with the reason
/// printed) where the test cannot run.
fn fixture() -> Option<(tempfile::TempDir, PathBuf)> {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = lower(tmp.path());
    Some((tmp, lower))
}

fn entries(layer: &[u8]) -> Vec<String> {
    overlayer_harness::replay::layer_entries(layer).unwrap()
}

fn export_with(
    upper: &Path,
    lower: &Path,
    opts: ExportOptions,
) -> overlayer::Result<(Vec<u8>, overlayer::ExportSummary)> {
    let mut out = Vec::new();
    let summary = overlayer::export(upper, &[lower.to_path_buf()], &mut out, opts)?;
    Ok((out, summary))
}

fn export(upper: &Path, lower: &Path) -> Vec<u8> {
    export_with(upper, lower, ExportOptions::default())
        .unwrap()
        .0
}

/// `overlayer changes`, as `KIND /path` lines.
fn changes(upper: &Path, lower: &Path) -> Vec<String> {
    overlayer::changes(upper, &[lower.to_path_buf()], ExportOptions::default())
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn whiteouts_and_opaque_dirs_become_oci_markers_before_their_siblings() {
    let Some((tmp, lower)) = fixture() else {
        return;
    };
    let up = tmp.path().join("upper");
    std::fs::create_dir_all(up.join("bin")).unwrap();
    std::fs::create_dir_all(up.join("etc")).unwrap();
    xattr(&up.join("bin"), "trusted.overlay.opaque", b"y");
    std::fs::write(up.join("bin/b"), "new").unwrap();
    std::fs::write(up.join("etc/aaa"), "added").unwrap();
    whiteout(&up.join("etc/passwd"));
    let names = entries(&export(&up, &lower));
    assert_eq!(
        names,
        [
            "./",
            "bin/",
            "bin/.wh..wh..opq",
            "bin/b",
            "etc/",
            "etc/.wh.passwd",
            "etc/aaa"
        ]
    );
}

#[test]
fn new_directory_over_a_whiteout_gets_no_opaque_marker() {
    let Some((tmp, lower)) = fixture() else {
        return;
    };
    let up = tmp.path().join("upper");
    std::fs::create_dir_all(up.join("new")).unwrap();
    xattr(&up.join("new"), "trusted.overlay.opaque", b"y");
    let names = entries(&export(&up, &lower));
    assert_eq!(names, ["./", "new/"]);
}

#[test]
fn xattr_whiteouts_are_deletions_and_their_directory_is_not_opaque() {
    let Some((tmp, lower)) = fixture() else {
        return;
    };
    let up = tmp.path().join("upper");
    std::fs::create_dir_all(up.join("var")).unwrap();
    xattr(&up.join("var"), "trusted.overlay.opaque", b"x");
    std::fs::write(up.join("var/x"), "").unwrap();
    xattr(&up.join("var/x"), "trusted.overlay.whiteout", b"");
    let names = entries(&export(&up, &lower));
    assert_eq!(names, ["./", "var/", "var/.wh.x"]);
    let shown = changes(&up, &lower);
    assert_eq!(shown, ["C /var", "D /var/x"]);
}

#[test]
fn export_is_deterministic_and_drops_overlay_private_xattrs() {
    let Some((tmp, lower)) = fixture() else {
        return;
    };
    let up = tmp.path().join("upper");
    std::fs::create_dir_all(up.join("d")).unwrap();
    std::fs::write(up.join("d/f"), "x").unwrap();
    xattr(&up.join("d/f"), "user.keep", b"1");
    xattr(&up.join("d/f"), "trusted.overlay.origin", b"private");
    let a = export(&up, &lower);
    let b = export(&up, &lower);
    assert_eq!(a, b);
    let mut archive = tar::Archive::new(&a[..]);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().ends_with("f") {
            let keys: Vec<String> = entry
                .pax_extensions()
                .unwrap()
                .unwrap()
                .map(|e| e.unwrap().key().unwrap().to_string())
                .collect();
            assert_eq!(keys, ["SCHILY.xattr.user.keep"]);
        }
    }
}

/// An upper as the kernel writes it with redirect_dir=on and metacopy=on
/// over `lower()`: `mv bin b2; echo > b2/new; rm b2/a`, `rm -r var;
/// mv b2/tools var`, `chmod 600 etc/passwd`.
fn redirected_upper(root: &Path) -> PathBuf {
    let up = root.join("upper");
    std::fs::create_dir_all(up.join("b2")).unwrap();
    whiteout(&up.join("bin"));
    xattr(&up.join("b2"), "trusted.overlay.redirect", b"bin");
    std::fs::write(up.join("b2/new"), "new").unwrap();
    whiteout(&up.join("b2/a"));
    whiteout(&up.join("b2/tools"));
    std::fs::create_dir(up.join("var")).unwrap();
    xattr(&up.join("var"), "trusted.overlay.redirect", b"/bin/tools");
    std::fs::create_dir(up.join("etc")).unwrap();
    std::fs::File::create(up.join("etc/passwd"))
        .unwrap()
        .set_len(10)
        .unwrap();
    xattr(&up.join("etc/passwd"), "trusted.overlay.metacopy", b"");
    std::fs::set_permissions(
        up.join("etc/passwd"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    up
}

#[test]
fn renamed_directories_and_metacopy_files_are_materialised_from_the_lowers() {
    let Some((tmp, lower)) = fixture() else {
        return;
    };
    let up = redirected_upper(tmp.path());
    let (out, summary) = export_with(&up, &lower, ExportOptions::default()).unwrap();
    assert_eq!((summary.redirected_dirs, summary.metacopy_files), (2, 1));
    assert_eq!(
        entries(&out),
        [
            "./",
            ".wh.bin",
            "b2/",
            "b2/new",
            "etc/",
            "etc/passwd",
            "var/",
            "var/.wh..wh..opq",
            "var/t",
        ],
        "renamed dirs in full, without their whiteouts (b2 has no lower of its own; \
         var does, so it is opaque)"
    );
    let mut archive = tar::Archive::new(&out[..]);
    let passwd = archive
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().to_str() == Some("etc/passwd"))
        .map(|mut e| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut e, &mut text).unwrap();
            (e.header().mode().unwrap(), text)
        })
        .unwrap();
    assert_eq!(
        passwd,
        (0o600, "etc/passwd".to_string()),
        "upper mode, lower data"
    );
    assert_eq!(
        changes(&up, &lower),
        [
            "A /b2",
            "A /b2/new",
            "D /bin",
            "C /etc",
            "C /etc/passwd",
            "C /var",
            "A /var/t",
            "D /var/x",
        ]
    );
}

#[test]
fn redirects_refuse_names_the_renamed_directory() {
    let Some((tmp, lower)) = fixture() else {
        return;
    };
    let up = redirected_upper(tmp.path());
    let opts = ExportOptions {
        redirects: overlayer::Redirects::Refuse,
        ..Default::default()
    };
    let err = export_with(&up, &lower, opts).unwrap_err().to_string();
    assert!(err.contains("b2") && err.contains("redirect_dir"), "{err}");
}

#[test]
fn an_invalid_redirect_is_refused_not_followed() {
    let Some((tmp, lower)) = fixture() else {
        return;
    };
    for bad in [&b"../../etc"[..], b"/bin/../../x", b"a/b"] {
        let up = tmp.path().join("bad-upper");
        let _ = std::fs::remove_dir_all(&up);
        std::fs::create_dir_all(up.join("d")).unwrap();
        xattr(&up.join("d"), "trusted.overlay.redirect", bad);
        let err = export_with(&up, &lower, ExportOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid overlay.redirect"), "{err}");
    }
}

#[test]
fn changes_lists_added_changed_and_deleted_paths() {
    let Some((tmp, lower)) = fixture() else {
        return;
    };
    let up = tmp.path().join("upper");
    std::fs::create_dir_all(up.join("bin")).unwrap();
    xattr(&up.join("bin"), "trusted.overlay.opaque", b"y");
    std::fs::create_dir_all(up.join("etc")).unwrap();
    std::fs::write(up.join("etc/passwd"), "changed").unwrap();
    std::fs::write(up.join("new"), "added").unwrap();
    whiteout(&up.join("var"));
    let shown = changes(&up, &lower);
    assert_eq!(
        shown,
        [
            "C /bin",
            "D /bin/a",
            "D /bin/tools",
            "C /etc",
            "C /etc/passwd",
            "A /new",
            "D /var"
        ]
    );
}
