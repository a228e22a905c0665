//! Storage backends for vdisk.
//!
//! The engine stores two kinds of things, behind two small traits:
//!
//! ```text
//!   engine ──► ObjectStore  (data: named byte objects, sparse, partial writes)
//!          └─► MetaStore    (metadata: tables of byte keys → byte values,
//!                            atomic multi-key commits)
//! ```
//!
//! Both are shaped so that a remote implementation fits later: an S3-compatible
//! object store (behind a local cache tier) for [`ObjectStore`], etcd for
//! [`MetaStore`] (a transaction of puts and deletes). Only local ones exist now:
//!
//! | type | trait | for |
//! |---|---|---|
//! | [`LocalObjectStore`] | ObjectStore | one file per object under a directory |
//! | [`RedbMetaStore`] | MetaStore | the embedded transactional database redb |
//! | [`MemObjectStore`] / [`MemMetaStore`] | both | tests, simulation |
//! | [`FaultyObjectStore`] / [`FaultyMetaStore`] | both | reliability tests: slow, failing after N ops, lying about zeroing, losing unsynced data |
//!
//! The contracts are written on each method; every implementation is tested
//! against the same contract suite (`tests/contract.rs`).
// `deny`, not `forbid`: the few places that need `unsafe` opt out locally with
// `#[allow(unsafe_code)]` and a SAFETY comment. In `local.rs`: system calls
// std and rustix do not wrap (fallocate to punch holes, sync_file_range,
// mincore, sysconf) and the slices of a mapped window (the kernel fills one
// in place, the zero check reads it back); in `lent.rs`, the lent bytes of a
// mapping (`memmap2::MmapRaw` hands out pointers, not slices, because the
// same mapping takes writes in place).
#![deny(unsafe_code)]

mod faulty;
mod lent;
mod local;
mod lock;
mod mem;
mod redb_meta;

pub use faulty::{FaultConfig, FaultyMetaStore, FaultyObjectStore};
pub use lent::{is_zero, Filled, Lent};
pub use local::{start_file_writeback, LocalObjectStore, LEND_WINDOW};
pub use lock::{DirLock, LockHolder};
pub use mem::{MemMetaStore, MemObjectStore};
pub use redb_meta::RedbMetaStore;

use std::fmt::Debug;

/// What went wrong in a backend, with the object or table it concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An operating-system I/O error on a named object or file.
    #[error("I/O error on {what}: {source}")]
    Io {
        /// The object name or path the operation was on.
        what: String,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("metadata database error: {0}")]
    Meta(String),
    /// An injected fault (only from the faulty test backends).
    #[error("injected fault: {0}")]
    Injected(String),
    /// A name or key the backend cannot store (empty, `..`, absolute path...).
    #[error("invalid object name {0:?}")]
    InvalidName(String),
}

impl StorageError {
    /// An [`StorageError::Io`] about `what` (an object name or a path).
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result of a storage operation.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A store of named, sparse byte objects: the data of images.
///
/// Names are relative paths made of `[A-Za-z0-9._-]` components separated by
/// `/` (no empty, `.` or `..` component); others are rejected with
/// [`StorageError::InvalidName`].
///
/// Concurrency: every method may be called from many threads at once, on the
/// same or different objects. Operations on different objects never block each
/// other for the duration of the I/O. Concurrent writes to overlapping ranges of
/// one object have no defined order (the engine never issues them).
pub trait ObjectStore: Send + Sync + Debug {
    /// Fills `buf` with the bytes at `offset`. Bytes never written, punched,
    /// beyond the object's end, or of an object that does not exist read as
    /// zero. A missing object is not an error.
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Lends the bytes at `offset` (at most `len` of them) where the store
    /// keeps them, instead of copying them into a buffer: for a caller that
    /// only hands them on to the kernel (an NBD server's `writev` to a
    /// socket), which then copies them once instead of twice. `Ok(None)`:
    /// nothing lent (the store cannot, the object does not exist, or
    /// `offset` is at or past its end); read with [`ObjectStore::read_at`]. An invalid name is an error, as
    /// everywhere. Fewer than `len` bytes are lent when the object ends first: the rest
    /// reads as zero.
    ///
    /// The lent bytes are the object's when they are *copied*, not when
    /// lent: a later write or punch of the range shows through, and a
    /// removal does not (the lent bytes keep the removed data). Callers that
    /// need the bytes of one moment hold such changes off until the lent
    /// bytes are dropped (the engine defers its punches). The default lends
    /// nothing.
    fn lend(&self, name: &str, offset: u64, len: usize) -> Result<Option<Lent>> {
        let _ = (offset, len);
        validate_name(name)?;
        Ok(None)
    }

    /// Lets `fill` put the bytes of `[offset, offset + len)` of an existing
    /// object straight where the store keeps them (the page cache, for a
    /// local store), instead of filling a buffer that
    /// [`ObjectStore::write_at`] then copies: for a caller whose *kernel*
    /// does the filling (an NBD server's `recv` from its socket), so the
    /// data is copied once instead of twice.
    ///
    /// `fill` is called once, with the whole range, and returns how many
    /// bytes from its start it filled: all of them, or fewer when it
    /// stopped (the kernel could not write a page, on a full disk say, or
    /// the source failed). Those bytes are written as by `write_at`
    /// (visible to reads at once, durable after a sync); the rest of the
    /// range may hold part of what `fill` was writing when it stopped, and
    /// is otherwise unchanged. `fill` must hand the slice to the kernel and
    /// never read or write it itself: in a local store it is a shared
    /// mapping of the file, where a full disk or a disk error kills a user
    /// space access with `SIGBUS` and fails a system call with `EFAULT`.
    ///
    /// [`Filled::zero`] says, for each whole `granule` (a power of two that
    /// divides `offset` and `len`) of the filled bytes, whether it is all
    /// zero.
    ///
    /// `Ok(None)`: `fill` was not called and nothing changed; write with
    /// `write_at`. Stores decline when they cannot lend (the default), when
    /// the object does not exist or ends before `offset + len`, and when
    /// some of the range is not in memory: a write in place would first
    /// read it from the disk, where `write_at` of whole pages reads nothing.
    fn fill_in_place(
        &self,
        name: &str,
        offset: u64,
        len: usize,
        granule: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> Result<Option<Filled>> {
        let _ = (offset, len, granule, fill);
        validate_name(name)?;
        Ok(None)
    }

    /// Writes `data` at `offset`, creating the object if needed (the gap
    /// before `offset` reads as zero). Visible to reads at once; durable only
    /// after a later [`ObjectStore::sync`] returns.
    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> Result<()>;

    /// Asks the store to release the space of a range. After it returns, the
    /// range *should* read as zero, but callers must not rely on that: real
    /// devices lie (incident 1), and so does [`FaultyObjectStore`] when told
    /// to. The engine records zeroes in metadata and uses this only to free
    /// space. A missing object is not an error.
    fn punch(&self, name: &str, offset: u64, len: u64) -> Result<()>;

    /// Removes an object. Removing a missing object is not an error. Durable
    /// only after a later [`ObjectStore::sync`].
    fn remove(&self, name: &str) -> Result<()>;

    /// Makes every write, punch and remove that returned before this call
    /// durable (file data, file creation and removal in their directories).
    /// When it returns `Ok`, a crash (power loss) loses none of them.
    fn sync(&self) -> Result<()>;

    /// Makes durable what [`ObjectStore::sync`] would, for the named
    /// objects only (writes, punches, removals of them that returned before
    /// this call). For background work that must not make the foreground's
    /// syncs wait for its data, nor its own wait for the foreground's. The
    /// default syncs everything.
    fn sync_objects(&self, names: &[String]) -> Result<()> {
        let _ = names;
        self.sync()
    }

    /// A hint that `[offset, offset + len)` of `name`, just written, will
    /// not change soon and will be synced: the store may start writing it to
    /// stable storage now, without waiting, so that the later sync has less
    /// to do (a bulk import overlaps its copying with the disk's writing).
    /// It makes nothing durable: only [`ObjectStore::sync`] and
    /// [`ObjectStore::sync_objects`] do. Never fails; the default does
    /// nothing.
    fn start_writeback(&self, name: &str, offset: u64, len: u64) {
        let _ = (name, offset, len);
    }

    /// Names of the existing objects whose name starts with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;

    /// Drops what the store keeps for the name prefix `prefix` (ending in
    /// `/`) once no object under it exists any more: the local store's
    /// directory. A prefix that still has objects, or has nothing to drop,
    /// is left alone without error. The caller makes sure no object under
    /// the prefix is being written meanwhile (the engine calls this after
    /// removing an image's last object). Durable only after a later
    /// [`ObjectStore::sync`]. The default does nothing.
    fn prune(&self, prefix: &str) -> Result<()> {
        let _ = prefix;
        Ok(())
    }

    /// Bytes of storage the object occupies (0 for a missing object). Used for
    /// reports and consistency checks only.
    fn allocated(&self, name: &str) -> Result<u64>;
}

/// Checks `name` against the object naming rule of [`ObjectStore`]: a relative
/// path of non-empty components of `[A-Za-z0-9._-]`, separated by single `/`,
/// none of them `.` or `..`. Every store calls it; callers may use it to
/// reject bad names early.
pub fn validate_name(name: &str) -> Result<()> {
    let valid_component = |c: &str| {
        !c.is_empty()
            && c != "."
            && c != ".."
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    // `split` yields an empty component for a leading, trailing or doubled `/`,
    // so absolute paths and `a//b` are rejected by the component check.
    if name.split('/').all(valid_component) {
        Ok(())
    } else {
        Err(StorageError::InvalidName(name.to_owned()))
    }
}

/// One change in a metadata commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaOp {
    /// Insert or replace `key` in `table`.
    Put {
        /// Table name (non-empty).
        table: &'static str,
        /// Key; keys sort bytewise.
        key: Vec<u8>,
        /// New value.
        value: Vec<u8>,
    },
    /// Delete `key` from `table` (absent is fine).
    Delete {
        /// Table name (non-empty).
        table: &'static str,
        /// Key to delete.
        key: Vec<u8>,
    },
}

/// A transactional key-value store for metadata.
///
/// Tables are named by `&'static str` (the engine's fixed set); keys and values
/// are bytes; keys sort bytewise.
///
/// Contract: [`MetaStore::commit`] is atomic (all of the batch or none of it,
/// also across a crash) and durable when it returns `Ok`. Reads see the latest
/// committed state. Two commits never interleave.
pub trait MetaStore: Send + Sync + Debug {
    /// The value of `key` in `table`, if any.
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// All pairs of `table` whose key starts with `prefix`, in key order.
    fn scan(&self, table: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Applies every op of the batch atomically and durably, in order.
    fn commit(&self, ops: Vec<MetaOp>) -> Result<()>;
}
