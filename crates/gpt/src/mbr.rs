//! The MBR in LBA 0: a GPT disk's is *protective* (one partition of type
//! 0xEE from LBA 1 over the whole disk, so MBR-only tools see it full), or
//! *hybrid* (0xEE plus real MBR partitions mirroring some GPT ones).

use serde::Serialize;

/// Bytes of the MBR (at offset 0 whatever the logical sector size).
pub const MBR_SIZE: usize = 512;
/// Offset of the four 16-byte partition records.
pub const PARTITION_TABLE_OFFSET: usize = 446;
/// Offset of the boot signature `55 AA`.
pub const BOOT_SIGNATURE_OFFSET: usize = 510;
/// The partition type of a GPT-protective MBR entry.
pub const GPT_PROTECTIVE: u8 = 0xEE;

/// One non-empty MBR partition record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MbrPartition {
    /// Slot 1..=4.
    pub index: u8,
    /// Boot indicator 0x80.
    pub bootable: bool,
    /// Partition type (0xEE: GPT protective).
    pub os_type: u8,
    /// First sector (logical sectors of the disk).
    pub first_lba: u32,
    /// Number of sectors.
    pub sectors: u32,
}

/// What LBA 0 holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MbrKind {
    /// No `55 AA` boot signature: no MBR at all.
    Missing,
    /// An MBR without a 0xEE entry (an MBR-partitioned disk, or empty).
    Plain,
    /// Exactly one entry, of type 0xEE.
    Protective,
    /// A 0xEE entry and other entries.
    Hybrid,
}

/// The parsed MBR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mbr {
    pub kind: MbrKind,
    /// The non-empty records (type ≠ 0), in slot order.
    pub partitions: Vec<MbrPartition>,
}

impl Mbr {
    /// Parses the first 512 bytes of the disk (shorter input: `Missing`).
    pub fn parse(b: &[u8]) -> Mbr {
        if b.len() < MBR_SIZE || b[BOOT_SIGNATURE_OFFSET..MBR_SIZE] != [0x55, 0xAA] {
            return Mbr {
                kind: MbrKind::Missing,
                partitions: Vec::new(),
            };
        }
        let partitions: Vec<MbrPartition> = (0..4)
            .filter_map(|i| {
                let r = &b[PARTITION_TABLE_OFFSET + 16 * i..PARTITION_TABLE_OFFSET + 16 * (i + 1)];
                (r[4] != 0).then(|| MbrPartition {
                    index: i as u8 + 1,
                    bootable: r[0] == 0x80,
                    os_type: r[4],
                    first_lba: u32::from_le_bytes([r[8], r[9], r[10], r[11]]),
                    sectors: u32::from_le_bytes([r[12], r[13], r[14], r[15]]),
                })
            })
            .collect();
        let protective = partitions
            .iter()
            .filter(|p| p.os_type == GPT_PROTECTIVE)
            .count();
        let kind = match (protective, partitions.len()) {
            (0, _) => MbrKind::Plain,
            (1, 1) => MbrKind::Protective,
            _ => MbrKind::Hybrid,
        };
        Mbr { kind, partitions }
    }

    /// The first 0xEE record.
    pub fn protective(&self) -> Option<&MbrPartition> {
        self.partitions.iter().find(|p| p.os_type == GPT_PROTECTIVE)
    }
}

/// The sector count a protective entry should have on a disk of
/// `total_lbas` sectors: all but LBA 0, capped at what 32 bits hold.
pub fn protective_sectors(total_lbas: u64) -> u32 {
    u32::try_from(total_lbas.saturating_sub(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr(records: &[(usize, u8, u32, u32)]) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[510] = 0x55;
        b[511] = 0xAA;
        for &(slot, t, first, n) in records {
            let r = PARTITION_TABLE_OFFSET + 16 * slot;
            b[r + 4] = t;
            b[r + 8..r + 12].copy_from_slice(&first.to_le_bytes());
            b[r + 12..r + 16].copy_from_slice(&n.to_le_bytes());
        }
        b
    }

    #[test]
    fn kinds() {
        assert_eq!(Mbr::parse(&[0u8; 512]).kind, MbrKind::Missing);
        assert_eq!(Mbr::parse(&[0u8; 10]).kind, MbrKind::Missing);
        assert_eq!(Mbr::parse(&mbr(&[])).kind, MbrKind::Plain);
        assert_eq!(
            Mbr::parse(&mbr(&[(0, 0x83, 2048, 100)])).kind,
            MbrKind::Plain
        );
        let p = Mbr::parse(&mbr(&[(0, 0xEE, 1, 999)]));
        assert_eq!(p.kind, MbrKind::Protective);
        assert_eq!(p.protective().unwrap().sectors, 999);
        let h = Mbr::parse(&mbr(&[(0, 0xEE, 1, 33), (1, 0x0C, 2048, 100)]));
        assert_eq!(h.kind, MbrKind::Hybrid);
        assert_eq!(h.partitions[1].index, 2);
    }

    #[test]
    fn protective_size_is_capped_at_32_bits() {
        assert_eq!(protective_sectors(2048), 2047);
        assert_eq!(protective_sectors(1 << 40), u32::MAX);
        assert_eq!(protective_sectors(0), 0);
    }
}
