//! Writes in place (`Image::write_in_place`, an NBD server's large WRITEs
//! received straight into the page cache): the same result as `write_at`
//! with the same data, compared on twin images written side by side, on
//! the in-memory store and on a real data directory. Same reads of the
//! head and of the snapshots, same data extents, diff and `du`, and (on a
//! real directory) the same space: zero blocks are punched, not stored.
//! Also a fill that stops short (the kernel could not write a page) and a
//! source that fails.

mod common;

use common::*;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use vdisk_engine::{CreateOptions, ErrorKind, Image, ImageSpec, NoProgress, Store};
use vdisk_storage::ObjectStore;
use vdisk_storage::{MemMetaStore, MemObjectStore};

const ORDER: u8 = 16;
const OBJ: u64 = 1 << ORDER;
const BLOCK: usize = 4096;

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s).expect("spec")
}

fn create(store: &Store, name: &str) -> Image {
    store
        .create(
            &spec(name),
            &CreateOptions {
                size: 4 * OBJ,
                order: Some(ORDER),
                ..Default::default()
            },
        )
        .expect("create")
}

/// `blocks` blocks of data, every block whose bit in `zeros` is set all
/// zero.
fn mixed(seed: u64, blocks: usize, zeros: u64) -> Vec<u8> {
    let mut v = bytes(seed, blocks * BLOCK);
    for (i, b) in v.chunks_mut(BLOCK).enumerate() {
        if zeros >> (i % 64) & 1 == 1 {
            b.fill(0);
        }
    }
    v
}

/// Writes `data` at `off` in place, the first fill stopping after
/// `short` bytes if given; `false` if the engine declined.
fn in_place(img: &Image, off: u64, data: &[u8], short: Option<usize>) -> bool {
    let (mut calls, mut at) = (0, 0usize);
    img.write_in_place(off, data.len(), &mut |dst| {
        calls += 1;
        let n = match short {
            Some(s) if calls == 1 => dst.len().min(s),
            _ => dst.len(),
        };
        dst[..n].copy_from_slice(&data[at..at + n]);
        at += n;
        Ok(n)
    })
    .expect("write in place")
}

/// The same write on both twins: `write_at` on `a`, in place on `b`
/// (`write_at` where declined). Returns whether `b`'s was in place.
fn twin(a: &Image, b: &Image, off: u64, data: &[u8], short: Option<usize>) -> bool {
    a.write_at(off, data).expect("write a");
    let done = in_place(b, off, data, short);
    if !done {
        b.write_at(off, data).expect("write b");
    }
    done
}

fn read_all(img: &Image) -> Vec<u8> {
    let mut buf = vec![0u8; img.size() as usize];
    img.read_at(0, &mut buf).expect("read");
    buf
}

/// Everything a user can see of the twins is the same.
fn assert_twins(store: &Store) {
    for s in ["a", "a@s1"] {
        let other = s.replace('a', "b");
        let (x, y) = (
            store.open(&spec(s)).expect("open"),
            store.open(&spec(&other)).expect("open"),
        );
        assert_bytes_eq(&read_all(&y), &read_all(&x), &other);
        assert_eq!(
            vdisk_engine::report::data_extents(&y).expect("extents"),
            vdisk_engine::report::data_extents(&x).expect("extents"),
            "data extents of {other}"
        );
    }
    assert_eq!(
        store.diff(&spec("b"), Some("s1")).expect("diff"),
        store.diff(&spec("a"), Some("s1")).expect("diff"),
        "diff since s1"
    );
    let used = |n: &str| -> Vec<u64> {
        store
            .du(&spec(n))
            .expect("du")
            .iter()
            .map(|e| e.used)
            .collect()
    };
    assert_eq!(used("b"), used("a"), "du");
}

/// The writes of the test, on twins `a` and `b` of `store`; returns how
/// many of `b`'s were in place.
fn scenario(store: &Store) -> usize {
    let (a, b) = (create(store, "a"), create(store, "b"));
    let mut in_place = 0;
    let mut both = |off: u64, data: &[u8], short: Option<usize>| {
        let done = twin(&a, &b, off, data, short);
        in_place += usize::from(done);
        done
    };
    // No object files yet: declined.
    assert!(!both(0, &bytes(1, 3 * OBJ as usize), None));
    // Over data of the head's own generation: zeros punched, data kept.
    assert!(both(0, &mixed(2, 8, 0b1010_0101), None));
    // Not into an object with holes (the zero blocks just punched): a
    // write fault would allocate the holes of its folio again.
    assert!(!both(8 * BLOCK as u64, &bytes(3, 4 * BLOCK), None));
    // Not aligned, across objects: declined.
    assert!(!both(OBJ + 100, &bytes(4, 8192), None));
    assert!(!both(2 * OBJ - 4096, &bytes(5, 8192), None));
    // The fill stops short, in the second block; the rest comes by the
    // usual way.
    assert!(both(OBJ + 8192, &mixed(6, 4, 0b1000), Some(5000)));
    store.snap_create(&spec("a@s1")).expect("snap");
    store.snap_create(&spec("b@s1")).expect("snap");
    // A new generation: in place once it holds the whole object. Zeros
    // over the snapshot's data become zero markers.
    assert!(!both(0, &bytes(7, OBJ as usize), None));
    assert!(both(0, &mixed(8, 16, 0b0110_0000_0001_1000), None));
    // Stopping short right at the start, and at a block's end.
    assert!(!both(2 * OBJ, &bytes(9, OBJ as usize), None));
    assert!(both(2 * OBJ, &bytes(10, 16384), Some(0)));
    assert!(both(2 * OBJ + 32768, &mixed(11, 3, 0b001), Some(4096)));
    // Over a generation no snapshot needs any more (its snapshot was
    // removed since): the older blocks this write shadows are released.
    store.snap_create(&spec("a@s2")).expect("snap");
    store.snap_create(&spec("b@s2")).expect("snap");
    assert!(!both(3 * OBJ, &bytes(12, OBJ as usize), None));
    store.snap_create(&spec("a@s3")).expect("snap");
    store.snap_create(&spec("b@s3")).expect("snap");
    assert!(!both(3 * OBJ, &bytes(13, OBJ as usize), None));
    for s in ["a@s3", "b@s3"] {
        store.snap_remove(&spec(s), &NoProgress).expect("snap rm");
    }
    assert!(both(3 * OBJ, &mixed(14, 16, 0b1), None));
    a.flush().expect("flush");
    b.flush().expect("flush");
    in_place
}

#[test]
fn in_memory_writes_in_place_match_write_at() {
    let meta = MemMetaStore::new();
    let data = MemObjectStore::new();
    let store = open_store(&meta, Arc::new(data.clone()), ORDER);
    assert_eq!(scenario(&store), 6);
    assert_twins(&store);
    let space = |name: &str| -> u64 {
        let id = store.record(&spec(name)).expect("record").id;
        let names = data.list(&format!("{id:08x}/")).expect("list");
        names
            .iter()
            .map(|n| data.allocated(n).expect("allocated"))
            .sum()
    };
    assert_eq!(space("b"), space("a"), "space of the twins' objects");
}

/// Bytes allocated by the files under `dir`.
fn allocated(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in entries {
        let e = e.expect("entry");
        let md = e.metadata().expect("metadata");
        total += if md.is_dir() {
            allocated(&e.path())
        } else {
            md.blocks() * 512
        };
    }
    total
}

#[test]
fn page_cache_writes_in_place_match_write_at() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_dir(dir.path(), "in place test").expect("open");
    // What the local store writes in place is in the page cache: it was
    // written just before.
    assert_eq!(scenario(&store), 6);
    assert_twins(&store);
    let space = |name: &str| {
        let id = store.record(&spec(name)).expect("record").id;
        allocated(&dir.path().join("pools/rbd").join(format!("{id:08x}")))
    };
    assert_eq!(space("b"), space("a"), "space of the twins' objects");
}

#[test]
fn a_failing_source_fails_the_write() {
    let (store, _, _) = mem_store(ORDER);
    let img = create(&store, "a");
    img.write_at(0, &bytes(1, OBJ as usize)).expect("write");
    let e = img
        .write_in_place(0, 8192, &mut |_| Err(io::ErrorKind::ConnectionReset.into()))
        .expect_err("the source failed");
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    // Stopping short, then failing for the rest.
    let mut calls = 0;
    let e = img
        .write_in_place(0, 8192, &mut |dst| {
            calls += 1;
            if calls == 1 {
                dst[..100].fill(1);
                Ok(100)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            }
        })
        .expect_err("the source failed");
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    // The image goes on.
    img.write_at(0, &[2; 4096]).expect("write after");
    let mut buf = [0u8; 4096];
    img.read_at(0, &mut buf).expect("read");
    assert_eq!(buf, [2; 4096]);
    // Snapshots are read-only.
    store.snap_create(&spec("a@s")).expect("snap");
    let snap = store.open(&spec("a@s")).expect("open");
    let e = snap
        .write_in_place(0, 4096, &mut |dst| Ok(dst.len()))
        .expect_err("read-only");
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
}
