//! The contract of `ObjectStore` and `MetaStore`, run against every
//! implementation, plus fault-injection and crash tests.

use std::sync::Arc;
use vdisk_storage::{
    validate_name, DirLock, FaultConfig, FaultyMetaStore, FaultyObjectStore, LocalObjectStore,
    MemMetaStore, MemObjectStore, MetaOp, MetaStore, ObjectStore, RedbMetaStore, StorageError,
    LEND_WINDOW,
};

// ---------------------------------------------------------------- objects

fn read(store: &dyn ObjectStore, name: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xAA; len]; // garbage, to see that reads overwrite it
    store.read_at(name, offset, &mut buf).unwrap();
    buf
}

/// Every object store must pass this. `punch_zeroes`: whether punch really
/// zeroes (false for the lying faulty store).
fn object_contract(store: Arc<dyn ObjectStore>, punch_zeroes: bool) {
    let s = &*store;

    // Missing object reads zero; punch/remove/allocated of it are fine.
    assert_eq!(read(s, "missing", 0, 100), vec![0; 100]);
    assert_eq!(read(s, "dir/missing", 1 << 40, 10), vec![0; 10]);
    s.punch("missing", 0, 4096).unwrap();
    s.remove("missing").unwrap();
    assert_eq!(s.allocated("missing").unwrap(), 0);

    // Write then read; past the end is zero-filled.
    s.write_at("a", 0, b"hello").unwrap();
    assert_eq!(read(s, "a", 0, 5), b"hello");
    let mut expected = b"hello".to_vec();
    expected.resize(20, 0);
    assert_eq!(read(s, "a", 0, 20), expected);
    assert_eq!(read(s, "a", 3, 4), b"lo\0\0");
    assert_eq!(read(s, "a", 1000, 4), vec![0; 4]);

    // Write at an offset leaves a zero gap.
    s.write_at("img/obj.1", 10_000, b"xyz").unwrap();
    let got = read(s, "img/obj.1", 0, 10_003);
    assert!(got[..10_000].iter().all(|&b| b == 0));
    assert_eq!(&got[10_000..], b"xyz");
    assert!(s.allocated("img/obj.1").unwrap() > 0);

    // Overwrite across a page boundary.
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8 + 1).collect();
    s.write_at("img/big", 0, &data).unwrap();
    s.write_at("img/big", 4090, b"ABCDEFGHIJKL").unwrap();
    let mut want = data.clone();
    want[4090..4102].copy_from_slice(b"ABCDEFGHIJKL");
    assert_eq!(read(s, "img/big", 0, 20_000), want);

    // Large reads (the local store reads their first page on its own), at
    // page-aligned and unaligned offsets, and across the end of the object.
    let large: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8 + 1).collect();
    s.write_at("lend/large", 0, &large).unwrap();
    for (off, len) in [
        (0, 150_000),
        (4090, 150_000),
        (8192, 65_536),
        (180_000, 100_000),
    ] {
        let got = read(s, "lend/large", off as u64, len);
        let end = (off + len).min(large.len());
        assert_eq!(&got[..end - off], &large[off..end], "at {off}+{len}");
        assert!(got[end - off..].iter().all(|&b| b == 0), "at {off}+{len}");
    }

    // Lent bytes, where a store lends: what a read gives, cut at the end of
    // the object; nothing for a missing object or past the end.
    for (off, len) in [(0, 150_000), (4090, 150_000), (180_000, 100_000)] {
        if let Some(lent) = s.lend("lend/large", off as u64, len).unwrap() {
            let end = (off + len).min(large.len());
            assert_eq!(lent.as_bytes(), &large[off..end], "lent {off}+{len}");
        }
    }
    assert!(s.lend("lend/large", 200_000, 10).unwrap().is_none());
    assert!(s.lend("missing", 0, 10).unwrap().is_none());
    assert!(s.lend("../bad", 0, 10).is_err());
    s.remove("lend/large").unwrap();

    // Writes in place, where a store makes them: what the fill put is what
    // reads give, zero granules are told, a short fill writes only its
    // part; declined (fill not called) for missing or short objects and
    // unaligned ranges; bad names are errors.
    let old = vec![9u8; 64 << 10];
    s.write_at("inplace/o", 0, &old).unwrap();
    let mut new: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8 + 1).collect();
    new[4096..8192].fill(0);
    let put = |src: &[u8]| {
        let src = src.to_vec();
        move |dst: &mut [u8]| {
            dst.copy_from_slice(&src);
            dst.len()
        }
    };
    if let Some(f) = s
        .fill_in_place("inplace/o", 8192, 16384, 4096, &mut put(&new))
        .unwrap()
    {
        assert_eq!(f.len, 16384);
        assert_eq!(f.zero, [false, true, false, false]);
        let mut want = old.clone();
        want[8192..24576].copy_from_slice(&new);
        assert_eq!(read(s, "inplace/o", 0, 64 << 10), want);
    }
    let short = |dst: &mut [u8]| {
        dst[..5000].fill(3);
        5000
    };
    if let Some(f) = s
        .fill_in_place("inplace/o", 32768, 8192, 4096, &mut { short })
        .unwrap()
    {
        assert_eq!(f.len, 5000);
        assert_eq!(f.zero, [false]);
        assert_eq!(read(s, "inplace/o", 32768, 5000), vec![3; 5000]);
        assert_eq!(read(s, "inplace/o", 37768, 3192), vec![9; 3192]);
    }
    let never = |_: &mut [u8]| -> usize { panic!("fill called for a declined write") };
    for (name, off, len) in [
        ("missing", 0, 4096),
        ("inplace/o", 61440, 8192),
        ("inplace/o", 100, 4096),
        ("inplace/o", 0, 100),
        ("inplace/o", 0, 0),
    ] {
        assert!(s
            .fill_in_place(name, off, len, 4096, &mut { never })
            .unwrap()
            .is_none());
    }
    assert!(s
        .fill_in_place("../bad", 0, 4096, 4096, &mut { never })
        .is_err());
    s.remove("inplace/o").unwrap();

    // Punch: whole pages and partial ones at both ends; the length is kept.
    s.punch("img/big", 1000, 12_000).unwrap();
    let got = read(s, "img/big", 0, 20_000);
    if punch_zeroes {
        assert_eq!(&got[..1000], &want[..1000]);
        assert!(got[1000..13_000].iter().all(|&b| b == 0));
        assert_eq!(&got[13_000..], &want[13_000..]);
    } else {
        assert_eq!(got, want);
    }
    // Punch beyond the end neither fails nor grows the object.
    s.punch("a", 3, 1 << 30).unwrap();
    s.punch("a", u64::MAX - 10, 100).unwrap();
    s.write_at("a", 5, b"!").unwrap();
    assert_eq!(
        read(s, "a", 0, 6),
        if punch_zeroes {
            b"hel\0\0!".to_vec()
        } else {
            b"hello!".to_vec()
        }
    );

    // The writeback hint changes nothing visible, and bad or missing
    // names, empty and out-of-range ranges are simply ignored.
    let before = read(s, "img/big", 0, 20_000);
    s.start_writeback("img/big", 0, 20_000);
    s.start_writeback("img/big", 4096, 0);
    s.start_writeback("img/big", u64::MAX - 10, u64::MAX);
    s.start_writeback("missing", 0, 4096);
    s.start_writeback("../escape", 0, 4096);
    assert_eq!(read(s, "img/big", 0, 20_000), before);
    assert!(s.list("missing").unwrap().is_empty());

    // Empty write creates the object.
    s.write_at("empty", 0, b"").unwrap();
    assert_eq!(s.list("empty").unwrap(), vec!["empty"]);

    // List: sorted, filtered by prefix (not only at `/`).
    for name in ["img/obj.2", "img/obj.10", "img2/x", "im", "img/sub/deep"] {
        s.write_at(name, 0, b"1").unwrap();
    }
    assert_eq!(
        s.list("img/").unwrap(),
        vec![
            "img/big",
            "img/obj.1",
            "img/obj.10",
            "img/obj.2",
            "img/sub/deep"
        ]
    );
    assert_eq!(
        s.list("img/obj.1").unwrap(),
        vec!["img/obj.1", "img/obj.10"]
    );
    assert_eq!(s.list("img").unwrap().len(), 6);
    assert_eq!(
        s.list("").unwrap(),
        vec![
            "a",
            "empty",
            "im",
            "img/big",
            "img/obj.1",
            "img/obj.10",
            "img/obj.2",
            "img/sub/deep",
            "img2/x"
        ]
    );
    assert!(s.list("nothing").unwrap().is_empty());
    assert!(s.list("img/sub/deeper").unwrap().is_empty());

    // Remove: gone from reads, list and allocation; can be recreated.
    s.remove("img/obj.1").unwrap();
    assert_eq!(read(s, "img/obj.1", 10_000, 3), vec![0; 3]);
    assert_eq!(s.list("img/obj.1").unwrap(), vec!["img/obj.10"]);
    assert_eq!(s.allocated("img/obj.1").unwrap(), 0);
    s.write_at("img/obj.1", 0, b"new").unwrap();
    assert_eq!(read(s, "img/obj.1", 0, 4), b"new\0");
    s.sync().unwrap();
    assert_eq!(read(s, "img/obj.1", 0, 4), b"new\0");

    // Invalid names are rejected by every method.
    for bad in [
        "", "/abs", "a//b", "a/", "./a", "a/../b", "..", "sp ace", "a\\b", "é",
    ] {
        assert!(
            matches!(
                s.read_at(bad, 0, &mut [0; 1]),
                Err(StorageError::InvalidName(_))
            ),
            "{bad:?}"
        );
        assert!(
            matches!(s.write_at(bad, 0, b"x"), Err(StorageError::InvalidName(_))),
            "{bad:?}"
        );
        assert!(
            matches!(s.punch(bad, 0, 1), Err(StorageError::InvalidName(_))),
            "{bad:?}"
        );
        assert!(
            matches!(s.remove(bad), Err(StorageError::InvalidName(_))),
            "{bad:?}"
        );
        assert!(
            matches!(s.allocated(bad), Err(StorageError::InvalidName(_))),
            "{bad:?}"
        );
    }

    concurrent_writers(store);
}

/// 8 threads, each writing and verifying its own objects.
fn concurrent_writers(store: Arc<dyn ObjectStore>) {
    std::thread::scope(|scope| {
        for t in 0..8u8 {
            let store = Arc::clone(&store);
            scope.spawn(move || {
                for round in 0..50u64 {
                    let name = format!("conc/t{t}/obj{}", round % 5);
                    let data = vec![t.wrapping_mul(31).wrapping_add(round as u8) | 1; 4096];
                    let offset = (round % 7) * 4096;
                    store.write_at(&name, offset, &data).unwrap();
                    assert_eq!(read(&*store, &name, offset, 4096), data);
                    if round % 10 == 9 {
                        store.sync().unwrap();
                    }
                }
            });
        }
    });
    assert_eq!(store.list("conc/").unwrap().len(), 40);
}

#[test]
fn local_object_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalObjectStore::open(&dir.path().join("objects")).unwrap();
    object_contract(Arc::new(store), true);
}

#[test]
fn local_object_store_contract_tiny_cache() {
    // Constant eviction must not change behaviour.
    let dir = tempfile::tempdir().unwrap();
    let store = LocalObjectStore::open_with_limits(dir.path(), 1, 1).unwrap();
    object_contract(Arc::new(store), true);
}

#[test]
fn local_object_store_contract_no_lend_windows() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalObjectStore::open_with_limits(dir.path(), 64, 0).unwrap();
    object_contract(Arc::new(store), true);
}

#[test]
fn mem_object_store_contract() {
    object_contract(Arc::new(MemObjectStore::new()), true);
}

#[test]
fn faulty_object_store_contract() {
    let inner = Arc::new(MemObjectStore::new());
    object_contract(
        Arc::new(FaultyObjectStore::new(inner, FaultConfig::default())),
        true,
    );
}

#[test]
fn faulty_object_store_contract_lying_punch() {
    let inner = Arc::new(MemObjectStore::new());
    let cfg = FaultConfig {
        lie_about_zeroing: true,
        ..FaultConfig::default()
    };
    object_contract(Arc::new(FaultyObjectStore::new(inner, cfg)), false);
}

#[test]
fn local_store_persists_across_reopen_and_ignores_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LocalObjectStore::open(dir.path()).unwrap();
        store.write_at("x/y", 3, b"abc").unwrap();
        store.sync().unwrap();
    }
    std::fs::write(dir.path().join("x/not valid"), b"").unwrap();
    let store = LocalObjectStore::open(dir.path()).unwrap();
    assert_eq!(read(&store, "x/y", 0, 6), b"\0\0\0abc");
    assert_eq!(store.list("").unwrap(), vec!["x/y"]);
}

#[test]
fn local_store_lends_what_it_holds_and_keeps_it_past_removal() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalObjectStore::open(dir.path()).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8 + 1).collect();
    s.write_at("i/o", 0, &data).unwrap();
    let lent = s
        .lend("i/o", 5000, 1 << 20)
        .unwrap()
        .expect("a local store lends");
    assert_eq!(lent.as_bytes(), &data[5000..]);
    // A write shows through (the bytes are the file's when copied)...
    s.write_at("i/o", 5000, b"new").unwrap();
    assert_eq!(&lent.as_bytes()[..3], b"new");
    // ...a removal does not: the lent bytes keep the removed object's.
    s.remove("i/o").unwrap();
    assert_eq!(&lent.as_bytes()[3..], &data[5003..]);
    assert!(s.lend("i/o", 0, 10).unwrap().is_none());
}

/// Lent bytes of `name` at `offset`, at most `len` of them.
fn lent(s: &LocalObjectStore, name: &str, offset: u64, len: usize) -> Vec<u8> {
    s.lend(name, offset, len)
        .unwrap()
        .expect("a local store lends")
        .as_bytes()
        .to_vec()
}

#[test]
fn local_store_lends_from_windows_within_and_across() {
    // One window per shard: lends evict each other all the time.
    let dir = tempfile::tempdir().unwrap();
    for windows in [0, 1, 2048] {
        let s =
            LocalObjectStore::open_with_limits(&dir.path().join(windows.to_string()), 64, windows)
                .unwrap();
        let w = LEND_WINDOW as usize;
        let data: Vec<u8> = (0..2 * w + 5000).map(|i| (i % 251) as u8 + 1).collect();
        s.write_at("big", 0, &data).unwrap();
        for (off, len) in [
            (0, 1 << 20),
            (w - 4096, 4096),        // a window's last page
            (w - 100, 200),          // across two windows
            (w, 1 << 20),            // the second window's start
            (2 * w - 10, 1 << 20),   // across into the last, short, window
            (2 * w + 4000, 1 << 20), // cut at the object's end
        ] {
            let end = (off + len).min(data.len());
            assert_eq!(
                lent(&s, "big", off as u64, len),
                &data[off..end],
                "{windows}: {off}+{len}"
            );
        }
        // Many objects, many more than the windows cached: each still lends
        // its own bytes, then and after being evicted.
        for round in 0..2 {
            for i in 0..200u32 {
                let name = format!("o/{i}");
                let bytes = i.to_le_bytes().repeat(1000);
                if round == 0 {
                    s.write_at(&name, 0, &bytes).unwrap();
                }
                assert_eq!(lent(&s, &name, 0, 1 << 20), bytes, "{windows}: {name}");
            }
        }
    }
}

#[test]
fn local_store_lends_an_object_as_it_grows_and_after_it_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalObjectStore::open(dir.path()).unwrap();
    // Mapped while short: what is written past its end later is lent too.
    s.write_at("g", 0, b"0123456789").unwrap();
    assert_eq!(lent(&s, "g", 0, 100), b"0123456789");
    s.write_at("g", 5000, b"later").unwrap();
    let got = lent(&s, "g", 0, 6000);
    assert_eq!(got.len(), 5005);
    assert_eq!(&got[..10], b"0123456789");
    assert!(got[10..5000].iter().all(|&b| b == 0));
    assert_eq!(&got[5000..], b"later");
    // Removed and written again: the new file's bytes, never the removed
    // one's (a cached mapping of it would also keep its space).
    s.remove("g").unwrap();
    s.write_at("g", 0, b"new file").unwrap();
    assert_eq!(lent(&s, "g", 0, 100), b"new file");
}

#[test]
fn local_punch_releases_space() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalObjectStore::open(dir.path()).unwrap();
    store.write_at("o", 0, &vec![7u8; 1 << 20]).unwrap();
    store.sync().unwrap();
    let before = store.allocated("o").unwrap();
    assert!(before >= 1 << 20);
    store.punch("o", 0, 1 << 20).unwrap();
    assert!(store.allocated("o").unwrap() <= before);
    assert_eq!(read(&store, "o", 0, 1 << 20), vec![0; 1 << 20]);
    assert_eq!(
        std::fs::metadata(dir.path().join("o")).unwrap().len(),
        1 << 20
    );
}

#[test]
fn local_prune_drops_only_empty_directories() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalObjectStore::open(dir.path()).unwrap();
    store.write_at("img1/a/o", 0, b"x").unwrap();
    store.write_at("img2/o", 0, b"y").unwrap();
    // Still holding objects: left alone.
    store.prune("img2/").unwrap();
    store.prune("img1/a/").unwrap();
    assert_eq!(store.list("").unwrap(), ["img1/a/o", "img2/o"]);
    store.remove("img2/o").unwrap();
    store.prune("img2/").unwrap();
    store.sync().unwrap();
    assert!(!dir.path().join("img2").exists(), "empty directory kept");
    // Nothing there, twice: not an error.
    store.prune("img2/").unwrap();
    store.prune("never/").unwrap();
    // Only whole, valid prefixes.
    for bad in ["img1", "../x/", "/", "a//"] {
        assert!(
            matches!(store.prune(bad), Err(StorageError::InvalidName(_))),
            "{bad:?} accepted"
        );
    }
    // A pruned prefix takes objects again.
    store.write_at("img2/p", 0, b"z").unwrap();
    assert_eq!(read(&store, "img2/p", 0, 1), b"z");
    assert!(dir.path().join("img1/a/o").exists());
}

#[test]
fn mem_allocated_counts_pages() {
    let s = MemObjectStore::new();
    s.write_at("o", 4095, b"ab").unwrap(); // touches pages 0 and 1
    assert_eq!(s.allocated("o").unwrap(), 8192);
    s.punch("o", 0, 4096).unwrap();
    assert_eq!(s.allocated("o").unwrap(), 4096);
    assert_eq!(read(&s, "o", 4095, 2), b"\0b");
}

// ---------------------------------------------------------------- faults

#[test]
fn fail_after_ops() {
    let inner = Arc::new(MemObjectStore::new());
    let faulty = FaultyObjectStore::new(inner.clone(), FaultConfig::default());
    faulty.write_at("a", 0, b"1").unwrap();
    faulty.write_at("b", 0, b"1").unwrap();
    assert_eq!(faulty.ops(), 2);

    // Armed after setup: two more ops succeed, then everything fails.
    faulty.set(FaultConfig {
        fail_after_ops: Some(2),
        ..FaultConfig::default()
    });
    faulty.write_at("c", 0, b"1").unwrap();
    faulty.sync().unwrap();
    assert!(matches!(
        faulty.write_at("d", 0, b"1"),
        Err(StorageError::Injected(_))
    ));
    assert!(matches!(
        faulty.read_at("a", 0, &mut [0]),
        Err(StorageError::Injected(_))
    ));
    assert!(matches!(faulty.list(""), Err(StorageError::Injected(_))));
    assert_eq!(faulty.ops(), 7);
    // The failed write never reached the inner store.
    assert_eq!(inner.list("").unwrap(), vec!["a", "b", "c"]);

    faulty.set(FaultConfig::default());
    faulty.write_at("d", 0, b"1").unwrap();
}

#[test]
fn fail_sync_and_lying_punch() {
    let inner = Arc::new(MemObjectStore::new());
    let faulty = FaultyObjectStore::new(
        inner.clone(),
        FaultConfig {
            fail_sync: true,
            lie_about_zeroing: true,
            ..FaultConfig::default()
        },
    );
    faulty.write_at("a", 0, b"data").unwrap();
    faulty.punch("a", 0, 4).unwrap();
    assert_eq!(read(&faulty, "a", 0, 4), b"data"); // the lie
    assert!(matches!(faulty.sync(), Err(StorageError::Injected(_))));
    inner.crash();
    assert_eq!(read(&faulty, "a", 0, 4), vec![0; 4]); // the sync never happened
}

#[test]
fn delay_slows_every_op() {
    let delay = std::time::Duration::from_millis(20);
    let faulty = FaultyObjectStore::new(
        Arc::new(MemObjectStore::new()),
        FaultConfig {
            delay: Some(delay),
            ..FaultConfig::default()
        },
    );
    let start = std::time::Instant::now();
    faulty.write_at("a", 0, b"x").unwrap();
    faulty.sync().unwrap();
    assert!(start.elapsed() >= 2 * delay);
}

#[test]
fn crash_loses_unsynced_keeps_synced() {
    let s = MemObjectStore::new();
    s.write_at("kept", 0, b"synced").unwrap();
    s.write_at("removed", 0, b"old").unwrap();
    s.write_at("punched", 0, &[9; 8192]).unwrap();
    s.sync().unwrap();

    s.write_at("kept", 0, b"SYNC").unwrap(); // lost
    s.start_writeback("kept", 0, 4); // a hint: still lost
    s.write_at("new", 0, b"lost").unwrap(); // lost, with the object
    s.remove("removed").unwrap(); // undone
    s.punch("punched", 0, 8192).unwrap(); // undone
    let snapshot = s.durable_snapshot();
    let clone = s.clone();
    assert_eq!(read(&clone, "kept", 0, 6), b"SYNCed");

    s.crash();
    for store in [&s, &clone, &snapshot] {
        assert_eq!(read(store, "kept", 0, 6), b"synced");
        assert_eq!(read(store, "removed", 0, 3), b"old");
        assert_eq!(read(store, "punched", 0, 8192), vec![9; 8192]);
        assert_eq!(store.list("").unwrap(), vec!["kept", "punched", "removed"]);
    }

    // A synced removal survives a crash.
    s.remove("removed").unwrap();
    s.sync().unwrap();
    s.crash();
    assert_eq!(s.list("").unwrap(), vec!["kept", "punched"]);
    // The snapshot is independent.
    assert_eq!(
        snapshot.list("").unwrap(),
        vec!["kept", "punched", "removed"]
    );
    snapshot.write_at("kept", 0, b"X").unwrap();
    assert_eq!(read(&s, "kept", 0, 1), b"s");
}

#[test]
fn faulty_meta_store() {
    let inner = Arc::new(MemMetaStore::new());
    let faulty = FaultyMetaStore::new(inner.clone(), FaultConfig::default());
    meta_contract(&faulty);

    faulty.set(FaultConfig {
        fail_sync: true,
        ..FaultConfig::default()
    });
    let put = MetaOp::Put {
        table: "t",
        key: b"new".to_vec(),
        value: b"v".to_vec(),
    };
    assert!(matches!(
        faulty.commit(vec![put.clone()]),
        Err(StorageError::Injected(_))
    ));
    assert_eq!(inner.get("t", b"new").unwrap(), None);

    faulty.set(FaultConfig {
        fail_after_ops: Some(1),
        ..FaultConfig::default()
    });
    assert_eq!(faulty.get("t", b"new").unwrap(), None);
    assert!(matches!(
        faulty.get("t", b"new"),
        Err(StorageError::Injected(_))
    ));
    assert!(matches!(
        faulty.commit(vec![put]),
        Err(StorageError::Injected(_))
    ));
}

// ---------------------------------------------------------------- metadata

fn put(table: &'static str, key: &[u8], value: &[u8]) -> MetaOp {
    MetaOp::Put {
        table,
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

fn del(table: &'static str, key: &[u8]) -> MetaOp {
    MetaOp::Delete {
        table,
        key: key.to_vec(),
    }
}

fn pairs(items: &[(&[u8], &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
    items
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

fn meta_contract(m: &dyn MetaStore) {
    // A table never written reads as empty.
    assert_eq!(m.get("nope", b"k").unwrap(), None);
    assert!(m.scan("nope", b"").unwrap().is_empty());
    m.commit(vec![]).unwrap();

    // Put / get / replace / delete.
    m.commit(vec![put("t", b"k", b"v1")]).unwrap();
    assert_eq!(m.get("t", b"k").unwrap(), Some(b"v1".to_vec()));
    m.commit(vec![put("t", b"k", b"v2")]).unwrap();
    assert_eq!(m.get("t", b"k").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(m.get("other", b"k").unwrap(), None);
    m.commit(vec![
        del("t", b"k"),
        del("t", b"absent"),
        del("never", b"x"),
    ])
    .unwrap();
    assert_eq!(m.get("t", b"k").unwrap(), None);
    // Empty keys and values are fine.
    m.commit(vec![put("t", b"", b"")]).unwrap();
    assert_eq!(m.get("t", b"").unwrap(), Some(vec![]));
    m.commit(vec![del("t", b"")]).unwrap();

    // One batch over several tables, applied in order.
    m.commit(vec![
        put("s", b"img/b", b"2"),
        put("s", b"img/a", b"1"),
        put("s", b"img\xff", b"x"),
        put("s", b"im", b"y"),
        put("s", b"img/c", b"tmp"),
        put("u", b"img/z", b"other table"),
        del("s", b"img/c"),
        put("s", b"img/\x00", b"0"),
        put("s", b"img/a", b"1bis"),
        put("s", b"imh", b"after"),
    ])
    .unwrap();

    // Scan: key order, bytewise, only the prefix, only the table.
    assert_eq!(
        m.scan("s", b"img/").unwrap(),
        pairs(&[(b"img/\x00", b"0"), (b"img/a", b"1bis"), (b"img/b", b"2")])
    );
    assert_eq!(
        m.scan("s", b"img").unwrap(),
        pairs(&[
            (b"img/\x00", b"0"),
            (b"img/a", b"1bis"),
            (b"img/b", b"2"),
            (b"img\xff", b"x")
        ])
    );
    assert_eq!(m.scan("s", b"").unwrap().len(), 6);
    assert_eq!(
        m.scan("s", b"img/a").unwrap(),
        pairs(&[(b"img/a", b"1bis")])
    );
    assert!(m.scan("s", b"img/a\x00").unwrap().is_empty());
    assert!(m.scan("s", b"zzz").unwrap().is_empty());
    assert_eq!(
        m.scan("u", b"").unwrap(),
        pairs(&[(b"img/z", b"other table")])
    );
}

#[test]
fn mem_meta_store_contract() {
    let m = MemMetaStore::new();
    meta_contract(&m);
    let snap = m.snapshot();
    m.commit(vec![put("t", b"after", b"1")]).unwrap();
    assert_eq!(snap.get("t", b"after").unwrap(), None);
    assert_eq!(m.clone().get("t", b"after").unwrap(), Some(b"1".to_vec()));
}

#[test]
fn redb_meta_store_contract_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    {
        let m = RedbMetaStore::open(&path).unwrap();
        meta_contract(&m);
        // Already open: a second handle is refused, not corrupting.
        assert!(matches!(
            RedbMetaStore::open(&path),
            Err(StorageError::Meta(_))
        ));
    }
    let m = RedbMetaStore::open(&path).unwrap();
    assert_eq!(m.get("s", b"img/a").unwrap(), Some(b"1bis".to_vec()));
    assert_eq!(m.scan("s", b"").unwrap().len(), 6);
}

#[test]
fn redb_rejects_empty_table_name() {
    let dir = tempfile::tempdir().unwrap();
    let m = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
    assert!(matches!(
        m.commit(vec![put("ok", b"k", b"v"), put("", b"k", b"v")]),
        Err(StorageError::Meta(_))
    ));
    // The failed batch applied nothing.
    assert_eq!(m.get("ok", b"k").unwrap(), None);
    assert!(matches!(m.get("", b"k"), Err(StorageError::Meta(_))));
}

#[test]
fn meta_commits_are_atomic_to_concurrent_readers() {
    // A reader never sees half a batch (both keys change together).
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Arc<dyn MetaStore>> = vec![
        Arc::new(MemMetaStore::new()),
        Arc::new(RedbMetaStore::open(&dir.path().join("m.redb")).unwrap()),
    ];
    for m in stores {
        m.commit(vec![put("t", b"a", b"0"), put("t", b"b", b"0")])
            .unwrap();
        std::thread::scope(|scope| {
            let writer = Arc::clone(&m);
            scope.spawn(move || {
                for i in 1..30u32 {
                    let v = i.to_string();
                    writer
                        .commit(vec![
                            put("t", b"a", v.as_bytes()),
                            put("t", b"b", v.as_bytes()),
                        ])
                        .unwrap();
                }
            });
            for _ in 0..200 {
                let all = m.scan("t", b"").unwrap();
                assert_eq!(all.len(), 2);
                assert_eq!(all[0].1, all[1].1);
            }
        });
    }
}

// ---------------------------------------------------------------- names, lock

#[test]
fn name_validation() {
    for good in ["a", "a/b", "img-1/obj_2.3", ".hidden", "a/..b", "..."] {
        assert!(validate_name(good).is_ok(), "{good:?}");
    }
    for bad in [
        "", "/", "/a", "a/", "a//b", ".", "..", "a/./b", "a/../b", "a b", "a\0", "ü",
    ] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn dir_lock() {
    let dir = tempfile::tempdir().unwrap();
    let lock = DirLock::acquire(dir.path(), "vdisk serve --port 10809")
        .unwrap()
        .unwrap();
    assert_eq!(lock.path(), dir.path().join("vdisk.lock"));

    // A second open file description conflicts, even in this process.
    let holder = DirLock::acquire(dir.path(), "other").unwrap().unwrap_err();
    assert_eq!(holder.pid, Some(std::process::id()));
    assert_eq!(holder.description, "vdisk serve --port 10809");
    assert!(holder.since_unix.is_some());
    let shown = holder.to_string();
    assert!(
        shown.starts_with(&format!(
            "pid {} (vdisk serve --port 10809) since ",
            std::process::id()
        )),
        "{shown}"
    );

    // Released on drop; the leftover file does not block.
    drop(lock);
    let lock = DirLock::acquire(dir.path(), "second\nline")
        .unwrap()
        .unwrap();
    let holder = DirLock::acquire(dir.path(), "third").unwrap().unwrap_err();
    assert_eq!(holder.description, "second line");
    drop(lock);

    // A missing directory is an I/O error naming the path.
    let err = DirLock::acquire(&dir.path().join("nope"), "x").unwrap_err();
    assert!(err.to_string().contains("vdisk.lock"), "{err}");
}

#[test]
fn sync_objects_makes_only_the_named_objects_durable() {
    let s = MemObjectStore::new();
    s.write_at("a", 0, b"one").unwrap();
    s.write_at("b", 0, b"two").unwrap();
    s.write_at("gone", 0, b"x").unwrap();
    s.sync().unwrap();
    s.punch("a", 0, 3).unwrap();
    s.remove("gone").unwrap();
    s.write_at("b", 0, b"TWO").unwrap();
    s.sync_objects(&["a".to_string(), "gone".to_string()])
        .unwrap();
    s.crash();
    assert_eq!(read(&s, "a", 0, 3), vec![0; 3]);
    assert_eq!(read(&s, "b", 0, 3), b"two");
    assert_eq!(s.list("").unwrap(), vec!["a", "b"]);

    // On files: the named ones are synced (their data stays readable),
    // missing ones are fine.
    let dir = tempfile::tempdir().unwrap();
    let local = LocalObjectStore::open(dir.path()).unwrap();
    local.write_at("img/1.1", 0, b"data").unwrap();
    local.remove("img/1.1").unwrap();
    local.write_at("img/2.1", 0, b"more").unwrap();
    local
        .sync_objects(&["img/1.1".to_string(), "img/2.1".to_string()])
        .unwrap();
    assert_eq!(read(&local, "img/2.1", 0, 4), b"more");
    assert_eq!(local.list("").unwrap(), vec!["img/2.1"]);
}

/// Drops `path`'s pages from the page cache (they must be clean).
fn evict(path: &std::path::Path) {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: posix_fadvise only reads its integer arguments; `f` keeps
    // the descriptor open for the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

#[test]
fn local_store_fills_in_place_what_is_in_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalObjectStore::open(dir.path()).unwrap();
    let window = LEND_WINDOW as usize;
    let old: Vec<u8> = (0..2 * window).map(|i| (i % 239) as u8 + 1).collect();
    s.write_at("p/o", 0, &old).unwrap();
    let data = vec![0x5Au8; 1 << 20];
    let mut fill = |dst: &mut [u8]| {
        dst.copy_from_slice(&data[..dst.len()]);
        dst.len()
    };
    // In the page cache (just written): in place, seen by reads and lent
    // reads alike.
    let f = s
        .fill_in_place("p/o", 1 << 20, 1 << 20, 4096, &mut fill)
        .unwrap()
        .expect("a local store fills what is cached in place");
    assert_eq!(f.len, 1 << 20);
    assert!(f.zero.iter().all(|z| !z));
    assert_eq!(read(&s, "p/o", 1 << 20, 1 << 20), data);
    assert_eq!(
        s.lend("p/o", 1 << 20, 4096).unwrap().unwrap().as_bytes(),
        &data[..4096]
    );
    // Across two windows: declined.
    assert!(s
        .fill_in_place("p/o", (window - 4096) as u64, 8192, 4096, &mut fill)
        .unwrap()
        .is_none());
    // Not in the page cache: declined (a write in place would read it
    // from the disk first).
    s.sync().unwrap();
    let cold = LocalObjectStore::open(dir.path()).unwrap();
    evict(&dir.path().join("p/o"));
    assert!(cold
        .fill_in_place("p/o", window as u64, 1 << 20, 4096, &mut fill)
        .unwrap()
        .is_none());
    assert_eq!(
        read(&cold, "p/o", window as u64, 4096),
        &old[window..window + 4096]
    );
    // Cached again (the read above brought it in, with readahead).
    assert!(cold
        .fill_in_place("p/o", window as u64, 4096, 4096, &mut fill)
        .unwrap()
        .is_some());
    // Without lend windows, nothing is lent for writing either.
    let none = LocalObjectStore::open_with_limits(dir.path(), 64, 0).unwrap();
    assert!(none
        .fill_in_place("p/o", 0, 4096, 4096, &mut fill)
        .unwrap()
        .is_none());
}
