//! Why a check or a relocation could not be done (findings about the table
//! itself are [`crate::Problem`]s in the report, not errors).

use std::io;

/// An error of this crate: reading or writing failed, or a relocation was
/// refused. Callers match on the variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GptError {
    /// The caller's read or write callback failed.
    #[error("{op} of {len} bytes at offset {offset} failed: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
    /// There is no GPT to relocate.
    #[error("no GPT found: no \"EFI PART\" header at LBA 1 or at the last LBA")]
    NoGpt,
    /// The primary header or its partition entries are damaged, so there
    /// is nothing trustworthy to rebuild the backup from.
    #[error("the primary GPT is damaged, so the backup cannot be rebuilt from it: {}", problems.join("; "))]
    PrimaryDamaged { problems: Vec<String> },
    /// The new size would cut off (part of) a partition.
    #[error(
        "partition {index} ends at LBA {last_lba}, past the last usable LBA {new_last_usable_lba} \
         of a {new_size}-byte disk: shrinking would cut it"
    )]
    WouldCutPartition {
        index: u32,
        last_lba: u64,
        new_last_usable_lba: u64,
        new_size: u64,
    },
    /// The new size leaves no room for the headers, the arrays and the
    /// usable range the table already has.
    #[error(
        "a {new_size}-byte disk is too small for this GPT: its first usable LBA is \
         {first_usable_lba} and the backup needs {array_sectors} sectors of entries plus a header \
         ({sector_size}-byte sectors)"
    )]
    TooSmall {
        new_size: u64,
        first_usable_lba: u64,
        array_sectors: u64,
        sector_size: u32,
    },
}
