//! A stack of gzip layers in files is read with the next layer inflating
//! ahead of the one being written: the result must be the one the same
//! layers give read one at a time from memory, errors must name the layer
//! they are in, and an early error must not wait for a layer read ahead.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use overlayer::tree::{capture, diff, Type};
use overlayer::{ConvertOptions, ReadOptions, Rule};
use overlayer_harness::case::{build_tar, TarEntry};

/// Three layers: a base, one that deletes and replaces, one with an opaque
/// directory.
fn stack() -> Vec<Vec<u8>> {
    vec![
        build_tar(&[
            TarEntry::dir("a/"),
            TarEntry::file("a/b", "base b"),
            TarEntry::file("a/c", "base c"),
            TarEntry::dir("keep/"),
            TarEntry::file("keep/k", "base k"),
            TarEntry::file("gone", "base gone"),
        ]),
        build_tar(&[
            TarEntry::file("a/.wh.b", ""),
            TarEntry::file("gone", "replaced"),
            TarEntry::file("new", "1"),
        ]),
        build_tar(&[
            TarEntry::dir("a/"),
            TarEntry::file("a/.wh..wh..opq", ""),
            TarEntry::file("a/n", "top n"),
            TarEntry::file("keep/.wh.k", ""),
        ]),
    ]
    .into_iter()
    .map(|t| t.unwrap())
    .collect()
}

fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(tar).unwrap();
    enc.finish().unwrap()
}

/// Writes each layer to `dir/N.tar.gz` and opens it.
fn gzip_files(dir: &Path, layers: &[Vec<u8>]) -> Vec<File> {
    layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let path: PathBuf = dir.join(format!("{i}.tar.gz"));
            std::fs::write(&path, gzip(layer)).unwrap();
            File::open(path).unwrap()
        })
        .collect()
}

fn assert_same(left: &Path, right: &Path) {
    let differences = diff(&capture(left).unwrap(), &capture(right).unwrap());
    assert!(differences.is_empty(), "{differences:#?}");
}

#[test]
fn gzip_files_apply_as_their_bytes_do() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = stack();
    let files = gzip_files(tmp.path(), &layers);
    let from_files = tmp.path().join("files");
    let from_bytes = tmp.path().join("bytes");
    overlayer::apply_to_new_dir(files, &from_files).unwrap();
    overlayer::apply_to_new_dir(layers.iter().map(|l| &l[..]).collect(), &from_bytes).unwrap();
    assert_same(&from_files, &from_bytes);
    let read = |p: &str| std::fs::read_to_string(from_files.join(p)).ok();
    assert_eq!(read("a/n").as_deref(), Some("top n"));
    assert_eq!(read("a/b"), None, "whiteout of layer 1 lost");
    assert_eq!(read("a/c"), None, "opaque directory of layer 2 lost");
    assert_eq!(read("keep/k"), None, "whiteout of layer 2 lost");
    assert_eq!(read("gone").as_deref(), Some("replaced"));
}

#[test]
fn gzip_files_convert_as_their_bytes_do() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: convert writes whiteout devices and trusted.* xattrs, which need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layers = stack();
    let files = gzip_files(tmp.path(), &layers);
    let from_files = tmp.path().join("files");
    let from_bytes = tmp.path().join("bytes");
    let opts = ConvertOptions::default();
    overlayer::convert_to_new_dir(files, &from_files, opts).unwrap();
    overlayer::convert_to_new_dir(layers.iter().map(|l| &l[..]).collect(), &from_bytes, opts)
        .unwrap();
    for i in 0..layers.len() {
        let name = i.to_string();
        let left = capture(&from_files.join(&name)).unwrap();
        let right = capture(&from_bytes.join(&name)).unwrap();
        // A whiteout device is made when written: its mtime is the clock's.
        let differences: Vec<_> = diff(&left, &right)
            .into_iter()
            .filter(|d| {
                let whiteout = left
                    .nodes
                    .get(&d.path)
                    .is_some_and(|n| n.kind == Type::Char);
                !(whiteout && d.field == "mtime")
            })
            .collect();
        assert!(differences.is_empty(), "layer {i}: {differences:#?}");
    }
}

#[test]
fn hidden_reads_gzip_files_as_their_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = stack();
    let files = gzip_files(tmp.path(), &layers);
    let opts = ReadOptions::default();
    let of_files = overlayer::hidden::hidden(files, &opts).unwrap();
    let of_bytes =
        overlayer::hidden::hidden(layers.iter().map(|l| &l[..]).collect(), &opts).unwrap();
    let paths = |h: &[overlayer::hidden::Hidden]| {
        h.iter()
            .map(|h| (h.path.clone(), h.layer, h.hidden_by, h.how))
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(&of_files), paths(&of_bytes));
    assert!(paths(&of_files).contains(&("/a/b".into(), 0, 1, "whiteout")));
}

/// A gzip layer of one file of `size` zero bytes: inflates far past what is
/// read ahead.
fn zeros_layer(size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path("zeros").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(header.as_bytes()).unwrap();
    let block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        enc.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    enc.write_all(&[0u8; 1024]).unwrap();
    enc.finish().unwrap()
}

#[test]
fn an_error_names_its_layer_while_the_next_is_read_ahead() {
    let tmp = tempfile::tempdir().unwrap();
    // Layer 0 breaks a rule at its second entry; layer 1 (256 MiB inflated)
    // is inflating meanwhile and must be stopped, not drained.
    let bad = build_tar(&[TarEntry::file("ok", "x"), TarEntry::file("../escape", "x")]).unwrap();
    let paths = [tmp.path().join("0.tar.gz"), tmp.path().join("1.tar.gz")];
    std::fs::write(&paths[0], gzip(&bad)).unwrap();
    std::fs::write(&paths[1], zeros_layer(256 << 20)).unwrap();
    let open = || {
        paths
            .iter()
            .map(|p| File::open(p).unwrap())
            .collect::<Vec<_>>()
    };
    let out = tmp.path().join("rootfs");
    let err = overlayer::apply_to_new_dir(open(), &out).unwrap_err();
    assert_eq!(err.rule(), Some(Rule::ParentComponent), "{err}");
    assert_eq!(err.location().map(|(layer, _)| layer), Some(0), "{err}");
    assert!(!out.exists(), "partial output left");
    let err = overlayer::convert_to_new_dir(open(), &out, ConvertOptions::default()).unwrap_err();
    assert_eq!(err.location().map(|(layer, _)| layer), Some(0), "{err}");
    assert!(!out.exists(), "partial output left");
}

#[test]
fn a_corrupt_layer_read_ahead_fails_in_its_turn() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = stack();
    let mut files = gzip_files(tmp.path(), &layers[..2]);
    // Gzip magic, then garbage: the inflater fails while layer 1 is read.
    let corrupt = tmp.path().join("2.tar.gz");
    let mut bytes = gzip(&layers[2]);
    let mid = bytes.len() / 2;
    bytes[12..mid].iter_mut().for_each(|b| *b = !*b);
    std::fs::write(&corrupt, bytes).unwrap();
    files.push(File::open(&corrupt).unwrap());
    let out = tmp.path().join("rootfs");
    let err = overlayer::apply_to_new_dir(files, &out).unwrap_err();
    assert_eq!(err.location().map(|(layer, _)| layer), Some(2), "{err}");
    assert!(!out.exists(), "partial output left");
}
