//! Changed and allocated extents, a page at a time, from metadata only:
//! what backup tools (and CSI's SnapshotMetadata service) ask a block
//! store — "what changed between snapshot A and B (or the head)", "what
//! does this snapshot hold".
//!
//! [`Store::diff`](crate::Store::diff) answers the first question for the
//! whole image at once; here the answer is cut into pages by byte offset
//! so that a client can walk a large image in bounded requests:
//!
//! ```text
//!   page(offset, limit) = the extents of the full answer that end after
//!                         `offset`, the first one clipped to start there,
//!                         at most `limit` of them;
//!   next_offset         = where the next extent of the full answer starts
//!                         (None: there is none)
//! ```
//!
//! so walking the pages from offset 0 and concatenating them gives exactly
//! the unpaged answer. A page looks only at the objects from `offset` on,
//! chosen from the object maps when they are valid (objects the maps prove
//! unchanged or empty are not even loaded), and stops one extent after the
//! limit.
//!
//! Changed extents compare, block by block, where the two readers resolve
//! a block (a data generation, a recorded zero, the parent), exactly as
//! `diff` does: no data is read. `zero: true` means the range now reads as
//! zeros. Allocated extents are `Image::block_status` runs that are not
//! holes: `zero: false` is data (the image's own or, for a clone, its
//! parent's), `zero: true` a recorded zero (it hides older data).

use crate::error::{Error, Result};
use crate::features::Features;
use crate::image::{head_view, readers, snap_view, Image, ImageState};
use crate::object::{BLOCK, BLOCK_SHIFT};
use crate::object::{OBJECT_EXISTS, OBJECT_NONEXISTENT};
use crate::objmap::{ObjectMap, HEAD};
use crate::record::{ImageRecord, FLAG_FAST_DIFF_INVALID};
use crate::report::{content, Content};
use crate::spec::ImageSpec;
use crate::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Default number of extents in a page.
pub const DEFAULT_LIMIT: usize = 1024;
/// Largest number of extents in a page.
pub const MAX_LIMIT: usize = 65536;

/// One extent of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    /// Reads as zeros (changed: now zero; allocated: a recorded zero).
    pub zero: bool,
}

/// A page of extents (the JSON of the API's `changed` and `allocated`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentPage {
    pub extents: Vec<Extent>,
    /// Where the next page starts; `None` when this was the last.
    pub next_offset: Option<u64>,
    /// Size of the image (or snapshot) the extents are of.
    pub size: u64,
}

/// Collects extents from `start` on, merging neighbours with the same
/// `zero`, until one more than `limit` has begun.
struct Pager {
    start: u64,
    limit: usize,
    extents: Vec<Extent>,
}

impl Pager {
    fn new(start: u64, limit: usize) -> Self {
        Pager {
            start,
            limit,
            extents: Vec::new(),
        }
    }

    /// Whether the page is complete (an extent past the limit began).
    fn full(&self) -> bool {
        self.extents.len() > self.limit
    }

    /// Adds `[off, off + len)`; the part before `start` is dropped.
    fn push(&mut self, off: u64, len: u64, zero: bool) {
        let end = off + len;
        let off = off.max(self.start);
        if end <= off || self.full() {
            return;
        }
        match self.extents.last_mut() {
            Some(l) if l.offset + l.length == off && l.zero == zero => l.length += end - off,
            _ => self.extents.push(Extent {
                offset: off,
                length: end - off,
                zero,
            }),
        }
    }

    fn finish(mut self, size: u64) -> ExtentPage {
        let next_offset = if self.full() {
            self.extents.pop().map(|e| e.offset)
        } else {
            None
        };
        ExtentPage {
            extents: self.extents,
            next_offset,
            size,
        }
    }
}

/// Checks a page request against the reader's size.
fn check_page(spec: &ImageSpec, offset: u64, limit: usize, size: u64) -> Result<()> {
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Error::InvalidArgument(format!(
            "limit {limit} is outside 1..={MAX_LIMIT}"
        )));
    }
    if offset > size {
        return Err(Error::InvalidArgument(format!(
            "offset {offset} is beyond the end of {spec} (size {size})"
        )));
    }
    Ok(())
}

impl Store {
    /// A page of the extents of `spec` (head or snapshot) that differ from
    /// its snapshot `from_snap`, from byte `offset` on, at most `limit`
    /// (1..=[`MAX_LIMIT`]). Without `from_snap`: the data extents (what a
    /// full backup copies), as `diff` without `--from-snap`.
    pub fn changed_extents(
        &self,
        spec: &ImageSpec,
        from_snap: Option<&str>,
        offset: u64,
        limit: usize,
    ) -> Result<ExtentPage> {
        let Some(from) = from_snap else {
            let img = self.open(spec)?;
            check_page(spec, offset, limit, img.size())?;
            return data_page(&img, offset, limit, false);
        };
        let img = self.open(spec)?;
        let st = &img.st;
        st.flush()?;
        let rec = st.record();
        let (to_view, to_id, size) = match &img.snap {
            Some(s) => (snap_view(s), s.id, s.size),
            None => (head_view(&rec), HEAD, rec.size),
        };
        let fs =
            rec.snaps.iter().find(|s| s.name == from).ok_or_else(|| {
                Error::SnapNotFound(spec.image_only().with_snap(from).to_string())
            })?;
        if to_id != HEAD && fs.id >= to_id {
            return Err(Error::InvalidArgument(format!(
                "snapshot {from} is not older than {spec}: the range goes from the older to the newer"
            )));
        }
        check_page(spec, offset, limit, size)?;
        let from_view = snap_view(fs);
        let p = st.params();
        let first = offset / p.obj_size;
        let objs = size.div_ceil(p.obj_size);
        let mut candidates = changed_candidates(st, &rec, fs.id, to_id, first)?;
        // Where the readers' parent overlaps differ (a clone shrunk in
        // between), content changed with no record of this image saying so.
        let (a, b) = (from_view.overlap.unwrap_or(0), to_view.overlap.unwrap_or(0));
        if a != b {
            let (lo, hi) = (a.min(b), a.max(b).min(size));
            candidates.extend(((lo / p.obj_size).max(first))..hi.div_ceil(p.obj_size));
        }
        let mut page = Pager::new(offset, limit);
        for objno in candidates.into_iter().filter(|o| *o < objs) {
            let obj_start = objno * p.obj_size;
            let mut runs: Vec<(u64, u64, bool)> = Vec::new();
            st.for_one_object(objno, |m| {
                for b in 0..m.blocks() {
                    let off = obj_start + ((b as u64) << BLOCK_SHIFT);
                    if off >= size {
                        break;
                    }
                    if off + BLOCK <= offset {
                        continue;
                    }
                    let cf = content(m, &from_view, b, off);
                    let ct = content(m, &to_view, b, off);
                    if cf != ct {
                        runs.push((off, BLOCK.min(size - off), ct == Content::Zero));
                    }
                }
            })?;
            for (off, len, zero) in runs {
                page.push(off, len, zero);
            }
            if page.full() {
                break;
            }
        }
        Ok(page.finish(size))
    }

    /// A page of the allocated extents of `spec` (head or snapshot) from
    /// byte `offset` on, at most `limit` (1..=[`MAX_LIMIT`]): data
    /// (`zero: false`) and recorded zeros (`zero: true`); holes are left
    /// out.
    pub fn allocated_extents(
        &self,
        spec: &ImageSpec,
        offset: u64,
        limit: usize,
    ) -> Result<ExtentPage> {
        let img = self.open(spec)?;
        check_page(spec, offset, limit, img.size())?;
        data_page(&img, offset, limit, true)
    }
}

/// Objects from `first` on that may differ between `from_id` and `to_id`:
/// those the object maps of the readers in between mark changed (or
/// vanished) when fast-diff is valid, else every object with a record.
fn changed_candidates(
    st: &Arc<ImageState>,
    rec: &ImageRecord,
    from_id: u64,
    to_id: u64,
    first: u64,
) -> Result<BTreeSet<u64>> {
    let fast = Features(rec.features).contains(Features::FAST_DIFF)
        && rec.flags & FLAG_FAST_DIFF_INVALID == 0;
    if !fast {
        return Ok(st.object_numbers()?.split_off(&first));
    }
    let mut maps = vec![ObjectMap::load(st.meta.as_ref(), st.pool.id, st.id, from_id)?.0];
    for (id, _) in readers(rec) {
        if id <= from_id || id > to_id {
            continue;
        }
        maps.push(if id == HEAD {
            st.head_map()
        } else {
            ObjectMap::load(st.meta.as_ref(), st.pool.id, st.id, id)?.0
        });
    }
    // An object nonexistent in every map did not change: only objects some
    // map lists are looked at.
    let listed: BTreeSet<u64> = maps
        .iter()
        .flat_map(|m| m.iter().map(|(o, _)| o))
        .filter(|o| *o >= first)
        .collect();
    Ok(listed
        .into_iter()
        .filter(|&o| {
            maps.windows(2).any(|w| {
                let (a, b) = (w[0].get(o), w[1].get(o));
                b == OBJECT_EXISTS || (b == OBJECT_NONEXISTENT && a != OBJECT_NONEXISTENT)
            })
        })
        .collect())
}

/// A page of `img`'s allocated extents from `offset`; recorded zeros are
/// included only if `with_zeros`.
fn data_page(img: &Image, offset: u64, limit: usize, with_zeros: bool) -> Result<ExtentPage> {
    let st = &img.st;
    // Committed maps and records: what the candidates are chosen from.
    st.flush()?;
    let size = img.size();
    let p = st.params();
    let (view, map_id) = match &img.snap {
        Some(s) => (snap_view(s), s.id),
        None => (p.head.clone(), HEAD),
    };
    let first = offset / p.obj_size;
    let objs = size.div_ceil(p.obj_size);
    let mut candidates: BTreeSet<u64> = if p.map_valid {
        let map = if map_id == HEAD {
            st.head_map()
        } else {
            ObjectMap::load(st.meta.as_ref(), st.pool.id, st.id, map_id)?.0
        };
        map.iter().map(|(o, _)| o).filter(|o| *o >= first).collect()
    } else {
        st.object_numbers()?.split_off(&first)
    };
    // Within a clone's overlap the parent shows through objects this image
    // has nothing in (block_status asks it).
    if let Some(ov) = view.overlap {
        candidates.extend(first..ov.min(size).div_ceil(p.obj_size));
    }
    let mut page = Pager::new(offset, limit);
    for objno in candidates.into_iter().filter(|o| *o < objs) {
        let start = (objno * p.obj_size).max(offset);
        let end = ((objno + 1) * p.obj_size).min(size);
        if end <= start {
            continue;
        }
        let mut pos = start;
        for (len, hole, zero) in img.block_status(start, end - start)? {
            if !hole && (with_zeros || !zero) {
                page.push(pos, len, zero);
            }
            pos += len;
        }
        if page.full() {
            break;
        }
    }
    Ok(page.finish(size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, CreateOptions, SingleDataBackend};
    use vdisk_storage::{MemMetaStore, MemObjectStore, MetaStore};

    const K: u64 = 1024;

    /// 64 KiB objects (16 blocks): scenarios cross objects cheaply.
    fn store(features: Features) -> Store {
        Store::open_with(
            Arc::new(MemMetaStore::new()) as Arc<dyn MetaStore>,
            Box::new(SingleDataBackend(Arc::new(MemObjectStore::new()))),
            Config {
                default_features: features,
                default_order: 16,
                ..Default::default()
            },
        )
        .expect("open store")
    }

    fn spec(s: &str) -> ImageSpec {
        ImageSpec::parse(s).expect("spec")
    }

    /// SplitMix64.
    struct Mix(u64);
    impl Mix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random writes, zeroes and discards (block-aligned or not).
    fn scribble(img: &Image, mix: &mut Mix, ops: usize) {
        let size = img.size();
        for _ in 0..ops {
            let off = mix.below(size);
            let len = (1 + mix.below(40 * K)).min(size - off);
            match mix.below(4) {
                0 => img.write_zeroes(off, len).unwrap(),
                1 => img.discard(off, len).unwrap(),
                _ => img
                    .write_at(off, &vec![1 + mix.below(200) as u8; len as usize])
                    .unwrap(),
            }
        }
    }

    /// Walks every page of `f` with `limit`; checks the paging contract.
    fn walk(f: impl Fn(u64, usize) -> ExtentPage, limit: usize) -> Vec<Extent> {
        let mut out: Vec<Extent> = Vec::new();
        let mut offset = 0;
        loop {
            let page = f(offset, limit);
            assert!(page.extents.len() <= limit);
            for e in &page.extents {
                assert!(e.offset >= offset && e.length > 0);
                assert!(e.offset + e.length <= page.size);
            }
            out.extend(page.extents.iter().copied());
            match page.next_offset {
                Some(n) => {
                    assert_eq!(page.extents.len(), limit, "a short page is the last");
                    assert!(n > offset, "no progress at {offset}");
                    offset = n;
                }
                None => return out,
            }
        }
    }

    fn diff_as_extents(s: &Store, sp: &str, from: Option<&str>) -> Vec<Extent> {
        s.diff(&spec(sp), from)
            .unwrap()
            .into_iter()
            .map(|d| Extent {
                offset: d.offset,
                length: d.length,
                zero: !d.exists,
            })
            .collect()
    }

    fn allocated_from_status(s: &Store, sp: &str) -> Vec<Extent> {
        let img = s.open(&spec(sp)).unwrap();
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = 0;
        for (len, hole, zero) in img.block_status(0, img.size()).unwrap() {
            if !hole {
                match out.last_mut() {
                    Some(l) if l.offset + l.length == pos && l.zero == zero => l.length += len,
                    _ => out.push(Extent {
                        offset: pos,
                        length: len,
                        zero,
                    }),
                }
            }
            pos += len;
        }
        out
    }

    /// Pages concatenate to `diff` (and to `block_status` for allocated),
    /// for every limit, on images with snapshots, clones, shrinks, with
    /// and without fast-diff.
    #[test]
    fn pages_concatenate_to_the_full_answer() {
        for (seed, features) in [
            (1, Features::DEFAULT),
            (2, Features::LAYERING),
            (3, Features::DEFAULT),
            (4, Features::LAYERING),
        ] {
            let s = store(features);
            let mut mix = Mix(seed);
            let size = 1024 * K + 512;
            let opts = CreateOptions {
                size,
                order: None,
                features: None,
            };
            let base = s.create(&spec("base"), &opts).unwrap();
            scribble(&base, &mut mix, 30);
            s.snap_create(&spec("base@s1")).unwrap();
            scribble(&base, &mut mix, 20);
            s.snap_create(&spec("base@s2")).unwrap();
            scribble(&base, &mut mix, 20);
            s.snap_protect(&spec("base@s1")).unwrap();
            let child = s
                .clone_image(&spec("base@s1"), &spec("child"), None, None)
                .unwrap();
            s.snap_create(&spec("child@c1")).unwrap();
            scribble(&child, &mut mix, 15);
            s.resize(&spec("child"), size - 200 * K, true).unwrap();
            s.snap_create(&spec("child@c2")).unwrap();
            scribble(&child, &mut mix, 10);
            base.flush().unwrap();
            child.flush().unwrap();

            let cases: [(&str, Option<&str>); 7] = [
                ("base", Some("s1")),
                ("base", Some("s2")),
                ("base@s2", Some("s1")),
                ("base@s1", None),
                ("child", Some("c1")),
                ("child@c2", Some("c1")),
                ("child", None),
            ];
            let mut seen = 0;
            for (to, from) in cases {
                let full = diff_as_extents(&s, to, from);
                seen += full.len();
                for limit in [1, 2, 3, 7, MAX_LIMIT] {
                    let got = walk(
                        |o, l| s.changed_extents(&spec(to), from, o, l).unwrap(),
                        limit,
                    );
                    assert_eq!(got, full, "seed {seed} {to} from {from:?} limit {limit}");
                }
            }
            for sp in [
                "base", "base@s1", "base@s2", "child", "child@c1", "child@c2",
            ] {
                let full = allocated_from_status(&s, sp);
                for limit in [1, 2, 5, MAX_LIMIT] {
                    let got = walk(|o, l| s.allocated_extents(&spec(sp), o, l).unwrap(), limit);
                    assert_eq!(got, full, "seed {seed} allocated {sp} limit {limit}");
                }
            }
            assert!(seen > 50, "seed {seed}: only {seen} extents: a weak test");
        }
    }

    #[test]
    fn pages_start_anywhere_and_clip() {
        let s = store(Features::DEFAULT);
        let img = s
            .create(
                &spec("a"),
                &CreateOptions {
                    size: 1024 * K,
                    order: None,
                    features: None,
                },
            )
            .unwrap();
        s.snap_create(&spec("a@s0")).unwrap();
        img.write_at(60 * K, &vec![7; 16 * K as usize]).unwrap();
        img.write_at(300 * K, &vec![7; 4 * K as usize]).unwrap();
        let p = s
            .changed_extents(&spec("a"), Some("s0"), 70 * K + 1, 10)
            .unwrap();
        assert_eq!(
            p.extents,
            [
                Extent {
                    offset: 70 * K + 1,
                    length: 6 * K - 1,
                    zero: false
                },
                Extent {
                    offset: 300 * K,
                    length: 4 * K,
                    zero: false
                }
            ]
        );
        assert_eq!((p.next_offset, p.size), (None, 1024 * K));
        let p = s.changed_extents(&spec("a"), Some("s0"), 0, 1).unwrap();
        assert_eq!(p.extents.len(), 1);
        assert_eq!(p.next_offset, Some(300 * K));
        let end = s.allocated_extents(&spec("a"), 1024 * K, 1).unwrap();
        assert!(end.extents.is_empty() && end.next_offset.is_none());
        // Discarding what no snapshot holds is no change since s0; over
        // s1's data it is a change to zeros.
        s.snap_create(&spec("a@s1")).unwrap();
        img.discard(60 * K, 8 * K).unwrap();
        let p = s.changed_extents(&spec("a"), Some("s0"), 0, 10).unwrap();
        assert_eq!((p.extents[0].offset, p.extents[0].zero), (68 * K, false));
        let p = s.changed_extents(&spec("a"), Some("s1"), 0, 10).unwrap();
        assert_eq!(
            p.extents,
            [Extent {
                offset: 60 * K,
                length: 8 * K,
                zero: true
            }]
        );
        let p = s.allocated_extents(&spec("a"), 0, 10).unwrap();
        assert_eq!(p.extents[0].offset, 60 * K);
        assert!(p.extents[0].zero, "a recorded zero hides s1's data");
    }

    #[test]
    fn bad_requests_are_refused() {
        let s = store(Features::DEFAULT);
        s.create(
            &spec("a"),
            &CreateOptions {
                size: 1024 * K,
                order: None,
                features: None,
            },
        )
        .unwrap();
        s.snap_create(&spec("a@s1")).unwrap();
        s.snap_create(&spec("a@s2")).unwrap();
        let kind = |r: Result<ExtentPage>| r.unwrap_err().kind();
        use crate::ErrorKind::*;
        assert_eq!(
            kind(s.changed_extents(&spec("a@s1"), Some("s2"), 0, 1)),
            InvalidInput
        );
        assert_eq!(
            kind(s.changed_extents(&spec("a@s1"), Some("s1"), 0, 1)),
            InvalidInput
        );
        assert_eq!(
            kind(s.changed_extents(&spec("a"), Some("nope"), 0, 1)),
            NotFound
        );
        assert_eq!(
            kind(s.changed_extents(&spec("b"), Some("s1"), 0, 1)),
            NotFound
        );
        assert_eq!(
            kind(s.changed_extents(&spec("a"), Some("s1"), 1024 * K + 1, 1)),
            InvalidInput
        );
        assert_eq!(
            kind(s.changed_extents(&spec("a"), Some("s1"), 0, 0)),
            InvalidInput
        );
        assert_eq!(
            kind(s.allocated_extents(&spec("a"), 0, MAX_LIMIT + 1)),
            InvalidInput
        );
        assert_eq!(kind(s.allocated_extents(&spec("a@s9"), 0, 1)), NotFound);
        assert_eq!(
            kind(s.allocated_extents(&spec("a"), u64::MAX, 1)),
            InvalidInput
        );
    }
}
