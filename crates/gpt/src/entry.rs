//! Partition entries: `num_partition_entries` records of
//! `partition_entry_size` bytes (128 · 2ⁿ); the first 128 bytes are defined.

use crate::guid::{type_name, Guid};
use serde::Serialize;

/// The smallest (and usual) entry size.
pub const ENTRY_SIZE: u32 = 128;

/// One used partition entry (type GUID not zero).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// 1-based slot in the array, as `sgdisk` and `/dev/sdaN` number them.
    pub index: u32,
    pub type_guid: Guid,
    /// Name of a well-known type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_name: Option<&'static str>,
    pub unique_guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    /// UTF-16LE name up to the first NUL (invalid code units replaced).
    pub name: String,
}

impl Partition {
    /// Sectors covered (0 when the entry is reversed).
    pub fn sectors(&self) -> u64 {
        if self.last_lba < self.first_lba {
            0
        } else {
            self.last_lba - self.first_lba + 1
        }
    }
}

/// The used entries of an array of `entry_size`-byte records (`entry_size`
/// at least 128; a trailing partial record is ignored).
pub fn parse_entries(array: &[u8], entry_size: u32) -> Vec<Partition> {
    let size = (entry_size as usize).max(ENTRY_SIZE as usize);
    array
        .chunks_exact(size)
        .enumerate()
        .filter_map(|(i, e)| {
            let mut t = [0u8; 16];
            t.copy_from_slice(&e[0..16]);
            let type_guid = Guid(t);
            if type_guid.is_zero() {
                return None;
            }
            let mut u = [0u8; 16];
            u.copy_from_slice(&e[16..32]);
            let le = |o: usize| {
                let mut a = [0u8; 8];
                a.copy_from_slice(&e[o..o + 8]);
                u64::from_le_bytes(a)
            };
            let units: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&c| c != 0)
                .collect();
            Some(Partition {
                index: i as u32 + 1,
                type_name: type_name(&type_guid),
                type_guid,
                unique_guid: Guid(u),
                first_lba: le(32),
                last_lba: le(40),
                attributes: le(48),
                name: String::from_utf16_lossy(&units),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_entries_with_names() {
        let mut a = vec![0u8; 3 * 128];
        let e = &mut a[128..256];
        e[0..16].copy_from_slice(
            &Guid::parse("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
                .unwrap()
                .0,
        );
        e[16] = 9;
        e[32..40].copy_from_slice(&2048u64.to_le_bytes());
        e[40..48].copy_from_slice(&4095u64.to_le_bytes());
        for (i, c) in "root".encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
        let p = parse_entries(&a, 128);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].index, 2);
        assert_eq!(p[0].name, "root");
        assert_eq!(p[0].type_name, Some("Linux filesystem"));
        assert_eq!(p[0].sectors(), 2048);
        // A lone surrogate does not stop the parse.
        a[128 + 56..128 + 58].copy_from_slice(&0xD800u16.to_le_bytes());
        assert_eq!(parse_entries(&a, 128)[0].name, "\u{FFFD}oot");
    }

    #[test]
    fn larger_entries_and_partial_records() {
        let mut a = vec![0u8; 256 + 100];
        a[256 + 16] = 1; // partial record: ignored
        a[0] = 1;
        let p = parse_entries(&a, 256);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].index, 1);
    }
}
