//! Reading one layer: decompression by magic bytes, tar parsing, name
//! normalisation and validation.
//!
//! OCI layer.md: a layer is a tar archive, optionally gzip- or
//! zstd-compressed; entry names are relative to the root, so `./a`, `/a` and
//! `a` are the same path.

use std::io::{self, BufRead, BufReader, Read};

use crate::error::{Error, Fault, Result, Rule};
use crate::spec::{self, WhiteoutName};

/// The compression of a layer, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    /// Detects the compression from the magic bytes at the start of a layer.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps `reader` in the decompressor its magic bytes call for.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let head = buffered.fill_buf()?;
    Ok(match Compression::detect(head) {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
    })
}

/// A path inside a layer, as components; empty is the root.
pub type RelPath = Vec<String>;

/// Metadata an entry carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes from PAX `SCHILY.xattr.*` records, in archive order.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// What an entry asks for, after the whiteout names are interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink(String),
    /// A hardlink to another path of the rootfs (lower layers included).
    Hardlink(RelPath),
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
    /// `.wh.NAME`: `Entry::path` is the whited-out path `PARENT/NAME`.
    Whiteout,
    /// `.wh..wh..opq`: `Entry::path` is the directory made opaque.
    Opaque,
}

/// One validated, normalised layer entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The name as it appears in the archive (normalised), for messages.
    pub name: String,
    /// The path the entry acts on.
    pub path: RelPath,
    pub kind: EntryKind,
    pub meta: Meta,
}

impl Entry {
    pub fn display_path(&self) -> String {
        display(&self.path)
    }
}

/// Joins components into a relative display path; `.` for the root.
pub fn display(path: &[String]) -> String {
    if path.is_empty() {
        ".".to_string()
    } else {
        path.join("/")
    }
}

/// Splits and normalises an archive name: leading `/` and `./`, empty and `.`
/// components vanish; `..` is an error.
pub fn normalise(raw: &[u8]) -> std::result::Result<RelPath, Rule> {
    let text = std::str::from_utf8(raw).map_err(|_| Rule::NonUtf8Name)?;
    let mut out = Vec::new();
    for comp in text.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(Rule::ParentComponent),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

/// Reads every entry of one layer and hands it, with its content, to `visit`.
///
/// AUFS metadata (`.wh..wh.*` other than the opaque marker, anywhere in the
/// path) is skipped: layer.md reserves those names and they never reach a
/// rootfs. PAX global headers are ignored.
pub fn read_layer<R, F>(layer: usize, reader: R, mut visit: F) -> Result<()>
where
    R: Read,
    F: FnMut(&Entry, &mut dyn Read) -> Result<()>,
{
    let corrupt = |entry: &str, e: io::Error| Error::Invalid {
        layer,
        entry: entry.to_string(),
        rule: Rule::CorruptArchive,
        detail: Some(e.to_string()),
    };
    let reader = decompress(reader).map_err(|e| corrupt("<archive>", e))?;
    let mut archive = tar::Archive::new(reader);
    let mut last = String::from("<archive start>");
    let entries = archive.entries().map_err(|e| corrupt(&last, e))?;
    for item in entries {
        let mut tar_entry = item.map_err(|e| corrupt(&format!("after {last}"), e))?;
        let raw_name = tar_entry.path_bytes().into_owned();
        // Errors name the normalised path; the raw one if it has none (`../x`).
        last = match normalise(&raw_name) {
            Ok(path) => display(&path),
            Err(_) => String::from_utf8_lossy(&raw_name).into_owned(),
        };
        let entry = match parse_entry(&mut tar_entry, &raw_name) {
            Ok(Some(entry)) => entry,
            Ok(None) => continue,
            Err(fault) => return Err(fault.at(layer, &last)),
        };
        visit(&entry, &mut tar_entry)?;
        // Drain what the visitor left so a read error surfaces here, named.
        io::copy(&mut tar_entry, &mut io::sink()).map_err(|e| corrupt(&last, e))?;
    }
    Ok(())
}

fn parse_entry<R: Read>(
    tar_entry: &mut tar::Entry<'_, R>,
    raw_name: &[u8],
) -> std::result::Result<Option<Entry>, Fault> {
    use tar::EntryType as T;
    let header = tar_entry.header();
    let entry_type = header.entry_type();
    if matches!(entry_type, T::XGlobalHeader) {
        return Ok(None);
    }
    let mut path = normalise(raw_name)?;
    let name = display(&path);
    if path.iter().any(|c| is_aufs_meta(c)) {
        return Ok(None);
    }
    let mut meta = Meta {
        mode: header.mode().unwrap_or(0o644) & 0o7777,
        uid: header.uid().unwrap_or(0) as u32,
        gid: header.gid().unwrap_or(0) as u32,
        mtime: header.mtime().unwrap_or(0) as i64,
        xattrs: Vec::new(),
    };
    let device = |h: &tar::Header| {
        (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        )
    };
    let mut kind = match entry_type {
        T::Directory => EntryKind::Dir,
        T::Regular | T::Continuous => EntryKind::File,
        T::Symlink => {
            let target = tar_entry.link_name_bytes().unwrap_or_default();
            let target = String::from_utf8(target.into_owned()).map_err(|_| Rule::NonUtf8Name)?;
            if target.is_empty() {
                return Err(Fault::Rule(
                    Rule::UnsupportedEntryType,
                    Some("a symlink with an empty target".into()),
                ));
            }
            EntryKind::Symlink(target)
        }
        T::Link => {
            let target = tar_entry.link_name_bytes().unwrap_or_default();
            EntryKind::Hardlink(normalise(&target)?)
        }
        T::Fifo => EntryKind::Fifo,
        T::Char => {
            let (major, minor) = device(header);
            if (major, minor) == spec::WHITEOUT_RDEV {
                return Err(Rule::WhiteoutDevice.into());
            }
            EntryKind::Char(major, minor)
        }
        T::Block => {
            let (major, minor) = device(header);
            EntryKind::Block(major, minor)
        }
        other => {
            return Err(Fault::Rule(
                Rule::UnsupportedEntryType,
                Some(format!("tar type {:?}", other.as_byte() as char)),
            ))
        }
    };
    if let Some(pax) = tar_entry
        .pax_extensions()
        .map_err(|e| Fault::Io("pax", e))?
    {
        for ext in pax {
            let ext = ext.map_err(|e| Fault::Io("pax", e))?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()?
                    .split('.')
                    .next()?
                    .parse()
                    .ok()
            };
            if let Some(xattr) = key.strip_prefix("SCHILY.xattr.") {
                meta.xattrs.push((xattr.to_string(), value.to_vec()));
            } else if key == "uid" {
                meta.uid = number().unwrap_or(meta.uid as i64) as u32;
            } else if key == "gid" {
                meta.gid = number().unwrap_or(meta.gid as i64) as u32;
            } else if key == "mtime" {
                meta.mtime = number().unwrap_or(meta.mtime);
            }
        }
    }
    if let Some(last) = path.last() {
        match spec::classify(last) {
            WhiteoutName::Plain => {}
            WhiteoutName::AufsMeta => return Ok(None),
            WhiteoutName::Opaque => {
                path.pop();
                kind = EntryKind::Opaque;
            }
            WhiteoutName::Whiteout(target) => {
                match target {
                    "" => return Err(Rule::BareWhiteout.into()),
                    "." | ".." => return Err(Rule::WhiteoutOfDot.into()),
                    _ => {}
                }
                let target = target.to_string();
                *path.last_mut().expect("non-empty") = target;
                kind = EntryKind::Whiteout;
            }
        }
    } else if kind != EntryKind::Dir {
        return Err(Rule::RootNotDirectory.into());
    }
    Ok(Some(Entry {
        name,
        path,
        kind,
        meta,
    }))
}

/// `.wh..wh.*` names other than the opaque marker and `.wh..wh.` (a whiteout
/// of a file named `.wh.`) are AUFS metadata.
fn is_aufs_meta(component: &str) -> bool {
    matches!(spec::classify(component), WhiteoutName::AufsMeta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_slash_and_absolute_names_are_one_path() {
        let want = vec!["etc".to_string(), "x".to_string()];
        assert_eq!(normalise(b"./etc/x").unwrap(), want);
        assert_eq!(normalise(b"/etc/x").unwrap(), want);
        assert_eq!(normalise(b"etc//x/").unwrap(), want);
        assert_eq!(normalise(b"./").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn parent_components_are_rejected() {
        assert_eq!(normalise(b"../victim/x"), Err(Rule::ParentComponent));
        assert_eq!(normalise(b"/../victim/x"), Err(Rule::ParentComponent));
        assert_eq!(normalise(b"a/../../x"), Err(Rule::ParentComponent));
    }

    #[test]
    fn compression_is_detected_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"etc/"), Compression::None);
    }
}
