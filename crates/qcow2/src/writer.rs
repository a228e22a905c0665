//! Writing new qcow2 v3 images, streaming: guest data goes to the file as
//! it arrives (from any number of threads, in any order); the tables are
//! kept in memory and written after the data, the header last.
//!
//! File layout produced:
//!
//! ```text
//! cluster 0          header (written last, by finish)
//! clusters 1..       data: uncompressed clusters (cluster aligned) and
//!                    compressed clusters (packed byte by byte), in the
//!                    order the writes reserved them
//! then               L2 tables, the L1 table, refcount blocks, the refcount table
//! ```
//!
//! Every cluster from 0 to the end of the file is referenced, so refcounts
//! are computed, not tracked: 1 for header, metadata and uncompressed data
//! clusters; for clusters holding compressed data, the number of
//! compressed clusters whose (sector-rounded) bytes touch it — what
//! `qemu-img check` counts. A cluster is never shared by more compressed
//! clusters than the refcount width can count: the writer moves on to the
//! next cluster first.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use parking_lot::{Mutex, RwLock};

use crate::compress;
use crate::entry::{self, OFLAG_COPIED, OFLAG_ZERO};
use crate::error::{Error, Result};
use crate::header::{
    incompat, CompressionType, Geometry, Header, MAX_CLUSTER_BITS, MAX_L1_BYTES,
    MAX_REFCOUNT_TABLE_BYTES, MIN_CLUSTER_BITS, WRITE_HEADER_LEN,
};
use crate::image::{Format, ImageWrite};
use crate::storage::Writeback;

/// How to write the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterOptions {
    /// Cluster size in bytes: a power of two from 512 B to 2 MiB (default 64 KiB).
    pub cluster_size: u64,
    /// Refcount width: 1, 2, 4, 8, 16, 32 or 64 bits (default 16).
    pub refcount_bits: u32,
    /// Compress every cluster that gets smaller (default: none).
    pub compression: Option<CompressionType>,
    /// Backing file name to record (relative names are relative to the
    /// new image's directory). The writer does not read it: what to write
    /// over it is the caller's choice (zeros must be written explicitly
    /// with [`ImageWrite::write_zeroes`] to hide backing data).
    pub backing_file: Option<String>,
    /// The backing file's format, recorded with the name.
    pub backing_format: Option<Format>,
    /// Sync data and tables before writing the header, and the header
    /// after (default). Without it `finish` leaves the bytes to the page
    /// cache, as `qemu-img convert` does for raw targets: faster, but a
    /// crash may leave a header that points at tables not on disk.
    pub durable: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            cluster_size: 64 << 10,
            refcount_bits: 16,
            compression: None,
            backing_file: None,
            backing_format: None,
            durable: true,
        }
    }
}

/// What [`Qcow2Writer::finish`] produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteSummary {
    /// Length of the finished file.
    pub file_size: u64,
    /// Clusters stored uncompressed.
    pub data_clusters: u64,
    /// Clusters stored compressed.
    pub compressed_clusters: u64,
    /// Clusters marked as reading zeros.
    pub zero_clusters: u64,
}

#[derive(Debug, Default)]
struct Alloc {
    /// Next free byte of the data area.
    cursor: u64,
    /// Refcounts of clusters that hold compressed data.
    shared: HashMap<u64, u64>,
    data_clusters: u64,
    compressed_clusters: u64,
}

/// Writes a new qcow2 v3 image; see the module documentation.
///
/// Rules: write offsets are multiples of the cluster size and lengths are
/// too, except a write that ends in the last cluster (the rest of that
/// cluster reads as zeros); each guest cluster
/// is written (data or zeros) at most once; any number of threads may
/// write at once, in any order (the file's data area follows arrival
/// order, so writing roughly in guest order gives a sequential layout).
/// Compression happens in the calling thread, so parallel writers
/// compress in parallel. Nothing is valid until [`Qcow2Writer::finish`]
/// returns: the header is written last, so a crash or an error leaves a
/// file without the qcow2 magic, never an image with missing data.
pub struct Qcow2Writer {
    file: File,
    name: String,
    size: u64,
    geo: Geometry,
    opts: WriterOptions,
    l1_size: u64,
    l2: Vec<OnceLock<Box<[AtomicU64]>>>,
    alloc: Mutex<Alloc>,
    failed: AtomicBool,
    /// Writes hold it shared; `finish` takes it exclusively (waiting for
    /// writes in flight) and sets it: later writes are refused.
    finished: RwLock<bool>,
    writeback: Writeback,
}

impl fmt::Debug for Qcow2Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2Writer")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Qcow2Writer {
    /// Creates (or truncates) `path` and prepares a `size`-byte image.
    pub fn create(path: &Path, size: u64, opts: &WriterOptions) -> Result<Self> {
        let name = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(format!("creating {name}"), e))?;
        Self::new(file, name, size, opts)
    }

    /// Writes the image into `file`, which is truncated to zero first (so
    /// every byte not written reads as zero: the writer made it so).
    ///
    /// The virtual size is rounded up to whole 512-byte sectors, as
    /// `qemu-img create` does (qemu reads only whole sectors).
    pub fn new(file: File, name: String, size: u64, opts: &WriterOptions) -> Result<Self> {
        let size = size
            .checked_next_multiple_of(512)
            .ok_or_else(|| Error::InvalidRequest(format!("virtual size {size} is too large")))?;
        let cs = opts.cluster_size;
        if !cs.is_power_of_two()
            || !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cs.trailing_zeros())
        {
            return Err(Error::InvalidRequest(format!(
                "cluster size {cs} is not a power of two from 512 to 2097152"
            )));
        }
        let rb = opts.refcount_bits;
        if !rb.is_power_of_two() || rb > 64 {
            return Err(Error::InvalidRequest(format!(
                "refcount width {rb} is not 1, 2, 4, 8, 16, 32 or 64 bits"
            )));
        }
        let geo = Geometry {
            cluster_bits: cs.trailing_zeros(),
            extended_l2: false,
            refcount_order: rb.trailing_zeros(),
        };
        let l1_size = geo.l1_entries_for(size);
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(Error::InvalidRequest(format!(
                "a {size}-byte image needs an L1 table of {l1_size} entries with {cs}-byte clusters, \
                 more than qemu's limit of {}; use larger clusters",
                MAX_L1_BYTES / 8
            )));
        }
        if opts.backing_format.is_some() && opts.backing_file.is_none() {
            return Err(Error::InvalidRequest(
                "a backing format without a backing file".into(),
            ));
        }
        // Fail now, not after the data, if the header cannot hold the name.
        Self::header_for(&geo, size, l1_size, opts, 0, 0, 0)?;
        // Only a file with contents is truncated: on ext4, truncating even
        // an empty file to zero arms "auto_da_alloc", which makes close()
        // start writeback of everything written, synchronously (12 % of a
        // copy's time, measured).
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("examining {name}"), e))?
            .len();
        if len != 0 {
            file.set_len(0)
                .map_err(|e| Error::io(format!("truncating {name}"), e))?;
        }
        Ok(Qcow2Writer {
            file,
            name,
            size,
            geo,
            opts: opts.clone(),
            l1_size,
            l2: (0..l1_size).map(|_| OnceLock::new()).collect(),
            alloc: Mutex::new(Alloc {
                cursor: cs,
                ..Alloc::default()
            }),
            failed: AtomicBool::new(false),
            finished: RwLock::new(false),
            writeback: Writeback::default(),
        })
    }

    /// Cluster size: the alignment writes need.
    pub fn cluster_size(&self) -> u64 {
        self.geo.cluster_size()
    }

    fn header_for(
        geo: &Geometry,
        size: u64,
        l1_size: u64,
        opts: &WriterOptions,
        l1_offset: u64,
        rt_offset: u64,
        rt_clusters: u64,
    ) -> Result<Vec<u8>> {
        let compression = opts.compression.unwrap_or(CompressionType::Zlib);
        Header {
            version: 3,
            geometry: *geo,
            size,
            l1_size: l1_size as u32,
            l1_table_offset: l1_offset,
            refcount_table_offset: rt_offset,
            refcount_table_clusters: rt_clusters as u32,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: if compression == CompressionType::Zlib {
                0
            } else {
                incompat::COMPRESSION_TYPE
            },
            compatible_features: 0,
            autoclear_features: 0,
            header_length: WRITE_HEADER_LEN as u32,
            compression,
            backing_file: opts.backing_file.clone(),
            backing_format: opts.backing_format.map(|f| f.name().to_string()),
            feature_names: Vec::new(),
            backing_file_offset: 0,
        }
        .encode_v3()
    }

    fn slot(&self, cluster: u64) -> &AtomicU64 {
        let n = self.geo.l2_entries();
        let table = self.l2[(cluster / n) as usize]
            .get_or_init(|| (0..n).map(|_| AtomicU64::new(0)).collect());
        &table[(cluster % n) as usize]
    }

    fn live(&self, finished: bool) -> Result<()> {
        if finished {
            return Err(Error::InvalidRequest(format!(
                "{} is already finished",
                self.name
            )));
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::InvalidRequest(format!(
                "an earlier write to {} failed; the image cannot be finished",
                self.name
            )));
        }
        Ok(())
    }

    /// Marks the writer failed and passes the error on.
    fn fail<T>(&self, e: Error) -> Result<T> {
        self.failed.store(true, Ordering::Release);
        Err(e)
    }

    /// Checks alignment and bounds; returns the first cluster and count.
    fn clusters(&self, offset: u64, len: u64, what: &str) -> Result<(u64, u64)> {
        let cs = self.geo.cluster_size();
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "{what} {offset:#x}+{len:#x} is beyond the virtual size {:#x}",
                    self.size
                ))
            })?;
        // Only a write that ends in the last cluster may end unaligned.
        if !offset.is_multiple_of(cs)
            || (!end.is_multiple_of(cs) && end.div_ceil(cs) != self.size.div_ceil(cs))
        {
            return Err(Error::InvalidRequest(format!(
                "{what} {offset:#x}+{len:#x} is not aligned to the cluster size {cs} \
                 (only a write ending in the last cluster may end unaligned)"
            )));
        }
        let first = offset / cs;
        let count = len.div_ceil(cs);
        for c in first..first + count {
            if self.slot(c).load(Ordering::Acquire) != 0 {
                return Err(Error::InvalidRequest(format!(
                    "guest cluster at {:#x} is written twice; each cluster may be written once",
                    c * cs
                )));
            }
        }
        Ok((first, count))
    }

    fn set(&self, cluster: u64, value: u64) -> Result<()> {
        if self
            .slot(cluster)
            .compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return self.fail(Error::InvalidRequest(format!(
                "guest cluster at {:#x} was written by two writes at once",
                cluster * self.geo.cluster_size()
            )));
        }
        Ok(())
    }

    fn pwrite(&self, data: &[u8], at: u64) -> Result<()> {
        if let Err(e) = self.file.write_all_at(data, at) {
            return self.fail(Error::io(
                format!("writing {} bytes at {at:#x} of {}", data.len(), self.name),
                e,
            ));
        }
        if self.opts.durable {
            self.writeback.wrote(&self.file, data.len() as u64);
        }
        Ok(())
    }

    /// Reserves `n` contiguous clusters for uncompressed data.
    fn reserve_clusters(a: &mut Alloc, n: u64, cs: u64) -> u64 {
        let host = a.cursor.next_multiple_of(cs);
        a.cursor = host + n * cs;
        a.data_clusters += n;
        host
    }

    /// Reserves `len` bytes for one compressed cluster and counts the
    /// references to the clusters its sectors touch.
    fn reserve_compressed(&self, a: &mut Alloc, len: u64) -> Result<u64> {
        let cs = self.geo.cluster_size();
        let max = entry::refcount_max(self.geo.refcount_order);
        let mut start = a.cursor;
        let first = (start & !511) / cs;
        if a.shared.get(&first).is_some_and(|&n| n >= max) {
            start = start.next_multiple_of(cs);
        }
        let end = (start + len).next_multiple_of(512);
        if end > 1u64 << self.geo.compressed_offset_bits().min(56) {
            return self.fail(Error::InvalidRequest(format!(
                "compressed data would pass offset {:#x}, beyond what a compressed cluster descriptor \
                 can address with {cs}-byte clusters",
                1u64 << self.geo.compressed_offset_bits().min(56)
            )));
        }
        for c in (start & !511) / cs..=(end - 1) / cs {
            *a.shared.entry(c).or_insert(0) += 1;
        }
        a.cursor = start + len;
        a.compressed_clusters += 1;
        Ok(start)
    }

    fn write_compressed(
        &self,
        data: &[u8],
        first: u64,
        count: u64,
        ty: CompressionType,
    ) -> Result<()> {
        let cs = self.geo.cluster_size() as usize;
        let mut packed = Vec::with_capacity(data.len() / 2);
        let mut blobs = Vec::new(); // (cluster, start in packed, len)
        let mut plain = Vec::new(); // cluster index within the write
        let mut out = Vec::new();
        let mut padded = Vec::new();
        for i in 0..count as usize {
            let chunk = &data[i * cs..((i + 1) * cs).min(data.len())];
            let input = if chunk.len() < cs {
                padded.clear();
                padded.extend_from_slice(chunk);
                padded.resize(cs, 0);
                &padded[..]
            } else {
                chunk
            };
            match compress::compress(ty, input, &mut out, cs) {
                Some(n) => {
                    blobs.push((i, packed.len(), n));
                    packed.extend_from_slice(&out[..n]);
                }
                None => plain.push(i),
            }
        }
        // Reserve everything under one lock, then write unlocked.
        let (placed, plain_host) = {
            let mut a = self.alloc.lock();
            let mut placed = Vec::with_capacity(blobs.len());
            for &(_, _, n) in &blobs {
                placed.push(self.reserve_compressed(&mut a, n as u64)?);
            }
            let host = Self::reserve_clusters(&mut a, plain.len() as u64, cs as u64);
            (placed, host)
        };
        // Compressed blobs: one write per run that is contiguous in the file.
        let mut i = 0;
        while i < blobs.len() {
            let mut j = i + 1;
            while j < blobs.len() && placed[j] == placed[j - 1] + blobs[j - 1].2 as u64 {
                j += 1;
            }
            let from = blobs[i].1;
            let to = blobs[j - 1].1 + blobs[j - 1].2;
            self.pwrite(&packed[from..to], placed[i])?;
            i = j;
        }
        // Uncompressible clusters: contiguous in the file; one write per
        // run of adjacent guest clusters.
        let mut k = 0;
        while k < plain.len() {
            let mut m = k + 1;
            while m < plain.len() && plain[m] == plain[m - 1] + 1 {
                m += 1;
            }
            let from = plain[k] * cs;
            let to = ((plain[m - 1] + 1) * cs).min(data.len());
            self.pwrite(&data[from..to], plain_host + (k * cs) as u64)?;
            k = m;
        }
        for (&(i, _, n), &at) in blobs.iter().zip(&placed) {
            self.set(
                first + i as u64,
                entry::encode_l2_compressed(at, n as u64, &self.geo),
            )?;
        }
        for (k, &i) in plain.iter().enumerate() {
            self.set(
                first + i as u64,
                entry::encode_l2_data(plain_host + (k * cs) as u64),
            )?;
        }
        Ok(())
    }

    /// Writes `data` at guest `offset` (see the type's rules).
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        let finished = self.finished.read();
        self.live(*finished)?;
        if data.is_empty() {
            return Ok(());
        }
        let (first, count) = self.clusters(offset, data.len() as u64, "write")?;
        if let Some(ty) = self.opts.compression {
            return self.write_compressed(data, first, count, ty);
        }
        let cs = self.geo.cluster_size();
        let host = Self::reserve_clusters(&mut self.alloc.lock(), count, cs);
        self.pwrite(data, host)?;
        for i in 0..count {
            self.set(first + i, entry::encode_l2_data(host + i * cs))?;
        }
        Ok(())
    }

    /// Marks `[offset, offset + len)` as reading zeros (zero clusters; no
    /// data stored). Same alignment rules as writes.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let finished = self.finished.read();
        self.live(*finished)?;
        if len == 0 {
            return Ok(());
        }
        let (first, count) = self.clusters(offset, len, "write zeroes")?;
        for c in first..first + count {
            self.set(c, OFLAG_ZERO)?;
        }
        Ok(())
    }

    /// Writes the tables and the header, and syncs: the image is complete
    /// when this returns. Waits for writes in flight; writes after it are
    /// refused. Takes `&self` so that a writer shared by worker threads
    /// (`Arc`) can be finished by whichever thread is last.
    pub fn finish(&self) -> Result<WriteSummary> {
        let mut finished = self.finished.write();
        self.live(*finished)?;
        *finished = true;
        let geo = self.geo;
        let cs = geo.cluster_size();
        let alloc = std::mem::take(&mut *self.alloc.lock());
        let data_end = alloc.cursor.next_multiple_of(cs);

        // L2 tables that hold anything, in L1 order.
        let mut zero_clusters = 0;
        let l2_used: Vec<usize> = (0..self.l1_size as usize)
            .filter(|&i| {
                self.l2[i].get().is_some_and(|t| {
                    let mut any = false;
                    for e in t.iter() {
                        let v = e.load(Ordering::Acquire);
                        any |= v != 0;
                        zero_clusters += u64::from(v == OFLAG_ZERO);
                    }
                    any
                })
            })
            .collect();
        let l2_start = data_end;
        let l1_offset = l2_start + l2_used.len() as u64 * cs;
        let l1_clusters = (self.l1_size * 8).div_ceil(cs);
        let meta_end = l1_offset + l1_clusters * cs;

        // Refcount blocks and table cover every cluster, themselves included.
        let rb_entries = geo.refcount_block_entries();
        let (mut rb_count, mut rt_clusters) = (0u64, 1u64);
        loop {
            let total = meta_end / cs + rb_count + rt_clusters;
            let need_rb = total.div_ceil(rb_entries);
            let need_rt = (need_rb * 8).div_ceil(cs).max(1);
            if (need_rb, need_rt) == (rb_count, rt_clusters) {
                break;
            }
            rb_count = need_rb;
            rt_clusters = need_rt;
        }
        if rt_clusters * cs > MAX_REFCOUNT_TABLE_BYTES {
            return Err(Error::InvalidRequest(format!(
                "the refcount table would need {} bytes, more than qemu's limit; use larger clusters \
                 or wider refcounts",
                rt_clusters * cs
            )));
        }
        let rb_offset = meta_end;
        let rt_offset = rb_offset + rb_count * cs;
        let file_end = rt_offset + rt_clusters * cs;
        let total_clusters = file_end / cs;

        let mut out = Batch::new(self, l2_start);
        // L2 tables.
        for &i in &l2_used {
            let Some(t) = self.l2[i].get() else { continue };
            let mut buf = Vec::with_capacity(cs as usize);
            for e in t.iter() {
                buf.extend_from_slice(&e.load(Ordering::Acquire).to_be_bytes());
            }
            out.push(&buf)?;
        }
        // L1 table.
        let mut l1 = vec![0u8; (l1_clusters * cs) as usize];
        for (k, &i) in l2_used.iter().enumerate() {
            let e = (l2_start + k as u64 * cs) | OFLAG_COPIED;
            l1[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        out.push(&l1)?;
        drop(l1);
        // Refcount blocks.
        let refcount = |c: u64| -> u64 {
            if c >= total_clusters {
                0
            } else if c > 0 && c < data_end / cs {
                alloc.shared.get(&c).copied().unwrap_or(1)
            } else {
                1
            }
        };
        let mut block = vec![0u8; cs as usize];
        for b in 0..rb_count {
            block.fill(0);
            for j in 0..rb_entries {
                let n = refcount(b * rb_entries + j);
                if n != 0 {
                    entry::refcount_set(&mut block, j, geo.refcount_order, n);
                }
            }
            out.push(&block)?;
        }
        // Refcount table.
        let mut rt = vec![0u8; (rt_clusters * cs) as usize];
        for b in 0..rb_count as usize {
            rt[b * 8..b * 8 + 8].copy_from_slice(&(rb_offset + b as u64 * cs).to_be_bytes());
        }
        out.push(&rt)?;
        let written_to = out.flush()?;
        debug_assert_eq!(written_to, file_end);

        // Everything the header points to is durable before the header
        // exists (unless the caller chose speed over durability).
        let sync = |full: bool| {
            let r = if full {
                self.file.sync_all()
            } else {
                self.file.sync_data()
            };
            r.map_err(|e| Error::io(format!("syncing {}", self.name), e))
        };
        if self.opts.durable {
            sync(true)?;
        }
        let header = Self::header_for(
            &geo,
            self.size,
            self.l1_size,
            &self.opts,
            l1_offset,
            rt_offset,
            rt_clusters,
        )?;
        self.pwrite(&header, 0)?;
        if self.opts.durable {
            sync(false)?;
        }
        Ok(WriteSummary {
            file_size: file_end,
            data_clusters: alloc.data_clusters,
            compressed_clusters: alloc.compressed_clusters,
            zero_clusters,
        })
    }
}

/// Appends metadata clusters after the data, in large writes.
struct Batch<'a> {
    w: &'a Qcow2Writer,
    at: u64,
    buf: Vec<u8>,
}

impl<'a> Batch<'a> {
    const LIMIT: usize = 8 << 20;

    fn new(w: &'a Qcow2Writer, at: u64) -> Self {
        Batch {
            w,
            at,
            buf: Vec::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= Self::LIMIT {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<u64> {
        if !self.buf.is_empty() {
            self.w.pwrite(&self.buf, self.at)?;
            self.at += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(self.at)
    }
}

impl ImageWrite for Qcow2Writer {
    fn size(&self) -> u64 {
        self.size
    }

    fn alignment(&self) -> u64 {
        self.geo.cluster_size()
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        Qcow2Writer::write_at(self, data, offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        Qcow2Writer::write_zeroes(self, offset, len)
    }

    fn finish(&self) -> Result<()> {
        Qcow2Writer::finish(self).map(|_| ())
    }
}
