//! What one object holds, generation by generation, and who sees what.
//!
//! An image is cut into objects of `2^order` bytes; an object into 4 KiB
//! blocks. Data is written into *generations*: head writes go to generation
//! `seq`; taking a snapshot freezes every generation ≤ its id and bumps `seq`,
//! so the first write after a snapshot starts a new generation holding only the
//! blocks written since (copy-on-write at block granularity, not whole
//! objects). Each generation records two bitmaps:
//!
//! - `present`: the block is defined in this generation;
//! - `zero` (⊆ present): ...and it reads as zero (no data stored).
//!
//! A reader (the head, or a snapshot) sees the generations of its [`View`].
//! A block reads from the newest visible generation where it is present;
//! otherwise from the parent image (clones, within the overlap, until the
//! object is copied up) or as zero. This module decides; `image.rs` does I/O.

use crate::bitmap::Bitmap;
use crate::record::{ObjectRecord, VersionRecord};

/// Block size of copy-on-write and of the present/zero bitmaps.
pub const BLOCK: u64 = 4096;
pub const BLOCK_SHIFT: u32 = 12;

/// Object map states, with RBD's values.
pub const OBJECT_NONEXISTENT: u8 = 0;
pub const OBJECT_EXISTS: u8 = 1;
pub const OBJECT_PENDING: u8 = 2;
pub const OBJECT_EXISTS_CLEAN: u8 = 3;

/// Which generations a reader sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Newest generation seen (the head's `seq`, or the snapshot id).
    pub max_gen: u64,
    /// Generations hidden by rollbacks (inclusive ranges).
    pub hidden: Vec<(u64, u64)>,
    /// Bytes of the parent read through to, for clones.
    pub overlap: Option<u64>,
}

impl View {
    pub fn sees(&self, gen: u64) -> bool {
        gen <= self.max_gen && !self.hidden.iter().any(|&(a, b)| gen >= a && gen <= b)
    }
}

/// One generation of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub gen: u64,
    pub present: Bitmap,
    pub zero: Bitmap,
}

impl Version {
    fn new(gen: u64, blocks: usize) -> Self {
        Version {
            gen,
            present: Bitmap::new(blocks),
            zero: Bitmap::new(blocks),
        }
    }
    /// Whether block `b` holds stored data in this generation.
    pub fn has_data(&self, b: usize) -> bool {
        self.present.get(b) && !self.zero.get(b)
    }
}

/// Where a block's bytes come from, for one reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Stored data in generation `gen`.
    Data(u64),
    /// A zero recorded in generation `gen`.
    Zero(u64),
    /// Nothing in this image: the parent (within the overlap, if not copied
    /// up) or zero.
    Below,
}

/// Every generation of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Ascending by generation.
    pub versions: Vec<Version>,
    /// The parent's data for this object has been copied into generation 0,
    /// so no reader of this image reads through to the parent here.
    pub copied_up: bool,
    blocks: usize,
}

/// What [`ObjectMeta::reclaim`] released.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// (generation, first block, end block) ranges of data no reader needs.
    pub punch: Vec<(u64, usize, usize)>,
    /// Generations left with nothing: their objects can be removed.
    pub removed: Vec<u64>,
}

impl ObjectMeta {
    /// An object with nothing in it, of `blocks` blocks.
    pub fn new(blocks: usize) -> Self {
        ObjectMeta {
            versions: Vec::new(),
            copied_up: false,
            blocks,
        }
    }

    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Decodes a stored record, checking its invariants (generations strictly
    /// ascending and ≤ `max_gen`, bitmap sizes, zero ⊆ present). `Err` says
    /// what is wrong.
    pub fn from_record(rec: &ObjectRecord, blocks: usize, max_gen: u64) -> Result<Self, String> {
        let mut versions = Vec::with_capacity(rec.versions.len().min(1024));
        let mut last: Option<u64> = None;
        for v in &rec.versions {
            if last.is_some_and(|l| v.gen <= l) {
                return Err(format!("generation {} is out of order", v.gen));
            }
            if v.gen > max_gen {
                return Err(format!(
                    "generation {} is newer than the image's sequence {max_gen}",
                    v.gen
                ));
            }
            last = Some(v.gen);
            let (present, zero) = v.bitmaps(blocks).ok_or_else(|| {
                format!(
                    "generation {} has bitmaps of the wrong size for {blocks} blocks",
                    v.gen
                )
            })?;
            if zero.and_not(&present).any() {
                return Err(format!(
                    "generation {} marks zero blocks that are not present",
                    v.gen
                ));
            }
            versions.push(Version {
                gen: v.gen,
                present,
                zero,
            });
        }
        Ok(ObjectMeta {
            versions,
            copied_up: rec.copied_up,
            blocks,
        })
    }

    pub fn to_record(&self) -> ObjectRecord {
        ObjectRecord {
            copied_up: self.copied_up,
            versions: self
                .versions
                .iter()
                .map(|v| VersionRecord {
                    gen: v.gen,
                    present: v.present.to_bytes(),
                    zero: v.zero.to_bytes(),
                })
                .collect(),
        }
    }

    /// Nothing stored and nothing to remember: the record can be deleted.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && !self.copied_up
    }

    /// Where block `b` comes from for `view`.
    pub fn resolve(&self, view: &View, b: usize) -> Source {
        self.resolve_below(view, b, u64::MAX)
    }

    /// Like [`ObjectMeta::resolve`], ignoring generations ≥ `below`.
    pub fn resolve_below(&self, view: &View, b: usize, below: u64) -> Source {
        for v in self.versions.iter().rev() {
            if v.gen >= below || !view.sees(v.gen) {
                continue;
            }
            if v.present.get(b) {
                return if v.zero.get(b) {
                    Source::Zero(v.gen)
                } else {
                    Source::Data(v.gen)
                };
            }
        }
        Source::Below
    }

    pub fn version(&self, gen: u64) -> Option<&Version> {
        self.versions.iter().find(|v| v.gen == gen)
    }

    /// The generation `gen`, created empty if missing.
    pub fn version_mut(&mut self, gen: u64) -> &mut Version {
        let i = match self.versions.binary_search_by_key(&gen, |v| v.gen) {
            Ok(i) => i,
            Err(i) => {
                self.versions.insert(i, Version::new(gen, self.blocks));
                i
            }
        };
        &mut self.versions[i]
    }

    /// Drops generation `gen` if it has no present block; true if dropped.
    pub fn drop_if_empty(&mut self, gen: u64) -> bool {
        if let Some(i) = self.versions.iter().position(|v| v.gen == gen) {
            if !self.versions[i].present.any() {
                self.versions.remove(i);
                return true;
            }
        }
        false
    }

    /// Generations visible to `view` that define any block: two readers with
    /// the same set read the same bytes from this object.
    pub fn visible_set(&self, view: &View) -> Vec<u64> {
        self.versions
            .iter()
            .filter(|v| view.sees(v.gen) && v.present.any())
            .map(|v| v.gen)
            .collect()
    }

    /// The object-map state for `view`, given the previous reader in snapshot
    /// order (`None` for the first): nonexistent when the reader sees nothing
    /// here, exists-clean when it sees exactly what the previous reader sees,
    /// exists otherwise. Never under-reports existence or change.
    pub fn map_state(&self, view: &View, prev: Option<&View>) -> u8 {
        let set = self.visible_set(view);
        if set.is_empty() {
            OBJECT_NONEXISTENT
        } else if prev.is_some_and(|p| self.visible_set(p) == set) {
            OBJECT_EXISTS_CLEAN
        } else {
            OBJECT_EXISTS
        }
    }

    /// Releases what no reader in `readers` needs: a block of a generation is
    /// needed when some reader resolves that block to it. Unneeded blocks are
    /// cleared (data ranges returned for punching); generations left empty are
    /// dropped.
    pub fn reclaim(&mut self, readers: &[View]) -> Reclaimed {
        let mut needed: Vec<Bitmap> = self
            .versions
            .iter()
            .map(|_| Bitmap::new(self.blocks))
            .collect();
        for r in readers {
            for b in 0..self.blocks {
                if let Source::Data(g) | Source::Zero(g) = self.resolve(r, b) {
                    if let Some(i) = self.versions.iter().position(|v| v.gen == g) {
                        needed[i].set(b, true);
                    }
                }
            }
        }
        let mut out = Reclaimed::default();
        for (v, need) in self.versions.iter_mut().zip(&needed) {
            let drop = v.present.and_not(need);
            if !drop.any() {
                continue;
            }
            let data = drop.and_not(&v.zero);
            let mut b = 0;
            while b < self.blocks {
                if data.get(b) {
                    let s = b;
                    while b < self.blocks && data.get(b) {
                        b += 1;
                    }
                    out.punch.push((v.gen, s, b));
                } else {
                    b += 1;
                }
            }
            v.present = v.present.and(need);
            v.zero = v.zero.and(need);
        }
        let before: Vec<u64> = self.versions.iter().map(|v| v.gen).collect();
        self.versions.retain(|v| v.present.any());
        out.removed = before
            .into_iter()
            .filter(|g| self.versions.iter().all(|v| v.gen != *g))
            .collect();
        out
    }

    /// Bytes of stored data (present, non-zero blocks) per generation.
    pub fn data_blocks(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.versions
            .iter()
            .map(|v| (v.gen, v.present.and_not(&v.zero).count()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(seq: u64) -> View {
        View {
            max_gen: seq,
            hidden: vec![],
            overlap: None,
        }
    }

    #[test]
    fn newest_visible_generation_wins() {
        let mut m = ObjectMeta::new(4);
        m.version_mut(1).present.set(0, true);
        m.version_mut(1).present.set(1, true);
        let v3 = m.version_mut(3);
        v3.present.set(0, true);
        v3.present.set(1, true);
        v3.zero.set(1, true);
        assert_eq!(m.resolve(&head(3), 0), Source::Data(3));
        assert_eq!(m.resolve(&head(3), 1), Source::Zero(3));
        assert_eq!(m.resolve(&head(2), 0), Source::Data(1));
        assert_eq!(m.resolve(&head(3), 2), Source::Below);
        let rolled = View {
            max_gen: 4,
            hidden: vec![(2, 3)],
            overlap: None,
        };
        assert_eq!(m.resolve(&rolled, 0), Source::Data(1));
    }

    #[test]
    fn reclaim_keeps_what_readers_need() {
        let mut m = ObjectMeta::new(4);
        for b in 0..4 {
            m.version_mut(1).present.set(b, true);
        }
        m.version_mut(2).present.set(0, true);
        // Snapshot 1 is gone: only the head (seq 2) reads.
        let r = m.reclaim(&[head(2)]);
        assert_eq!(r.punch, vec![(1, 0, 1)]);
        assert!(r.removed.is_empty());
        assert_eq!(m.resolve(&head(2), 0), Source::Data(2));
        assert_eq!(m.resolve(&head(2), 1), Source::Data(1));
        // With the snapshot kept nothing goes.
        let mut m2 = ObjectMeta::new(1);
        m2.version_mut(1).present.set(0, true);
        m2.version_mut(2).present.set(0, true);
        let r = m2.reclaim(&[head(1), head(2)]);
        assert_eq!(r, Reclaimed::default());
        let r = m2.reclaim(&[head(2)]);
        assert_eq!(r.removed, vec![1]);
    }

    #[test]
    fn map_states() {
        let mut m = ObjectMeta::new(2);
        assert_eq!(m.map_state(&head(1), None), OBJECT_NONEXISTENT);
        m.version_mut(1).present.set(0, true);
        assert_eq!(m.map_state(&head(1), None), OBJECT_EXISTS);
        assert_eq!(m.map_state(&head(2), Some(&head(1))), OBJECT_EXISTS_CLEAN);
        m.version_mut(2).present.set(1, true);
        assert_eq!(m.map_state(&head(2), Some(&head(1))), OBJECT_EXISTS);
    }

    #[test]
    fn record_invariants_are_checked() {
        let mut m = ObjectMeta::new(8);
        m.version_mut(2).present.set(3, true);
        let rec = m.to_record();
        assert_eq!(ObjectMeta::from_record(&rec, 8, 2).unwrap(), m);
        assert!(ObjectMeta::from_record(&rec, 8, 1).is_err());
        assert!(ObjectMeta::from_record(&rec, 16, 2).is_err());
        let mut bad = rec.clone();
        bad.versions[0].zero = vec![0x01];
        assert!(ObjectMeta::from_record(&bad, 8, 2).is_err());
    }
}
