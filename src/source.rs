//! Where a layer's bytes come from, and how an entry's body reaches its
//! file: through a buffer in user space, or, for a plain layer in a regular
//! file, file to file in the kernel.
//!
//! Writing a body from a read buffer copies every byte twice (page cache to
//! the buffer, buffer to the new file's pages). `copy_file_range(2)` copies
//! once; on a tmpfs the first copy was about a tenth of `apply`'s CPU time.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek};
use std::os::fd::{AsFd, BorrowedFd};

use crate::sys;

/// A layer to read. Any `Read + Send` can be one; a regular [`File`] also
/// lets plain (uncompressed) layers skip the copy through user space.
pub trait LayerInput: Read + Send {
    /// The regular file behind this reader, if it is one.
    fn regular_file(&self) -> Option<&File> {
        None
    }
}

impl LayerInput for File {
    fn regular_file(&self) -> Option<&File> {
        let regular = self.metadata().is_ok_and(|m| m.file_type().is_file());
        regular.then_some(self)
    }
}

impl<R: LayerInput + ?Sized> LayerInput for &mut R {
    fn regular_file(&self) -> Option<&File> {
        (**self).regular_file()
    }
}

impl LayerInput for &[u8] {}
impl<T: AsRef<[u8]> + Send> LayerInput for io::Cursor<T> {}
impl<R: Read + Send> LayerInput for BufReader<R> {}
impl LayerInput for Box<dyn Read + Send + '_> {}
impl LayerInput for io::Stdin {}

/// A buffered reader that can also hand the bytes after its buffer to a
/// file in the kernel.
pub(crate) trait SpliceRead: BufRead {
    /// Copies up to `len` (at least one) of the stream's next bytes to `to`,
    /// if nothing is buffered and the kernel can: `Ok(Some(n))` copied
    /// `n > 0` bytes; `Ok(None)` means read them through `fill_buf` instead
    /// (which also finds the end of the stream).
    fn splice_to(&mut self, to: BorrowedFd<'_>, len: u64) -> io::Result<Option<u64>>;
}

impl<R: Read> SpliceRead for BufReader<R> {
    fn splice_to(&mut self, _: BorrowedFd<'_>, _: u64) -> io::Result<Option<u64>> {
        Ok(None)
    }
}

/// A body shorter than this is read through the buffer: one `pread` of the
/// buffer serves it and the headers around it, where a splice per body
/// would be a syscall more.
const SPLICE_MIN: u64 = 64 * 1024;
/// At most this much per `copy_file_range`, so cancellation and the byte
/// budget are looked at between calls.
const SPLICE_MAX: u64 = 16 * 1024 * 1024;
/// Read size: small enough that most of a large body goes file to file.
const FILE_BUF: usize = 64 * 1024;

/// A regular file read with `pread` from its own offset (the file's
/// position when reading started), so a body past the buffer can go file
/// to file with `copy_file_range` from the same offset.
pub(crate) struct FileReader<'f> {
    file: &'f File,
    /// File offset of the end of the buffered bytes.
    offset: u64,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
    /// The kernel refused a splice once: every later body is read.
    no_splice: bool,
}

impl<'f> FileReader<'f> {
    /// Reads `file` from its current position.
    pub(crate) fn new(mut file: &'f File) -> io::Result<Self> {
        let offset = file.stream_position()?;
        Ok(FileReader {
            file,
            offset,
            buf: vec![0; FILE_BUF].into_boxed_slice(),
            pos: 0,
            filled: 0,
            no_splice: false,
        })
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_via_buf(self, buf)
    }
}

/// `Read::read` for a `BufRead`: copies what is buffered.
pub(crate) fn read_via_buf<B: BufRead + ?Sized>(from: &mut B, buf: &mut [u8]) -> io::Result<usize> {
    let got = from.fill_buf()?;
    let n = got.len().min(buf.len());
    buf[..n].copy_from_slice(&got[..n]);
    from.consume(n);
    Ok(n)
}

/// Reads the first bytes at `file`'s position into `buf`, leaving the
/// position where it is; fewer only at the end of the file.
pub(crate) fn peek(mut file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let offset = file.stream_position()?;
    let mut got = 0;
    while got < buf.len() {
        match sys::pread(file.as_fd(), &mut buf[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

impl BufRead for FileReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.filled {
            let n = sys::pread(self.file.as_fd(), &mut self.buf, self.offset)?;
            self.offset += n as u64;
            self.pos = 0;
            self.filled = n;
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.filled);
    }
}

impl SpliceRead for FileReader<'_> {
    fn splice_to(&mut self, to: BorrowedFd<'_>, len: u64) -> io::Result<Option<u64>> {
        if self.no_splice || self.pos < self.filled || len < SPLICE_MIN {
            return Ok(None);
        }
        let len = len.min(SPLICE_MAX) as usize;
        match sys::copy_range(self.file.as_fd(), &mut self.offset, to, len)? {
            Some(n) if n > 0 => Ok(Some(n as u64)),
            // Nothing copied: the end of the file, or a file whose size the
            // kernel does not know (procfs-like). `pread` tells which.
            _ => {
                self.no_splice = true;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        f
    }

    #[test]
    fn reads_from_the_files_position_then_splices_past_the_buffer() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut src = file_with(&data);
        src.seek(io::SeekFrom::Start(1000)).unwrap();
        let mut r = FileReader::new(&src).unwrap();
        let mut head = vec![0; 100];
        r.read_exact(&mut head).unwrap();
        assert_eq!(head, data[1000..1100]);
        let mut out = tempfile::tempfile().unwrap();
        // Buffered bytes are never skipped by a splice.
        assert_eq!(r.splice_to(out.as_fd(), 200_000).unwrap(), None);
        let rest = r.fill_buf().unwrap().len();
        out.write_all(&data[1100..1100 + rest]).unwrap();
        r.consume(rest);
        let mut copied = 0u64;
        while copied < 200_000 {
            match r.splice_to(out.as_fd(), 200_000 - copied).unwrap() {
                Some(n) => copied += n,
                None => panic!("no splice from a regular file to a regular file"),
            }
        }
        let end = 1100 + rest + 200_000;
        let mut tail = Vec::new();
        r.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, data[end..]);
        out.rewind().unwrap();
        let mut written = Vec::new();
        out.read_to_end(&mut written).unwrap();
        assert_eq!(written, data[1100..end]);
    }

    #[test]
    fn at_the_end_of_the_file_the_buffer_reports_it() {
        let src = file_with(&[7; 10]);
        let mut r = FileReader::new(&src).unwrap();
        let n = r.fill_buf().unwrap().len();
        r.consume(n);
        let out = tempfile::tempfile().unwrap();
        assert_eq!(r.splice_to(out.as_fd(), SPLICE_MIN).unwrap(), None);
        assert!(r.fill_buf().unwrap().is_empty());
    }

    #[test]
    fn peeking_reads_at_the_position_and_leaves_it() {
        let mut src = file_with(b"0123456789");
        src.seek(io::SeekFrom::Start(7)).unwrap();
        let mut head = [0; 4];
        assert_eq!(peek(&src, &mut head).unwrap(), 3);
        assert_eq!(&head[..3], b"789");
        assert_eq!(src.stream_position().unwrap(), 7);
    }

    #[test]
    fn only_regular_files_offer_their_file() {
        assert!(file_with(b"x").regular_file().is_some());
        let dir = File::open(std::env::temp_dir()).unwrap();
        assert!(dir.regular_file().is_none());
        assert!((&b"x"[..]).regular_file().is_none());
    }
}
