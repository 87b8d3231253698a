//! Extension records (PAX `x`/`g`, GNU `L`/`K`) are held in memory whole, so
//! each is measured at its header against `--max-extension-bytes` and refused
//! before its body is read, and counted against `--max-bytes`.

use std::io::{self, Write};
use std::path::Path;
use std::process::Command;

use flate2::write::GzEncoder;
use overlayer::{Limits, ReadOptions, Rule};

mod common;

use common::Gzipped;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn ustar(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    h
}

fn apply_error(layer: impl overlayer::layer::LayerInput, opts: &ReadOptions) -> overlayer::Error {
    let tmp = tempfile::tempdir().unwrap();
    let err = overlayer::apply_to_new_dir_with(vec![layer], &tmp.path().join("rootfs"), opts)
        .expect_err("the layer must be refused");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "partial output left"
    );
    err
}

#[test]
fn a_gigabyte_pax_header_is_refused_before_its_body_is_read() {
    let head = ustar("PaxHeaders.0/f", tar::EntryType::XHeader, GIB);
    let mut layer = Gzipped::new(head.as_bytes(), GIB, 1);
    let err = apply_error(&mut layer, &ReadOptions::default());
    assert_eq!(err.rule(), Some(Rule::LimitExtensionBytes), "{err}");
    assert_eq!(err.location(), Some((0, "PaxHeaders.0/f")));
    let text = err.to_string();
    assert!(
        text.contains("PAX extended header (x) of 1073741824 bytes, limit 1048576"),
        "{text}"
    );
    assert!(
        layer.fed < 4 * MIB,
        "read {} bytes of the record",
        layer.fed
    );
}

#[test]
fn gnu_long_names_and_global_headers_are_bounded_too() {
    for (kind, what) in [
        (tar::EntryType::GNULongName, "GNU long name (L)"),
        (tar::EntryType::GNULongLink, "GNU long link name (K)"),
        (tar::EntryType::XGlobalHeader, "PAX global header (g)"),
    ] {
        let mut head = tar::Header::new_gnu();
        head.set_path("././@LongLink").unwrap();
        head.set_entry_type(kind);
        head.set_size(GIB);
        head.set_cksum();
        let mut layer = Gzipped::new(head.as_bytes(), GIB, 1);
        let err = apply_error(&mut layer, &ReadOptions::default());
        assert_eq!(err.rule(), Some(Rule::LimitExtensionBytes), "{err}");
        assert!(err.to_string().contains(what), "{err}");
        assert!(layer.fed < 4 * MIB, "{what}: read {} bytes", layer.fed);
    }
}

/// A layer of one file `f` whose PAX header holds `records` xattr records.
fn pax_layer(records: usize) -> Vec<u8> {
    let mut pax = Vec::new();
    for i in 0..records {
        let body = format!("SCHILY.xattr.user.k{i:07}=v\n");
        let len = body.len() + 3; // "NN " for lengths of two digits
        assert_eq!(len.to_string().len(), 2);
        pax.extend(format!("{len} {body}").bytes());
    }
    let mut out = Vec::new();
    out.extend(ustar("PaxHeaders.0/f", tar::EntryType::XHeader, pax.len() as u64).as_bytes());
    out.extend(&pax);
    out.resize(out.len().next_multiple_of(512), 0);
    out.extend(ustar("f", tar::EntryType::Regular, 0).as_bytes());
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn the_extension_limit_is_a_flag_and_records_within_it_apply() {
    let layer = pax_layer(100);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rootfs");
    // Applied with the defaults (the records are 3,000 bytes)...
    overlayer::apply_to_new_dir_with(vec![&layer[..]], &out, &ReadOptions::default()).unwrap();
    // (apply fails where the filesystem refuses user.* xattrs, so success
    // means all of them were set.)
    assert_eq!(user_xattr_count(&out.join("f")), 100);
    // ...and refused below them.
    let tight = ReadOptions {
        limits: Limits {
            max_extension_bytes: 2048,
            ..Limits::default()
        },
        ..Default::default()
    };
    let err = apply_error(&layer[..], &tight);
    assert_eq!(err.rule(), Some(Rule::LimitExtensionBytes), "{err}");
    assert!(err.to_string().contains("limit 2048"), "{err}");
}

/// The number of `user.*` xattrs on `path`.
fn user_xattr_count(path: &Path) -> usize {
    // XATTR_LIST_MAX: no name list is longer.
    let mut buf = vec![0u8; 64 * 1024];
    let len = rustix::fs::listxattr(path, &mut buf).unwrap();
    buf[..len]
        .split(|&b| b == 0)
        .filter(|n| n.starts_with(b"user."))
        .count()
}

#[test]
fn extension_records_count_against_max_bytes() {
    let layer = pax_layer(20_000); // 600,000 bytes of records
    let opts = ReadOptions {
        limits: Limits {
            max_bytes: 256 * 1024,
            ..Limits::default()
        },
        ..Default::default()
    };
    let err = apply_error(&layer[..], &opts);
    assert_eq!(err.rule(), Some(Rule::LimitBytes), "{err}");
}

/// Peak RSS in KiB of `overlayer ARGS`, with its exit code and stderr
/// (GNU time, from the `time` package that `make test-deps` installs).
fn peak_rss_kib(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, u64) {
    let time = Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "/usr/bin/time is missing: install the `time` package (make test-deps)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("rss");
    let out = Command::new(time)
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&report)
        .arg(env!("CARGO_BIN_EXE_overlayer"))
        .args(args)
        .output()
        .unwrap();
    let rss = std::fs::read_to_string(&report).unwrap();
    let rss = rss.lines().last().unwrap().trim().parse().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        rss,
    )
}

/// Through the binary: a gzip layer of a few MB whose PAX header claims (and
/// holds) 1 GiB, and one whose header holds a million small records; apply
/// and convert refuse both with the rule, in well under 64 MB.
#[test]
fn hostile_extension_layers_are_refused_by_the_binary_in_little_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("pax-1gib.tar.gz");
    let head = ustar("PaxHeaders.0/f", tar::EntryType::XHeader, GIB);
    let mut file = std::fs::File::create(&big).unwrap();
    io::copy(&mut Gzipped::new(head.as_bytes(), GIB, 6), &mut file).unwrap();
    drop(file);
    let many = tmp.path().join("pax-million.tar.gz");
    let mut enc = GzEncoder::new(
        std::fs::File::create(&many).unwrap(),
        flate2::Compression::default(),
    );
    enc.write_all(&pax_layer(1_000_000)).unwrap();
    enc.finish().unwrap();
    for layer in [&big, &many] {
        for cmd in ["apply", "convert"] {
            let out = tmp.path().join(format!("out-{cmd}"));
            let (code, stderr, rss) = peak_rss_kib(&[
                cmd.as_ref(),
                layer.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ]);
            eprintln!(
                "{cmd} {}: {} bytes on disk, peak RSS {rss} KiB",
                layer.display(),
                std::fs::metadata(layer).unwrap().len()
            );
            assert_eq!(code, Some(2), "{cmd}: {stderr}");
            assert!(stderr.contains("[limit-extension-bytes]"), "{stderr}");
            assert!(stderr.contains("layer 0"), "{stderr}");
            assert!(rss < 64 * 1024, "{cmd}: peak RSS {rss} KiB");
            assert!(!out.exists(), "{cmd} left output behind");
        }
    }
}
