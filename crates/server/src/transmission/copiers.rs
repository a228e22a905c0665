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
//! at once: one large write per thread, up to [`COPIERS`], started on the
//! connection's first large write and ended with the connection. A job is
//! one queue push; a thread is woken only if one is waiting, and a thread
//! that finishes a job takes the next one without sleeping.
//!
//! A job never waits for the client (replies are sent without blocking,
//! see `sink`), so dropping the handle lets the threads finish what is
//! queued and end.

use super::pool::Job;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use tracing::error;

/// Copy threads per connection. Measured with 1 MiB writes at QD16 on 2
/// CPUs against running them on the reader: 1 thread 0.95× (it became the
/// bottleneck, the CPUs sat idle), 2 1.05×, 3 1.14×; 4 another 1.05× over
/// 3, 8 the same as 4 (BENCHMARKS.md).
pub(crate) const COPIERS: usize = 4;

/// The copy threads of one connection; they end when this is dropped,
/// after the jobs already queued.
pub(crate) struct Copiers {
    shared: Arc<Shared>,
    /// Threads started so far.
    started: usize,
    /// Most threads to start.
    max: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
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
    pub(crate) fn new(max: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                wake: Condvar::new(),
            }),
            started: 0,
            max: max.max(1),
        }
    }

    /// Queues `job`; wakes a waiting thread, or starts one if none waits
    /// and fewer than the most are running. If no thread can be started,
    /// the job waits for a running one (or, with none at all, runs here).
    pub(crate) fn submit(&mut self, job: Job) {
        let mut q = lock(&self.shared.queue);
        q.jobs.push_back(job);
        if q.idle > 0 {
            drop(q);
            self.shared.wake.notify_one();
            return;
        }
        if self.started >= self.max {
            return;
        }
        drop(q);
        let shared = self.shared.clone();
        match std::thread::Builder::new()
            .name("vdisk-copy".into())
            .spawn(move || shared.work())
        {
            Ok(_) => self.started += 1,
            Err(e) if self.started == 0 => {
                error!(error = %e, "cannot start a copy thread; running the write on the reader");
                let job = lock(&self.shared.queue).jobs.pop_back();
                if let Some(job) = job {
                    job.run_caught(false);
                }
            }
            Err(e) => error!(error = %e, "cannot start another copy thread"),
        }
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
                return;
            }
            q.idle += 1;
            q = self.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            q.idle -= 1;
        }
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

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn jobs_run_at_once_on_up_to_max_threads_named_for_it() {
        let mut c = Copiers::new(3);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let names = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..6 {
            let (running, peak, done, names) =
                (running.clone(), peak.clone(), done.clone(), names.clone());
            c.submit(job(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                names
                    .lock()
                    .unwrap()
                    .push(std::thread::current().name().map(str::to_owned));
                std::thread::sleep(Duration::from_millis(50));
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        wait_for("jobs never ran", || done.load(Ordering::SeqCst) == 6);
        assert_eq!(peak.load(Ordering::SeqCst), 3, "not three at once");
        assert_eq!(c.started, 3);
        assert!(names
            .lock()
            .unwrap()
            .iter()
            .all(|n| n.as_deref() == Some("vdisk-copy")));
        // Idle threads are woken, not added to.
        let done2 = done.clone();
        c.submit(job(move || {
            done2.fetch_add(1, Ordering::SeqCst);
        }));
        wait_for("job after idle never ran", || {
            done.load(Ordering::SeqCst) == 7
        });
        assert_eq!(c.started, 3);
    }

    #[test]
    fn queued_jobs_still_run_after_the_handle_is_dropped() {
        let mut c = Copiers::new(1);
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..4 {
            let done = done.clone();
            c.submit(job(move || {
                std::thread::sleep(Duration::from_millis(10));
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        drop(c);
        wait_for("queued jobs lost", || done.load(Ordering::SeqCst) == 4);
    }

    #[test]
    fn a_panicking_job_does_not_end_its_thread() {
        let mut c = Copiers::new(1);
        c.submit(job(|| panic!("engine bug")));
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        c.submit(job(move || {
            d.fetch_add(1, Ordering::SeqCst);
        }));
        wait_for("thread died with the panic", || {
            done.load(Ordering::SeqCst) == 1
        });
        assert_eq!(c.started, 1);
    }
}
