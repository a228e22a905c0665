//! The GPT header (primary at LBA 1, backup at the last LBA). All integers
//! little-endian; the CRC32 covers `header_size` bytes with the CRC field
//! itself taken as zero.

use crate::guid::Guid;
use serde::Serialize;

/// `"EFI PART"`, at offset 0 of every GPT header.
pub const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Revision 1.0, the only one UEFI has defined.
pub const REVISION_1_0: u32 = 0x0001_0000;
/// Bytes of the defined header fields (the smallest valid `header_size`).
pub const HEADER_SIZE: u32 = 92;
/// Offset of the header CRC32 field.
pub const HEADER_CRC_OFFSET: usize = 16;

/// The fields of a GPT header, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    pub revision: u32,
    pub header_size: u32,
    pub header_crc32: u32,
    /// Bytes 20..24, which must be zero.
    pub reserved: u32,
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub disk_guid: Guid,
    pub partition_entry_lba: u64,
    pub num_partition_entries: u32,
    pub partition_entry_size: u32,
    pub partition_entry_array_crc32: u32,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl Header {
    /// Decodes the fields of a header sector; `None` without the
    /// signature or when `b` is shorter than the defined fields. Nothing is
    /// validated here.
    pub fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_SIZE as usize || &b[..8] != SIGNATURE {
            return None;
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&b[56..72]);
        Some(Header {
            revision: u32_at(b, 8),
            header_size: u32_at(b, 12),
            header_crc32: u32_at(b, 16),
            reserved: u32_at(b, 20),
            my_lba: u64_at(b, 24),
            alternate_lba: u64_at(b, 32),
            first_usable_lba: u64_at(b, 40),
            last_usable_lba: u64_at(b, 48),
            disk_guid: Guid(guid),
            partition_entry_lba: u64_at(b, 72),
            num_partition_entries: u32_at(b, 80),
            partition_entry_size: u32_at(b, 84),
            partition_entry_array_crc32: u32_at(b, 88),
        })
    }

    /// Writes the fields into `b` (at least `header_size` bytes, which must
    /// be 92 or more), keeping any bytes between 92 and `header_size`, and
    /// sets the CRC32 over `header_size` bytes.
    pub fn write_into(&self, b: &mut [u8]) {
        b[..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&self.revision.to_le_bytes());
        b[12..16].copy_from_slice(&self.header_size.to_le_bytes());
        b[20..24].copy_from_slice(&self.reserved.to_le_bytes());
        b[24..32].copy_from_slice(&self.my_lba.to_le_bytes());
        b[32..40].copy_from_slice(&self.alternate_lba.to_le_bytes());
        b[40..48].copy_from_slice(&self.first_usable_lba.to_le_bytes());
        b[48..56].copy_from_slice(&self.last_usable_lba.to_le_bytes());
        b[56..72].copy_from_slice(&self.disk_guid.0);
        b[72..80].copy_from_slice(&self.partition_entry_lba.to_le_bytes());
        b[80..84].copy_from_slice(&self.num_partition_entries.to_le_bytes());
        b[84..88].copy_from_slice(&self.partition_entry_size.to_le_bytes());
        b[88..92].copy_from_slice(&self.partition_entry_array_crc32.to_le_bytes());
        let crc = header_crc(b, self.header_size as usize);
        b[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Bytes of the partition entry array this header describes.
    pub fn array_bytes(&self) -> u64 {
        u64::from(self.num_partition_entries) * u64::from(self.partition_entry_size)
    }

    /// Sectors the partition entry array occupies.
    pub fn array_sectors(&self, sector_size: u32) -> u64 {
        self.array_bytes().div_ceil(u64::from(sector_size))
    }
}

/// The CRC32 of the first `size` bytes of a header sector with the CRC
/// field counted as zero. `size` must be within `b`.
pub fn header_crc(b: &[u8], size: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..HEADER_CRC_OFFSET]);
    h.update(&[0; 4]);
    h.update(&b[HEADER_CRC_OFFSET + 4..size]);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_parse_round_trips_and_sets_the_crc() {
        let h = Header {
            revision: REVISION_1_0,
            header_size: 92,
            header_crc32: 0,
            reserved: 0,
            my_lba: 1,
            alternate_lba: 2047,
            first_usable_lba: 34,
            last_usable_lba: 2014,
            disk_guid: Guid([7; 16]),
            partition_entry_lba: 2,
            num_partition_entries: 128,
            partition_entry_size: 128,
            partition_entry_array_crc32: 0xAB54_D286,
        };
        let mut b = vec![0u8; 512];
        h.write_into(&mut b);
        let back = Header::parse(&b).unwrap();
        assert_eq!(back.header_crc32, header_crc(&b, 92));
        assert_eq!(
            Header {
                header_crc32: 0,
                ..back
            },
            h
        );
        assert_eq!(h.array_sectors(512), 32);
        assert_eq!(h.array_sectors(4096), 4);
    }

    #[test]
    fn crc32_is_the_ieee_polynomial() {
        // The check value of CRC-32/ISO-HDLC, which UEFI uses.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn no_signature_no_header() {
        assert!(Header::parse(&[0u8; 512]).is_none());
        assert!(Header::parse(b"EFI PART").is_none());
    }
}
