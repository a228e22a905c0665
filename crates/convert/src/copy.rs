//! The copier (parallel workers over fixed chunks, zero detection, the zero
//! proof), compare and map.

use crate::{Dest, Error, Extent, Kind, Result, Source};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use vdisk_engine::Progress;
use vdisk_qcow2::is_zero;

/// How to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Worker threads, each with one chunk in flight (qemu-img's `-m`).
    pub workers: usize,
    /// Chunk size in bytes (a multiple of the destination's alignment is
    /// used). In-flight memory is `workers × chunk`.
    pub chunk: u64,
    /// Read the destination back and compare it with the source.
    pub verify: bool,
    /// Zero detection granularity in bytes (qemu-img's `-S`); `Some(0)`:
    /// none — every byte is written as data, zero ranges included, so a
    /// file destination ends fully allocated (pool images stay thin: the
    /// engine keeps zeros in metadata). `None`: 4 KiB (or the
    /// destination's cluster).
    pub sparse: Option<u64>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            workers: 8,
            chunk: 2 << 20,
            verify: false,
            sparse: None,
        }
    }
}

/// What became of the destination's fast zeroing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZeroProof {
    /// The destination was created zero (or declared so): zero ranges were
    /// skipped.
    CreatedZero,
    /// Zeroing is metadata (pool images, qcow2 zero clusters).
    Trusted,
    /// The source has no zero ranges: nothing to prove.
    NotNeeded,
    /// Proven on this destination in this run: zero ranges used it.
    Proven(&'static str),
    /// The proof failed (the reason says how); zeros were written as data.
    Failed(&'static str, String),
    /// No fast zeroing (or no way to read back): zeros written as data.
    Unavailable,
    /// Zero detection off (`-S 0`): zeros written as data, nothing skipped.
    Disabled,
}

/// What [`copy`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Bytes of the source.
    pub size: u64,
    /// Bytes written as data (zeros written as data included).
    pub written: u64,
    /// Bytes zeroed with the fast operation.
    pub zeroed_fast: u64,
    /// Bytes skipped because the destination already reads zero there.
    pub skipped: u64,
    /// The zero proof's outcome.
    pub zeroing: ZeroProof,
    /// `--verify` ran and found the copy equal.
    pub verified: bool,
}

/// Every extent of `[offset, offset + len)`.
fn collect(src: &dyn Source, offset: u64, len: u64) -> Result<Vec<Extent>> {
    let mut out = Vec::new();
    let end = offset + len;
    let mut at = offset;
    while at < end {
        let got = src.extents(at, end - at)?;
        let mut progressed = false;
        for e in got {
            if e.offset != at || e.length == 0 {
                break;
            }
            let e = Extent {
                length: e.length.min(end - at),
                ..e
            };
            at = e.end();
            progressed = true;
            crate::push_extent(&mut out, e);
            if at >= end {
                break;
            }
        }
        if !progressed {
            return Err(Error::Invalid(format!(
                "{}: block status did not describe offset {at}",
                src.describe()
            )));
        }
    }
    Ok(out)
}

/// The allocation map of a source: extents covering it, merged.
pub fn map(src: &dyn Source) -> Result<Vec<Extent>> {
    collect(src, 0, src.size())
}

/// Runs `f(item)` for `0..n` on `workers` threads, each with its own
/// buffer, stopping at the first error.
fn parallel(
    n: u64,
    workers: usize,
    buf_len: usize,
    f: impl Fn(u64, &mut Vec<u8>) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, n.max(1) as usize) {
            s.spawn(|| {
                let mut buf = vec![0u8; buf_len];
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    if let Err(e) = f(i, &mut buf) {
                        stop.store(true, Ordering::Relaxed);
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

/// The extents of `plan` inside `[start, end)`, clipped.
fn within(plan: &[Extent], start: u64, end: u64) -> impl Iterator<Item = Extent> + '_ {
    let first = plan.partition_point(|e| e.end() <= start);
    plan[first..]
        .iter()
        .take_while(move |e| e.offset < end)
        .map(move |e| {
            let s = e.offset.max(start);
            let t = e.end().min(end);
            Extent {
                offset: s,
                length: t - s,
                kind: e.kind,
            }
        })
}

/// `[start, end)` ranges to read in an item: data extents widened to
/// `align`, merged.
fn data_spans(plan: &[Extent], start: u64, end: u64, align: u64) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for e in within(plan, start, end).filter(|e| e.kind == Kind::Data) {
        let s = (e.offset / align * align).max(start);
        let t = e.end().div_ceil(align).saturating_mul(align).min(end);
        match spans.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(t),
            _ => spans.push((s, t)),
        }
    }
    spans
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (((i as u64).wrapping_mul(2_654_435_761) ^ seed) as u8) | 1)
        .collect()
}

/// Proves the destination's fast zeroing on `[off, off + len)` (a range
/// the copy zeroes anyway): pattern, fast zero, read back.
fn prove(dst: &dyn Dest, off: u64, len: u64) -> std::result::Result<(), String> {
    let pat = pattern(len as usize, off);
    dst.write_at(&pat, off)
        .map_err(|e| format!("could not be tested (writing a test pattern failed: {e})"))?;
    dst.zero_fast(off, len)
        .map_err(|e| format!("failed ({e})"))?;
    let mut back = vec![0u8; len as usize];
    dst.read_back(&mut back, off)
        .map_err(|e| format!("could not be tested (reading back failed: {e})"))?;
    if is_zero(&back) {
        Ok(())
    } else {
        Err("reported success but did not zero".into())
    }
}

/// Copies `src` onto `dst` (then finishes it, and verifies if asked).
/// Warnings (unreliable zeroing) go to `warn`.
pub fn copy(
    src: &dyn Source,
    dst: &dyn Dest,
    opts: &CopyOptions,
    progress: &dyn Progress,
    warn: &dyn Fn(String),
) -> Result<CopyReport> {
    let size = src.size();
    if dst.size() < size {
        return Err(Error::Invalid(format!(
            "{} holds {} bytes, less than the {size} bytes of {}",
            dst.describe(),
            dst.size(),
            src.describe()
        )));
    }
    let align = dst.alignment().max(1);
    if !align.is_power_of_two() {
        return Err(Error::Invalid(format!(
            "{}: alignment {align} is not a power of two",
            dst.describe()
        )));
    }
    let chunk = opts
        .chunk
        .max(src.preferred_chunk().min(32 << 20))
        .max(dst.preferred_chunk().min(32 << 20))
        .max(align)
        .next_multiple_of(align);
    let plan = collect(src, 0, size)?;

    // Zero ranges, as the workers will see them: an item's complement of
    // its data spans.
    let write_all = opts.sparse == Some(0);
    let zeroing = if write_all {
        ZeroProof::Disabled
    } else if dst.created_zero() {
        ZeroProof::CreatedZero
    } else if dst.zero_trusted() {
        ZeroProof::Trusted
    } else {
        match (dst.zero_op(), dst.can_read_back()) {
            (Some(op), true) => {
                let candidate = first_zero_range(&plan, chunk, align, size);
                match candidate {
                    None => ZeroProof::NotNeeded,
                    Some((off, len)) => match prove(dst, off, len) {
                        Ok(()) => ZeroProof::Proven(op),
                        Err(why) => {
                            warn(format!(
                                "destination {}: {op} {why}; writing zeros as data",
                                dst.describe()
                            ));
                            ZeroProof::Failed(op, why)
                        }
                    },
                }
            }
            _ => ZeroProof::Unavailable,
        }
    };
    let skip_zero = matches!(zeroing, ZeroProof::CreatedZero);
    let fast_zero = matches!(zeroing, ZeroProof::Trusted | ZeroProof::Proven(_));
    // Zero detection inside data: per block of this size.
    let block = match opts.sparse {
        Some(n) if n > 0 => n.next_multiple_of(align).min(chunk),
        _ if dst.detects_zeros() => chunk,
        _ => align.max(4096).min(chunk),
    };

    let write = |data: &[u8], off: u64| dst.write_at(data, off);
    let written = AtomicU64::new(0);
    let zeroed = AtomicU64::new(0);
    let skipped = AtomicU64::new(0);
    let zero_buf = vec![0u8; chunk as usize];
    let zero_range = |off: u64, len: u64| -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if skip_zero {
            skipped.fetch_add(len, Ordering::Relaxed);
            return Ok(());
        }
        if fast_zero {
            dst.zero_fast(off, len)?;
            zeroed.fetch_add(len, Ordering::Relaxed);
            return Ok(());
        }
        let mut at = off;
        while at < off + len {
            let n = chunk.min(off + len - at);
            write(&zero_buf[..n as usize], at)?;
            at += n;
        }
        written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    };

    let n = size.div_ceil(chunk);
    progress.start("copy", size);
    parallel(n, opts.workers, chunk as usize, |i, buf| {
        let start = i * chunk;
        let end = (start + chunk).min(size);
        let mut at = start;
        for (s, t) in data_spans(&plan, start, end, align) {
            zero_range(at, s - at)?;
            let data = &mut buf[..(t - s) as usize];
            src.read_at(data, s)?;
            // Split into non-zero runs and zero runs of whole blocks.
            let mut run_start = s;
            let mut run_zero: Option<bool> = None;
            let mut b = s;
            while b < t {
                let bend = (b + block).min(t);
                let z = !write_all && is_zero(&data[(b - s) as usize..(bend - s) as usize]);
                if run_zero.is_some_and(|rz| rz != z) {
                    emit(
                        &write,
                        data,
                        s,
                        run_start,
                        b,
                        run_zero == Some(true),
                        &zero_range,
                        &written,
                    )?;
                    run_start = b;
                }
                run_zero = Some(z);
                b = bend;
            }
            emit(
                &write,
                data,
                s,
                run_start,
                t,
                run_zero == Some(true),
                &zero_range,
                &written,
            )?;
            at = t;
        }
        zero_range(at, end - at)?;
        progress.inc(end - start);
        Ok(())
    })?;
    dst.finish()?;
    progress.finish();
    let mut report = CopyReport {
        size,
        written: written.into_inner(),
        zeroed_fast: zeroed.into_inner(),
        skipped: skipped.into_inner(),
        zeroing,
        verified: false,
    };
    if opts.verify {
        verify(src, dst, opts, progress)?;
        report.verified = true;
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn emit(
    write: &dyn Fn(&[u8], u64) -> Result<()>,
    data: &[u8],
    base: u64,
    from: u64,
    to: u64,
    zero: bool,
    zero_range: &dyn Fn(u64, u64) -> Result<()>,
    written: &AtomicU64,
) -> Result<()> {
    if from >= to {
        return Ok(());
    }
    if zero {
        return zero_range(from, to - from);
    }
    write(&data[(from - base) as usize..(to - base) as usize], from)?;
    written.fetch_add(to - from, Ordering::Relaxed);
    Ok(())
}

/// The first range of up to 1 MiB, aligned, that the copy will zero: the
/// complement of the data spans of the first item that has one.
fn first_zero_range(plan: &[Extent], chunk: u64, align: u64, size: u64) -> Option<(u64, u64)> {
    let min = align.max(4096);
    for e in plan.iter().filter(|e| e.kind.is_zero()) {
        // Stay inside one item and outside its data spans.
        let item = e.offset / chunk;
        let (start, end) = (item * chunk, ((item + 1) * chunk).min(size));
        let mut at = start;
        for (s, t) in data_spans(plan, start, end, align)
            .into_iter()
            .chain(std::iter::once((end, end)))
        {
            let lo = at.max(e.offset).next_multiple_of(align);
            let hi = s.min(e.end()) / align * align;
            if hi >= lo + min {
                return Some((lo, (hi - lo).min(1 << 20)));
            }
            at = t;
        }
    }
    None
}

/// Reads the finished destination back and compares it with the source.
pub fn verify(
    src: &dyn Source,
    dst: &dyn Dest,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<()> {
    let back = dst.reopen()?;
    match compare(src, &*back, opts.workers, opts.chunk, progress)? {
        Compared::Equal => Ok(()),
        Compared::Differ(offset) => Err(Error::Verify {
            dest: dst.describe(),
            source_name: src.describe(),
            offset,
        }),
    }
}

/// The outcome of [`compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compared {
    /// Same contents (a size difference counts only if the longer one's
    /// extra bytes are not zero, as in `qemu-img compare`).
    Equal,
    /// The first differing byte.
    Differ(u64),
}

/// Compares two sources as `qemu-img compare` does (without `-s`).
pub fn compare(
    a: &dyn Source,
    b: &dyn Source,
    workers: usize,
    chunk: u64,
    progress: &dyn Progress,
) -> Result<Compared> {
    let chunk = chunk.max(4096);
    let common = a.size().min(b.size());
    let total = a.size().max(b.size());
    let first = AtomicU64::new(u64::MAX);
    let n = total.div_ceil(chunk);
    progress.start("compare", total);
    parallel(n, workers, 2 * chunk as usize, |i, buf| {
        let start = i * chunk;
        let end = (start + chunk).min(total);
        if start >= first.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (ba, bb) = buf.split_at_mut(chunk as usize);
        // Common part: both read; the tail: the longer one must be zero.
        let ce = end.min(common);
        if start < ce {
            let za = collect(a, start, ce - start)?;
            let zb = collect(b, start, ce - start)?;
            let both_zero =
                za.iter().all(|e| e.kind.is_zero()) && zb.iter().all(|e| e.kind.is_zero());
            if !both_zero {
                let len = (ce - start) as usize;
                a.read_at(&mut ba[..len], start)?;
                b.read_at(&mut bb[..len], start)?;
                if let Some(k) = first_diff(&ba[..len], &bb[..len]) {
                    first.fetch_min(start + k as u64, Ordering::Relaxed);
                }
            }
        }
        let ts = start.max(common);
        if ts < end {
            let longer = if a.size() > b.size() { a } else { b };
            let ext = collect(longer, ts, end - ts)?;
            for e in ext.iter().filter(|e| e.kind == Kind::Data) {
                let buf = &mut ba[..e.length as usize];
                longer.read_at(buf, e.offset)?;
                if let Some(k) = buf.iter().position(|&x| x != 0) {
                    first.fetch_min(e.offset + k as u64, Ordering::Relaxed);
                    break;
                }
            }
        }
        progress.inc(end - start);
        Ok(())
    })?;
    progress.finish();
    Ok(match first.into_inner() {
        u64::MAX => Compared::Equal,
        off => Compared::Differ(off),
    })
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    // Fast path over 4 KiB blocks, then the byte.
    let mut base = 0;
    for (x, y) in a.chunks(4096).zip(b.chunks(4096)) {
        if x != y {
            return x.iter().zip(y).position(|(p, q)| p != q).map(|k| base + k);
        }
        base += x.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemSource;
    use std::sync::atomic::AtomicBool;
    use vdisk_engine::NoProgress;

    /// A destination in memory whose fast zeroing may lie.
    #[derive(Debug)]
    struct LyingDest {
        data: Mutex<Vec<u8>>,
        lies: bool,
        created: bool,
        finished: AtomicBool,
    }

    impl Dest for LyingDest {
        fn describe(&self) -> String {
            "lying".into()
        }
        fn size(&self) -> u64 {
            self.data.lock().len() as u64
        }
        fn created_zero(&self) -> bool {
            self.created
        }
        fn zero_op(&self) -> Option<&'static str> {
            Some("WRITE_ZEROES")
        }
        fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
            let o = offset as usize;
            self.data.lock()[o..o + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn zero_fast(&self, offset: u64, len: u64) -> Result<()> {
            if !self.lies {
                let o = offset as usize;
                self.data.lock()[o..o + len as usize].fill(0);
            }
            Ok(())
        }
        fn can_read_back(&self) -> bool {
            true
        }
        fn read_back(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            let o = offset as usize;
            buf.copy_from_slice(&self.data.lock()[o..o + buf.len()]);
            Ok(())
        }
        fn finish(&self) -> Result<()> {
            self.finished.store(true, Ordering::Relaxed);
            Ok(())
        }
        fn reopen(&self) -> Result<Box<dyn Source>> {
            Ok(Box::new(MemSource {
                data: self.data.lock().clone(),
            }))
        }
    }

    /// A source with explicit extents.
    #[derive(Debug)]
    struct Sparse {
        data: Vec<u8>,
        plan: Vec<Extent>,
    }

    impl Source for Sparse {
        fn describe(&self) -> String {
            "sparse".into()
        }
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            let o = offset as usize;
            buf.copy_from_slice(&self.data[o..o + buf.len()]);
            Ok(())
        }
        fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
            Ok(within(&self.plan, offset, offset + len).collect())
        }
    }

    fn sparse(size: usize) -> Sparse {
        let mut data = vec![0u8; size];
        let mut plan = Vec::new();
        let mut at = 0u64;
        let mut k = 0u8;
        while (at as usize) < size {
            let len = (((k as u64 * 7919) % 13) + 1) * 4096;
            let len = len.min(size as u64 - at);
            let kind = match k % 3 {
                0 => Kind::Data,
                1 => Kind::Zero,
                _ => Kind::Hole,
            };
            if kind == Kind::Data {
                for (i, b) in data[at as usize..(at + len) as usize]
                    .iter_mut()
                    .enumerate()
                {
                    // Some all-zero blocks inside data too.
                    *b = if (i / 4096) % 3 == 2 {
                        0
                    } else {
                        (i as u8) | 1
                    };
                }
            }
            crate::push_extent(
                &mut plan,
                Extent {
                    offset: at,
                    length: len,
                    kind,
                },
            );
            at += len;
            k = k.wrapping_add(1);
        }
        Sparse { data, plan }
    }

    fn garbage(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i % 251) as u8 | 0x80).collect()
    }

    #[test]
    fn lying_zeroes_are_caught_and_the_copy_is_exact() {
        let src = sparse(3 << 20);
        let dst = LyingDest {
            data: Mutex::new(garbage(3 << 20)),
            lies: true,
            created: false,
            finished: AtomicBool::new(false),
        };
        let warnings = Mutex::new(Vec::new());
        let opts = CopyOptions {
            chunk: 256 << 10,
            verify: true,
            ..Default::default()
        };
        let r = copy(&src, &dst, &opts, &NoProgress, &|w| warnings.lock().push(w)).unwrap();
        assert!(matches!(r.zeroing, ZeroProof::Failed("WRITE_ZEROES", _)));
        assert_eq!(*dst.data.lock(), src.data);
        let w = warnings.into_inner();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("destination lying: WRITE_ZEROES reported success but did not zero"));
        assert!(r.verified);
    }

    #[test]
    fn honest_zeroes_are_proven_and_used() {
        let src = sparse(3 << 20);
        let dst = LyingDest {
            data: Mutex::new(garbage(3 << 20)),
            lies: false,
            created: false,
            finished: AtomicBool::new(false),
        };
        let r = copy(&src, &dst, &CopyOptions::default(), &NoProgress, &|w| {
            panic!("{w}")
        })
        .unwrap();
        assert_eq!(r.zeroing, ZeroProof::Proven("WRITE_ZEROES"));
        assert!(r.zeroed_fast > 0);
        assert_eq!(*dst.data.lock(), src.data);
    }

    #[test]
    fn created_zero_skips_zeros() {
        let src = sparse(1 << 20);
        let dst = LyingDest {
            data: Mutex::new(vec![0; 1 << 20]),
            lies: true,
            created: true,
            finished: AtomicBool::new(false),
        };
        let r = copy(&src, &dst, &CopyOptions::default(), &NoProgress, &|_| {}).unwrap();
        assert_eq!(r.zeroing, ZeroProof::CreatedZero);
        assert!(r.skipped > 0 && r.written + r.skipped == 1 << 20);
        assert_eq!(*dst.data.lock(), src.data);
        assert!(dst.finished.load(Ordering::Relaxed));
    }

    #[test]
    fn compare_finds_the_first_difference() {
        let a = MemSource {
            data: garbage(5 << 20),
        };
        let mut d = a.data.clone();
        d[3_000_001] ^= 1;
        d[4_500_000] ^= 1;
        let b = MemSource { data: d };
        assert_eq!(
            compare(&a, &b, 4, 1 << 20, &NoProgress).unwrap(),
            Compared::Differ(3_000_001)
        );
        assert_eq!(
            compare(&a, &a, 4, 1 << 20, &NoProgress).unwrap(),
            Compared::Equal
        );
        // A longer one equal but for a zero tail is equal; a non-zero tail
        // differs where it starts being non-zero.
        let mut longer = a.data.clone();
        longer.extend_from_slice(&[0; 10000]);
        let l = MemSource { data: longer };
        assert_eq!(
            compare(&a, &l, 2, 1 << 20, &NoProgress).unwrap(),
            Compared::Equal
        );
        let mut longer = l.data.clone();
        longer[(5 << 20) + 77] = 9;
        let l = MemSource { data: longer };
        assert_eq!(
            compare(&l, &a, 2, 1 << 20, &NoProgress).unwrap(),
            Compared::Differ((5 << 20) + 77)
        );
    }

    #[test]
    fn too_small_destination_is_refused_before_writing() {
        let src = sparse(1 << 20);
        let dst = LyingDest {
            data: Mutex::new(garbage(1 << 19)),
            lies: false,
            created: false,
            finished: AtomicBool::new(false),
        };
        let e = copy(&src, &dst, &CopyOptions::default(), &NoProgress, &|_| {}).unwrap_err();
        assert!(e.to_string().contains("less than"), "{e}");
        assert_eq!(*dst.data.lock(), garbage(1 << 19));
    }
}
