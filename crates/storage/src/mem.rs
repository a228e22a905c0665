//! In-memory stores for tests and simulation, with crash simulation.

use crate::{validate_name, Filled, MetaOp, MetaStore, ObjectStore, Result};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Page size of [`MemObjectStore`]: the unit of sharing between live and
/// durable state and of [`ObjectStore::allocated`].
const PAGE: usize = 4096;

/// An object's bytes: its length and its written pages. Pages are shared
/// (copy-on-write) between live and durable state, so a sync copies page
/// pointers, not data.
#[derive(Clone, Default)]
struct Object {
    len: u64,
    pages: BTreeMap<u64, Arc<[u8; PAGE]>>,
}

impl Object {
    fn read(&self, offset: u64, buf: &mut [u8]) {
        buf.fill(0);
        for_each_page(offset, buf.len(), |index, in_page, in_buf| {
            if let Some(page) = self.pages.get(&index) {
                buf[in_buf.clone()].copy_from_slice(&page[in_page]);
            }
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for_each_page(offset, data.len(), |index, in_page, in_buf| {
            let page = self
                .pages
                .entry(index)
                .or_insert_with(|| Arc::new([0; PAGE]));
            Arc::make_mut(page)[in_page].copy_from_slice(&data[in_buf]);
        });
        self.len = self.len.max(offset.saturating_add(data.len() as u64));
    }

    /// Like a filesystem punching a hole: whole pages are released, the
    /// partial ones at the ends are zeroed; the length does not change.
    fn punch(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.len);
        let mut pos = offset;
        while pos < end {
            let index = pos / PAGE as u64;
            let page_start = index * PAGE as u64;
            let stop = end.min(page_start + PAGE as u64);
            if pos == page_start && stop == page_start + PAGE as u64 {
                self.pages.remove(&index);
            } else if let Some(page) = self.pages.get_mut(&index) {
                // Both bounds are within this page, so the casts cannot truncate.
                Arc::make_mut(page)[(pos - page_start) as usize..(stop - page_start) as usize]
                    .fill(0);
            }
            pos = stop;
        }
    }
}

/// Calls `f(page index, range in page, range in buffer)` for each page touched
/// by `len` bytes at `offset`. Bytes beyond `u64::MAX` are not visited (reads
/// leave them zero, writes drop them; no real store can hold them anyway).
fn for_each_page(
    offset: u64,
    len: usize,
    mut f: impl FnMut(u64, std::ops::Range<usize>, std::ops::Range<usize>),
) {
    let mut done = 0usize;
    while done < len {
        let Some(pos) = offset.checked_add(done as u64) else {
            return;
        };
        let index = pos / PAGE as u64;
        // Remainder of a division by PAGE, so it fits in usize.
        let in_page = (pos % PAGE as u64) as usize;
        let n = (PAGE - in_page).min(len - done);
        f(index, in_page..in_page + n, done..done + n);
        done += n;
    }
}

/// One name's state: what reads see (`live`) and what survives a crash
/// (`durable`); `None` = the object does not exist.
#[derive(Default)]
struct Slot {
    live: Option<Object>,
    durable: Option<Object>,
    /// `live` changed since the last sync.
    dirty: bool,
}

/// An in-memory [`ObjectStore`] that can simulate power loss.
///
/// Clones share state (so a test can drop an engine and reopen on the same
/// store). Writes, punches and removes change the live state; [`ObjectStore::sync`]
/// makes it durable; [`MemObjectStore::crash`] throws away everything not
/// synced. Punch does release (and zero) the range.
///
/// [`ObjectStore::allocated`] is 4096 × the number of 4 KiB pages written and
/// not punched since (like a filesystem with 4 KiB blocks; a page written with
/// zeros counts).
///
/// Each object has its own lock, so operations on different objects do not
/// wait for each other's copying.
#[derive(Clone, Default)]
pub struct MemObjectStore {
    objects: Arc<RwLock<BTreeMap<String, Arc<Mutex<Slot>>>>>,
}

impl std::fmt::Debug for MemObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemObjectStore")
            .field("names", &self.objects.read().len())
            .finish_non_exhaustive()
    }
}

impl MemObjectStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates power loss: every object goes back to its state at the last
    /// sync (unsynced writes, punches, creations and removals are lost).
    /// Meant to be called while no other operation is running.
    pub fn crash(&self) {
        for slot in self.objects.read().values() {
            let mut slot = slot.lock();
            slot.live = slot.durable.clone();
            slot.dirty = false;
        }
    }

    /// A new, independent store holding this one's durable state (as both its
    /// live and durable state): what a machine would find after a crash now,
    /// while this store carries on.
    pub fn durable_snapshot(&self) -> MemObjectStore {
        let objects = self
            .objects
            .read()
            .iter()
            .filter_map(|(name, slot)| {
                let durable = slot.lock().durable.clone()?;
                let slot = Slot {
                    live: Some(durable.clone()),
                    durable: Some(durable),
                    dirty: false,
                };
                Some((name.clone(), Arc::new(Mutex::new(slot))))
            })
            .collect();
        MemObjectStore {
            objects: Arc::new(RwLock::new(objects)),
        }
    }

    fn slot(&self, name: &str) -> Option<Arc<Mutex<Slot>>> {
        self.objects.read().get(name).cloned()
    }

    fn slot_or_create(&self, name: &str) -> Arc<Mutex<Slot>> {
        if let Some(slot) = self.slot(name) {
            return slot;
        }
        Arc::clone(self.objects.write().entry(name.to_owned()).or_default())
    }
}

impl ObjectStore for MemObjectStore {
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        validate_name(name)?;
        match self.slot(name) {
            Some(slot) => match &slot.lock().live {
                Some(object) => object.read(offset, buf),
                None => buf.fill(0),
            },
            None => buf.fill(0),
        }
        Ok(())
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> Result<()> {
        validate_name(name)?;
        let slot = self.slot_or_create(name);
        let mut slot = slot.lock();
        slot.live
            .get_or_insert_with(Object::default)
            .write(offset, data);
        slot.dirty = true;
        Ok(())
    }

    /// Lends a copy of the range, then writes back what `fill` filled:
    /// what a store that keeps its bytes in memory would do, for tests of
    /// callers (every object is "in memory", so only a missing or short
    /// object is declined).
    fn fill_in_place(
        &self,
        name: &str,
        offset: u64,
        len: usize,
        granule: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> Result<Option<Filled>> {
        validate_name(name)?;
        let aligned = crate::lent::granules_fit(offset, len, granule);
        let Some(slot) = self.slot(name) else {
            return Ok(None);
        };
        let mut slot = slot.lock();
        let Some(object) = slot.live.as_mut() else {
            return Ok(None);
        };
        let inside = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= object.len);
        if !aligned || !inside {
            return Ok(None);
        }
        let mut buf = vec![0u8; len];
        object.read(offset, &mut buf);
        let n = fill(&mut buf).min(len);
        object.write(offset, &buf[..n]);
        slot.dirty |= n > 0;
        let zero = crate::lent::zero_granules(&buf[..n], granule);
        Ok(Some(Filled { len: n, zero }))
    }

    fn punch(&self, name: &str, offset: u64, len: u64) -> Result<()> {
        validate_name(name)?;
        if let Some(slot) = self.slot(name) {
            let mut slot = slot.lock();
            if let Some(object) = &mut slot.live {
                object.punch(offset, len);
                slot.dirty = true;
            }
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        if let Some(slot) = self.slot(name) {
            let mut slot = slot.lock();
            if slot.live.take().is_some() {
                slot.dirty = true;
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        for slot in self.objects.read().values() {
            let mut slot = slot.lock();
            if slot.dirty {
                slot.durable = slot.live.clone();
                slot.dirty = false;
            }
        }
        Ok(())
    }

    fn sync_objects(&self, names: &[String]) -> Result<()> {
        let objects = self.objects.read();
        for name in names {
            if let Some(slot) = objects.get(name) {
                let mut slot = slot.lock();
                if slot.dirty {
                    slot.durable = slot.live.clone();
                    slot.dirty = false;
                }
            }
        }
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        // BTreeMap order is the sorted order.
        Ok(self
            .objects
            .read()
            .range(prefix.to_owned()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .filter(|(_, slot)| slot.lock().live.is_some())
            .map(|(name, _)| name.clone())
            .collect())
    }

    fn allocated(&self, name: &str) -> Result<u64> {
        validate_name(name)?;
        Ok(self
            .slot(name)
            .and_then(|slot| {
                slot.lock()
                    .live
                    .as_ref()
                    .map(|o| o.pages.len() as u64 * PAGE as u64)
            })
            .unwrap_or(0))
    }
}

/// An in-memory [`MetaStore`]. Clones share state; every commit is applied
/// under one lock, so it is atomic, and "durable" (memory is all there is).
#[derive(Clone, Default)]
pub struct MemMetaStore {
    entries: Arc<RwLock<MetaMap>>,
}

/// (table, key) → value; tuple order = table, then bytewise key order.
type MetaMap = BTreeMap<(&'static str, Vec<u8>), Vec<u8>>;

impl std::fmt::Debug for MemMetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemMetaStore")
            .field("entries", &self.entries.read().len())
            .finish()
    }
}

impl MemMetaStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An independent deep copy of the current state (for crash tests: what
    /// a restart would find if the machine died now).
    pub fn snapshot(&self) -> MemMetaStore {
        MemMetaStore {
            entries: Arc::new(RwLock::new(self.entries.read().clone())),
        }
    }
}

impl MetaStore for MemMetaStore {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.entries.read().get(&(table, key.to_vec())).cloned())
    }

    fn scan(&self, table: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .entries
            .read()
            .range((table, prefix.to_vec())..)
            .take_while(|((t, key), _)| *t == table && key.starts_with(prefix))
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }

    fn commit(&self, ops: Vec<MetaOp>) -> Result<()> {
        let mut entries = self.entries.write();
        for op in ops {
            match op {
                MetaOp::Put { table, key, value } => {
                    entries.insert((table, key), value);
                }
                MetaOp::Delete { table, key } => {
                    entries.remove(&(table, key));
                }
            }
        }
        Ok(())
    }
}
