//! [`Lent`]: bytes of an object lent out of the page cache.

use std::fmt;

/// Bytes an [`crate::ObjectStore`] lends instead of copying
/// ([`crate::ObjectStore::lend`]): a read-only shared mapping of part of an
/// object file, unmapped when dropped.
///
/// Meant to be handed to a system call that copies them (`writev` to a
/// socket). Reading them in user space works too, with one difference from
/// `read(2)`: should the disk fail under a page that is not cached, a read
/// here is killed by `SIGBUS`, where a system call fails with `EFAULT`.
pub struct Lent {
    map: memmap2::Mmap,
}

impl Lent {
    pub(crate) fn new(map: memmap2::Mmap) -> Self {
        Self { map }
    }

    /// The lent bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl fmt::Debug for Lent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lent").field("len", &self.len()).finish()
    }
}
