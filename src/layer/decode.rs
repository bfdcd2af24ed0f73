//! A layer blob to its tar stream: the compressed bytes hashed and counted as
//! they pass, the compression sniffed from the magic bytes (as containerd's
//! `compression.DecompressStream` does: gzip, zstd or none), the decompressed
//! bytes hashed into the diff ID and handed on in chunks over a bounded
//! channel, so decoding on one thread overlaps writing files on another.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use sha2::{Digest, Sha256};

use super::{Budget, LayerError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What a finished decode saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub compression: Compression,
    /// `sha256:<hex>` of the compressed bytes, and how many there were.
    pub digest: String,
    pub size: u64,
    /// `sha256:<hex>` of the decompressed tar.
    pub diff_id: String,
    pub diff_size: u64,
}

/// Counts and (unless its source is verified already) hashes what is read
/// through it.
struct Hashing<R> {
    inner: R,
    hash: Option<Sha256>,
    n: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hash {
            h.update(&buf[..n]);
        }
        self.n += n as u64;
        Ok(n)
    }
}

fn hex(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

const CHUNK: usize = 1 << 20;

/// Decode the blob `input` to its end, sending the tar bytes to `out` (the
/// channel closes when this returns) in buffers taken from `pool`. Checks
/// the compressed size, and with [`Check::Digest`] the digest, against
/// `digest`/`size`; the caller checks the diff ID against the config.
pub fn decode(
    input: impl Read,
    blob: Blob<'_>,
    out: SyncSender<Vec<u8>>,
    cancel: &AtomicBool,
    pool: &ChunkPool,
    budget: &Budget,
) -> Result<Decoded, LayerError> {
    let Blob {
        digest,
        size,
        check,
    } = blob;
    let mut compressed = BufReader::with_capacity(
        256 << 10,
        Hashing {
            inner: input,
            hash: (check == Check::Digest).then(Sha256::new),
            n: 0,
        },
    );
    let compression = Compression::sniff(compressed.fill_buf().map_err(LayerError::Read)?);
    let mut diff = Sha256::new();
    let mut diff_size = 0u64;
    {
        let mut reader: Box<dyn Read + '_> = match compression {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut compressed)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(&mut compressed)
                    .map_err(LayerError::Read)?,
            ),
            Compression::None => Box::new(&mut compressed),
        };
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(LayerError::Canceled);
            }
            let mut chunk = pool.take();
            let mut filled = 0;
            // Fill the chunk (decoders return small reads).
            while filled < CHUNK {
                let n = reader
                    .read(&mut chunk[filled..])
                    .map_err(LayerError::Read)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                pool.give(chunk);
                break;
            }
            budget.take(diff_size, filled as u64)?;
            chunk.truncate(filled);
            diff.update(&chunk);
            diff_size += filled as u64;
            if out.send(chunk).is_err() {
                // The applier stopped (it failed or was canceled): its error
                // is the one that counts; keep hashing is pointless.
                return Err(LayerError::Canceled);
            }
        }
    }
    // Whatever follows the compressed stream counts for the digest.
    io::copy(&mut compressed, &mut io::sink()).map_err(LayerError::Read)?;
    let h = compressed.into_inner();
    let n = h.n;
    let got = h.hash.map(hex).unwrap_or_else(|| digest.to_string());
    if n != size {
        return Err(LayerError::Size {
            digest: digest.to_string(),
            got: n,
            want: size,
        });
    }
    if got != digest {
        return Err(LayerError::Digest {
            expected: digest.to_string(),
            actual: got,
        });
    }
    Ok(Decoded {
        compression,
        digest: got,
        size: n,
        diff_id: hex(diff),
        diff_size,
    })
}

/// The blob [`decode`] reads: its digest and size (from the manifest), and
/// what of them it checks.
#[derive(Debug, Clone, Copy)]
pub struct Blob<'a> {
    pub digest: &'a str,
    pub size: u64,
    pub check: Check,
}

/// What [`decode`] checks of the compressed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Hash them and compare with the digest.
    Digest,
    /// Count them only: `input` ends only once its writer checked the digest
    /// (a download spool).
    SizeOnly,
}

/// Chunk buffers the reader hands back for the decoder to fill again, so a
/// layer's tar does not cost an allocation (and its page faults) per MiB.
#[derive(Clone, Default)]
pub struct ChunkPool(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl ChunkPool {
    fn take(&self) -> Vec<u8> {
        match self.0.lock().ok().and_then(|mut p| p.pop()) {
            Some(mut v) => {
                v.resize(CHUNK, 0);
                v
            }
            // calloc: fresh zero pages from the kernel, not zeroed twice.
            None => vec![0; CHUNK],
        }
    }

    fn give(&self, v: Vec<u8>) {
        if v.capacity() >= CHUNK {
            if let Ok(mut p) = self.0.lock() {
                if p.len() < POOL_MAX {
                    p.push(v);
                }
            }
        }
    }
}

const POOL_MAX: usize = 8;

/// The receiving end as a reader (EOF when the decoder is done or gone).
/// Read buffers go back to `pool`.
pub struct DecodedReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    pool: ChunkPool,
}

impl DecodedReader {
    pub fn new(rx: Receiver<Vec<u8>>, pool: ChunkPool) -> Self {
        DecodedReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            pool,
        }
    }
}

impl Drop for DecodedReader {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.cur));
    }
}

impl Read for DecodedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(c) => {
                    let done = std::mem::replace(&mut self.cur, c);
                    self.pool.give(done);
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
