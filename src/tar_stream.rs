//! A tar stream read header by header, so that every extension record (PAX
//! `x`/`g`, GNU `L`/`K`) is measured at its header and refused before its
//! body is read: a hostile layer cannot make the reader hold more than
//! `--max-extension-bytes` of one record in memory.
//!
//! The forms are POSIX.1-2001 pax, ustar and GNU, with the precedence the
//! tar crate and Go's archive/tar (containerd, moby) share: a GNU long name
//! beats a PAX `path`, which beats the header's name (the same for link
//! names), and a PAX `size` overrides the header's size, since parsers that
//! disagree on where a member ends see different archives.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::AsFd;

use crate::layer::EntryBody;
use crate::source::SpliceRead;

/// The tar block size: headers, and bodies padded to it.
const BLOCK: u64 = 512;

/// PAX keys the stream itself interprets.
const PAX_PATH: &[u8] = b"path";
const PAX_LINKPATH: &[u8] = b"linkpath";
const PAX_SIZE: &[u8] = b"size";

/// An extension record: a header whose body describes the next member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extension {
    /// `x`: PAX records for the next member.
    Pax,
    /// `g`: PAX records for the rest of the archive (ignored: layer.md
    /// gives them no meaning, and no layer writer relies on them).
    PaxGlobal,
    /// `L`: the next member's name.
    GnuLongName,
    /// `K`: the next member's link name.
    GnuLongLink,
}

impl Extension {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Extension::Pax => "PAX extended header (x)",
            Extension::PaxGlobal => "PAX global header (g)",
            Extension::GnuLongName => "GNU long name (L)",
            Extension::GnuLongLink => "GNU long link name (K)",
        }
    }

    fn of(header: &tar::Header) -> Option<Extension> {
        // As the tar crate: only ustar and GNU headers carry extensions; an
        // old-style header with such a type is an unsupported member.
        if header.as_gnu().is_none() && header.as_ustar().is_none() {
            return None;
        }
        let t = header.entry_type();
        if t.is_pax_local_extensions() {
            Some(Extension::Pax)
        } else if t.is_pax_global_extensions() {
            Some(Extension::PaxGlobal)
        } else if t.is_gnu_longname() {
            Some(Extension::GnuLongName)
        } else if t.is_gnu_longlink() {
            Some(Extension::GnuLongLink)
        } else {
            None
        }
    }
}

/// What went wrong reading the stream.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// The archive is damaged: a bad checksum, a truncated header or body,
    /// extensions with no member after them.
    Corrupt(String),
    /// The underlying reader failed (a decompressor, a limit, cancellation).
    Io(io::Error),
    /// An extension record larger than the limit, refused at its header.
    ExtensionTooLarge {
        kind: Extension,
        /// The extension header's own name (`././@LongLink`, `PaxHeaders.0/f`).
        header_name: String,
        size: u64,
        limit: u64,
    },
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Corrupt(why) => f.write_str(why),
            StreamError::Io(e) => write!(f, "{e}"),
            StreamError::ExtensionTooLarge {
                kind, size, limit, ..
            } => write!(f, "{} of {size} bytes, limit {limit}", kind.describe()),
        }
    }
}

impl From<io::Error> for StreamError {
    fn from(e: io::Error) -> Self {
        StreamError::Io(e)
    }
}

/// One member's header with the extensions that describe it.
pub(crate) struct Member {
    pub(crate) header: tar::Header,
    /// The body's size: PAX `size` if given, else the header's.
    pub(crate) size: u64,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Member {
    pub(crate) fn path_bytes(&self) -> Cow<'_, [u8]> {
        if let Some(name) = &self.long_name {
            return Cow::Borrowed(trim_nul(name));
        }
        match self.pax_value(PAX_PATH) {
            Some(path) => Cow::Borrowed(path),
            None => self.header.path_bytes(),
        }
    }

    pub(crate) fn link_name_bytes(&self) -> Option<Cow<'_, [u8]>> {
        if let Some(name) = &self.long_link {
            return Some(Cow::Borrowed(trim_nul(name)));
        }
        match self.pax_value(PAX_LINKPATH) {
            Some(link) => Some(Cow::Borrowed(link)),
            None => self.header.link_name_bytes(),
        }
    }

    /// The member's PAX records, in archive order.
    pub(crate) fn pax_records(&self) -> PaxRecords<'_> {
        PaxRecords {
            data: self.pax.as_deref().unwrap_or_default(),
        }
    }

    /// The value of `key`, if the records up to it parse.
    fn pax_value(&self, key: &[u8]) -> Option<&[u8]> {
        pax_value(self.pax.as_deref()?, key)
    }
}

fn pax_value<'a>(records: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    PaxRecords { data: records }
        .map_while(Result::ok)
        .filter(|(k, _)| *k == key)
        .last()
        .map(|(_, v)| v)
}

/// A GNU long name is NUL-terminated.
fn trim_nul(name: &[u8]) -> &[u8] {
    name.strip_suffix(&[0]).unwrap_or(name)
}

/// PAX records (`LEN KEY=VALUE\n`, LEN counting the whole record), read by
/// their lengths, so values may hold newlines (binary xattrs).
pub(crate) struct PaxRecords<'a> {
    data: &'a [u8],
}

impl<'a> Iterator for PaxRecords<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), String>;

    fn next(&mut self) -> Option<Self::Item> {
        // Writers may pad the block with NULs after the last record.
        if self.data.iter().all(|&b| b == 0) {
            return None;
        }
        match split_record(self.data) {
            Ok((key, value, rest)) => {
                self.data = rest;
                Some(Ok((key, value)))
            }
            Err(e) => {
                self.data = &[];
                Some(Err(e))
            }
        }
    }
}

type Record<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn split_record(data: &[u8]) -> Result<Record<'_>, String> {
    let space = data
        .iter()
        .take(20)
        .position(|&b| b == b' ')
        .ok_or("a record does not start with its length")?;
    let digits = &data[..space];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err("a record's length is not a decimal number".into());
    }
    let len: usize = std::str::from_utf8(digits)
        .expect("ASCII digits")
        .parse()
        .map_err(|_| "a record's length is out of range")?;
    if len <= space + 1 || len > data.len() {
        return Err(format!(
            "a record's length {len} runs past the {} bytes left",
            data.len()
        ));
    }
    let Some((b'\n', body)) = data[space + 1..len].split_last() else {
        return Err("a record does not end with a newline".into());
    };
    let eq = body
        .iter()
        .position(|&b| b == b'=')
        .ok_or("a record has no `=`")?;
    Ok((&body[..eq], &body[eq + 1..], &data[len..]))
}

/// Reads members one at a time; the body of the current one is read through
/// [`TarStream::body`] (in place, from the reader's buffer), and whatever is
/// left of it is skipped before the next header.
pub(crate) struct TarStream<R> {
    inner: R,
    /// Body bytes of the current member not read yet.
    remaining: u64,
    /// Padding after the current member's body.
    padding: u64,
    max_extension: u64,
    /// A body ended early: the archive is truncated.
    truncated: bool,
}

impl<R: BufRead> TarStream<R> {
    pub(crate) fn new(inner: R, max_extension: u64) -> Self {
        TarStream {
            inner,
            remaining: 0,
            padding: 0,
            max_extension,
            truncated: false,
        }
    }

    /// True once a body read found the archive truncated (so a visitor's
    /// failure while reading it is the archive's fault).
    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }

    /// The next member, or `None` at the end of the archive (an all-zero
    /// block, or the end of the stream at a header boundary).
    pub(crate) fn next_member(&mut self) -> Result<Option<Member>, StreamError> {
        self.skip_rest()?;
        let (mut long_name, mut long_link, mut pax) = (None, None, None);
        let mut pending = false;
        loop {
            let Some(header) = self.read_header()? else {
                if pending {
                    return Err(StreamError::Corrupt(
                        "extension headers with no member after them".into(),
                    ));
                }
                return Ok(None);
            };
            let size = header
                .entry_size()
                .map_err(|e| StreamError::Corrupt(format!("header size field: {e}")))?;
            let Some(kind) = Extension::of(&header) else {
                let size = match pax.as_deref().and_then(|p| pax_value(p, PAX_SIZE)) {
                    Some(value) => std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| StreamError::Corrupt("PAX size is not a number".into()))?,
                    None => size,
                };
                self.start_body(size)?;
                return Ok(Some(Member {
                    header,
                    size,
                    long_name,
                    long_link,
                    pax,
                }));
            };
            if size > self.max_extension {
                return Err(StreamError::ExtensionTooLarge {
                    kind,
                    header_name: String::from_utf8_lossy(&header.path_bytes()).into_owned(),
                    size,
                    limit: self.max_extension,
                });
            }
            self.start_body(size)?;
            let slot = match kind {
                Extension::PaxGlobal => {
                    self.skip_rest()?;
                    continue;
                }
                Extension::Pax => &mut pax,
                Extension::GnuLongName => &mut long_name,
                Extension::GnuLongLink => &mut long_link,
            };
            if slot.is_some() {
                return Err(StreamError::Corrupt(format!(
                    "two {} records for one member",
                    kind.describe()
                )));
            }
            let mut body = Vec::with_capacity(size as usize);
            let read = self.body().read_to_end(&mut body);
            if self.truncated {
                return Err(StreamError::Corrupt(format!(
                    "truncated in a {}",
                    kind.describe()
                )));
            }
            read?;
            self.skip_rest()?;
            *slot = Some(body);
            pending = true;
        }
    }

    /// The current member's body.
    pub(crate) fn body(&mut self) -> Body<'_, R> {
        Body { stream: self }
    }

    /// Skips what is left of the current member's body and its padding.
    pub(crate) fn skip_rest(&mut self) -> Result<(), StreamError> {
        let mut left = self.remaining + self.padding;
        while left > 0 {
            let buf = match self.inner.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if buf.is_empty() {
                self.truncated = true;
                return Err(StreamError::Corrupt("truncated in a member's data".into()));
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            self.inner.consume(n);
            left -= n as u64;
        }
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }

    /// Reads what follows the end of the archive to the end of the stream
    /// and drops it, so that a compressed layer's own checks (the gzip
    /// trailer's CRC-32 and size, a zstd frame's checksum, no garbage after
    /// the last member) run: a tar reader stops at the first zero block,
    /// before the decompressor has reached them.
    pub(crate) fn read_past_end(&mut self) -> io::Result<()> {
        loop {
            let n = match self.inner.fill_buf() {
                Ok([]) => return Ok(()),
                Ok(buf) => buf.len(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.inner.consume(n);
        }
    }

    fn start_body(&mut self, size: u64) -> Result<(), StreamError> {
        let padded = size
            .checked_next_multiple_of(BLOCK)
            .ok_or_else(|| StreamError::Corrupt("member size overflows".into()))?;
        self.remaining = size;
        self.padding = padded - size;
        Ok(())
    }

    fn read_header(&mut self) -> Result<Option<tar::Header>, StreamError> {
        let mut header = tar::Header::new_old();
        let block = header.as_mut_bytes();
        let mut got = 0;
        while got < block.len() {
            match self.inner.read(&mut block[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        match got {
            0 => return Ok(None),
            n if n < block.len() => {
                return Err(StreamError::Corrupt(format!(
                    "truncated in a header ({n} of 512 bytes)"
                )))
            }
            _ => {}
        }
        if block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        // POSIX ustar: the checksum is the byte sum of the header with the
        // checksum field itself read as eight spaces.
        let sum: u32 = block[..148]
            .iter()
            .chain(&block[156..])
            .map(|&b| u32::from(b))
            .sum::<u32>()
            + 8 * u32::from(b' ');
        let stored = header
            .cksum()
            .map_err(|e| StreamError::Corrupt(format!("header checksum field: {e}")))?;
        if sum != stored {
            return Err(StreamError::Corrupt(
                "archive header checksum mismatch".into(),
            ));
        }
        Ok(Some(header))
    }
}

/// The body of the current member; ends at its size, and fails (marking the
/// stream truncated) if the archive ends first.
pub(crate) struct Body<'s, R> {
    stream: &'s mut TarStream<R>,
}

impl<R: BufRead> BufRead for Body<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let s = &mut *self.stream;
        if s.remaining == 0 {
            return Ok(&[]);
        }
        let buf = s.inner.fill_buf()?;
        if buf.is_empty() {
            s.truncated = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive truncated in a member's data",
            ));
        }
        let n = buf
            .len()
            .min(usize::try_from(s.remaining).unwrap_or(usize::MAX));
        Ok(&buf[..n])
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(usize::try_from(self.stream.remaining).unwrap_or(usize::MAX));
        self.stream.inner.consume(n);
        self.stream.remaining -= n as u64;
    }
}

impl<R: SpliceRead> EntryBody for Body<'_, R> {
    fn write_to(&mut self, to: &mut File) -> io::Result<()> {
        loop {
            let remaining = self.stream.remaining;
            if remaining == 0 {
                return Ok(());
            }
            if let Some(n) = self.stream.inner.splice_to(to.as_fd(), remaining)? {
                self.stream.remaining = remaining.saturating_sub(n);
                continue;
            }
            let buf = match self.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let n = buf.len();
            to.write_all(buf)?;
            self.consume(n);
        }
    }
}

impl<R: BufRead> Read for Body<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let got = self.fill_buf()?;
        let n = got.len().min(buf.len());
        buf[..n].copy_from_slice(&got[..n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, value: &[u8]) -> Vec<u8> {
        let body = [key.as_bytes(), b"=", value, b"\n"].concat();
        let mut len = body.len() + 2;
        while len.to_string().len() + 1 + body.len() != len {
            len += 1;
        }
        [format!("{len} ").into_bytes(), body].concat()
    }

    #[test]
    fn pax_values_may_hold_newlines() {
        let data = [record("SCHILY.xattr.user.b", b"a\nb"), record("path", b"x")].concat();
        let got: Vec<_> = PaxRecords { data: &data }
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            got,
            vec![
                (&b"SCHILY.xattr.user.b"[..], &b"a\nb"[..]),
                (&b"path"[..], &b"x"[..])
            ]
        );
    }

    #[test]
    fn malformed_pax_records_are_errors() {
        for bad in [
            &b"x path=a\n"[..],
            b"99 path=a\n",
            b"8 path=a\n",
            b"8 patha\n",
        ] {
            let got: Vec<_> = PaxRecords { data: bad }.collect();
            assert!(got.iter().any(|r| r.is_err()), "{bad:?} parsed: {got:?}");
        }
    }

    #[test]
    fn a_later_record_of_the_same_key_wins() {
        let data = [record("path", b"a"), record("path", b"b")].concat();
        assert_eq!(pax_value(&data, b"path"), Some(&b"b"[..]));
    }

    fn ustar(name: &str, ty: tar::EntryType, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(ty);
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn an_oversized_extension_is_refused_at_its_header() {
        // The header claims 1 GiB; only the header is there. Reading the body
        // would fail as truncated, so the size error proves it was not read.
        let data = ustar("././@PaxHeader", tar::EntryType::XHeader, 1 << 30);
        let mut s = TarStream::new(&data[..], 1 << 20);
        match s.next_member() {
            Err(StreamError::ExtensionTooLarge { kind, size, .. }) => {
                assert_eq!((kind, size), (Extension::Pax, 1 << 30));
            }
            other => panic!(
                "not refused at the header: {:?}",
                other.map(|m| m.is_some())
            ),
        }
    }

    #[test]
    fn pax_size_overrides_the_header_size() {
        let pax = record("size", b"3");
        let mut data = ustar("p", tar::EntryType::XHeader, pax.len() as u64);
        data.extend(&pax);
        data.resize(data.len().next_multiple_of(512), 0);
        data.extend(ustar("f", tar::EntryType::Regular, 0));
        data.extend(b"abc");
        data.resize(data.len().next_multiple_of(512), 0);
        data.extend(ustar("g", tar::EntryType::Regular, 0));
        let mut s = TarStream::new(&data[..], 1 << 20);
        let m = s.next_member().unwrap().unwrap();
        assert_eq!((m.path_bytes().as_ref(), m.size), (&b"f"[..], 3));
        let mut body = Vec::new();
        s.body().read_to_end(&mut body).unwrap();
        assert_eq!(body, b"abc");
        let next = s.next_member().unwrap().unwrap();
        assert_eq!(next.path_bytes().as_ref(), b"g");
        assert!(s.next_member().unwrap().is_none());
    }

    #[test]
    fn a_truncated_body_marks_the_stream() {
        let mut data = ustar("f", tar::EntryType::Regular, 100);
        data.extend(b"short");
        let mut s = TarStream::new(&data[..], 1 << 20);
        s.next_member().unwrap().unwrap();
        assert!(s.body().read_to_end(&mut Vec::new()).is_err());
        assert!(s.truncated());
    }
}
