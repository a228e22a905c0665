//! An open image: the data path (read, write, zero), flush, and the
//! metadata-changing operations that need the image's internals (snapshot
//! barrier, rollback, reclaim, copy-up, flatten).
//!
//! Locks, outermost first (never taken in another order):
//! 1. `gate` (RwLock): every head I/O holds it shared; snapshot create,
//!    rollback, resize and reclaim hold it exclusively. This is the barrier
//!    that makes a snapshot contain exactly the writes completed before it.
//! 2. `flush_lock`: one flush at a time.
//! 3. one object's `RwLock<ObjectMeta>` (writes exclusive, reads shared); a
//!    child's object lock may be held while reading the parent's objects,
//!    never the other way round.
//! 4. short-lived map/cache/dirty-set mutexes, never held across I/O.

use crate::error::{Error, Result};
use crate::lend::{LendBook, LentRead, Piece};
use crate::object::{ObjectMeta, Source, View, BLOCK, BLOCK_SHIFT, OBJECT_NONEXISTENT};
use crate::objmap::{ObjectMap, HEAD};
use crate::record::{
    self, keys, ImageRecord, Kind, ObjectRecord, ParentLink, PoolRecord, SnapRecord,
};
use crate::spec::ImageSpec;
use crate::store::Shared;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use vdisk_storage::{MetaOp, MetaStore, ObjectStore};

const SHARDS: usize = 64;
/// How long reclaim waits for lent reads started before it
/// ([`ImageState::wait_for_lent_reads`]).
const LENT_READ_WAIT: Duration = Duration::from_secs(1);

type Cell = Arc<RwLock<ObjectMeta>>;

/// Name of the data object holding generation `gen` of object `objno`.
pub fn object_name(image: u64, objno: u64, gen: u64) -> String {
    format!("{}{objno:012x}.{gen:x}", object_prefix(image))
}

/// The prefix every data object of `image` has (rbd's `block_name_prefix`).
pub fn object_prefix(image: u64) -> String {
    format!("{image:08x}/")
}

/// True when every byte is zero (the object stores' check, which their
/// writes in place use too).
pub use vdisk_storage::is_zero;

/// Calls `f(pos, range, source)` for the runs of blocks of `m` in
/// `[obj_off, obj_off + len)` that come from one place (as `view` sees
/// them): `pos` is the run's offset in the object, `range` its place in the
/// caller's buffer.
fn for_runs(
    m: &ObjectMeta,
    view: &View,
    obj_off: u64,
    len: usize,
    mut f: impl FnMut(u64, std::ops::Range<usize>, Source) -> Result<()>,
) -> Result<()> {
    let end = obj_off + len as u64;
    let mut pos = obj_off;
    while pos < end {
        let b = (pos >> BLOCK_SHIFT) as usize;
        let src = m.resolve(view, b);
        // Extend the run while the next blocks come from the same place.
        let mut run_end = ((b as u64 + 1) << BLOCK_SHIFT).min(end);
        while run_end < end && m.resolve(view, (run_end >> BLOCK_SHIFT) as usize) == src {
            run_end = (run_end + BLOCK).min(end);
        }
        f(
            pos,
            (pos - obj_off) as usize..(run_end - obj_off) as usize,
            src,
        )?;
        pos = run_end;
    }
    Ok(())
}

/// A buffer as a piece: zeros when it is all zero (nothing to copy).
fn copied_or_zeros(buf: Vec<u8>) -> Piece {
    if is_zero(&buf) {
        Piece::Zeros(buf.len())
    } else {
        Piece::Copied(buf)
    }
}

/// The head's view and everything the I/O path needs, swapped whole when
/// the record changes so I/O never holds the record lock.
#[derive(Debug, Clone)]
pub(crate) struct IoParams {
    pub size: u64,
    pub obj_size: u64,
    pub blocks: usize,
    pub seq: u64,
    pub head: View,
    /// The newest snapshot's view: the head's "previous reader" for the
    /// object map's exists-clean state.
    pub prev: Option<View>,
    /// Every snapshot's view, oldest first: what the head's writes must not
    /// take away (see [`ImageState::release_shadowed`]).
    pub snaps: Vec<View>,
    pub parent: Option<ParentLink>,
    /// The largest overlap of any reader: what a copy-up must copy.
    pub copyup_overlap: u64,
    pub object_map: bool,
    /// The object map is maintained and not flagged invalid (an operation
    /// that recomputes it was interrupted): only then may reads trust it.
    pub map_valid: bool,
}

impl IoParams {
    fn from_record(rec: &ImageRecord) -> Self {
        let obj_size = 1u64 << rec.order;
        let copyup_overlap = if rec.parent.is_some() {
            rec.snaps
                .iter()
                .filter_map(|s| s.parent_overlap)
                .chain(rec.parent_overlap)
                .max()
                .unwrap_or(0)
        } else {
            0
        };
        IoParams {
            size: rec.size,
            obj_size,
            blocks: (obj_size >> BLOCK_SHIFT) as usize,
            seq: rec.seq,
            head: head_view(rec),
            prev: rec.snaps.last().map(snap_view),
            snaps: rec.snaps.iter().map(snap_view).collect(),
            parent: rec.parent,
            copyup_overlap,
            object_map: rec.features & crate::Features::OBJECT_MAP.0 != 0,
            map_valid: rec.features & crate::Features::OBJECT_MAP.0 != 0
                && rec.flags & record::FLAG_OBJECT_MAP_INVALID == 0,
        }
    }
}

pub(crate) fn head_view(rec: &ImageRecord) -> View {
    View {
        max_gen: rec.seq,
        hidden: rec.hidden.clone(),
        overlap: rec.parent_overlap,
    }
}

pub(crate) fn snap_view(s: &SnapRecord) -> View {
    View {
        max_gen: s.id,
        hidden: s.hidden.clone(),
        overlap: s.parent_overlap,
    }
}

/// Every reader of an image in snapshot order, the head last: (snap id or
/// [`HEAD`], view).
pub(crate) fn readers(rec: &ImageRecord) -> Vec<(u64, View)> {
    rec.snaps
        .iter()
        .map(|s| (s.id, snap_view(s)))
        .chain(std::iter::once((HEAD, head_view(rec))))
        .collect()
}

/// The shared state of an open image (one per image per process).
pub(crate) struct ImageState {
    pub pool: PoolRecord,
    pub id: u64,
    pub meta: Arc<dyn MetaStore>,
    pub data: Arc<dyn ObjectStore>,
    shared: Weak<Shared>,
    /// The store's foreground I/O statistics.
    pub io: Arc<crate::trim::IoStats>,
    rec: RwLock<ImageRecord>,
    params: RwLock<Arc<IoParams>>,
    rec_dirty: AtomicBool,
    pub gate: RwLock<()>,
    /// Barriers taken or waited for (see [`Image::barrier_pending`]).
    barriers: AtomicUsize,
    flush_lock: Mutex<()>,
    cache: Vec<Mutex<HashMap<u64, Cell>>>,
    /// Objects cached past which a flush evicts clean ones
    /// ([`ImageState::evict_clean`]).
    cache_limit: usize,
    dirty: Mutex<BTreeSet<u64>>,
    head_map: Mutex<ObjectMap>,
    pending_removes: Mutex<Vec<(u64, u64)>>,
    /// (object, generation, block, lend mark) of data released by the data
    /// path, punched only after a commit that no longer references it and
    /// once the lent reads started before the mark have ended
    /// ([`crate::lend`]).
    pending_punches: Mutex<Vec<(u64, u64, usize, u64)>>,
    /// Punches committed (as `pending_punches`) that wait only for lent
    /// reads started before their mark to end.
    lent_punches: Mutex<Vec<(u64, u64, usize, u64)>>,
    /// Lent reads in progress ([`Image::read_lent`]).
    lends: Arc<LendBook>,
    /// Objects copied up since the last flush: their generation 0 is seen
    /// by every snapshot, whose object maps the flush updates.
    copied_up: Mutex<BTreeSet<u64>>,
    /// Snapshot id -> number of [`ReaderPin`]s on it (readers such as NBD
    /// clients). `snap rm` refuses a pinned snapshot; pinning and removal
    /// both decide under this lock, so neither can slip between the
    /// other's check and commit.
    pub(crate) snap_readers: Mutex<HashMap<u64, usize>>,
    parent: Mutex<Option<ParentHandle>>,
    /// Set when a `--no-sync` copy marks the image
    /// ([`crate::Store::mark_unsynced`]) and by its commit
    /// ([`Image::flush_unsynced`]), cleared by the next flush that syncs:
    /// meanwhile [`Image::write_streaming`] starts no writeback (nothing
    /// waits for the disk), and the end-of-command
    /// [`crate::Store::flush_all`] leaves the image alone while it has
    /// nothing new to commit, instead of syncing what the copy skipped.
    pub(crate) unsynced: AtomicBool,
}

#[derive(Clone)]
struct ParentHandle {
    state: Arc<ImageState>,
    view: View,
    size: u64,
}

impl std::fmt::Debug for ImageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageState")
            .field("pool", &self.pool.name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ImageState {
    pub(crate) fn open(
        shared: Weak<Shared>,
        meta: Arc<dyn MetaStore>,
        data: Arc<dyn ObjectStore>,
        pool: PoolRecord,
        rec: ImageRecord,
    ) -> Result<Self> {
        let params = Arc::new(IoParams::from_record(&rec));
        let head_map = if params.object_map {
            ObjectMap::load(meta.as_ref(), pool.id, rec.id, HEAD)?.0
        } else {
            ObjectMap::new()
        };
        let io = shared.upgrade().map(|s| s.io.clone()).unwrap_or_default();
        let cache_limit = shared
            .upgrade()
            .map_or(crate::config::OBJECT_CACHE, |s| s.config.object_cache);
        Ok(ImageState {
            id: rec.id,
            pool,
            meta,
            data,
            shared,
            io,
            rec: RwLock::new(rec),
            params: RwLock::new(params),
            rec_dirty: AtomicBool::new(false),
            gate: RwLock::new(()),
            barriers: AtomicUsize::new(0),
            flush_lock: Mutex::new(()),
            cache: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            cache_limit,
            dirty: Mutex::new(BTreeSet::new()),
            head_map: Mutex::new(head_map),
            pending_removes: Mutex::new(Vec::new()),
            pending_punches: Mutex::new(Vec::new()),
            lent_punches: Mutex::new(Vec::new()),
            lends: Arc::default(),
            copied_up: Mutex::new(BTreeSet::new()),
            snap_readers: Mutex::new(HashMap::new()),
            parent: Mutex::new(None),
            unsynced: AtomicBool::new(false),
        })
    }

    pub(crate) fn record(&self) -> ImageRecord {
        self.rec.read().clone()
    }

    pub(crate) fn params(&self) -> Arc<IoParams> {
        self.params.read().clone()
    }

    pub(crate) fn spec(&self) -> String {
        format!("{}/{}", self.pool.name, self.rec.read().name)
    }

    /// Replaces the in-memory record (after it was committed).
    pub(crate) fn set_record(&self, rec: ImageRecord) {
        let p = Arc::new(IoParams::from_record(&rec));
        let parent_changed = self.rec.read().parent != rec.parent;
        *self.rec.write() = rec;
        *self.params.write() = p;
        if parent_changed {
            *self.parent.lock() = None;
        }
    }

    fn name(&self, objno: u64, gen: u64) -> String {
        object_name(self.id, objno, gen)
    }

    fn object_key(&self, objno: u64) -> Vec<u8> {
        keys::k3(self.pool.id, self.id, objno)
    }

    fn cached(&self, objno: u64) -> Option<Cell> {
        self.cache[(objno as usize) % SHARDS]
            .lock()
            .get(&objno)
            .cloned()
    }

    /// Loads an object's record from the metadata store.
    fn load(&self, objno: u64, p: &IoParams) -> Result<ObjectMeta> {
        match self.meta.get(keys::OBJECTS, &self.object_key(objno))? {
            None => Ok(ObjectMeta::new(p.blocks)),
            Some(bytes) => {
                let what = format!("{} object {objno}", self.spec());
                let rec: ObjectRecord = record::decode(Kind::Object, &what, &bytes)?;
                ObjectMeta::from_record(&rec, p.blocks, p.seq).map_err(|detail| Error::Corrupt {
                    what: format!("object record of {what}"),
                    detail,
                })
            }
        }
    }

    /// The cell of object `objno`, loading it if needed.
    fn cell(&self, objno: u64, p: &IoParams) -> Result<Cell> {
        if let Some(c) = self.cached(objno) {
            return Ok(c);
        }
        let m = self.load(objno, p)?;
        let mut shard = self.cache[(objno as usize) % SHARDS].lock();
        Ok(shard
            .entry(objno)
            .or_insert_with(|| Arc::new(RwLock::new(m)))
            .clone())
    }

    /// For head reads: `None` when the object map proves the head sees
    /// nothing stored in this object (no metadata lookup needed). Not within
    /// the parent overlap: there the record's `copied_up` decides whether
    /// the parent shows through, and an object copied up whose blocks were
    /// all discarded is nonexistent in the map yet must read zero.
    fn head_cell(&self, objno: u64, p: &IoParams) -> Result<Option<Cell>> {
        if let Some(c) = self.cached(objno) {
            return Ok(Some(c));
        }
        let in_overlap = p.head.overlap.is_some_and(|ov| objno * p.obj_size < ov);
        if p.map_valid && !in_overlap && self.head_map.lock().get(objno) == OBJECT_NONEXISTENT {
            return Ok(None);
        }
        self.cell(objno, p).map(Some)
    }

    fn parent_handle(&self) -> Result<Option<ParentHandle>> {
        if let Some(h) = self.parent.lock().clone() {
            return Ok(Some(h));
        }
        let Some(link) = self.rec.read().parent else {
            return Ok(None);
        };
        let shared = self.shared.upgrade().ok_or_else(|| Error::Corrupt {
            what: self.spec(),
            detail: "the store was closed while the image was open".into(),
        })?;
        let state = shared.image_state_by_id(link.pool, link.image)?;
        let prec = state.record();
        let snap = prec
            .snaps
            .iter()
            .find(|s| s.id == link.snap)
            .ok_or_else(|| Error::Corrupt {
                what: format!("parent link of {}", self.spec()),
                detail: format!(
                    "snapshot id {} of {} does not exist",
                    link.snap,
                    state.spec()
                ),
            })?;
        let h = ParentHandle {
            view: snap_view(snap),
            size: snap.size,
            state,
        };
        *self.parent.lock() = Some(h.clone());
        Ok(Some(h))
    }

    /// Reads parent bytes at image offset `off` (zero beyond the parent).
    fn read_parent(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let Some(h) = self.parent_handle()? else {
            buf.fill(0);
            return Ok(());
        };
        let n = h.size.saturating_sub(off).min(buf.len() as u64) as usize;
        buf[n..].fill(0);
        if n > 0 {
            h.state.read_view(&h.view, false, off, &mut buf[..n])?;
        }
        Ok(())
    }

    /// What a reader sees below this image's own generations at object
    /// `objno`, offset `obj_off`: the parent within the overlap, else zero.
    fn read_below(
        &self,
        view: &View,
        copied_up: bool,
        p: &IoParams,
        objno: u64,
        obj_off: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let abs = objno * p.obj_size + obj_off;
        let ov = match view.overlap {
            Some(ov) if !copied_up && abs < ov => ov,
            _ => {
                buf.fill(0);
                return Ok(());
            }
        };
        let n = (ov - abs).min(buf.len() as u64) as usize;
        buf[n..].fill(0);
        self.read_parent(abs, &mut buf[..n])
    }

    /// Reads `buf.len()` bytes at `off` as `view` sees them. The caller
    /// checked the range against the reader's size.
    pub(crate) fn read_view(
        &self,
        view: &View,
        is_head: bool,
        off: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let p = self.params();
        self.for_objects(
            &p,
            is_head,
            off,
            buf.len(),
            |objno, obj_off, range, cell| {
                let piece = &mut buf[range];
                match cell {
                    None => self.read_below(view, false, &p, objno, obj_off, piece),
                    Some(c) => self.read_object(&c.read(), view, &p, objno, obj_off, piece),
                }
            },
        )
    }

    /// Calls `f(objno, obj_off, range, cell)` for each object that
    /// `[off, off + len)` touches, in order: `range` is the part of the
    /// caller's buffer it covers, `cell` the object's state (`None`: a
    /// head's object with nothing stored, see [`ImageState::head_cell`]).
    fn for_objects(
        &self,
        p: &IoParams,
        is_head: bool,
        off: u64,
        len: usize,
        mut f: impl FnMut(u64, u64, std::ops::Range<usize>, Option<Cell>) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0usize;
        while done < len {
            let abs = off + done as u64;
            let objno = abs / p.obj_size;
            let obj_off = abs % p.obj_size;
            let n = ((p.obj_size - obj_off) as usize).min(len - done);
            let cell = if is_head {
                self.head_cell(objno, p)?
            } else {
                Some(self.cell(objno, p)?)
            };
            f(objno, obj_off, done..done + n, cell)?;
            done += n;
        }
        Ok(())
    }

    /// Reads a range of one object, grouping blocks by where they come from.
    fn read_object(
        &self,
        m: &ObjectMeta,
        view: &View,
        p: &IoParams,
        objno: u64,
        obj_off: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        for_runs(m, view, obj_off, buf.len(), |pos, range, src| {
            let out = &mut buf[range];
            match src {
                Source::Data(g) => self.data.read_at(&self.name(objno, g), pos, out)?,
                Source::Zero(_) => out.fill(0),
                Source::Below => self.read_below(view, m.copied_up, p, objno, pos, out)?,
            }
            Ok(())
        })
    }

    /// [`ImageState::read_view`] into pieces, lending what the object store
    /// lends (see [`Image::read_lent`]).
    fn lend_view(
        &self,
        view: &View,
        is_head: bool,
        off: u64,
        len: usize,
        out: &mut LentRead,
    ) -> Result<()> {
        let p = self.params();
        self.for_objects(&p, is_head, off, len, |objno, obj_off, range, cell| {
            let Some(c) = cell else {
                let mut buf = vec![0; range.len()];
                self.read_below(view, false, &p, objno, obj_off, &mut buf)?;
                out.push(copied_or_zeros(buf));
                return Ok(());
            };
            let m = c.read();
            for_runs(&m, view, obj_off, range.len(), |pos, run, src| {
                let len = run.len();
                match src {
                    Source::Data(g) => {
                        let name = self.name(objno, g);
                        match self.data.lend(&name, pos, len)? {
                            Some(lent) => {
                                let short = len - lent.len();
                                out.push(Piece::Lent(lent));
                                out.push(Piece::Zeros(short));
                            }
                            None => {
                                let mut buf = vec![0; len];
                                self.data.read_at(&name, pos, &mut buf)?;
                                out.push(Piece::Copied(buf));
                            }
                        }
                    }
                    Source::Zero(_) => out.push(Piece::Zeros(len)),
                    Source::Below => {
                        let mut buf = vec![0; len];
                        self.read_below(view, m.copied_up, &p, objno, pos, &mut buf)?;
                        out.push(copied_or_zeros(buf));
                    }
                }
                Ok(())
            })
        })
    }

    /// Waits (at most `limit`) for the lent reads in progress to end, before
    /// data they may still send is queued for release; see [`crate::lend`].
    /// Past the limit it goes on: a reply still in a stalled client's socket
    /// must not hold a rollback or snapshot removal up for longer.
    fn wait_for_lent_reads(&self, limit: Duration) {
        let mark = self.lends.mark();
        if !self.lends.wait_before(mark, limit) {
            crate::trim::tracing_free_warn(&format!(
                "a read reply of {}/{} still holds lent data after {limit:?}; \
                 releasing the data it no longer needs anyway",
                self.pool.name, self.id
            ));
        }
    }

    fn check_range(&self, off: u64, len: u64, size: u64) -> Result<()> {
        if off.checked_add(len).is_none_or(|e| e > size) {
            return Err(Error::OutOfRange {
                spec: self.spec(),
                offset: off,
                len,
                size,
            });
        }
        Ok(())
    }

    /// Writes `data` at `off` of the head; with `stream`, starts the
    /// writeback of the data at once (see [`Image::write_streaming`]).
    pub(crate) fn write(&self, off: u64, data: &[u8], stream: bool) -> Result<()> {
        let _g = self.gate.read();
        let p = self.params();
        self.check_range(off, data.len() as u64, p.size)?;
        let mut done = 0usize;
        while done < data.len() {
            let abs = off + done as u64;
            let objno = abs / p.obj_size;
            let obj_off = abs % p.obj_size;
            let n = ((p.obj_size - obj_off) as usize).min(data.len() - done);
            self.modify(&p, objno, |st, m| {
                st.write_object(m, &p, objno, obj_off, &data[done..done + n], stream)
            })?;
            done += n;
        }
        Ok(())
    }

    /// [`Image::write_in_place`]: `Ok(false)` when declined.
    pub(crate) fn write_in_place(
        &self,
        off: u64,
        len: usize,
        src: &mut dyn FnMut(&mut [u8]) -> std::io::Result<usize>,
    ) -> Result<bool> {
        let _g = self.gate.read();
        let p = self.params();
        self.check_range(off, len as u64, p.size)?;
        let objno = off / p.obj_size;
        let obj_off = off % p.obj_size;
        if len == 0
            || obj_off + len as u64 > p.obj_size
            || !obj_off.is_multiple_of(BLOCK)
            || !(len as u64).is_multiple_of(BLOCK)
        {
            return Ok(false);
        }
        let mut written = false;
        self.modify(&p, objno, |st, m| {
            written = st.fill_object(m, &p, objno, obj_off, len, src)?;
            Ok(())
        })?;
        Ok(written)
    }

    /// The part of [`ImageState::write_in_place`] under the object's lock,
    /// after copy-up: what `write_object` does with data from a buffer,
    /// for data the store let `src` put in place.
    fn fill_object(
        &self,
        m: &mut ObjectMeta,
        p: &IoParams,
        objno: u64,
        obj_off: u64,
        len: usize,
        src: &mut dyn FnMut(&mut [u8]) -> std::io::Result<usize>,
    ) -> Result<bool> {
        let gen = p.seq;
        // Only into an object whose every block is data of the head's
        // generation: its file has no holes. A write fault allocates every
        // block of the page cache folio it lands in (ext4: 64 KiB folios
        // after our 64 KiB writes, larger after readahead), so a hole that
        // shares a folio with the range (a zero block punched) would be
        // allocated again, as zeros: the same reads, space lost.
        let whole = m
            .version(gen)
            .is_some_and(|v| v.present.count() == v.present.len() && !v.zero.any());
        if !whole {
            return Ok(false);
        }
        let name = self.name(objno, gen);
        let mut failed = None;
        let mut fill = |buf: &mut [u8]| match src(buf) {
            Ok(n) => n,
            Err(e) => {
                failed = Some(e);
                0
            }
        };
        let Some(filled) =
            self.data
                .fill_in_place(&name, obj_off, len, BLOCK as usize, &mut fill)?
        else {
            return Ok(false);
        };
        let source_failed = |e| Error::Io {
            what: "receiving the data of a write".into(),
            source: e,
        };
        if let Some(e) = failed {
            return Err(source_failed(e));
        }
        // The whole blocks that came in, as `write_object` handles them:
        // data shadows what older generations hold there (released if no
        // snapshot needs it any more); zeros become zero blocks, and their
        // space is punched.
        let b0 = (obj_off >> BLOCK_SHIFT) as usize;
        let mut punch = Vec::new();
        let mut i = 0;
        while i < filled.zero.len() {
            let s = i;
            if filled.zero[i] {
                // Every block held data (`whole`), so this one is punched.
                self.zero_block(m, p, objno, b0 + i, &mut punch);
                i += 1;
                continue;
            }
            while i < filled.zero.len() && !filled.zero[i] {
                i += 1;
            }
            for b in b0 + s..b0 + i {
                self.release_shadowed(m, p, objno, b);
            }
            let v = m.version_mut(gen);
            v.present.set_range(b0 + s, b0 + i, true);
            v.zero.set_range(b0 + s, b0 + i, false);
        }
        let done = filled.zero.len() * BLOCK as usize;
        if filled.len < len {
            // The kernel could not write a page (no space for a punched
            // block, say). The rest comes into a buffer and is written as
            // any other write is, with the part of its first block that is
            // in place already read back: that gives the real error, or the
            // write completes.
            let mut rest = vec![0u8; len - done];
            let have = filled.len - done;
            self.data
                .read_at(&name, obj_off + done as u64, &mut rest[..have])?;
            let want = rest.len() - have;
            match src(&mut rest[have..]) {
                Ok(n) if n == want => {}
                Ok(_) => {
                    return Err(source_failed(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the data source stopped short",
                    )))
                }
                Err(e) => return Err(source_failed(e)),
            }
            self.write_object(m, p, objno, obj_off + done as u64, &rest, false)?;
        }
        self.punch_blocks(objno, gen, &punch)?;
        Ok(true)
    }

    /// Makes `[off, off+len)` of the head read as zero, releasing space.
    pub(crate) fn zero(&self, off: u64, len: u64) -> Result<()> {
        let _g = self.gate.read();
        let p = self.params();
        self.check_range(off, len, p.size)?;
        self.zero_locked(&p, off, len)
    }

    /// [`ImageState::zero`] for a caller holding the barrier (shrink: the
    /// tail is discarded and the size changed with no write in between).
    pub(crate) fn zero_under_barrier(&self, off: u64, len: u64) -> Result<()> {
        let p = self.params();
        self.check_range(off, len, p.size)?;
        self.zero_locked(&p, off, len)
    }

    /// [`ImageState::zero`] for callers already holding the gate.
    fn zero_locked(&self, p: &IoParams, off: u64, len: u64) -> Result<()> {
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let objno = pos / p.obj_size;
            let obj_off = pos % p.obj_size;
            let n = (p.obj_size - obj_off).min(end - pos);
            // Skip objects where the head already reads zero: nothing stored
            // for it (object map) and nothing from a parent.
            let from_parent = p.parent.is_some() && objno * p.obj_size < p.copyup_overlap;
            let skip = !from_parent
                && self.cached(objno).is_none()
                && p.map_valid
                && self.head_map.lock().get(objno) == OBJECT_NONEXISTENT;
            if !skip {
                // Zeroing copies up too. Without it, a later copy-up made
                // for a snapshot with a larger overlap (taken before a
                // shrink) would write the parent's block into generation 0,
                // where the head, which had discarded it, would see it again.
                self.modify(p, objno, |st, m| st.zero_object(m, p, objno, obj_off, n))?;
            }
            pos += n;
        }
        Ok(())
    }

    /// Runs `f` on object `objno` under its write lock, after copy-up, then
    /// drops an emptied head generation and marks the object dirty.
    fn modify(
        &self,
        p: &IoParams,
        objno: u64,
        f: impl FnOnce(&Self, &mut ObjectMeta) -> Result<()>,
    ) -> Result<()> {
        let cell = self.cell(objno, p)?;
        let mut m = cell.write();
        let res = self
            .copy_up(&mut m, p, objno)
            .and_then(|()| f(self, &mut m));
        if m.drop_if_empty(p.seq) {
            self.pending_removes.lock().push((objno, p.seq));
        }
        // Marked dirty even if the bitmaps did not change (an overwrite in
        // place): re-encoding one record at flush is cheaper than comparing
        // states on every write.
        self.dirty.lock().insert(objno);
        res
    }

    /// Copies the parent's data for this object into generation 0 before
    /// the first change, so every reader of this image (snapshots included:
    /// deep-flatten semantics) keeps reading what it read before.
    fn copy_up(&self, m: &mut ObjectMeta, p: &IoParams, objno: u64) -> Result<()> {
        let start = objno * p.obj_size;
        if m.copied_up || p.parent.is_none() || start >= p.copyup_overlap {
            return Ok(());
        }
        let len = (p.copyup_overlap - start).min(p.obj_size);
        if !p.snaps.is_empty() {
            // Even if this fails half-way: what it wrote is seen too.
            self.copied_up.lock().insert(objno);
        }
        let mut buf = vec![0u8; (len.div_ceil(BLOCK) * BLOCK) as usize];
        self.read_parent(start, &mut buf[..len as usize])?;
        let name = self.name(objno, 0);
        let nblocks = buf.len() / BLOCK as usize;
        // Copy only blocks some reader still reads through to the parent: a
        // block the head (or a snapshot) already defines would be shadowed
        // in generation 0 and needed by nobody.
        let wanted = |i: usize| {
            let abs = start + ((i as u64) << BLOCK_SHIFT);
            std::iter::once(&p.head)
                .chain(&p.snaps)
                .any(|v| v.overlap.is_some_and(|ov| abs < ov) && m.resolve(v, i) == Source::Below)
        };
        let copy: Vec<bool> = (0..nblocks)
            .map(|i| wanted(i) && !is_zero(&buf[i * BLOCK as usize..(i + 1) * BLOCK as usize]))
            .collect();
        let mut b = 0;
        while b < nblocks {
            if !copy[b] {
                b += 1;
                continue;
            }
            let s = b;
            while b < nblocks && copy[b] {
                b += 1;
            }
            self.data.write_at(
                &name,
                s as u64 * BLOCK,
                &buf[s * BLOCK as usize..b * BLOCK as usize],
            )?;
            m.version_mut(0).present.set_range(s, b, true);
        }
        m.copied_up = true;
        Ok(())
    }

    /// Reads block `b` of an object as the head sees it.
    fn read_block(
        &self,
        m: &ObjectMeta,
        p: &IoParams,
        objno: u64,
        b: usize,
        buf: &mut [u8],
    ) -> Result<()> {
        match m.resolve(&p.head, b) {
            Source::Data(g) => {
                self.data
                    .read_at(&self.name(objno, g), (b as u64) << BLOCK_SHIFT, buf)?
            }
            Source::Zero(_) => buf.fill(0),
            Source::Below => self.read_below(
                &p.head,
                m.copied_up,
                p,
                objno,
                (b as u64) << BLOCK_SHIFT,
                buf,
            )?,
        }
        Ok(())
    }

    fn write_object(
        &self,
        m: &mut ObjectMeta,
        p: &IoParams,
        objno: u64,
        obj_off: u64,
        data: &[u8],
        stream: bool,
    ) -> Result<()> {
        let gen = p.seq;
        let name = self.name(objno, gen);
        let end = obj_off + data.len() as u64;
        let mut pos = obj_off;
        let mut run: Option<u64> = None;
        let mut punch = Vec::new();
        let flush_run = |m: &mut ObjectMeta, run: &mut Option<u64>, to: u64| -> Result<()> {
            if let Some(s) = run.take() {
                self.data.write_at(
                    &name,
                    s,
                    &data[(s - obj_off) as usize..(to - obj_off) as usize],
                )?;
                if stream {
                    self.data.start_writeback(&name, s, to - s);
                }
                let (b0, b1) = ((s >> BLOCK_SHIFT) as usize, (to >> BLOCK_SHIFT) as usize);
                for b in b0..b1 {
                    self.release_shadowed(m, p, objno, b);
                }
                let v = m.version_mut(gen);
                v.present.set_range(b0, b1, true);
                v.zero.set_range(b0, b1, false);
            }
            Ok(())
        };
        while pos < end {
            let b = (pos >> BLOCK_SHIFT) as usize;
            let bstart = (b as u64) << BLOCK_SHIFT;
            let bend = bstart + BLOCK;
            let seg_end = end.min(bend);
            let seg = &data[(pos - obj_off) as usize..(seg_end - obj_off) as usize];
            let full = pos == bstart && seg_end == bend;
            if full && !is_zero(seg) {
                run.get_or_insert(pos);
                pos = seg_end;
                continue;
            }
            flush_run(m, &mut run, pos)?;
            if full {
                self.zero_block(m, p, objno, b, &mut punch);
            } else if m.version(gen).is_some_and(|v| v.has_data(b)) {
                self.data.write_at(&name, pos, seg)?;
            } else {
                // Partial write to a block this generation does not hold:
                // read the block as the head sees it, merge, write it whole.
                let mut blk = vec![0u8; BLOCK as usize];
                self.read_block(m, p, objno, b, &mut blk)?;
                blk[(pos - bstart) as usize..(seg_end - bstart) as usize].copy_from_slice(seg);
                if is_zero(&blk) {
                    self.zero_block(m, p, objno, b, &mut punch);
                } else {
                    self.data.write_at(&name, bstart, &blk)?;
                    self.release_shadowed(m, p, objno, b);
                    let v = m.version_mut(gen);
                    v.present.set(b, true);
                    v.zero.set(b, false);
                }
            }
            pos = seg_end;
        }
        flush_run(m, &mut run, end)?;
        self.punch_blocks(objno, gen, &punch)
    }

    fn zero_object(
        &self,
        m: &mut ObjectMeta,
        p: &IoParams,
        objno: u64,
        obj_off: u64,
        len: u64,
    ) -> Result<()> {
        let mut end = obj_off + len;
        if objno * p.obj_size + end >= p.size {
            // Up to the image's end: its last block may be partial, and what
            // lies beyond the end must read zero too (after a grow), so it is
            // zeroed whole, i.e. released, rather than rewritten as zero data
            // that a shrink would leave allocated beyond every reader.
            end = end.div_ceil(BLOCK) * BLOCK;
        }
        let b0 = obj_off.div_ceil(BLOCK);
        let b1 = end >> BLOCK_SHIFT;
        // Partial blocks at the edges are written as zero data.
        if b0 > b1 {
            return self.write_object(m, p, objno, obj_off, &vec![0u8; len as usize], false);
        }
        if obj_off < b0 * BLOCK {
            self.write_object(
                m,
                p,
                objno,
                obj_off,
                &vec![0u8; (b0 * BLOCK - obj_off) as usize],
                false,
            )?;
        }
        let mut punch = Vec::new();
        for b in b0..b1 {
            self.zero_block(m, p, objno, b as usize, &mut punch);
        }
        self.punch_blocks(objno, p.seq, &punch)?;
        if end > b1 * BLOCK && b1 >= b0 {
            self.write_object(
                m,
                p,
                objno,
                b1 * BLOCK,
                &vec![0u8; (end - b1 * BLOCK) as usize],
                false,
            )?;
        }
        Ok(())
    }

    /// Makes block `b` read as zero for the head: a zero marker when an
    /// older generation (or the parent) would show through, else nothing.
    fn zero_block(
        &self,
        m: &mut ObjectMeta,
        p: &IoParams,
        objno: u64,
        b: usize,
        punch: &mut Vec<usize>,
    ) {
        let gen = p.seq;
        if m.version(gen).is_some_and(|v| v.has_data(b)) {
            punch.push(b);
        }
        self.release_shadowed(m, p, objno, b);
        let need_marker = match m.resolve_below(&p.head, b, gen) {
            Source::Data(_) => true,
            Source::Zero(_) => false,
            Source::Below => {
                !m.copied_up
                    && p.head
                        .overlap
                        .is_some_and(|ov| objno * p.obj_size + ((b as u64) << BLOCK_SHIFT) < ov)
            }
        };
        if need_marker {
            let v = m.version_mut(gen);
            v.present.set(b, true);
            v.zero.set(b, true);
        } else if let Some(v) = m.versions.iter_mut().find(|v| v.gen == gen) {
            v.present.set(b, false);
            v.zero.set(b, false);
        }
    }

    /// The head is about to define block `b` in its own generation, which
    /// shadows the block in older generations. Those no snapshot resolves to
    /// are needed by nobody any more (their snapshots were removed since):
    /// they are dropped from the metadata now and their data punched after
    /// the next commit, so that overwrites and discards free space (without
    /// this, after `snap rm` every overwrite leaked the old block until the
    /// next reclaim). Loops because an older generation may show through.
    fn release_shadowed(&self, m: &mut ObjectMeta, p: &IoParams, objno: u64, b: usize) {
        loop {
            let g = match m.resolve_below(&p.head, b, p.seq) {
                Source::Data(g) | Source::Zero(g) => g,
                Source::Below => return,
            };
            let needed =
                p.snaps.iter().rev().any(
                    |v| matches!(m.resolve(v, b), Source::Data(x) | Source::Zero(x) if x == g),
                );
            if needed {
                return;
            }
            let v = m.version_mut(g);
            if v.has_data(b) {
                let mark = self.lends.mark();
                self.pending_punches.lock().push((objno, g, b, mark));
            }
            v.present.set(b, false);
            v.zero.set(b, false);
            if m.drop_if_empty(g) {
                self.pending_removes.lock().push((objno, g));
            }
        }
    }

    /// Releases the space of blocks of the head generation. Only ever the
    /// head's own generation, which no snapshot sees, so this is safe before
    /// the metadata is committed; the engine never relies on it zeroing.
    fn punch_blocks(&self, objno: u64, gen: u64, blocks: &[usize]) -> Result<()> {
        let name = self.name(objno, gen);
        let mut i = 0;
        while i < blocks.len() {
            let s = blocks[i];
            let mut e = s + 1;
            while i + 1 < blocks.len() && blocks[i + 1] == e {
                i += 1;
                e += 1;
            }
            self.data.punch(
                &name,
                (s as u64) << BLOCK_SHIFT,
                ((e - s) as u64) << BLOCK_SHIFT,
            )?;
            i += 1;
        }
        Ok(())
    }

    /// Makes every completed write durable: data first, then (atomically) the
    /// object records, object map and image record that find it. Only after
    /// that commit are emptied data objects removed.
    pub(crate) fn flush(&self) -> Result<()> {
        self.flush_with(Vec::new())
    }

    /// [`ImageState::flush`], committing `extra` metadata ops in the same
    /// transaction.
    pub(crate) fn flush_with(&self, extra: Vec<MetaOp>) -> Result<()> {
        self.flush_opts(extra, true)
    }

    /// [`ImageState::flush_with`]; without `sync_data` the data is not
    /// synced before the commit (only for images marked unsynced: see
    /// `crate::unsynced`).
    pub(crate) fn flush_opts(&self, extra: Vec<MetaOp>, sync_data: bool) -> Result<()> {
        let _f = self.flush_lock.lock();
        let r = self.flush_locked(extra, sync_data);
        if r.is_ok() {
            self.unsynced.store(!sync_data, Ordering::SeqCst);
        }
        r
    }

    /// Whether a flush would have nothing to commit.
    pub(crate) fn nothing_to_commit(&self) -> bool {
        self.dirty.lock().is_empty()
            && !self.rec_dirty.load(Ordering::SeqCst)
            && self.pending_removes.lock().is_empty()
            && self.pending_punches.lock().is_empty()
            && self.lent_punches.lock().is_empty()
            && self.copied_up.lock().is_empty()
    }

    fn flush_locked(&self, extra: Vec<MetaOp>, sync_data: bool) -> Result<()> {
        let dirty = std::mem::take(&mut *self.dirty.lock());
        // Taken after `dirty`: an entry queued for an object in `dirty` was
        // queued under that object's lock, before the state read below.
        let removes = std::mem::take(&mut *self.pending_removes.lock());
        let punches = std::mem::take(&mut *self.pending_punches.lock());
        let mut copied = std::mem::take(&mut *self.copied_up.lock());
        // (object, its state for each snapshot, oldest first)
        let mut snap_states: Vec<(u64, Vec<u8>)> = Vec::new();
        let p = self.params();
        let mut ops = Vec::with_capacity(dirty.len() + extra.len() + 4);
        let mut states = Vec::with_capacity(dirty.len());
        for &objno in &dirty {
            let Some(cell) = self.cached(objno) else {
                continue;
            };
            let m = cell.read();
            let key = self.object_key(objno);
            if m.is_empty() {
                ops.push(MetaOp::Delete {
                    table: keys::OBJECTS,
                    key,
                });
            } else {
                ops.push(MetaOp::Put {
                    table: keys::OBJECTS,
                    key,
                    value: record::encode(Kind::Object, &m.to_record()),
                });
            }
            if p.object_map {
                states.push((objno, m.map_state(&p.head, p.prev.as_ref())));
                if copied.remove(&objno) {
                    let mut prev = None;
                    let mut st = Vec::with_capacity(p.snaps.len());
                    for v in &p.snaps {
                        st.push(m.map_state(v, prev));
                        prev = Some(v);
                    }
                    snap_states.push((objno, st));
                }
            }
        }
        // Copied up while this flush ran: for the next one. (Without object
        // maps there is nothing to update; enabling them rebuilds them all.)
        if p.object_map {
            self.copied_up.lock().extend(copied);
        }
        // The head map's lock is held only to update it, never across the
        // sync and commit below, so reads are not stalled by a flush.
        let map_chunks = if p.object_map {
            let mut map = self.head_map.lock();
            for (objno, st) in states {
                map.set(objno, st);
            }
            ops.extend(map.dirty_ops(self.pool.id, self.id, HEAD));
            map.take_dirty()
        } else {
            Vec::new()
        };
        let rec_dirty = self.rec_dirty.swap(false, Ordering::SeqCst);
        if rec_dirty {
            ops.push(self.record_op(&self.rec.read()));
        }
        let result = self.snap_map_ops(&p, &snap_states).and_then(|snap_ops| {
            ops.extend(snap_ops);
            ops.extend(extra);
            if sync_data {
                self.data.sync().map_err(Error::from)
            } else {
                Ok(())
            }
        });
        let result = result.and_then(|()| {
            if ops.is_empty() {
                Ok(())
            } else {
                self.meta.commit(ops).map_err(Error::from)
            }
        });
        if let Err(e) = result {
            // Nothing was committed: keep everything dirty for the next try.
            self.dirty.lock().extend(dirty);
            if rec_dirty {
                self.rec_dirty.store(true, Ordering::SeqCst);
            }
            self.head_map.lock().mark_dirty(&map_chunks);
            self.pending_removes.lock().extend(removes);
            self.pending_punches.lock().extend(punches);
            self.copied_up
                .lock()
                .extend(snap_states.iter().map(|(o, _)| *o));
            return Err(e);
        }
        self.release_pending(&dirty, removes, punches)?;
        self.evict_clean();
        Ok(())
    }

    /// Drops cached object states beyond [`Config::object_cache`] that the
    /// metadata store holds exactly: called at the end of a successful
    /// flush, under the flush lock (a flush reads dirty states from the
    /// cache, so none may go while one runs). Kept: dirty objects, objects
    /// with queued removals, punches or copy-ups (their release re-checks
    /// the cached state), and cells someone holds (a writer between
    /// `cell()` and marking the object dirty). Evicted objects are loaded
    /// again on their next use, as after a restart.
    ///
    /// [`Config::object_cache`]: crate::Config::object_cache
    fn evict_clean(&self) {
        let cached: usize = self.cache.iter().map(|s| s.lock().len()).sum();
        if cached <= self.cache_limit {
            return;
        }
        let mut excess = cached - self.cache_limit;
        let mut busy: BTreeSet<u64> = self.copied_up.lock().clone();
        busy.extend(self.pending_removes.lock().iter().map(|(o, _)| *o));
        busy.extend(self.pending_punches.lock().iter().map(|(o, ..)| *o));
        busy.extend(self.lent_punches.lock().iter().map(|(o, ..)| *o));
        for shard in &self.cache {
            if excess == 0 {
                break;
            }
            let mut shard = shard.lock();
            // Under the shard lock no new holder can appear (`cell()` clones
            // under it); a writer marks its object dirty before dropping its
            // clone, so "not dirty and not held" is stable here.
            let dirty = self.dirty.lock();
            shard.retain(|objno, cell| {
                let keep = excess == 0
                    || dirty.contains(objno)
                    || busy.contains(objno)
                    || Arc::strong_count(cell) > 1;
                if !keep {
                    excess -= 1;
                }
                keep
            });
        }
    }

    /// Object-map updates of every snapshot for objects copied up: a copy-up
    /// writes generation 0, which the snapshots see (deep-flatten
    /// semantics), so their maps must say the object exists, as RBD's
    /// copy-up updates the snapshots' object maps. Without this `check`
    /// found their maps under-reporting after any write to a clone that has
    /// snapshots.
    fn snap_map_ops(&self, p: &IoParams, states: &[(u64, Vec<u8>)]) -> Result<Vec<MetaOp>> {
        let mut ops = Vec::new();
        if states.is_empty() {
            return Ok(ops);
        }
        for (k, v) in p.snaps.iter().enumerate() {
            let id = v.max_gen;
            let mut map = ObjectMap::load(self.meta.as_ref(), self.pool.id, self.id, id)?.0;
            for (objno, st) in states {
                map.set(*objno, st[k]);
            }
            ops.extend(map.dirty_ops(self.pool.id, self.id, id));
        }
        Ok(ops)
    }

    /// Removes data objects and punches blocks that the data path dropped,
    /// now that a commit no longer references them. Only entries of objects
    /// whose state this commit wrote (`committed`) are safe: an entry queued
    /// while a concurrent flush was running may concern a state that flush
    /// read before the drop; such entries wait for the next flush (which
    /// will find their object dirty). Releasing data still referenced by the
    /// durable metadata would make a crash read garbage. A committed punch
    /// also waits while a lent read that may still send the block is in
    /// progress ([`crate::lend`]): it is retried by the next flush.
    fn release_pending(
        &self,
        committed: &BTreeSet<u64>,
        removes: Vec<(u64, u64)>,
        punches: Vec<(u64, u64, usize, u64)>,
    ) -> Result<()> {
        let (mut punches, later): (Vec<_>, Vec<_>) = punches
            .into_iter()
            .partition(|(o, ..)| committed.contains(o));
        self.pending_punches.lock().extend(later);
        punches.append(&mut self.lent_punches.lock());
        let (punches, lent): (Vec<_>, Vec<_>) = punches
            .into_iter()
            .partition(|&(.., mark)| self.lends.done_before(mark));
        self.lent_punches.lock().extend(lent);
        let (removes, later): (Vec<_>, Vec<_>) = removes
            .into_iter()
            .partition(|(o, _)| committed.contains(o));
        self.pending_removes.lock().extend(later);
        for (objno, gen, b, _) in punches {
            // Re-check under the object lock: a copy-up retried after a
            // failure may have written the block again since.
            let cell = self.cached(objno);
            let _m = cell.as_ref().map(|c| c.write());
            if _m
                .as_ref()
                .is_none_or(|m| m.version(gen).is_none_or(|v| !v.present.get(b)))
            {
                self.data
                    .punch(&self.name(objno, gen), (b as u64) << BLOCK_SHIFT, BLOCK)?;
            }
        }
        for (objno, gen) in removes {
            // Re-check under the object lock: a write may have brought the
            // generation back since it was dropped.
            let cell = self.cached(objno);
            let _m = cell.as_ref().map(|c| c.write());
            if _m.as_ref().is_none_or(|m| m.version(gen).is_none()) {
                self.data.remove(&self.name(objno, gen))?;
            }
        }
        Ok(())
    }

    pub(crate) fn record_op(&self, rec: &ImageRecord) -> MetaOp {
        MetaOp::Put {
            table: keys::IMAGES,
            key: keys::k2(self.pool.id, self.id),
            value: record::encode(Kind::Image, rec),
        }
    }

    /// Grows the head's size without a commit (streaming import); the next
    /// flush writes the record.
    pub(crate) fn grow_uncommitted(&self, size: u64) {
        let mut rec = self.rec.read().clone();
        if size > rec.size {
            rec.size = size;
            self.set_record(rec);
            self.rec_dirty.store(true, Ordering::SeqCst);
        }
    }

    /// Takes the I/O barrier: waits for in-flight head I/O to finish and
    /// holds off new I/O until the guard drops.
    pub(crate) fn barrier(&self, timeout: Duration) -> Result<Barrier<'_>> {
        // Counted from before the wait: head I/O starting now waits too.
        self.barriers.fetch_add(1, Ordering::SeqCst);
        match self.gate.try_write_for(timeout) {
            Some(guard) => Ok(Barrier {
                _guard: guard,
                count: &self.barriers,
            }),
            None => {
                self.barriers.fetch_sub(1, Ordering::SeqCst);
                Err(Error::DrainTimeout {
                    spec: self.spec(),
                    secs: timeout.as_secs(),
                })
            }
        }
    }

    /// Commits a new record (plus `extra` ops) after flushing; the caller
    /// holds the barrier.
    pub(crate) fn commit_record(&self, rec: ImageRecord, extra: Vec<MetaOp>) -> Result<()> {
        let mut ops = vec![self.record_op(&rec)];
        ops.extend(extra);
        // `rec_dirty` is left to `flush_with`: it restores it if the commit
        // fails (clearing it here lost an uncommitted `grow_to` for good).
        // If it is set, the in-memory record goes first in the batch and
        // `rec`, later, wins.
        self.flush_with(ops)?;
        self.set_record(rec);
        Ok(())
    }

    /// Takes a snapshot: the barrier drains in-flight writes, everything is
    /// flushed, then the snapshot record and its object map are committed in
    /// one transaction. No data is copied.
    pub(crate) fn snap_create(
        &self,
        name: &str,
        timeout: Duration,
        now: u64,
    ) -> Result<SnapRecord> {
        let _g = self.barrier(timeout)?;
        self.flush()?;
        let mut rec = self.record();
        if rec.snaps.iter().any(|s| s.name == name) {
            return Err(Error::SnapExists(format!("{}@{name}", self.spec())));
        }
        if let Some(limit) = rec.snap_limit {
            if rec.snaps.len() as u64 >= limit {
                return Err(Error::SnapLimit {
                    spec: self.spec(),
                    limit,
                });
            }
        }
        let snap = SnapRecord {
            id: rec.seq,
            name: name.to_string(),
            size: rec.size,
            protected: false,
            create_time: now,
            hidden: rec.hidden.clone(),
            parent_overlap: rec.parent_overlap,
        };
        rec.snaps.push(snap.clone());
        rec.seq += 1;
        let mut extra = Vec::new();
        let mut new_head_map = None;
        if self.params().object_map {
            // The head's new map (exists → exists-clean: the head now sees
            // what the snapshot sees) is committed with the snapshot and
            // installed only once that commit succeeded: changed in place
            // before, a failed commit left it wrong in memory and the next
            // flush stored it, under-reporting against the old snapshots.
            let map = self.head_map.lock().clone();
            let mut snap_map = map.clone();
            snap_map.mark_all_dirty();
            extra.extend(snap_map.dirty_ops(self.pool.id, self.id, snap.id));
            let mut head = map;
            head.mark_clean();
            head.replace_all(
                crate::object::OBJECT_EXISTS,
                crate::object::OBJECT_EXISTS_CLEAN,
            );
            extra.extend(head.dirty_ops(self.pool.id, self.id, HEAD));
            head.mark_clean();
            new_head_map = Some(head);
        }
        self.commit_record(rec, extra)?;
        if let Some(m) = new_head_map {
            *self.head_map.lock() = m;
        }
        Ok(snap)
    }

    /// Every object number with a record or a cached state.
    pub(crate) fn object_numbers(&self) -> Result<BTreeSet<u64>> {
        let prefix = keys::k2(self.pool.id, self.id);
        let mut set: BTreeSet<u64> = self
            .meta
            .scan(keys::OBJECTS, &prefix)?
            .into_iter()
            .filter_map(|(k, _)| keys::u64_at(&k, 16))
            .collect();
        for shard in &self.cache {
            set.extend(shard.lock().keys().copied());
        }
        Ok(set)
    }

    /// Visits every object's state (read-locked), in object order.
    pub(crate) fn for_each_object(
        &self,
        mut f: impl FnMut(u64, &ObjectMeta) -> Result<()>,
    ) -> Result<()> {
        let p = self.params();
        for objno in self.object_numbers()? {
            let cell = self.cell(objno, &p)?;
            let m = cell.read();
            f(objno, &m)?;
        }
        Ok(())
    }

    /// Drops what no reader needs any more (after a snapshot is removed or
    /// the head rolled back) and recomputes every object map from the
    /// records. The caller holds the barrier. Data is punched and objects
    /// removed only after the metadata that no longer needs them is
    /// committed.
    pub(crate) fn reclaim_and_remap(
        &self,
        extra: Vec<MetaOp>,
        progress: &dyn crate::Progress,
    ) -> Result<()> {
        self.flush()?;
        self.wait_for_lent_reads(LENT_READ_WAIT);
        let p = self.params();
        let rec = self.record();
        let readers = readers(&rec);
        let views: Vec<View> = readers.iter().map(|(_, v)| v.clone()).collect();
        let objnos = self.object_numbers()?;
        progress.start("reclaim", objnos.len() as u64);
        let mut maps: BTreeMap<u64, ObjectMap> = BTreeMap::new();
        if p.object_map {
            for (id, _) in &readers {
                let m = if *id == HEAD {
                    self.head_map.lock().clone()
                } else {
                    ObjectMap::load(self.meta.as_ref(), self.pool.id, self.id, *id)?.0
                };
                maps.insert(*id, m);
            }
        }
        let mut punches: Vec<(u64, u64, u32, u32)> = Vec::new();
        let mut removes: Vec<(u64, u64)> = Vec::new();
        for &objno in &objnos {
            let cell = self.cell(objno, &p)?;
            let mut m = cell.write();
            let r = m.reclaim(&views);
            if !r.punch.is_empty() || !r.removed.is_empty() {
                self.dirty.lock().insert(objno);
            }
            // Blocks per object fit in u32 (orders up to 25: 8192 blocks).
            punches.extend(
                r.punch
                    .iter()
                    .map(|&(g, s, e)| (objno, g, s as u32, e as u32)),
            );
            removes.extend(r.removed.iter().map(|&g| (objno, g)));
            if p.object_map {
                let mut prev: Option<&View> = None;
                for (id, v) in &readers {
                    let st = m.map_state(v, prev);
                    if let Some(map) = maps.get_mut(id) {
                        map.set(objno, st);
                    }
                    prev = Some(v);
                }
            }
            self.dirty.lock().insert(objno);
            progress.inc(1);
        }
        // Objects that no longer exist for anyone also leave the maps.
        let mut ops = extra;
        for (id, map) in &mut maps {
            for (objno, _) in map.iter().collect::<Vec<_>>() {
                if !objnos.contains(&objno) {
                    map.set(objno, OBJECT_NONEXISTENT);
                }
            }
            if *id == HEAD {
                *self.head_map.lock() = map.clone();
            } else {
                ops.extend(map.dirty_ops(self.pool.id, self.id, *id));
            }
        }
        // The maps are whole again: the commit that stores them clears the
        // invalid flags that the operation's first commit set (see
        // `Store::snap_remove`), so an interruption in between leaves them
        // flagged rather than silently under-reporting.
        let invalid = record::FLAG_OBJECT_MAP_INVALID | record::FLAG_FAST_DIFF_INVALID;
        let mut valid_rec = self.record();
        let clear = valid_rec.flags & invalid != 0;
        if clear {
            valid_rec.flags &= !invalid;
            ops.push(self.record_op(&valid_rec));
        }
        // The data no reader needs is queued in the same commit and
        // released by the trimmer after the barrier is gone (`trim.rs`
        // says why that is safe).
        ops.extend(crate::trim::queue_ops(
            self.meta.as_ref(),
            self.pool.id,
            self.id,
            punches,
            removes,
        )?);
        self.flush_with(ops)?;
        if clear {
            self.set_record(valid_rec);
        }
        progress.finish();
        Ok(())
    }

    /// Copies up every object the head still reads from the parent (flatten).
    pub(crate) fn copy_up_all(&self, progress: &dyn crate::Progress) -> Result<()> {
        let p = self.params();
        if p.parent.is_none() {
            return Ok(());
        }
        let n = p.copyup_overlap.div_ceil(p.obj_size);
        progress.start("flatten", n);
        for objno in 0..n {
            let _g = self.gate.read();
            let p = self.params();
            self.modify(&p, objno, |_, _| Ok(()))?;
            progress.inc(1);
        }
        progress.finish();
        Ok(())
    }

    /// Drops every cached object state (after the records were replaced
    /// wholesale, e.g. by a rollback of metadata).
    pub(crate) fn reload_map(&self) -> Result<()> {
        let p = self.params();
        let map = if p.object_map {
            ObjectMap::load(self.meta.as_ref(), self.pool.id, self.id, HEAD)?.0
        } else {
            ObjectMap::new()
        };
        *self.head_map.lock() = map;
        Ok(())
    }

    /// Runs `f` on one object's state (read-locked).
    pub(crate) fn for_one_object(&self, objno: u64, f: impl FnOnce(&ObjectMeta)) -> Result<()> {
        let p = self.params();
        let c = self.cell(objno, &p)?;
        f(&c.read());
        Ok(())
    }

    /// The parent's state, the parent snapshot's view and its size.
    pub(crate) fn parent_parts(&self) -> Result<Option<(Arc<ImageState>, View, u64)>> {
        Ok(self.parent_handle()?.map(|h| (h.state, h.view, h.size)))
    }

    /// The head's in-memory object map (after a flush, what is stored).
    pub(crate) fn head_map(&self) -> ObjectMap {
        self.head_map.lock().clone()
    }
}

/// A handle on an image's head (read-write) or one of its snapshots
/// (read-only). Cheap to clone; every clone shares the same state.
#[derive(Clone)]
pub struct Image {
    pub(crate) st: Arc<ImageState>,
    pub(crate) snap: Option<SnapRecord>,
    pub(crate) spec: ImageSpec,
    /// Set by [`Image::pinned`]: shared by the clones of this handle.
    pub(crate) pin: Option<Arc<ReaderPin>>,
}

/// Keeps a snapshot from being removed while a long-lived reader (an NBD
/// client) uses it; released when the last clone of the pinned
/// [`Image`] is dropped.
pub(crate) struct ReaderPin {
    st: Arc<ImageState>,
    snap_id: u64,
}

impl Drop for ReaderPin {
    fn drop(&mut self) {
        let mut readers = self.st.snap_readers.lock();
        if let Some(n) = readers.get_mut(&self.snap_id) {
            *n -= 1;
            if *n == 0 {
                readers.remove(&self.snap_id);
            }
        }
    }
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({})", self.spec)
    }
}

/// The I/O barrier held (see [`ImageState::barrier`]); head I/O resumes
/// when it drops.
pub(crate) struct Barrier<'a> {
    _guard: parking_lot::RwLockWriteGuard<'a, ()>,
    count: &'a AtomicUsize,
}

impl Drop for Barrier<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Image {
    /// Whether a barrier (snapshot create, rollback, resize, reclaim) is
    /// held or being waited for: head I/O started now would wait for it.
    /// A hint, stale as soon as it is read; the NBD server uses it to keep
    /// such I/O off threads that must not block.
    pub fn barrier_pending(&self) -> bool {
        self.st.barriers.load(Ordering::Relaxed) > 0
    }

    /// What this handle reads: `pool/image` or `pool/image@snap`.
    pub fn spec(&self) -> &ImageSpec {
        &self.spec
    }

    /// Size in bytes of what this handle reads (the snapshot's size for
    /// snapshots).
    pub fn size(&self) -> u64 {
        match &self.snap {
            Some(s) => s.size,
            None => self.st.params().size,
        }
    }

    /// Object size in bytes.
    pub fn object_size(&self) -> u64 {
        self.st.params().obj_size
    }

    pub fn is_snapshot(&self) -> bool {
        self.snap.is_some()
    }

    /// How many objects' metadata the image holds in memory now (bounded
    /// after each flush by [`crate::Config::object_cache`]).
    pub fn cached_objects(&self) -> usize {
        self.st.cache.iter().map(|s| s.lock().len()).sum()
    }

    /// This handle, pinning its snapshot (heads are returned as they are):
    /// until every clone of the returned handle is dropped, `snap rm` of
    /// the snapshot is refused ([`Error::SnapInUse`]) instead of releasing
    /// data a reader still reads. Fails with [`Error::SnapNotFound`] if the
    /// snapshot was removed since this handle was opened.
    pub fn pinned(mut self) -> Result<Image> {
        let Some(snap) = &self.snap else {
            return Ok(self);
        };
        if self.pin.is_some() {
            return Ok(self);
        }
        let mut readers = self.st.snap_readers.lock();
        if !self.st.record().snaps.iter().any(|s| s.id == snap.id) {
            return Err(Error::SnapNotFound(self.spec.to_string()));
        }
        *readers.entry(snap.id).or_insert(0) += 1;
        drop(readers);
        self.pin = Some(Arc::new(ReaderPin {
            st: Arc::clone(&self.st),
            snap_id: snap.id,
        }));
        Ok(self)
    }

    fn writable(&self) -> Result<()> {
        if self.snap.is_some() {
            return Err(Error::ReadOnly {
                spec: self.spec.to_string(),
            });
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`. Unwritten ranges read as zero.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = std::time::Instant::now();
        let r = self.read_at_inner(offset, buf);
        self.st.io.record(start);
        r
    }

    fn read_at_inner(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.in_view(offset, buf.len(), |view, is_head| {
            self.st.read_view(view, is_head, offset, buf)
        })
    }

    /// Runs `f(view, is_head)` for a read of `[offset, offset + len)`,
    /// checked against this handle's size: a snapshot's view, or the
    /// head's under the gate (so no barrier runs meanwhile).
    fn in_view<T>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&View, bool) -> Result<T>,
    ) -> Result<T> {
        match &self.snap {
            Some(s) => {
                self.st.check_range(offset, len as u64, s.size)?;
                f(&snap_view(s), false)
            }
            None => {
                let _g = self.st.gate.read();
                let p = self.st.params();
                self.st.check_range(offset, len as u64, p.size)?;
                f(&p.head, true)
            }
        }
    }

    /// Reads `len` bytes at `offset` like [`Image::read_at`], for a caller
    /// that hands them on to the kernel (an NBD reply) rather than using
    /// them: data the object store can lend ([`vdisk_storage::Lent`], the
    /// page cache of a local store) is lent instead of copied into a
    /// buffer, so the kernel copies it once, to the socket. The engine
    /// releases (punches) none of the lent data until the returned read is
    /// dropped; writes and discards of the range meanwhile may show in it,
    /// as they may in any read they overlap. See [`crate::lend`].
    pub fn read_lent(&self, offset: u64, len: usize) -> Result<LentRead> {
        let start = std::time::Instant::now();
        // Entered before anything is resolved (see `LendBook::mark`).
        let mut out = LentRead::new(self.st.lends.begin());
        let r = self.in_view(offset, len, |view, is_head| {
            self.st.lend_view(view, is_head, offset, len, &mut out)
        });
        self.st.io.record(start);
        r.map(|()| out)
    }

    /// Writes `data` at `offset`. All-zero blocks are stored as zeros in
    /// metadata, not as data. Durable after [`Image::flush`].
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.writable()?;
        let start = std::time::Instant::now();
        let r = self.st.write(offset, data, false);
        self.st.io.record(start);
        r
    }

    /// Writes `len` bytes at `offset` whose data `src` receives straight
    /// into the page cache of the object they go to, where the object
    /// store can lend it ([`vdisk_storage::ObjectStore::fill_in_place`]):
    /// for an NBD server's large WRITE, so the kernel copies the payload
    /// once, from the socket, instead of into a buffer and from there to
    /// the page cache. The result is that of [`Image::write_at`] with the
    /// same data.
    ///
    /// `src` fills the slice it is given from its start and returns how
    /// many bytes it filled: all of them, or fewer when the kernel could
    /// not write a page of the slice (`EFAULT` after part of it); it is
    /// then called again with a buffer for the rest. An error from `src`
    /// fails the write. `src` must hand the slice to the kernel and never
    /// read or write it itself (see `fill_in_place`).
    ///
    /// `Ok(false)`, without `src` called and with nothing changed: not
    /// done in place (the range is not block aligned, crosses objects,
    /// is not in memory, or the store cannot lend); use `write_at`.
    pub fn write_in_place(
        &self,
        offset: u64,
        len: usize,
        src: &mut dyn FnMut(&mut [u8]) -> std::io::Result<usize>,
    ) -> Result<bool> {
        self.writable()?;
        let start = std::time::Instant::now();
        let r = self.st.write_in_place(offset, len, src);
        if !matches!(r, Ok(false)) {
            self.st.io.record(start);
        }
        r
    }

    /// [`Image::write_at`] for bulk copies (import, convert into a pool):
    /// the data is not expected to change before the final
    /// [`Image::flush`], so its writeback to the disk starts at once and
    /// overlaps the rest of the copy instead of all waiting in the flush.
    /// Durability is unchanged: only the flush makes the data durable. An
    /// image a `--no-sync` copy marked is written as by `write_at`: its
    /// writeback is left to the kernel.
    pub fn write_streaming(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.writable()?;
        let start = std::time::Instant::now();
        let stream = !self.st.unsynced.load(Ordering::SeqCst);
        let r = self.st.write(offset, data, stream);
        self.st.io.record(start);
        r
    }

    /// Makes the range read as zero and releases its space where nothing
    /// older needs it.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        let start = std::time::Instant::now();
        let r = self.st.zero(offset, len);
        self.st.io.record(start);
        r
    }

    /// Discards the range: it reads as zero afterwards (a guaranteed-zeroing
    /// discard) and its space is released.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }

    /// Makes every write completed before this call durable.
    pub fn flush(&self) -> Result<()> {
        let start = std::time::Instant::now();
        let r = self.st.flush();
        self.st.io.record(start);
        r
    }

    /// Grows the head to at least `size` without committing metadata (the
    /// next flush does). For streaming imports of unknown length.
    pub fn grow_to(&self, size: u64) -> Result<()> {
        self.writable()?;
        let size = size.div_ceil(512) * 512;
        if size > crate::spec::MAX_IMAGE_SIZE {
            return Err(Error::InvalidArgument(format!(
                "{size} bytes is larger than the image size limit"
            )));
        }
        let _g = self.st.gate.write();
        self.st.grow_uncommitted(size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names() {
        assert_eq!(object_name(1, 2, 3), "00000001/000000000002.3");
    }
}
