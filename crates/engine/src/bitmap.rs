//! A fixed-length bit set, stored as little-endian bytes in metadata.

use std::fmt;

/// A fixed-length set of bits.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bitmap {
    words: Vec<u64>,
    len: usize,
}

impl Bitmap {
    /// `len` bits, all clear.
    pub fn new(len: usize) -> Self {
        Bitmap {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] >> (i % 64) & 1 == 1
    }

    pub fn set(&mut self, i: usize, v: bool) {
        if i >= self.len {
            return;
        }
        let m = 1u64 << (i % 64);
        if v {
            self.words[i / 64] |= m;
        } else {
            self.words[i / 64] &= !m;
        }
    }

    /// Sets bits `[start, end)` to `v`.
    pub fn set_range(&mut self, start: usize, end: usize, v: bool) {
        for i in start..end.min(self.len) {
            self.set(i, v);
        }
    }

    /// True when any bit is set.
    pub fn any(&self) -> bool {
        self.words.iter().any(|w| *w != 0)
    }

    /// Number of set bits.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// `self & !other`, bit by bit.
    pub fn and_not(&self, other: &Bitmap) -> Bitmap {
        let mut out = self.clone();
        for (a, b) in out.words.iter_mut().zip(&other.words) {
            *a &= !b;
        }
        out
    }

    /// `self & other`, bit by bit.
    pub fn and(&self, other: &Bitmap) -> Bitmap {
        let mut out = self.clone();
        for (i, a) in out.words.iter_mut().enumerate() {
            *a &= other.words.get(i).copied().unwrap_or(0);
        }
        out
    }

    /// Little-endian bytes, `ceil(len/8)` of them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate(self.len.div_ceil(8));
        out
    }

    /// Decodes `len` bits from bytes written by [`Bitmap::to_bytes`]. Returns
    /// `None` when the byte count does not match or bits beyond `len` are set.
    pub fn from_bytes(len: usize, bytes: &[u8]) -> Option<Bitmap> {
        if bytes.len() != len.div_ceil(8) {
            return None;
        }
        let mut b = Bitmap::new(len);
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            b.words[i] = u64::from_le_bytes(w);
        }
        if !len.is_multiple_of(64) {
            let last = b.words.len() - 1;
            if b.words[last] >> (len % 64) != 0 {
                return None;
            }
        }
        Some(b)
    }

    /// Indices of set bits.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(move |&i| self.get(i))
    }
}

impl fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitmap({} of {})", self.count(), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for len in [1, 7, 8, 63, 64, 65, 1024, 8192] {
            let mut b = Bitmap::new(len);
            b.set(0, true);
            b.set(len - 1, true);
            let bytes = b.to_bytes();
            assert_eq!(Bitmap::from_bytes(len, &bytes).unwrap(), b);
            assert!(Bitmap::from_bytes(len + 8, &bytes).is_none());
        }
        assert!(Bitmap::from_bytes(3, &[0xff]).is_none());
    }
}
