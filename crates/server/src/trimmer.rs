//! The daemon's trimmer (incident 5): releases the data that snapshot
//! removal and rollback queued (see `vdisk_engine`'s `trim.rs`), one image
//! at a time, as a job visible in `vdisk status` with progress, paced by
//! the foreground's latency ([`vdisk_engine::AdaptivePacer`]).
//!
//! It is a plain thread: trimming is blocking engine work, and nothing in
//! the async runtime (NBD replies, the management API, a VM's flush) ever
//! waits for it. Stopping is prompt: the pacer's pauses and each data
//! operation check the stop flag; what is left stays queued and resumes at
//! the next start.

use crate::api::types::{kind_name, CommandReply, ErrorBody};
use crate::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{info, warn};
use vdisk_engine::Store;

/// How long the trimmer sleeps when nothing wakes it (a safety net: every
/// operation that queues data wakes it).
const IDLE_WAIT: Duration = Duration::from_secs(30);

/// After a failed pass, how long before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct Trimmer {
    store: Store,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Trimmer {
    /// Puts `store` in background-trimming mode and starts the thread,
    /// which first releases whatever an earlier run left queued.
    pub(crate) fn start(store: Store, registry: Registry) -> Self {
        store.set_background_trim(true);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("vdisk-trim".into())
            .spawn({
                let (store, stop) = (store.clone(), stop.clone());
                move || run(&store, &registry, &stop)
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                // Removal still works; the space waits for a restart or
                // `vdisk check --repair`.
                warn!(error = %e, "cannot start the trimmer thread; queued space is not released");
                store.set_background_trim(false);
                None
            }
        };
        Self {
            store,
            stop,
            thread,
        }
    }

    /// Stops the thread (blocking until its current data operation ends).
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.store.notify_trimmer();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(store: &Store, registry: &Registry, stop: &AtomicBool) {
    let stopping = || stop.load(Ordering::SeqCst) || store.trim_paused();
    while !stop.load(Ordering::SeqCst) {
        if store.trim_paused() {
            store.wait_for_trim_work(IDLE_WAIT);
            continue;
        }
        let failed = match store.trim_targets() {
            Ok(targets) => targets
                .iter()
                .take_while(|_| !stopping())
                .any(|t| !trim_one(store, registry, t, &stopping)),
            Err(e) => {
                warn!(error = %e, "cannot read the trimming queue");
                true
            }
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if !store.trim_paused() {
            store.wait_for_trim_work(if failed { RETRY_AFTER } else { IDLE_WAIT });
        }
    }
}

/// Trims one image as a job; false if it failed.
fn trim_one(
    store: &Store,
    registry: &Registry,
    t: &vdisk_engine::TrimTarget,
    stopping: &dyn Fn() -> bool,
) -> bool {
    let job = match registry.job_create("trim", &t.spec) {
        Ok(job) => job,
        Err(why) => {
            warn!(spec = %t.spec, %why, "trim job not started");
            return false;
        }
    };
    job.set_running();
    let mut pacer = store.adaptive_pacer();
    let result = store.trim_image(t, &mut pacer, &job, stopping);
    let reply = match result {
        Ok(done) => {
            let msg = if done < t.ops && stopping() {
                format!(
                    "released {done} of {} queued data operation(s); the rest stays queued (trimming paused or the daemon stopping)\n",
                    t.ops
                )
            } else {
                format!("released {done} queued data operation(s)\n")
            };
            info!(spec = %t.spec, done, "trimmed");
            CommandReply {
                exit_code: 0,
                stdout: msg,
                stderr: String::new(),
                error: None,
                job: Some(job.id()),
            }
        }
        Err(e) => {
            warn!(spec = %t.spec, error = %e, "trimming failed; retrying later");
            CommandReply {
                exit_code: 1,
                stdout: String::new(),
                stderr: format!("vdisk: error: {e}\n"),
                error: Some(ErrorBody {
                    kind: kind_name(e.kind()).into(),
                    message: e.to_string(),
                    hint: Some("the data stays queued; the daemon retries, `vdisk check` shows the backlog".into()),
                }),
                job: Some(job.id()),
            }
        }
    };
    let ok = reply.exit_code == 0;
    job.finish(reply);
    ok
}
