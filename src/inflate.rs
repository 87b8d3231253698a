//! Inflating a compressed layer on a thread of its own, in chunks handed
//! to the reader and back for reuse, at most a bounded number ahead; and
//! the next layer of a stack inflating while the one before it is read.

use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::BorrowedFd;

use crate::gzip;
use crate::layer::LayerInput;
use crate::source::{self, read_via_buf, SpliceRead};

/// The compression of a layer, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &gzip::MAGIC;
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
/// The inflating thread's name (in `perf` and `top -H`).
const INFLATER_THREAD: &str = "inflate";
/// Chunks in flight: the inflater runs at most this far ahead (4 MiB).
pub(crate) const CHUNKS_AHEAD: usize = 16;
/// Chunks a stack's next layer inflates ahead while the one before it is
/// read (16 MiB): enough for most layers above a base to be inflated by the
/// time they are read.
pub(crate) const CHUNKS_READ_AHEAD: usize = 64;
/// Read chunks handed back for reuse: a fresh 256 KiB buffer is a fresh
/// mapping, faulted in and zeroed page by page.
const CHUNKS_SPARE: usize = 2;

/// What an inflating thread hands to the reader: a chunk and how much of
/// it is inflated data (a chunk stays at its full length, so a reused one
/// is not zeroed again), or the trailer of a gzip member, checked by the
/// reader against the data it was handed.
enum Piece {
    Data(Vec<u8>, usize),
    Trailer(gzip::Trailer),
}

type Pieces = std::sync::mpsc::Receiver<io::Result<Piece>>;
type PieceSender = std::sync::mpsc::SyncSender<io::Result<Piece>>;

/// The reading end of an inflating thread; chunks are read in place
/// (`BufRead`), and handed back when read.
pub(crate) struct Inflated {
    rx: Pieces,
    spare: std::sync::mpsc::SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    len: usize,
    pos: usize,
    /// For gzip, the CRC-32 of the current member's data so far: taken
    /// here, on the reader's thread, as inflating is the slower half.
    crc: Option<flate2::Crc>,
}

impl Inflated {
    /// Starts inflating `buffered`, compressed as `compression` says, on a
    /// thread of `scope`; dropping the result stops the thread.
    pub(crate) fn start<'scope, B: BufRead + Send + 'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        buffered: B,
        compression: Compression,
        ahead: usize,
    ) -> Inflated {
        let (tx, rx) = std::sync::mpsc::sync_channel(ahead);
        let (spare, spare_rx) = std::sync::mpsc::sync_channel(CHUNKS_SPARE);
        let chunks = Chunks {
            spare: spare_rx,
            fresh: FIRST_CHUNK,
        };
        // Named, so that a profile tells the inflater from the writer.
        let spawned = std::thread::Builder::new()
            .name(INFLATER_THREAD.into())
            .spawn_scoped(scope, move || {
                let sent = if compression == Compression::Gzip {
                    inflate_gzip(buffered, &tx, chunks)
                } else {
                    decompress_buffered(buffered).and_then(|dec| inflate_into(dec, &tx, chunks))
                };
                if let Err(e) = sent {
                    let _ = tx.send(Err(e));
                }
            });
        if let Err(e) = spawned {
            return Inflated::failed(e);
        }
        let crc = (compression == Compression::Gzip).then(flate2::Crc::new);
        Inflated::reading(rx, spare, crc)
    }

    fn reading(
        rx: Pieces,
        spare: std::sync::mpsc::SyncSender<Vec<u8>>,
        crc: Option<flate2::Crc>,
    ) -> Inflated {
        Inflated {
            rx,
            spare,
            chunk: Vec::new(),
            len: 0,
            pos: 0,
            crc,
        }
    }

    /// A reading end that yields `error`.
    fn failed(error: io::Error) -> Inflated {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (spare, _) = std::sync::mpsc::sync_channel(0);
        let _ = tx.send(Err(error));
        Inflated::reading(rx, spare, None)
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
            Some(file) => Inflated::start(scope, file_buffer(file), Compression::Gzip, ahead),
            None => Inflated::failed(io::Error::other(
                "the layer input stopped being a regular file",
            )),
        };
        Ready(ReadyKind::Inflating(inflated))
    }
}

impl BufRead for Inflated {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.len {
            match self.rx.recv() {
                Ok(Ok(Piece::Data(chunk, len))) => {
                    if let Some(crc) = &mut self.crc {
                        crc.update(&chunk[..len]);
                    }
                    let read = std::mem::replace(&mut self.chunk, chunk);
                    if read.len() == CHUNK {
                        // Full pool or a finished inflater: the chunk is freed.
                        let _ = self.spare.try_send(read);
                    }
                    self.len = len;
                    self.pos = 0;
                }
                Ok(Ok(Piece::Trailer(trailer))) => {
                    let crc = self.crc.get_or_insert_with(flate2::Crc::new);
                    trailer.check(crc)?;
                    *crc = flate2::Crc::new();
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(&[]),
            }
        }
        Ok(&self.chunk[self.pos..self.len])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.len);
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

/// The chunks an inflater fills: handed back by the reader, or fresh ones
/// that start small and double, so that a small layer's few KiB do not
/// cost a zeroed 256 KiB mapping.
struct Chunks {
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    fresh: usize,
}

impl Chunks {
    fn next(&mut self) -> Vec<u8> {
        self.spare.try_recv().unwrap_or_else(|_| {
            let len = self.fresh;
            self.fresh = (self.fresh * 2).min(CHUNK);
            vec![0; len]
        })
    }
}

/// The reader hung up: the inflater stops.
struct HungUp;

/// Fills chunks from `dec` and sends them until it ends (`Ok`), or the
/// reader hangs up.
fn send_chunks(
    dec: &mut dyn Read,
    tx: &PieceSender,
    chunks: &mut Chunks,
) -> io::Result<Result<(), HungUp>> {
    loop {
        let mut chunk = chunks.next();
        let n = loop {
            match dec.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                read => break read?,
            }
        };
        if n == 0 {
            return Ok(Ok(()));
        }
        if tx.send(Ok(Piece::Data(chunk, n))).is_err() {
            return Ok(Err(HungUp));
        }
    }
}

/// Inflates `dec` (zstd) into `tx` until it ends, fails, or the reader
/// hangs up.
fn inflate_into(
    mut dec: Box<dyn Read + '_>,
    tx: &PieceSender,
    mut chunks: Chunks,
) -> io::Result<()> {
    send_chunks(&mut dec, tx, &mut chunks).map(|_| ())
}

/// Inflates the gzip members of `input` (RFC 1952) into `tx`, each one's
/// data then its trailer, until the stream ends, fails, or the reader
/// hangs up. Garbage after the last member is an error, as in Go's
/// compress/gzip (and so in containerd and Docker).
fn inflate_gzip<B: BufRead>(mut input: B, tx: &PieceSender, mut chunks: Chunks) -> io::Result<()> {
    let mut first = true;
    loop {
        gzip::read_header(&mut input, first)?;
        first = false;
        let mut dec = flate2::bufread::DeflateDecoder::new(input);
        if send_chunks(&mut dec, tx, &mut chunks)?.is_err() {
            return Ok(());
        }
        input = dec.into_inner();
        let trailer = gzip::read_trailer(&mut input)?;
        if tx.send(Ok(Piece::Trailer(trailer))).is_err() || gzip::at_end(&mut input)? {
            return Ok(());
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
