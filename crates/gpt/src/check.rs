//! The checker: reads the protective MBR, both headers and both entry
//! arrays through the caller's read callback and reports every finding.

use crate::entry::{parse_entries, Partition, ENTRY_SIZE};
use crate::error::GptError;
use crate::header::{header_crc, Header, HEADER_SIZE, REVISION_1_0};
use crate::mbr::{protective_sectors, Mbr, MbrKind, MBR_SIZE};
use crate::problem::{Problem, ProblemKind, Structure};
use serde::Serialize;
use std::io;

/// Logical sector sizes tried, in this order.
pub const SECTOR_SIZES: [u32; 2] = [512, 4096];

/// The largest partition entry array read (the usual one is 16 KiB; the
/// Linux kernel refuses arrays beyond a few MiB too).
pub const MAX_ARRAY_BYTES: u64 = 4 << 20;

/// The caller's I/O: fill the buffer from the disk at the byte offset. The
/// checker only asks for ranges inside the size it was given.
pub type ReadAt<'a> = dyn FnMut(u64, &mut [u8]) -> io::Result<()> + 'a;

/// Verdict of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A GPT whose every structure verifies (warnings allowed).
    Intact,
    /// A GPT with at least one error.
    Damaged,
    /// No GPT at all: no header anywhere and no protective MBR.
    Absent,
}

/// Which header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Backup,
}

/// One header as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderReport {
    /// Where it was read.
    pub lba: u64,
    /// Its bytes are as written: revision 1.0, a valid header size and a
    /// matching CRC32. (Whether its fields fit the disk is in `problems`.)
    pub intact: bool,
    /// Its entry array matched the header's array CRC32; `None` when the
    /// array was not read (the header is not intact, or its array lies
    /// outside the disk).
    pub entries_intact: Option<bool>,
    #[serde(flatten)]
    pub header: Header,
}

/// Everything a check found.
#[derive(Debug, Clone, Serialize)]
pub struct GptReport {
    pub status: Status,
    /// Bytes.
    pub disk_size: u64,
    /// Logical sector size the GPT was found with.
    pub sector_size: Option<u32>,
    /// The disk's last LBA in those sectors.
    pub last_lba: Option<u64>,
    pub mbr: Mbr,
    pub primary: Option<HeaderReport>,
    pub backup: Option<HeaderReport>,
    /// Whose entries `partitions` lists: the primary's when they are intact,
    /// else the backup's.
    pub partitions_from: Option<Role>,
    pub partitions: Vec<Partition>,
    /// Number of error problems.
    pub errors: usize,
    /// Number of warning problems.
    pub warnings: usize,
    pub problems: Vec<Problem>,
}

impl GptReport {
    pub fn is_intact(&self) -> bool {
        self.status == Status::Intact
    }

    /// The error problems, in order.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.is_error())
    }

    /// The errors that keep [`crate::plan_relocation`] from rebuilding the
    /// backup from the primary: damage to the primary header, its entries
    /// or its partitions. Findings about where the disk ends (a backup
    /// left behind by a resize) are what the relocation fixes, so they
    /// are not among them.
    pub fn relocation_blockers(&self) -> impl Iterator<Item = &Problem> {
        self.errors().filter(|p| {
            matches!(
                p.structure,
                Structure::PrimaryHeader | Structure::PrimaryEntries | Structure::Partition
            ) && !matches!(
                p.kind,
                ProblemKind::WrongAlternateLba { .. }
                    | ProblemKind::UsableRangeBeyondDisk { .. }
                    | ProblemKind::PartitionBeyondDisk { .. }
            )
        })
    }

    /// Whether the backup can be rebuilt from the primary (the primary and
    /// its partitions are intact), as [`crate::plan_relocation`] does.
    pub fn backup_rebuildable(&self) -> bool {
        self.status != Status::Absent
            && self.partitions_from == Some(Role::Primary)
            && self.relocation_blockers().next().is_none()
    }
}

/// Checks the GPT of a disk of `size` bytes, read through `read`.
///
/// Findings about the table are in the report; only a failing `read` is an
/// error. No input makes this panic, and it reads at most a few sectors
/// plus two entry arrays of at most [`MAX_ARRAY_BYTES`].
pub fn check<R>(size: u64, mut read: R) -> Result<GptReport, GptError>
where
    R: FnMut(u64, &mut [u8]) -> io::Result<()>,
{
    let mut disk = Disk {
        size,
        read: &mut read,
    };
    Ok(inspect(&mut disk)?.report)
}

/// Checks a disk image held in memory.
pub fn check_bytes(disk: &[u8]) -> GptReport {
    let read = |off: u64, buf: &mut [u8]| {
        let start = usize::try_from(off).map_err(|_| io::ErrorKind::InvalidInput)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| disk.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    };
    match check(disk.len() as u64, read) {
        Ok(r) => r,
        // The checker reads only inside the size it is given.
        Err(e) => unreachable!("in-memory read failed: {e}"),
    }
}

/// Bounded reads through the caller's callback.
pub(crate) struct Disk<'a, 'b> {
    pub size: u64,
    pub read: &'a mut ReadAt<'b>,
}

impl Disk<'_, '_> {
    pub fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, GptError> {
        let mut buf = vec![0u8; len];
        (self.read)(offset, &mut buf).map_err(|source| GptError::Io {
            op: "read",
            offset,
            len,
            source,
        })?;
        Ok(buf)
    }

    /// Sector `lba`, or `None` when it is not (entirely) inside the disk.
    pub fn sector(&mut self, lba: u64, ss: u32) -> Result<Option<Vec<u8>>, GptError> {
        let ss64 = u64::from(ss);
        let Some(off) = lba.checked_mul(ss64) else {
            return Ok(None);
        };
        if off.checked_add(ss64).is_none_or(|end| end > self.size) {
            return Ok(None);
        }
        self.read(off, ss as usize).map(Some)
    }
}

/// What the relocation needs besides the report.
pub(crate) struct Inspection {
    pub report: GptReport,
    pub mbr_raw: Vec<u8>,
    /// The primary header's sector, when it has the signature.
    pub primary_raw: Option<Vec<u8>>,
    /// The primary's entry array (`num × size` bytes), when read.
    pub primary_array: Option<Vec<u8>>,
}

/// One header and its array, examined.
struct Exam {
    report: HeaderReport,
    raw: Vec<u8>,
    array: Option<Vec<u8>>,
}

pub(crate) fn inspect(disk: &mut Disk<'_, '_>) -> Result<Inspection, GptError> {
    let size = disk.size;
    let mut problems = Vec::new();
    let mut report = GptReport {
        status: Status::Absent,
        disk_size: size,
        sector_size: None,
        last_lba: None,
        mbr: Mbr::parse(&[]),
        primary: None,
        backup: None,
        partitions_from: None,
        partitions: Vec::new(),
        errors: 0,
        warnings: 0,
        problems: Vec::new(),
    };
    if size < 2 * MBR_SIZE as u64 {
        problems.push(Problem::new(
            Structure::Disk,
            ProblemKind::DiskTooSmall { size },
        ));
        return Ok(finish(report, problems, Vec::new(), None, None));
    }
    let mbr_raw = disk.read(0, MBR_SIZE)?;
    report.mbr = Mbr::parse(&mbr_raw);

    let Some(ss) = detect_sector_size(disk)? else {
        // No header anywhere. With a protective MBR this is a damaged GPT
        // (both headers lost); without one, there is no GPT.
        match report.mbr.protective().cloned() {
            None => {
                problems.push(Problem::new(
                    Structure::Disk,
                    ProblemKind::NoGpt {
                        mbr_partitions: report.mbr.partitions.len(),
                    },
                ));
            }
            Some(pmbr) => {
                // The 0xEE entry's length tells the sector size it was made for.
                let ss = if u64::from(pmbr.sectors) + 1 == size / 4096 {
                    4096
                } else {
                    512
                };
                let last_lba = size / u64::from(ss) - 1;
                report.sector_size = Some(ss);
                report.last_lba = Some(last_lba);
                check_mbr(&report.mbr, size / u64::from(ss), &mut problems);
                problems.push(
                    Problem::new(
                        Structure::PrimaryHeader,
                        ProblemKind::HeaderMissing { lba: 1 },
                    )
                    .at(1, 1),
                );
                problems.push(
                    Problem::new(
                        Structure::BackupHeader,
                        ProblemKind::HeaderMissing { lba: last_lba },
                    )
                    .at(last_lba, last_lba),
                );
                report.status = Status::Damaged;
            }
        }
        return Ok(finish(report, problems, mbr_raw, None, None));
    };
    let total_lbas = size / u64::from(ss);
    let last_lba = total_lbas - 1;
    report.sector_size = Some(ss);
    report.last_lba = Some(last_lba);
    report.status = Status::Damaged; // until no error is found
    check_mbr(&report.mbr, total_lbas, &mut problems);

    let primary = examine(disk, Role::Primary, 1, ss, last_lba, &mut problems)?;
    let mut backup_problems = Vec::new();
    let mut backup = examine(
        disk,
        Role::Backup,
        last_lba,
        ss,
        last_lba,
        &mut backup_problems,
    )?;
    if backup.is_none() {
        // Not at the end: where the primary says it is (a disk that grew)?
        if let Some(p) = primary.as_ref().filter(|p| p.report.intact) {
            let alt = p.report.header.alternate_lba;
            if alt != last_lba && alt > 1 && alt < last_lba {
                let mut elsewhere = Vec::new();
                if let Some(b) = examine(disk, Role::Backup, alt, ss, last_lba, &mut elsewhere)? {
                    backup_problems = vec![Problem::new(
                        Structure::BackupHeader,
                        ProblemKind::BackupNotAtEnd { lba: alt, last_lba },
                    )
                    .at(alt, alt)];
                    backup_problems.extend(elsewhere);
                    backup = Some(b);
                }
            }
        }
    }
    problems.extend(backup_problems);

    if let (Some(p), Some(b)) = (&primary, &backup) {
        if p.report.intact && b.report.intact {
            compare_headers(&p.report.header, &b.report.header, &mut problems);
        }
    }

    // Partitions: from the first header whose array verified.
    let source = [(Role::Primary, &primary), (Role::Backup, &backup)]
        .into_iter()
        .find_map(|(role, e)| {
            e.as_ref()
                .filter(|e| e.report.intact && e.report.entries_intact == Some(true))
                .map(|e| (role, e))
        });
    if let Some((role, e)) = source {
        let parts = parse_entries(
            e.array.as_deref().unwrap_or_default(),
            e.report.header.partition_entry_size,
        );
        check_partitions(&e.report.header, &parts, last_lba, &mut problems);
        report.partitions_from = Some(role);
        report.partitions = parts;
    }

    let primary_raw = primary.as_ref().map(|e| e.raw.clone());
    let primary_array = primary.as_ref().and_then(|e| e.array.clone());
    report.primary = primary.map(|e| e.report);
    report.backup = backup.map(|e| e.report);
    Ok(finish(
        report,
        problems,
        mbr_raw,
        primary_raw,
        primary_array,
    ))
}

fn finish(
    mut report: GptReport,
    problems: Vec<Problem>,
    mbr_raw: Vec<u8>,
    primary_raw: Option<Vec<u8>>,
    primary_array: Option<Vec<u8>>,
) -> Inspection {
    report.errors = problems.iter().filter(|p| p.is_error()).count();
    report.warnings = problems.len() - report.errors;
    if report.status == Status::Damaged && report.errors == 0 {
        report.status = Status::Intact;
    }
    report.problems = problems;
    Inspection {
        report,
        mbr_raw,
        primary_raw,
        primary_array,
    }
}

/// The logical sector size whose LBA 1, else whose last LBA, holds a
/// header signature.
fn detect_sector_size(disk: &mut Disk<'_, '_>) -> Result<Option<u32>, GptError> {
    for ss in SECTOR_SIZES {
        if let Some(s) = disk.sector(1, ss)? {
            if Header::parse(&s).is_some() {
                return Ok(Some(ss));
            }
        }
    }
    for ss in SECTOR_SIZES {
        let lbas = disk.size / u64::from(ss);
        if lbas >= 3 {
            if let Some(s) = disk.sector(lbas - 1, ss)? {
                if Header::parse(&s).is_some() {
                    return Ok(Some(ss));
                }
            }
        }
    }
    Ok(None)
}

fn check_mbr(mbr: &Mbr, total_lbas: u64, problems: &mut Vec<Problem>) {
    let mut p = |k| problems.push(Problem::new(Structure::ProtectiveMbr, k).at(0, 0));
    if mbr.kind == MbrKind::Missing {
        p(ProblemKind::MbrSignatureMissing);
        return;
    }
    let Some(pmbr) = mbr.protective() else {
        p(ProblemKind::NoProtectivePartition {
            mbr_partitions: mbr.partitions.len(),
        });
        return;
    };
    if pmbr.first_lba != 1 {
        p(ProblemKind::ProtectiveStartWrong {
            first_lba: pmbr.first_lba,
        });
    }
    if mbr.kind == MbrKind::Hybrid {
        p(ProblemKind::HybridMbr {
            mbr_partitions: mbr.partitions.len() - 1,
        });
    } else {
        // Some tools write 0xFFFFFFFF whatever the disk size; the kernel
        // and UEFI accept both.
        let expected = protective_sectors(total_lbas);
        if pmbr.sectors != expected && pmbr.sectors != u32::MAX {
            p(ProblemKind::ProtectiveSizeMismatch {
                sectors: pmbr.sectors,
                expected,
            });
        }
    }
}

/// Examines the header at `lba` and, when it can be trusted to say where,
/// its entry array. `None` when there is no header signature there (a
/// `HeaderMissing` problem is recorded).
fn examine(
    disk: &mut Disk<'_, '_>,
    role: Role,
    lba: u64,
    ss: u32,
    last_lba: u64,
    problems: &mut Vec<Problem>,
) -> Result<Option<Exam>, GptError> {
    let (hs, es) = match role {
        Role::Primary => (Structure::PrimaryHeader, Structure::PrimaryEntries),
        Role::Backup => (Structure::BackupHeader, Structure::BackupEntries),
    };
    let raw = disk.sector(lba, ss)?;
    let Some((raw, h)) = raw.and_then(|r| Header::parse(&r).map(|h| (r, h))) else {
        problems.push(Problem::new(hs, ProblemKind::HeaderMissing { lba }).at(lba, lba));
        return Ok(None);
    };
    let mut p = |k| problems.push(Problem::new(hs, k).at(lba, lba));

    let mut intact = true;
    if h.revision != REVISION_1_0 {
        intact = false;
        p(ProblemKind::BadRevision {
            revision: h.revision,
        });
    }
    if h.header_size < HEADER_SIZE || h.header_size > ss {
        intact = false;
        p(ProblemKind::BadHeaderSize {
            header_size: h.header_size,
            sector_size: ss,
        });
    } else {
        let computed = header_crc(&raw, h.header_size as usize);
        if computed != h.header_crc32 {
            intact = false;
            p(ProblemKind::HeaderCrcMismatch {
                stored: h.header_crc32,
                computed,
            });
        }
    }
    if h.reserved != 0 {
        p(ProblemKind::ReservedNotZero { value: h.reserved });
    }
    if h.my_lba != lba {
        p(ProblemKind::WrongMyLba {
            my_lba: h.my_lba,
            expected: lba,
        });
    }
    let expected_alternate = match role {
        Role::Primary => last_lba,
        Role::Backup => 1,
    };
    if h.alternate_lba != expected_alternate {
        p(ProblemKind::WrongAlternateLba {
            alternate_lba: h.alternate_lba,
            expected: expected_alternate,
        });
    }
    if h.first_usable_lba > h.last_usable_lba {
        p(ProblemKind::UsableRangeEmpty {
            first_usable_lba: h.first_usable_lba,
            last_usable_lba: h.last_usable_lba,
        });
    } else if h.last_usable_lba > last_lba {
        p(ProblemKind::UsableRangeBeyondDisk {
            last_usable_lba: h.last_usable_lba,
            last_lba,
        });
    }
    let entry_size_ok =
        h.partition_entry_size >= ENTRY_SIZE && h.partition_entry_size.is_power_of_two();
    if !entry_size_ok {
        p(ProblemKind::BadEntrySize {
            entry_size: h.partition_entry_size,
        });
    }
    let bytes = h.array_bytes();
    if bytes > MAX_ARRAY_BYTES {
        p(ProblemKind::EntryArrayTooLarge {
            bytes,
            limit: MAX_ARRAY_BYTES,
        });
    }
    // The array lies between its header and the usable range.
    let sectors = h.array_sectors(ss);
    let (allowed_first, allowed_last) = match role {
        Role::Primary => (2, h.first_usable_lba.saturating_sub(1).min(last_lba)),
        Role::Backup => (h.last_usable_lba.saturating_add(1), lba.saturating_sub(1)),
    };
    let array_last = (h.partition_entry_lba.checked_add(sectors)).and_then(|e| e.checked_sub(1));
    if sectors > 0
        && (h.partition_entry_lba < allowed_first || array_last.is_none_or(|l| l > allowed_last))
    {
        p(ProblemKind::EntryArrayMisplaced {
            entry_lba: h.partition_entry_lba,
            sectors,
            allowed_first,
            allowed_last,
        });
    }

    // Read the array only when the header is intact (else where it points
    // means nothing) and the array is a sane size inside the disk.
    let in_disk = sectors == 0 || array_last.is_some_and(|l| l <= last_lba);
    let mut entries_intact = None;
    let mut array = None;
    if intact && entry_size_ok && bytes <= MAX_ARRAY_BYTES && in_disk {
        let a = if bytes == 0 {
            Vec::new()
        } else {
            disk.read(h.partition_entry_lba * u64::from(ss), bytes as usize)?
        };
        let computed = crc32fast::hash(&a);
        let ok = computed == h.partition_entry_array_crc32;
        if !ok {
            problems.push(
                Problem::new(
                    es,
                    ProblemKind::EntriesCrcMismatch {
                        stored: h.partition_entry_array_crc32,
                        computed,
                    },
                )
                .at(
                    h.partition_entry_lba,
                    (h.partition_entry_lba + sectors).saturating_sub(1),
                ),
            );
        }
        entries_intact = Some(ok);
        array = Some(a);
    }
    Ok(Some(Exam {
        report: HeaderReport {
            lba,
            intact,
            entries_intact,
            header: h,
        },
        raw,
        array,
    }))
}

fn compare_headers(p: &Header, b: &Header, problems: &mut Vec<Problem>) {
    let mut differ = |field: &'static str, pv: String, bv: String| {
        if pv != bv {
            problems.push(Problem::new(
                Structure::Headers,
                ProblemKind::HeadersDisagree {
                    field,
                    primary: pv,
                    backup: bv,
                },
            ));
        }
    };
    differ(
        "disk_guid",
        p.disk_guid.to_string(),
        b.disk_guid.to_string(),
    );
    differ(
        "first_usable_lba",
        p.first_usable_lba.to_string(),
        b.first_usable_lba.to_string(),
    );
    differ(
        "last_usable_lba",
        p.last_usable_lba.to_string(),
        b.last_usable_lba.to_string(),
    );
    differ(
        "num_partition_entries",
        p.num_partition_entries.to_string(),
        b.num_partition_entries.to_string(),
    );
    differ(
        "partition_entry_size",
        p.partition_entry_size.to_string(),
        b.partition_entry_size.to_string(),
    );
    differ(
        "partition_entry_array_crc32",
        format!("0x{:08X}", p.partition_entry_array_crc32),
        format!("0x{:08X}", b.partition_entry_array_crc32),
    );
    differ(
        "alternate_lba/my_lba",
        p.alternate_lba.to_string(),
        b.my_lba.to_string(),
    );
}

fn check_partitions(h: &Header, parts: &[Partition], last_lba: u64, problems: &mut Vec<Problem>) {
    let mut p = |k| problems.push(Problem::new(Structure::Partition, k));
    let mut sane: Vec<&Partition> = Vec::new();
    for part in parts {
        if part.last_lba < part.first_lba {
            p(ProblemKind::PartitionReversed {
                index: part.index,
                first_lba: part.first_lba,
                last_lba: part.last_lba,
            });
            continue;
        }
        if part.first_lba < h.first_usable_lba || part.last_lba > h.last_usable_lba {
            p(ProblemKind::PartitionOutsideUsable {
                index: part.index,
                first_lba: part.first_lba,
                last_lba: part.last_lba,
                first_usable_lba: h.first_usable_lba,
                last_usable_lba: h.last_usable_lba,
            });
        } else if part.last_lba > last_lba {
            p(ProblemKind::PartitionBeyondDisk {
                index: part.index,
                last_lba: part.last_lba,
                disk_last_lba: last_lba,
            });
        }
        sane.push(part);
    }
    sane.sort_by_key(|x| (x.first_lba, x.index));
    // Sweep: compare each with the one reaching furthest so far.
    let mut reach: Option<&Partition> = None;
    for part in sane {
        if let Some(r) = reach {
            if part.first_lba <= r.last_lba {
                p(ProblemKind::PartitionsOverlap {
                    index: part.index,
                    other: r.index,
                    first_lba: part.first_lba,
                    last_lba: part.last_lba,
                });
            }
        }
        if reach.is_none_or(|r| part.last_lba > r.last_lba) {
            reach = Some(part);
        }
    }
}
