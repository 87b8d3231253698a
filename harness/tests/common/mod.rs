//! Helpers shared by the integration tests.

use std::io::{self, Read, Write};

use flate2::write::GzEncoder;

/// A gzip stream: `head`, then `size` zero bytes, compressed on the fly as
/// it is read; `fed` counts the inflated bytes a reader pulled through.
pub struct Gzipped {
    encoder: GzEncoder<Vec<u8>>,
    left: u64,
    pub fed: u64,
    finished: bool,
}

impl Gzipped {
    /// `level` 1 for the library tests (so `fed` is close to what was
    /// inflated: read-ahead of compressed bytes pulls more at higher levels).
    pub fn new(head: &[u8], size: u64, level: u32) -> Self {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        encoder.write_all(head).unwrap();
        Gzipped {
            encoder,
            left: size,
            fed: head.len() as u64,
            finished: false,
        }
    }
}

impl Read for Gzipped {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let zeros = [0u8; 64 * 1024];
        while self.encoder.get_ref().is_empty() && !self.finished {
            if self.left == 0 {
                self.encoder.try_finish()?;
                self.finished = true;
                break;
            }
            let n = self.left.min(zeros.len() as u64) as usize;
            self.encoder.write_all(&zeros[..n])?;
            self.left -= n as u64;
            self.fed += n as u64;
        }
        let out = self.encoder.get_mut();
        let n = out.len().min(buf.len());
        buf[..n].copy_from_slice(&out[..n]);
        out.drain(..n);
        Ok(n)
    }
}

impl overlayer::layer::LayerInput for Gzipped {}
