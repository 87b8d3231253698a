//! Hostile input: decompression bombs stop at the limit, work is refused at
//! once, and cancellation leaves nothing behind.

use std::io::Write;
use std::process::{Command, Stdio};

use overlayer::{ConvertOptions, Limits, ReadOptions, Rule};
use overlayer_harness::case::TarEntry;

const MIB: u64 = 1 << 20;
const TIB: u64 = 1 << 40;

mod common;

/// A gzip stream of a tar holding one file `bomb` of `size` zero bytes,
/// compressed on the fly as it is read: nothing is ever on disk or whole in
/// memory; `fed` counts what a reader made us inflate.
fn gzip_bomb(size: u64) -> common::Gzipped {
    let mut header = tar::Header::new_gnu();
    header.set_path("bomb").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    common::Gzipped::new(header.as_bytes(), size, 1)
}

fn bomb_limits(max_bytes: u64) -> ReadOptions {
    ReadOptions {
        limits: Limits {
            max_bytes,
            max_file_bytes: 2 * TIB,
            ..Limits::default()
        },
        strict: false,
    }
}

#[test]
fn terabyte_gzip_bomb_stops_apply_at_the_byte_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bomb = gzip_bomb(TIB);
    let limit = 64 * MIB;
    let err = overlayer::apply_to_new_dir_with(
        vec![&mut bomb],
        &tmp.path().join("rootfs"),
        &bomb_limits(limit),
    )
    .unwrap_err();
    assert_eq!(err.rule(), Some(Rule::LimitBytes), "{err}");
    assert_eq!(err.location(), Some((0, "bomb")));
    // Work past the limit is bounded by the read buffers, not the bomb.
    assert!(
        bomb.fed < limit + 4 * MIB,
        "inflated {} bytes for a {limit} limit",
        bomb.fed
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "partial output left"
    );
}

#[test]
fn terabyte_gzip_bomb_stops_convert_at_the_byte_limit() {
    if !overlayer_harness::kernel::available_or_skip(
        "convert writes whiteout devices and trusted xattrs",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut bomb = gzip_bomb(TIB);
    let limit = 64 * MIB;
    let opts = ConvertOptions {
        read: bomb_limits(limit),
        ..Default::default()
    };
    let err = overlayer::convert_to_new_dir(vec![&mut bomb], &tmp.path().join("layers"), opts)
        .unwrap_err();
    assert_eq!(err.rule(), Some(Rule::LimitBytes), "{err}");
    assert!(
        bomb.fed < limit + 4 * MIB,
        "inflated {} bytes for a {limit} limit",
        bomb.fed
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "partial output left"
    );
}

#[test]
fn a_file_larger_than_the_file_limit_is_refused_before_its_content_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bomb = gzip_bomb(TIB);
    let err = overlayer::apply_to_new_dir_with(
        vec![&mut bomb],
        &tmp.path().join("rootfs"),
        &ReadOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.rule(), Some(Rule::LimitFileBytes), "{err}");
    assert!(bomb.fed < 4 * MIB, "read {} bytes of content", bomb.fed);
}

/// `overlayer apply /dev/stdin --out OUT`, fed the header of a file `big`
/// of `size` bytes; returns the child and its still open stdin.
fn apply_big_file_from_pipe(
    out: &std::path::Path,
    size: u64,
) -> (std::process::Child, std::process::ChildStdin) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_overlayer"))
        .args(["apply", "/dev/stdin", "--out"])
        .arg(out)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_path("big").unwrap();
    header.set_size(size);
    header.set_cksum();
    stdin.write_all(header.as_bytes()).unwrap();
    (child, stdin)
}

/// Waits until `dir` holds the temporary output: apply is running.
fn wait_for_output_in(dir: &std::path::Path) {
    let started = std::time::Instant::now();
    while std::fs::read_dir(dir).unwrap().count() == 0 {
        assert!(started.elapsed().as_secs() < 20, "apply never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn ctrl_c_during_apply_exits_130_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rootfs");
    // A header for a large file and a little of its content; the pipe stays
    // open, so apply is mid-file when the signal comes.
    let (child, mut stdin) = apply_big_file_from_pipe(&out, 1 << 30);
    stdin.write_all(&[0u8; 1 << 16]).unwrap();
    wait_for_output_in(tmp.path());
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    // Keep the pipe open and silent: the handler's grace period must end
    // the blocked read, remove the temporary output and exit.
    let output = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "output left behind"
    );
}

fn tar_of(entries: &[TarEntry]) -> Vec<u8> {
    overlayer_harness::case::build_tar(entries).unwrap()
}

fn apply_rule(layer: &[u8], opts: &ReadOptions) -> Option<Rule> {
    let tmp = tempfile::tempdir().unwrap();
    overlayer::apply_to_new_dir_with(vec![layer], &tmp.path().join("r"), opts)
        .err()
        .and_then(|e| e.rule())
}

#[test]
fn strict_mode_refuses_what_lenient_mode_tolerates() {
    let strict = ReadOptions {
        strict: true,
        ..Default::default()
    };
    let lenient = ReadOptions::default();
    let cases = [
        (
            vec![TarEntry::file("a", "1"), TarEntry::file("./a", "2")],
            Rule::DuplicateEntry,
        ),
        (
            vec![TarEntry::file(".wh.etc/x", "")],
            Rule::WhiteoutInnerComponent,
        ),
        (
            vec![TarEntry::file(".wh.x", "not empty")],
            Rule::WhiteoutNotRegular,
        ),
        (
            vec![TarEntry::file(".wh..wh.plnk/1", "")],
            Rule::AufsMetadata,
        ),
    ];
    for (entries, rule) in cases {
        let layer = tar_of(&entries);
        assert_eq!(apply_rule(&layer, &strict), Some(rule), "{entries:?}");
        assert_eq!(apply_rule(&layer, &lenient), None, "{entries:?}");
    }
}

#[test]
fn strict_mode_reports_setuid_files_and_devices_without_refusing() {
    let mut suid = TarEntry::file("bin/su", "x");
    suid.mode = Some("4755".into());
    let dev = TarEntry {
        path: "dev/null".into(),
        kind: overlayer_harness::case::EntryType::Char,
        rdev: Some([1, 3]),
        ..Default::default()
    };
    let layer = tar_of(&[suid, dev]);
    let tmp = tempfile::tempdir().unwrap();
    let opts = ReadOptions {
        strict: true,
        ..Default::default()
    };
    let summary =
        overlayer::apply_to_new_dir_with(vec![&layer[..]], &tmp.path().join("r"), &opts).unwrap();
    let what: Vec<_> = summary
        .notices
        .iter()
        .map(|n| (n.entry.as_str(), n.what))
        .collect();
    assert_eq!(
        what,
        [
            ("bin/su", "setuid or setgid file"),
            ("dev/null", "device node")
        ]
    );
    assert!(tmp.path().join("r/dev/null").exists());
}

#[test]
fn entry_and_depth_limits_stop_work() {
    let deep = tar_of(&[TarEntry::file(&vec!["d"; 40].join("/"), "")]);
    let opts = ReadOptions {
        limits: Limits {
            max_depth: 39,
            ..Limits::default()
        },
        ..Default::default()
    };
    assert_eq!(apply_rule(&deep, &opts), Some(Rule::LimitDepth));
    let many = tar_of(&[
        TarEntry::file("a", ""),
        TarEntry::file("b", ""),
        TarEntry::file("c", ""),
    ]);
    let opts = ReadOptions {
        limits: Limits {
            max_entries: 2,
            ..Limits::default()
        },
        ..Default::default()
    };
    assert_eq!(apply_rule(&many, &opts), Some(Rule::LimitEntries));
}

#[test]
fn ctrl_c_while_data_still_flows_stops_at_the_next_read() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rootfs");
    // Below the default file limit, so apply keeps reading.
    let (child, mut stdin) = apply_big_file_from_pipe(&out, 16 << 30);
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let writer = std::thread::spawn(move || {
        // Feed data until the child stops reading.
        let chunk = vec![0u8; 1 << 16];
        while stdin.write_all(&chunk).is_ok() {}
    });
    wait_for_output_in(tmp.path());
    // Let some content flow, then interrupt.
    std::thread::sleep(std::time::Duration::from_millis(200));
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "output left behind"
    );
}

#[test]
fn pax_owner_beyond_32_bits_is_refused_not_truncated_to_root() {
    // uid 2^32 truncated to 32 bits would be 0: a setuid-root file.
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions([("uid", &b"4294967296"[..]), ("gid", &b"4294967296"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("bin/tool").unwrap();
    h.set_mode(0o4755);
    h.set_size(1);
    h.set_cksum();
    builder.append(&h, &b"x"[..]).unwrap();
    let layer = builder.into_inner().unwrap();
    assert_eq!(
        apply_rule(&layer, &ReadOptions::default()),
        Some(Rule::InvalidOwner)
    );
}

/// xattr(7): `user.*` xattrs only on regular files and directories. A layer
/// carrying them on a symlink and a fifo: apply and convert (the binary)
/// both succeed, drop them and say so naming each entry; `--strict` refuses
/// with the rule. Never an unnamed EPERM.
#[test]
fn user_xattrs_on_symlinks_and_fifos_are_dropped_or_refused_by_name() {
    use overlayer_harness::case::EntryType;
    let special = |path: &str, kind| TarEntry {
        path: path.into(),
        kind,
        target: (kind == EntryType::Symlink).then(|| "f".into()),
        xattrs: [("user.k".to_string(), "v".to_string())].into(),
        ..Default::default()
    };
    let layer = tar_of(&[
        TarEntry::file("f", "f"),
        special("l", EntryType::Symlink),
        special("p", EntryType::Fifo),
    ]);
    dropped_with_notice_or_refused(
        &layer,
        &["l", "p"],
        "user.* xattrs dropped",
        ("l", "user-xattr-on-special-file", "user.k"),
    );
}

/// xattr(7): no filesystem stores an xattr outside the four namespaces,
/// with a name over 255 bytes or a value over 64 KiB. apply and convert
/// drop such records naming the entry, `--strict` refuses them naming the
/// xattr. Never an unnamed EOPNOTSUPP, ERANGE or E2BIG.
#[test]
fn xattrs_linux_cannot_store_are_dropped_or_refused_by_name() {
    let with = |path: &str, name: String, value: String| TarEntry {
        path: path.into(),
        text: "x".into(),
        xattrs: [(name, value), ("user.kept".into(), "1".into())].into(),
        ..Default::default()
    };
    let layer = tar_of(&[
        with("a", "os2.k".into(), "v".into()),
        with("b", format!("user.{}", "n".repeat(300)), "v".into()),
        with("c", "user.big".into(), "v".repeat(70_000)),
    ]);
    dropped_with_notice_or_refused(
        &layer,
        &["a", "b", "c"],
        "xattrs dropped: Linux cannot store them",
        ("a", "xattr-not-storable", "os2.k"),
    );
}

/// Runs apply and convert (when the kernel side can) on `layer`: lenient,
/// each entry of `dropped` gets a notice holding `notice` and the command
/// succeeds; `--strict` exits 2 naming the entry, rule and xattr of
/// `refused` and leaves no output.
fn dropped_with_notice_or_refused(
    layer: &[u8],
    dropped: &[&str],
    notice: &str,
    refused: (&str, &str, &str),
) {
    let tmp = tempfile::tempdir().unwrap();
    let tar = tmp.path().join("layer.tar");
    std::fs::write(&tar, layer).unwrap();
    let run = |args: &[&str], out: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_overlayer"))
            .args(args)
            .arg(&tar)
            .arg("--out")
            .arg(tmp.path().join(out))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let mut commands = vec!["apply"];
    if overlayer_harness::kernel::available_or_skip("convert writes trusted xattrs") {
        commands.push("convert");
    }
    for cmd in commands {
        let (code, stderr) = run(&[cmd], &format!("{cmd}-lenient"));
        assert_eq!(code, Some(0), "{cmd}: {stderr}");
        for name in dropped {
            assert!(
                stderr.contains(&format!("notice: layer 0: entry \"{name}\": {notice}")),
                "{cmd}: {stderr}"
            );
        }
        let (code, stderr) = run(&[cmd, "--strict"], &format!("{cmd}-strict"));
        assert_eq!(code, Some(2), "{cmd} --strict: {stderr}");
        let (entry, rule, xattr) = refused;
        assert!(
            stderr.contains(&format!("layer 0: entry \"{entry}\""))
                && stderr.contains(&format!("[{rule}]"))
                && stderr.contains(xattr),
            "{cmd} --strict: {stderr}"
        );
        assert!(!tmp.path().join(format!("{cmd}-strict")).exists());
    }
}

/// Bytes that differ at every offset of a body, so a misplaced copy shows.
fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// A plain tar of regular files `(name, size)` with patterned bodies.
fn plain_tar(files: &[(&str, usize)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (i, (name, size)) in files.iter().enumerate() {
        let mut header = tar::Header::new_gnu();
        header.set_size(*size as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, name, &pattern(*size, i as u8)[..])
            .unwrap();
    }
    builder.into_inner().unwrap()
}

/// `prefix` then `layer` in a file, positioned at the layer.
fn layer_file(dir: &std::path::Path, prefix: &[u8], layer: &[u8]) -> std::fs::File {
    use std::io::{Seek, SeekFrom};
    let path = dir.join("layer.tar");
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(layer);
    std::fs::write(&path, bytes).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    file.seek(SeekFrom::Start(prefix.len() as u64)).unwrap();
    file
}

/// A plain layer in a regular file is read with `pread` and its large
/// bodies go file to file (`copy_file_range`): the rootfs must be the one
/// the same bytes give from memory, for bodies on both sides of the read
/// buffer (64 KiB) and of the splice threshold, and from the file's
/// position, not its start.
#[test]
fn a_plain_layer_file_applies_as_its_bytes_do() {
    let files = [
        ("empty", 0),
        ("one", 1),
        ("block", 511),
        ("under-buffer", 65_535),
        ("buffer", 65_536),
        ("over-buffer", 65_537),
        ("small-after", 10),
        ("big", 1_000_003),
        ("bigger", (3 << 20) + 7),
        ("d/tail", 200_000),
    ];
    let layer = plain_tar(&files);
    let tmp = tempfile::tempdir().unwrap();
    let file = layer_file(tmp.path(), &[0xa5; 1000], &layer);
    let from_file = tmp.path().join("file");
    let from_memory = tmp.path().join("memory");
    overlayer::apply_to_new_dir(vec![file], &from_file).unwrap();
    overlayer::apply_to_new_dir(vec![&layer[..]], &from_memory).unwrap();
    let left = overlayer::tree::capture(&from_file).unwrap();
    let right = overlayer::tree::capture(&from_memory).unwrap();
    assert_eq!(overlayer::tree::diff(&right, &left), vec![]);
    for (i, (name, size)) in files.iter().enumerate() {
        let got = std::fs::read(from_file.join(name)).unwrap();
        assert!(got == pattern(*size, i as u8), "{name}: wrong bytes");
    }
}

/// A compressed layer in a file is inflated from the file's position too.
#[test]
fn a_gzip_layer_file_applies_from_its_position() {
    let layer = plain_tar(&[("a", 10), ("big", 300_000)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).unwrap();
    let gz = gz.finish().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = layer_file(tmp.path(), &[0x5a; 777], &gz);
    let out = tmp.path().join("rootfs");
    overlayer::apply_to_new_dir(vec![file], &out).unwrap();
    assert!(std::fs::read(out.join("big")).unwrap() == pattern(300_000, 1));
}

#[test]
fn a_plain_layer_file_cut_inside_a_large_body_is_a_corrupt_archive() {
    let layer = plain_tar(&[("small", 100), ("big", 1 << 20)]);
    // Cut 300 KiB into `big`'s body: past the read buffer, so the end is
    // found by copy_file_range.
    let cut = 512 + 512 + 512 + (300 << 10);
    let tmp = tempfile::tempdir().unwrap();
    let file = layer_file(tmp.path(), &[], &layer[..cut]);
    let out = tmp.path().join("rootfs");
    let err = overlayer::apply_to_new_dir(vec![file], &out).unwrap_err();
    assert_eq!(err.rule(), Some(Rule::CorruptArchive), "{err}");
    assert_eq!(err.location(), Some((0, "big")), "{err}");
    assert!(!out.exists(), "partial output left");
}

#[test]
fn a_plain_layer_file_stops_at_the_byte_limit() {
    let layer = plain_tar(&[("big", 8 << 20)]);
    let tmp = tempfile::tempdir().unwrap();
    let file = layer_file(tmp.path(), &[], &layer);
    let out = tmp.path().join("rootfs");
    let opts = bomb_limits(MIB);
    let err = overlayer::apply_to_new_dir_with(vec![file], &out, &opts).unwrap_err();
    assert_eq!(err.rule(), Some(Rule::LimitBytes), "{err}");
    assert_eq!(err.location(), Some((0, "big")), "{err}");
    assert!(!out.exists(), "partial output left");
}
