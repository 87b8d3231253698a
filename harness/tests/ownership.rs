//! Owners of what apply and convert write do not depend on where the output
//! lies: in a setgid directory, new files and directories take that
//! directory's group (and directories its setgid bit) unless the owner the
//! layer gives is set explicitly. (`*_to_new_dir` build in a temporary
//! directory they chmod, which clears the bit: the `*_into` calls meet it.)

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use overlayer::ConvertOptions;
use overlayer_harness::case::{build_tar, EntryType, TarEntry};

/// A group no entry below uses.
const SHARED_GID: u32 = 4321;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn layer() -> Vec<u8> {
    let file = |path: &str| TarEntry {
        path: path.into(),
        text: "x".into(),
        ..Default::default()
    };
    build_tar(&[
        file("top"),
        TarEntry {
            path: "d/".into(),
            kind: EntryType::Dir,
            ..Default::default()
        },
        file("d/f"),
        file("implied/g"),
        // A setgid directory of the layer's own, of another group.
        TarEntry {
            path: "sg/".into(),
            kind: EntryType::Dir,
            mode: Some("2775".into()),
            gid: SHARED_GID,
            ..Default::default()
        },
        file("sg/h"),
    ])
    .unwrap()
}

/// A directory `shared` owned by `SHARED_GID`, mode 2775, in a fresh
/// temporary one.
fn setgid_parent() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(0), Some(SHARED_GID)).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2775)).unwrap();
    tmp
}

fn assert_root_owned(root: &Path) {
    for name in ["top", "d", "d/f", "implied", "implied/g", "sg/h"] {
        let meta = std::fs::symlink_metadata(root.join(name)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (0, 0),
            "{name} below {}",
            root.display()
        );
        assert_eq!(meta.mode() & 0o2000, 0, "{name}: setgid bit inherited");
    }
}

#[test]
fn convert_into_a_setgid_directory_keeps_the_layers_owners() {
    if !is_root() {
        eprintln!("skipped: needs root (chown to another group)");
        return;
    }
    let tmp = setgid_parent();
    let out = tmp.path().join("shared");
    let tar = layer();
    overlayer::convert_into(vec![tar.as_slice()], &out, ConvertOptions::default()).unwrap();
    assert_root_owned(&out.join("0"));
}

#[test]
fn apply_into_a_setgid_directory_keeps_the_layers_owners() {
    if !is_root() {
        eprintln!("skipped: needs root (chown to another group)");
        return;
    }
    let tmp = setgid_parent();
    let out = tmp.path().join("shared");
    let tar = layer();
    overlayer::apply_into(vec![tar.as_slice()], &out, &Default::default()).unwrap();
    assert_root_owned(&out);
}
