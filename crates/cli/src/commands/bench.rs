//! `bench`: I/O threads on an image, like `rbd bench`. A line per second
//! (`SEC OPS OPS/SEC BYTES/SEC`) and a summary; the final flush of a write
//! run is part of the elapsed time.

use super::{any_spec, Ctx};
use crate::args::{BenchArgs, IoPattern, IoType};
use crate::error::{CliError, Result};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vdisk_engine::{human_size, parse_bytes, Image};

/// `bench --format json`.
#[derive(Debug, Serialize)]
struct BenchReport {
    image: String,
    io_type: &'static str,
    io_pattern: &'static str,
    io_size: u64,
    io_threads: u32,
    ops: u64,
    bytes: u64,
    elapsed_s: f64,
    ops_per_sec: f64,
    bytes_per_sec: f64,
}

fn type_name(t: IoType) -> &'static str {
    match t {
        IoType::Read => "read",
        IoType::Write => "write",
        IoType::Readwrite => "readwrite",
    }
}

fn pattern_name(p: IoPattern) -> &'static str {
    match p {
        IoPattern::Seq => "seq",
        IoPattern::Rand => "rand",
    }
}

/// Shared between the I/O threads and the reporter.
struct Shared<'a> {
    img: &'a Image,
    io_size: u64,
    slots: u64,
    total_ops: u64,
    io_type: IoType,
    pattern: IoPattern,
    mix_read: u8,
    next: AtomicU64,
    done_ops: AtomicU64,
    done_bytes: AtomicU64,
    finished: AtomicUsize,
    stop: AtomicBool,
    error: Mutex<Option<CliError>>,
}

impl Shared<'_> {
    fn fail(&self, e: CliError) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(mut g) = self.error.lock() {
            g.get_or_insert(e);
        }
    }

    fn worker(&self, seed: u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let len = self.io_size as usize;
        let mut wbuf = Vec::new();
        if self.io_type != IoType::Read {
            wbuf = vec![0u8; len];
            rng.fill(&mut wbuf[..]);
            // Never a zero sector, so no write is stored as "zero".
            for sector in wbuf.chunks_mut(512) {
                sector[0] |= 1;
            }
        }
        let mut rbuf = if self.io_type != IoType::Write {
            vec![0u8; len]
        } else {
            Vec::new()
        };
        while !self.stop.load(Ordering::Relaxed) {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.total_ops {
                break;
            }
            let slot = match self.pattern {
                IoPattern::Seq => i % self.slots,
                IoPattern::Rand => rng.gen_range(0..self.slots),
            };
            let off = slot * self.io_size;
            let read = match self.io_type {
                IoType::Read => true,
                IoType::Write => false,
                IoType::Readwrite => rng.gen_range(0..100u8) < self.mix_read,
            };
            let r = if read {
                self.img.read_at(off, &mut rbuf)
            } else {
                // Vary a few bytes per op so no two writes are alike.
                let tag = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let n = wbuf.len().min(8);
                wbuf[..n].copy_from_slice(&tag.to_le_bytes()[..n]);
                self.img.write_at(off, &wbuf)
            };
            if let Err(e) = r {
                self.fail(e.into());
                break;
            }
            self.done_ops.fetch_add(1, Ordering::Relaxed);
            self.done_bytes.fetch_add(self.io_size, Ordering::Relaxed);
        }
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

pub fn run(ctx: &Ctx, a: BenchArgs) -> Result<()> {
    let spec = any_spec(&a.spec)?;
    ctx.not_in_daemon(
        "`vdisk bench` (it runs I/O threads on the image in its own process)",
        &format!(
            "benchmark through the daemon over NBD, e.g. `fio --ioengine=nbd \
             --uri='nbd+unix:///{spec}?socket=DIR/nbd.sock' ...`, or stop the daemon"
        ),
    )?;
    let io_size = parse_bytes(&a.io_size)?;
    let io_total = parse_bytes(&a.io_total)?;
    if io_size == 0 {
        return Err(CliError::invalid("--io-size must be greater than 0"));
    }
    if io_size > 64 << 20 {
        return Err(CliError::invalid("--io-size must be at most 64 MiB"));
    }
    if io_total < io_size {
        return Err(CliError::invalid(format!(
            "--io-total ({io_total} bytes) is smaller than --io-size ({io_size} bytes)"
        )));
    }
    let img = ctx.store.open(&spec)?;
    if a.io_type != IoType::Read && img.is_snapshot() {
        return Err(vdisk_engine::Error::ReadOnly {
            spec: spec.to_string(),
        }
        .into());
    }
    let size = img.size();
    if io_size > size {
        return Err(CliError::invalid(format!(
            "--io-size ({io_size} bytes) is larger than {spec} ({size} bytes)"
        )));
    }
    let sh = Shared {
        img: &img,
        io_size,
        slots: size / io_size,
        total_ops: io_total / io_size,
        io_type: a.io_type,
        pattern: a.io_pattern,
        mix_read: a.rw_mix_read,
        next: AtomicU64::new(0),
        done_ops: AtomicU64::new(0),
        done_bytes: AtomicU64::new(0),
        finished: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        error: Mutex::new(None),
    };
    let plain = !ctx.out.is_json();
    if plain {
        ctx.out.line(format!(
            "bench  type {}  io_size {}  io_threads {}  bytes {}  pattern {}",
            type_name(a.io_type),
            io_size,
            a.io_threads,
            sh.total_ops * io_size,
            if a.io_pattern == IoPattern::Seq {
                "sequential"
            } else {
                "random"
            }
        ))?;
        ctx.out.line(format!(
            "{:>5} {:>10} {:>12} {:>14}",
            "SEC", "OPS", "OPS/SEC", "BYTES/SEC"
        ))?;
    }
    let threads = a.io_threads as usize;
    let base_seed: u64 = rand::thread_rng().gen();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let sh = &sh;
            s.spawn(move || sh.worker(base_seed.wrapping_add(t as u64)));
        }
        // Reporter: one line per elapsed second.
        let mut sec = 0u64;
        let (mut last_ops, mut last_bytes) = (0u64, 0u64);
        while sh.finished.load(Ordering::SeqCst) < threads {
            std::thread::sleep(Duration::from_millis(20));
            if start.elapsed() < Duration::from_secs(sec + 1) {
                continue;
            }
            sec += 1;
            let ops = sh.done_ops.load(Ordering::Relaxed);
            let bytes = sh.done_bytes.load(Ordering::Relaxed);
            if plain {
                let line = format!(
                    "{sec:>5} {ops:>10} {:>12.2} {:>14}",
                    (ops - last_ops) as f64,
                    format!("{}/s", human_size(bytes - last_bytes))
                );
                if let Err(e) = ctx.out.line(line) {
                    sh.fail(e);
                }
            }
            (last_ops, last_bytes) = (ops, bytes);
        }
    });
    if let Some(e) = sh.error.lock().ok().and_then(|mut g| g.take()) {
        return Err(e);
    }
    if a.io_type != IoType::Read {
        img.flush()?;
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let ops = sh.done_ops.load(Ordering::Relaxed);
    let bytes = sh.done_bytes.load(Ordering::Relaxed);
    let r = BenchReport {
        image: spec.to_string(),
        io_type: type_name(a.io_type),
        io_pattern: pattern_name(a.io_pattern),
        io_size,
        io_threads: a.io_threads,
        ops,
        bytes,
        elapsed_s: elapsed,
        ops_per_sec: ops as f64 / elapsed,
        bytes_per_sec: bytes as f64 / elapsed,
    };
    if plain {
        ctx.out.line(format!(
            "elapsed: {:.2}  ops: {}  ops/sec: {:.2}  bytes/sec: {}/s",
            r.elapsed_s,
            r.ops,
            r.ops_per_sec,
            human_size(r.bytes_per_sec as u64)
        ))
    } else {
        ctx.out.json(&r)
    }
}
