//! Reading qcow2 images: opening (header, L1 table, refcount table,
//! snapshot table, with every offset checked against the file and against
//! each other), then guest reads and block status through a cache of L2
//! tables, shared by any number of threads.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::cache::{Table, TableCache};
use crate::compress;
use crate::entry::{self, Mapping};
use crate::error::{Error, Result};
use crate::header::{CompressionType, Geometry, Header, MAX_SNAPSHOT_TABLE_BYTES};
use crate::image::{push_extent, Extent, Format, ImageRead, Status};
use crate::snapshot::{self, SnapshotInfo, ENTRY_FIXED_LEN};
use crate::storage::{read_exact, read_fill, Storage};

/// Default budget for cached L2 tables (maps 256 GiB of guest data with
/// 64 KiB clusters).
pub const DEFAULT_L2_CACHE_BYTES: usize = 32 << 20;
/// Decompressed clusters kept for reads that cover part of a cluster.
const DECOMPRESSED_CACHE: usize = 8;

/// What a region of the file holds, for overlap checks and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegionKind {
    Header,
    L1Table,
    RefcountTable,
    RefcountBlock(u64),
    L2Table(u64),
    SnapshotTable,
    SnapshotL1(usize),
}

#[derive(Clone, Copy, Debug)]
struct Region {
    start: u64,
    end: u64,
    kind: RegionKind,
}

impl Region {
    fn describe(&self, geo: &Geometry) -> String {
        let what = match self.kind {
            RegionKind::Header => "the header cluster".to_string(),
            RegionKind::L1Table => "the active L1 table".to_string(),
            RegionKind::RefcountTable => "the refcount table".to_string(),
            RegionKind::RefcountBlock(i) => format!("refcount block {i}"),
            RegionKind::L2Table(i) => format!(
                "the L2 table for guest offset {:#x} (L1 index {i})",
                i.saturating_mul(geo.l2_span())
            ),
            RegionKind::SnapshotTable => "the snapshot table".to_string(),
            RegionKind::SnapshotL1(i) => format!("the L1 table of snapshot #{i}"),
        };
        format!("{what} at {:#x}..{:#x}", self.start, self.end)
    }
}

/// Summary of an opened qcow2 image (what `qemu-img info` shows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qcow2Info {
    /// 2 or 3.
    pub version: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Refcount width in bits.
    pub refcount_bits: u32,
    /// How compressed clusters are compressed.
    pub compression: CompressionType,
    /// 128-bit L2 entries with subclusters.
    pub extended_l2: bool,
    /// Lazy refcounts enabled.
    pub lazy_refcounts: bool,
    /// Refcounts may be stale (unclean shutdown with lazy refcounts).
    pub dirty: bool,
    /// qemu marked the image corrupt.
    pub corrupt: bool,
    /// Backing file name as stored.
    pub backing_file: Option<String>,
    /// Backing format from the header extension.
    pub backing_format: Option<String>,
    /// Length of the image file.
    pub file_size: u64,
}

/// A part of a guest range with one way of being read.
#[derive(Clone, Copy, Debug)]
enum Piece {
    /// Stored at this host offset (contiguous for the whole piece).
    Data(u64),
    /// One (part of a) compressed cluster: the guest offset of the piece
    /// minus `cluster_guest` is where it starts inside the cluster.
    Compressed {
        offset: u64,
        len: u64,
        cluster_guest: u64,
    },
    Zero,
    /// Not here: the backing file, or zeros.
    Unallocated,
}

/// Merges pieces into maximal runs before handing them on.
struct Runs<F> {
    f: F,
    pending: Option<(u64, u64, Piece)>,
}

impl<F: FnMut(u64, u64, Piece) -> Result<()>> Runs<F> {
    fn push(&mut self, g: u64, l: u64, p: Piece) -> Result<()> {
        if let Some((pg, pl, pp)) = &mut self.pending {
            let joined = match (*pp, p) {
                (Piece::Data(a), Piece::Data(b)) => a + *pl == b,
                (Piece::Zero, Piece::Zero) | (Piece::Unallocated, Piece::Unallocated) => true,
                _ => false,
            };
            if joined && *pg + *pl == g {
                *pl += l;
                return Ok(());
            }
        }
        if let Some((a, b, c)) = self.pending.replace((g, l, p)) {
            (self.f)(a, b, c)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        match self.pending.take() {
            Some((g, l, p)) => (self.f)(g, l, p),
            None => Ok(()),
        }
    }
}

/// A qcow2 image opened for reading. `Send + Sync`: share it in an `Arc`.
pub struct Qcow2Reader {
    storage: Box<dyn Storage>,
    name: String,
    file_len: u64,
    header: Header,
    geo: Geometry,
    l1: Vec<u64>,
    /// Metadata regions, sorted and disjoint (checked at open).
    regions: Vec<Region>,
    cache: TableCache,
    decompressed: Mutex<VecDeque<(u64, Arc<[u8]>)>>,
    backing: Option<Arc<dyn ImageRead>>,
    snapshots: Vec<SnapshotInfo>,
    /// The virtual size as qemu sees it: whole 512-byte sectors.
    size: u64,
}

impl fmt::Debug for Qcow2Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2Reader")
            .field("name", &self.name)
            .field("size", &self.header.size)
            .field("cluster_size", &self.geo.cluster_size())
            .field("backing", &self.backing)
            .finish_non_exhaustive()
    }
}

fn outside(what: impl Into<String>, offset: u64, len: u64, file_size: u64) -> Error {
    Error::OutsideFile {
        what: what.into(),
        offset,
        len,
        file_size,
    }
}

impl Qcow2Reader {
    /// Opens a qcow2 image from `storage`, without its backing file (attach
    /// one with [`Qcow2Reader::set_backing`]; until then unallocated
    /// clusters read as zeros). `l2_cache_bytes` bounds the L2 table cache.
    ///
    /// Validates the header, that the L1 table, refcount table, refcount
    /// blocks, L2 tables, snapshot table and snapshot L1 tables lie inside
    /// the file, are aligned, and do not overlap each other or the header.
    /// Memory allocated is bounded by qemu's table limits and by what the
    /// file actually contains, never by a count the file merely claims.
    pub fn open(storage: Box<dyn Storage>, l2_cache_bytes: usize) -> Result<Self> {
        let name = storage.describe();
        let file_len = storage.len();
        let mut prefix = vec![0u8; file_len.min(512) as usize];
        read_exact(&*storage, &mut prefix, 0, "the header")?;
        let wanted = (Header::wanted_len(&prefix)? as u64).min(file_len);
        let mut first = vec![0u8; wanted as usize];
        read_exact(&*storage, &mut first, 0, "the header cluster")?;
        let header = Header::parse(&first)?;
        drop(first);
        let geo = header.geometry;
        let cs = geo.cluster_size();
        let round = |n: u64| n.next_multiple_of(cs);

        let mut regions = vec![Region {
            start: 0,
            end: cs,
            kind: RegionKind::Header,
        }];

        // Active L1 table.
        let l1_bytes = u64::from(header.l1_size) * 8;
        let l1 = if header.l1_size > 0 {
            check_inside(
                "the active L1 table",
                header.l1_table_offset,
                l1_bytes,
                file_len,
            )?;
            regions.push(Region {
                start: header.l1_table_offset,
                end: header.l1_table_offset + round(l1_bytes),
                kind: RegionKind::L1Table,
            });
            read_u64s(
                &*storage,
                header.l1_table_offset,
                header.l1_size as usize,
                "the active L1 table",
            )?
        } else {
            Vec::new()
        };
        for (i, &e) in l1.iter().enumerate() {
            let off = entry::decode_l1(e, &geo)
                .map_err(|why| Error::Corrupt(format!("L1 entry {i} ({e:#018x}): {why}")))?;
            if let Some(off) = off {
                let mut r = Region {
                    start: off,
                    end: off,
                    kind: RegionKind::L2Table(i as u64),
                };
                // Check before computing the end: `off + cs` can overflow.
                check_inside(r.describe(&geo), off, cs, file_len)?;
                r.end = off + cs;
                regions.push(r);
            }
        }

        // Refcount table and blocks (not needed for reading, but they must
        // not overlap anything, and a reference outside the file is damage).
        let rt_bytes = u64::from(header.refcount_table_clusters) * cs;
        if rt_bytes > 0 {
            check_inside(
                "the refcount table",
                header.refcount_table_offset,
                rt_bytes,
                file_len,
            )?;
            regions.push(Region {
                start: header.refcount_table_offset,
                end: header.refcount_table_offset + rt_bytes,
                kind: RegionKind::RefcountTable,
            });
            let rt = read_u64s(
                &*storage,
                header.refcount_table_offset,
                (rt_bytes / 8) as usize,
                "the refcount table",
            )?;
            for (i, &e) in rt.iter().enumerate() {
                let off = entry::decode_reftable(e, &geo).map_err(|why| {
                    Error::Corrupt(format!("refcount table entry {i} ({e:#018x}): {why}"))
                })?;
                if let Some(off) = off {
                    let mut r = Region {
                        start: off,
                        end: off,
                        kind: RegionKind::RefcountBlock(i as u64),
                    };
                    // Check before computing the end: `off + cs` can overflow.
                    check_inside(r.describe(&geo), off, cs, file_len)?;
                    r.end = off + cs;
                    regions.push(r);
                }
            }
        }

        // Snapshot table, one entry at a time (its length is only known by
        // walking it), bounded by qemu's 64 MiB limit and by the file.
        let mut snapshots = Vec::new();
        if header.nb_snapshots > 0 {
            let start = header.snapshots_offset;
            let mut at = start;
            for i in 0..header.nb_snapshots {
                let mut fixed = [0u8; ENTRY_FIXED_LEN];
                check_inside(
                    format!("snapshot table entry {i}"),
                    at,
                    fixed.len() as u64,
                    file_len,
                )?;
                read_exact(&*storage, &mut fixed, at, "the snapshot table")?;
                let len = snapshot::entry_len(&fixed)? as u64;
                if at - start + len > MAX_SNAPSHOT_TABLE_BYTES {
                    return Err(Error::Limit {
                        what: "snapshot table size in bytes".into(),
                        value: at - start + len,
                        limit: MAX_SNAPSHOT_TABLE_BYTES,
                    });
                }
                check_inside(format!("snapshot table entry {i}"), at, len, file_len)?;
                let mut buf = vec![0u8; len as usize];
                read_exact(&*storage, &mut buf, at, "the snapshot table")?;
                let s = snapshot::parse_entry(&buf, &geo)?;
                let bytes = u64::from(s.l1_size) * 8;
                if bytes > 0 {
                    check_inside(
                        format!("the L1 table of snapshot {:?}", s.id),
                        s.l1_table_offset,
                        bytes,
                        file_len,
                    )?;
                    regions.push(Region {
                        start: s.l1_table_offset,
                        end: s.l1_table_offset + round(bytes),
                        kind: RegionKind::SnapshotL1(i as usize),
                    });
                }
                snapshots.push(s);
                at += len;
            }
            regions.push(Region {
                start,
                end: start + round(at - start),
                kind: RegionKind::SnapshotTable,
            });
        }

        regions.sort_by_key(|r| (r.start, r.end));
        let mut widest: Option<Region> = None;
        for r in &regions {
            if let Some(w) = widest {
                if r.start < w.end {
                    return Err(Error::Overlap {
                        first: w.describe(&geo),
                        second: r.describe(&geo),
                    });
                }
            }
            if widest.is_none_or(|w| r.end > w.end) {
                widest = Some(*r);
            }
        }

        let l2_bytes = cs as usize;
        let header_size = header.size;
        Ok(Qcow2Reader {
            storage,
            name,
            file_len,
            cache: TableCache::new(l2_cache_bytes, l2_bytes),
            decompressed: Mutex::new(VecDeque::new()),
            header,
            geo,
            l1,
            regions,
            backing: None,
            snapshots,
            size: header_size & !511,
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// What `qemu-img info` would show.
    pub fn info(&self) -> Qcow2Info {
        let h = &self.header;
        Qcow2Info {
            version: h.version,
            size: h.size,
            cluster_size: self.geo.cluster_size(),
            refcount_bits: self.geo.refcount_bits(),
            compression: h.compression,
            extended_l2: self.geo.extended_l2,
            lazy_refcounts: h.compatible_features & crate::header::COMPAT_LAZY_REFCOUNTS != 0,
            dirty: h.incompatible_features & crate::header::incompat::DIRTY != 0,
            corrupt: h.incompatible_features & crate::header::incompat::CORRUPT != 0,
            backing_file: h.backing_file.clone(),
            backing_format: h.backing_format.clone(),
            file_size: self.file_len,
        }
    }

    /// The internal snapshots, in table order.
    pub fn snapshots(&self) -> &[SnapshotInfo] {
        &self.snapshots
    }

    /// The backing file name stored in the image, if any.
    pub fn backing_file(&self) -> Option<&str> {
        self.header.backing_file.as_deref()
    }

    /// Attaches the backing image unallocated clusters read from. Parts of
    /// the guest range beyond the backing image's size read as zeros.
    pub fn set_backing(&mut self, backing: Arc<dyn ImageRead>) {
        self.backing = Some(backing);
    }

    /// The L2 table for L1 index `i` (`None`: unallocated).
    fn l2_table(&self, i: u64) -> Result<Option<Table>> {
        let Some(&e) = self.l1.get(i as usize) else {
            return Ok(None);
        };
        let Some(off) = entry::decode_l1(e, &self.geo).ok().flatten() else {
            return Ok(None); // misaligned entries were refused at open
        };
        if let Some(t) = self.cache.get(off) {
            return Ok(Some(t));
        }
        let n = (self.geo.cluster_size() / 8) as usize;
        let t: Table = read_u64s(&*self.storage, off, n, "an L2 table")?.into();
        self.cache.insert(off, t.clone());
        Ok(Some(t))
    }

    /// The metadata region overlapping `[start, start + len)`, if any.
    fn overlapping_region(&self, start: u64, len: u64) -> Option<&Region> {
        let end = start.saturating_add(len);
        let i = self.regions.partition_point(|r| r.start < end);
        let r = self.regions[..i].last()?;
        (r.end > start).then_some(r)
    }

    fn check_data(&self, host: u64, len: u64, guest: u64, what: &str) -> Result<()> {
        let label = || format!("the {what} for guest offset {guest:#x}");
        if host >= self.file_len {
            return Err(outside(label(), host, len, self.file_len));
        }
        if let Some(r) = self.overlapping_region(host, len) {
            return Err(Error::Overlap {
                first: format!("{} at {host:#x}", label()),
                second: r.describe(&self.geo),
            });
        }
        Ok(())
    }

    /// Walks `[offset, offset + len)` (inside the virtual size) and calls
    /// `f(guest, len, piece)` for maximal runs: adjacent data contiguous
    /// in the file is one run; zero and unallocated runs merge;
    /// compressed clusters come one by one.
    fn walk(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, Piece) -> Result<()>,
    ) -> Result<()> {
        let geo = self.geo;
        let cs = geo.cluster_size();
        let sub = geo.subcluster_size();
        let end = offset + len;
        let mut runs = Runs {
            f: &mut f,
            pending: None,
        };
        let mut emit = |g: u64, l: u64, p: Piece| runs.push(g, l, p);
        let mut pos = offset;
        while pos < end {
            let l1_index = pos / geo.l2_span();
            let table_end = ((l1_index + 1) * geo.l2_span()).min(end);
            let Some(table) = self.l2_table(l1_index)? else {
                emit(pos, table_end - pos, Piece::Unallocated)?;
                pos = table_end;
                continue;
            };
            while pos < table_end {
                let cluster_guest = pos & !(cs - 1);
                let cluster_end = (cluster_guest + cs).min(table_end);
                let idx = ((pos >> geo.cluster_bits) % geo.l2_entries()) as usize;
                let (raw, bitmap) = if geo.extended_l2 {
                    (table[2 * idx], table[2 * idx + 1])
                } else {
                    (table[idx], 0)
                };
                let m = entry::decode_l2(raw, bitmap, &geo).map_err(|why| {
                    Error::Corrupt(format!(
                        "L2 entry {raw:#018x} for guest offset {cluster_guest:#x}: {why}"
                    ))
                })?;
                match m {
                    Mapping::Unallocated => emit(pos, cluster_end - pos, Piece::Unallocated)?,
                    Mapping::Zero => emit(pos, cluster_end - pos, Piece::Zero)?,
                    Mapping::Data(host) => {
                        self.check_data(host, cs, cluster_guest, "data cluster")?;
                        emit(
                            pos,
                            cluster_end - pos,
                            Piece::Data(host + (pos - cluster_guest)),
                        )?;
                    }
                    Mapping::Compressed {
                        offset: co,
                        len: cl,
                    } => {
                        self.check_data(co, cl, cluster_guest, "compressed cluster")?;
                        emit(
                            pos,
                            cluster_end - pos,
                            Piece::Compressed {
                                offset: co,
                                len: cl,
                                cluster_guest,
                            },
                        )?;
                    }
                    Mapping::Subclusters { host, alloc, zero } => {
                        if alloc != 0 {
                            self.check_data(host, cs, cluster_guest, "data cluster")?;
                        }
                        let mut p = pos;
                        while p < cluster_end {
                            let i = ((p - cluster_guest) / sub) as u32;
                            let sub_end = (cluster_guest + u64::from(i + 1) * sub).min(cluster_end);
                            let piece = if alloc & (1 << i) != 0 {
                                Piece::Data(host + (p - cluster_guest))
                            } else if zero & (1 << i) != 0 {
                                Piece::Zero
                            } else {
                                Piece::Unallocated
                            };
                            emit(p, sub_end - p, piece)?;
                            p = sub_end;
                        }
                    }
                }
                pos = cluster_end;
            }
        }
        runs.finish()
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(Error::InvalidRequest(format!(
                "range {offset:#x}+{len:#x} is beyond the virtual size {:#x} of {}",
                self.size, self.name
            )));
        }
        Ok(())
    }

    /// Decompresses one compressed cluster, into `out` (a whole cluster).
    fn decompress_into(
        &self,
        offset: u64,
        len: u64,
        cluster_guest: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let mut input = vec![0u8; len as usize];
        // The sector-rounded span may pass the end of the file (the last
        // compressed cluster of an image); read what exists.
        read_fill(&*self.storage, &mut input, offset)?;
        compress::decompress(self.header.compression, &input, out).map_err(|why| {
            Error::Corrupt(format!(
                "compressed cluster for guest offset {cluster_guest:#x} at {offset:#x}: {why}"
            ))
        })
    }

    /// A decompressed cluster for partial reads, from a small cache.
    fn decompressed_cluster(&self, offset: u64, len: u64, cluster_guest: u64) -> Result<Arc<[u8]>> {
        if let Some((_, c)) = self.decompressed.lock().iter().find(|(o, _)| *o == offset) {
            return Ok(c.clone());
        }
        let mut out = vec![0u8; self.geo.cluster_size() as usize];
        self.decompress_into(offset, len, cluster_guest, &mut out)?;
        let c: Arc<[u8]> = out.into();
        let mut q = self.decompressed.lock();
        if q.len() >= DECOMPRESSED_CACHE {
            q.pop_front();
        }
        q.push_back((offset, c.clone()));
        Ok(c)
    }

    fn read_unallocated(&self, buf: &mut [u8], guest: u64) -> Result<()> {
        match &self.backing {
            Some(b) => {
                let bsize = b.size();
                let n = bsize.saturating_sub(guest).min(buf.len() as u64) as usize;
                if n > 0 {
                    b.read_at(&mut buf[..n], guest)?;
                }
                buf[n..].fill(0);
                Ok(())
            }
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    fn status(&self, offset: u64, len: u64, chain: bool) -> Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let mut out = Vec::new();
        self.walk(offset, len, |g, l, p| {
            let ext = |status, compressed, host_offset| Extent {
                offset: g,
                length: l,
                status,
                depth: 0,
                compressed,
                host_offset,
            };
            match p {
                Piece::Data(h) => push_extent(&mut out, ext(Status::Data, false, Some(h))),
                Piece::Compressed { .. } => push_extent(&mut out, ext(Status::Data, true, None)),
                Piece::Zero => push_extent(&mut out, ext(Status::Zero, false, None)),
                Piece::Unallocated => match (&self.backing, chain) {
                    (Some(b), true) => {
                        let n = b.size().saturating_sub(g).min(l);
                        if n > 0 {
                            for mut e in b.block_status(g, n)? {
                                e.depth += 1;
                                push_extent(&mut out, e);
                            }
                        }
                        if n < l {
                            let mut e = ext(Status::Unallocated, false, None);
                            e.offset = g + n;
                            e.length = l - n;
                            e.depth = 1;
                            push_extent(&mut out, e);
                        }
                    }
                    _ => push_extent(&mut out, ext(Status::Unallocated, false, None)),
                },
            }
            Ok(())
        })?;
        Ok(out)
    }
}

impl ImageRead for Qcow2Reader {
    fn format(&self) -> Format {
        Format::Qcow2
    }

    /// The header's size rounded down to whole sectors, as qemu reads it.
    fn size(&self) -> u64 {
        self.size
    }

    fn granularity(&self) -> u64 {
        self.geo.subcluster_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let cs = self.geo.cluster_size();
        self.walk(offset, buf.len() as u64, |g, l, p| {
            let at = (g - offset) as usize;
            let dst = &mut buf[at..at + l as usize];
            match p {
                Piece::Data(host) => {
                    // Bytes past the end of the file read as zeros (a last
                    // cluster cut short), as in qemu.
                    read_fill(&*self.storage, dst, host)?;
                }
                Piece::Zero => dst.fill(0),
                Piece::Unallocated => self.read_unallocated(dst, g)?,
                Piece::Compressed {
                    offset: co,
                    len: cl,
                    cluster_guest,
                } => {
                    if g == cluster_guest && l == cs {
                        self.decompress_into(co, cl, cluster_guest, dst)?;
                    } else {
                        let c = self.decompressed_cluster(co, cl, cluster_guest)?;
                        let from = (g - cluster_guest) as usize;
                        dst.copy_from_slice(&c[from..from + l as usize]);
                    }
                }
            }
            Ok(())
        })
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.status(offset, len, true)
    }

    fn block_status_top(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.status(offset, len, false)
    }

    fn backing(&self) -> Option<&Arc<dyn ImageRead>> {
        self.backing.as_ref()
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

fn check_inside(what: impl Into<String>, offset: u64, len: u64, file_len: u64) -> Result<()> {
    if offset.checked_add(len).is_none_or(|e| e > file_len) {
        return Err(outside(what, offset, len, file_len));
    }
    Ok(())
}

/// Reads `n` big-endian `u64`s at `offset` (the caller checked they lie in
/// the file and that `n` is within a table limit).
fn read_u64s(s: &dyn Storage, offset: u64, n: usize, what: &str) -> Result<Vec<u64>> {
    let mut bytes = vec![0u8; n * 8];
    read_exact(s, &mut bytes, offset, what)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}
