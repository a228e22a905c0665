//! A minimal parallel converter over this crate's API, for measuring the
//! reader and writer against `qemu-img convert` (not the product's
//! convert verb, which lives in the CLI).
//!
//! ```text
//! cargo run --release -p vdisk-qcow2 --example qconvert -- SRC DST [-O raw|qcow2] [-c zlib|zstd] [-j N] [--no-sync]
//! ```
//!
//! `-j N` reader threads take 2 MiB chunks in guest order from a shared
//! counter, ask block status, read the data extents (widened to output
//! clusters) into page-aligned buffers, and drop all-zero clusters. Without
//! compression they hand the runs to one writer thread (parallel `pwrite`s
//! to one file contend on the inode lock); with compression they write
//! themselves, so clusters are compressed in parallel.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::time::Instant;

use vdisk_qcow2::{
    is_zero, open, CompressionType, ImageWrite, OpenOptions, Qcow2Writer, RawWriter, Status,
    WriterOptions,
};

const CHUNK: u64 = 2 << 20;

/// A page-aligned buffer (page-aligned destinations make the kernel's
/// copies from and to the page cache markedly cheaper).
struct Buf {
    mem: Vec<u8>,
    skew: usize,
    len: usize,
}

impl Buf {
    fn new(len: usize) -> Buf {
        let mem = vec![0u8; len + 4096];
        let skew = mem.as_ptr().align_offset(4096);
        Buf { mem, skew, len }
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.mem[self.skew..self.skew + self.len]
    }
}

/// A run of non-zero output clusters waiting for the writer.
struct Run {
    buf: Buf,
    from: usize,
    to: usize,
    offset: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut src, mut dst, mut fmt, mut comp, mut jobs) =
        (None, None, "raw".to_string(), None, 2usize);
    let mut durable = true;
    while let Some(a) = args.next() {
        match a.as_str() {
            "-O" => fmt = args.next().ok_or("-O needs a format")?,
            "-c" => {
                comp = Some(match args.next().as_deref() {
                    Some("zstd") => CompressionType::Zstd,
                    _ => CompressionType::Zlib,
                })
            }
            "-j" => jobs = args.next().ok_or("-j needs a number")?.parse()?,
            "--no-sync" => durable = false,
            _ if src.is_none() => src = Some(PathBuf::from(a)),
            _ => dst = Some(PathBuf::from(a)),
        }
    }
    let (src, dst) = (src.ok_or("no source")?, dst.ok_or("no destination")?);
    let start = Instant::now();
    let reader = open(&src, &OpenOptions::default())?;
    let size = reader.size();
    let writer: Box<dyn ImageWrite> = match fmt.as_str() {
        "qcow2" => Box::new(Qcow2Writer::create(
            &dst,
            size,
            &WriterOptions {
                compression: comp,
                durable,
                ..WriterOptions::default()
            },
        )?),
        _ => {
            let mut w = RawWriter::create(&dst, size)?;
            w.set_durable(durable);
            Box::new(w)
        }
    };
    let align = writer.alignment().max(4096);
    let chunk = CHUNK.next_multiple_of(align);
    let next = AtomicU64::new(0);
    let copied = AtomicU64::new(0);
    let pool: Mutex<Vec<Buf>> = Mutex::new(Vec::new());
    let (tx, rx) = sync_channel::<Run>(jobs * 2);
    let direct = comp.is_some();
    std::thread::scope(
        |s| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let (writer, reader, pool, copied) = (&*writer, &reader, &pool, &copied);
            let wt = s.spawn(move || -> Result<(), vdisk_qcow2::Error> {
                for mut r in rx {
                    writer.write_at(&r.buf.get()[r.from..r.to], r.offset)?;
                    copied.fetch_add((r.to - r.from) as u64, Ordering::Relaxed);
                    pool.lock().unwrap().push(r.buf);
                }
                Ok(())
            });
            let workers: Vec<_> = (0..jobs)
                .map(|_| {
                    let (next, tx) = (&next, tx.clone());
                    s.spawn(move || -> Result<(), vdisk_qcow2::Error> {
                        loop {
                            let off = next.fetch_add(chunk, Ordering::Relaxed);
                            if off >= size {
                                return Ok(());
                            }
                            let len = chunk.min(size - off);
                            // Data extents widened to whole output clusters, merged.
                            let mut ranges: Vec<(u64, u64)> = Vec::new();
                            for e in reader.block_status(off, len)? {
                                if e.status != Status::Data {
                                    continue;
                                }
                                let a = e.offset / align * align;
                                let b = e.end().next_multiple_of(align).min(off + len);
                                match ranges.last_mut() {
                                    Some(last) if last.1 >= a => last.1 = last.1.max(b),
                                    _ => ranges.push((a, b)),
                                }
                            }
                            for (a, b) in ranges {
                                let mut buf = pool
                                    .lock()
                                    .unwrap()
                                    .pop()
                                    .unwrap_or_else(|| Buf::new(chunk as usize));
                                let n = (b - a) as usize;
                                reader.read_at(&mut buf.get()[..n], a)?;
                                // Runs of non-zero clusters.
                                let data = &buf.get()[..n];
                                let mut runs = Vec::new();
                                let mut i = 0;
                                while i < n {
                                    let end = |i: usize| (i + align as usize).min(n);
                                    if is_zero(&data[i..end(i)]) {
                                        i = end(i);
                                        continue;
                                    }
                                    let mut j = end(i);
                                    while j < n && !is_zero(&data[j..end(j)]) {
                                        j = end(j);
                                    }
                                    runs.push((i, j));
                                    i = j;
                                }
                                if direct {
                                    for (i, j) in runs {
                                        writer.write_at(&buf.get()[i..j], a + i as u64)?;
                                        copied.fetch_add((j - i) as u64, Ordering::Relaxed);
                                    }
                                    pool.lock().unwrap().push(buf);
                                    continue;
                                }
                                let last = runs.len();
                                if last == 0 {
                                    pool.lock().unwrap().push(buf);
                                    continue;
                                }
                                for (k, (i, j)) in runs.into_iter().enumerate() {
                                    // The last run takes the buffer; earlier ones get a copy.
                                    let b = if k + 1 == last {
                                        std::mem::replace(&mut buf, Buf::new(0))
                                    } else {
                                        let mut c = pool
                                            .lock()
                                            .unwrap()
                                            .pop()
                                            .unwrap_or_else(|| Buf::new(chunk as usize));
                                        c.get()[i..j].copy_from_slice(&buf.get()[i..j]);
                                        c
                                    };
                                    let run = Run {
                                        buf: b,
                                        from: i,
                                        to: j,
                                        offset: a,
                                    };
                                    if tx.send(run).is_err() {
                                        return Ok(()); // the writer failed; it reports why
                                    }
                                }
                            }
                        }
                    })
                })
                .collect();
            drop(tx);
            for w in workers {
                w.join().expect("worker panicked")?;
            }
            wt.join().expect("writer panicked")?;
            Ok(())
        },
    )
    .map_err(|e| e.to_string())?;
    writer.finish()?;
    let secs = start.elapsed().as_secs_f64();
    let mib = copied.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;
    eprintln!(
        "{secs:.2} s, {mib:.0} MiB of data written, {:.0} MiB/s",
        mib / secs
    );
    Ok(())
}
