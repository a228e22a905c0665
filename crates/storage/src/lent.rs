//! [`Lent`]: bytes of an object lent out of the page cache; [`Filled`]:
//! what a write in place ([`crate::ObjectStore::fill_in_place`]) wrote.

use std::fmt;
use std::sync::Arc;

/// Bytes an [`crate::ObjectStore`] lends instead of copying
/// ([`crate::ObjectStore::lend`]): part of a shared mapping of an object file. The mapping is shared with the store's cache of mappings
/// (see `LocalObjectStore`) and with other lent reads; it is unmapped when
/// the last of them drops it.
///
/// Meant to be handed to a system call that copies them (`writev` to a
/// socket). Reading them in user space works too, with one difference from
/// `read(2)`: should the disk fail under a page that is not cached, a read
/// here is killed by `SIGBUS`, where a system call fails with `EFAULT`.
pub struct Lent {
    map: Arc<memmap2::MmapRaw>,
    start: usize,
    len: usize,
}

impl Lent {
    /// `map[start..start + len]`; the caller checked that it is inside.
    pub(crate) fn new(map: Arc<memmap2::MmapRaw>, start: usize, len: usize) -> Self {
        debug_assert!(start <= map.len() && len <= map.len() - start);
        Self { map, start, len }
    }

    /// The lent bytes.
    #[allow(unsafe_code)]
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `[start, start + len)` lies inside the mapping (checked
        // by `new`'s caller), which lives as long as `self.map`. The bytes
        // may change while borrowed (a write to the object), as a `Mmap`'s
        // may; the local store never truncates object files, so the pages
        // stay mapped (see `ObjectStore::lend`). `MmapRaw` gives a pointer,
        // not a slice, because the same mapping also takes writes in place.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.start), self.len) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Lent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lent").field("len", &self.len()).finish()
    }
}

/// What [`crate::ObjectStore::fill_in_place`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filled {
    /// Bytes filled, from the start of the range.
    pub len: usize,
    /// For each whole granule of the filled bytes, in order: all zero.
    pub zero: Vec<bool>,
}

/// Whether `len` bytes at `offset` are whole granules (`granule` a power
/// of two), at least one: what [`crate::ObjectStore::fill_in_place`]
/// takes.
pub(crate) fn granules_fit(offset: u64, len: usize, granule: usize) -> bool {
    granule.is_power_of_two()
        && len > 0
        && offset.is_multiple_of(granule as u64)
        && len.is_multiple_of(granule)
}
