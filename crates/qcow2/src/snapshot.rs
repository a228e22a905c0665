//! The internal snapshot table: entries of variable length, parsed one at a
//! time from byte slices (no I/O).
//!
//! ```text
//!  0 l1_table_offset (u64)   8 l1_size (u32)   12 id_str_size (u16)  14 name_size (u16)
//! 16 date_sec (u32)         20 date_nsec (u32) 24 vm_clock_nsec (u64)
//! 32 vm_state_size (u32)    36 extra_data_size (u32)
//! 40 extra data: [0..8] vm_state_size_large, [8..16] disk_size, [16..24] icount
//!    then id string, name string, padding to a multiple of 8
//! ```

use crate::error::{Error, Result};
use crate::header::{Geometry, MAX_L1_BYTES};

/// Bytes of an entry before its variable part.
pub const ENTRY_FIXED_LEN: usize = 40;
/// Largest extra data accepted (qemu's limit).
pub const MAX_EXTRA_DATA: u32 = 1024;

/// One internal snapshot, as listed by `qemu-img snapshot -l`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Unique id string.
    pub id: String,
    /// Name.
    pub name: String,
    /// Offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Entries in that L1 table.
    pub l1_size: u32,
    /// Creation time, seconds since the epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest run time when taken, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Bytes of saved VM state (0: disk-only snapshot).
    pub vm_state_size: u64,
    /// Virtual disk size at the snapshot, if recorded.
    pub disk_size: Option<u64>,
    /// Instruction count, if recorded (record/replay).
    pub icount: Option<u64>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Total length (with padding) of the entry whose first
/// [`ENTRY_FIXED_LEN`] bytes are `fixed`, or why it is invalid.
pub fn entry_len(fixed: &[u8]) -> Result<usize> {
    if fixed.len() < ENTRY_FIXED_LEN {
        return Err(Error::Corrupt("snapshot table entry is truncated".into()));
    }
    let extra = be32(fixed, 36);
    if extra > MAX_EXTRA_DATA {
        return Err(Error::Limit {
            what: "snapshot extra data size".into(),
            value: extra.into(),
            limit: MAX_EXTRA_DATA.into(),
        });
    }
    let n = ENTRY_FIXED_LEN + extra as usize + be16(fixed, 12) as usize + be16(fixed, 14) as usize;
    Ok(n.next_multiple_of(8))
}

/// Parses one entry; `buf` holds at least [`entry_len`] bytes.
pub fn parse_entry(buf: &[u8], geo: &Geometry) -> Result<SnapshotInfo> {
    let len = entry_len(buf)?;
    if buf.len() < len {
        return Err(Error::Corrupt("snapshot table entry is truncated".into()));
    }
    let l1_table_offset = be64(buf, 0);
    let l1_size = be32(buf, 8);
    let id_len = be16(buf, 12) as usize;
    let name_len = be16(buf, 14) as usize;
    let extra_len = be32(buf, 36) as usize;
    let extra = &buf[ENTRY_FIXED_LEN..ENTRY_FIXED_LEN + extra_len];
    let id_at = ENTRY_FIXED_LEN + extra_len;
    let id = String::from_utf8_lossy(&buf[id_at..id_at + id_len]).into_owned();
    let name =
        String::from_utf8_lossy(&buf[id_at + id_len..id_at + id_len + name_len]).into_owned();
    if !l1_table_offset.is_multiple_of(geo.cluster_size()) {
        return Err(Error::Corrupt(format!(
            "the L1 table of snapshot {id:?} at {l1_table_offset:#x} is not aligned to the cluster size"
        )));
    }
    if u64::from(l1_size) * 8 > MAX_L1_BYTES {
        return Err(Error::Limit {
            what: format!("l1_size of snapshot {id:?}"),
            value: l1_size.into(),
            limit: MAX_L1_BYTES / 8,
        });
    }
    let vm_state_size = if extra.len() >= 8 {
        be64(extra, 0)
    } else {
        be32(buf, 32).into()
    };
    Ok(SnapshotInfo {
        id,
        name,
        l1_table_offset,
        l1_size,
        date_sec: be32(buf, 16),
        date_nsec: be32(buf, 20),
        vm_clock_nsec: be64(buf, 24),
        vm_state_size,
        disk_size: (extra.len() >= 16).then(|| be64(extra, 8)),
        icount: (extra.len() >= 24).then(|| be64(extra, 16)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_minimal_entry() {
        let geo = Geometry {
            cluster_bits: 16,
            extended_l2: false,
            refcount_order: 4,
        };
        let mut b = vec![0u8; 40];
        b[0..8].copy_from_slice(&0x50000u64.to_be_bytes());
        b[8..12].copy_from_slice(&2u32.to_be_bytes());
        b[12..14].copy_from_slice(&1u16.to_be_bytes());
        b[14..16].copy_from_slice(&4u16.to_be_bytes());
        b[36..40].copy_from_slice(&16u32.to_be_bytes());
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&(1u64 << 30).to_be_bytes());
        b.extend_from_slice(b"1snap");
        assert_eq!(entry_len(&b).unwrap(), 64);
        b.resize(64, 0);
        let s = parse_entry(&b, &geo).unwrap();
        assert_eq!((s.id.as_str(), s.name.as_str()), ("1", "snap"));
        assert_eq!(s.vm_state_size, 7);
        assert_eq!(s.disk_size, Some(1 << 30));
        assert!(parse_entry(&b[..50], &geo).is_err());
    }
}
