//! Trimming: releasing the data that snapshot removal and rollback leave
//! unneeded, after the operation itself has returned (incident 5).
//!
//! Removing a snapshot (or rolling back) changes metadata under the image's
//! I/O barrier: the record, the object states and the object maps are
//! recomputed in memory and committed in one transaction. The data that no
//! reader needs any more (block ranges to punch, generations to remove) is
//! *not* released under the barrier: it is written, in that same
//! transaction, to the `trim` table as a queue of [`TrimBatch`]es, and
//! released later by [`Store::trim_image`], which takes no image lock at all.
//!
//! Why that is safe without locks: every range in the queue belongs to a
//! generation older than the head's (a head writes only to generation
//! `seq`, and rollback bumps `seq` before reclaiming; generation 0 is
//! written once per object by copy-up, guarded by the object's `copied_up`
//! flag, which stays set), so no write can land there again; and no reader
//! resolves a block to a range in the queue (that is what made it
//! unneeded), while readers added later (new snapshots, a rollback) see
//! what an existing reader saw. Punching or removing twice is harmless, so
//! a batch is deleted from the queue only after its data operations were
//! synced: a crash in between repeats them.
//!
//! Pace: a trimmer run by the daemon pauses between data operations so
//! that foreground I/O keeps its latency ([`AdaptivePacer`]); without a
//! daemon, the CLI trims at full speed right after the metadata commit
//! (nothing else uses the disk then).

use crate::error::{Error, Result};
use crate::image::object_name;
use crate::object::BLOCK_SHIFT;
use crate::record::{self, keys, ImageRecord, Kind, PoolRecord};
use crate::store::Store;
use crate::Progress;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vdisk_storage::MetaOp;

/// Data operations per queued batch (a batch is one metadata value).
pub(crate) const BATCH_OPS: usize = 1024;

/// The counter (in `counters`) numbering queued batches.
const COUNTER: &str = "trim";

/// Data an image no longer needs, to be released: one value of the `trim`
/// table.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct TrimBatch {
    /// Block ranges to punch: (object number, generation, first block, end
    /// block).
    pub punch: Vec<(u64, u64, u32, u32)>,
    /// Generations to remove: (object number, generation).
    pub remove: Vec<(u64, u64)>,
}

impl TrimBatch {
    fn ops(&self) -> usize {
        self.punch.len() + self.remove.len()
    }
}

/// The metadata ops that queue `punch` and `remove` for image `image` of
/// pool `pool`, in batches of at most [`BATCH_OPS`]; they must be committed
/// with the metadata that stopped needing the data.
pub(crate) fn queue_ops(
    meta: &dyn vdisk_storage::MetaStore,
    pool: u64,
    image: u64,
    punch: Vec<(u64, u64, u32, u32)>,
    remove: Vec<(u64, u64)>,
) -> Result<Vec<MetaOp>> {
    if punch.is_empty() && remove.is_empty() {
        return Ok(Vec::new());
    }
    let mut next = meta
        .get(keys::COUNTERS, COUNTER.as_bytes())?
        .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0);
    let mut ops = Vec::new();
    let mut batch = TrimBatch::default();
    let mut put = |batch: &mut TrimBatch, ops: &mut Vec<MetaOp>| {
        next += 1;
        ops.push(MetaOp::Put {
            table: keys::TRIM,
            key: keys::k3(pool, image, next),
            value: record::encode(Kind::Trim, &std::mem::take(batch)),
        });
    };
    // Removals first: whole generations free the most space soonest.
    for r in remove {
        batch.remove.push(r);
        if batch.ops() == BATCH_OPS {
            put(&mut batch, &mut ops);
        }
    }
    for p in punch {
        batch.punch.push(p);
        if batch.ops() == BATCH_OPS {
            put(&mut batch, &mut ops);
        }
    }
    if batch.ops() > 0 {
        put(&mut batch, &mut ops);
    }
    ops.push(MetaOp::Put {
        table: keys::COUNTERS,
        key: COUNTER.as_bytes().to_vec(),
        value: next.to_be_bytes().to_vec(),
    });
    Ok(ops)
}

/// Foreground I/O latency as the data path sees it, for the pacer.
#[derive(Debug)]
pub(crate) struct IoStats {
    epoch: Instant,
    /// Moving average of foreground I/O latency, in nanoseconds (over the
    /// last 16 operations or so).
    latency_ns: AtomicU64,
    /// The same over about 256 operations, updated only while no trimming
    /// runs: what the foreground's latency is without trimming.
    baseline_ns: AtomicU64,
    /// When the last foreground I/O ended, in nanoseconds since `epoch`.
    last_io: AtomicU64,
    /// A trimmer is releasing data.
    pub trimming: std::sync::atomic::AtomicBool,
}

impl Default for IoStats {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            latency_ns: AtomicU64::new(0),
            baseline_ns: AtomicU64::new(0),
            last_io: AtomicU64::new(0),
            trimming: Default::default(),
        }
    }
}

/// One step of a moving average over about `n` samples (0: none yet).
fn average(avg: u64, sample: u64, n: u64) -> u64 {
    if avg == 0 {
        sample
    } else {
        avg - avg / n + sample / n
    }
}

impl IoStats {
    /// Records one foreground operation that started at `start`.
    pub(crate) fn record(&self, start: Instant) {
        let now = Instant::now();
        let took = now.duration_since(start).as_nanos() as u64;
        // Races between threads lose an update now and then: harmless for
        // an average.
        let avg = self.latency_ns.load(Ordering::Relaxed);
        self.latency_ns
            .store(average(avg, took, 16), Ordering::Relaxed);
        if !self.trimming.load(Ordering::Relaxed) {
            let base = self.baseline_ns.load(Ordering::Relaxed);
            self.baseline_ns
                .store(average(base, took, 256), Ordering::Relaxed);
        }
        self.last_io.store(
            now.duration_since(self.epoch).as_nanos() as u64,
            Ordering::Relaxed,
        );
    }

    /// (recent average latency, average latency without trimming, time
    /// since the last foreground I/O).
    fn sample(&self) -> (Duration, Duration, Duration) {
        let last = Duration::from_nanos(self.last_io.load(Ordering::Relaxed));
        let since = self.epoch.elapsed().saturating_sub(last);
        (
            Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed)),
            Duration::from_nanos(self.baseline_ns.load(Ordering::Relaxed)),
            since,
        )
    }
}

/// Decides how long a trimmer waits after each data operation.
pub trait Pacer: Send {
    /// Called after a data operation that took `took`; returns how long to
    /// wait before the next one.
    fn pause(&mut self, took: Duration) -> Duration;
}

/// No waiting (nothing else uses the disk).
#[derive(Debug, Clone, Copy, Default)]
pub struct FullSpeed;

impl Pacer for FullSpeed {
    fn pause(&mut self, _: Duration) -> Duration {
        Duration::ZERO
    }
}

/// Paces trimming by the foreground's latency: the trimmer gets a share
/// ("duty") of wall time for its own operations. While the foreground's
/// recent latency stays within 25 % of its latency without trimming (a
/// long average taken only while no trimmer runs), the share grows by 10 %
/// per operation up to one half; when it rises above, the share halves,
/// down to 2 %. With no foreground I/O for 200 ms, trimming runs at full
/// speed.
#[derive(Debug)]
pub struct AdaptivePacer {
    stats: std::sync::Arc<IoStats>,
    duty: f64,
}

impl AdaptivePacer {
    const MIN_DUTY: f64 = 0.02;
    const MAX_DUTY: f64 = 0.5;
    const IDLE: Duration = Duration::from_millis(200);
    const MAX_PAUSE: Duration = Duration::from_secs(1);

    /// The share of time trimming currently takes (for reports and tests).
    pub fn duty(&self) -> f64 {
        self.duty
    }
}

impl Pacer for AdaptivePacer {
    fn pause(&mut self, took: Duration) -> Duration {
        let (latency, baseline, since_io) = self.stats.sample();
        if since_io >= Self::IDLE || latency.is_zero() {
            self.duty = Self::MAX_DUTY;
            return Duration::ZERO;
        }
        // No latency without trimming known yet: the recent one will do.
        let baseline = if baseline.is_zero() {
            latency
        } else {
            baseline
        };
        if latency.as_secs_f64() > baseline.as_secs_f64() * 1.25 {
            self.duty = (self.duty / 2.0).max(Self::MIN_DUTY);
        } else {
            self.duty = (self.duty * 1.1).min(Self::MAX_DUTY);
        }
        took.mul_f64(1.0 / self.duty - 1.0).min(Self::MAX_PAUSE)
    }
}

/// An image with data queued for trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrimTarget {
    pub pool_id: u64,
    pub image_id: u64,
    /// `pool/image` (or `pool/id:HEX` once the image is gone).
    pub spec: String,
    /// Data operations queued.
    pub ops: u64,
}

/// Wakes the daemon's trimmer when work is queued.
#[derive(Debug, Default)]
pub(crate) struct TrimSignal {
    /// Trimming runs in the background (the daemon): operations only queue.
    pub background: std::sync::atomic::AtomicBool,
    /// The background trimmer holds off (maintenance, measurements).
    pub paused: std::sync::atomic::AtomicBool,
    queued: Mutex<u64>,
    cond: Condvar,
    /// One trimmer at a time.
    pub running: Mutex<()>,
    /// Holds of the trimmer by operations of the engine itself
    /// ([`TrimHold`]), apart from the operator's `paused`.
    held: std::sync::atomic::AtomicUsize,
    /// Data operations released since the store was opened.
    released: AtomicU64,
}

impl TrimSignal {
    fn notify(&self) {
        *self.queued.lock() += 1;
        self.cond.notify_all();
    }
}

impl Store {
    /// Makes snapshot removal and rollback leave their data to a background
    /// trimmer (the daemon's), instead of trimming before they return.
    pub fn set_background_trim(&self, on: bool) {
        self.shared.trim.background.store(on, Ordering::SeqCst);
    }

    /// Holds the background trimmer off (or lets it go on): data queued
    /// meanwhile waits. A trimmer running stops after its current data
    /// operation.
    pub fn set_trim_paused(&self, paused: bool) {
        self.shared.trim.paused.store(paused, Ordering::SeqCst);
        self.shared.trim.notify();
    }

    /// Whether the trimmer is held off: by [`Store::set_trim_paused`], or
    /// by an operation that must not run beside it (`meta restore`).
    pub fn trim_paused(&self) -> bool {
        self.shared.trim.paused.load(Ordering::SeqCst)
            || self.shared.trim.held.load(Ordering::SeqCst) > 0
    }

    /// Stops the trimmer (a running one after its current data operation,
    /// waited for) and keeps it stopped until the hold is dropped: while
    /// held, no data queued for trimming is released.
    pub(crate) fn hold_trimmer(&self) -> TrimHold<'_> {
        let t = &self.shared.trim;
        t.held.fetch_add(1, Ordering::SeqCst);
        t.notify();
        TrimHold {
            signal: t,
            _running: t.running.lock(),
        }
    }

    /// A pacer that keeps trimming out of the foreground's way.
    pub fn adaptive_pacer(&self) -> AdaptivePacer {
        AdaptivePacer {
            stats: self.shared.io.clone(),
            duty: 0.25,
        }
    }

    /// Waits until trimming work may have been queued (or `timeout`).
    pub fn wait_for_trim_work(&self, timeout: Duration) {
        let mut q = self.shared.trim.queued.lock();
        if *q == 0 {
            self.shared.trim.cond.wait_for(&mut q, timeout);
        }
        *q = 0;
    }

    /// Wakes a waiting trimmer (after queueing, or to stop it).
    pub fn notify_trimmer(&self) {
        self.shared.trim.notify();
    }

    /// After an operation queued data for trimming: trims it now at full
    /// speed, unless a background trimmer will.
    pub(crate) fn trim_after(&self, pool: u64, image: u64, progress: &dyn Progress) -> Result<()> {
        if self.shared.trim.background.load(Ordering::SeqCst) {
            self.shared.trim.notify();
            return Ok(());
        }
        let target = TrimTarget {
            pool_id: pool,
            image_id: image,
            spec: String::new(),
            ops: 0,
        };
        self.trim_image(&target, &mut FullSpeed, progress, &|| false)?;
        Ok(())
    }

    /// Every image with queued data, with how much.
    pub fn trim_targets(&self) -> Result<Vec<TrimTarget>> {
        let meta = self.shared.meta.as_ref();
        let mut out: Vec<TrimTarget> = Vec::new();
        for (k, v) in meta.scan(keys::TRIM, b"")? {
            let (Some(pool), Some(image)) = (keys::u64_at(&k, 0), keys::u64_at(&k, 8)) else {
                continue;
            };
            let ops = record::decode::<TrimBatch>(Kind::Trim, "trim queue", &v)
                .map(|b| b.ops() as u64)
                .unwrap_or(0);
            match out.last_mut() {
                Some(t) if t.pool_id == pool && t.image_id == image => t.ops += ops,
                _ => out.push(TrimTarget {
                    pool_id: pool,
                    image_id: image,
                    spec: self.trim_spec(pool, image),
                    ops,
                }),
            }
        }
        Ok(out)
    }

    fn trim_spec(&self, pool: u64, image: u64) -> String {
        let Ok(p) = self.shared.pool_by_id(pool) else {
            return format!("pool-id:{pool:x}/id:{image:x}");
        };
        match self.shared.meta.get(keys::IMAGES, &keys::k2(pool, image)) {
            Ok(Some(v)) => match record::decode::<ImageRecord>(Kind::Image, "image", &v) {
                Ok(r) => format!("{}/{}", p.name, r.name),
                Err(_) => format!("{}/id:{image:x}", p.name),
            },
            _ => format!("{}/id:{image:x}", p.name),
        }
    }

    /// Data operations released by trimming since the store was opened.
    pub fn trim_released(&self) -> u64 {
        self.shared.trim.released.load(Ordering::Relaxed)
    }

    /// Data operations queued for trimming, all images together.
    pub fn trim_backlog(&self) -> Result<u64> {
        Ok(self.trim_targets()?.iter().map(|t| t.ops).sum())
    }

    /// Releases the data queued for one image, batch by batch (each synced,
    /// then deleted from the queue), pausing as `pacer` says; stops early
    /// when `stop` turns true, before the next data operation (a batch left
    /// half done stays queued). Returns the number of data operations done.
    pub fn trim_image(
        &self,
        target: &TrimTarget,
        pacer: &mut dyn Pacer,
        progress: &dyn Progress,
        stop: &dyn Fn() -> bool,
    ) -> Result<u64> {
        let _one = self.shared.trim.running.lock();
        let _trimming = Trimming::start(&self.shared.io);
        let meta = self.shared.meta.clone();
        let prefix = keys::k2(target.pool_id, target.image_id);
        let batches = meta.scan(keys::TRIM, &prefix)?;
        let total: u64 = batches
            .iter()
            .map(|(_, v)| {
                record::decode::<TrimBatch>(Kind::Trim, "trim queue", v)
                    .map_or(0, |b| b.ops() as u64)
            })
            .sum();
        progress.start("trim", total);
        // A pool that is gone took its data with it.
        let data = match self.shared.pool_by_id(target.pool_id) {
            Ok(pool) => Some(self.shared.pool_data(&pool)?),
            Err(Error::Corrupt { .. }) => None,
            Err(e) => return Err(e),
        };
        let mut done = 0u64;
        for (key, value) in batches {
            if stop() {
                break;
            }
            let batch: TrimBatch = match record::decode(Kind::Trim, "trim queue", &value) {
                Ok(b) => b,
                Err(e) => {
                    // Leaves it (and reports): `vdisk check` finds the
                    // data it did not release.
                    tracing_free_warn(&format!(
                        "skipping an unreadable trim batch of {}: {e}",
                        target.spec
                    ));
                    continue;
                }
            };
            if let Some(data) = &data {
                let name = |objno: u64, gen: u64| object_name(target.image_id, objno, gen);
                let mut touched: Vec<String> = Vec::with_capacity(batch.ops());
                // Stopped between two data operations, the batch stays
                // queued: what it released is released again next time
                // (idempotent), the rest then.
                let mut stopped = false;
                for &(objno, gen) in &batch.remove {
                    if stop() {
                        stopped = true;
                        break;
                    }
                    let start = Instant::now();
                    data.remove(&name(objno, gen))?;
                    touched.push(name(objno, gen));
                    done += 1;
                    self.shared.trim.released.fetch_add(1, Ordering::Relaxed);
                    progress.inc(1);
                    pause(pacer.pause(start.elapsed()), stop);
                }
                for &(objno, gen, s, e) in &batch.punch {
                    if stopped || stop() {
                        stopped = true;
                        break;
                    }
                    let start = Instant::now();
                    data.punch(
                        &name(objno, gen),
                        u64::from(s) << BLOCK_SHIFT,
                        u64::from(e - s) << BLOCK_SHIFT,
                    )?;
                    touched.push(name(objno, gen));
                    done += 1;
                    self.shared.trim.released.fetch_add(1, Ordering::Relaxed);
                    progress.inc(1);
                    pause(pacer.pause(start.elapsed()), stop);
                }
                // Only this batch's objects: the foreground's flushes and
                // this sync do not wait for each other's data.
                touched.sort_unstable();
                touched.dedup();
                data.sync_objects(&touched)?;
                if stopped {
                    break;
                }
            }
            meta.commit(vec![MetaOp::Delete {
                table: keys::TRIM,
                key,
            }])?;
        }
        progress.finish();
        Ok(done)
    }

    /// Queued removals of data objects, per (pool id, image id): `check`
    /// does not call those orphans.
    pub(crate) fn trim_queued_removes(
        &self,
        pool: &PoolRecord,
    ) -> Result<std::collections::BTreeSet<(u64, u64, u64)>> {
        let mut out = std::collections::BTreeSet::new();
        for (k, v) in self.shared.meta.scan(keys::TRIM, &keys::k1(pool.id))? {
            let Some(image) = keys::u64_at(&k, 8) else {
                continue;
            };
            if let Ok(b) = record::decode::<TrimBatch>(Kind::Trim, "trim queue", &v) {
                out.extend(b.remove.iter().map(|&(o, g)| (image, o, g)));
            }
        }
        Ok(out)
    }
}

/// [`Store::hold_trimmer`]'s guard.
pub(crate) struct TrimHold<'a> {
    signal: &'a TrimSignal,
    _running: parking_lot::MutexGuard<'a, ()>,
}

impl Drop for TrimHold<'_> {
    fn drop(&mut self) {
        self.signal.held.fetch_sub(1, Ordering::SeqCst);
        self.signal.notify();
    }
}

/// Marks a trimmer running (for [`IoStats`]) until dropped.
struct Trimming<'a>(&'a IoStats);

impl<'a> Trimming<'a> {
    fn start(io: &'a IoStats) -> Self {
        io.trimming.store(true, Ordering::Relaxed);
        Self(io)
    }
}

impl Drop for Trimming<'_> {
    fn drop(&mut self) {
        self.0.trimming.store(false, Ordering::Relaxed);
    }
}

/// Sleeps `d`, in slices, returning early when `stop` turns true.
fn pause(d: Duration, stop: &dyn Fn() -> bool) {
    let end = Instant::now() + d;
    loop {
        let now = Instant::now();
        if now >= end || stop() {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// The engine has no logger of its own; warnings go to stderr.
pub(crate) fn tracing_free_warn(msg: &str) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("vdisk: warning: {msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_and_numbered() {
        use vdisk_storage::MetaStore;
        let meta = vdisk_storage::MemMetaStore::default();
        let punch: Vec<_> = (0..2500u64).map(|i| (i, 1, 0, 4)).collect();
        let remove: Vec<_> = (0..10u64).map(|i| (i, 2)).collect();
        let ops = queue_ops(&meta, 1, 7, punch, remove).expect("ops");
        // 2510 ops: 3 batches + the counter.
        assert_eq!(ops.len(), 4);
        let mut seen = 0;
        for op in &ops[..3] {
            let MetaOp::Put { table, key, value } = op else {
                panic!("{op:?}")
            };
            assert_eq!(*table, keys::TRIM);
            assert_eq!(keys::u64_at(key, 0), Some(1));
            assert_eq!(keys::u64_at(key, 8), Some(7));
            let b: TrimBatch = record::decode(Kind::Trim, "t", value).expect("decode");
            assert!(b.ops() <= BATCH_OPS);
            seen += b.ops();
        }
        assert_eq!(seen, 2510);
        meta.commit(ops).expect("commit");
        // Numbering continues after the committed counter.
        let more = queue_ops(&meta, 1, 7, vec![(0, 1, 0, 1)], vec![]).expect("ops");
        let MetaOp::Put { key, .. } = &more[0] else {
            panic!()
        };
        assert_eq!(keys::u64_at(key, 16), Some(4));
    }

    #[test]
    fn adaptive_pacer_backs_off_and_recovers() {
        let stats = std::sync::Arc::new(IoStats::default());
        let mut p = AdaptivePacer {
            stats: stats.clone(),
            duty: 0.25,
        };
        // No foreground I/O: full speed.
        assert_eq!(p.pause(Duration::from_millis(10)), Duration::ZERO);
        // Foreground at 1 ms without trimming: the baseline.
        stats.record(Instant::now());
        stats.latency_ns.store(1_000_000, Ordering::Relaxed);
        stats.baseline_ns.store(1_000_000, Ordering::Relaxed);
        let _ = p.pause(Duration::from_millis(10));
        let before = p.duty();
        // Foreground latency doubles: the share halves, the pause grows.
        stats.latency_ns.store(2_000_000, Ordering::Relaxed);
        let wait = p.pause(Duration::from_millis(10));
        assert!(p.duty() < before, "{} !< {before}", p.duty());
        assert!(wait >= Duration::from_millis(10), "{wait:?}");
        for _ in 0..50 {
            let _ = p.pause(Duration::from_millis(10));
        }
        assert!((p.duty() - AdaptivePacer::MIN_DUTY).abs() < 1e-9);
        // Latency back to normal: it grows again, capped.
        stats.latency_ns.store(1_000_000, Ordering::Relaxed);
        for _ in 0..100 {
            let _ = p.pause(Duration::from_millis(10));
        }
        assert!((p.duty() - AdaptivePacer::MAX_DUTY).abs() < 1e-9);
    }
}
