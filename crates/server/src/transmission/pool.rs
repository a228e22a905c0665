//! The engine workers: plain threads shared by every connection, fed from
//! one queue, and the spare buffers they and the readers reuse.
//!
//! Why not `spawn_blocking`: each call allocates a task and a join handle,
//! and its reply went back through a channel to a writer task, waking a
//! runtime worker per request; on a 2-core machine that handing back and
//! forth (about 19 futex calls per 4 KiB read) cost more than the engine
//! call itself. Here a request costs one queue push; a worker sends the
//! reply itself (see `sink`) and takes the next request without sleeping
//! while there is one.
//!
//! Waking a sleeping thread is the expensive part, so the pool wakes one
//! only when it must: when no worker is awake, or when the oldest queued
//! request has waited [`INJECT_AFTER`] and another thread would help:
//! fewer workers are awake than there are CPUs, or most recent jobs were
//! slow (beyond copying their bytes they took [`SLOW_JOB`]: they wait for
//! a disk, so more of them at once go faster), or no job started or ended
//! for that long (the awake workers are all stuck). Jobs that are quick but
//! queue up anyway are limited by the CPU, which more threads would not
//! add. So cached reads are served by as many threads as there are CPUs,
//! which rarely sleep, and a slow disk gets as many threads as it takes to
//! keep requests from waiting, up to [`MAX_WORKERS`].
//!
//! A request queued behind workers that are all stuck (an fsync, a cold
//! disk) must not wait for them when no other request comes to notice: a
//! watcher thread looks at the queue every [`TICK`] while the pool is busy
//! and adds a worker for a request that waited too long. After
//! [`WATCH_IDLE_TICKS`] ticks without work it stops watching; the next job
//! to start wakes one more thread to watch again.
//!
//! Replies are cheaper sent together (on loopback a send costs about what
//! the engine read does, whatever its size): a worker that sees the next
//! queued job is a quick one of the same connection tells the job it runs
//! that more follows, and that job leaves its reply for the next one to
//! send along (at most [`MAX_BATCH`] in a row, and only while jobs are
//! quick, so a reply never waits for a disk).
//!
//! Threads are started on demand and end after [`KEEP_ALIVE`] without
//! work. A job never waits for a client (replies are sent without
//! blocking), so a slow client cannot hold a worker.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tracing::error;

/// Engine calls running at once, all connections together (each
/// connection is also bounded by its own `max_in_flight`).
pub(crate) const MAX_WORKERS: usize = 128;

/// A request that waited this long in the queue gets another worker.
const INJECT_AFTER: Duration = Duration::from_micros(200);

/// Jobs that take this long (wall time, beyond [`NS_PER_BYTE`] for their
/// bytes) are waiting for I/O.
const SLOW_JOB: Duration = Duration::from_micros(50);

/// Time allowed per byte of a job's data for copying it around (in and
/// out of the page cache and the socket): 2 GB/s.
const NS_PER_BYTE: f64 = 0.5;

/// How often the watcher looks at the queue.
const TICK: Duration = Duration::from_millis(1);

/// The watcher stops after this many ticks without a job started or
/// running.
const WATCH_IDLE_TICKS: u32 = 50;

/// How long a worker with nothing to do waits before it ends.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Most replies held back in a row for the next job to send along.
const MAX_BATCH: u32 = 16;

/// One request's work: runs the engine call and sends the reply.
pub(crate) struct Job {
    /// Which connection (jobs with the same key may batch their replies).
    pub key: usize,
    /// Bytes the job moves (READ or WRITE length).
    pub bytes: u32,
    /// A small read or write: done in microseconds when cached.
    pub quick: bool,
    /// The reader may run it itself (`Inline`): nothing in it waits for a
    /// disk when the data is cached (a quick request or a large write, not
    /// FUA).
    pub may_inline: bool,
    /// Runs it; the argument says a quick job of the same connection is
    /// next in line (its reply may wait for that one's).
    pub run: Box<dyn FnOnce(bool) + Send + 'static>,
}

impl Job {
    /// Runs it (`more` as for [`Job::run`]). `run` answers the client even
    /// if the engine panics; this catch only keeps a panic that escapes it
    /// from taking the calling thread down.
    pub(crate) fn run_caught(self, more: bool) {
        let run = self.run;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(more)));
    }
}

/// The process-wide pool.
pub(crate) fn workers() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(MAX_WORKERS))
}

#[derive(Debug)]
pub(crate) struct Pool {
    state: Mutex<State>,
    wake: Condvar,
    max: usize,
    /// CPUs this process may use.
    cpus: usize,
}

#[derive(Default)]
struct State {
    /// Jobs, with the time they were queued.
    queue: VecDeque<(Job, Instant)>,
    /// Threads alive (the watcher included).
    threads: usize,
    /// Threads waiting for work (the watcher not included).
    idle: usize,
    /// Of those, how many were woken and have not looked at the queue yet.
    waking: usize,
    /// A thread is watching.
    watcher: bool,
    /// A thread was woken to watch: the next to find no work does.
    want_watcher: bool,
    /// Jobs started so far (the watcher's sign of activity).
    started: u64,
    /// When a job last started or ended.
    progress: Option<Instant>,
    /// Share of recent jobs that were slow (see [`SLOW_JOB`]), out of
    /// 1024 (a moving average: a majority vote that a few jobs stretched
    /// by preemption do not swing, unlike an average of their times).
    slow_share: u32,
}

impl State {
    /// Threads running a job, about to look at the queue, or woken to.
    fn awake(&self) -> usize {
        self.threads - self.idle - usize::from(self.watcher) + self.waking
    }

    /// The oldest job waited too long, and another thread would help.
    fn stuck(&self, now: Instant, cpus: usize) -> bool {
        let Some((_, queued)) = self.queue.front() else {
            return false;
        };
        let since = |t: Instant| now.saturating_duration_since(t) >= INJECT_AFTER;
        since(*queued)
            && (self.awake() < cpus || self.slow_share > 512 || self.progress.is_none_or(since))
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("queued", &self.queue.len())
            .field("threads", &self.threads)
            .field("idle", &self.idle)
            .field("watcher", &self.watcher)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Jobs run outside the lock and catch their panics: a poisoned lock
    // can only come from a bug here, and the state is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    fn new(max: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            max,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Threads alive (busy, idle or watching) and the most there may be.
    pub(crate) fn threads(&self) -> (usize, usize) {
        (lock(&self.state).threads, self.max)
    }

    /// Queues `jobs` (leaving the vector empty); wakes or starts a worker
    /// if no awake one will take them soon enough.
    pub(crate) fn submit(&'static self, jobs: &mut Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut st = lock(&self.state);
        st.queue.extend(jobs.drain(..).map(|job| (job, now)));
        if st.awake() == 0 || st.stuck(now, self.cpus) {
            drop(self.add_worker(st));
        }
    }

    /// Wakes an idle worker, or starts one.
    fn add_worker<'a>(&'static self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        if st.idle > st.waking {
            st.waking += 1;
            self.wake.notify_one();
        } else if st.threads < self.max {
            st.threads += 1;
            let started = std::thread::Builder::new()
                .name("vdisk-io".into())
                .spawn(move || self.work());
            if let Err(e) = started {
                // The queued job still runs once a worker frees up.
                st.threads -= 1;
                error!(error = %e, threads = st.threads, "cannot start an engine worker");
            }
        }
        st
    }

    fn work(&'static self) {
        let mut st = lock(&self.state);
        // Replies held back in a row.
        let mut batch = 0;
        loop {
            // A thread woken to watch does, even with jobs queued (the
            // one woken with it takes those).
            if st.want_watcher && !st.watcher {
                st = self.watch(st);
                continue;
            }
            if let Some((job, _)) = st.queue.pop_front() {
                st.started += 1;
                let more = job.quick
                    && batch < MAX_BATCH
                    && st.slow_share <= 512
                    && st
                        .queue
                        .front()
                        .is_some_and(|(next, _)| next.key == job.key && next.quick);
                batch = if more { batch + 1 } else { 0 };
                let start = Instant::now();
                st.progress = Some(start);
                if st.stuck(start, self.cpus) {
                    st = self.add_worker(st);
                }
                if !st.watcher && !st.want_watcher {
                    // Running jobs need a watcher (see the module doc).
                    st.want_watcher = true;
                    st = self.add_worker(st);
                }
                drop(st);
                // Caught, the thread count stays right.
                let bytes = job.bytes;
                job.run_caught(more);
                let end = Instant::now();
                let copying = Duration::from_nanos((f64::from(bytes) * NS_PER_BYTE) as u64);
                let slow = end.duration_since(start) >= SLOW_JOB + copying;
                st = lock(&self.state);
                st.progress = Some(end);
                // Over the last 8 jobs or so.
                st.slow_share = st.slow_share - st.slow_share / 8 + if slow { 128 } else { 0 };
                continue;
            }
            if !st.watcher && st.awake() > 1 {
                st = self.watch(st);
                continue;
            }
            st.idle += 1;
            let (guard, timeout) = self
                .wake
                .wait_timeout(st, KEEP_ALIVE)
                .unwrap_or_else(PoisonError::into_inner);
            st = guard;
            st.idle -= 1;
            if st.waking > 0 {
                st.waking -= 1;
            } else if timeout.timed_out() && st.queue.is_empty() {
                st.threads -= 1;
                return;
            }
        }
    }

    /// Watches the queue until the pool has been idle a while.
    fn watch<'a>(&'static self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.watcher = true;
        st.want_watcher = false;
        let (mut seen, mut idle_ticks) = (st.started, 0);
        loop {
            drop(st);
            std::thread::sleep(TICK);
            st = lock(&self.state);
            if st.stuck(Instant::now(), self.cpus) {
                if st.idle == st.waking && st.threads == self.max {
                    // No thread to add: run it (and stop watching).
                    st.watcher = false;
                    return st;
                }
                st = self.add_worker(st);
            }
            if st.started == seen && st.awake() == 0 && st.queue.is_empty() {
                idle_ticks += 1;
                if idle_ticks >= WATCH_IDLE_TICKS {
                    st.watcher = false;
                    return st;
                }
            } else {
                idle_ticks = 0;
            }
            seen = st.started;
        }
    }
}

/// Spare buffers for replies and WRITE payloads, so a steady stream of
/// requests neither allocates nor zeroes memory. A buffer's `len()` is how
/// much of it is initialized, not what it holds: users track that length
/// themselves and only ever grow buffers ([`ensure_len`]), so zeroing is
/// paid once per buffer, not per request.
#[derive(Debug)]
pub(crate) struct Buffers {
    spare: Mutex<Spare>,
}

#[derive(Debug, Default)]
struct Spare {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

/// Most bytes of spare buffers kept, all connections together.
const SPARE_BYTES: usize = 64 << 20;
/// Larger buffers are not kept.
const SPARE_MAX_BUFFER: usize = 8 << 20;
/// Most spare buffers kept.
const SPARE_COUNT: usize = 256;

/// The process-wide spare buffers.
pub(crate) fn buffers() -> &'static Buffers {
    static BUFFERS: OnceLock<Buffers> = OnceLock::new();
    BUFFERS.get_or_init(|| Buffers {
        spare: Mutex::new(Spare::default()),
    })
}

impl Buffers {
    /// A spare buffer, preferably one with `want` bytes initialized
    /// already (else the largest of the few looked at).
    pub(crate) fn take(&self, want: usize) -> Vec<u8> {
        let mut sp = lock(&self.spare);
        let n = sp.bufs.len();
        // Most recently returned first; a few looks at most.
        let recent = n.saturating_sub(8)..n;
        let pick = recent
            .clone()
            .rev()
            .find(|&i| sp.bufs[i].len() >= want)
            .or_else(|| recent.max_by_key(|&i| sp.bufs[i].len()));
        match pick {
            Some(i) => {
                let b = sp.bufs.swap_remove(i);
                sp.bytes -= b.capacity();
                b
            }
            None => Vec::new(),
        }
    }

    /// A buffer with at least `len` bytes initialized.
    pub(crate) fn get(&self, len: usize) -> Vec<u8> {
        let mut buf = self.take(len);
        ensure_len(&mut buf, len);
        buf
    }

    /// Gives a buffer back for reuse.
    pub(crate) fn put(&self, buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap == 0 || cap > SPARE_MAX_BUFFER {
            return;
        }
        let mut sp = lock(&self.spare);
        if sp.bufs.len() < SPARE_COUNT && sp.bytes + cap <= SPARE_BYTES {
            sp.bytes += cap;
            sp.bufs.push(buf);
        }
    }
}

/// Makes at least `len` bytes of `buf` initialized, zeroing only bytes it
/// never had; never shrinks it.
pub(crate) fn ensure_len(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

/// Alignment of data the kernel copies into or out of a buffer (READ data
/// from the page cache, WRITE payloads to it). `rep movsb`, which the
/// kernel copies with, runs at about half speed when the destination is
/// not aligned to the source's cache lines: a READ reply's data right after
/// its 20-byte chunk header made 1 MiB sequential reads 1.6× as expensive.
pub(crate) const DATA_ALIGN: usize = 4096;

/// The offset in `buf` at or after `at` whose address is a multiple of
/// [`DATA_ALIGN`]. `buf` must not be reallocated afterwards (make it long
/// enough first: `at + DATA_ALIGN` plus the data).
pub(crate) fn aligned_offset(buf: &[u8], at: usize) -> usize {
    let addr = buf.as_ptr() as usize + at;
    at + (DATA_ALIGN - addr % DATA_ALIGN) % DATA_ALIGN
}

/// Copies `bytes` to the front of `buf` (growing it if needed); returns
/// their length.
pub(crate) fn put_front(buf: &mut Vec<u8>, bytes: &[u8]) -> usize {
    ensure_len(buf, bytes.len());
    buf[..bytes.len()].copy_from_slice(bytes);
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};

    fn job(f: impl FnOnce() + Send + 'static) -> Job {
        Job {
            key: 0,
            bytes: 0,
            quick: false,
            may_inline: false,
            run: Box::new(move |_| f()),
        }
    }

    #[test]
    fn every_job_runs() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new(4)));
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        for _ in 0..1000 {
            let done = done.clone();
            let tx = tx.clone();
            pool.submit(&mut vec![job(move || {
                if done.fetch_add(1, Ordering::SeqCst) == 999 {
                    tx.send(()).unwrap();
                }
            })]);
        }
        rx.recv_timeout(Duration::from_secs(20))
            .expect("all jobs ran");
        assert!(lock(&pool.state).threads <= 4);
    }

    #[test]
    fn jobs_run_in_parallel() {
        // Four jobs that each wait for all four to have started.
        let pool: &'static Pool = Box::leak(Box::new(Pool::new(4)));
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let (tx, rx) = mpsc::channel();
        for _ in 0..4 {
            let (barrier, tx) = (barrier.clone(), tx.clone());
            pool.submit(&mut vec![job(move || {
                barrier.wait();
                tx.send(()).unwrap();
            })]);
        }
        for _ in 0..4 {
            rx.recv_timeout(Duration::from_secs(20)).expect("ran");
        }
    }

    #[test]
    fn a_job_behind_stuck_ones_runs() {
        // Two jobs block until told; a third, submitted while they block
        // and with nothing submitted after it, must still run.
        let pool: &'static Pool = Box::leak(Box::new(Pool::new(8)));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        for _ in 0..2 {
            let rx = release_rx.clone();
            pool.submit(&mut vec![job(move || {
                let _ = rx.lock().unwrap().recv();
            })]);
        }
        std::thread::sleep(Duration::from_millis(20));
        let (tx, rx) = mpsc::channel();
        pool.submit(&mut vec![job(move || tx.send(()).unwrap())]);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the job behind the stuck ones ran");
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
    }

    #[test]
    fn buffers_keep_their_bytes() {
        let b = Buffers {
            spare: Mutex::new(Spare::default()),
        };
        let mut v = b.get(10);
        assert_eq!(v.len(), 10);
        v.fill(7);
        b.put(v);
        // Never cut: the bytes stay initialized for the next user.
        let v = b.get(4);
        assert_eq!(v, [7; 10]);
        b.put(v);
        let mut v = b.get(20);
        assert_eq!(v.len(), 20);
        assert_eq!(put_front(&mut v, &[1, 2]), 2);
        assert_eq!(v[..3], [1, 2, 7]);
        b.put(vec![0; SPARE_MAX_BUFFER + 1]);
        assert_eq!(lock(&b.spare).bufs.len(), 0);
    }
}
