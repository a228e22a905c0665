//! The object map: 2 bits per object (RBD's states), per image head and per
//! snapshot, stored sparsely in chunks so a thin 1 TiB image costs nothing.
//!
//! ```text
//! objmap key:  pool id | image id | snap id (u64::MAX = head) | chunk no   (u64 BE each)
//! value:       CHUNK_OBJECTS/4 = 2048 bytes; object i of the chunk in byte i/4,
//!              bits (i%4)*2 .. +2  (0 nonexistent, 1 exists, 2 pending, 3 exists-clean)
//! ```
//! A missing chunk means every object in it is nonexistent.

use crate::error::Result;
use crate::record::keys;
use std::collections::{BTreeMap, BTreeSet};
use vdisk_storage::{MetaOp, MetaStore};

/// Objects per stored chunk.
pub const CHUNK_OBJECTS: u64 = 8192;
const CHUNK_BYTES: usize = (CHUNK_OBJECTS / 4) as usize;
/// Snapshot id used for the head's map.
pub const HEAD: u64 = u64::MAX;

/// A sparse 2-bit-per-object map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMap {
    chunks: BTreeMap<u64, Vec<u8>>,
    dirty: BTreeSet<u64>,
}

impl ObjectMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads the map of `snap` (or [`HEAD`]) of an image. Chunks of the wrong
    /// size are ignored, which only over-reports nothing: callers treat a
    /// map they cannot trust as invalid and rebuild it (`check` reports it).
    pub fn load(meta: &dyn MetaStore, pool: u64, image: u64, snap: u64) -> Result<(Self, usize)> {
        let mut m = ObjectMap::new();
        let mut bad = 0;
        for (k, v) in meta.scan(keys::OBJMAP, &keys::k3(pool, image, snap))? {
            match keys::u64_at(&k, 24) {
                Some(chunk) if v.len() == CHUNK_BYTES && k.len() == 32 => {
                    m.chunks.insert(chunk, v);
                }
                _ => bad += 1,
            }
        }
        Ok((m, bad))
    }

    pub fn get(&self, objno: u64) -> u8 {
        let c = objno / CHUNK_OBJECTS;
        let i = (objno % CHUNK_OBJECTS) as usize;
        self.chunks
            .get(&c)
            .map(|v| (v[i / 4] >> ((i % 4) * 2)) & 3)
            .unwrap_or(0)
    }

    pub fn set(&mut self, objno: u64, state: u8) {
        if self.get(objno) == state {
            return;
        }
        let c = objno / CHUNK_OBJECTS;
        let i = (objno % CHUNK_OBJECTS) as usize;
        let v = self.chunks.entry(c).or_insert_with(|| vec![0; CHUNK_BYTES]);
        v[i / 4] = (v[i / 4] & !(3 << ((i % 4) * 2))) | ((state & 3) << ((i % 4) * 2));
        self.dirty.insert(c);
    }

    /// Every object whose state is not nonexistent.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u8)> + '_ {
        self.chunks.iter().flat_map(|(&c, v)| {
            (0..CHUNK_OBJECTS as usize).filter_map(move |i| {
                let s = (v[i / 4] >> ((i % 4) * 2)) & 3;
                (s != 0).then_some((c * CHUNK_OBJECTS + i as u64, s))
            })
        })
    }

    /// Replaces every `from` state with `to` (e.g. exists → exists-clean
    /// when a snapshot is taken).
    pub fn replace_all(&mut self, from: u8, to: u8) {
        // A byte holds four states: map every byte through a table instead
        // of visiting objects one by one (snapshot create runs this; it
        // must not cost per object of the image).
        let mut table = [0u8; 256];
        for (b, t) in table.iter_mut().enumerate() {
            let mut out = 0u8;
            for k in 0..4 {
                let st = (b as u8 >> (k * 2)) & 3;
                out |= (if st == from { to & 3 } else { st }) << (k * 2);
            }
            *t = out;
        }
        for (c, v) in self.chunks.iter_mut() {
            let mut changed = false;
            for byte in v.iter_mut() {
                let n = table[*byte as usize];
                changed |= n != *byte;
                *byte = n;
            }
            if changed {
                self.dirty.insert(*c);
            }
        }
    }

    /// Marks every chunk dirty (so that a copy is written whole).
    pub fn mark_all_dirty(&mut self) {
        self.dirty = self.chunks.keys().copied().collect();
    }

    /// Metadata ops writing the dirty chunks (deleting all-zero ones). The
    /// chunks stay dirty until [`ObjectMap::mark_clean`].
    pub fn dirty_ops(&self, pool: u64, image: u64, snap: u64) -> Vec<MetaOp> {
        self.dirty
            .iter()
            .map(|&c| {
                let key = keys::k4(pool, image, snap, c);
                match self.chunks.get(&c) {
                    Some(v) if v.iter().any(|b| *b != 0) => MetaOp::Put {
                        table: keys::OBJMAP,
                        key,
                        value: v.clone(),
                    },
                    _ => MetaOp::Delete {
                        table: keys::OBJMAP,
                        key,
                    },
                }
            })
            .collect()
    }

    pub fn mark_clean(&mut self) {
        self.dirty.clear();
    }

    /// Clears and returns the dirty chunk numbers (to re-mark them with
    /// [`ObjectMap::mark_dirty`] if writing them failed).
    pub fn take_dirty(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    pub fn mark_dirty(&mut self, chunks: &[u64]) {
        self.dirty.extend(chunks.iter().copied());
    }

    /// Ops deleting every stored chunk of a map.
    pub fn delete_ops(
        meta: &dyn MetaStore,
        pool: u64,
        image: u64,
        snap: u64,
    ) -> Result<Vec<MetaOp>> {
        Ok(meta
            .scan(keys::OBJMAP, &keys::k3(pool, image, snap))?
            .into_iter()
            .map(|(key, _)| MetaOp::Delete {
                table: keys::OBJMAP,
                key,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_iter() {
        let mut m = ObjectMap::new();
        m.set(5, 1);
        m.set(CHUNK_OBJECTS * 3 + 7, 3);
        assert_eq!(m.get(5), 1);
        assert_eq!(m.get(6), 0);
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![(5, 1), (CHUNK_OBJECTS * 3 + 7, 3)]
        );
        m.replace_all(1, 3);
        assert_eq!(m.get(5), 3);
        assert_eq!(m.dirty_ops(1, 2, HEAD).len(), 2);
        m.set(5, 0);
        m.set(CHUNK_OBJECTS * 3 + 7, 0);
        assert!(m
            .dirty_ops(1, 2, HEAD)
            .iter()
            .all(|o| matches!(o, MetaOp::Delete { .. })));
    }
}
