//! Incident 5 as a test: a VM died because deleting its oldest snapshot
//! made heavy I/O that starved its liveness signal. Here a writer runs
//! flat out through NBD against a backend whose every object operation
//! takes 20 ms, while snapshots rotate (keep 5): 20 rotations with the
//! daemon's trimmer held back (the data of removed snapshots only queues)
//! and 20 with it trimming that backlog in the background, interleaved in
//! rounds of 10 so that a long run's drift weighs on both alike. The
//! writer must see no error, and its p99 write latency while trimming must
//! stay within 1.5× of its p99 without trimming. Snapshot removal itself
//! must return without waiting for the data to be released.
//!
//! The numbers are printed (`cargo test -p vdisk-server --test incident5
//! -- --nocapture`) for BENCHMARKS.md.

#[path = "server/raw.rs"]
mod raw;
#[path = "server/served.rs"]
mod served;

use raw::Raw;
use served::Served;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use vdisk_engine::{CreateOptions, ImageSpec, NoProgress, SingleDataBackend, Store};
use vdisk_nbd::{Command, CommandFlags};
use vdisk_storage::{FaultConfig, FaultyObjectStore, LocalObjectStore, MetaStore, RedbMetaStore};

const SIZE: u64 = 64 << 20;
const DELAY: Duration = Duration::from_millis(20);
const QD: u64 = 8;
const ROTATIONS: usize = 20;
const KEEP: usize = 5;
const INTERVAL: Duration = Duration::from_millis(150);

/// Phases of the run; the writer tags each write with the phase it started in.
const QUIET: u8 = 0;
const HELD: u8 = 1;
const TRIMMING: u8 = 2;
const DONE: u8 = 3;

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s).expect("spec")
}

/// Writes 4 KiB at pseudo-random offsets, `QD` in flight, until the phase
/// is `DONE`; returns (phase, latency) of every write and the errors.
fn writer(port: u16, phase: Arc<AtomicU8>) -> (Vec<(u8, Duration)>, Vec<String>) {
    let mut c = Raw::tcp(port, "img");
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    let mut inflight: VecDeque<(u64, Instant, u8)> = VecDeque::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut cookie = 0u64;
    let blocks = SIZE / 4096;
    loop {
        let p = phase.load(Ordering::SeqCst);
        while p != DONE && (inflight.len() as u64) < QD {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % blocks) * 4096;
            cookie += 1;
            let data = [cookie as u8; 4096];
            c.send(
                Command::Write,
                CommandFlags::empty(),
                cookie,
                off,
                4096,
                &data,
            )
            .expect("send");
            inflight.push_back((cookie, Instant::now(), p));
        }
        if inflight.is_empty() {
            break;
        }
        let done = c.recv().expect("reply");
        let at = inflight
            .iter()
            .position(|(k, _, _)| *k == done.cookie)
            .expect("a reply to a request sent");
        let (_, sent, p) = inflight.remove(at).expect("in flight");
        if let Some(e) = done.error {
            errors.push(format!("write {}: error {e} {}", done.cookie, done.message));
        }
        lat.push((p, sent.elapsed()));
    }
    c.disconnect();
    (lat, errors)
}

/// One rotation: a new snapshot, then the oldest beyond `KEEP` removed.
/// Returns how long the removals took.
fn rotate(store: &Store, n: usize, snaps: &mut VecDeque<String>) -> Vec<Duration> {
    let name = format!("rot{n:03}");
    let t = Instant::now();
    store
        .snap_create(&spec(&format!("img@{name}")))
        .expect("snap create");
    if std::env::var("INCIDENT5_VERBOSE").is_ok() {
        println!("create {n}: {:.1} ms", ms(t.elapsed()));
    }
    snaps.push_back(name);
    let mut took = Vec::new();
    while snaps.len() > KEEP {
        let old = snaps.pop_front().expect("oldest");
        let t = Instant::now();
        store
            .snap_remove(&spec(&format!("img@{old}")), &NoProgress)
            .expect("snap rm");
        took.push(t.elapsed());
        if std::env::var("INCIDENT5_VERBOSE").is_ok() {
            println!("rm {old}: {:.1} ms", ms(t.elapsed()));
        }
    }
    took
}

fn p99(lat: &[(u8, Duration)], phase: u8) -> (Duration, usize) {
    let mut v: Vec<Duration> = lat
        .iter()
        .filter(|(p, _)| *p == phase)
        .map(|(_, d)| *d)
        .collect();
    assert!(
        v.len() >= 50,
        "too few writes in phase {phase}: {}",
        v.len()
    );
    v.sort();
    let i = (v.len() * 99).div_ceil(100) - 1;
    (v[i], v.len())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn snapshot_rotation_with_trimming_does_not_hurt_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta: Arc<dyn MetaStore> =
        Arc::new(RedbMetaStore::open(&dir.path().join("meta.redb")).expect("redb"));
    let local = Arc::new(LocalObjectStore::open(&dir.path().join("data")).expect("data dir"));
    let faulty = Arc::new(FaultyObjectStore::new(local, FaultConfig::default()));
    let store = Store::open_with(
        meta,
        Box::new(SingleDataBackend(faulty.clone())),
        vdisk_engine::Config {
            default_features: vdisk_engine::Features::DEFAULT,
            default_order: 20,
            ..Default::default()
        },
    )
    .expect("store");
    store
        .create(
            &spec("img"),
            &CreateOptions {
                size: SIZE,
                ..Default::default()
            },
        )
        .expect("create");
    {
        let img = store.open(&spec("img")).expect("open");
        img.write_at(0, &vec![0x5A; SIZE as usize])
            .expect("prefill");
        img.flush().expect("flush");
    }
    let mut daemon = Served::start(store.clone(), dir.path().join("nbd.sock"));
    faulty.set(FaultConfig {
        delay: Some(DELAY),
        ..Default::default()
    });

    let phase = Arc::new(AtomicU8::new(QUIET));
    let w = {
        let phase = phase.clone();
        let port = daemon.port;
        thread::spawn(move || writer(port, phase))
    };
    thread::sleep(Duration::from_secs(2));

    // Rotation with the trimmer held back (the removed snapshots' data only
    // queues), then the same rotation while the trimmer works through that
    // backlog; twice, interleaved, so that the drift of a long run (more
    // objects, more metadata per removal) weighs on both alike. 20
    // rotations of each in all.
    let mut snaps = VecDeque::new();
    let mut rm_times = Vec::new();
    let mut released = 0;
    let mut backlog = 0;
    let mut samples = Vec::new();
    let mut n = 0;
    for _round in 0..2 {
        store.set_trim_paused(true);
        phase.store(HELD, Ordering::SeqCst);
        for _ in 0..ROTATIONS / 2 {
            rm_times.extend(rotate(&store, n, &mut snaps));
            n += 1;
            thread::sleep(INTERVAL);
        }
        backlog = store.trim_backlog().expect("backlog");
        assert!(
            backlog >= 100,
            "rotation queued only {backlog} data operations"
        );
        let watching = Arc::new(AtomicBool::new(true));
        let watcher = {
            let (store, watching) = (store.clone(), watching.clone());
            thread::spawn(move || {
                let mut seen = Vec::new();
                while watching.load(Ordering::SeqCst) {
                    seen.push(store.trim_backlog().expect("backlog"));
                    thread::sleep(Duration::from_millis(100));
                }
                seen
            })
        };
        let released_before = store.trim_released();
        store.set_trim_paused(false);
        phase.store(TRIMMING, Ordering::SeqCst);
        for _ in 0..ROTATIONS / 2 {
            rm_times.extend(rotate(&store, n, &mut snaps));
            n += 1;
            thread::sleep(INTERVAL);
        }
        phase.store(HELD, Ordering::SeqCst);
        released += store.trim_released() - released_before;
        watching.store(false, Ordering::SeqCst);
        samples.extend(watcher.join().expect("watcher"));
    }
    phase.store(DONE, Ordering::SeqCst);
    let (lat, errors) = w.join().expect("writer");
    daemon.stop();

    assert!(errors.is_empty(), "the writer saw errors: {errors:?}");
    // The trimmer was busy all through the second rotation: the backlog
    // never ran dry while it was measured, and it released data.
    assert!(
        samples.iter().all(|&b| b > 0),
        "backlog ran out during the measurement: {samples:?}"
    );
    assert!(
        released >= 20,
        "the trimmer released only {released} data operations"
    );

    let (quiet, nq) = p99(&lat, QUIET);
    let (held, nh) = p99(&lat, HELD);
    let (trimming, nt) = p99(&lat, TRIMMING);
    rm_times.sort();
    let rm_p50 = rm_times[rm_times.len() / 2];
    let rm_max = *rm_times.last().expect("removals");
    println!(
        "incident 5: write p99 quiet {:.1} ms ({nq} writes), rotation with trimming held back {:.1} ms ({nh}), rotation while trimming {:.1} ms ({nt}); ratio {:.2}; \
         snap rm p50 {:.1} ms max {:.1} ms; {released} data operations released while measured, {backlog} queued before",
        ms(quiet),
        ms(held),
        ms(trimming),
        trimming.as_secs_f64() / held.as_secs_f64(),
        ms(rm_p50),
        ms(rm_max),
    );
    assert!(
        trimming.as_secs_f64() <= 1.5 * held.as_secs_f64(),
        "p99 while trimming {:.1} ms > 1.5 × {:.1} ms",
        ms(trimming),
        ms(held)
    );
    // snap rm returns without releasing the data: far less than the 20 ms
    // per data operation that releasing one snapshot's data would take.
    assert!(
        rm_p50 < DELAY * 20,
        "snap rm took {:.1} ms (median)",
        ms(rm_p50)
    );
}
