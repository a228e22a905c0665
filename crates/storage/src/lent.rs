//! [`Lent`]: bytes of an object lent out of the page cache; [`Filled`]:
//! what a write in place ([`crate::ObjectStore::fill_in_place`]) wrote.

use std::fmt;
use std::sync::Arc;

/// Bytes an [`crate::ObjectStore`] lends instead of copying
/// ([`crate::ObjectStore::lend`]): part of a shared mapping of an object
/// file. The mapping is shared with the store's cache of mappings (see
/// `LocalObjectStore`) and with other lent reads; it is unmapped when the
/// last of them drops it.
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

/// [`Filled::zero`] of `bytes`: for each whole `granule`, whether it is all
/// zero.
pub(crate) fn zero_granules(bytes: &[u8], granule: usize) -> Vec<bool> {
    bytes.chunks_exact(granule).map(is_zero).collect()
}

/// True when every byte is zero. OR-folds 64-byte chunks, which the
/// compiler vectorizes; stops at the first non-zero chunk.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |a, b| a | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|b| *b == 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 4096]));
        assert!(is_zero(&[]));
        let mut b = vec![0u8; 4099];
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[7] = 1;
        assert!(!is_zero(&b));
        // Whole granules only; the partial one at the end is not told.
        assert_eq!(zero_granules(&b[..4099], 2048), [false, true]);
        assert_eq!(zero_granules(&[0; 100], 4096), Vec::<bool>::new());
    }

    #[test]
    fn granules_fit_whole_aligned_ranges() {
        assert!(granules_fit(8192, 4096, 4096));
        assert!(!granules_fit(8192, 0, 4096));
        assert!(!granules_fit(100, 4096, 4096));
        assert!(!granules_fit(0, 100, 4096));
        assert!(!granules_fit(0, 4096, 3000));
    }
}
