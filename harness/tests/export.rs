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

fn entries(layer: &[u8]) -> Vec<String> {
    tar::Archive::new(layer)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

fn export(upper: &Path, lowers: &[PathBuf]) -> Vec<u8> {
    let mut out = Vec::new();
    overlayer::export(upper, lowers, &mut out, ExportOptions::default()).unwrap();
    out
}

#[test]
fn whiteouts_and_opaque_dirs_become_oci_markers_before_their_siblings() {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = lower(tmp.path());
    let up = tmp.path().join("upper");
    std::fs::create_dir_all(up.join("bin")).unwrap();
    std::fs::create_dir_all(up.join("etc")).unwrap();
    xattr(&up.join("bin"), "trusted.overlay.opaque", b"y");
    std::fs::write(up.join("bin/b"), "new").unwrap();
    std::fs::write(up.join("etc/aaa"), "added").unwrap();
    whiteout(&up.join("etc/passwd"));
    let names = entries(&export(&up, &[lower]));
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
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = lower(tmp.path());
    let up = tmp.path().join("upper");
    std::fs::create_dir_all(up.join("new")).unwrap();
    xattr(&up.join("new"), "trusted.overlay.opaque", b"y");
    let names = entries(&export(&up, &[lower]));
    assert_eq!(names, ["./", "new/"]);
}

#[test]
fn xattr_whiteouts_are_deletions_and_their_directory_is_not_opaque() {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = lower(tmp.path());
    let up = tmp.path().join("upper");
    std::fs::create_dir_all(up.join("var")).unwrap();
    xattr(&up.join("var"), "trusted.overlay.opaque", b"x");
    std::fs::write(up.join("var/x"), "").unwrap();
    xattr(&up.join("var/x"), "trusted.overlay.whiteout", b"");
    let names = entries(&export(&up, std::slice::from_ref(&lower)));
    assert_eq!(names, ["./", "var/", "var/.wh.x"]);
    let changes = overlayer::changes(&up, &[lower], ExportOptions::default()).unwrap();
    let shown: Vec<String> = changes
        .iter()
        .map(|c| format!("{} {}", c.kind, c.path))
        .collect();
    assert_eq!(shown, ["C /var", "D /var/x"]);
}

#[test]
fn export_is_deterministic_and_drops_overlay_private_xattrs() {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = lower(tmp.path());
    let up = tmp.path().join("upper");
    std::fs::create_dir_all(up.join("d")).unwrap();
    std::fs::write(up.join("d/f"), "x").unwrap();
    xattr(&up.join("d/f"), "user.keep", b"1");
    xattr(&up.join("d/f"), "trusted.overlay.origin", b"private");
    let a = export(&up, std::slice::from_ref(&lower));
    let b = export(&up, &[lower]);
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

#[test]
fn an_upper_written_with_redirect_dir_is_refused() {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = lower(tmp.path());
    let up = tmp.path().join("upper");
    std::fs::create_dir_all(up.join("moved")).unwrap();
    xattr(&up.join("moved"), "trusted.overlay.redirect", b"/var");
    let err = overlayer::export(&up, &[lower], &mut Vec::new(), ExportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("redirect_dir"), "{err}");
}

#[test]
fn changes_lists_added_changed_and_deleted_paths() {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = lower(tmp.path());
    let up = tmp.path().join("upper");
    std::fs::create_dir_all(up.join("bin")).unwrap();
    xattr(&up.join("bin"), "trusted.overlay.opaque", b"y");
    std::fs::create_dir_all(up.join("etc")).unwrap();
    std::fs::write(up.join("etc/passwd"), "changed").unwrap();
    std::fs::write(up.join("new"), "added").unwrap();
    whiteout(&up.join("var"));
    let changes = overlayer::changes(&up, &[lower], ExportOptions::default()).unwrap();
    let shown: Vec<String> = changes
        .iter()
        .map(|c| format!("{} {}", c.kind, c.path))
        .collect();
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
