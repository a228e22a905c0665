//! Background trimming (incident 5): snapshot removal and rollback return
//! once the metadata is committed; the data they release is queued and
//! released later, without the image's I/O barrier, surviving crashes.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_engine::{CreateOptions, FullSpeed, ImageSpec, NoProgress, Store};
use vdisk_storage::{FaultConfig, FaultyObjectStore, MemObjectStore, ObjectStore};

const ORDER: u8 = 16;
const OBJ: usize = 1 << ORDER;

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s).expect("spec")
}

fn create(store: &Store, name: &str, size: u64) {
    store
        .create(
            &spec(name),
            &CreateOptions {
                size,
                ..Default::default()
            },
        )
        .expect("create");
}

fn allocated(data: &dyn ObjectStore) -> u64 {
    data.list("")
        .expect("list")
        .iter()
        .map(|n| data.allocated(n).expect("allocated"))
        .sum()
}

fn trim_all(store: &Store) -> u64 {
    let mut done = 0;
    for t in store.trim_targets().expect("targets") {
        done += store
            .trim_image(&t, &mut FullSpeed, &NoProgress, &|| false)
            .expect("trim");
    }
    done
}

/// 8 objects written, snapshot, all overwritten: removing the snapshot
/// releases 8 objects' worth of old data.
fn image_with_overwritten_snapshot(store: &Store) -> Vec<u8> {
    create(store, "img", 8 * OBJ as u64);
    let img = store.open(&spec("img")).expect("open");
    img.write_at(0, &vec![0xAA; 8 * OBJ]).expect("write");
    store.snap_create(&spec("img@old")).expect("snap");
    let new: Vec<u8> = (0..8 * OBJ).map(|i| (i % 251) as u8).collect();
    img.write_at(0, &new).expect("write");
    img.flush().expect("flush");
    new
}

#[test]
fn snap_rm_in_background_mode_queues_and_the_trimmer_releases() {
    let (store, _meta, data) = mem_store(ORDER);
    store.set_background_trim(true);
    let head = image_with_overwritten_snapshot(&store);
    let before = allocated(&data);
    store
        .snap_remove(&spec("img@old"), &NoProgress)
        .expect("snap rm");
    // Gone from the metadata at once; the data is still there, queued.
    assert!(store.snap_list(&spec("img")).expect("ls").is_empty());
    assert_eq!(allocated(&data), before);
    let targets = store.trim_targets().expect("targets");
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].spec, "rbd/img");
    assert!(targets[0].ops >= 8, "{targets:?}");
    // Nothing is wrong meanwhile: check is clean, no orphans reported,
    // the queue is.
    let rep = store.check(false).expect("check");
    assert!(rep.errors.is_empty(), "{rep:?}");
    assert_eq!(rep.warnings.len(), 1, "{rep:?}");
    assert!(rep.warnings[0].contains("queued for trimming"), "{rep:?}");
    // Writes and a new snapshot before the trimmer runs are kept.
    let img = store.open(&spec("img")).expect("open");
    img.write_at(3 * OBJ as u64, &[7u8; 4096]).expect("write");
    store.snap_create(&spec("img@new")).expect("snap");
    let done = trim_all(&store);
    assert_eq!(done, targets[0].ops);
    assert_eq!(store.trim_backlog().expect("backlog"), 0);
    assert!(allocated(&data) < before, "space released");
    let mut want = head.clone();
    want[3 * OBJ..3 * OBJ + 4096].fill(7);
    let mut got = vec![0u8; want.len()];
    img.read_at(0, &mut got).expect("read");
    assert!(got == want, "head after trimming");
    let snap = store.open(&spec("img@new")).expect("open snap");
    snap.read_at(0, &mut got).expect("read");
    assert!(got == want, "new snapshot after trimming");
    let rep = store.check(false).expect("check");
    assert!(rep.errors.is_empty() && rep.warnings.is_empty(), "{rep:?}");
}

#[test]
fn without_background_mode_snap_rm_trims_before_returning() {
    let (store, _meta, data) = mem_store(ORDER);
    image_with_overwritten_snapshot(&store);
    let before = allocated(&data);
    store
        .snap_remove(&spec("img@old"), &NoProgress)
        .expect("snap rm");
    assert_eq!(store.trim_backlog().expect("backlog"), 0);
    assert!(allocated(&data) < before);
}

#[test]
fn rollback_queues_the_discarded_head() {
    let (store, _meta, data) = mem_store(ORDER);
    store.set_background_trim(true);
    create(&store, "img", 4 * OBJ as u64);
    let img = store.open(&spec("img")).expect("open");
    img.write_at(0, &vec![1u8; 4 * OBJ]).expect("write");
    store.snap_create(&spec("img@s")).expect("snap");
    img.write_at(0, &vec![2u8; 4 * OBJ]).expect("write");
    img.flush().expect("flush");
    let before = allocated(&data);
    store
        .snap_rollback(&spec("img@s"), &NoProgress)
        .expect("rollback");
    assert!(store.trim_backlog().expect("backlog") > 0);
    // The head reads the snapshot at once, and writes go on.
    let mut got = vec![0u8; 4 * OBJ];
    img.read_at(0, &mut got).expect("read");
    assert!(got.iter().all(|b| *b == 1));
    img.write_at(0, &[3u8; 4096]).expect("write");
    trim_all(&store);
    assert!(allocated(&data) < before);
    img.read_at(0, &mut got).expect("read");
    assert!(got[..4096].iter().all(|b| *b == 3));
    assert!(got[4096..].iter().all(|b| *b == 1));
}

#[test]
fn a_crash_during_trimming_repeats_the_batch_after_reopening() {
    let meta = vdisk_storage::MemMetaStore::new();
    let mem = MemObjectStore::new();
    let faulty = Arc::new(FaultyObjectStore::new(
        Arc::new(mem.clone()),
        FaultConfig::default(),
    ));
    let store = open_store(&meta, faulty.clone(), ORDER);
    store.set_background_trim(true);
    let head = image_with_overwritten_snapshot(&store);
    store
        .snap_remove(&spec("img@old"), &NoProgress)
        .expect("snap rm");
    let queued = store.trim_backlog().expect("backlog");
    // The data store dies after 3 trim operations: the trimmer fails,
    // and the power goes.
    faulty.set(FaultConfig {
        fail_after_ops: Some(3),
        ..Default::default()
    });
    let t = store.trim_targets().expect("targets").remove(0);
    assert!(store
        .trim_image(&t, &mut FullSpeed, &NoProgress, &|| false)
        .is_err());
    drop(store);
    mem.crash();
    faulty.set(FaultConfig::default());
    let store = open_store(&meta, faulty.clone(), ORDER);
    assert_eq!(store.trim_backlog().expect("backlog"), queued);
    assert_eq!(trim_all(&store), queued);
    let img = store.open(&spec("img")).expect("open");
    let mut got = vec![0u8; head.len()];
    img.read_at(0, &mut got).expect("read");
    assert!(got == head);
    let rep = store.check(false).expect("check");
    assert!(rep.errors.is_empty() && rep.warnings.is_empty(), "{rep:?}");
}

#[test]
fn trimming_stops_when_asked_and_resumes() {
    let (store, _meta, _data) = mem_store(ORDER);
    store.set_background_trim(true);
    image_with_overwritten_snapshot(&store);
    store
        .snap_remove(&spec("img@old"), &NoProgress)
        .expect("snap rm");
    let queued = store.trim_backlog().expect("backlog");
    let t = store.trim_targets().expect("targets").remove(0);
    let stop = AtomicBool::new(true);
    let done = store
        .trim_image(&t, &mut FullSpeed, &NoProgress, &|| {
            stop.load(Ordering::Relaxed)
        })
        .expect("trim");
    assert_eq!(done, 0);
    assert_eq!(store.trim_backlog().expect("backlog"), queued);
    assert_eq!(trim_all(&store), queued);
}

/// Incident 5 at engine level: with every data operation slowed down, a
/// writer keeps going while snapshots are removed and trimmed, and the
/// snapshot removal itself does not wait for the data to be released.
#[test]
fn snap_rm_does_not_wait_for_a_slow_backend_to_release_data() {
    let meta = vdisk_storage::MemMetaStore::new();
    let faulty = Arc::new(FaultyObjectStore::new(
        Arc::new(MemObjectStore::new()),
        FaultConfig::default(),
    ));
    let store = open_store(&meta, faulty.clone(), ORDER);
    store.set_background_trim(true);
    image_with_overwritten_snapshot(&store);
    faulty.set(FaultConfig {
        delay: Some(Duration::from_millis(20)),
        ..Default::default()
    });
    let t0 = Instant::now();
    store
        .snap_remove(&spec("img@old"), &NoProgress)
        .expect("snap rm");
    let rm = t0.elapsed();
    let queued = store.trim_backlog().expect("backlog");
    // Trimming takes at least queued × 20 ms; removal took a few
    // operations (two syncs and what the commit needs).
    assert!(queued >= 8);
    assert!(
        rm < Duration::from_millis(20) * queued as u32,
        "snap rm took {rm:?} for {queued} queued operations"
    );
}

/// A snapshot removed after a metadata backup is back after `meta
/// restore`, and so must its data be: the trim queue its removal filled
/// belonged to the metadata that was replaced, and the restore drops it,
/// so no trimmer (here `check --repair`, which releases the queue)
/// releases data the restored snapshot reads.
#[test]
fn meta_restore_drops_the_trim_queue_of_the_metadata_it_replaces() {
    let (store, _meta, _data) = mem_store(ORDER);
    store.set_background_trim(true);
    let head = image_with_overwritten_snapshot(&store);
    let backup = store.meta_backup("rbd").expect("backup");
    store
        .snap_remove(&spec("img@old"), &NoProgress)
        .expect("snap rm");
    assert!(store.trim_backlog().expect("backlog") > 0);
    store.meta_restore("rbd", &backup).expect("restore");
    assert_eq!(store.trim_backlog().expect("backlog"), 0);
    assert!(!store.trim_paused(), "the restore's hold is released");
    store.check(true).expect("check --repair");
    let mut got = vec![0u8; 8 * OBJ];
    let snap = store
        .open(&spec("img@old"))
        .expect("open restored snapshot");
    snap.read_at(0, &mut got).expect("read");
    assert!(got.iter().all(|b| *b == 0xAA), "restored snapshot's data");
    let img = store.open(&spec("img")).expect("open");
    img.read_at(0, &mut got).expect("read");
    assert!(got == head, "head");
    let rep = store.check(false).expect("check");
    assert!(rep.errors.is_empty() && rep.warnings.is_empty(), "{rep:?}");
}

/// A pacer that waits the same time after every data operation.
struct Slow(Duration);

impl vdisk_engine::Pacer for Slow {
    fn pause(&mut self, _took: Duration) -> Duration {
        self.0
    }
}

/// `meta restore` beside a running trimmer (the daemon's, which stops when
/// `trim_paused()`): the restore stops it and waits for it, so nothing of
/// the dropped queue is released after the restore returned.
#[test]
fn meta_restore_stops_a_running_trimmer_first() {
    let (store, _meta, _data) = mem_store(ORDER);
    store.set_background_trim(true);
    image_with_overwritten_snapshot(&store);
    let backup = store.meta_backup("rbd").expect("backup");
    store
        .snap_remove(&spec("img@old"), &NoProgress)
        .expect("snap rm");
    let targets = store.trim_targets().expect("targets");
    assert_eq!(targets.len(), 1);
    let total = targets[0].ops;
    let before = store.trim_released();
    std::thread::scope(|s| {
        let trimmer = s.spawn(|| {
            store
                .trim_image(
                    &targets[0],
                    &mut Slow(Duration::from_millis(50)),
                    &NoProgress,
                    &|| store.trim_paused(),
                )
                .expect("trim")
        });
        let start = Instant::now();
        while store.trim_released() == before {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "trimmer did not start"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        store.meta_restore("rbd", &backup).expect("restore");
        let released = store.trim_released();
        let done = trimmer.join().expect("trimmer thread");
        assert!(done < total, "stopped early: {done} of {total}");
        assert_eq!(store.trim_released(), released, "nothing after the restore");
        assert_eq!(released - before, done);
    });
    assert_eq!(store.trim_backlog().expect("backlog"), 0);
    assert!(!store.trim_paused());
    assert!(store.open(&spec("img@old")).is_ok(), "the snapshot is back");
}
