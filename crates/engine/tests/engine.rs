//! Focused regression tests of the image engine, each named after what it
//! guards (an incident of INCIDENTS.md, a documented property, or a bug the
//! model and crash tests found).

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};
use vdisk_engine::record::FLAG_OBJECT_MAP_INVALID;
use vdisk_engine::{
    Config, CreateOptions, Error, Image, ImageSpec, NoProgress, SingleDataBackend, Store,
};
use vdisk_storage::{
    FaultConfig, FaultyObjectStore, MemMetaStore, MemObjectStore, MetaOp, MetaStore, ObjectStore,
};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s).unwrap()
}

fn create(store: &Store, name: &str, size: u64, order: u8) -> Image {
    store
        .create(
            &spec(name),
            &CreateOptions {
                size,
                order: Some(order),
                features: None,
            },
        )
        .unwrap()
}

fn read_all(img: &Image) -> Vec<u8> {
    let mut v = vec![0xEE; img.size() as usize];
    img.read_at(0, &mut v).unwrap();
    v
}

fn du_total(store: &Store, name: &str) -> u64 {
    store.du(&spec(name)).unwrap().iter().map(|r| r.used).sum()
}

fn assert_clean(store: &Store) {
    let rep = store.check(false).unwrap();
    assert!(rep.errors.is_empty(), "check errors: {:?}", rep.errors);
}

/// A metadata store that counts operations and committed bytes, and can be
/// told to fail commits after a number of them.
#[derive(Debug)]
struct MetaProbe {
    inner: MemMetaStore,
    ops: AtomicU64,
    bytes: AtomicU64,
    /// Commits still allowed; negative: unlimited.
    commits_left: AtomicI64,
}

impl MetaProbe {
    fn new(inner: MemMetaStore) -> Self {
        MetaProbe {
            inner,
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            commits_left: AtomicI64::new(-1),
        }
    }
    fn allow_commits(&self, n: i64) {
        self.commits_left.store(n, Ordering::SeqCst);
    }
}

impl MetaStore for MetaProbe {
    fn get(&self, table: &'static str, key: &[u8]) -> vdisk_storage::Result<Option<Vec<u8>>> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        self.inner.get(table, key)
    }
    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
    ) -> vdisk_storage::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        self.inner.scan(table, prefix)
    }
    fn commit(&self, ops: Vec<MetaOp>) -> vdisk_storage::Result<()> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        let left = self.commits_left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(vdisk_storage::StorageError::Injected(
                "commit refused by the test".into(),
            ));
        }
        if left > 0 {
            self.commits_left.fetch_sub(1, Ordering::SeqCst);
        }
        for op in &ops {
            if let MetaOp::Put { key, value, .. } = op {
                self.bytes
                    .fetch_add((key.len() + value.len()) as u64, Ordering::SeqCst);
            }
        }
        self.inner.commit(ops)
    }
}

fn probe_store(order: u8, data: Arc<dyn ObjectStore>) -> (Store, Arc<MetaProbe>) {
    let meta = Arc::new(MetaProbe::new(MemMetaStore::new()));
    let store = Store::open_with(
        meta.clone(),
        Box::new(SingleDataBackend(data)),
        config(order),
    )
    .unwrap();
    (store, meta)
}

// ------------------------------------------------------------- snapshots

/// Snapshot create is O(1) in the image size: a 1 TiB thin image costs no
/// more object-store or metadata work than a 1 GiB one.
#[test]
fn snapshot_create_does_no_work_proportional_to_image_size() {
    let cost = |size: u64| {
        let data = Arc::new(FaultyObjectStore::new(
            Arc::new(MemObjectStore::new()),
            FaultConfig::default(),
        ));
        let (store, meta) = probe_store(22, data.clone());
        let img = create(&store, "rbd/vm", size, 22);
        // The same data in both: three objects.
        for off in [0, 512 * MIB, GIB - 4 * MIB] {
            img.write_at(off, &bytes(off, 64 * 1024)).unwrap();
        }
        img.flush().unwrap();
        let (d0, m0, b0) = (
            data.ops(),
            meta.ops.load(Ordering::SeqCst),
            meta.bytes.load(Ordering::SeqCst),
        );
        let t = Instant::now();
        store.snap_create(&spec("rbd/vm@s1")).unwrap();
        let took = t.elapsed();
        let cost = (
            data.ops() - d0,
            meta.ops.load(Ordering::SeqCst) - m0,
            meta.bytes.load(Ordering::SeqCst) - b0,
        );
        // And the snapshot reads what the head had.
        let snap = store.open(&spec("rbd/vm@s1")).unwrap();
        let mut buf = vec![0; 64 * 1024];
        snap.read_at(512 * MIB, &mut buf).unwrap();
        assert_eq!(buf, bytes(512 * MIB, 64 * 1024));
        (cost, took)
    };
    let ((d_small, m_small, b_small), _) = cost(GIB);
    let ((d_big, m_big, b_big), took) = cost(1 << 40);
    assert!(
        d_big <= d_small,
        "object-store ops: 1 TiB {d_big}, 1 GiB {d_small}"
    );
    assert!(
        m_big <= m_small,
        "metadata ops: 1 TiB {m_big}, 1 GiB {m_small}"
    );
    // The size field itself may take a few more bytes to encode.
    assert!(
        b_big <= b_small + 16,
        "metadata bytes: 1 TiB {b_big}, 1 GiB {b_small}"
    );
    assert!(
        took < Duration::from_secs(5),
        "1 TiB snapshot took {took:?}"
    );
}

/// Copy-on-write after a snapshot copies blocks, not objects: a 4 KiB write
/// into a fully written 4 MiB object stores at most 8 KiB (two blocks when
/// unaligned).
#[test]
fn copy_on_write_after_snapshot_writes_blocks_not_whole_objects() {
    let mem = MemObjectStore::new();
    let counting = Arc::new(Counting::new(Arc::new(mem.clone())));
    let (store, _) = probe_store(22, counting.clone());
    let img = create(&store, "rbd/vm", 16 * MIB, 22);
    let full = bytes(1, 4 * MIB as usize);
    img.write_at(0, &full).unwrap();
    img.flush().unwrap();
    store.snap_create(&spec("rbd/vm@s1")).unwrap();
    let mut head = full.clone();
    for (off, tag) in [(MIB, 2u64), (2 * MIB + 100, 3)] {
        let before = counting.written();
        let data = bytes(tag, 4096);
        img.write_at(off, &data).unwrap();
        img.flush().unwrap();
        let written = counting.written() - before;
        assert!(
            written <= 8 * KIB,
            "a 4 KiB write at {off} after a snapshot wrote {written} bytes"
        );
        head[off as usize..off as usize + 4096].copy_from_slice(&data);
    }
    assert_bytes_eq(&read_all(&img)[..4 * MIB as usize], &head, "head");
    let snap = store.open(&spec("rbd/vm@s1")).unwrap();
    assert_bytes_eq(&read_all(&snap)[..4 * MIB as usize], &full, "snapshot");
}

/// Removing a snapshot frees exactly the blocks that nothing else needs:
/// checked with `du` and with the bytes the object store holds.
#[test]
fn snapshot_removal_frees_exactly_what_nothing_else_needs() {
    let mem = MemObjectStore::new();
    let (store, _) = probe_store(16, Arc::new(mem.clone()));
    let img = create(&store, "rbd/vm", MIB, 16);
    let blocks = |n: u64| n * 4096;
    let a = bytes(1, MIB as usize);
    img.write_at(0, &a).unwrap(); // 256 blocks
    store.snap_create(&spec("rbd/vm@s1")).unwrap();
    let b = bytes(2, 256 * KIB as usize);
    img.write_at(0, &b).unwrap(); // 64 blocks, s1 keeps the old ones
    store.snap_create(&spec("rbd/vm@s2")).unwrap();
    let c = bytes(3, 128 * KIB as usize);
    img.write_at(0, &c).unwrap(); // 32 blocks, s2 keeps the old ones
    img.flush().unwrap();
    let used: Vec<u64> = store
        .du(&spec("rbd/vm"))
        .unwrap()
        .iter()
        .map(|r| r.used)
        .collect();
    assert_eq!(used, vec![blocks(256), blocks(64), blocks(32)]);
    assert_eq!(allocated_total(&mem), blocks(352));

    // s1 alone needed the 64 blocks of `a` that `b` overwrote.
    store.snap_remove(&spec("rbd/vm@s1"), &NoProgress).unwrap();
    let used: Vec<u64> = store
        .du(&spec("rbd/vm"))
        .unwrap()
        .iter()
        .map(|r| r.used)
        .collect();
    assert_eq!(used, vec![blocks(256), blocks(32)]);
    assert_eq!(allocated_total(&mem), blocks(288));
    let mut s2 = a.clone();
    s2[..b.len()].copy_from_slice(&b);
    assert_bytes_eq(
        &read_all(&store.open(&spec("rbd/vm@s2")).unwrap()),
        &s2,
        "s2",
    );

    // s2 alone needed the 32 blocks of `b` that `c` overwrote.
    store.snap_remove(&spec("rbd/vm@s2"), &NoProgress).unwrap();
    assert_eq!(du_total(&store, "rbd/vm"), blocks(256));
    assert_eq!(allocated_total(&mem), blocks(256));
    let mut head = s2;
    head[..c.len()].copy_from_slice(&c);
    assert_bytes_eq(&read_all(&img), &head, "head");
    assert_clean(&store);
}

/// Bug found by the model test: after a snapshot was removed, the first
/// overwrite (or discard) of a block it had shared with the head left the
/// old block allocated although no reader needed it any more (until some
/// later snapshot removal). `du` of an image without snapshots exceeded its
/// size, and a fully discarded image kept data.
#[test]
fn overwrite_after_snapshot_removal_releases_the_shadowed_block() {
    let mem = MemObjectStore::new();
    let (store, _) = probe_store(16, Arc::new(mem.clone()));
    let img = create(&store, "rbd/vm", MIB, 16);
    img.write_at(0, &bytes(1, MIB as usize)).unwrap();
    store.snap_create(&spec("rbd/vm@s1")).unwrap();
    store.snap_remove(&spec("rbd/vm@s1"), &NoProgress).unwrap();
    img.write_at(0, &bytes(2, MIB as usize)).unwrap();
    img.flush().unwrap();
    assert_eq!(du_total(&store, "rbd/vm"), MIB);
    assert_eq!(allocated_total(&mem), MIB);
    img.discard(0, MIB).unwrap();
    img.flush().unwrap();
    assert_eq!(du_total(&store, "rbd/vm"), 0);
    assert_eq!(allocated_total(&mem), 0);
    assert_eq!(read_all(&img), vec![0; MIB as usize]);
    assert_clean(&store);
}

/// Rollback makes the head equal to the snapshot and releases what was
/// written since (when no other snapshot needs it).
#[test]
fn rollback_restores_the_snapshot_and_releases_newer_data() {
    let mem = MemObjectStore::new();
    let (store, _) = probe_store(16, Arc::new(mem.clone()));
    let img = create(&store, "rbd/vm", MIB, 16);
    let a = bytes(1, MIB as usize);
    img.write_at(0, &a).unwrap();
    store.snap_create(&spec("rbd/vm@s1")).unwrap();
    img.write_at(0, &bytes(2, 512 * KIB as usize)).unwrap();
    img.flush().unwrap();
    assert_eq!(allocated_total(&mem), MIB + 512 * KIB);
    store
        .snap_rollback(&spec("rbd/vm@s1"), &NoProgress)
        .unwrap();
    assert_bytes_eq(&read_all(&img), &a, "head after rollback");
    assert_eq!(allocated_total(&mem), MIB);
    assert_eq!(du_total(&store, "rbd/vm"), MIB);
    // Writes after the rollback go on normally.
    img.write_at(4096, &[9; 100]).unwrap();
    let mut want = a.clone();
    want[4096..4196].fill(9);
    assert_bytes_eq(&read_all(&img), &want, "head after a write");
    assert_clean(&store);
}

/// Bug found by the model test: rolling back to an older snapshot and then
/// to a newer one left the head hiding the newer snapshot's data (the
/// head's hidden generations were extended instead of replaced by the
/// snapshot's).
#[test]
fn rollback_to_a_newer_snapshot_after_rolling_back_to_an_older_one() {
    let (store, _, _) = mem_store(12);
    let img = create(&store, "rbd/vm", 64 * KIB, 12);
    store.snap_create(&spec("rbd/vm@empty")).unwrap();
    let a = bytes(1, 64 * KIB as usize);
    img.write_at(0, &a).unwrap();
    store.snap_create(&spec("rbd/vm@full")).unwrap();
    img.write_at(0, &bytes(2, 8192)).unwrap();
    store
        .snap_rollback(&spec("rbd/vm@empty"), &NoProgress)
        .unwrap();
    assert_eq!(read_all(&img), vec![0; 64 * KIB as usize]);
    store
        .snap_rollback(&spec("rbd/vm@full"), &NoProgress)
        .unwrap();
    assert_bytes_eq(
        &read_all(&img),
        &a,
        "head after rolling back to the newer snapshot",
    );
    store
        .snap_rollback(&spec("rbd/vm@empty"), &NoProgress)
        .unwrap();
    assert_eq!(read_all(&img), vec![0; 64 * KIB as usize]);
    assert_clean(&store);
}

// ---------------------------------------------------------------- clones

/// A clone reads through to its parent snapshot, copies an object up on the
/// first write to it (only that object), keeps reading the same after the
/// parent's head changes, and once flattened lets the parent snapshot be
/// unprotected and removed.
#[test]
fn clone_reads_through_copies_up_on_first_write_and_flatten_detaches() {
    let mem = MemObjectStore::new();
    let counting = Arc::new(Counting::new(Arc::new(mem.clone())));
    let (store, meta) = probe_store(16, counting.clone());
    let parent = create(&store, "rbd/base", MIB, 16);
    let mut p = bytes(1, MIB as usize);
    p[300 * 1024..400 * 1024].fill(0);
    parent.write_at(0, &p).unwrap();
    store.snap_create(&spec("rbd/base@gold")).unwrap();
    let r = store.clone_image(&spec("rbd/base@gold"), &spec("rbd/vm"), None, None);
    assert!(matches!(r, Err(Error::SnapNotProtected(_))), "{r:?}");
    store.snap_protect(&spec("rbd/base@gold")).unwrap();
    let child = store
        .clone_image(&spec("rbd/base@gold"), &spec("rbd/vm"), None, None)
        .unwrap();
    assert_bytes_eq(&read_all(&child), &p, "clone before any write");
    let child_id = store.record(&spec("rbd/vm")).unwrap().id;
    let prefix = format!("{child_id:08x}/");
    assert!(
        mem.list(&prefix).unwrap().is_empty(),
        "nothing stored before a write"
    );

    // First write into object 1: that object alone is copied up.
    let before = counting.written();
    child.write_at(64 * KIB + 100, &[0xAB; 4096]).unwrap();
    child.flush().unwrap();
    let written = counting.written() - before;
    assert!(
        written <= 64 * KIB + 8 * KIB,
        "copy-up wrote {written} bytes"
    );
    let objects = mem.list(&prefix).unwrap();
    assert!(
        !objects.is_empty() && objects.iter().all(|n| n.contains("000000000001.")),
        "{objects:?}"
    );
    let mut want = p.clone();
    want[64 * 1024 + 100..64 * 1024 + 100 + 4096].fill(0xAB);
    assert_bytes_eq(&read_all(&child), &want, "clone after a write");

    // The parent's head moves on; the clone does not see it.
    parent.write_at(0, &vec![0x55; MIB as usize]).unwrap();
    assert_bytes_eq(&read_all(&child), &want, "clone after the parent changed");
    let gold = store.open(&spec("rbd/base@gold")).unwrap();
    assert_bytes_eq(&read_all(&gold), &p, "parent snapshot");

    let r = store.snap_unprotect(&spec("rbd/base@gold"));
    assert!(matches!(r, Err(Error::HasChildren { .. })), "{r:?}");
    store.flatten(&spec("rbd/vm"), &NoProgress).unwrap();
    assert!(store.record(&spec("rbd/vm")).unwrap().parent.is_none());
    assert_bytes_eq(&read_all(&child), &want, "clone after flatten");
    store.snap_unprotect(&spec("rbd/base@gold")).unwrap();
    store
        .snap_remove(&spec("rbd/base@gold"), &NoProgress)
        .unwrap();
    assert_bytes_eq(
        &read_all(&child),
        &want,
        "flattened clone after the parent snapshot went",
    );
    assert_clean(&store);
    drop((child, parent, gold));
    // And after a reopen.
    let store2 = Store::open_with(
        meta.clone(),
        Box::new(SingleDataBackend(Arc::new(mem.clone()))),
        config(16),
    )
    .unwrap();
    assert_bytes_eq(
        &read_all(&store2.open(&spec("rbd/vm")).unwrap()),
        &want,
        "after reopen",
    );
}

/// Bug found by the model test: an object copied up into a clone whose
/// blocks were then all discarded has no generations left, so its object
/// map says "nonexistent"; after a reopen the read path trusted the map and
/// read the parent's data through it instead of zeros.
#[test]
fn clone_object_discarded_after_copy_up_reads_zero_after_reopen() {
    let meta = MemMetaStore::new();
    let data = MemObjectStore::new();
    let store = open_store(&meta, Arc::new(data.clone()), 12);
    let parent = create(&store, "rbd/base", 16 * KIB, 12);
    parent.write_at(0, &[0xC6; 5000]).unwrap();
    store.snap_create(&spec("rbd/base@s")).unwrap();
    store.snap_protect(&spec("rbd/base@s")).unwrap();
    let child = store
        .clone_image(&spec("rbd/base@s"), &spec("rbd/c"), None, None)
        .unwrap();
    child.discard(0, 16 * KIB).unwrap();
    assert_eq!(read_all(&child), vec![0; 16 * KIB as usize]);
    store.flush_all().unwrap();
    drop((child, parent, store));
    let store = open_store(&meta, Arc::new(data.clone()), 12);
    let child = store.open(&spec("rbd/c")).unwrap();
    assert_eq!(read_all(&child), vec![0; 16 * KIB as usize]);
    assert_eq!(du_total(&store, "rbd/c"), 0);
    assert_clean(&store);
}

/// Bug found by the model test: a copy-up writes generation 0, which the
/// clone's snapshots see, but their object maps were not updated: `check`
/// reported "object map under-reports" after any first write to an object
/// of a clone that had a snapshot.
#[test]
fn copy_up_in_a_clone_with_snapshots_keeps_their_object_maps_valid() {
    let (store, _, _) = mem_store(12);
    let parent = create(&store, "rbd/base", 64 * KIB, 12);
    parent.write_at(0, &bytes(1, 64 * KIB as usize)).unwrap();
    store.snap_create(&spec("rbd/base@s")).unwrap();
    store.snap_protect(&spec("rbd/base@s")).unwrap();
    let child = store
        .clone_image(&spec("rbd/base@s"), &spec("rbd/c"), None, None)
        .unwrap();
    store.snap_create(&spec("rbd/c@c1")).unwrap();
    store.snap_create(&spec("rbd/c@c2")).unwrap();
    child.write_at(100, &[1; 10]).unwrap();
    child.discard(8192, 4096).unwrap();
    child.flush().unwrap();
    assert_clean(&store);
    let c1 = read_all(&store.open(&spec("rbd/c@c1")).unwrap());
    assert_bytes_eq(&c1, &bytes(1, 64 * KIB as usize), "clone snapshot");
    // Fast diff from the clone's snapshot sees the two changed blocks.
    let d = store.diff(&spec("rbd/c"), Some("c2")).unwrap();
    let covered = |o: u64| d.iter().any(|e| e.offset <= o && o < e.offset + e.length);
    assert!(covered(100) && covered(8192), "{d:?}");
    store.flatten(&spec("rbd/c"), &NoProgress).unwrap();
    assert_clean(&store);
}

// -------------------------------------------------------------- features

/// Incident 2: an image requiring a feature this build does not know is
/// refused by name (`0x1000`), not with a vague I/O error.
#[test]
fn image_with_an_unknown_feature_refuses_to_open_naming_it() {
    let (store, _, _) = mem_store(16);
    let img = create(&store, "rbd/vm", MIB, 16);
    img.write_at(0, &[1; 4096]).unwrap();
    drop(img);
    let mut backup = store.meta_backup("rbd").unwrap();
    backup.images[0].features |= 4096;
    store.meta_restore("rbd", &backup).unwrap();
    let e = store.open(&spec("rbd/vm")).unwrap_err();
    match &e {
        Error::ImageNeedsFeatures { image, features } => {
            assert_eq!(image, "rbd/vm");
            assert_eq!(features, "0x1000");
        }
        other => panic!("expected ImageNeedsFeatures, got {other:?}"),
    }
    assert_eq!(e.kind(), vdisk_engine::ErrorKind::Unsupported);
    assert!(e.to_string().contains("0x1000"), "{e}");
    assert!(
        e.hint().is_some_and(|h| h.contains("rbd/vm")),
        "{:?}",
        e.hint()
    );
    let rep = store.check(false).unwrap();
    assert!(
        rep.errors.iter().any(|x| x.contains("0x1000")),
        "{:?}",
        rep.errors
    );
}

// ----------------------------------------------- object-map consistency

/// Bug found by the crash tests: snapshot removal (likewise rollback and
/// enabling object-map) committed the new record, then recomputed and
/// committed the object maps separately. Interrupted in between (crash,
/// I/O error), the stored maps under-reported and fast-diff trusted them:
/// a diff from the older snapshot missed data written before the removed
/// one. Now the first commit flags the maps invalid and the second clears
/// the flag; flagged maps are not trusted, `check` warns, `--repair`
/// rebuilds.
#[test]
fn interrupted_snapshot_removal_leaves_object_maps_flagged_not_trusted() {
    let (store, meta) = probe_store(16, Arc::new(MemObjectStore::new()));
    let img = create(&store, "rbd/vm", MIB, 16);
    img.write_at(0, &[1; 4096]).unwrap();
    store.snap_create(&spec("rbd/vm@s1")).unwrap();
    img.write_at(256 * KIB, &[2; 4096]).unwrap(); // object 4, after s1
    store.snap_create(&spec("rbd/vm@s2")).unwrap();
    img.flush().unwrap();
    // The record commit succeeds, the remap commit fails.
    meta.allow_commits(1);
    let r = store.snap_remove(&spec("rbd/vm@s2"), &NoProgress);
    assert!(r.is_err(), "{r:?}");
    meta.allow_commits(-1);
    let rec = store.record(&spec("rbd/vm")).unwrap();
    assert_eq!(rec.snaps.len(), 1);
    assert!(rec.flags & FLAG_OBJECT_MAP_INVALID != 0, "{rec:?}");
    // Not trusted: the diff from s1 still reports the write to object 4.
    let d = store.diff(&spec("rbd/vm"), Some("s1")).unwrap();
    assert!(
        d.iter()
            .any(|e| e.offset <= 256 * KIB && 256 * KIB < e.offset + e.length),
        "{d:?}"
    );
    let rep = store.check(false).unwrap();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert!(
        rep.warnings.iter().any(|w| w.contains("flagged invalid")),
        "{:?}",
        rep.warnings
    );
    let rep = store.check(true).unwrap();
    assert!(!rep.repaired.is_empty());
    let rec = store.record(&spec("rbd/vm")).unwrap();
    assert!(rec.flags & FLAG_OBJECT_MAP_INVALID == 0, "{rec:?}");
    let rep = store.check(false).unwrap();
    assert!(rep.errors.is_empty() && rep.warnings.is_empty(), "{rep:?}");
    // The same for an interrupted rollback.
    meta.allow_commits(1);
    assert!(store
        .snap_rollback(&spec("rbd/vm@s1"), &NoProgress)
        .is_err());
    meta.allow_commits(-1);
    assert_clean(&store);
    let mut want = vec![0u8; MIB as usize];
    want[..4096].fill(1);
    assert_bytes_eq(
        &read_all(&img),
        &want,
        "head after the interrupted rollback",
    );
}

/// Bug found while reviewing snapshot create for the crash tests: the head's
/// object map was switched to "exists-clean" before the snapshot commit; if
/// that commit failed, the next flush stored the wrong states (no new
/// snapshot exists) and `check` found the map under-reporting.
#[test]
fn failed_snapshot_create_does_not_corrupt_the_head_object_map() {
    let (store, meta) = probe_store(16, Arc::new(MemObjectStore::new()));
    let img = create(&store, "rbd/vm", MIB, 16);
    img.write_at(0, &[1; 4096]).unwrap();
    img.flush().unwrap();
    meta.allow_commits(0);
    assert!(store.snap_create(&spec("rbd/vm@s1")).is_err());
    meta.allow_commits(-1);
    img.write_at(512 * KIB, &[2; 4096]).unwrap();
    img.flush().unwrap();
    assert!(store.snap_list(&spec("rbd/vm")).unwrap().is_empty());
    assert_clean(&store);
    store.snap_create(&spec("rbd/vm@s1")).unwrap();
    assert_clean(&store);
}

/// Bug found by the long model test: shrinking an image whose end was not
/// 4 KiB-aligned rewrote its last, partial block as zero data instead of
/// releasing it, leaving data beyond every reader's size.
#[test]
fn shrink_from_an_unaligned_end_leaves_nothing_beyond_the_end() {
    let mem = MemObjectStore::new();
    let (store, _) = probe_store(12, Arc::new(mem.clone()));
    let img = create(&store, "rbd/vm", 33280, 12);
    img.write_at(0, &bytes(1, 33280)).unwrap();
    store.resize(&spec("rbd/vm"), 4096, true).unwrap();
    img.flush().unwrap();
    assert_eq!(du_total(&store, "rbd/vm"), 4096);
    assert_eq!(allocated_total(&mem), 4096);
    let rep = store.check(false).unwrap();
    assert!(rep.errors.is_empty() && rep.warnings.is_empty(), "{rep:?}");
    store.resize(&spec("rbd/vm"), 33280, false).unwrap();
    let got = read_all(&img);
    assert_bytes_eq(&got[..4096], &bytes(1, 4096), "kept part");
    assert!(
        got[4096..].iter().all(|b| *b == 0),
        "regrown part is not zero"
    );
}

// ----------------------------------------------------------- concurrency

/// Runs `f` on a thread and fails if it does not finish in time (a
/// deadlock would otherwise hang the test run).
fn with_deadline(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => h.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The thread panicked: propagate its panic.
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
        }
        Err(_) => panic!("did not finish within {secs} s: deadlock?"),
    }
}

/// What writer `w` writes at version `v`: a whole object, tagged.
fn versioned(w: u64, v: u64, len: usize) -> Vec<u8> {
    let mut b = bytes(w << 32 | v, len);
    b[..8].copy_from_slice(&v.to_le_bytes());
    b
}

/// 16 threads write to different objects while readers verify and a
/// flusher flushes; no global lock: with a slow backend (every operation
/// sleeps), the writers overlap instead of queueing behind each other.
#[test]
fn sixteen_concurrent_writers_on_different_objects_with_readers() {
    with_deadline(120, || {
        const WRITERS: u64 = 16;
        const VERSIONS: u64 = 12;
        let obj = 64 * KIB;
        let delay = Duration::from_millis(3);
        let slow = Arc::new(FaultyObjectStore::new(
            Arc::new(MemObjectStore::new()),
            FaultConfig::default(),
        ));
        let (store, _) = probe_store(16, slow.clone());
        let img = create(&store, "rbd/vm", WRITERS * obj, 16);
        slow.set(FaultConfig {
            delay: Some(delay),
            ..FaultConfig::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let ops_before = slow.ops();
        std::thread::scope(|s| {
            let mut writers = Vec::new();
            for w in 0..WRITERS {
                let img = img.clone();
                writers.push(s.spawn(move || {
                    for v in 1..=VERSIONS {
                        img.write_at(w * obj, &versioned(w, v, obj as usize))
                            .unwrap();
                    }
                }));
            }
            for r in 0..2u64 {
                let img = img.clone();
                let stop = stop.clone();
                s.spawn(move || {
                    let mut last = vec![0u64; WRITERS as usize];
                    let mut buf = vec![0u8; obj as usize];
                    let mut w = r;
                    while !stop.load(Ordering::Relaxed) {
                        w = (w + 7) % WRITERS;
                        img.read_at(w * obj, &mut buf).unwrap();
                        let v = u64::from_le_bytes(buf[..8].try_into().unwrap());
                        if v == 0 {
                            assert!(buf.iter().all(|b| *b == 0), "torn read of object {w}");
                        } else {
                            assert!(
                                buf == versioned(w, v, obj as usize),
                                "torn read of object {w}"
                            );
                        }
                        assert!(v >= last[w as usize], "object {w} went back in time");
                        last[w as usize] = v;
                    }
                });
            }
            {
                let img = img.clone();
                let stop = stop.clone();
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        img.flush().unwrap();
                    }
                });
            }
            for h in writers {
                h.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
        let took = start.elapsed();
        let writes = WRITERS * VERSIONS;
        // One write is at least one (delayed) object-store operation; if the
        // writers were serialized it would take at least this long.
        let serial = delay * writes as u32;
        assert!(
            took < serial / 2,
            "{writes} writes took {took:?} ({} store ops); serialized they take ≥ {serial:?}",
            slow.ops() - ops_before
        );
        slow.set(FaultConfig::default());
        img.flush().unwrap();
        for w in 0..WRITERS {
            let mut buf = vec![0u8; obj as usize];
            img.read_at(w * obj, &mut buf).unwrap();
            assert!(
                buf == versioned(w, VERSIONS, obj as usize),
                "final object {w}"
            );
        }
        assert_clean(&store);
    });
}

/// Incident 3: a snapshot of a disk in use contains exactly the writes
/// acknowledged before it: every write that completed before `snap_create`
/// started is in it, none that started after it returned. 20 rounds, with
/// random pauses in the writers and, in some rounds, a slow backend.
#[test]
fn snapshot_under_load_contains_exactly_the_writes_completed_before_it() {
    with_deadline(300, || {
        for round in 0..20u64 {
            snapshot_round(round);
        }
    });
}

fn snapshot_round(round: u64) {
    const WRITERS: u64 = 4;
    const SLOTS: u64 = 512; // blocks per writer, each written once
    let mut rng = Mix(round * 7919 + 1);
    let slow = round % 3 == 2;
    let data = Arc::new(FaultyObjectStore::new(
        Arc::new(MemObjectStore::new()),
        FaultConfig::default(),
    ));
    let (store, _) = probe_store(16, data.clone());
    let img = create(&store, "rbd/vm", WRITERS * SLOTS * 4096, 16);
    if slow {
        data.set(FaultConfig {
            delay: Some(Duration::from_micros(200)),
            ..FaultConfig::default()
        });
    }
    let block = |w: u64, k: u64| {
        let mut b = bytes(round << 40 | w << 20 | k, 4096);
        b[0] = 1; // never all zero
        b
    };
    // Per writer: (start, end) of each write, in order.
    let logs: Vec<Mutex<Vec<(Instant, Instant)>>> =
        (0..WRITERS).map(|_| Mutex::new(Vec::new())).collect();
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let go = Barrier::new(WRITERS as usize + 1);
    let snap_delay = Duration::from_micros(rng.below(20_000));
    let pause_seed = rng.next();
    let mut window = None;
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (img, logs, done, stop, go) = (&img, &logs, &done, &stop, &go);
            s.spawn(move || {
                let mut r = Mix(pause_seed ^ w);
                go.wait();
                for k in 0..SLOTS {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match r.below(16) {
                        0 => std::thread::sleep(Duration::from_micros(r.below(300))),
                        1 => std::thread::yield_now(),
                        _ => {}
                    }
                    let data = block(w, k);
                    let t0 = Instant::now();
                    img.write_at((w * SLOTS + k) * 4096, &data).unwrap();
                    let t1 = Instant::now();
                    logs[w as usize].lock().unwrap().push((t0, t1));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        if round % 2 == 1 {
            // Flushes racing with the snapshot's own flush and commit.
            let (img, stop) = (&img, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    img.flush().unwrap();
                    std::thread::yield_now();
                }
            });
        }
        go.wait();
        // Let the writers get going, then snapshot in the middle of it.
        while done.load(Ordering::Relaxed) < 8 {
            std::thread::yield_now();
        }
        std::thread::sleep(snap_delay);
        let t0 = Instant::now();
        store.snap_create(&spec("rbd/vm@live")).unwrap();
        let t1 = Instant::now();
        window = Some((t0, t1));
        std::thread::sleep(Duration::from_millis(3));
        stop.store(true, Ordering::Relaxed);
    });
    let (s0, s1) = window.unwrap();
    let snap = read_all(&store.open(&spec("rbd/vm@live")).unwrap());
    let head = read_all(&img);
    let (mut before, mut after) = (0, 0);
    for w in 0..WRITERS {
        let log = logs[w as usize].lock().unwrap();
        for (k, &(t0, t1)) in log.iter().enumerate() {
            let k = k as u64;
            let off = ((w * SLOTS + k) * 4096) as usize;
            let want = block(w, k);
            let got = &snap[off..off + 4096];
            assert_eq!(
                &head[off..off + 4096],
                &want[..],
                "round {round}: head lost a write"
            );
            if t1 < s0 {
                before += 1;
                assert!(
                    got == &want[..],
                    "round {round}: write {k} of writer {w} completed before the snapshot started but is not in it"
                );
            } else if t0 > s1 {
                after += 1;
                assert!(
                    got.iter().all(|b| *b == 0),
                    "round {round}: write {k} of writer {w} started after the snapshot returned but is in it"
                );
            } else {
                assert!(
                    got == &want[..] || got.iter().all(|b| *b == 0),
                    "round {round}: torn block"
                );
            }
        }
    }
    assert!(
        before > 0,
        "round {round}: no write completed before the snapshot"
    );
    let _ = after;
    data.set(FaultConfig::default());
    assert_clean(&store);
}

/// Incident 5 (in part): rotating snapshots (create one, remove the oldest)
/// of an image under write load, on a slow backend: the writer never sees
/// an error, every snapshot holds what it should, `check` stays clean.
#[test]
fn snapshot_rotation_under_write_load_never_fails_the_writer() {
    with_deadline(120, || {
        let data = Arc::new(FaultyObjectStore::new(
            Arc::new(MemObjectStore::new()),
            FaultConfig::default(),
        ));
        let (store, _) = probe_store(16, data.clone());
        let img = create(&store, "rbd/vm", 4 * MIB, 16);
        img.write_at(0, &bytes(9, 4 * MIB as usize)).unwrap();
        data.set(FaultConfig {
            delay: Some(Duration::from_micros(100)),
            ..FaultConfig::default()
        });
        let stop = AtomicBool::new(false);
        let max_latency = Mutex::new(Duration::ZERO);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut r = Mix(5);
                while !stop.load(Ordering::Relaxed) {
                    let off = r.below(4 * MIB / 4096) * 4096;
                    let t = Instant::now();
                    img.write_at(off, &bytes(r.next(), 4096)).unwrap();
                    let l = t.elapsed();
                    let mut m = max_latency.lock().unwrap();
                    *m = (*m).max(l);
                }
            });
            let mut kept = std::collections::VecDeque::new();
            for i in 0..8 {
                let name = format!("rbd/vm@auto-{i}");
                store.snap_create(&spec(&name)).unwrap();
                kept.push_back(name);
                if kept.len() > 3 {
                    let old = kept.pop_front().unwrap();
                    store.snap_remove(&spec(&old), &NoProgress).unwrap();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Ordering::Relaxed);
        });
        data.set(FaultConfig::default());
        assert_eq!(store.snap_list(&spec("rbd/vm")).unwrap().len(), 3);
        assert_clean(&store);
        eprintln!(
            "max write latency during rotation: {:?}",
            max_latency.lock().unwrap()
        );
    });
}

/// `Image::grow_to` (streaming import) grows the size without a commit; a
/// failed metadata operation in between must not make the next flush forget
/// the growth (and with it the data written beyond the old size).
#[test]
fn failed_commit_does_not_lose_an_uncommitted_grow() {
    let meta_inner = MemMetaStore::new();
    let meta = Arc::new(MetaProbe::new(meta_inner.clone()));
    let data = MemObjectStore::new();
    let store = Store::open_with(
        meta.clone(),
        Box::new(SingleDataBackend(Arc::new(data.clone()))),
        Config::default(),
    )
    .unwrap();
    let img = create(&store, "rbd/vm", MIB, 16);
    img.grow_to(2 * MIB).unwrap();
    img.write_at(MIB + 4096, &[7; 4096]).unwrap();
    // An operation that commits the record without flushing first.
    meta.allow_commits(0);
    assert!(store.snap_limit(&spec("rbd/vm"), Some(10)).is_err());
    meta.allow_commits(-1);
    img.flush().unwrap();
    drop((img, store));
    let store = open_store(&meta_inner, Arc::new(data.clone()), 22);
    let img = store.open(&spec("rbd/vm")).unwrap();
    assert_eq!(img.size(), 2 * MIB);
    let mut b = vec![0; 4096];
    img.read_at(MIB + 4096, &mut b).unwrap();
    assert_eq!(b, vec![7; 4096]);
}

/// Shrinking while a writer writes to the part being cut off: after
/// growing back, that part must read zero (the tail is discarded under the
/// I/O barrier, so no write can slip in between the discard and the size
/// change).
#[test]
fn shrink_during_writes_to_the_tail_leaves_no_data_behind() {
    with_deadline(120, || {
        for round in 0..10u64 {
            let (store, _, _) = mem_store(12);
            let img = create(&store, "rbd/vm", 256 * KIB, 12);
            let stop = AtomicBool::new(false);
            let shrinking = AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut r = Mix(round);
                    while !stop.load(Ordering::Relaxed) {
                        let off = 128 * KIB + r.below(120) * 1024;
                        match img.write_at(off, &[0x5A; 1024]) {
                            Ok(()) => {}
                            // Once the image is shrunk, the tail is out of range.
                            Err(Error::OutOfRange { .. }) => {
                                assert!(shrinking.load(Ordering::SeqCst));
                                break;
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                });
                std::thread::sleep(Duration::from_millis(2));
                shrinking.store(true, Ordering::SeqCst);
                store.resize(&spec("rbd/vm"), 128 * KIB, true).unwrap();
                std::thread::sleep(Duration::from_millis(1));
                stop.store(true, Ordering::Relaxed);
            });
            store.resize(&spec("rbd/vm"), 256 * KIB, false).unwrap();
            let got = read_all(&img);
            assert!(
                got[128 * KIB as usize..].iter().all(|b| *b == 0),
                "round {round}: data written to the cut-off part survived the shrink"
            );
        }
    });
}

/// A map flagged invalid (e.g. restored from a backup taken mid-operation)
/// shows in `info`, is a `check` warning, and `check --repair` clears it.
#[test]
fn object_map_invalid_flag_is_reported_by_info() {
    let (store, _, _) = mem_store(16);
    create(&store, "rbd/vm", MIB, 16);
    let mut b = store.meta_backup("rbd").unwrap();
    b.images[0].flags |= FLAG_OBJECT_MAP_INVALID;
    store.meta_restore("rbd", &b).unwrap();
    let info = store.info(&spec("rbd/vm")).unwrap();
    assert!(
        info.flags.iter().any(|f| f == "object map invalid"),
        "{info:?}"
    );
    // A flagged map is a warning, and the repair clears the flag.
    let rep = store.check(false).unwrap();
    assert!(rep.errors.is_empty(), "{rep:?}");
    store.check(true).unwrap();
    assert!(store.info(&spec("rbd/vm")).unwrap().flags.is_empty());
}

/// Shrinking a clone to an unaligned size writes the boundary block into the
/// head (partial-block zeroing needs no copy-up); a later flatten must not
/// copy the parent's version of that block underneath it, where nobody
/// would ever read it (found by the long model run: du exceeded the size).
#[test]
fn flatten_after_unaligned_clone_shrink_copies_no_shadowed_block() {
    let (store, _, _) = mem_store(12);
    let base = create(&store, "base", 53760, 12);
    base.write_at(0, &bytes(3, 53760)).unwrap();
    store.snap_create(&spec("base@s")).unwrap();
    store.snap_protect(&spec("base@s")).unwrap();
    let want = read_all(&store.open(&spec("base@s")).unwrap())[..45568].to_vec();
    store
        .clone_image(&spec("base@s"), &spec("c"), None, None)
        .unwrap();
    store.resize(&spec("c"), 45568, true).unwrap();
    store.flatten(&spec("c"), &NoProgress).unwrap();
    let c = store.open(&spec("c")).unwrap();
    assert_bytes_eq(&read_all(&c), &want, "flattened clone");
    assert!(du_total(&store, "c") <= 45568u64.div_ceil(4096) * 4096);
    assert!(store.check(false).unwrap().is_clean());
}

/// A pinned snapshot (an NBD client reading it) cannot be removed: its data
/// would be released under the reader, which would read zeros silently.
/// Pinning and removal decide under one lock, so a reader that pins after
/// the removal gets "not found", never a half-removed snapshot.
#[test]
fn a_snapshot_being_read_is_not_removed_under_its_reader() {
    let (store, _, _) = mem_store(16);
    let img = create(&store, "rbd/vm", MIB, 16);
    let a = bytes(7, MIB as usize);
    img.write_at(0, &a).unwrap();
    store.snap_create(&spec("rbd/vm@s1")).unwrap();
    img.write_at(0, &bytes(8, MIB as usize)).unwrap();
    img.flush().unwrap();

    let reader = store.open(&spec("rbd/vm@s1")).unwrap().pinned().unwrap();
    let second = reader.clone();
    let e = store
        .snap_remove(&spec("rbd/vm@s1"), &NoProgress)
        .unwrap_err();
    assert!(matches!(e, Error::SnapInUse { readers: 1, .. }), "{e}");
    assert!(e.to_string().contains("being read"), "{e}");
    // Purge is refused the same way and removes nothing.
    assert!(store.snap_purge(&spec("rbd/vm"), &NoProgress).is_err());
    assert_eq!(store.snap_list(&spec("rbd/vm")).unwrap().len(), 1);
    drop(reader);
    // A clone of the pinned handle still holds the pin.
    assert!(store.snap_remove(&spec("rbd/vm@s1"), &NoProgress).is_err());
    assert_eq!(read_all(&second), a);
    drop(second);

    // An unpinned handle does not hold removal off, and pinning it after
    // the removal fails instead of reading released data.
    let late = store.open(&spec("rbd/vm@s1")).unwrap();
    store.snap_remove(&spec("rbd/vm@s1"), &NoProgress).unwrap();
    assert!(matches!(late.pinned(), Err(Error::SnapNotFound(_))));
    // Heads are not pinned (nothing to remove under them).
    assert!(!img.clone().pinned().unwrap().is_snapshot());
    assert_clean(&store);
}

/// `meta backup` carries the pool's snapshot schedules, with the snapshots
/// each took (retention removes only those), and `meta restore` puts them
/// back; a backup without schedules (made before they were included)
/// leaves them alone; a schedule naming no image of the backup is refused
/// and nothing changes.
#[test]
fn meta_backup_and_restore_carry_snapshot_schedules() {
    let (store, _, _) = mem_store(16);
    drop(create(&store, "rbd/vm", MIB, 16));
    let t0 = 1_800_000_000;
    store
        .schedule_add(&spec("rbd/vm"), 3600, Some(2), t0)
        .unwrap();
    let ran = store.schedule_run_due(t0 + 3600).unwrap();
    assert_eq!(ran.len(), 1, "{ran:?}");
    let before = store.schedule_list(None).unwrap();
    assert_eq!(before[0].snaps.len(), 1, "{before:?}");
    let backup = store.meta_backup("rbd").unwrap();
    assert_eq!(backup.schedules.as_ref().map(Vec::len), Some(1));
    // Lost (as with a damaged database), then restored.
    store.schedule_remove(&spec("rbd/vm"), None).unwrap();
    assert!(store.schedule_list(None).unwrap().is_empty());
    store.meta_restore("rbd", &backup).unwrap();
    assert_eq!(store.schedule_list(None).unwrap(), before);
    // The JSON round trip keeps them.
    let json = serde_json::to_string(&backup).unwrap();
    let back: vdisk_engine::backup::MetaBackup = serde_json::from_str(&json).unwrap();
    assert_eq!(back, backup);
    // An older backup without the field leaves the schedules as they are.
    let mut old = backup.clone();
    old.schedules = None;
    let json = serde_json::to_string(&old).unwrap();
    assert!(!json.contains("schedules"), "{json}");
    store.meta_restore("rbd", &old).unwrap();
    assert_eq!(store.schedule_list(None).unwrap(), before);
    // A schedule of an image the backup does not have: refused, unchanged.
    let mut bad = backup.clone();
    bad.schedules.as_mut().unwrap()[0].image_id = 0xdead;
    store.schedule_remove(&spec("rbd/vm"), None).unwrap();
    let e = store.meta_restore("rbd", &bad).unwrap_err();
    assert!(e.to_string().contains("names no image"), "{e}");
    assert!(store.schedule_list(None).unwrap().is_empty());
}

/// The object-metadata cache is bounded after every flush
/// (`Config::object_cache`, 2 in these tests): objects evicted come back
/// from the metadata store on their next use, with the same contents for
/// the head and its snapshots, and `check` finds nothing wrong.
#[test]
fn object_cache_is_bounded_after_a_flush_and_evicted_objects_read_back() {
    let (store, _, _) = mem_store(16);
    let objects = 64usize;
    let obj = 1usize << 16;
    let img = create(&store, "rbd/vm", (objects * obj) as u64, 16);
    let v1 = bytes(1, objects * obj);
    img.write_at(0, &v1).unwrap();
    assert!(img.cached_objects() >= objects);
    img.flush().unwrap();
    assert!(img.cached_objects() <= 2, "{}", img.cached_objects());
    store.snap_create(&spec("rbd/vm@s1")).unwrap();
    // Overwrite every other object, partly: copy-on-write of evicted ones.
    let mut v2 = v1.clone();
    for o in (0..objects).step_by(2) {
        let at = o * obj + 4096;
        let new = bytes(o as u64 + 100, 8192);
        img.write_at(at as u64, &new).unwrap();
        v2[at..at + 8192].copy_from_slice(&new);
    }
    img.flush().unwrap();
    assert!(img.cached_objects() <= 2, "{}", img.cached_objects());
    let mut got = vec![0u8; objects * obj];
    img.read_at(0, &mut got).unwrap();
    assert_bytes_eq(&got, &v2, "head");
    let snap = store.open(&spec("rbd/vm@s1")).unwrap();
    snap.read_at(0, &mut got).unwrap();
    assert_bytes_eq(&got, &v1, "snapshot");
    // Discards of evicted objects, then the snapshot goes (reclaim loads
    // every object again, the flush at its end evicts them).
    img.discard(0, (objects * obj / 2) as u64).unwrap();
    v2[..objects * obj / 2].fill(0);
    drop(snap);
    store.snap_remove(&spec("rbd/vm@s1"), &NoProgress).unwrap();
    assert!(img.cached_objects() <= 2, "{}", img.cached_objects());
    img.read_at(0, &mut got).unwrap();
    assert_bytes_eq(&got, &v2, "head after snap rm");
    let rep = store.check(false).unwrap();
    assert!(rep.errors.is_empty(), "{rep:?}");
}

/// `Image::barrier_pending` (the NBD server keeps I/O off its runtime
/// threads while it is true) is true from when a snapshot starts waiting
/// for in-flight writes until it is taken, and false otherwise.
#[test]
fn barrier_pending_while_a_snapshot_drains_and_not_after() {
    let meta = MemMetaStore::new();
    let faulty = Arc::new(FaultyObjectStore::new(
        Arc::new(MemObjectStore::new()),
        FaultConfig::default(),
    ));
    let store = open_store(&meta, faulty.clone(), 20);
    let img = create(&store, "rbd/b", 8 * MIB, 20);
    img.write_at(0, &bytes(1, 4096)).unwrap();
    img.flush().unwrap();
    assert!(!img.barrier_pending());

    // A write held up in the object store keeps the barrier waiting.
    faulty.set(FaultConfig {
        delay: Some(Duration::from_millis(300)),
        ..FaultConfig::default()
    });
    let writer = {
        let img = img.clone();
        std::thread::spawn(move || img.write_at(4096, &bytes(2, 4096)))
    };
    std::thread::sleep(Duration::from_millis(50));
    let snap = {
        let store = store.clone();
        std::thread::spawn(move || store.snap_create(&spec("rbd/b@s")))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !img.barrier_pending() {
        assert!(Instant::now() < deadline, "barrier never reported pending");
        std::thread::sleep(Duration::from_millis(1));
    }
    writer.join().unwrap().unwrap();
    snap.join().unwrap().unwrap();
    faulty.set(FaultConfig::default());
    assert!(!img.barrier_pending(), "still pending after the snapshot");
}
