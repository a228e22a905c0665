//! GPT partition tables, without I/O: check a disk's protective MBR, both
//! headers and both partition entry arrays, and plan moving the backup to
//! the end of a resized disk.
//!
//! The caller does the I/O: [`check`] and [`plan_relocation`] take the
//! disk's size and a `read(offset, buf)` callback, and only read inside
//! that size; a relocation is a list of writes the caller applies
//! ([`Relocation::apply`]). Findings are values ([`GptReport`] with typed
//! [`Problem`]s), never panics: the proptest suite mutates real tables
//! byte by byte.
//!
//! # What is checked
//!
//! ```text
//!  LBA 0            protective MBR: 55 AA at 510; one record of type 0xEE from
//!                   LBA 1 over the disk (min(LBAs-1, 0xFFFFFFFF)); others = hybrid
//!  LBA 1            primary header ─┐ signature, revision 1.0, 92 ≤ size ≤ sector,
//!  LBA 2..          primary entries │ header CRC32, my_lba = 1, alternate = last LBA,
//!                                   │ usable range inside the disk, array between
//!                                   │ header and usable range, array CRC32
//!  first..last usable   partitions: start ≤ end, inside the usable range, no overlap
//!  last-n..last-1   backup entries  │ same checks, my_lba = last LBA, alternate = 1,
//!  last LBA         backup header ──┘ array between usable range and header
//!                   primary vs backup: disk GUID, usable range, entry count/size/CRC
//! ```
//!
//! Logical sectors of 512 and 4096 bytes are tried (LBA 1 first, then the
//! last LBA). The layouts are in ARCHITECTURE.md (`vdisk-gpt`).
#![forbid(unsafe_code)]

mod check;
mod entry;
mod error;
mod guid;
mod header;
mod mbr;
mod problem;
mod relocate;

pub use check::{
    check, check_bytes, GptReport, HeaderReport, ReadAt, Role, Status, MAX_ARRAY_BYTES,
    SECTOR_SIZES,
};
pub use entry::{parse_entries, Partition, ENTRY_SIZE};
pub use error::GptError;
pub use guid::{type_name, Guid};
pub use header::{header_crc, Header, HEADER_SIZE, REVISION_1_0, SIGNATURE};
pub use mbr::{protective_sectors, Mbr, MbrKind, MbrPartition, GPT_PROTECTIVE};
pub use problem::{Location, Problem, ProblemKind, Severity, Structure};
pub use relocate::{plan_relocation, Relocation, Write};

#[cfg(test)]
mod tests;
