//! Reading one layer: decompression by magic bytes, tar parsing, name
//! normalisation and validation.
//!
//! OCI layer.md: a layer is a tar archive, optionally gzip- or
//! zstd-compressed; entry names are relative to the root, so `./a`, `/a` and
//! `a` are the same path.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::BorrowedFd;
use std::rc::Rc;

use crate::error::{Error, Fault, Result, Rule};
use crate::inflate::{Inflated, ReadyKind, CHUNK, CHUNKS_AHEAD, CHUNKS_READ_AHEAD, ZSTD_MAGIC};
use crate::limits::{self, Notice, ReadOptions, Summary};
use crate::source::{self, read_via_buf, FileReader, SpliceRead};
use crate::spec::{self, WhiteoutName};
use crate::tar_stream::{Member, StreamError, TarStream};

pub use crate::inflate::{decompress, Compression, Ready};
pub use crate::source::LayerInput;

/// An entry's body, read in place (`BufRead`); [`EntryBody::write_to`]
/// writes what is left of it to a file.
pub trait EntryBody: BufRead {
    /// Writes the rest of the body to `to`: file to file in the kernel
    /// where the layer is a plain regular file, else from the read buffer.
    fn write_to(&mut self, to: &mut File) -> io::Result<()>;
}

/// Linux's NAME_MAX: the longest path component any filesystem holds.
pub const NAME_MAX: usize = 255;
/// The longest path a rootfs can hold: `/` + path + NUL within PATH_MAX
/// (4096), so the container itself can name it.
pub const PATH_MAX_IN_ROOT: usize = 4094;

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
            c if c.len() > NAME_MAX => return Err(Rule::NameTooLong),
            c => out.push(c.to_string()),
        }
    }
    let len = out
        .iter()
        .map(|c| c.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    if len > PATH_MAX_IN_ROOT {
        return Err(Rule::NameTooLong);
    }
    Ok(out)
}

/// Why the counting reader stopped the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trip {
    Bytes,
    Cancel,
}

/// The inflated stream of a layer, counted against the byte budget and
/// watching for cancellation on every fill, so a bomb stops within one
/// buffer of the limit. Bytes count when consumed, and no more than one
/// byte past the budget is ever handed out.
struct Counted<R> {
    inner: R,
    used: Rc<Cell<u64>>,
    max: u64,
    trip: Rc<Cell<Option<Trip>>>,
}

impl<R> Counted<R> {
    /// What may still be handed out: one byte past the budget at most, so
    /// the next look trips.
    fn room(&self) -> io::Result<u64> {
        if limits::cancelled() {
            self.trip.set(Some(Trip::Cancel));
            return Err(io::Error::other("cancelled"));
        }
        let used = self.used.get();
        if used > self.max {
            self.trip.set(Some(Trip::Bytes));
            return Err(io::Error::other("inflated size limit exceeded"));
        }
        Ok((self.max - used).saturating_add(1))
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let room = usize::try_from(self.room()?).unwrap_or(usize::MAX);
        let buf = self.inner.fill_buf()?;
        Ok(&buf[..buf.len().min(room)])
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.used.set(self.used.get() + n as u64);
    }
}

impl<R: BufRead> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_via_buf(self, buf)
    }
}

impl<R: SpliceRead> SpliceRead for Counted<R> {
    fn splice_to(&mut self, to: BorrowedFd<'_>, len: u64) -> io::Result<Option<u64>> {
        let room = self.room()?;
        let copied = self.inner.splice_to(to, len.min(room))?;
        if let Some(n) = copied {
            self.used.set(self.used.get() + n);
        }
        Ok(copied)
    }
}

/// Reads the layers of one stack, bottom first, keeping the budget of the
/// limits across them and collecting notices.
pub struct StackReader {
    opts: ReadOptions,
    entries: u64,
    bytes: Rc<Cell<u64>>,
    notices: Vec<Notice>,
}

impl StackReader {
    pub fn new(opts: ReadOptions) -> Self {
        StackReader {
            opts,
            entries: 0,
            bytes: Rc::new(Cell::new(0)),
            notices: Vec::new(),
        }
    }

    /// What was read so far.
    pub fn summary(&self) -> Summary {
        Summary {
            entries: self.entries,
            bytes: self.bytes.get(),
            notices: self.notices.clone(),
        }
    }

    /// Reads every entry of one layer and hands it, with its content, to
    /// `visit`.
    ///
    /// AUFS metadata (`.wh..wh.*` other than the opaque marker, anywhere in
    /// the path) is skipped (refused in strict mode): layer.md reserves those
    /// names and they never reach a rootfs. PAX global headers are ignored.
    ///
    /// A compressed layer is inflated on a thread of its own while entries
    /// are written, at most 4 MiB (`CHUNKS_AHEAD`) ahead of the reader. A
    /// plain layer in a regular file is read with `pread` from the file's
    /// position, and large bodies go file to file ([`EntryBody::write_to`]).
    pub fn read_layer<R, F>(&mut self, layer: usize, reader: R, mut visit: F) -> Result<()>
    where
        R: LayerInput,
        F: FnMut(&Entry, &mut dyn EntryBody) -> Result<()>,
    {
        let trip = Rc::new(Cell::new(None));
        let mut last = String::from(ARCHIVE_START);
        let result = match reader.regular_file() {
            Some(file) => self.read_file(layer, file, &trip, &mut last, &mut visit),
            None => {
                let buffered = BufReader::with_capacity(CHUNK, reader);
                self.read_buffered(layer, buffered, &trip, &mut last, &mut visit)
            }
        };
        self.layer_result(layer, result, &trip, last)
    }

    /// Reads `layers` bottom first: `each(self, index, layer)` reads one
    /// with [`StackReader::read_ready`]; the first error ends the stack.
    ///
    /// While a layer is read, the next one, if it is a gzip regular file, is
    /// already inflating on a thread of its own, at most
    /// 16 MiB (`CHUNKS_READ_AHEAD`) ahead: inflating is the slow half of a
    /// gzip layer, and the writer, waiting for it, leaves a core free.
    pub fn read_stack<R, F>(&mut self, layers: &mut [R], mut each: F) -> Result<()>
    where
        R: LayerInput,
        F: FnMut(&mut Self, usize, Ready<'_, R>) -> Result<()>,
    {
        std::thread::scope(|scope| {
            let mut rest = layers.iter_mut();
            let first = rest.next();
            let mut next = first.map(|layer| Ready::start(scope, layer, CHUNKS_AHEAD));
            let mut index = 0;
            while let Some(current) = next.take() {
                next = rest
                    .next()
                    .map(|layer| Ready::start(scope, layer, CHUNKS_READ_AHEAD));
                // On an error the next layer's reading end is dropped here,
                // which stops its inflater before the scope joins it.
                each(self, index, current)?;
                index += 1;
            }
            Ok(())
        })
    }

    /// [`StackReader::read_layer`] for a layer [`StackReader::read_stack`]
    /// handed out.
    pub fn read_ready<R, F>(
        &mut self,
        layer: usize,
        ready: Ready<'_, R>,
        mut visit: F,
    ) -> Result<()>
    where
        R: LayerInput,
        F: FnMut(&Entry, &mut dyn EntryBody) -> Result<()>,
    {
        match ready.0 {
            ReadyKind::Input(reader) => self.read_layer(layer, reader, visit),
            ReadyKind::Inflating(inflated) => {
                let trip = Rc::new(Cell::new(None));
                let mut last = String::from(ARCHIVE_START);
                let result = self.read_entries(layer, inflated, true, &trip, &mut last, &mut visit);
                self.layer_result(layer, result, &trip, last)
            }
        }
    }

    /// A layer's error as the reader saw it: a cancelled read or a broken
    /// byte limit ends the layer with an error of its own.
    fn layer_result(
        &self,
        layer: usize,
        result: Result<()>,
        trip: &Cell<Option<Trip>>,
        last: String,
    ) -> Result<()> {
        match (result, trip.get()) {
            (Ok(()), _) => Ok(()),
            // A signal handler may set the flag just after the read it
            // interrupted failed for another reason (EOF on a closed pipe).
            (Err(_), _) if limits::cancelled() => Err(Error::Cancelled),
            (Err(_), Some(Trip::Cancel)) => Err(Error::Cancelled),
            (Err(_), Some(Trip::Bytes)) => Err(Error::Invalid {
                layer,
                entry: last,
                rule: Rule::LimitBytes,
                detail: Some(format!("limit {} bytes", self.opts.limits.max_bytes)),
            }),
            (Err(e), None) => Err(e),
        }
    }

    /// A layer in a regular file: a plain one is read with `pread`, so
    /// its bodies can be spliced; a compressed one is inflated from the
    /// file's position (which `pread` leaves where it was).
    fn read_file<F>(
        &mut self,
        layer: usize,
        file: &File,
        trip: &Rc<Cell<Option<Trip>>>,
        last: &mut String,
        visit: &mut F,
    ) -> Result<()>
    where
        F: FnMut(&Entry, &mut dyn EntryBody) -> Result<()>,
    {
        // The longest magic is zstd's.
        let mut head = [0; ZSTD_MAGIC.len()];
        let n = source::peek(file, &mut head).map_err(|e| unreadable(layer, e))?;
        if Compression::detect(&head[..n]) == Compression::None {
            let plain = FileReader::new(file).map_err(|e| unreadable(layer, e))?;
            self.read_entries(layer, plain, false, trip, last, visit)
        } else {
            let buffered = crate::inflate::file_buffer(file);
            self.read_buffered(layer, buffered, trip, last, visit)
        }
    }

    /// Detects the compression and reads the entries; a compressed layer
    /// is inflated on a thread of its own.
    fn read_buffered<B, F>(
        &mut self,
        layer: usize,
        mut buffered: B,
        trip: &Rc<Cell<Option<Trip>>>,
        last: &mut String,
        visit: &mut F,
    ) -> Result<()>
    where
        B: SpliceRead + Send,
        F: FnMut(&Entry, &mut dyn EntryBody) -> Result<()>,
    {
        let compression = match buffered.fill_buf() {
            Ok(head) => Compression::detect(head),
            Err(e) => return Err(unreadable(layer, e)),
        };
        if compression == Compression::None {
            return self.read_entries(layer, buffered, false, trip, last, visit);
        }
        std::thread::scope(|scope| {
            let inflated = Inflated::start(scope, buffered, compression, CHUNKS_AHEAD);
            // `inflated` is dropped when read_entries returns, which
            // stops the inflater before the scope joins it.
            self.read_entries(layer, inflated, true, trip, last, visit)
        })
    }

    /// Reads the entries of one layer; `compressed`: the stream is read on
    /// past the end of the archive, to the decompressor's end checks.
    fn read_entries<R, F>(
        &mut self,
        layer: usize,
        reader: R,
        compressed: bool,
        trip: &Rc<Cell<Option<Trip>>>,
        last: &mut String,
        visit: &mut F,
    ) -> Result<()>
    where
        R: SpliceRead,
        F: FnMut(&Entry, &mut dyn EntryBody) -> Result<()>,
    {
        let corrupt = |entry: &str, detail: String| Error::Invalid {
            layer,
            entry: entry.to_string(),
            rule: Rule::CorruptArchive,
            detail: Some(detail),
        };
        let counted = Counted {
            inner: reader,
            used: self.bytes.clone(),
            max: self.opts.limits.max_bytes,
            trip: trip.clone(),
        };
        let limits = self.opts.limits;
        let mut stream = TarStream::new(counted, limits.max_extension_bytes);
        let mut seen: HashSet<RelPath> = HashSet::new();
        loop {
            let member = match stream.next_member() {
                Ok(Some(member)) => member,
                Ok(None) if compressed => {
                    return stream
                        .read_past_end()
                        .map_err(|e| corrupt(ARCHIVE_END, format!("after {last}: {e}")));
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(stream_error(layer, last, e)),
            };
            let raw_name = member.path_bytes().into_owned();
            // Errors name the normalised path; the raw one if it has none (`../x`).
            *last = match normalise(&raw_name) {
                Ok(path) => display(&path),
                Err(_) => String::from_utf8_lossy(&raw_name).into_owned(),
            };
            if limits::cancelled() {
                return Err(Error::Cancelled);
            }
            self.entries += 1;
            let over = |rule: Rule, limit: String| Error::Invalid {
                layer,
                entry: last.clone(),
                rule,
                detail: Some(limit),
            };
            if self.entries > limits.max_entries {
                return Err(over(
                    Rule::LimitEntries,
                    format!("limit {}", limits.max_entries),
                ));
            }
            if member.size > limits.max_file_bytes {
                return Err(over(
                    Rule::LimitFileBytes,
                    format!("{} bytes, limit {}", member.size, limits.max_file_bytes),
                ));
            }
            let strict = self.opts.strict.then_some(&mut seen);
            let mut entry = match parse_entry(&member, &raw_name, strict) {
                Ok(Some(entry)) => entry,
                Ok(None) => continue,
                Err(fault) => return Err(fault.at(layer, last)),
            };
            let depth = match &entry.kind {
                EntryKind::Hardlink(target) => entry.path.len().max(target.len()),
                _ => entry.path.len(),
            };
            if depth > limits.max_depth {
                return Err(over(
                    Rule::LimitDepth,
                    format!("{depth} components, limit {}", limits.max_depth),
                ));
            }
            self.unstorable_xattrs(layer, &mut entry)?;
            self.user_xattrs_on_special_files(layer, &mut entry)?;
            if self.opts.strict {
                self.notice(layer, &entry);
            }
            let visited = visit(&entry, &mut stream.body());
            if visited.is_err() && stream.truncated() {
                return Err(corrupt(last, "truncated in the entry's data".into()));
            }
            visited?;
            // Skip what the visitor left so a read error surfaces here, named.
            stream
                .skip_rest()
                .map_err(|e| stream_error(layer, last, e))?;
        }
    }

    /// xattr(7): Linux stores xattrs in four namespaces only, with names of
    /// at most 255 bytes and values of at most 64 KiB; any other xattr is
    /// refused by every filesystem, so no one can apply it. Strict mode
    /// refuses the entry; lenient mode drops those xattrs with a notice, in
    /// apply and convert alike (as containerd and Docker skip xattrs the
    /// target refuses).
    fn unstorable_xattrs(&mut self, layer: usize, entry: &mut Entry) -> Result<()> {
        self.drop_xattrs(
            layer,
            entry,
            Rule::XattrNotStorable,
            "xattrs dropped: Linux cannot store them (a namespace other than security, \
             system, trusted or user, an empty or over-255-byte name, or over 64 KiB)",
            |name, value| spec::unstorable_xattr(name, value).map(|why| format!("{name:?}: {why}")),
        )
    }

    /// xattr(7): `user.*` xattrs exist only on regular files and
    /// directories, so a layer's `user.*` records on a symlink, fifo or
    /// device node cannot be applied by anyone. Strict mode refuses them;
    /// lenient mode drops them with a notice, in apply and convert alike.
    /// (Export never meets them: no Linux filesystem stores them.)
    fn user_xattrs_on_special_files(&mut self, layer: usize, entry: &mut Entry) -> Result<()> {
        if !matches!(
            entry.kind,
            EntryKind::Symlink(_) | EntryKind::Fifo | EntryKind::Char(..) | EntryKind::Block(..)
        ) {
            return Ok(());
        }
        self.drop_xattrs(
            layer,
            entry,
            Rule::UserXattrOnSpecialFile,
            "user.* xattrs dropped: Linux allows them only on regular files and directories",
            |name, _| {
                name.starts_with(spec::USER_XATTR_PREFIX)
                    .then(|| name.to_string())
            },
        )
    }

    /// The entry's xattrs that `unappliable` describes (why, for the error)
    /// are refused under `rule` in strict mode, else dropped with `notice`.
    fn drop_xattrs(
        &mut self,
        layer: usize,
        entry: &mut Entry,
        rule: Rule,
        notice: &'static str,
        unappliable: impl Fn(&str, &[u8]) -> Option<String>,
    ) -> Result<()> {
        let found: Vec<String> = entry
            .meta
            .xattrs
            .iter()
            .filter_map(|(name, value)| unappliable(name, value))
            .collect();
        if found.is_empty() {
            return Ok(());
        }
        if self.opts.strict {
            return Err(Error::Invalid {
                layer,
                entry: entry.name.clone(),
                rule,
                detail: Some(found.join(", ")),
            });
        }
        self.notices.push(Notice {
            layer,
            entry: entry.name.clone(),
            what: notice,
        });
        entry
            .meta
            .xattrs
            .retain(|(name, value)| unappliable(name, value).is_none());
        Ok(())
    }

    fn notice(&mut self, layer: usize, entry: &Entry) {
        let what = match entry.kind {
            EntryKind::Char(..) | EntryKind::Block(..) => "device node",
            EntryKind::File if entry.meta.mode & 0o6000 != 0 => "setuid or setgid file",
            _ => return,
        };
        self.notices.push(Notice {
            layer,
            entry: entry.name.clone(),
            what,
        });
    }
}

/// What an error names as its entry before a layer's first entry, and
/// after its last one (the end of a compressed stream).
const ARCHIVE_START: &str = "<archive start>";
const ARCHIVE_END: &str = "<archive end>";

/// A layer that cannot be read from its first byte.
fn unreadable(layer: usize, e: io::Error) -> Error {
    Error::Invalid {
        layer,
        entry: "<archive>".into(),
        rule: Rule::CorruptArchive,
        detail: Some(e.to_string()),
    }
}

/// Names a stream error at `last`, the entry read before it.
fn stream_error(layer: usize, last: &str, e: StreamError) -> Error {
    let what = e.to_string();
    let (entry, rule, detail) = match e {
        // Writers often leave an extension header's own name empty.
        StreamError::ExtensionTooLarge { header_name, .. } if !header_name.is_empty() => (
            header_name,
            Rule::LimitExtensionBytes,
            format!("{what}, after entry {last:?}"),
        ),
        StreamError::ExtensionTooLarge { .. } => {
            (format!("after {last}"), Rule::LimitExtensionBytes, what)
        }
        StreamError::Corrupt(_) | StreamError::Io(_) => {
            (format!("after {last}"), Rule::CorruptArchive, what)
        }
    };
    Error::Invalid {
        layer,
        entry,
        rule,
        detail: Some(detail),
    }
}

/// Reads one layer with default options (see [`StackReader::read_layer`]).
pub fn read_layer<R, F>(layer: usize, reader: R, visit: F) -> Result<()>
where
    R: LayerInput,
    F: FnMut(&Entry, &mut dyn EntryBody) -> Result<()>,
{
    StackReader::new(ReadOptions::default()).read_layer(layer, reader, visit)
}

/// Parses one header. With `strict` (the paths seen so far in this layer),
/// refuses what lenient mode tolerates.
fn parse_entry(
    member: &Member,
    raw_name: &[u8],
    strict: Option<&mut HashSet<RelPath>>,
) -> std::result::Result<Option<Entry>, Fault> {
    use tar::EntryType as T;
    let header = &member.header;
    let entry_type = header.entry_type();
    if matches!(entry_type, T::XGlobalHeader) {
        return Ok(None);
    }
    let mut path = normalise(raw_name)?;
    let name = display(&path);
    let aufs = path.iter().any(|c| is_aufs_meta(c));
    let strict = match strict {
        Some(seen) => {
            if aufs {
                return Err(Rule::AufsMetadata.into());
            }
            if !seen.insert(path.clone()) {
                return Err(Rule::DuplicateEntry.into());
            }
            if let Some((_, dirs)) = path.split_last() {
                if dirs.iter().any(|c| c.starts_with(spec::WHITEOUT_PREFIX)) {
                    return Err(Rule::WhiteoutInnerComponent.into());
                }
            }
            true
        }
        None => false,
    };
    if aufs {
        return Ok(None);
    }
    let mut meta = Meta {
        mode: header.mode().unwrap_or(0o644) & 0o7777,
        uid: owner(header.uid().unwrap_or(0))?,
        gid: owner(header.gid().unwrap_or(0))?,
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
            let target = member.link_name_bytes().unwrap_or_default();
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
            let target = member.link_name_bytes().unwrap_or_default();
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
    for record in member.pax_records() {
        let (key, value) = record
            .map_err(|e| Fault::Rule(Rule::CorruptArchive, Some(format!("PAX record: {e}"))))?;
        let Ok(key) = std::str::from_utf8(key) else {
            continue;
        };
        if let Some(xattr) = key.strip_prefix(spec::PAX_XATTR_PREFIX) {
            meta.xattrs.push((xattr.to_string(), value.to_vec()));
        } else if key == "uid" || key == "gid" {
            // PAX ids may exceed 32 bits; truncating 2^32 would give
            // root (0), so anything out of range is refused.
            let id: u64 = pax_number(value).ok_or_else(|| {
                Fault::Rule(
                    Rule::CorruptArchive,
                    Some(format!("PAX {key} is not a number")),
                )
            })?;
            if key == "uid" {
                meta.uid = owner(id)?;
            } else {
                meta.gid = owner(id)?;
            }
        } else if key == "mtime" {
            meta.mtime = pax_number(value).unwrap_or(meta.mtime);
        }
    }
    let is_marker = path
        .last()
        .is_some_and(|l| spec::classify(l) != WhiteoutName::Plain);
    if strict && is_marker && (kind != EntryKind::File || member.size != 0) {
        return Err(Rule::WhiteoutNotRegular.into());
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

/// The integer part of a PAX number record (`"1700000000.5"` → 1700000000).
fn pax_number<T: std::str::FromStr>(value: &[u8]) -> Option<T> {
    std::str::from_utf8(value)
        .ok()?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// An owner id as Linux can apply it: 32 bits, and not `(uid_t)-1`, which
/// chown reads as "leave unchanged".
fn owner(id: u64) -> std::result::Result<u32, Fault> {
    match u32::try_from(id) {
        Ok(id) if id != u32::MAX => Ok(id),
        _ => Err(Fault::Rule(Rule::InvalidOwner, Some(format!("id {id}")))),
    }
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
