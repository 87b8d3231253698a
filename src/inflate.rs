//! Inflating a compressed layer on a thread of its own, in chunks handed
//! to the reader and back for reuse, at most a bounded number ahead; and
//! the next layer of a stack inflating while the one before it is read.

use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::BorrowedFd;

use crate::layer::LayerInput;
use crate::source::{self, read_via_buf, SpliceRead};

/// The compression of a layer, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
pub(crate) const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

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

/// Inflated chunks handed from the inflating thread to the reading one.
pub(crate) const CHUNK: usize = 256 * 1024;
/// The first chunk an inflater makes; each next fresh one is twice as
/// large, up to [`CHUNK`].
const FIRST_CHUNK: usize = 16 * 1024;
/// Chunks in flight: the inflater runs at most this far ahead (4 MiB).
pub(crate) const CHUNKS_AHEAD: usize = 16;
/// Chunks a stack's next layer inflates ahead while the one before it is
/// read (16 MiB): enough for most layers above a base to be inflated by the
/// time they are read.
pub(crate) const CHUNKS_READ_AHEAD: usize = 64;
/// Read chunks handed back for reuse: a fresh 256 KiB buffer is a fresh
/// mapping, faulted in and zeroed page by page.
const CHUNKS_SPARE: usize = 2;

/// The reading end of an inflating thread; chunks are read in place
/// (`BufRead`), and handed back when read.
pub(crate) struct Inflated {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    spare: std::sync::mpsc::SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Inflated {
    /// Starts inflating `buffered` (decompressor by magic) on a thread of
    /// `scope`; dropping the result stops the thread.
    pub(crate) fn start<'scope, B: BufRead + Send + 'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        buffered: B,
        ahead: usize,
    ) -> Inflated {
        let (tx, rx) = std::sync::mpsc::sync_channel(ahead);
        let (spare, spare_rx) = std::sync::mpsc::sync_channel(CHUNKS_SPARE);
        scope.spawn(move || match decompress_buffered(buffered) {
            Ok(dec) => inflate_into(dec, tx, spare_rx),
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        });
        Inflated {
            rx,
            spare,
            chunk: Vec::new(),
            pos: 0,
        }
    }

    /// A reading end that yields `error`.
    fn failed(error: io::Error) -> Inflated {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (spare, _) = std::sync::mpsc::sync_channel(0);
        let _ = tx.send(Err(error));
        Inflated {
            rx,
            spare,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

/// A layer of a stack, ready to read with
/// [`StackReader::read_ready`](crate::layer::StackReader::read_ready): as
/// given, or a compressed regular file already inflating.
pub struct Ready<'a, R>(pub(crate) ReadyKind<'a, R>);

pub(crate) enum ReadyKind<'a, R> {
    Input(&'a mut R),
    Inflating(Inflated),
}

impl<'env, R: LayerInput> Ready<'env, R> {
    /// Starts inflating `layer` if it is a gzip regular file. Other inputs
    /// wait for their turn: a pipe's first read could block, a plain file
    /// is read by the writer itself, and zstd inflates faster than its
    /// entries are written while its decoder may hold a window of up to
    /// 128 MiB (two at once would double that). A layer that cannot be
    /// peeked at is left for `read_layer` to report in its turn.
    pub(crate) fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        layer: &'env mut R,
        ahead: usize,
    ) -> Ready<'env, R> {
        let Some(file) = layer.regular_file() else {
            return Ready(ReadyKind::Input(layer));
        };
        let mut head = [0; ZSTD_MAGIC.len()];
        let gzip = source::peek(file, &mut head)
            .is_ok_and(|n| Compression::detect(&head[..n]) == Compression::Gzip);
        if !gzip {
            return Ready(ReadyKind::Input(layer));
        }
        let layer: &'env R = layer;
        let inflated = match layer.regular_file() {
            Some(file) => Inflated::start(scope, file_buffer(file), ahead),
            None => Inflated::failed(io::Error::other(
                "the layer input stopped being a regular file",
            )),
        };
        Ready(ReadyKind::Inflating(inflated))
    }
}

impl BufRead for Inflated {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    let read = std::mem::replace(&mut self.chunk, chunk);
                    if read.capacity() == CHUNK {
                        // Full pool or a finished inflater: the chunk is freed.
                        let _ = self.spare.try_send(read);
                    }
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(&[]),
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.chunk.len());
    }
}

impl Read for Inflated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_via_buf(self, buf)
    }
}

impl SpliceRead for Inflated {
    fn splice_to(&mut self, _: BorrowedFd<'_>, _: u64) -> io::Result<Option<u64>> {
        Ok(None)
    }
}

/// Inflates `dec` into `tx` until it ends, fails, or the reader hangs up;
/// reuses the chunks the reader hands back on `spare`.
fn inflate_into(
    mut dec: Box<dyn Read + '_>,
    tx: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
) {
    // Fresh chunks start small and double: a small layer's few KiB should
    // not cost a zeroed 256 KiB mapping.
    let mut fresh = FIRST_CHUNK;
    loop {
        let (mut chunk, len) = match spare.try_recv() {
            Ok(chunk) => (chunk, CHUNK),
            Err(_) => {
                let len = fresh;
                fresh = (fresh * 2).min(CHUNK);
                (Vec::with_capacity(len), len)
            }
        };
        chunk.resize(len, 0);
        match dec.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                chunk.truncate(n);
                if tx.send(Ok(chunk)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

/// Wraps `reader` in the decompressor its magic bytes call for.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    decompress_buffered(BufReader::with_capacity(CHUNK, reader))
}

/// [`decompress`] for a reader with a buffer of its own.
fn decompress_buffered<'a, B: BufRead + 'a>(mut buffered: B) -> io::Result<Box<dyn Read + 'a>> {
    let head = buffered.fill_buf()?;
    Ok(match Compression::detect(head) {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
    })
}

/// A buffered reader of a compressed layer in a file, from its position:
/// no larger than what is left of it, as a small layer's buffer would be
/// mapped and faulted in only to hold a few KiB.
pub(crate) fn file_buffer(file: &std::fs::File) -> BufReader<&std::fs::File> {
    let left = file
        .metadata()
        .ok()
        .zip(io::Seek::stream_position(&mut &*file).ok())
        .map_or(CHUNK as u64, |(m, at)| m.len().saturating_sub(at));
    // At least a page, so a file that grows while read still streams.
    BufReader::with_capacity((left as usize).clamp(4096, CHUNK), file)
}
