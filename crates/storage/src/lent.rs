//! [`Lent`]: bytes of an object lent out of the page cache.

use std::fmt;
use std::sync::Arc;

/// Bytes an [`crate::ObjectStore`] lends instead of copying
/// ([`crate::ObjectStore::lend`]): part of a read-only shared mapping of an
/// object file. The mapping is shared with the store's cache of mappings
/// (see `LocalObjectStore`) and with other lent reads; it is unmapped when
/// the last of them drops it.
///
/// Meant to be handed to a system call that copies them (`writev` to a
/// socket). Reading them in user space works too, with one difference from
/// `read(2)`: should the disk fail under a page that is not cached, a read
/// here is killed by `SIGBUS`, where a system call fails with `EFAULT`.
pub struct Lent {
    map: Arc<memmap2::Mmap>,
    start: usize,
    len: usize,
}

impl Lent {
    /// `map[start..start + len]`; the caller checked that it is inside.
    pub(crate) fn new(map: Arc<memmap2::Mmap>, start: usize, len: usize) -> Self {
        debug_assert!(start <= map.len() && len <= map.len() - start);
        Self { map, start, len }
    }

    /// The lent bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
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
