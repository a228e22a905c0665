//! Compressed clusters: zlib (raw deflate) and zstd, with one reusable
//! context per thread so that parallel workers compress and decompress
//! without sharing anything.
//!
//! qemu writes zlib clusters as raw deflate with a 4 KiB window (window
//! bits 12) and reads them with the same window, so vdisk compresses with a
//! 4 KiB window too (a larger window would produce clusters qemu cannot
//! read). zstd clusters are one frame; readers stop once a cluster's worth
//! of output is produced, because the sector-rounded input may run into
//! the next compressed cluster.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use zstd::zstd_safe::{self, CCtx, DCtx, InBuffer, OutBuffer, ResetDirective};

use crate::header::CompressionType;

/// zlib level used by qemu (`Z_DEFAULT_COMPRESSION`).
const ZLIB_LEVEL: u32 = 6;
/// zstd level used by qemu (the library default).
const ZSTD_LEVEL: i32 = 3;

thread_local! {
    static DEFLATE: RefCell<Option<Compress>> = const { RefCell::new(None) };
    static INFLATE: RefCell<Option<Decompress>> = const { RefCell::new(None) };
    static ZSTD_C: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
    static ZSTD_D: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

/// Decompresses `input` until `out` is full. Errors with a reason if the
/// data is not valid or ends before producing `out.len()` bytes.
pub fn decompress(ty: CompressionType, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    match ty {
        CompressionType::Zlib => INFLATE.with(|cell| {
            let mut slot = cell.borrow_mut();
            let d = slot.get_or_insert_with(|| Decompress::new(false));
            d.reset(false);
            let r = d.decompress(input, out, FlushDecompress::Finish);
            let produced = d.total_out() as usize;
            match r {
                Ok(_) if produced == out.len() => Ok(()),
                Ok(_) => Err(format!(
                    "deflate data ends after {produced} bytes, a cluster is {}",
                    out.len()
                )),
                Err(e) => {
                    *slot = None; // never reuse a stream that failed
                    Err(format!("invalid deflate data: {e}"))
                }
            }
        }),
        CompressionType::Zstd => ZSTD_D.with(|cell| {
            let mut slot = cell.borrow_mut();
            let d = slot.get_or_insert_with(DCtx::create);
            if d.reset(ResetDirective::SessionOnly).is_err() {
                *d = DCtx::create();
            }
            let total = out.len();
            let mut output = OutBuffer::around(out);
            let mut input = InBuffer::around(input);
            while output.pos() < total {
                let (in_before, out_before) = (input.pos(), output.pos());
                d.decompress_stream(&mut output, &mut input)
                    .map_err(|c| format!("invalid zstd data: {}", zstd_safe::get_error_name(c)))?;
                if input.pos() == in_before && output.pos() == out_before {
                    return Err(format!(
                        "zstd data ends after {} bytes, a cluster is {total}",
                        output.pos()
                    ));
                }
            }
            Ok(())
        }),
    }
}

/// Compresses `input` into `out` (resized as needed); returns the
/// compressed length if it is below `limit`, else `None` (the caller then
/// stores the cluster uncompressed, as qemu does for anything not smaller
/// than a cluster).
///
/// The output buffer is always large enough for the whole stream, so the
/// compressor always finishes: a zlib-rs 0.6 deflate stream reset after
/// running out of output space can panic on a later input (seen with
/// 512 B and 4 KiB inputs), so a stream is never left unfinished, and a
/// compressor that did not finish is dropped rather than reused.
pub fn compress(
    ty: CompressionType,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Option<usize> {
    let bound = input.len() + input.len() / 64 + 1024;
    if out.len() < bound {
        out.resize(bound, 0);
    }
    let n = match ty {
        CompressionType::Zlib => DEFLATE.with(|cell| {
            let mut slot = cell.borrow_mut();
            let c = slot.get_or_insert_with(|| {
                Compress::new_with_window_bits(Compression::new(ZLIB_LEVEL), false, 12)
            });
            c.reset();
            match c.compress(input, out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => Some(c.total_out() as usize),
                _ => {
                    *slot = None;
                    None
                }
            }
        }),
        CompressionType::Zstd => ZSTD_C.with(|cell| {
            let mut slot = cell.borrow_mut();
            let c = slot.get_or_insert_with(CCtx::create);
            c.compress(&mut out[..], input, ZSTD_LEVEL).ok()
        }),
    }?;
    (n < limit).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_trailing_garbage() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 300) as u8).collect();
        for ty in [CompressionType::Zlib, CompressionType::Zstd] {
            let mut c = Vec::new();
            let n = compress(ty, &data, &mut c, 65536).unwrap();
            assert!(n < 4096, "{ty:?} {n}");
            // The sector-rounded read picks up bytes of the next cluster.
            c[n..n + 300].fill(0xa5);
            let mut out = vec![0u8; 65536];
            decompress(ty, &c[..n + 300], &mut out).unwrap();
            assert_eq!(out, data);
            // Truncated input is an error, not a short cluster.
            assert!(decompress(ty, &c[..n / 2], &mut out).is_err());
            // Garbage is an error.
            assert!(decompress(ty, &[0xff; 64], &mut out).is_err());
        }
    }

    #[test]
    fn incompressible_is_refused() {
        let mut x = 0x1234_5678u32;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for ty in [CompressionType::Zlib, CompressionType::Zstd] {
            let mut c = Vec::new();
            assert_eq!(compress(ty, &data, &mut c, 4096), None);
        }
    }

    /// Regression: zlib-rs panicked ("buf.len() must fit in remaining()")
    /// when a deflate stream that ran out of output was reset and reused.
    #[test]
    fn many_clusters_of_mixed_data_roundtrip() {
        let mut x = 5u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut data = vec![0u8; 3 << 20];
        let mut at = 0;
        while at < data.len() {
            let n = (4096 + (next() % 70000) as usize).min(data.len() - at);
            let kind = next() % 3;
            for (i, b) in data[at..at + n].iter_mut().enumerate() {
                *b = match kind {
                    0 => next() as u8,
                    1 => (i / 100) as u8,
                    _ => b"vdisk qcow2 "[i % 12],
                };
            }
            at += n;
        }
        for ty in [CompressionType::Zlib, CompressionType::Zstd] {
            for cs in [512usize, 4096, 65536] {
                let mut c = Vec::new();
                let mut back = vec![0u8; cs];
                for chunk in data.chunks_exact(cs) {
                    if let Some(n) = compress(ty, chunk, &mut c, cs) {
                        decompress(ty, &c[..n], &mut back).unwrap();
                        assert_eq!(back, chunk);
                    }
                }
            }
        }
    }
}
