//! Moving bytes in bulk: raw import and export, image-to-image copy. Work is
//! cut into chunks (one object each) handled by a few worker threads, so
//! reads and writes overlap; all-zero chunks are never written (thin).

use crate::error::{Error, Result};
use crate::image::{is_zero, Image};
use crate::Progress;
use parking_lot::Mutex;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Worker threads for bulk transfers.
pub const WORKERS: usize = 4;

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Like [`parallel_chunks`], giving each worker one reusable buffer of
/// `buf_len` bytes (fresh multi-MiB allocations per chunk cost page faults).
fn parallel_chunks_buf(
    n: u64,
    buf_len: usize,
    f: impl Fn(u64, &mut [u8]) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicU64::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(n.max(1) as usize) {
            s.spawn(|| {
                let mut buf = vec![0u8; buf_len];
                loop {
                    if failed.lock().is_some() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    if let Err(e) = f(i, &mut buf) {
                        failed.lock().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Runs `f(chunk_index)` for every chunk in `0..n` on [`WORKERS`] threads,
/// stopping at the first error.
fn parallel_chunks(n: u64, f: impl Fn(u64) -> Result<()> + Sync) -> Result<()> {
    let next = AtomicU64::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(n.max(1) as usize) {
            s.spawn(|| loop {
                if failed.lock().is_some() {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                if let Err(e) = f(i) {
                    failed.lock().get_or_insert(e);
                    return;
                }
            });
        }
    });
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Copies a raw file (or block device) into a freshly created image whose
/// size is at least the file's. Zero chunks are skipped: the image is new,
/// so they already read as zero.
pub fn import_file(file: &File, len: u64, image: &Image, progress: &dyn Progress) -> Result<()> {
    let chunk = image.object_size().max(1 << 20);
    let n = len.div_ceil(chunk);
    progress.start("import", len);
    parallel_chunks_buf(n, chunk as usize, |i, buf| {
        let off = i * chunk;
        let size = chunk.min(len - off) as usize;
        let buf = &mut buf[..size];
        file.read_exact_at(buf, off)
            .map_err(io_err(format!("reading the source at offset {off}")))?;
        if !is_zero(buf) {
            image.write_streaming(off, buf)?;
        }
        progress.inc(size as u64);
        Ok(())
    })?;
    image.flush()?;
    progress.finish();
    Ok(())
}

/// Streams raw bytes of unknown length (stdin) into a fresh image, growing
/// it as data arrives. Returns the number of bytes read.
pub fn import_stream(mut input: impl Read, image: &Image, progress: &dyn Progress) -> Result<u64> {
    let chunk = image.object_size().max(1 << 20) as usize;
    progress.start("import", 0);
    let mut total = 0u64;
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(WORKERS * 2);
    let rx = Mutex::new(rx);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                let msg = rx.lock().recv();
                let Ok((off, buf)) = msg else { return };
                if failed.lock().is_some() {
                    continue;
                }
                if let Err(e) = image.write_streaming(off, &buf) {
                    failed.lock().get_or_insert(e);
                }
                progress.inc(buf.len() as u64);
            });
        }
        let result = (|| -> Result<()> {
            loop {
                let mut buf = vec![0u8; chunk];
                let mut filled = 0;
                while filled < chunk {
                    match input.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(k) => filled += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(io_err("reading standard input".into())(e)),
                    }
                }
                if filled == 0 {
                    return Ok(());
                }
                buf.truncate(filled);
                let off = total;
                total += filled as u64;
                image.grow_to(total)?;
                if failed.lock().is_some() {
                    return Ok(());
                }
                if !is_zero(&buf) && tx.send((off, buf)).is_err() {
                    return Ok(());
                }
                if filled < chunk {
                    return Ok(());
                }
            }
        })();
        drop(tx);
        result
    })?;
    if let Some(e) = failed.into_inner() {
        return Err(e);
    }
    image.flush()?;
    progress.finish();
    Ok(total)
}

/// Data extents `(offset, length)` of what `image` reads, including what it
/// reads through to a parent, merged and sorted.
pub fn data_extents(image: &Image) -> Result<Vec<(u64, u64)>> {
    crate::report::data_extents(image)
}

/// Writes an image (or snapshot) to a file, sparse: zero ranges are not
/// written, the file is sized at the end. Chunks are read by worker threads
/// a window ahead and written in file order by one thread: the destination
/// sees one sequential stream, which the page cache and filesystems handle
/// far better than scattered concurrent writes.
pub fn export_file(image: &Image, file: &File, progress: &dyn Progress) -> Result<()> {
    let size = image.size();
    let extents = data_extents(image)?;
    let chunks = split(&extents, image.object_size().max(1 << 20));
    progress.start("export", chunks.iter().map(|c| c.1).sum());
    file.set_len(0)
        .map_err(io_err("truncating the destination".into()))?;
    // Buffers are allocated once and reused: a fresh multi-MiB allocation
    // per chunk costs page faults and mmap churn that dominated the run.
    let chunk_max = image.object_size().max(1 << 20) as usize;
    let bufs: Vec<Mutex<Vec<u8>>> = (0..WORKERS * 2)
        .map(|_| Mutex::new(vec![0u8; chunk_max]))
        .collect();
    for window in chunks.chunks(WORKERS * 2) {
        parallel_chunks(window.len() as u64, |k| {
            let (off, len) = window[k as usize];
            let mut buf = bufs[k as usize].lock();
            image.read_at(off, &mut buf[..len as usize])
        })?;
        for (k, &(off, len)) in window.iter().enumerate() {
            let buf = bufs[k].lock();
            let data = &buf[..len as usize];
            if !is_zero(data) {
                file.write_all_at(data, off)
                    .map_err(io_err(format!("writing the destination at offset {off}")))?;
            }
            progress.inc(len);
        }
    }
    file.set_len(size)
        .map_err(io_err("sizing the destination".into()))?;
    file.sync_all()
        .map_err(io_err("syncing the destination".into()))?;
    progress.finish();
    Ok(())
}

/// Writes an image (or snapshot) to a stream (stdout), every byte in order.
/// Reads run ahead on worker threads.
pub fn export_stream(image: &Image, mut out: impl Write, progress: &dyn Progress) -> Result<()> {
    let size = image.size();
    let chunk = image.object_size().max(1 << 20);
    let n = size.div_ceil(chunk);
    progress.start("export", size);
    let window = (WORKERS * 2) as u64;
    let mut i = 0u64;
    while i < n {
        let batch: Vec<u64> = (i..(i + window).min(n)).collect();
        let bufs: Vec<Mutex<Vec<u8>>> = batch.iter().map(|_| Mutex::new(Vec::new())).collect();
        parallel_chunks(batch.len() as u64, |k| {
            let off = batch[k as usize] * chunk;
            let mut buf = vec![0u8; chunk.min(size - off) as usize];
            image.read_at(off, &mut buf)?;
            *bufs[k as usize].lock() = buf;
            Ok(())
        })?;
        for b in bufs {
            let b = b.into_inner();
            out.write_all(&b)
                .map_err(io_err("writing the output".into()))?;
            progress.inc(b.len() as u64);
        }
        i += window;
    }
    out.flush().map_err(io_err("flushing the output".into()))?;
    progress.finish();
    Ok(())
}

/// Copies every data extent of `from` into `to` (same size or larger, fresh).
pub fn copy_image(from: &Image, to: &Image, progress: &dyn Progress) -> Result<()> {
    let extents = data_extents(from)?;
    let chunks = split(&extents, from.object_size().max(1 << 20));
    progress.start("copy", chunks.iter().map(|c| c.1).sum());
    let chunk_max = from.object_size().max(1 << 20) as usize;
    parallel_chunks_buf(chunks.len() as u64, chunk_max, |i, buf| {
        let (off, len) = chunks[i as usize];
        let buf = &mut buf[..len as usize];
        from.read_at(off, buf)?;
        to.write_streaming(off, buf)?;
        progress.inc(len);
        Ok(())
    })?;
    to.flush()?;
    progress.finish();
    Ok(())
}

/// Cuts extents into pieces of at most `max` bytes aligned to `max`.
fn split(extents: &[(u64, u64)], max: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(off, len) in extents {
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let next = ((pos / max) + 1) * max;
            let e = next.min(end);
            out.push((pos, e - pos));
            pos = e;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn split_aligns() {
        assert_eq!(
            super::split(&[(100, 300)], 128),
            vec![(100, 28), (128, 128), (256, 128), (384, 16)]
        );
    }
}
