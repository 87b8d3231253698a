//! One or more tests per rule of the OCI layer format and of the overlay
//! conversion, named for the behaviour. Each stack is checked three ways
//! (model, userspace apply, kernel merge of the conversion, the last when
//! root) and then the specific outcome is asserted.

use std::path::Path;

use overlayer::tree::{Type, View};
use overlayer::ConvertOptions;
use overlayer_harness::case::{build_tar, EntryType, TarEntry};
use overlayer_harness::kernel::{self, Outcome};
use overlayer_harness::model;

fn dir_mode(path: &str, mode: &str, uid: u32) -> TarEntry {
    TarEntry {
        mode: Some(mode.into()),
        uid,
        gid: uid,
        ..TarEntry::dir(path)
    }
}
fn marker(path: &str) -> TarEntry {
    TarEntry::file(path, "")
}
fn symlink(path: &str, target: &str) -> TarEntry {
    TarEntry {
        path: path.into(),
        kind: EntryType::Symlink,
        target: Some(target.into()),
        ..Default::default()
    }
}
fn hardlink(path: &str, target: &str) -> TarEntry {
    TarEntry {
        path: path.into(),
        kind: EntryType::Hardlink,
        target: Some(target.into()),
        ..Default::default()
    }
}

fn tars(layers: &[Vec<TarEntry>]) -> Vec<Vec<u8>> {
    layers.iter().map(|l| build_tar(l).unwrap()).collect()
}

/// Applies `layers` three ways, asserts they agree, returns the flat view or
/// the (agreed) error rule code.
fn outcome(layers: &[Vec<TarEntry>]) -> Result<View, String> {
    let expected = model::run(layers);
    let tars = tars(layers);
    let (applied, merged): (Outcome, Option<Outcome>) = kernel::with_scratch(|s| {
        let applied = s.apply_view(&tars, &Default::default())?;
        let merged = if s.can_mount() {
            Some(s.kernel_view(&tars, ConvertOptions::default())?)
        } else {
            eprintln!(
                "kernel side SKIPPED: {}",
                kernel::unavailable().unwrap_or_default()
            );
            None
        };
        Ok((applied, merged))
    })
    .unwrap();
    let code = |e: &overlayer::Error| {
        e.rule()
            .map(|r| r.code().to_string())
            .unwrap_or_else(|| e.to_string())
    };
    match (&expected, &applied) {
        (Ok(want), Ok(got)) => {
            assert_eq!(overlayer::tree::diff(want, got), vec![], "model vs apply")
        }
        (Err(want), Err(got)) => assert_eq!(want.rule, code(got), "model vs apply error"),
        _ => panic!("model {expected:?} vs apply {applied:?}"),
    }
    if let Some(merged) = merged {
        match (&applied, &merged) {
            (Ok(flat), Ok(kernel)) => {
                let differences = overlayer::tree::diff(kernel, flat);
                assert!(differences.is_empty(), "kernel vs apply: {differences:?}");
                assert!(
                    kernel.defects.is_empty(),
                    "kernel defects: {:?}",
                    kernel.defects
                );
            }
            (Err(a), Err(k)) => assert_eq!(code(a), code(k)),
            _ => panic!("apply {applied:?} vs kernel {merged:?}"),
        }
    }
    applied.map_err(|e| code(&e))
}

fn view(layers: &[Vec<TarEntry>]) -> View {
    outcome(layers).expect("stack applies")
}

fn refused(layers: &[Vec<TarEntry>]) -> String {
    outcome(layers).expect_err("stack must be refused")
}

fn names(v: &View) -> Vec<&str> {
    v.nodes
        .keys()
        .map(String::as_str)
        .filter(|p| *p != ".")
        .collect()
}

#[test]
fn whiteout_removes_lower_file_and_leaves_no_marker() {
    let v = view(&[
        vec![TarEntry::file("a/f", "secret"), TarEntry::file("a/g", "")],
        vec![marker("a/.wh.f")],
    ]);
    assert_eq!(names(&v), ["a", "a/g"]);
}

#[test]
fn whiteout_of_directory_removes_its_whole_tree() {
    let v = view(&[vec![TarEntry::file("b/x/y", "")], vec![marker(".wh.b")]]);
    assert_eq!(names(&v), Vec::<&str>::new());
}

#[test]
fn whiteout_of_missing_name_is_noop() {
    let v = view(&[
        vec![TarEntry::file("etc/x", "")],
        vec![marker("etc/.wh.nosuch")],
    ]);
    assert_eq!(names(&v), ["etc", "etc/x"]);
}

#[test]
fn whiteout_of_hidden_name_removes_it() {
    let v = view(&[vec![TarEntry::file(".baz", "")], vec![marker(".wh..baz")]]);
    assert!(names(&v).is_empty());
}

#[test]
fn opaque_marker_hides_lower_children() {
    let v = view(&[
        vec![
            TarEntry::file("bin/a", ""),
            TarEntry::file("bin/tools/t", ""),
        ],
        vec![
            TarEntry::dir("bin/"),
            marker("bin/.wh..wh..opq"),
            TarEntry::file("bin/new", ""),
        ],
    ]);
    assert_eq!(names(&v), ["bin", "bin/new"]);
}

#[test]
fn opaque_marker_after_siblings_hides_lower_children() {
    let v = view(&[
        vec![TarEntry::file("a/b/c/bar", "")],
        vec![
            TarEntry::dir("a/"),
            TarEntry::file("a/b/c/foo", ""),
            marker("a/.wh..wh..opq"),
        ],
    ]);
    assert_eq!(names(&v), ["a", "a/b", "a/b/c", "a/b/c/foo"]);
}

#[test]
fn opaque_marker_at_root_hides_lower_top_level_names() {
    let v = view(&[
        vec![TarEntry::file(".baz", ""), TarEntry::file("bar/x", "")],
        vec![
            TarEntry::file(".abc", ""),
            marker(".wh..wh..opq"),
            TarEntry::file("foobar", ""),
        ],
    ]);
    assert_eq!(names(&v), [".abc", "foobar"]);
}

#[test]
fn same_layer_file_named_by_whiteout_survives_in_either_order() {
    for layer in [
        vec![TarEntry::file("a", "new"), marker(".wh.a")],
        vec![marker(".wh.a"), TarEntry::file("a", "new")],
    ] {
        let v = view(&[vec![TarEntry::file("a", "old")], layer]);
        assert_eq!(v.nodes["a"].text.as_deref(), Some("new"));
    }
}

#[test]
fn whiteout_then_recreate_gives_a_fresh_directory() {
    let v = view(&[
        vec![TarEntry::file("a1/old", "")],
        vec![marker(".wh.a1"), TarEntry::file("a1/new", "")],
    ]);
    assert_eq!(names(&v), ["a1", "a1/new"]);
}

#[test]
fn nested_whiteouts_under_a_deleted_directory_are_fine() {
    let v = view(&[
        vec![TarEntry::file("foo/bar", "")],
        vec![marker(".wh.foo"), marker("foo/.wh.bar")],
    ]);
    assert!(names(&v).is_empty());
}

#[test]
fn bare_whiteout_is_refused_and_deletes_nothing() {
    assert_eq!(
        refused(&[vec![TarEntry::file("etc/x", "")], vec![marker("etc/.wh.")]]),
        "bare-whiteout"
    );
}

#[test]
fn whiteouts_of_dot_names_are_refused() {
    assert_eq!(refused(&[vec![marker("etc/.wh..")]]), "whiteout-of-dot");
    assert_eq!(refused(&[vec![marker("etc/.wh...")]]), "whiteout-of-dot");
}

#[test]
fn aufs_metadata_never_reaches_the_rootfs() {
    let v = view(&[vec![
        TarEntry::file(".wh..wh.plnk/1.2", ""),
        TarEntry::file(".wh..wh.orph", ""),
        TarEntry::file("x", ""),
    ]]);
    assert_eq!(names(&v), ["x"]);
}

#[test]
fn dir_over_dir_replaces_attributes_and_xattrs_but_keeps_children() {
    let mut lower = dir_mode("d/", "0700", 1000);
    lower.xattrs.insert("user.a".into(), "1".into());
    let mut upper = dir_mode("d/", "0755", 0);
    upper.xattrs.insert("user.b".into(), "2".into());
    let v = view(&[vec![lower, TarEntry::file("d/f", "")], vec![upper]]);
    let d = &v.nodes["d"];
    assert_eq!((d.mode, d.uid), (0o755, 0));
    assert_eq!(d.xattrs.keys().collect::<Vec<_>>(), ["user.b"]);
    assert!(v.nodes.contains_key("d/f"));
}

#[test]
fn file_becomes_directory_and_back() {
    let v = view(&[
        vec![TarEntry::file("a", "")],
        vec![TarEntry::dir("a/"), TarEntry::file("a/x", "")],
    ]);
    assert_eq!(v.nodes["a"].kind, Type::Dir);
    let v = view(&[
        vec![TarEntry::file("a/x", "")],
        vec![TarEntry::file("a", "f")],
    ]);
    assert_eq!(names(&v), ["a"]);
    assert_eq!(v.nodes["a"].kind, Type::File);
}

#[test]
fn symlink_becomes_directory_and_directory_becomes_symlink() {
    let v = view(&[
        vec![TarEntry::dir("t/"), symlink("l", "t")],
        vec![TarEntry::dir("l/"), TarEntry::file("l/x", "")],
    ]);
    assert_eq!(v.nodes["l"].kind, Type::Dir);
    assert!(!v.nodes.contains_key("t/x"));
    let v = view(&[
        vec![TarEntry::file("d/x", "")],
        vec![symlink("d", "/elsewhere")],
    ]);
    assert_eq!(names(&v), ["d"]);
}

#[test]
fn implied_parent_keeps_the_lower_directory_metadata() {
    let v = view(&[
        vec![dir_mode("d1/", "0700", 1000)],
        vec![TarEntry::file("d1/a/b/f", "")],
    ]);
    assert_eq!((v.nodes["d1"].mode, v.nodes["d1"].uid), (0o700, 1000));
    assert_eq!(v.nodes["d1/a"].mode, 0o755);
}

#[test]
fn write_through_lower_relative_symlink_lands_at_its_target() {
    let v = view(&[
        vec![TarEntry::dir("usr/lib/"), symlink("lib", "usr/lib")],
        vec![TarEntry::file("lib/systemd/x", "")],
    ]);
    assert!(v.nodes.contains_key("usr/lib/systemd/x"));
    assert_eq!(v.nodes["lib"].kind, Type::Symlink);
}

#[test]
fn absolute_lower_symlink_resolves_inside_the_root() {
    let outside = format!("/tmp/overlayer-must-not-exist-{}", std::process::id());
    let v = view(&[
        vec![symlink("var/run", &outside)],
        vec![TarEntry::file("var/run/x/file", "")],
    ]);
    let inside = format!("{}/x/file", outside.trim_start_matches('/'));
    assert!(v.nodes.contains_key(&inside), "{:?}", names(&v));
    assert!(!Path::new(&outside).exists(), "wrote outside the root");
}

#[test]
fn relative_escape_before_an_absolute_link_stays_inside() {
    let layers = [
        vec![symlink("escape", ".."), symlink("absolute", "/target")],
        vec![TarEntry::file("escape/absolute/file", "")],
    ];
    assert!(view(&layers).nodes.contains_key("target/file"));
    assert!(!Path::new("/target/file").exists());
}

#[test]
fn parent_components_in_names_are_refused() {
    assert_eq!(
        refused(&[vec![TarEntry::file("../victim/x", "")]]),
        "parent-component"
    );
    assert_eq!(
        refused(&[vec![TarEntry::file("/../victim/x", "")]]),
        "parent-component"
    );
}

#[test]
fn symlink_planted_and_written_through_in_one_layer_stays_inside() {
    let layers = [vec![
        symlink("loophole", "../victim"),
        TarEntry::file("loophole/file", ""),
    ]];
    assert!(view(&layers).nodes.contains_key("victim/file"));
}

#[test]
fn hardlink_through_an_escaping_symlinked_dir_names_the_in_root_file() {
    let layers = [
        vec![TarEntry::file("etc/passwd", "root:x:0:0")],
        vec![symlink("d1", "../../etc"), hardlink("p", "d1/passwd")],
    ];
    let v = view(&layers);
    assert_eq!(v.nodes["p"].text.as_deref(), Some("root:x:0:0"));
}

#[test]
fn hardlink_to_a_symlink_links_the_symlink_itself() {
    let v = view(&[vec![symlink("s", "/nowhere"), hardlink("h", "s")]]);
    assert_eq!(v.nodes["h"].target.as_deref(), Some("/nowhere"));
    assert_eq!(v.nodes["h"].links.as_deref(), Some("h"));
}

#[test]
fn cross_layer_hardlink_keeps_old_content_after_overwrite() {
    let v = view(&[
        vec![TarEntry::file("t2", "123")],
        vec![hardlink("t1", "t2"), hardlink("t3", "t2")],
        vec![TarEntry::file("t1", "456")],
    ]);
    assert_eq!(v.nodes["t1"].text.as_deref(), Some("456"));
    assert_eq!(v.nodes["t2"].text.as_deref(), Some("123"));
    assert_eq!(v.nodes["t3"].text.as_deref(), Some("123"));
}

#[test]
fn hardlink_keeps_content_when_its_target_is_removed() {
    let v = view(&[
        vec![TarEntry::file("a", "x")],
        vec![hardlink("b", "a")],
        vec![marker(".wh.a")],
    ]);
    assert_eq!(names(&v), ["b"]);
    assert_eq!(v.nodes["b"].text.as_deref(), Some("x"));
}

#[test]
fn hardlink_replaces_an_existing_path() {
    let v = view(&[
        vec![TarEntry::file("a", "x"), TarEntry::file("b", "y")],
        vec![hardlink("b", "a")],
    ]);
    assert_eq!(v.nodes["b"].text.as_deref(), Some("x"));
}

#[test]
fn hardlink_header_metadata_is_not_applied() {
    let mut link = hardlink("h", "f");
    link.mode = Some("0600".into());
    link.uid = 1000;
    let v = view(&[vec![TarEntry::file("f", "x"), link]]);
    assert_eq!((v.nodes["h"].mode, v.nodes["h"].uid), (0o644, 0));
}

#[test]
fn hardlink_to_missing_target_is_refused() {
    assert_eq!(
        refused(&[vec![hardlink("h", "nope")]]),
        "hardlink-target-missing"
    );
}

#[test]
fn symlink_with_escaping_target_is_kept_verbatim() {
    let v = view(&[vec![symlink("s", "../../../../etc/shadow")]]);
    assert_eq!(
        v.nodes["s"].target.as_deref(),
        Some("../../../../etc/shadow")
    );
}

#[test]
fn duplicate_entries_last_one_wins() {
    let v = view(&[vec![TarEntry::file("a", "1"), TarEntry::file("a", "2")]]);
    assert_eq!(v.nodes["a"].text.as_deref(), Some("2"));
}

#[test]
fn pax_xattrs_are_applied() {
    let mut f = TarEntry::file("f", "");
    f.xattrs.insert("user.k".into(), "v".into());
    f.xattrs.insert(
        "security.capability".into(),
        "hex:0100000200200000000000000000000000000000".into(),
    );
    let v = view(&[vec![f]]);
    assert_eq!(v.nodes["f"].xattrs["user.k"], "v");
    assert!(v.nodes["f"].xattrs.contains_key("security.capability"));
}

#[test]
fn marker_in_a_directory_that_exists_nowhere_creates_nothing() {
    let v = view(&[
        vec![TarEntry::file("x", "")],
        vec![marker("a/.wh.b"), marker("c/.wh..wh..opq")],
    ]);
    assert_eq!(names(&v), ["x"]);
}

#[test]
fn opaque_marker_under_same_layer_file_makes_an_empty_directory() {
    let v = view(&[
        vec![TarEntry::file("o/lower", "")],
        vec![TarEntry::file("o", ""), marker("o/.wh..wh..opq")],
    ]);
    assert_eq!(names(&v), ["o"]);
    assert_eq!(v.nodes["o"].kind, Type::Dir);
}

#[test]
fn root_entry_updates_root_metadata_and_non_directory_root_is_refused() {
    let v = view(&[vec![dir_mode("./", "0700", 1000)]]);
    assert_eq!((v.nodes["."].mode, v.nodes["."].uid), (0o700, 1000));
    assert_eq!(refused(&[vec![symlink(".", "/")]]), "root-not-directory");
}

#[test]
fn names_with_dot_slash_and_leading_slash_are_one_path() {
    let v = view(&[
        vec![TarEntry::file("./etc/x", "1")],
        vec![TarEntry::file("/etc/x", "2")],
        vec![TarEntry::file("etc/x", "3")],
    ]);
    assert_eq!(names(&v), ["etc", "etc/x"]);
    assert_eq!(v.nodes["etc/x"].text.as_deref(), Some("3"));
}

#[test]
fn long_names_are_read_from_pax_records() {
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
    let v = view(&[vec![TarEntry::file(&long, "x")]]);
    assert!(v.nodes.contains_key(&long));
}

#[test]
fn char_device_zero_zero_entry_is_refused() {
    let dev = TarEntry {
        path: "dev/wh".into(),
        kind: EntryType::Char,
        rdev: Some([0, 0]),
        ..Default::default()
    };
    assert_eq!(refused(&[vec![dev]]), "whiteout-device-entry");
}

// ---- the overlay form itself ----

fn convert(layers: &[Vec<TarEntry>], opts: ConvertOptions) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let tars = tars(layers);
    let readers: Vec<&[u8]> = tars.iter().map(Vec::as_slice).collect();
    overlayer::convert_to_new_dir(readers, &tmp.path().join("l"), opts).unwrap();
    tmp
}

fn xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    overlayer::sys::get_xattr(path, key).unwrap()
}

#[test]
fn whiteout_then_recreate_is_an_opaque_directory_in_overlay_form() {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    let t = convert(
        &[
            vec![TarEntry::file("a1/old", "")],
            vec![marker(".wh.a1"), TarEntry::file("a1/new", "")],
        ],
        ConvertOptions::default(),
    );
    let a1 = t.path().join("l/1/a1");
    assert_eq!(
        xattr(&a1, "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!a1.join("old").exists());
}

#[test]
fn userxattr_conversion_marks_user_overlay_opaque() {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    let layers = [
        vec![TarEntry::file("bin/a", "")],
        vec![TarEntry::dir("bin/"), marker("bin/.wh..wh..opq")],
    ];
    let t = convert(
        &layers,
        ConvertOptions {
            userxattr: true,
            ..Default::default()
        },
    );
    let bin = t.path().join("l/1/bin");
    assert_eq!(
        xattr(&bin, "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(&bin, "trusted.overlay.opaque"), None);
}

#[test]
fn no_whiteout_in_the_bottom_layer_or_where_nothing_is_below() {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    let t = convert(
        &[
            vec![marker(".wh.x"), TarEntry::file("d/f", "")],
            vec![TarEntry::dir("n/"), marker("n/.wh.y"), marker("d/.wh.zz")],
        ],
        ConvertOptions::default(),
    );
    for p in ["l/0/x", "l/1/n/y", "l/1/d/zz"] {
        assert!(
            t.path().join(p).symlink_metadata().is_err(),
            "{p} left behind"
        );
    }
}

#[test]
fn root_opaque_marker_becomes_whiteouts_of_lower_top_level_names() {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    use std::os::unix::fs::FileTypeExt;
    let lower = vec![TarEntry::file("old", ""), TarEntry::file("keep/x", "")];
    // Marker after `keep/y`: `keep` is this layer's implied parent, kept and
    // merged, so its lost lower child is a whiteout too.
    let t = convert(
        &[
            lower.clone(),
            vec![TarEntry::file("keep/y", ""), marker(".wh..wh..opq")],
        ],
        ConvertOptions::default(),
    );
    let is_whiteout = |p: &str| {
        t.path()
            .join(p)
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_char_device()
    };
    assert!(is_whiteout("l/1/old"));
    assert!(is_whiteout("l/1/keep/x"));
    assert_eq!(xattr(&t.path().join("l/1"), "trusted.overlay.opaque"), None);
    // Marker first: lower `keep` is gone before `keep/y` re-creates it, so
    // the new `keep` is an opaque directory.
    let t = convert(
        &[
            lower,
            vec![marker(".wh..wh..opq"), TarEntry::file("keep/y", "")],
        ],
        ConvertOptions::default(),
    );
    let keep = t.path().join("l/1/keep");
    assert_eq!(
        xattr(&keep, "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(keep.join("x").symlink_metadata().is_err());
}

#[test]
fn overlay_private_xattrs_from_a_layer_are_escaped_never_live() {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    let mut d = TarEntry::dir("d/");
    d.xattrs.insert("trusted.overlay.opaque".into(), "y".into());
    let layers = [vec![TarEntry::file("d/lower", "")], vec![d]];
    let v = view(&layers);
    assert!(
        v.nodes.contains_key("d/lower"),
        "the layer's opaque xattr took effect"
    );
    let t = convert(&layers, ConvertOptions::default());
    let d1 = t.path().join("l/1/d");
    assert_eq!(xattr(&d1, "trusted.overlay.opaque"), None);
    assert_eq!(
        xattr(&d1, "trusted.overlay.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
}

#[test]
fn lower_layer_hardlink_becomes_a_copy_in_overlay_form() {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    let t = convert(
        &[vec![TarEntry::file("a", "x")], vec![hardlink("b", "a")]],
        ConvertOptions::default(),
    );
    assert_eq!(std::fs::read(t.path().join("l/1/b")).unwrap(), b"x");
}

// ---- reading and output ----

#[test]
fn gzip_and_zstd_layers_are_detected_by_magic() {
    use std::io::Write;
    let tar = build_tar(&[TarEntry::file("z", "compressed")]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for layer in [gz, zst] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("r");
        overlayer::apply_to_new_dir(vec![&layer[..]], &out).unwrap();
        assert_eq!(std::fs::read(out.join("z")).unwrap(), b"compressed");
    }
}

#[test]
fn pax_global_header_is_ignored() {
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XGlobalHeader);
    let body = b"17 comment=hello\n";
    h.set_size(body.len() as u64);
    h.set_path("pax_global_header").unwrap();
    h.set_cksum();
    builder.append(&h, &body[..]).unwrap();
    // The global header, then a whole archive (without a second terminator before it).
    let mut bytes = builder.get_ref().clone();
    bytes.extend_from_slice(&build_tar(&[TarEntry::file("f", "x")]).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    overlayer::apply_to_new_dir(vec![&bytes[..]], &tmp.path().join("r")).unwrap();
    let listing: Vec<_> = std::fs::read_dir(tmp.path().join("r"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listing, ["f"]);
}

#[test]
fn failed_apply_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let good = build_tar(&[TarEntry::file("a", "x")]).unwrap();
    let bad = build_tar(&[marker("etc/.wh.")]).unwrap();
    let err =
        overlayer::apply_to_new_dir(vec![&good[..], &bad[..]], &tmp.path().join("r")).unwrap_err();
    assert_eq!(err.rule(), Some(overlayer::Rule::BareWhiteout));
    assert_eq!(err.location(), Some((1, "etc/.wh.")));
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "partial output left"
    );
}

#[test]
fn failed_convert_leaves_nothing_behind() {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let good = build_tar(&[TarEntry::file("a", "x")]).unwrap();
    let bad = build_tar(&[TarEntry::file("../x", "")]).unwrap();
    let err = overlayer::convert_to_new_dir(
        vec![&good[..], &bad[..]],
        &tmp.path().join("l"),
        ConvertOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.rule(), Some(overlayer::Rule::ParentComponent));
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "partial output left"
    );
}

#[test]
fn no_mount_survives_a_panic_in_the_private_namespace() {
    if !kernel::available_or_skip("needs root for mknod, trusted xattrs and mounts") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().to_path_buf();
    let result = std::panic::catch_unwind(|| {
        overlayer::mount::in_private_namespace(|| {
            overlayer::mount::mount_tmpfs(&target)?;
            panic!("test panic while mounted");
            #[allow(unreachable_code)]
            Ok(())
        })
    });
    assert!(result.is_err());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(tmp.path().to_str().unwrap()),
        "mount leaked"
    );
}

/// Catalogue scenario 45: without CAP_MKNOD. Linux 5.8+ lets anyone create
/// the whiteout device 0/0, so conversion still works; any other device
/// entry fails with an error naming its layer and entry, and nothing is
/// left behind. Runs the binary under `setpriv --bounding-set -mknod`.
#[test]
fn without_cap_mknod_convert_names_the_whiteout_and_xwhiteouts_need_none() {
    if !kernel::available_or_skip("needs root to drop a capability and write trusted xattrs") {
        return;
    }
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: needs setpriv (util-linux)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut null = TarEntry {
        path: "dev/null".into(),
        kind: EntryType::Char,
        rdev: Some([1, 3]),
        ..Default::default()
    };
    null.mode = Some("0666".into());
    let stacks = [
        (
            "whiteouts",
            vec![vec![TarEntry::file("d/a", "a")], vec![marker("d/.wh.a")]],
        ),
        ("device", vec![vec![TarEntry::file("d/a", "a")], vec![null]]),
    ];
    let run = |name: &str, stack: &[Vec<TarEntry>], extra: &[&str]| {
        let mut args: Vec<String> = vec![];
        for (i, t) in tars(stack).iter().enumerate() {
            let p = tmp.path().join(format!("{name}-{i}.tar"));
            std::fs::write(&p, t).unwrap();
            args.push(p.display().to_string());
        }
        let out = tmp.path().join(format!("{name}-out{}", extra.len()));
        let o = std::process::Command::new("setpriv")
            .args([
                "--bounding-set",
                "-mknod",
                env!("CARGO_BIN_EXE_overlayer"),
                "convert",
            ])
            .args(&args)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            out,
        )
    };
    for extra in [&[][..], &["--xwhiteouts"][..]] {
        let (code, err, out) = run("whiteouts", &stacks[0].1, extra);
        assert_eq!(code, Some(0), "{extra:?}: {err}");
        assert!(
            overlayer::lower::is_whiteout(&out.join("1/d/a"), false),
            "{extra:?}: layer 1 must hold a whiteout of d/a"
        );
    }
    let (code, err, out) = run("device", &stacks[1].1, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("layer 1") && err.contains("dev/null") && err.contains("CAP_MKNOD"),
        "the error must name the layer, the entry and the privilege: {err}"
    );
    assert!(!out.exists(), "a failed convert left {}", out.display());
}
