//! Table entries: L1, L2 (standard and extended), refcount table and
//! refcount block entries. Pure functions over integers and byte slices.
//!
//! ```text
//! L1 entry        bits 9..=55 L2 table offset; bit 63 COPIED (refcount 1)
//! L2 entry        bit 63 COPIED, bit 62 COMPRESSED, bits 0..=61 descriptor:
//!   standard      bit 0 ZERO (not with extended L2); bits 9..=55 host cluster offset
//!   compressed    bits 0..x-1 host byte offset; bits x..=61 additional 512-byte
//!                 sectors; x = 62 - (cluster_bits - 8)
//! extended L2     the entry above + a u64 bitmap: bits 0..=31 subcluster allocated,
//!                 bits 32..=63 subcluster reads as zero
//! refcount table  bits 9..=63 refcount block offset
//! refcount block  2^refcount_order-bit big-endian integers (sub-byte widths: bit 0 = LSB)
//! ```

use crate::header::Geometry;

/// Offset bits of an L1 entry.
pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Offset bits of a standard L2 entry.
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Offset bits of a refcount table entry.
pub const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Bit 63: refcount is exactly one.
pub const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62: compressed cluster.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0: the cluster reads as zeros (standard L2 entries only).
pub const OFLAG_ZERO: u64 = 1;

/// What one L2 entry says about its guest cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated here: read the backing file (or zeros).
    Unallocated,
    /// Reads as zeros, whatever the backing file holds.
    Zero,
    /// Data at this host offset (cluster aligned).
    Data(u64),
    /// Compressed data: `len` bytes starting at the (unaligned) host byte
    /// `offset`; the data may end before `len` (sector rounding).
    Compressed {
        /// Host byte offset.
        offset: u64,
        /// Bytes to read: up to the end of the last sector the descriptor names.
        len: u64,
    },
    /// Extended L2: per-subcluster state. `host` is the cluster's host
    /// offset (0 if none); subcluster `i` is data if `alloc` bit `i` is
    /// set, zero if `zero` bit `i` is set, else unallocated.
    Subclusters {
        /// Host cluster offset, 0 if not allocated.
        host: u64,
        /// Allocated subclusters.
        alloc: u32,
        /// Subclusters reading as zeros.
        zero: u32,
    },
}

/// The L2 table offset an L1 entry points to (`None`: unallocated), or
/// why the entry is invalid.
pub fn decode_l1(entry: u64, geo: &Geometry) -> Result<Option<u64>, &'static str> {
    let off = entry & L1E_OFFSET_MASK;
    if off == 0 {
        return Ok(None);
    }
    if off & (geo.cluster_size() - 1) != 0 {
        return Err("the L2 table offset is not aligned to the cluster size");
    }
    Ok(Some(off))
}

/// Decodes an L2 entry (`bitmap`: the second half of an extended entry).
/// Follows qemu's reading rules: reserved bits are ignored, an offset of 0
/// means unallocated, bit 0 means zero unless the image has extended L2.
pub fn decode_l2(entry: u64, bitmap: u64, geo: &Geometry) -> Result<Mapping, &'static str> {
    if entry & OFLAG_COMPRESSED != 0 {
        let x = geo.compressed_offset_bits();
        let offset = entry & ((1u64 << x) - 1);
        if offset >> 56 != 0 {
            return Err("the compressed cluster offset uses bits above 55");
        }
        let sectors_mask = (1u64 << (geo.cluster_bits - 8)) - 1;
        let extra = (entry >> x) & sectors_mask;
        let len = (extra + 1) * 512 - (offset & 511);
        return Ok(Mapping::Compressed { offset, len });
    }
    let host = entry & L2E_OFFSET_MASK;
    if host & (geo.cluster_size() - 1) != 0 {
        return Err("the host cluster offset is not aligned to the cluster size");
    }
    if geo.extended_l2 {
        let alloc = bitmap as u32;
        let zero = (bitmap >> 32) as u32;
        if alloc & zero != 0 {
            return Err("a subcluster is marked both allocated and zero");
        }
        if host == 0 && alloc != 0 {
            return Err("subclusters are marked allocated but the cluster has no host offset");
        }
        return Ok(Mapping::Subclusters { host, alloc, zero });
    }
    if entry & OFLAG_ZERO != 0 {
        return Ok(Mapping::Zero);
    }
    if host == 0 {
        return Ok(Mapping::Unallocated);
    }
    Ok(Mapping::Data(host))
}

/// An L2 entry for a data cluster with refcount 1.
pub fn encode_l2_data(host: u64) -> u64 {
    host | OFLAG_COPIED
}

/// An L2 entry for a compressed cluster of `len` bytes at byte `offset`.
/// The caller keeps `offset` below `2^x` (see
/// [`Geometry::compressed_offset_bits`]) and `len` at most one cluster.
pub fn encode_l2_compressed(offset: u64, len: u64, geo: &Geometry) -> u64 {
    let x = geo.compressed_offset_bits();
    let extra = ((offset + len - 1) >> 9) - (offset >> 9);
    OFLAG_COMPRESSED | (extra << x) | offset
}

/// The refcount block offset a refcount table entry points to, or why it
/// is invalid.
pub fn decode_reftable(entry: u64, geo: &Geometry) -> Result<Option<u64>, &'static str> {
    let off = entry & REFT_OFFSET_MASK;
    if off == 0 {
        return Ok(None);
    }
    if off & (geo.cluster_size() - 1) != 0 {
        return Err("the refcount block offset is not aligned to the cluster size");
    }
    Ok(Some(off))
}

/// Reads refcount `index` of a refcount block. `block` is one cluster.
pub fn refcount_get(block: &[u8], index: u64, order: u32) -> u64 {
    let bits = 1u64 << order;
    if bits < 8 {
        let bit = index * bits;
        let byte = block[(bit / 8) as usize];
        let shift = bit % 8;
        u64::from(byte >> shift) & ((1 << bits) - 1)
    } else {
        let w = (bits / 8) as usize;
        let at = index as usize * w;
        block[at..at + w]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    }
}

/// Sets refcount `index` of a refcount block to `value` (which must fit).
pub fn refcount_set(block: &mut [u8], index: u64, order: u32, value: u64) {
    let bits = 1u64 << order;
    if bits < 8 {
        let bit = index * bits;
        let at = (bit / 8) as usize;
        let shift = bit % 8;
        let mask = (((1u16 << bits) - 1) as u8) << shift;
        block[at] = (block[at] & !mask) | (((value as u8) << shift) & mask);
    } else {
        let w = (bits / 8) as usize;
        let at = index as usize * w;
        let bytes = value.to_be_bytes();
        block[at..at + w].copy_from_slice(&bytes[8 - w..]);
    }
}

/// Largest refcount a width can hold.
pub fn refcount_max(order: u32) -> u64 {
    let bits = 1u32 << order;
    if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(bits: u32, ext: bool) -> Geometry {
        Geometry {
            cluster_bits: bits,
            extended_l2: ext,
            refcount_order: 4,
        }
    }

    #[test]
    fn compressed_roundtrip_every_cluster_size() {
        for bits in 9..=21 {
            let g = geo(bits, false);
            for (off, len) in [
                (0x1_0000u64, 1u64),
                (0x1_01ff, 2),
                (0xabc_def1, g.cluster_size() - 1),
            ] {
                let e = encode_l2_compressed(off, len, &g);
                match decode_l2(e, 0, &g).unwrap() {
                    Mapping::Compressed { offset, len: l } => {
                        assert_eq!(offset, off);
                        assert!(l >= len && l < len + 1024, "bits {bits} len {len} got {l}");
                        assert_eq!((offset + l) % 512, 0);
                    }
                    m => panic!("{m:?}"),
                }
            }
        }
    }

    #[test]
    fn refcounts_every_width() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 512];
            let n = (512 * 8) >> order;
            let max = refcount_max(order);
            for i in 0..n {
                refcount_set(&mut block, i, order, (i * 7919) & max);
            }
            for i in 0..n {
                assert_eq!(
                    refcount_get(&block, i, order),
                    (i * 7919) & max,
                    "order {order} i {i}"
                );
            }
        }
    }

    #[test]
    fn l2_rules() {
        let g = geo(16, false);
        assert_eq!(decode_l2(0, 0, &g), Ok(Mapping::Unallocated));
        assert_eq!(decode_l2(1, 0, &g), Ok(Mapping::Zero));
        assert_eq!(decode_l2(0x10000 | 1, 0, &g), Ok(Mapping::Zero));
        assert_eq!(
            decode_l2(OFLAG_COPIED | 0x20000, 0, &g),
            Ok(Mapping::Data(0x20000))
        );
        assert!(decode_l2(0x20200, 0, &g).is_err());
        let x = geo(16, true);
        assert!(decode_l2(0x20000, 1 | (1 << 32), &x).is_err());
        assert!(decode_l2(0, 1, &x).is_err());
        assert_eq!(
            decode_l2(0, 1 << 33, &x),
            Ok(Mapping::Subclusters {
                host: 0,
                alloc: 0,
                zero: 2
            })
        );
    }
}
