//! What a check finds: each finding is a typed [`Problem`] naming the
//! structure it was found in, with a sentence for people.

use serde::{Serialize, Serializer};
use std::fmt;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Legal but unusual, or tolerated by firmware and kernels (a hybrid
    /// MBR, a protective MBR that does not cover the whole disk).
    Warning,
    /// The table is damaged: a CRC fails, a field contradicts the disk or
    /// the other header, partitions overlap...
    Error,
}

/// Where a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Structure {
    /// The disk as a whole (too small, no GPT at all).
    Disk,
    /// LBA 0.
    ProtectiveMbr,
    /// LBA 1.
    PrimaryHeader,
    /// The array the primary header points to.
    PrimaryEntries,
    /// The last LBA.
    BackupHeader,
    /// The array the backup header points to.
    BackupEntries,
    /// Primary against backup.
    Headers,
    /// One partition entry (its index is in the problem).
    Partition,
}

impl Structure {
    fn describe(&self) -> &'static str {
        match self {
            Structure::Disk => "disk",
            Structure::ProtectiveMbr => "protective MBR",
            Structure::PrimaryHeader => "primary GPT header",
            Structure::PrimaryEntries => "primary partition entries",
            Structure::BackupHeader => "backup GPT header",
            Structure::BackupEntries => "backup partition entries",
            Structure::Headers => "primary and backup GPT headers",
            Structure::Partition => "partition",
        }
    }
}

/// What is wrong. Serialized as `"kind": "snake_case_name"` plus the
/// fields; LBAs are in logical sectors of the detected size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// The disk cannot hold an MBR and a GPT header.
    DiskTooSmall { size: u64 },
    /// No GPT header at LBA 1 or the last LBA (for 512- and 4096-byte
    /// sectors) and no protective MBR.
    NoGpt { mbr_partitions: usize },
    /// LBA 0 has no `55 AA` boot signature.
    MbrSignatureMissing,
    /// The MBR has no 0xEE entry: tools take the disk for MBR-partitioned.
    NoProtectivePartition { mbr_partitions: usize },
    /// The 0xEE entry does not start at LBA 1.
    ProtectiveStartWrong { first_lba: u32 },
    /// The 0xEE entry does not cover the disk (usual after growing a disk).
    ProtectiveSizeMismatch { sectors: u32, expected: u32 },
    /// A 0xEE entry plus real MBR partitions.
    HybridMbr { mbr_partitions: usize },
    /// No `"EFI PART"` signature where the header must be.
    HeaderMissing { lba: u64 },
    /// The backup is not at the last LBA but where the primary points.
    BackupNotAtEnd { lba: u64, last_lba: u64 },
    /// A revision other than 1.0.
    BadRevision { revision: u32 },
    /// `header_size` below 92 or above the sector size.
    BadHeaderSize { header_size: u32, sector_size: u32 },
    /// The header's bytes do not give its stored CRC32.
    HeaderCrcMismatch { stored: u32, computed: u32 },
    /// Bytes 20..24 are not zero.
    ReservedNotZero { value: u32 },
    /// `my_lba` is not the LBA the header was read from.
    WrongMyLba { my_lba: u64, expected: u64 },
    /// `alternate_lba` does not point at the other header's place.
    WrongAlternateLba { alternate_lba: u64, expected: u64 },
    /// `first_usable_lba` > `last_usable_lba`.
    UsableRangeEmpty {
        first_usable_lba: u64,
        last_usable_lba: u64,
    },
    /// The usable range runs past the end of the disk.
    UsableRangeBeyondDisk { last_usable_lba: u64, last_lba: u64 },
    /// `partition_entry_size` is not 128 · 2ⁿ.
    BadEntrySize { entry_size: u32 },
    /// The array is larger than this checker reads.
    EntryArrayTooLarge { bytes: u64, limit: u64 },
    /// The array is not between its header and the usable range.
    EntryArrayMisplaced {
        entry_lba: u64,
        sectors: u64,
        allowed_first: u64,
        allowed_last: u64,
    },
    /// The array's bytes do not give the CRC32 its header stores.
    EntriesCrcMismatch { stored: u32, computed: u32 },
    /// A partition ends before it starts.
    PartitionReversed {
        index: u32,
        first_lba: u64,
        last_lba: u64,
    },
    /// A partition reaches outside the usable range.
    PartitionOutsideUsable {
        index: u32,
        first_lba: u64,
        last_lba: u64,
        first_usable_lba: u64,
        last_usable_lba: u64,
    },
    /// A partition runs past the end of the disk (within a usable range
    /// that does too).
    PartitionBeyondDisk {
        index: u32,
        last_lba: u64,
        disk_last_lba: u64,
    },
    /// Two partitions share sectors.
    PartitionsOverlap {
        index: u32,
        other: u32,
        first_lba: u64,
        last_lba: u64,
    },
    /// A field (or the entry array) differs between primary and backup.
    HeadersDisagree {
        field: &'static str,
        primary: String,
        backup: String,
    },
}

/// Where a structure is on the disk (inclusive LBAs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Location {
    pub first_lba: u64,
    pub last_lba: u64,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub structure: Structure,
    /// Where the structure is, when it has a place (not for partitions,
    /// whose index and LBAs are in the kind, or the whole disk).
    pub location: Option<Location>,
    pub kind: ProblemKind,
}

impl Problem {
    pub fn new(structure: Structure, kind: ProblemKind) -> Self {
        Problem {
            structure,
            location: None,
            kind,
        }
    }

    /// The same, located at LBAs `first..=last`.
    pub fn at(mut self, first_lba: u64, last_lba: u64) -> Self {
        self.location = Some(Location {
            first_lba,
            last_lba,
        });
        self
    }

    pub fn severity(&self) -> Severity {
        match self.kind {
            ProblemKind::ProtectiveSizeMismatch { .. }
            | ProblemKind::HybridMbr { .. }
            | ProblemKind::ReservedNotZero { .. } => Severity::Warning,
            _ => Severity::Error,
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity() == Severity::Error
    }

    /// One sentence: where, then what.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProblemKind::*;
        let s = match self.location {
            None => self.structure.describe().to_string(),
            Some(l) if l.first_lba == l.last_lba => {
                format!("{} (LBA {})", self.structure.describe(), l.first_lba)
            }
            Some(l) => format!(
                "{} (LBA {}-{})",
                self.structure.describe(),
                l.first_lba,
                l.last_lba
            ),
        };
        match &self.kind {
            DiskTooSmall { size } => write!(
                f,
                "{s}: {size} bytes cannot hold a GPT (an MBR and a header need at least 1024)"
            ),
            NoGpt { mbr_partitions: 0 } => write!(
                f,
                "{s}: no GPT: no \"EFI PART\" header at LBA 1 or at the last LBA \
                 (512- and 4096-byte sectors tried) and no protective MBR"
            ),
            NoGpt { mbr_partitions } => write!(
                f,
                "{s}: no GPT: no \"EFI PART\" header at LBA 1 or at the last LBA; \
                 LBA 0 holds an MBR partition table with {mbr_partitions} partition(s)"
            ),
            MbrSignatureMissing => write!(
                f,
                "{s}: no 55 AA boot signature at bytes 510-511: no protective MBR, so \
                 firmware and kernels may ignore the GPT"
            ),
            NoProtectivePartition { mbr_partitions } => write!(
                f,
                "{s}: none of its {mbr_partitions} partition record(s) has type 0xEE: \
                 tools take the disk for MBR-partitioned and ignore the GPT"
            ),
            ProtectiveStartWrong { first_lba } => write!(
                f,
                "{s}: the 0xEE partition starts at LBA {first_lba}, not at LBA 1"
            ),
            ProtectiveSizeMismatch { sectors, expected } => write!(
                f,
                "{s}: the 0xEE partition covers {sectors} sectors, the disk has {expected} \
                 after LBA 0 (the disk was resized?)"
            ),
            HybridMbr { mbr_partitions } => write!(
                f,
                "{s}: hybrid MBR: {mbr_partitions} partition record(s) besides 0xEE; \
                 MBR-only tools see those and may change them behind the GPT's back"
            ),
            HeaderMissing { .. } => write!(f, "{s}: missing: no \"EFI PART\" signature"),
            BackupNotAtEnd { last_lba, .. } => write!(
                f,
                "{s}: found where the primary points, not at the disk's last LBA {last_lba} \
                 (the disk grew and the backup was not moved)"
            ),
            BadRevision { revision } => write!(
                f,
                "{s}: revision 0x{revision:08X}, expected 0x00010000 (1.0)"
            ),
            BadHeaderSize {
                header_size,
                sector_size,
            } => write!(
                f,
                "{s}: header size {header_size} outside 92..={sector_size}"
            ),
            HeaderCrcMismatch { stored, computed } => write!(
                f,
                "{s}: CRC32 mismatch: stored 0x{stored:08X}, its bytes give 0x{computed:08X}"
            ),
            ReservedNotZero { value } => {
                write!(f, "{s}: reserved bytes 20-23 hold 0x{value:08X}, not zero")
            }
            WrongMyLba { my_lba, expected } => write!(
                f,
                "{s}: says it is at LBA {my_lba} but was read from LBA {expected}"
            ),
            WrongAlternateLba {
                alternate_lba,
                expected,
            } => write!(
                f,
                "{s}: points to the other header at LBA {alternate_lba}, expected LBA {expected}"
            ),
            UsableRangeEmpty {
                first_usable_lba,
                last_usable_lba,
            } => write!(
                f,
                "{s}: first usable LBA {first_usable_lba} is after last usable LBA {last_usable_lba}"
            ),
            UsableRangeBeyondDisk {
                last_usable_lba,
                last_lba,
            } => write!(
                f,
                "{s}: last usable LBA {last_usable_lba} is past the disk's last LBA {last_lba} \
                 (the disk shrank?)"
            ),
            BadEntrySize { entry_size } => write!(
                f,
                "{s}: partition entry size {entry_size} is not 128 times a power of two"
            ),
            EntryArrayTooLarge { bytes, limit } => write!(
                f,
                "{s}: the partition entry array would be {bytes} bytes, more than the \
                 {limit} this checker reads"
            ),
            EntryArrayMisplaced {
                entry_lba,
                sectors,
                allowed_first,
                allowed_last,
            } => write!(
                f,
                "{s}: the partition entry array (LBA {entry_lba}, {sectors} sectors) is not \
                 within LBA {allowed_first}..={allowed_last} (between its header and the \
                 usable range, inside the disk)"
            ),
            EntriesCrcMismatch { stored, computed } => write!(
                f,
                "{s}: CRC32 mismatch: the header stores 0x{stored:08X}, the array gives \
                 0x{computed:08X}"
            ),
            PartitionReversed {
                index,
                first_lba,
                last_lba,
            } => write!(
                f,
                "{s} {index}: ends at LBA {last_lba}, before it starts at LBA {first_lba}"
            ),
            PartitionOutsideUsable {
                index,
                first_lba,
                last_lba,
                first_usable_lba,
                last_usable_lba,
            } => write!(
                f,
                "{s} {index}: LBA {first_lba}..={last_lba} is outside the usable range \
                 {first_usable_lba}..={last_usable_lba}"
            ),
            PartitionBeyondDisk {
                index,
                last_lba,
                disk_last_lba,
            } => write!(
                f,
                "{s} {index}: ends at LBA {last_lba}, past the disk's last LBA {disk_last_lba}"
            ),
            PartitionsOverlap {
                index,
                other,
                first_lba,
                last_lba,
            } => write!(
                f,
                "{s} {index}: LBA {first_lba}..={last_lba} overlaps partition {other}"
            ),
            HeadersDisagree {
                field,
                primary,
                backup,
            } => write!(
                f,
                "{s}: disagree on {field}: primary {primary}, backup {backup}"
            ),
        }
    }
}

impl Serialize for Problem {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            severity: Severity,
            structure: Structure,
            #[serde(skip_serializing_if = "Option::is_none")]
            location: Option<Location>,
            #[serde(flatten)]
            kind: &'a ProblemKind,
            message: String,
        }
        Json {
            severity: self.severity(),
            structure: self.structure,
            location: self.location,
            kind: &self.kind,
            message: self.message(),
        }
        .serialize(s)
    }
}
