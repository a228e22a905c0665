//! Allocation status of a range of an image (what NBD calls
//! `base:allocation`), computed from metadata only: no data is read.
//!
//! Each 4 KiB block of the range is classified by where a read of it would
//! come from (the rules of [`ObjectMeta::resolve`] and
//! `ImageState::read_view`):
//!
//! | the block resolves to | status |
//! |---|---|
//! | stored data in a visible generation | allocated (`hole = false, zero = false`) |
//! | a recorded zero marker | `zero` (not a hole: the marker is stored, and it hides older data or the parent) |
//! | nothing, within a clone's overlap and not copied up | whatever the parent snapshot says for that range |
//! | nothing at all (or beyond the parent's size) | `hole` and `zero` |
//!
//! Consecutive blocks with the same status are merged into runs; runs are
//! clipped to the requested range, so the first and last may be partial
//! blocks.

use crate::error::{Error, Result};
use crate::image::{snap_view, Image, ImageState};
use crate::object::{ObjectMeta, Source, View, BLOCK_SHIFT};
use std::sync::Arc;

/// Where a byte range of one object comes from (before asking the parent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Data,
    Zero,
    /// Nothing stored in this image; `copied_up` as in the object record.
    Below {
        copied_up: bool,
    },
}

/// Runs of `(len, hole, zero)`, merging neighbours with the same flags.
#[derive(Debug, Default)]
struct Runs(Vec<(u64, bool, bool)>);

impl Runs {
    fn push(&mut self, len: u64, hole: bool, zero: bool) {
        if len == 0 {
            return;
        }
        match self.0.last_mut() {
            Some(last) if last.1 == hole && last.2 == zero => last.0 += len,
            _ => self.0.push((len, hole, zero)),
        }
    }
}

impl Image {
    /// Allocation status of `[offset, offset + len)` as runs of
    /// `(len, hole, zero)` covering the range exactly, in order, adjacent
    /// runs never having the same flags (so an empty range gives no runs).
    ///
    /// `hole` means nothing is stored for the range in this image or its
    /// parents; `zero` means it reads as zeros. A recorded zero (written
    /// zeros, discards over older data) is `zero` without `hole`. Computed
    /// from metadata only (it may load object records, never data); like a
    /// read, it reflects every write completed before the call.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<(u64, bool, bool)>> {
        let mut runs = Runs::default();
        match &self.snap {
            Some(s) => {
                check_range(self, offset, len, s.size)?;
                status_of(&self.st, &snap_view(s), offset, len, &mut runs)?;
            }
            None => {
                // Shared gate, as for a read: the head's parameters cannot
                // change under us (resize, rollback, snapshot barrier).
                let _g = self.st.gate.read();
                let p = self.st.params();
                check_range(self, offset, len, p.size)?;
                status_of(&self.st, &p.head, offset, len, &mut runs)?;
            }
        }
        Ok(runs.0)
    }
}

fn check_range(image: &Image, offset: u64, len: u64, size: u64) -> Result<()> {
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::OutOfRange {
            spec: image.spec().to_string(),
            offset,
            len,
            size,
        });
    }
    Ok(())
}

/// Appends the status of `[off, off + len)` as `view` of `st` sees it.
fn status_of(st: &Arc<ImageState>, view: &View, off: u64, len: u64, runs: &mut Runs) -> Result<()> {
    let p = st.params();
    let end = off + len;
    let mut pos = off;
    while pos < end {
        let objno = pos / p.obj_size;
        let obj_start = objno * p.obj_size;
        let obj_end = (obj_start + p.obj_size).min(end);
        // Classify under the object's read lock, then ask the parent after
        // releasing it (allowed either way, but no reason to hold it).
        let mut segments: Vec<(u64, u64, Class)> = Vec::new();
        st.for_one_object(objno, |m| {
            classify(m, view, obj_start, pos, obj_end, &mut segments);
        })?;
        for (s, e, class) in segments {
            match class {
                Class::Data => runs.push(e - s, false, false),
                Class::Zero => runs.push(e - s, false, true),
                Class::Below { copied_up } => below(st, view, copied_up, s, e, runs)?,
            }
        }
        pos = obj_end;
    }
    Ok(())
}

/// Splits `[from, to)` of the object starting at `obj_start` into segments
/// of the same [`Class`], block by block.
fn classify(
    m: &ObjectMeta,
    view: &View,
    obj_start: u64,
    from: u64,
    to: u64,
    out: &mut Vec<(u64, u64, Class)>,
) {
    let mut pos = from;
    while pos < to {
        let b = ((pos - obj_start) >> BLOCK_SHIFT) as usize;
        let block_end = (obj_start + ((b as u64 + 1) << BLOCK_SHIFT)).min(to);
        let class = match m.resolve(view, b) {
            Source::Data(_) => Class::Data,
            Source::Zero(_) => Class::Zero,
            Source::Below => Class::Below {
                copied_up: m.copied_up,
            },
        };
        match out.last_mut() {
            Some(last) if last.2 == class && last.1 == pos => last.1 = block_end,
            _ => out.push((pos, block_end, class)),
        }
        pos = block_end;
    }
}

/// Status of `[s, e)` where this image stores nothing: the parent within
/// the reader's overlap (unless the object was copied up), else a hole.
fn below(
    st: &Arc<ImageState>,
    view: &View,
    copied_up: bool,
    s: u64,
    e: u64,
    runs: &mut Runs,
) -> Result<()> {
    let overlap = match view.overlap {
        Some(ov) if !copied_up && s < ov => ov,
        _ => {
            runs.push(e - s, true, true);
            return Ok(());
        }
    };
    let through = e.min(overlap);
    match st.parent_parts()? {
        Some((parent, pview, psize)) => {
            // The parent reads as zero beyond its own size.
            let in_parent = through.min(psize.max(s));
            if in_parent > s {
                status_of(&parent, &pview, s, in_parent - s, runs)?;
            }
            runs.push(through - in_parent, true, true);
        }
        None => runs.push(through - s, true, true),
    }
    runs.push(e - through, true, true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{Config, CreateOptions, Features, Image, ImageSpec, SingleDataBackend, Store};
    use std::sync::Arc;
    use vdisk_storage::{MemMetaStore, MemObjectStore, MetaStore};

    const K: u64 = 1024;
    const M: u64 = 1024 * K;

    /// A store on in-memory backends with 64 KiB objects (16 blocks), so
    /// cases cross object boundaries cheaply.
    fn store() -> Store {
        Store::open_with(
            Arc::new(MemMetaStore::new()) as Arc<dyn MetaStore>,
            Box::new(SingleDataBackend(Arc::new(MemObjectStore::new()))),
            Config {
                default_features: Features::DEFAULT,
                default_order: 16,
                ..Default::default()
            },
        )
        .expect("open store")
    }

    fn create(store: &Store, name: &str, size: u64) -> Image {
        let spec = ImageSpec::parse(name).expect("spec");
        store
            .create(
                &spec,
                &CreateOptions {
                    size,
                    order: None,
                    features: None,
                },
            )
            .expect("create")
    }

    /// Shorthands for expected runs.
    fn data(len: u64) -> (u64, bool, bool) {
        (len, false, false)
    }
    fn zero(len: u64) -> (u64, bool, bool) {
        (len, false, true)
    }
    fn hole(len: u64) -> (u64, bool, bool) {
        (len, true, true)
    }

    /// Checks the runs against the bytes: data runs are what the engine
    /// stores, zero and hole runs must read as zero.
    fn assert_consistent(img: &Image) {
        let size = img.size();
        let runs = img.block_status(0, size).expect("status");
        assert_eq!(runs.iter().map(|r| r.0).sum::<u64>(), size);
        let mut buf = vec![0u8; size as usize];
        img.read_at(0, &mut buf).expect("read");
        let mut pos = 0usize;
        for (len, _hole, is_zero) in runs {
            if is_zero {
                let range = &buf[pos..pos + len as usize];
                assert!(
                    range.iter().all(|b| *b == 0),
                    "run at {pos}+{len} is reported zero but is not"
                );
            }
            pos += len as usize;
        }
    }

    #[test]
    fn empty_image_is_one_hole() {
        let s = store();
        let img = create(&s, "a", M);
        assert_eq!(img.block_status(0, M).unwrap(), vec![hole(M)]);
        assert_eq!(img.block_status(5, 7).unwrap(), vec![hole(7)]);
        assert_eq!(img.block_status(M, 0).unwrap(), vec![]);
        assert!(img.block_status(M - 1, 2).is_err());
        assert!(img.block_status(u64::MAX, 2).is_err());
    }

    #[test]
    fn writes_zeroes_and_discards() {
        let s = store();
        let img = create(&s, "a", M);
        // Data across the first object boundary (64 KiB).
        img.write_at(60 * K, &vec![7u8; 8 * K as usize]).unwrap();
        // Zeros written where nothing was: nothing to record, still a hole.
        img.write_zeroes(128 * K, 16 * K).unwrap();
        // All-zero data is stored as zeros in metadata, not as data.
        img.write_at(256 * K, &vec![0u8; 8 * K as usize]).unwrap();
        // A partial block of data is a whole allocated block.
        img.write_at(512 * K + 100, &[1, 2, 3]).unwrap();
        let runs = img.block_status(0, M).unwrap();
        assert_eq!(
            runs,
            vec![
                hole(60 * K),
                data(8 * K),
                hole(512 * K - 68 * K),
                data(4 * K),
                hole(M - 516 * K),
            ]
        );
        // Sub-ranges are clipped to the request, also inside a block.
        assert_eq!(
            img.block_status(61 * K, 10 * K).unwrap(),
            vec![data(7 * K), hole(3 * K)]
        );
        assert_eq!(img.block_status(512 * K + 1, 10).unwrap(), vec![data(10)]);
        // Discarding part of the data in the head's own generation frees it.
        img.discard(60 * K, 4 * K).unwrap();
        assert_eq!(
            img.block_status(0, 128 * K).unwrap(),
            vec![hole(64 * K), data(4 * K), hole(60 * K)]
        );
        assert_consistent(&img);
        img.flush().unwrap();
        // Same answer once the records are committed and reloaded.
        assert_eq!(img.block_status(0, M).unwrap(), {
            let mut v = vec![hole(64 * K), data(4 * K), hole(512 * K - 68 * K)];
            v.extend([data(4 * K), hole(M - 516 * K)]);
            v
        });
    }

    #[test]
    fn zero_markers_over_snapshot_data() {
        let s = store();
        let img = create(&s, "a", 256 * K);
        img.write_at(0, &vec![9u8; 128 * K as usize]).unwrap();
        s.snap_create(&ImageSpec::parse("a@s1").unwrap())
            .expect("snap");
        // Zeroing data the snapshot still sees must record zero markers.
        img.write_zeroes(16 * K, 16 * K).unwrap();
        img.discard(64 * K, 8 * K).unwrap();
        // Overwriting after the snapshot is data in the new generation.
        img.write_at(200 * K, &vec![1u8; 4 * K as usize]).unwrap();
        assert_eq!(
            img.block_status(0, 256 * K).unwrap(),
            vec![
                data(16 * K),
                zero(16 * K),
                data(32 * K),
                zero(8 * K),
                data(56 * K),
                hole(72 * K),
                data(4 * K),
                hole(52 * K),
            ]
        );
        assert_consistent(&img);
        // The snapshot still sees its data, and nothing written after it.
        let snap_img = s.open(&ImageSpec::parse("a@s1").unwrap()).unwrap();
        assert_eq!(
            snap_img.block_status(0, 256 * K).unwrap(),
            vec![data(128 * K), hole(128 * K)]
        );
        assert_consistent(&snap_img);
    }

    #[test]
    fn clones_read_through_to_the_parent() {
        let s = store();
        let parent = create(&s, "base", 256 * K);
        parent.write_at(0, &vec![5u8; 32 * K as usize]).unwrap();
        parent
            .write_at(192 * K, &vec![6u8; 8 * K as usize])
            .unwrap();
        let psnap = ImageSpec::parse("base@s1").unwrap();
        s.snap_create(&psnap).unwrap();
        s.snap_protect(&psnap).unwrap();
        let child_spec = ImageSpec::parse("child").unwrap();
        let child = s.clone_image(&psnap, &child_spec, None, None).unwrap();
        // Untouched clone: exactly the parent's allocation.
        assert_eq!(
            child.block_status(0, 256 * K).unwrap(),
            vec![data(32 * K), hole(160 * K), data(8 * K), hole(56 * K)]
        );
        // Writing to the first object copies it up: the parent's data is in
        // the clone now, the rest of that object is a hole of the clone's.
        child.write_at(40 * K, &vec![1u8; 4 * K as usize]).unwrap();
        // Zeroing parent data in an object not yet copied up copies it up,
        // then drops the zeroed block (no snapshot of the clone needs it, and
        // the copied-up object no longer reads through): a hole.
        child.write_zeroes(192 * K, 4 * K).unwrap();
        assert_eq!(
            child.block_status(0, 256 * K).unwrap(),
            vec![
                data(32 * K),
                hole(8 * K),
                data(4 * K),
                hole(152 * K),
                data(4 * K),
                hole(56 * K),
            ]
        );
        // With a snapshot of the clone still seeing the copied-up data,
        // zeroing it must record a zero marker instead.
        s.snap_create(&ImageSpec::parse("child@c1").unwrap())
            .unwrap();
        child.write_zeroes(196 * K, 4 * K).unwrap();
        assert_eq!(
            child.block_status(192 * K, 64 * K).unwrap(),
            vec![hole(4 * K), zero(4 * K), hole(56 * K)]
        );
        assert_consistent(&child);
        // Growing the clone past the overlap: the new range is a hole.
        s.resize(&child_spec, 512 * K, false).unwrap();
        let child = s.open(&child_spec).unwrap();
        let runs = child.block_status(0, 512 * K).unwrap();
        assert_eq!(runs.last(), Some(&hole(312 * K)));
        assert_consistent(&child);
    }
}
