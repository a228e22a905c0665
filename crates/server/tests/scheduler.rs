//! The daemon's snapshot scheduler (issue 5, item 3) on an in-process
//! server whose clock is a [`ManualClock`]: time moves when the test says
//! so, nothing waits for a schedule's interval. What is checked: runs at
//! the slots, retention, a run per slot only, each run a job in `status`,
//! a restart after downtime catches up once, and a command through the API
//! wakes the scheduler.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use vdisk_engine::schedule::ScheduleRecord;
use vdisk_engine::{CreateOptions, ImageSpec, Store};
use vdisk_server::api::types::{CommandReply, CommandRequest, JobState, StatusReport};
use vdisk_server::api::{Client, CommandEnv, CommandHandler, Prepared};
use vdisk_server::{Limits, ManualClock, ServeConfig, Server};

const H: u64 = 3600;
/// 2024-01-01T00:00:00Z.
const T0: u64 = 1_704_067_200;

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s).expect("spec")
}

/// A test command for `POST /v1/commands`: adds a schedule on `rbd/late`
/// as if the clock had been 100 h ahead, so it is due at once; only a
/// scheduler woken by the command notices it before the clock moves.
#[derive(Debug)]
struct AddLateSchedule {
    clock: Arc<ManualClock>,
}

impl CommandHandler for AddLateSchedule {
    fn prepare(&self, _: CommandRequest) -> Result<Prepared, Box<CommandReply>> {
        let now = vdisk_server::Clock::now(self.clock.as_ref());
        Ok(Prepared {
            job: None,
            run: Box::new(move |env: CommandEnv| {
                env.store
                    .schedule_add(&spec("late"), H, None, now + 100 * H)
                    .expect("add");
                CommandReply::default()
            }),
        })
    }
}

/// A server on `dir` with `clock`, in its own runtime thread.
struct Daemon {
    store: Store,
    api: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<vdisk_server::Result<()>>>,
}

impl Daemon {
    fn start(dir: &Path, clock: Arc<ManualClock>) -> Daemon {
        let store = Store::open_dir(&dir.join("data"), "scheduler tests").expect("store");
        let api = dir.join("data/api.sock");
        let cfg = ServeConfig {
            listen: vec![],
            socket: Some(dir.join("nbd.sock")),
            limits: Limits::default(),
            shared: false,
            api_socket: Some(api.clone()),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let mut server = rt.block_on(Server::bind(store.clone(), cfg)).expect("bind");
        server.set_clock(clock.clone());
        server.set_command_handler(Arc::new(AddLateSchedule { clock }));
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(server.serve(async {
                let _ = rx.await;
            }))
        });
        Daemon {
            store,
            api,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.api).expect("API answers")
    }

    fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread").expect("serve");
        }
    }
}

/// Polls until `ok` holds for the schedule of `image` (real time, bounded:
/// the scheduler works in the background once the clock moved).
fn schedule_until(
    store: &Store,
    image: &str,
    what: &str,
    ok: impl Fn(&ScheduleRecord) -> bool,
) -> ScheduleRecord {
    let start = Instant::now();
    loop {
        let l = store.schedule_list(Some(&spec(image))).expect("ls");
        if let Some(r) = l.into_iter().next().filter(|r| ok(r)) {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the schedule of {image} never showed {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn jobs_until(api: &Client, n: usize) -> StatusReport {
    let start = Instant::now();
    loop {
        let s = api.status(None).expect("status");
        let done = s
            .jobs
            .iter()
            .filter(|j| j.kind == "snap schedule" && j.state.is_finished())
            .count();
        if done >= n {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never {n} finished schedule jobs: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn snap_names(store: &Store, image: &str) -> Vec<String> {
    store
        .snap_list(&spec(image))
        .expect("snap ls")
        .into_iter()
        .map(|s| s.name)
        .collect()
}

#[test]
fn the_daemon_runs_schedules_keeps_n_and_catches_up_once_after_downtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0 + 1800));
    {
        let store = Store::open_dir(&dir.path().join("data"), "setup").expect("store");
        store
            .create(
                &spec("vm"),
                &CreateOptions {
                    size: 1 << 20,
                    order: None,
                    features: None,
                },
            )
            .expect("create");
        store.snap_create(&spec("vm@manual")).expect("snap");
        store
            .schedule_add(&spec("vm"), H, Some(2), T0 + 1800)
            .expect("add");
    }
    let d = Daemon::start(dir.path(), clock.clone());
    let api = d.client();
    // Nothing is due yet.
    assert!(api.status(None).expect("status").jobs.is_empty());

    for k in 1..=3 {
        clock.set(T0 + k * H);
        schedule_until(&d.store, "vm", "a run", |r| r.runs == k);
    }
    let s = jobs_until(&api, 3);
    let job = s.jobs.iter().find(|j| j.kind == "snap schedule").unwrap();
    assert_eq!(job.spec, "rbd/vm");
    assert_eq!(job.state, JobState::Done, "{job:?}");
    assert_eq!(
        snap_names(&d.store, "vm"),
        ["manual", "sched-20240101T020000Z", "sched-20240101T030000Z"],
        "keep 2 removed the oldest scheduled one, not the manual one"
    );
    let rec = schedule_until(&d.store, "vm", "a result", |r| r.last_result.is_some());
    assert!(rec.last_result.as_ref().unwrap().ok, "{rec:?}");
    assert_eq!(
        rec.last_result.as_ref().unwrap().removed,
        ["sched-20240101T010000Z"]
    );
    // Moving within the slot runs nothing more.
    clock.set(T0 + 3 * H + 1000);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(d.store.schedule_list(None).unwrap()[0].runs, 3);
    d.stop();

    // Down for ten hours: the restart catches up with one run.
    clock.set(T0 + 13 * H + 1800);
    let d = Daemon::start(dir.path(), clock.clone());
    let rec = schedule_until(&d.store, "vm", "the catch-up run", |r| {
        r.last_result
            .as_ref()
            .is_some_and(|x| x.time == T0 + 13 * H + 1800)
    });
    assert_eq!(rec.runs, 4);
    let res = rec.last_result.unwrap();
    assert_eq!(res.missed, 9);
    assert_eq!(res.snapshot.as_deref(), Some("sched-20240101T133000Z"));
    assert_eq!(rec.next_due, T0 + 14 * H);
    assert_eq!(
        snap_names(&d.store, "vm"),
        ["manual", "sched-20240101T030000Z", "sched-20240101T133000Z"]
    );
    let s = jobs_until(&d.client(), 1);
    assert_eq!(
        s.jobs.iter().filter(|j| j.kind == "snap schedule").count(),
        1,
        "one catch-up run, not ten: {s:#?}"
    );
    d.stop();
}

#[test]
fn a_command_through_the_api_wakes_the_scheduler() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0 + 1800));
    {
        let store = Store::open_dir(&dir.path().join("data"), "setup").expect("store");
        store
            .create(
                &spec("late"),
                &CreateOptions {
                    size: 1 << 20,
                    order: None,
                    features: None,
                },
            )
            .expect("create");
    }
    let d = Daemon::start(dir.path(), clock);
    let api = d.client();
    let reply = api
        .command(&CommandRequest {
            command: serde_json::json!({"anything": {}}),
            format: "plain".into(),
            stdin: None,
            wait: true,
        })
        .expect("command");
    assert!(matches!(reply, vdisk_server::api::Submitted::Done(_)));
    // The clock has not moved: only the wake-up can have run it.
    let rec = schedule_until(&d.store, "late", "a run", |r| r.last_result.is_some());
    assert!(rec.last_result.as_ref().unwrap().ok, "{rec:?}");
    assert_eq!(rec.next_due, T0 + H);
    assert_eq!(snap_names(&d.store, "late"), ["sched-20240101T003000Z"]);
    d.stop();
}
