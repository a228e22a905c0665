//! Model-based property tests of the image engine.
//!
//! Random sequences of operations run against a store on in-memory backends
//! with small objects (4–16 KiB, so object boundaries are crossed all the
//! time) and against a trivial model: a `Vec<u8>` per image head, one per
//! snapshot, one per clone head. After every operation the images touched
//! are read back whole and compared with the model; every few operations
//! (and at the end) every head and snapshot is, `diff` and `data_extents`
//! are checked against byte diffs of the model, `du` against bounds, and at
//! the end of every case `check` must find no errors.
//!
//! `VDISK_TEST_LONG=1`: 1000 cases of up to 200 operations (default 64 × 60).

mod common;

use common::*;
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use vdisk_engine::report::DiffExtent;
use vdisk_engine::{
    CreateOptions, Error, Features, FullSpeed, Image, ImageSpec, NoProgress, Store,
};
use vdisk_storage::{MemMetaStore, MemObjectStore};

const MAX_SIZE: u64 = 256 << 10;
const MAX_IMAGES: usize = 4;
const BLOCK: u64 = 4096;

/// A range of an image, chosen relative to its size when the op runs.
#[derive(Debug, Clone, Copy)]
struct R {
    kind: u8,
    a: u64,
    b: u64,
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        img: u8,
        range: R,
        pat: u8,
        seed: u64,
    },
    Discard {
        img: u8,
        range: R,
    },
    Zeroes {
        img: u8,
        range: R,
    },
    SnapCreate {
        img: u8,
    },
    SnapRemove {
        img: u8,
        snap: u8,
    },
    Rollback {
        img: u8,
        snap: u8,
    },
    Clone {
        img: u8,
        snap: u8,
        order: u8,
    },
    Flatten {
        img: u8,
    },
    Unprotect {
        img: u8,
        snap: u8,
    },
    Resize {
        img: u8,
        sectors: u16,
        shrink_ok: bool,
    },
    Flush {
        img: u8,
    },
    Reopen,
    Feature {
        img: u8,
        which: u8,
    },
    SnapRename {
        img: u8,
        snap: u8,
    },
    /// Copy the head (or a snapshot) into a new, independent image.
    Copy {
        img: u8,
        snap: u8,
        from_snap: bool,
    },
    Remove {
        img: u8,
    },
    GrowTo {
        img: u8,
        extra: u16,
    },
    MapRebuild {
        img: u8,
    },
    CheckRepair,
    /// Releases the data queued for trimming (with background trimming on,
    /// snapshot removal and rollback only queue it).
    Trim,
}

fn range() -> impl Strategy<Value = R> {
    (0u8..6, any::<u64>(), any::<u64>()).prop_map(|(kind, a, b)| R { kind, a, b })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (any::<u8>(), range(), 0u8..5, any::<u64>())
            .prop_map(|(img, range, pat, seed)| Op::Write { img, range, pat, seed }),
        6 => (any::<u8>(), range()).prop_map(|(img, range)| Op::Discard { img, range }),
        5 => (any::<u8>(), range()).prop_map(|(img, range)| Op::Zeroes { img, range }),
        8 => any::<u8>().prop_map(|img| Op::SnapCreate { img }),
        5 => (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::SnapRemove { img, snap }),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::Rollback { img, snap }),
        4 => (any::<u8>(), any::<u8>(), 12u8..=14)
            .prop_map(|(img, snap, order)| Op::Clone { img, snap, order }),
        2 => any::<u8>().prop_map(|img| Op::Flatten { img }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::Unprotect { img, snap }),
        5 => (any::<u8>(), any::<u16>(), any::<bool>())
            .prop_map(|(img, sectors, shrink_ok)| Op::Resize { img, sectors, shrink_ok }),
        4 => any::<u8>().prop_map(|img| Op::Flush { img }),
        3 => Just(Op::Reopen),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(img, which)| Op::Feature { img, which }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::SnapRename { img, snap }),
        2 => (any::<u8>(), any::<u8>(), any::<bool>())
            .prop_map(|(img, snap, from_snap)| Op::Copy { img, snap, from_snap }),
        2 => any::<u8>().prop_map(|img| Op::Remove { img }),
        2 => (any::<u8>(), any::<u16>()).prop_map(|(img, extra)| Op::GrowTo { img, extra }),
        1 => any::<u8>().prop_map(|img| Op::MapRebuild { img }),
        1 => Just(Op::CheckRepair),
        4 => Just(Op::Trim),
    ]
}

/// Turns a range selector into `(offset, len)` with `len ≥ 1` inside `size`.
fn resolve(r: R, size: u64, obj: u64) -> (u64, u64) {
    assert!(size > 0);
    let clip = |off: u64, len: u64| {
        let off = off.min(size - 1);
        (off, len.clamp(1, size - off))
    };
    match r.kind {
        // Anywhere, any length up to three objects.
        0 => {
            let off = r.a % size;
            clip(off, 1 + r.b % (3 * obj))
        }
        // 4 KiB aligned.
        1 => {
            let blocks = size.div_ceil(BLOCK);
            let off = (r.a % blocks) * BLOCK;
            clip(off, (1 + r.b % (3 * obj / BLOCK)) * BLOCK)
        }
        // Across an object boundary.
        2 => {
            let nobj = size.div_ceil(obj);
            let boundary = ((1 + r.a % nobj) * obj).min(size);
            let off = boundary.saturating_sub(1 + r.b % 6000);
            clip(off, 1 + (r.b >> 20) % 12000)
        }
        // The whole image.
        3 => (0, size),
        // Inside one block.
        4 => {
            let off = r.a % size;
            let room = BLOCK - off % BLOCK;
            clip(off, 1 + r.b % room)
        }
        // Whole objects.
        _ => {
            let nobj = size.div_ceil(obj);
            let off = (r.a % nobj) * obj;
            clip(off, (1 + r.b % 2) * obj)
        }
    }
}

/// Data for a write: random, zero, mixed zero/random 4 KiB blocks, constant.
fn pattern(pat: u8, seed: u64, off: u64, len: u64) -> Vec<u8> {
    match pat {
        0 | 1 => bytes(seed, len as usize),
        2 => vec![0; len as usize],
        3 => {
            let mut v = bytes(seed, len as usize);
            let mut m = Mix(seed ^ 0x5555);
            let mut pos = off;
            while pos < off + len {
                let end = ((pos / BLOCK + 1) * BLOCK).min(off + len);
                if m.next() & 1 == 0 {
                    v[(pos - off) as usize..(end - off) as usize].fill(0);
                }
                pos = end;
            }
            v
        }
        _ => vec![(seed as u8) | 1; len as usize],
    }
}

#[derive(Debug, Clone)]
struct MSnap {
    name: String,
    data: Vec<u8>,
    protected: bool,
}

#[derive(Debug, Clone)]
struct MImg {
    name: String,
    head: Vec<u8>,
    snaps: Vec<MSnap>,
    /// (parent image name, parent snapshot name)
    parent: Option<(String, String)>,
    features: Features,
    /// The last data op was a discard of the whole image.
    fully_discarded: bool,
}

impl MImg {
    fn spec(&self) -> ImageSpec {
        ImageSpec::parse_image(&format!("rbd/{}", self.name)).unwrap()
    }
}

struct World {
    meta: MemMetaStore,
    data: MemObjectStore,
    order: u8,
    store: Option<Store>,
    /// Trimming is left to `Op::Trim` (as the daemon leaves it to its
    /// trimmer) instead of done by the operation.
    background: bool,
    heads: HashMap<String, Image>,
    imgs: Vec<MImg>,
    counter: u32,
    log: Vec<String>,
}

impl World {
    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn reopen(&mut self) {
        self.store().flush_all().unwrap();
        self.heads.clear();
        self.store = None;
        self.store = Some(open_store(
            &self.meta,
            Arc::new(self.data.clone()),
            self.order,
        ));
        self.store().set_background_trim(self.background);
    }

    /// Trims everything queued.
    fn trim(&mut self) {
        let store = self.store();
        for t in store.trim_targets().unwrap() {
            store
                .trim_image(&t, &mut FullSpeed, &NoProgress, &|| false)
                .unwrap();
        }
        assert_eq!(store.trim_backlog().unwrap(), 0);
    }

    fn head(&mut self, i: usize) -> Image {
        let name = self.imgs[i].name.clone();
        if let Some(h) = self.heads.get(&name) {
            return h.clone();
        }
        let h = self.store().open(&self.imgs[i].spec()).unwrap();
        self.heads.insert(name, h.clone());
        h
    }

    fn obj_size(&mut self, i: usize) -> u64 {
        self.head(i).object_size()
    }

    fn children_of(&self, img: &str, snap: &str) -> usize {
        self.imgs
            .iter()
            .filter(|m| {
                m.parent
                    .as_ref()
                    .is_some_and(|(p, s)| p == img && s == snap)
            })
            .count()
    }

    fn check_head(&mut self, i: usize) {
        let h = self.head(i);
        let want = &self.imgs[i].head;
        assert_eq!(h.size(), want.len() as u64, "size of {}", self.imgs[i].name);
        let mut got = vec![0xEE; want.len()];
        h.read_at(0, &mut got).unwrap();
        assert_bytes_eq(&got, want, &format!("head of {}", self.imgs[i].name));
        let lent = h.read_lent(0, want.len()).unwrap().to_vec();
        assert_bytes_eq(
            &lent,
            want,
            &format!("head of {} (lent)", self.imgs[i].name),
        );
    }

    fn check_snaps(&mut self, i: usize) {
        let spec = self.imgs[i].spec();
        for s in &self.imgs[i].snaps {
            let img = self.store().open(&spec.with_snap(&s.name)).unwrap();
            assert_eq!(img.size(), s.data.len() as u64);
            let mut got = vec![0xEE; s.data.len()];
            img.read_at(0, &mut got).unwrap();
            assert_bytes_eq(&got, &s.data, &format!("{spec}@{}", s.name));
            let lent = img.read_lent(0, s.data.len()).unwrap().to_vec();
            assert_bytes_eq(&lent, &s.data, &format!("{spec}@{} (lent)", s.name));
        }
    }

    fn check_all_reads(&mut self) {
        for i in 0..self.imgs.len() {
            self.check_head(i);
            self.check_snaps(i);
        }
    }

    /// diff, data extents and du against the model.
    fn check_reports(&mut self) {
        for i in 0..self.imgs.len() {
            let m = self.imgs[i].clone();
            let spec = m.spec();
            let store = self.store().clone();
            // diff from each snapshot to the head, and between snapshots.
            for (k, from) in m.snaps.iter().enumerate() {
                let ext = store.diff(&spec, Some(&from.name)).unwrap();
                verify_diff(
                    &ext,
                    &m.head,
                    &from.data,
                    &format!("diff {spec} from {}", from.name),
                );
                for to in &m.snaps[k + 1..] {
                    let ext = store
                        .diff(&spec.with_snap(&to.name), Some(&from.name))
                        .unwrap();
                    verify_diff(
                        &ext,
                        &to.data,
                        &from.data,
                        &format!("diff {spec}@{} from {}", to.name, from.name),
                    );
                }
            }
            // diff from nothing and data extents cover every non-zero byte.
            let ext = store.diff(&spec, None).unwrap();
            assert!(ext.iter().all(|e| e.exists));
            let pairs: Vec<(u64, u64)> = ext.iter().map(|e| (e.offset, e.length)).collect();
            verify_covers(&pairs, &m.head, &format!("diff {spec} from nothing"));
            let h = self.head(i);
            let pairs = vdisk_engine::transfer::data_extents(&h).unwrap();
            verify_covers(&pairs, &m.head, &format!("data extents of {spec}"));
            for s in &m.snaps {
                let img = store.open(&spec.with_snap(&s.name)).unwrap();
                let pairs = vdisk_engine::transfer::data_extents(&img).unwrap();
                verify_covers(
                    &pairs,
                    &s.data,
                    &format!("data extents of {spec}@{}", s.name),
                );
            }
            // du.
            let du = store.du(&spec).unwrap();
            assert_eq!(du.len(), m.snaps.len() + 1, "du rows of {spec}: {du:?}");
            assert_eq!(du.last().unwrap().provisioned, m.head.len() as u64);
            for (row, s) in du.iter().zip(&m.snaps) {
                assert_eq!(row.provisioned, s.data.len() as u64, "{du:?}");
            }
            let total: u64 = du.iter().map(|r| r.used).sum();
            // du counts whole 4 KiB blocks.
            let max_size = m
                .snaps
                .iter()
                .map(|s| s.data.len() as u64)
                .chain([m.head.len() as u64])
                .max()
                .unwrap()
                .div_ceil(BLOCK)
                * BLOCK;
            assert!(
                total <= (m.snaps.len() as u64 + 1) * max_size,
                "du of {spec} uses {total} bytes for {} snapshot(s) of at most {max_size}: {du:?}",
                m.snaps.len()
            );
            if m.fully_discarded && m.snaps.is_empty() {
                assert_eq!(
                    total, 0,
                    "{spec} was discarded whole and has no snapshot: {du:?}"
                );
            }
        }
    }

    fn check_clean(&mut self) {
        let rep = self.store().check(false).unwrap();
        assert!(rep.errors.is_empty(), "check errors: {:?}", rep.errors);
    }

    fn pick_snap(&self, i: usize, sel: u8) -> Option<usize> {
        let n = self.imgs[i].snaps.len();
        (n > 0).then(|| sel as usize % n)
    }

    fn apply(&mut self, op: &Op) {
        let n = self.imgs.len();
        match *op {
            Op::Write {
                img,
                range,
                pat,
                seed,
            } => {
                let i = img as usize % n;
                let obj = self.obj_size(i);
                let size = self.imgs[i].head.len() as u64;
                let (off, len) = resolve(range, size, obj);
                let buf = pattern(pat, seed, off, len);
                // A quarter of the writes in place, a quarter in place with
                // the first fill stopping short (as a receive does when the
                // kernel cannot write a page); the rest, and those the
                // engine declines (unaligned, across objects), by write_at.
                let mode = seed % 4;
                let short = (seed >> 8) as usize % (len as usize + 1);
                self.log.push(format!(
                    "write {} {off}+{len} pat {pat} mode {mode} short {short}",
                    self.imgs[i].name
                ));
                let head = self.head(i);
                let in_place = mode >= 2 && {
                    let (mut calls, mut at) = (0, 0usize);
                    head.write_in_place(off, len as usize, &mut |dst| {
                        calls += 1;
                        let n = if calls == 1 && mode == 3 {
                            dst.len().min(short)
                        } else {
                            dst.len()
                        };
                        dst[..n].copy_from_slice(&buf[at..at + n]);
                        at += n;
                        Ok(n)
                    })
                    .unwrap()
                };
                if !in_place {
                    head.write_at(off, &buf).unwrap();
                }
                let m = &mut self.imgs[i];
                m.head[off as usize..(off + len) as usize].copy_from_slice(&buf);
                m.fully_discarded = false;
                self.check_head(i);
            }
            Op::Discard { img, range } | Op::Zeroes { img, range } => {
                let i = img as usize % n;
                let obj = self.obj_size(i);
                let size = self.imgs[i].head.len() as u64;
                let (off, len) = resolve(range, size, obj);
                let h = self.head(i);
                if matches!(op, Op::Discard { .. }) {
                    self.log
                        .push(format!("discard {} {off}+{len}", self.imgs[i].name));
                    h.discard(off, len).unwrap();
                } else {
                    self.log
                        .push(format!("write_zeroes {} {off}+{len}", self.imgs[i].name));
                    h.write_zeroes(off, len).unwrap();
                }
                let m = &mut self.imgs[i];
                m.head[off as usize..(off + len) as usize].fill(0);
                m.fully_discarded = off == 0 && len == size;
                self.check_head(i);
            }
            Op::SnapCreate { img } => {
                let i = img as usize % n;
                self.counter += 1;
                let name = format!("s{}", self.counter);
                self.log
                    .push(format!("snap create {}@{name}", self.imgs[i].name));
                let spec = self.imgs[i].spec().with_snap(&name);
                self.store().snap_create(&spec).unwrap();
                let data = self.imgs[i].head.clone();
                self.imgs[i].snaps.push(MSnap {
                    name,
                    data,
                    protected: false,
                });
                self.check_snaps(i);
            }
            Op::SnapRemove { img, snap } => {
                let i = img as usize % n;
                let Some(k) = self.pick_snap(i, snap) else {
                    return;
                };
                let s = self.imgs[i].snaps[k].clone();
                self.log
                    .push(format!("snap rm {}@{}", self.imgs[i].name, s.name));
                let spec = self.imgs[i].spec().with_snap(&s.name);
                let r = self.store().snap_remove(&spec, &NoProgress);
                if s.protected {
                    assert!(matches!(r, Err(Error::SnapProtected(_))), "{r:?}");
                } else {
                    r.unwrap();
                    self.imgs[i].snaps.remove(k);
                }
                self.check_head(i);
                self.check_snaps(i);
            }
            Op::Rollback { img, snap } => {
                let i = img as usize % n;
                let Some(k) = self.pick_snap(i, snap) else {
                    return;
                };
                let s = self.imgs[i].snaps[k].clone();
                self.log
                    .push(format!("rollback {}@{}", self.imgs[i].name, s.name));
                let spec = self.imgs[i].spec().with_snap(&s.name);
                self.store().snap_rollback(&spec, &NoProgress).unwrap();
                self.imgs[i].head = s.data.clone();
                self.imgs[i].fully_discarded = false;
                self.check_head(i);
                self.check_snaps(i);
            }
            Op::Clone { img, snap, order } => {
                let i = img as usize % n;
                if n >= MAX_IMAGES {
                    return;
                }
                let Some(k) = self.pick_snap(i, snap) else {
                    return;
                };
                let pspec = self.imgs[i].spec().with_snap(&self.imgs[i].snaps[k].name);
                if !self.imgs[i].snaps[k].protected {
                    self.log.push(format!("snap protect {pspec}"));
                    self.store().snap_protect(&pspec).unwrap();
                    self.imgs[i].snaps[k].protected = true;
                }
                self.counter += 1;
                let name = format!("c{}", self.counter);
                self.log
                    .push(format!("clone {pspec} -> {name} order {order}"));
                let cspec = ImageSpec::parse_image(&format!("rbd/{name}")).unwrap();
                self.store()
                    .clone_image(&pspec, &cspec, None, Some(order))
                    .unwrap();
                let parent_name = self.imgs[i].name.clone();
                let snap_name = self.imgs[i].snaps[k].name.clone();
                self.imgs.push(MImg {
                    name,
                    head: self.imgs[i].snaps[k].data.clone(),
                    snaps: vec![],
                    parent: Some((parent_name, snap_name)),
                    features: Features::DEFAULT,
                    fully_discarded: false,
                });
                self.check_head(self.imgs.len() - 1);
            }
            Op::Flatten { img } => {
                let i = img as usize % n;
                let spec = self.imgs[i].spec();
                self.log.push(format!("flatten {spec}"));
                let r = self.store().flatten(&spec, &NoProgress);
                if self.imgs[i].parent.is_none() {
                    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
                } else {
                    r.unwrap();
                    // Every clone here has deep-flatten: snapshots detach too.
                    self.imgs[i].parent = None;
                    let rec = self.store().record(&spec).unwrap();
                    assert!(rec.parent.is_none(), "{rec:?}");
                }
                self.check_head(i);
                self.check_snaps(i);
            }
            Op::Unprotect { img, snap } => {
                let i = img as usize % n;
                let Some(k) = self.pick_snap(i, snap) else {
                    return;
                };
                let s = self.imgs[i].snaps[k].clone();
                let spec = self.imgs[i].spec().with_snap(&s.name);
                self.log.push(format!("snap unprotect {spec}"));
                let r = self.store().snap_unprotect(&spec);
                if !s.protected {
                    assert!(matches!(r, Err(Error::SnapNotProtected(_))), "{r:?}");
                } else if self.children_of(&self.imgs[i].name, &s.name) > 0 {
                    assert!(matches!(r, Err(Error::HasChildren { .. })), "{r:?}");
                } else {
                    r.unwrap();
                    self.imgs[i].snaps[k].protected = false;
                }
            }
            Op::Resize {
                img,
                sectors,
                shrink_ok,
            } => {
                let i = img as usize % n;
                let new = (8 + sectors as u64 % (MAX_SIZE / 512 - 7)) * 512;
                let spec = self.imgs[i].spec();
                let old = self.imgs[i].head.len() as u64;
                self.log.push(format!(
                    "resize {spec} {old} -> {new} shrink_ok {shrink_ok}"
                ));
                let r = self.store().resize(&spec, new, shrink_ok);
                if new < old && !shrink_ok {
                    assert!(matches!(r, Err(Error::ShrinkRefused { .. })), "{r:?}");
                    return;
                }
                r.unwrap();
                self.imgs[i].head.resize(new as usize, 0);
                self.check_head(i);
            }
            Op::Flush { img } => {
                let i = img as usize % n;
                self.log.push(format!("flush {}", self.imgs[i].name));
                self.head(i).flush().unwrap();
            }
            Op::Reopen => {
                self.log.push("reopen".into());
                self.reopen();
                self.check_all_reads();
            }
            Op::SnapRename { img, snap } => {
                let i = img as usize % n;
                let Some(k) = self.pick_snap(i, snap) else {
                    return;
                };
                self.counter += 1;
                let old = self.imgs[i].snaps[k].name.clone();
                let new = format!("r{}", self.counter);
                let spec = self.imgs[i].spec().with_snap(&old);
                self.log.push(format!("snap rename {spec} -> {new}"));
                self.store().snap_rename(&spec, &new).unwrap();
                let parent_name = self.imgs[i].name.clone();
                self.imgs[i].snaps[k].name = new.clone();
                for m in &mut self.imgs {
                    if let Some((p, s)) = &mut m.parent {
                        if *p == parent_name && *s == old {
                            *s = new.clone();
                        }
                    }
                }
                self.check_snaps(i);
            }
            Op::Copy {
                img,
                snap,
                from_snap,
            } => {
                let i = img as usize % n;
                if n >= MAX_IMAGES {
                    return;
                }
                let (src, data) = match self.pick_snap(i, snap) {
                    Some(k) if from_snap => (
                        self.imgs[i].spec().with_snap(&self.imgs[i].snaps[k].name),
                        self.imgs[i].snaps[k].data.clone(),
                    ),
                    _ => (self.imgs[i].spec(), self.imgs[i].head.clone()),
                };
                self.counter += 1;
                let name = format!("k{}", self.counter);
                self.log.push(format!("copy {src} -> {name}"));
                let dst = ImageSpec::parse_image(&format!("rbd/{name}")).unwrap();
                self.store().copy(&src, &dst, &NoProgress).unwrap();
                self.imgs.push(MImg {
                    name,
                    head: data,
                    snaps: vec![],
                    parent: None,
                    features: self.imgs[i].features,
                    fully_discarded: false,
                });
                self.check_head(self.imgs.len() - 1);
            }
            Op::Remove { img } => {
                let i = img as usize % n;
                if i == 0 {
                    return; // keep one image
                }
                let spec = self.imgs[i].spec();
                self.log.push(format!("rm {spec}"));
                // Handles keep the image open: close ours first.
                self.heads.remove(&self.imgs[i].name);
                let r = self.store().remove(&spec);
                if !self.imgs[i].snaps.is_empty() {
                    assert!(matches!(r, Err(Error::HasSnapshots { .. })), "{r:?}");
                    return;
                }
                r.unwrap();
                self.imgs.remove(i);
                assert!(matches!(
                    self.store().open(&spec),
                    Err(Error::ImageNotFound(_))
                ));
            }
            Op::GrowTo { img, extra } => {
                let i = img as usize % n;
                let old = self.imgs[i].head.len() as u64;
                let want = (old + extra as u64 % 40_000).min(MAX_SIZE);
                let new = want.div_ceil(512) * 512;
                self.log
                    .push(format!("grow_to {} {old} -> {want}", self.imgs[i].name));
                self.head(i).grow_to(want).unwrap();
                if new > old {
                    self.imgs[i].head.resize(new as usize, 0);
                }
                self.check_head(i);
            }
            Op::MapRebuild { img } => {
                let i = img as usize % n;
                let spec = self.imgs[i].spec();
                self.log.push(format!("object-map rebuild {spec}"));
                let r = self.store().object_map_rebuild(&spec);
                if self.imgs[i].features.contains(Features::OBJECT_MAP) {
                    r.unwrap();
                } else {
                    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
                }
                self.check_head(i);
            }
            Op::Trim => {
                self.log.push("trim".into());
                self.trim();
                self.check_all_reads();
            }
            Op::CheckRepair => {
                self.log.push("check --repair".into());
                let rep = self.store().check(true).unwrap();
                assert!(rep.errors.is_empty(), "check errors: {:?}", rep.errors);
                self.check_all_reads();
            }
            Op::Feature { img, which } => {
                let i = img as usize % n;
                let spec = self.imgs[i].spec();
                let cur = self.imgs[i].features;
                let (f, enable) = match which % 4 {
                    0 => (Features::FAST_DIFF, false),
                    1 => (
                        Features(Features::OBJECT_MAP.0 | Features::FAST_DIFF.0),
                        false,
                    ),
                    2 => (Features::OBJECT_MAP, true),
                    _ => (Features::FAST_DIFF, true),
                };
                self.log.push(format!(
                    "feature {} {spec} {f}",
                    if enable { "enable" } else { "disable" }
                ));
                let r = self.store().feature_set(&spec, f, enable);
                let new = if enable { cur.union(f) } else { cur.minus(f) };
                if new.check_dependencies().is_err() {
                    assert!(matches!(r, Err(Error::FeatureDependency { .. })), "{r:?}");
                } else {
                    r.unwrap();
                    self.imgs[i].features = new;
                }
                let rec = self.store().record(&spec).unwrap();
                assert_eq!(rec.features, self.imgs[i].features.0);
                self.check_head(i);
            }
        }
    }
}

/// Every 4 KiB block of `to` that differs from `from` (zero-extended) lies in
/// a reported extent; extents reported as not existing read zero in `to`.
fn verify_diff(ext: &[DiffExtent], to: &[u8], from: &[u8], what: &str) {
    let size = to.len() as u64;
    for e in ext {
        assert!(
            e.offset + e.length <= size,
            "{what}: extent {e:?} beyond {size}"
        );
        if !e.exists {
            let r = &to[e.offset as usize..(e.offset + e.length) as usize];
            assert!(
                r.iter().all(|b| *b == 0),
                "{what}: {e:?} is reported as zero but is not"
            );
        }
    }
    let mut off = 0u64;
    while off < size {
        let end = (off + BLOCK).min(size);
        let t = &to[off as usize..end as usize];
        let differs = t.iter().enumerate().any(|(j, b)| {
            let f = from.get(off as usize + j).copied().unwrap_or(0);
            *b != f
        });
        if differs {
            let covered = ext
                .iter()
                .any(|e| e.offset <= off && e.offset + e.length >= end);
            assert!(
                covered,
                "{what}: changed block at {off} is not reported: {ext:?}"
            );
        }
        off = end;
    }
}

/// Every non-zero byte of `data` lies in one of `extents`.
fn verify_covers(extents: &[(u64, u64)], data: &[u8], what: &str) {
    for (i, b) in data.iter().enumerate() {
        if *b != 0 {
            let i = i as u64;
            assert!(
                extents.iter().any(|(o, l)| *o <= i && i < o + l),
                "{what}: non-zero byte at {i} is outside every extent {extents:?}"
            );
        }
    }
}

fn run_case(order: u8, size_sectors: u64, ops: &[Op]) {
    run_case_with(order, size_sectors, ops, false);
}

fn run_case_with(order: u8, size_sectors: u64, ops: &[Op], background: bool) {
    let meta = MemMetaStore::new();
    let data = MemObjectStore::new();
    let store = open_store(&meta, Arc::new(data.clone()), order);
    store.set_background_trim(background);
    let size = size_sectors * 512;
    let spec = ImageSpec::parse_image("rbd/img").unwrap();
    store
        .create(
            &spec,
            &CreateOptions {
                size,
                ..Default::default()
            },
        )
        .unwrap();
    let mut w = World {
        meta,
        data,
        order,
        store: Some(store),
        background,
        heads: HashMap::new(),
        imgs: vec![MImg {
            name: "img".into(),
            head: vec![0; size as usize],
            snaps: vec![],
            parent: None,
            features: Features::DEFAULT,
            fully_discarded: false,
        }],
        counter: 0,
        log: vec![format!(
            "create img size {size} order {order}{}",
            if background {
                " (background trimming)"
            } else {
                ""
            }
        )],
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for (k, op) in ops.iter().enumerate() {
            w.apply(op);
            if k % 6 == 5 {
                w.check_all_reads();
                w.check_clean();
            }
            if k % 15 == 14 {
                w.check_reports();
            }
        }
        w.check_all_reads();
        w.check_reports();
        w.check_clean();
        w.reopen();
        w.check_all_reads();
        w.check_clean();
        w.trim();
        w.check_all_reads();
        w.check_clean();
        // Everything released was released: no data object is left over.
        let rep = w.store().check(false).unwrap();
        assert!(
            !rep.warnings.iter().any(|m| m.contains("orphan")),
            "{:?}",
            rep.warnings
        );
    }));
    if let Err(e) = result {
        eprintln!("operations so far:\n  {}", w.log.join("\n  "));
        std::panic::resume_unwind(e);
    }
}

fn max_ops() -> usize {
    scaled(80, 200)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: scaled(100, 1000) as u32,
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_match_the_model(
        order in 12u8..=14,
        size_sectors in 32u64..=(192 << 10) / 512,
        ops in prop::collection::vec(op(), 1..=max_ops()),
        background in any::<bool>(),
    ) {
        run_case_with(order, size_sectors, &ops, background);
    }
}

/// Minimal case from a long run: a clone with a snapshot (larger overlap)
/// is shrunk, written, and grown again; the discarded tail must read zero,
/// not the parent's data brought back by a later copy-up for the snapshot.
#[test]
fn regression_shrunk_clone_with_older_snapshot_regrows_zero() {
    let w = |img, kind, a, b| Op::Write {
        img,
        range: R { kind, a, b },
        pat: 0,
        seed: 0,
    };
    let ops = vec![
        w(0, 2, 310785944991352981, 14230133820006000),
        Op::SnapCreate { img: 0 },
        Op::Clone {
            img: 0,
            snap: 0,
            order: 13,
        },
        Op::SnapCreate { img: 0 },
        Op::SnapCreate { img: 5 },
        Op::Clone {
            img: 0,
            snap: 0,
            order: 12,
        },
        Op::Resize {
            img: 190,
            sectors: 60136,
            shrink_ok: true,
        },
        w(46, 3, 0, 0),
        Op::Resize {
            img: 43,
            sectors: 49,
            shrink_ok: false,
        },
    ];
    run_case(12, 57, &ops);
}
