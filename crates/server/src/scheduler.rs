//! The daemon's snapshot scheduler (incident 5: scheduled snapshots with
//! retention are a feature of the store, not a cron script around it).
//!
//! One task: it reads the schedules (`vdisk_engine::schedule`), runs those
//! that are due one after the other, then sleeps until the earliest next
//! run, until woken (a command through the API may have changed the
//! schedules), or until shutdown. Each run is a job (`snap schedule`,
//! `pool/image`) in the registry, so `vdisk status` shows it, and its
//! outcome is stored in the schedule's record (`snap schedule status`).
//! A run is blocking engine work ([`vdisk_engine::Store::schedule_run`]:
//! `snap_create`, then `snap_remove` for retention), done on tokio's
//! blocking pool; no lock is held across it.
//!
//! Time comes from a [`Clock`]: [`SystemClock`] in production,
//! [`ManualClock`] in tests, which move time by hand and never sleep.

use crate::api::types::{kind_name, CommandReply, ErrorBody};
use crate::registry::Registry;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use vdisk_engine::schedule::{format_duration, RunReport, ScheduleRecord};
use vdisk_engine::{ErrorKind, Store};

/// The job kind of a scheduled run in `vdisk status`.
pub const JOB_KIND: &str = "snap schedule";

/// After the schedules could not be read, how long before trying again
/// (seconds of the clock).
const RETRY_SECS: u64 = 60;

/// The longest sleep between two readings of the schedules, whatever they
/// say: a safety net for changes that did not wake the scheduler (every
/// command through the API wakes it; in-process users of the store do
/// not).
const RECHECK_SECS: u64 = 600;

/// A future the scheduler waits on.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where the scheduler's time comes from.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Now, in seconds since the Unix epoch.
    fn now(&self) -> u64;
    /// Completes when [`Clock::now`] has reached `t`, or earlier (the
    /// scheduler re-checks what is due whenever it wakes).
    fn sleep_until(&self, t: u64) -> Sleep;
}

/// The system's clock. Sleeps at most a minute at a time, so a clock set
/// forward (or a machine resumed from suspend) is noticed within a
/// minute.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        vdisk_engine::now()
    }

    fn sleep_until(&self, t: u64) -> Sleep {
        let secs = t.saturating_sub(self.now()).min(60);
        Box::pin(tokio::time::sleep(Duration::from_secs(secs)))
    }
}

/// A clock moved by hand (tests): sleepers wake when it is set.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<u64>,
}

impl ManualClock {
    /// A clock showing `now`.
    pub fn new(now: u64) -> Self {
        ManualClock {
            now: watch::Sender::new(now),
        }
    }

    /// Sets the time (it may go back, as a real clock may).
    pub fn set(&self, now: u64) {
        self.now.send_replace(now);
    }

    /// Moves the time forward by `secs`.
    pub fn advance(&self, secs: u64) {
        self.now.send_modify(|n| *n = n.saturating_add(secs));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        *self.now.borrow()
    }

    fn sleep_until(&self, t: u64) -> Sleep {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|n| *n >= t).await;
        })
    }
}

/// The running scheduler.
#[derive(Debug)]
pub(crate) struct Scheduler {
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Scheduler {
    /// Starts the scheduler task on the current runtime.
    pub(crate) fn start(store: Store, registry: Registry, clock: Arc<dyn Clock>) -> Self {
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(store, registry, clock, wake.clone(), stopped));
        Scheduler { wake, stop, task }
    }

    /// What wakes the scheduler to re-read the schedules.
    pub(crate) fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Stops the task; a run in progress finishes first (its job is
    /// waited for like the others at shutdown).
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    store: Store,
    registry: Registry,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        if *stopped.borrow() {
            return;
        }
        let recheck = clock.now().saturating_add(RECHECK_SECS);
        let sleep = match pass(&store, &registry, clock.as_ref(), &stopped).await {
            Ok(Some(t)) => {
                debug!(
                    in_secs = t.saturating_sub(clock.now()),
                    "next scheduled snapshot"
                );
                clock.sleep_until(t.min(recheck))
            }
            Ok(None) => clock.sleep_until(recheck),
            Err(e) => {
                // Not in a loop: a failing metadata store is retried later.
                warn!(error = %e, "snapshot schedules: {e}; retrying in {RETRY_SECS} s");
                clock.sleep_until(clock.now().saturating_add(RETRY_SECS))
            }
        };
        tokio::select! {
            changed = stopped.changed() => if changed.is_err() { return },
            () = wake.notified() => {}
            () = sleep => {}
        }
    }
}

/// Runs what is due; returns when the earliest schedule runs next.
async fn pass(
    store: &Store,
    registry: &Registry,
    clock: &dyn Clock,
    stopped: &watch::Receiver<bool>,
) -> Result<Option<u64>, String> {
    let now = clock.now();
    let s = store.clone();
    let due = blocking(move || s.schedules_due(now)).await?;
    let mut failed = None;
    for rec in due {
        if *stopped.borrow() {
            return Ok(None);
        }
        if let Err(e) = run_one(store, registry, clock.now(), rec).await {
            failed = Some(e);
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let now = clock.now();
    let s = store.clone();
    blocking(move || s.schedule_next_due(now)).await
}

/// Runs engine work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> vdisk_engine::Result<T> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("internal error: {e}")),
    }
}

/// Runs one schedule as a job. `Err`: its record could not be read or
/// written (the run's own failures are in its report).
async fn run_one(
    store: &Store,
    registry: &Registry,
    now: u64,
    rec: ScheduleRecord,
) -> Result<(), String> {
    let spec = rec.spec().to_string();
    let every = format_duration(rec.every);
    // Runs are sequential, so a job of this kind on this image is only
    // left over if a run outlived its task; run without one then.
    let job = registry.job_create(JOB_KIND, &spec).ok();
    if let Some(j) = &job {
        j.set_running();
    }
    let s = store.clone();
    let id = rec.id();
    let reg = registry.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        // Retention keeps snapshots that clients are reading (a backup):
        // their space would be trimmed under them.
        let in_use = |snap: &vdisk_engine::ImageSpec| {
            let image = crate::registry::ImageRef {
                pool: snap.pool.clone(),
                id: id.image_id,
            };
            let name = snap.to_string();
            let readers = reg
                .connections_to(&image)
                .into_iter()
                .filter(|c| c.export == name)
                .count();
            (readers > 0).then(|| format!("being read by {readers} client(s)"))
        };
        s.schedule_run_guarded(id, now, &in_use)
    })
    .await;
    let (reply, result) = match outcome {
        Ok(Ok(Some(report))) => {
            log_run(&report, &every);
            (reply_of(&report), Ok(()))
        }
        Ok(Ok(None)) => (
            CommandReply {
                stdout: format!("{spec}: not due any more (changed or removed meanwhile)\n"),
                ..CommandReply::default()
            },
            Ok(()),
        ),
        Ok(Err(e)) => {
            warn!(%spec, every = %every, error = %e, "scheduled snapshot failed");
            (
                CommandReply::failure(e.kind(), &e.to_string(), e.hint().as_deref()),
                Err(e.to_string()),
            )
        }
        Err(e) => {
            warn!(%spec, every = %every, error = %e, "scheduled snapshot panicked");
            (
                CommandReply::failure(
                    ErrorKind::Io,
                    "internal error: the scheduled run panicked in the daemon",
                    Some("see the daemon's log"),
                ),
                Err(e.to_string()),
            )
        }
    };
    if let Some(j) = job {
        j.finish(reply);
    }
    result
}

fn log_run(r: &RunReport, every: &str) {
    let res = &r.result;
    let skipped: Vec<String> = res
        .skipped
        .iter()
        .map(|s| format!("{} ({})", s.name, s.reason))
        .collect();
    if res.ok {
        info!(
            spec = %r.spec,
            every,
            snapshot = res.snapshot.as_deref().unwrap_or(""),
            missed = res.missed,
            removed = %res.removed.join(","),
            skipped = %skipped.join(", "),
            schedule_removed = r.schedule_removed,
            "scheduled snapshot taken"
        );
    } else {
        warn!(
            spec = %r.spec,
            every,
            snapshot = res.snapshot.as_deref().unwrap_or(""),
            error = res.error.as_deref().unwrap_or(""),
            disabled = r.disabled,
            "scheduled snapshot run failed"
        );
    }
}

/// The job's reply: one line saying what the run did.
fn reply_of(r: &RunReport) -> CommandReply {
    let res = &r.result;
    let mut line = match &res.snapshot {
        Some(s) => format!("{}@{s}", r.spec),
        None => format!("{}: no snapshot", r.spec),
    };
    if res.missed > 0 {
        line.push_str(&format!("; caught up {} missed run(s)", res.missed));
    }
    if !res.removed.is_empty() {
        line.push_str(&format!("; removed {}", res.removed.join(", ")));
    }
    for s in &res.skipped {
        line.push_str(&format!("; kept {} ({})", s.name, s.reason));
    }
    if r.schedule_removed {
        line.push_str("; the schedule was removed meanwhile");
    }
    line.push('\n');
    if res.ok {
        return CommandReply {
            stdout: line,
            ..CommandReply::default()
        };
    }
    let message = res.error.clone().unwrap_or_else(|| "the run failed".into());
    let kind = if r.disabled {
        ErrorKind::NotFound
    } else {
        ErrorKind::Io
    };
    CommandReply {
        exit_code: crate::api::types::exit_code(kind),
        stdout: line,
        stderr: format!("vdisk: error: {message}\n"),
        error: Some(ErrorBody {
            kind: kind_name(kind).into(),
            message,
            hint: None,
        }),
        job: None,
    }
}
