//! vdisk-convert: copy, compare and map disks between raw files, block
//! devices, qcow2 files, pool images and NBD servers.
//!
//! Every endpoint is a [`Source`] (size, positioned reads, allocation
//! extents) and the writable ones a [`Dest`] (positioned writes, a fast
//! zeroing operation, flush, read-back). [`copy()`] moves the bytes with
//! parallel workers and bounded memory; [`compare()`] reads two sources
//! side by side; [`map()`] lists a source's extents.
//!
//! **Zeroing that cannot lie (incident 1).** A destination is assumed to
//! read zeros only when it says [`Dest::created_zero`] (vdisk created it in
//! this run, or the user passed `--target-is-zero`). Its fast zeroing
//! (NBD WRITE_ZEROES/TRIM, BLKZEROOUT, fallocate) is used only after
//! [`copy()`] proved it on that destination: it writes a pattern into a
//! range the copy zeroes anyway, zeroes it with the fast operation, reads it
//! back, and trusts the operation for the rest of the run only if it reads
//! zeros. Otherwise it warns once, naming the destination, and writes zeros
//! as data.

mod copy;
mod error;
mod file;
pub mod nbd;
mod pool;
mod qcow2;

pub use copy::{compare, copy, map, verify, Compared, CopyOptions, CopyReport, ZeroProof};
pub use error::{Error, Result};
pub use file::{FileDest, FileSource};
pub use nbd::{NbdClient, NbdUri};
pub use pool::{PoolDest, PoolSource};
pub use qcow2::Qcow2Dest;

use std::fmt;

/// How a range of a source reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Stored data (which may still be zeros).
    Data,
    /// Reads as zeros, and the source records it (a zero flag, an engine
    /// zero, NBD `STATE_ZERO` on allocated space).
    Zero,
    /// Nothing is stored; reads as zeros.
    Hole,
}

impl Kind {
    /// Reads as zeros (without looking at data).
    pub fn is_zero(self) -> bool {
        !matches!(self, Kind::Data)
    }
}

/// A run of bytes of one [`Kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Offset in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// How it reads.
    pub kind: Kind,
}

impl Extent {
    /// Offset just past the extent.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Appends `e` to `out`, merging it with the last extent when adjacent and
/// alike.
pub fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if e.length == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.kind == e.kind && last.end() == e.offset {
            last.length += e.length;
            return;
        }
    }
    out.push(e);
}

/// Something to read a disk from. Methods take `&self`: one source serves
/// every worker thread.
pub trait Source: Send + Sync + fmt::Debug {
    /// For messages: a path, a URI, a pool image.
    fn describe(&self) -> String;

    /// Size in bytes.
    fn size(&self) -> u64;

    /// Reads `buf.len()` bytes at `offset` (inside the size).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// The chunk size reads work best in (a pool image's object size); 0
    /// for no preference.
    fn preferred_chunk(&self) -> u64 {
        0
    }

    /// How `[offset, offset + len)` reads: extents covering a prefix of
    /// the range (at least one byte), in order. Sources that cannot tell
    /// answer [`Kind::Data`].
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>>;
}

/// Something to write a disk to.
pub trait Dest: Send + Sync + fmt::Debug {
    /// For messages.
    fn describe(&self) -> String;

    /// Size in bytes (at least the source's).
    fn size(&self) -> u64;

    /// Offsets and lengths of writes must be multiples of this (the last
    /// write may end at the size). 1 for most.
    fn alignment(&self) -> u64 {
        1
    }

    /// The chunk size writes work best in (a pool image's object size:
    /// one worker per object); 0 for no preference.
    fn preferred_chunk(&self) -> u64 {
        0
    }

    /// Whether the destination finds all-zero blocks in written data
    /// itself (the engine does, and records them as metadata): the copier
    /// then writes data spans whole instead of cutting out zero blocks.
    fn detects_zeros(&self) -> bool {
        false
    }

    /// Whether every byte reads as zero now because vdisk created it in
    /// this run (or the user said so): zero ranges then need no write.
    fn created_zero(&self) -> bool;

    /// Whether [`Dest::zero_fast`] is trustworthy by construction (the
    /// engine records zeros in metadata), so it needs no proof.
    fn zero_trusted(&self) -> bool {
        false
    }

    /// The name of the fast zeroing operation (`WRITE_ZEROES`,
    /// `BLKZEROOUT`, `fallocate(ZERO_RANGE)`...), if there is one.
    fn zero_op(&self) -> Option<&'static str>;

    /// Writes `data` at `offset`.
    fn write_at(&self, data: &[u8], offset: u64) -> Result<()>;

    /// Zeroes `[offset, offset + len)` with the fast operation. Its success
    /// proves nothing: see [`copy()`].
    fn zero_fast(&self, offset: u64, len: u64) -> Result<()>;

    /// Whether [`Dest::read_back`] works before [`Dest::finish`].
    fn can_read_back(&self) -> bool;

    /// Reads back what was written (for the zero proof and `--verify`).
    fn read_back(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Completes the destination and makes it durable.
    fn finish(&self) -> Result<()>;

    /// After [`Dest::finish`]: the destination as a source, to verify it.
    fn reopen(&self) -> Result<Box<dyn Source>>;
}

/// A source of no data at all beyond a size: handy in tests.
#[derive(Debug)]
pub struct MemSource {
    /// The bytes.
    pub data: Vec<u8>,
}

impl Source for MemSource {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let start = usize::try_from(offset).map_err(|_| Error::range(offset))?;
        let src = self
            .data
            .get(start..start + buf.len())
            .ok_or(Error::range(offset))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        Ok(vec![Extent {
            offset,
            length: len,
            kind: Kind::Data,
        }])
    }
}
