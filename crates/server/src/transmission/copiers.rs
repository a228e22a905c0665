//! A connection's copy threads: they run its large WRITEs (copy the
//! payload into the page cache and send the reply) while the reader goes
//! on reading.
//!
//! Why not the reader itself: while it copies 1 MiB (about 135 µs here)
//! it reads nothing, the client's 16 MiB in flight overflow the receive
//! buffer, the TCP window shuts, and the client and the kernel pay for the
//! zero windows, window updates and reordering that follow (BENCHMARKS.md,
//! "Where 1 MiB writes lose"). Why not the shared pool: it keeps no more
//! threads awake than there are CPUs and adds one only after a job waited
//! [`super::pool`]'s 200 µs, so large writes ran one at a time behind the
//! reader, at the pool's hand-off cost, no faster than on the reader.
//!
//! Here, as in nbdkit (which runs 16 threads per connection, each reading,
//! writing and answering one request), several threads per connection copy
//! at once: one large write per thread, up to [`COPIERS`], started as its
//! large writes need them and ended with the connection or after
//! [`IDLE_EXIT`] without a job. A job is one queue push; a thread is woken
//! only if one is waiting, and a thread that finishes a job takes the next
//! one without sleeping.
//!
//! A job never waits for the client (replies are sent without blocking,
//! see `sink`), so dropping the handle lets the threads finish what is
//! queued and end.
//!
//! The threads of all connections together are capped ([`Budget`],
//! [`COPIERS_PER_CPU`] per CPU): a copy is CPU work, so more threads than
//! that add no speed, only stacks and scheduling (the server accepts 1024
//! connections). A connection that gets no thread at all hands its large
//! writes back ([`Copiers::submit`] returns them) for the shared pool.

use super::pool::Job;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;
use tracing::{debug, error};

/// Copy threads per connection. Measured with 1 MiB writes at QD16 on 2
/// CPUs against running them on the reader: 1 thread 0.95× (it became the
/// bottleneck, the CPUs sat idle), 2 1.05×, 3 1.14×; 4 another 1.05× over
/// 3, 8 the same as 4 (BENCHMARKS.md).
pub(crate) const COPIERS: usize = 4;

/// Copy threads of all connections together, per CPU this process may
/// use (at least [`COPIERS`] in all).
pub(crate) const COPIERS_PER_CPU: usize = 8;

/// How many copy threads may run, all connections together, and how many
/// do.
#[derive(Debug)]
pub(crate) struct Budget {
    max: usize,
    live: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            live: AtomicUsize::new(0),
        }
    }

    /// Takes a thread's place if one is free.
    fn reserve(&self) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }

    /// Copy threads running now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// The most that may run.
    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

/// The process-wide budget.
pub(crate) fn budget() -> &'static Arc<Budget> {
    static BUDGET: OnceLock<Arc<Budget>> = OnceLock::new();
    BUDGET.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Budget::new((cpus * COPIERS_PER_CPU).max(COPIERS)))
    })
}

/// Gives a thread's place back when the thread ends, however it ends.
struct Place(Arc<Budget>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A copy thread with nothing to do for this long ends, giving its place
/// in the [`Budget`] back (a connection that stopped writing does not keep
/// threads other connections could use).
const IDLE_EXIT: Duration = Duration::from_secs(2);

/// The copy threads of one connection; they end when this is dropped,
/// after the jobs already queued, or after [`IDLE_EXIT`] without a job.
pub(crate) struct Copiers {
    shared: Arc<Shared>,
    budget: Arc<Budget>,
    /// Most threads at once.
    max: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    idle_exit: Duration,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads running (each holds a place in the budget).
    threads: usize,
    /// Of those, threads waiting for a job.
    idle: usize,
    /// The connection is done: threads end once the queue is empty.
    closed: bool,
}

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // Jobs run outside the lock and catch their panics: a poisoned lock
    // can only come from a bug here, and the queue is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Copiers {
    /// Up to `max` threads for one connection, out of `budget`.
    pub(crate) fn new(max: usize, budget: Arc<Budget>) -> Self {
        Self::with_idle_exit(max, budget, IDLE_EXIT)
    }

    fn with_idle_exit(max: usize, budget: Arc<Budget>, idle_exit: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                wake: Condvar::new(),
                idle_exit,
            }),
            budget,
            max: max.max(1),
        }
    }

    /// Queues `job`; wakes a waiting thread, or starts one if none waits,
    /// fewer than the most are running and the budget has room. If no
    /// thread can be started, the job waits for a running one; with none
    /// running at all it is handed back, for the caller to run elsewhere.
    #[must_use = "a job handed back must still be run"]
    pub(crate) fn submit(&mut self, job: Job) -> Option<Job> {
        let mut q = lock(&self.shared.queue);
        q.jobs.push_back(job);
        if q.idle > 0 {
            drop(q);
            self.shared.wake.notify_one();
            return None;
        }
        if q.threads >= self.max {
            return None;
        }
        if !self.budget.reserve() {
            if q.threads == 0 {
                debug!("no copy thread free in the process; the write goes to the pool");
                return q.jobs.pop_back();
            }
            return None;
        }
        q.threads += 1;
        drop(q);
        let place = Place(self.budget.clone());
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("vdisk-copy".into())
            .spawn(move || {
                let _place = place;
                shared.work();
            });
        // On failure the closure, and with it the place, is dropped.
        let Err(e) = spawned else { return None };
        let mut q = lock(&self.shared.queue);
        q.threads -= 1;
        if q.threads == 0 {
            error!(error = %e, "cannot start a copy thread; the write goes to the pool");
            // Only this reader queues, and a thread leaves only an empty
            // queue: the job is still the last one.
            return q.jobs.pop_back();
        }
        error!(error = %e, "cannot start another copy thread");
        None
    }

    /// Threads running now.
    #[cfg(test)]
    fn threads(&self) -> usize {
        lock(&self.shared.queue).threads
    }
}

impl Drop for Copiers {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_all();
    }
}

impl Shared {
    fn work(&self) {
        let mut q = lock(&self.queue);
        loop {
            if let Some(job) = q.jobs.pop_front() {
                drop(q);
                job.run_caught(false);
                q = lock(&self.queue);
                continue;
            }
            if q.closed {
                break;
            }
            q.idle += 1;
            let (guard, waited) = self
                .wake
                .wait_timeout(q, self.idle_exit)
                .unwrap_or_else(PoisonError::into_inner);
            q = guard;
            q.idle -= 1;
            if waited.timed_out() && q.jobs.is_empty() {
                break;
            }
        }
        // Under the lock: `submit` counts on a leaving thread being gone.
        q.threads -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    fn job(f: impl FnOnce() + Send + 'static) -> Job {
        Job {
            key: 1,
            bytes: 1 << 20,
            quick: false,
            may_inline: true,
            run: Box::new(move |_| f()),
        }
    }

    /// A job that counts itself done in `done`.
    fn counted(done: &Arc<AtomicUsize>) -> Job {
        let done = done.clone();
        job(move || {
            done.fetch_add(1, Ordering::SeqCst);
        })
    }

    /// Longer than any test: threads do not end on their own meanwhile.
    const LONG: Duration = Duration::from_secs(600);

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn jobs_run_at_once_on_up_to_max_threads_named_for_it() {
        let mut c = Copiers::with_idle_exit(3, Arc::new(Budget::new(8)), LONG);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let names = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..6 {
            let (running, peak, done, names) =
                (running.clone(), peak.clone(), done.clone(), names.clone());
            assert!(c
                .submit(job(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    names
                        .lock()
                        .unwrap()
                        .push(std::thread::current().name().map(str::to_owned));
                    std::thread::sleep(Duration::from_millis(50));
                    running.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                }))
                .is_none());
        }
        wait_for("jobs never ran", || done.load(Ordering::SeqCst) == 6);
        assert_eq!(peak.load(Ordering::SeqCst), 3, "not three at once");
        assert_eq!(c.threads(), 3);
        assert!(names
            .lock()
            .unwrap()
            .iter()
            .all(|n| n.as_deref() == Some("vdisk-copy")));
        // Idle threads are woken, not added to (below the most, too).
        let mut c = Copiers::with_idle_exit(3, Arc::new(Budget::new(8)), LONG);
        let done = Arc::new(AtomicUsize::new(0));
        for n in 1..=3 {
            assert!(c.submit(counted(&done)).is_none());
            wait_for("job after idle never ran", || {
                done.load(Ordering::SeqCst) == n
            });
            assert_eq!(c.threads(), 1);
        }
    }

    #[test]
    fn queued_jobs_still_run_after_the_handle_is_dropped() {
        let mut c = Copiers::new(1, Arc::new(Budget::new(8)));
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..4 {
            let done = done.clone();
            assert!(c
                .submit(job(move || {
                    std::thread::sleep(Duration::from_millis(10));
                    done.fetch_add(1, Ordering::SeqCst);
                }))
                .is_none());
        }
        drop(c);
        wait_for("queued jobs lost", || done.load(Ordering::SeqCst) == 4);
    }

    #[test]
    fn a_panicking_job_does_not_end_its_thread() {
        let mut c = Copiers::with_idle_exit(1, Arc::new(Budget::new(8)), LONG);
        assert!(c.submit(job(|| panic!("engine bug"))).is_none());
        let done = Arc::new(AtomicUsize::new(0));
        assert!(c.submit(counted(&done)).is_none());
        wait_for("thread died with the panic", || {
            done.load(Ordering::SeqCst) == 1
        });
        assert_eq!(c.threads(), 1);
    }

    #[test]
    fn the_budget_caps_threads_of_all_connections_and_hands_jobs_back() {
        let budget = Arc::new(Budget::new(2));
        let mut a = Copiers::with_idle_exit(4, budget.clone(), LONG);
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let started = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let (gate, started) = (gate.clone(), started.clone());
            assert!(a
                .submit(job(move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.lock().unwrap().recv();
                }))
                .is_none());
        }
        wait_for("two jobs never started", || {
            started.load(Ordering::SeqCst) == 2
        });
        assert_eq!(a.threads(), 2, "more threads than the budget");
        assert_eq!(budget.live(), 2);

        // Another connection gets no thread: its job comes back, unrun.
        let mut b = Copiers::with_idle_exit(4, budget.clone(), LONG);
        let ran = Arc::new(AtomicUsize::new(0));
        let back = b
            .submit(counted(&ran))
            .expect("a job with no thread to run it was kept");
        assert_eq!(b.threads(), 0);

        // Once the first connection is gone, its places are free again.
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        drop(a);
        wait_for("places never given back", || budget.live() == 0);
        assert!(b.submit(back).is_none());
        wait_for("job never ran", || ran.load(Ordering::SeqCst) == 1);
        assert_eq!(started.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn idle_threads_end_and_give_their_place_back() {
        let budget = Arc::new(Budget::new(1));
        let mut c = Copiers::with_idle_exit(2, budget.clone(), Duration::from_millis(20));
        let done = Arc::new(AtomicUsize::new(0));
        for round in 1..=2 {
            assert!(c.submit(counted(&done)).is_none());
            wait_for("job never ran", || done.load(Ordering::SeqCst) == round);
            wait_for("idle thread never ended", || {
                c.threads() == 0 && budget.live() == 0
            });
        }
    }
}
