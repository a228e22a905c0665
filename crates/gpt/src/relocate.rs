//! Moving the backup GPT to the end of a resized disk (what `sgdisk -e`
//! does): the backup header and array are rebuilt from the primary at the
//! new last LBA, and the primary's `alternate_lba` and `last_usable_lba`
//! follow.

use crate::check::{inspect, Disk, Role, Status};
use crate::error::GptError;
use crate::header::Header;
use crate::mbr::{protective_sectors, MbrKind, GPT_PROTECTIVE, PARTITION_TABLE_OFFSET};
use std::io;

/// One write of a relocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Byte offset on the disk.
    pub offset: u64,
    pub data: Vec<u8>,
    /// What it writes, for logs.
    pub what: &'static str,
}

/// The writes that move the backup GPT, and what they do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relocation {
    pub sector_size: u32,
    /// Where the primary pointed to the backup before.
    pub old_backup_lba: u64,
    /// The new backup header's LBA: the new disk's last.
    pub new_backup_lba: u64,
    pub new_last_usable_lba: u64,
    /// Writes rebuilding the backup (entries, then header) at the new end.
    /// They only touch sectors no structure the primary describes uses.
    pub backup_writes: Vec<Write>,
    /// Then: the primary header pointing to the new backup (the commit
    /// point), the protective MBR's new length, and zeros over the old
    /// backup header (stale, now inside free space).
    pub primary_writes: Vec<Write>,
}

impl Relocation {
    /// Applies the writes in order, calling `barrier` after the backup
    /// writes and at the end (flush/fsync there: the primary is then
    /// updated only once the backup it points to is durable, so a crash at
    /// any point leaves an intact primary and re-running the relocation
    /// finishes the job).
    pub fn apply<W, B>(&self, mut write: W, mut barrier: B) -> Result<(), GptError>
    where
        W: FnMut(u64, &[u8]) -> io::Result<()>,
        B: FnMut() -> io::Result<()>,
    {
        let failed = |op: &'static str, offset: u64, len: usize| {
            move |source| GptError::Io {
                op,
                offset,
                len,
                source,
            }
        };
        for w in &self.backup_writes {
            write(w.offset, &w.data).map_err(failed("write", w.offset, w.data.len()))?;
        }
        barrier().map_err(failed("flush", 0, 0))?;
        for w in &self.primary_writes {
            write(w.offset, &w.data).map_err(failed("write", w.offset, w.data.len()))?;
        }
        barrier().map_err(failed("flush", 0, 0))
    }

    /// Every write, in order.
    pub fn writes(&self) -> impl Iterator<Item = &Write> {
        self.backup_writes.iter().chain(&self.primary_writes)
    }
}

/// Plans moving the backup GPT of a disk now `size` bytes (read through
/// `read`) to the end of the same disk once it is `new_size` bytes. Apply
/// the result after resizing (or before, when shrinking: every write is
/// inside `new_size`), with nothing else writing the disk in between.
///
/// Refused when there is no GPT ([`GptError::NoGpt`]), when the primary
/// header, its entries or its partitions are damaged — a backup pointing
/// to a moved disk end is expected, it is what this fixes —
/// ([`GptError::PrimaryDamaged`]), or when `new_size` would cut a
/// partition ([`GptError::WouldCutPartition`]) or leave no usable range
/// ([`GptError::TooSmall`]). `new_size == size` rebuilds the backup where
/// it belongs, e.g. after the disk grew without this.
pub fn plan_relocation<R>(size: u64, new_size: u64, mut read: R) -> Result<Relocation, GptError>
where
    R: FnMut(u64, &mut [u8]) -> io::Result<()>,
{
    let mut disk = Disk {
        size,
        read: &mut read,
    };
    let ins = inspect(&mut disk)?;
    let rep = &ins.report;
    if rep.status == Status::Absent || (rep.primary.is_none() && rep.backup.is_none()) {
        return Err(GptError::NoGpt);
    }
    // A damaged primary has nothing trustworthy to rebuild from.
    let blocking: Vec<String> = rep.relocation_blockers().map(|p| p.message()).collect();
    let (Some(ss), Some(primary), Some(raw), Some(array)) = (
        rep.sector_size,
        rep.primary.as_ref(),
        ins.primary_raw.as_ref(),
        ins.primary_array.as_ref(),
    ) else {
        return Err(GptError::PrimaryDamaged {
            problems: if blocking.is_empty() {
                vec!["the primary GPT header or its entries could not be read".into()]
            } else {
                blocking
            },
        });
    };
    if !blocking.is_empty() || rep.partitions_from != Some(Role::Primary) {
        return Err(GptError::PrimaryDamaged { problems: blocking });
    }
    let h = &primary.header;
    let ss64 = u64::from(ss);
    let sectors = h.array_sectors(ss);
    let new_lbas = new_size / ss64;
    // New layout: ... last usable | backup array | backup header (last LBA).
    let new_last_usable = new_lbas
        .checked_sub(sectors + 2)
        .filter(|&l| l >= h.first_usable_lba)
        .ok_or(GptError::TooSmall {
            new_size,
            first_usable_lba: h.first_usable_lba,
            array_sectors: sectors,
            sector_size: ss,
        })?;
    let new_last = new_lbas - 1;
    let new_array_lba = new_last - sectors;
    if let Some(p) = rep.partitions.iter().find(|p| p.last_lba > new_last_usable) {
        return Err(GptError::WouldCutPartition {
            index: p.index,
            last_lba: p.last_lba,
            new_last_usable_lba: new_last_usable,
            new_size,
        });
    }

    let new_primary = Header {
        alternate_lba: new_last,
        last_usable_lba: new_last_usable,
        ..h.clone()
    };
    let new_backup = Header {
        my_lba: new_last,
        alternate_lba: 1,
        partition_entry_lba: new_array_lba,
        ..new_primary.clone()
    };
    let hsize = h.header_size as usize;
    let mut backup_sector = vec![0u8; ss as usize];
    backup_sector[..hsize].copy_from_slice(&raw[..hsize]);
    new_backup.write_into(&mut backup_sector);
    let mut primary_sector = raw.clone();
    new_primary.write_into(&mut primary_sector);
    let mut entries = array.clone();
    entries.resize((sectors * ss64) as usize, 0);

    let backup_writes = vec![
        Write {
            offset: new_array_lba * ss64,
            data: entries,
            what: "backup partition entries",
        },
        Write {
            offset: new_last * ss64,
            data: backup_sector,
            what: "backup GPT header",
        },
    ];
    let mut primary_writes = vec![Write {
        offset: ss64,
        data: primary_sector,
        what: "primary GPT header",
    }];

    // A pure protective MBR covers the new disk (a hybrid one is the
    // user's; 0xFFFFFFFF means "the whole disk" already).
    if rep.mbr.kind == MbrKind::Protective {
        if let Some(pmbr) = rep.mbr.protective() {
            let want = protective_sectors(new_lbas);
            if pmbr.os_type == GPT_PROTECTIVE && pmbr.sectors != want && pmbr.sectors != u32::MAX {
                let mut mbr = ins.mbr_raw.clone();
                let at = PARTITION_TABLE_OFFSET + 16 * usize::from(pmbr.index - 1) + 12;
                mbr[at..at + 4].copy_from_slice(&want.to_le_bytes());
                primary_writes.push(Write {
                    offset: 0,
                    data: mbr,
                    what: "protective MBR",
                });
            }
        }
    }

    // The old backup header, now inside free space: zeroed, so no scan
    // finds a stale header there. Only when it is one, outside every
    // partition and every structure of the new layout.
    let old = h.alternate_lba;
    let primary_end = h.partition_entry_lba.saturating_add(sectors); // first LBA after the primary array
    if old != new_last
        && old >= primary_end.max(2)
        && old < new_array_lba
        && old < size / ss64
        && rep
            .partitions
            .iter()
            .all(|p| old < p.first_lba || old > p.last_lba)
    {
        if let Some(s) = disk.sector(old, ss)? {
            if Header::parse(&s).is_some() {
                primary_writes.push(Write {
                    offset: old * ss64,
                    data: vec![0u8; ss as usize],
                    what: "old backup GPT header (zeroed)",
                });
            }
        }
    }

    Ok(Relocation {
        sector_size: ss,
        old_backup_lba: old,
        new_backup_lba: new_last,
        new_last_usable_lba: new_last_usable,
        backup_writes,
        primary_writes,
    })
}
