//! Lent reads (`Image::read_lent`) on a real data directory: the same
//! bytes as copied reads, lent where the local store can, and no punch of
//! lent data until the lent read is dropped.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use vdisk_engine::lend::Piece;
use vdisk_engine::{CreateOptions, Image, ImageSpec, NoProgress, Store};

const ORDER: u8 = 16;
const OBJ: u64 = 1 << ORDER;

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s).expect("spec")
}

fn create(store: &Store, name: &str, size: u64) -> Image {
    store
        .create(
            &spec(name),
            &CreateOptions {
                size,
                order: Some(ORDER),
                ..Default::default()
            },
        )
        .expect("create")
}

/// Bytes allocated by every file under `dir`.
fn allocated(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let md = e.metadata().expect("metadata");
        if md.is_dir() {
            total += allocated(&e.path());
        } else {
            total += md.blocks() * 512;
        }
    }
    total
}

fn lent_pieces(r: &vdisk_engine::lend::LentRead) -> usize {
    r.pieces()
        .iter()
        .filter(|p| matches!(p, Piece::Lent(_)))
        .count()
}

#[test]
fn lent_reads_match_copied_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_dir(dir.path(), "lend test").expect("open");
    let size = 8 * OBJ;
    let img = create(&store, "img", size);
    img.write_at(0, &bytes(1, (3 * OBJ) as usize))
        .expect("write");
    img.write_at(OBJ / 2, &vec![0; OBJ as usize])
        .expect("zeros");
    img.discard(2 * OBJ + 4096, 8192).expect("discard");
    img.write_at(5 * OBJ + 100, &bytes(2, 10_000))
        .expect("write");
    store.snap_create(&spec("img@s")).expect("snap");
    img.write_at(OBJ + 4096, &bytes(3, (OBJ + 5000) as usize))
        .expect("overwrite");
    store.snap_protect(&spec("img@s")).expect("protect");
    let child = store
        .clone_image(&spec("img@s"), &spec("child"), None, None)
        .expect("clone");
    child
        .write_at(OBJ - 3000, &bytes(4, 9000))
        .expect("child write");
    img.flush().expect("flush");
    child.flush().expect("flush");
    let snap = store.open(&spec("img@s")).expect("open snap");

    let mut rng = Mix(7);
    for h in [&img, &snap, &child] {
        let whole = h.read_lent(0, size as usize).expect("lent");
        let mut want = vec![0; size as usize];
        h.read_at(0, &mut want).expect("read");
        assert_bytes_eq(&whole.to_vec(), &want, &format!("{} whole", h.spec()));
        assert!(lent_pieces(&whole) > 0, "{}: nothing lent", h.spec());
        for _ in 0..200 {
            let off = rng.below(size);
            let len = rng.below((size - off).min(3 * OBJ)) as usize + 1;
            let got = h.read_lent(off, len).expect("lent");
            assert_eq!(got.len(), len);
            assert_bytes_eq(
                &got.to_vec(),
                &want[off as usize..off as usize + len],
                &format!("{} at {off}+{len}", h.spec()),
            );
        }
    }
    // Out of range: the same error as a read.
    assert!(img.read_lent(size - 10, 11).is_err());
}

#[test]
fn a_punch_waits_for_the_lent_read_that_may_send_its_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_dir(dir.path(), "lend test").expect("open");
    let img = create(&store, "img", 4 * OBJ);
    // Two blocks, so the old generation keeps one and its other block is
    // punched (not the file removed, which lent bytes would survive).
    img.write_at(0, &vec![0xAA; 8192]).expect("write");
    // A snapshot taken and removed: the head writes a new generation from
    // now on, and the old one's block is no longer needed by anyone but
    // the head.
    store.snap_create(&spec("img@s")).expect("snap");
    store
        .snap_remove(&spec("img@s"), &NoProgress)
        .expect("snap rm");
    img.flush().expect("flush");
    let pools = dir.path().join("pools");

    let lent = img.read_lent(0, 4096).expect("lent");
    assert_eq!(lent_pieces(&lent), 1);
    // Shadowed by a write: the old block is released at the next flush...
    img.write_at(0, &vec![0xBB; 4096]).expect("overwrite");
    img.flush().expect("flush");
    let before = allocated(&pools);
    // ...but not while the read that lent it may still send it.
    assert!(
        lent.to_vec() == vec![0xAA; 4096],
        "a block still lent was punched"
    );
    let mut now = vec![0; 4096];
    img.read_at(0, &mut now).expect("read");
    assert_eq!(now, vec![0xBB; 4096]);

    drop(lent);
    img.flush().expect("flush");
    assert_eq!(
        allocated(&pools),
        before - 4096,
        "the block is punched once the lent read is gone"
    );
    img.read_at(0, &mut now).expect("read");
    assert_eq!(now, vec![0xBB; 4096]);
}
