//! The framing of gzip members (RFC 1952) around flate2's raw inflate, so
//! that the CRC-32 of a member can be taken by whoever reads the inflated
//! bytes: the inflating thread, the slow half of a gzip layer, then only
//! inflates. `inflate::decompress` keeps flate2's own gzip reader for
//! readers without a thread.

use std::io::{self, BufRead, Read};

/// RFC 1952 2.3.1: ID1, ID2.
pub(crate) const MAGIC: [u8; 2] = [0x1f, 0x8b];
/// RFC 1952 2.3.1: CM 8 is deflate, the only method defined.
const METHOD_DEFLATE: u8 = 8;
/// RFC 1952 2.3.1: FLG bits.
const FHCRC: u8 = 1 << 1;
const FEXTRA: u8 = 1 << 2;
const FNAME: u8 = 1 << 3;
const FCOMMENT: u8 = 1 << 4;
/// "A compliant decompressor must give an error indication if any reserved
/// bit is non-zero."
const FRESERVED: u8 = 0xe0;

fn corrupt(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads into `buf` or fails naming `what` was truncated.
fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> io::Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt(format!("truncated in a gzip {what}")),
        _ => e,
    })
}

/// A reader that takes the CRC-32 of what it reads (the header's FHCRC).
struct Summed<'a, R> {
    inner: &'a mut R,
    crc: flate2::Crc,
}

impl<R: BufRead> Summed<'_, R> {
    fn read(&mut self, buf: &mut [u8], what: &str) -> io::Result<()> {
        read_exact_or(self.inner, buf, what)?;
        self.crc.update(buf);
        Ok(())
    }

    /// Skips `len` bytes, without holding them.
    fn skip(&mut self, mut len: u64, what: &str) -> io::Result<()> {
        while len > 0 {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Err(corrupt(format!("truncated in a gzip {what}")));
            }
            let n = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
            self.crc.update(&buf[..n]);
            self.inner.consume(n);
            len -= n as u64;
        }
        Ok(())
    }

    /// Skips a zero-terminated field (FNAME, FCOMMENT), of any length.
    fn skip_zero_terminated(&mut self, what: &str) -> io::Result<()> {
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Err(corrupt(format!("truncated in a gzip {what}")));
            }
            let (n, end) = match buf.iter().position(|&b| b == 0) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            self.crc.update(&buf[..n]);
            self.inner.consume(n);
            if end {
                return Ok(());
            }
        }
    }
}

/// Reads a member's header (RFC 1952 2.3), leaving `r` at its deflate data;
/// `first`: the stream's first member, else one after another's trailer.
pub(crate) fn read_header<R: BufRead>(r: &mut R, first: bool) -> io::Result<()> {
    let mut s = Summed {
        inner: r,
        crc: flate2::Crc::new(),
    };
    let mut fixed = [0; 10];
    let magic = match s.read(&mut fixed[..2], "header") {
        Err(e) if e.kind() != io::ErrorKind::InvalidData => return Err(e),
        read => read.is_ok() && fixed[..2] == MAGIC,
    };
    if !magic {
        return Err(corrupt(if first {
            "not a gzip stream"
        } else {
            "garbage after the last gzip member"
        }));
    }
    s.read(&mut fixed[2..], "header")?;
    if fixed[2] != METHOD_DEFLATE {
        return Err(corrupt(format!(
            "gzip compression method {} is not deflate",
            fixed[2]
        )));
    }
    let flags = fixed[3];
    if flags & FRESERVED != 0 {
        return Err(corrupt(format!(
            "reserved gzip header flags set ({flags:#04x})"
        )));
    }
    if flags & FEXTRA != 0 {
        let mut len = [0; 2];
        s.read(&mut len, "header's extra field")?;
        s.skip(u16::from_le_bytes(len).into(), "header's extra field")?;
    }
    if flags & FNAME != 0 {
        s.skip_zero_terminated("header's file name")?;
    }
    if flags & FCOMMENT != 0 {
        s.skip_zero_terminated("header's comment")?;
    }
    if flags & FHCRC != 0 {
        // The two least significant bytes of the CRC-32 of the header so far.
        let want = (s.crc.sum() & 0xffff) as u16;
        let mut got = [0; 2];
        read_exact_or(s.inner, &mut got, "header")?;
        if u16::from_le_bytes(got) != want {
            return Err(corrupt("the gzip header's CRC-16 does not match"));
        }
    }
    Ok(())
}

/// RFC 1952 2.3.1: CRC32 and ISIZE (the inflated size modulo 2^32), little
/// endian, after a member's deflate data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trailer {
    pub crc: u32,
    pub size: u32,
}

pub(crate) fn read_trailer<R: Read>(r: &mut R) -> io::Result<Trailer> {
    let mut t = [0; 8];
    read_exact_or(r, &mut t, "trailer")?;
    Ok(Trailer {
        crc: u32::from_le_bytes([t[0], t[1], t[2], t[3]]),
        size: u32::from_le_bytes([t[4], t[5], t[6], t[7]]),
    })
}

impl Trailer {
    /// Whether the member's inflated bytes, summed in `crc`, are the ones
    /// the trailer describes.
    pub(crate) fn check(self, crc: &flate2::Crc) -> io::Result<()> {
        if crc.sum() != self.crc {
            return Err(corrupt(format!(
                "the gzip trailer's CRC-32 {:08x} does not match the inflated data's {:08x}",
                self.crc,
                crc.sum()
            )));
        }
        if crc.amount() != self.size {
            return Err(corrupt(format!(
                "the gzip trailer's size {} does not match the {} inflated bytes (mod 2^32)",
                self.size,
                crc.amount()
            )));
        }
        Ok(())
    }
}

/// Whether `r` is at its end (no further member).
pub(crate) fn at_end<R: BufRead>(r: &mut R) -> io::Result<bool> {
    loop {
        match r.fill_buf() {
            Ok(buf) => return Ok(buf.is_empty()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Reads every member of `gz` the way the inflater does.
    fn inflate_all(gz: &[u8]) -> io::Result<Vec<u8>> {
        let mut input = io::BufReader::new(gz);
        let mut out = Vec::new();
        let mut first = true;
        loop {
            read_header(&mut input, first)?;
            first = false;
            let mut dec = flate2::bufread::DeflateDecoder::new(input);
            let mut member = Vec::new();
            dec.read_to_end(&mut member)?;
            input = dec.into_inner();
            let mut crc = flate2::Crc::new();
            crc.update(&member);
            read_trailer(&mut input)?.check(&crc)?;
            out.extend_from_slice(&member);
            if at_end(&mut input)? {
                return Ok(out);
            }
        }
    }

    fn gzip_with(data: &[u8], header: flate2::GzBuilder) -> Vec<u8> {
        let mut enc = header.write(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn members_with_every_header_field_inflate() {
        let full = flate2::GzBuilder::new()
            .extra(&b"xx"[..])
            .filename(&b"layer.tar"[..])
            .comment(&b"a comment"[..]);
        let mut gz = gzip_with(b"first ", full);
        gz.extend(gzip_with(b"second", flate2::GzBuilder::new()));
        assert_eq!(inflate_all(&gz).unwrap(), b"first second");
    }

    #[test]
    fn header_crc16_is_checked() {
        // flate2 writes no FHCRC: add one by hand to a bare header.
        let mut gz = gzip_with(b"data", flate2::GzBuilder::new());
        gz[3] |= FHCRC;
        let mut crc = flate2::Crc::new();
        crc.update(&gz[..10]);
        let sum = (crc.sum() & 0xffff) as u16;
        let mut good = gz[..10].to_vec();
        good.extend(sum.to_le_bytes());
        good.extend(&gz[10..]);
        assert_eq!(inflate_all(&good).unwrap(), b"data");
        let mut bad = good.clone();
        bad[10] ^= 1;
        assert!(inflate_all(&bad)
            .unwrap_err()
            .to_string()
            .contains("CRC-16"));
    }

    #[test]
    fn damage_is_named() {
        let gz = gzip_with(b"some data", flate2::GzBuilder::new());
        let err = |mut bytes: Vec<u8>, edit: &dyn Fn(&mut Vec<u8>)| {
            edit(&mut bytes);
            inflate_all(&bytes).unwrap_err().to_string()
        };
        let at = |i: usize| move |b: &mut Vec<u8>| b[i] ^= 0xff;
        let n = gz.len();
        assert!(err(gz.clone(), &at(n - 8)).contains("CRC-32"));
        assert!(err(gz.clone(), &at(n - 1)).contains("size"));
        assert!(err(gz.clone(), &at(2)).contains("method"));
        assert!(err(gz.clone(), &|b| b[3] |= 0x20).contains("reserved"));
        assert!(err(gz.clone(), &|b| b.truncate(n - 3)).contains("truncated in a gzip trailer"));
        assert!(err(gz.clone(), &|b| b.truncate(5)).contains("truncated in a gzip header"));
        assert!(err(gz.clone(), &|b| b.extend(b"junk")).contains("garbage after"));
        assert!(err(gz.clone(), &|b| b.extend([0; 16])).contains("garbage after"));
        assert!(err(gz.clone(), &|b| b.truncate(n - 8)).contains("trailer"));
    }
}
