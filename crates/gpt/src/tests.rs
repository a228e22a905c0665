//! Tables built from bytes here, damaged one structure at a time; the
//! relocation; and property tests that no byte pattern panics.

use crate::*;
use proptest::prelude::*;

const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// A GPT disk image in memory, laid out like `sgdisk` with a minimal
/// alignment: array at LBA 2, first usable right after it.
pub(crate) struct Layout {
    pub ss: u32,
    pub size: u64,
    /// (first, last, name) of each partition, in slots 1, 2...
    pub parts: Vec<(u64, u64, &'static str)>,
}

impl Layout {
    fn lbas(&self) -> u64 {
        self.size / u64::from(self.ss)
    }
    fn array_sectors(&self) -> u64 {
        (128 * 128u64).div_ceil(u64::from(self.ss))
    }
    pub fn first_usable(&self) -> u64 {
        2 + self.array_sectors()
    }
    pub fn last_usable(&self) -> u64 {
        self.lbas() - 2 - self.array_sectors()
    }

    pub fn build(&self) -> Vec<u8> {
        let ss = u64::from(self.ss);
        let mut d = vec![0u8; self.size as usize];
        // Protective MBR.
        d[446 + 4] = 0xEE;
        d[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        d[446 + 12..446 + 16].copy_from_slice(&protective_sectors(self.lbas()).to_le_bytes());
        d[510] = 0x55;
        d[511] = 0xAA;
        // Entries.
        let mut array = vec![0u8; 128 * 128];
        for (i, &(first, last, name)) in self.parts.iter().enumerate() {
            let e = &mut array[i * 128..(i + 1) * 128];
            e[0..16].copy_from_slice(&Guid::parse(LINUX).unwrap().0);
            e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, c) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
            }
        }
        let last = self.lbas() - 1;
        let backup_array = last - self.array_sectors();
        let primary = Header {
            revision: REVISION_1_0,
            header_size: HEADER_SIZE,
            header_crc32: 0,
            reserved: 0,
            my_lba: 1,
            alternate_lba: last,
            first_usable_lba: self.first_usable(),
            last_usable_lba: self.last_usable(),
            disk_guid: Guid([0x42; 16]),
            partition_entry_lba: 2,
            num_partition_entries: 128,
            partition_entry_size: 128,
            partition_entry_array_crc32: crc32fast::hash(&array),
        };
        let backup = Header {
            my_lba: last,
            alternate_lba: 1,
            partition_entry_lba: backup_array,
            ..primary.clone()
        };
        let at = |lba: u64| (lba * ss) as usize;
        primary.write_into(&mut d[at(1)..at(2)]);
        d[at(2)..at(2) + array.len()].copy_from_slice(&array);
        d[at(backup_array)..at(backup_array) + array.len()].copy_from_slice(&array);
        backup.write_into(&mut d[at(last)..at(last + 1)]);
        d
    }
}

fn small(ss: u32) -> Layout {
    let size = if ss == 512 { 1 << 20 } else { 4 << 20 };
    let l = Layout {
        ss,
        size,
        parts: vec![],
    };
    let (f, u) = (l.first_usable(), l.last_usable());
    Layout {
        parts: vec![(f, f + 99, "one"), (f + 100, u, "two")],
        ..l
    }
}

fn kinds(r: &GptReport) -> Vec<(Structure, &ProblemKind)> {
    r.problems.iter().map(|p| (p.structure, &p.kind)).collect()
}

/// Rewrites the header at `lba` through `f`, with a correct CRC.
fn edit_header(d: &mut [u8], ss: u32, lba: u64, f: impl FnOnce(&mut Header)) {
    let at = (lba * u64::from(ss)) as usize;
    let sector = &mut d[at..at + ss as usize];
    let mut h = Header::parse(sector).unwrap();
    f(&mut h);
    h.write_into(sector);
}

fn apply(d: &mut Vec<u8>, new_size: u64, r: &Relocation) {
    d.resize(new_size as usize, 0);
    r.apply(
        |off, data| {
            d[off as usize..off as usize + data.len()].copy_from_slice(data);
            Ok(())
        },
        || Ok(()),
    )
    .unwrap();
}

fn relocate(d: &mut Vec<u8>, new_size: u64) -> Result<Relocation, GptError> {
    let src = d.clone();
    let r = plan_relocation(d.len() as u64, new_size, mem_read(&src))?;
    apply(d, new_size, &r);
    Ok(r)
}

fn mem_read(d: &[u8]) -> impl FnMut(u64, &mut [u8]) -> std::io::Result<()> + '_ {
    |off, buf| {
        buf.copy_from_slice(&d[off as usize..off as usize + buf.len()]);
        Ok(())
    }
}

#[test]
fn intact_tables_of_both_sector_sizes() {
    for ss in SECTOR_SIZES {
        let l = small(ss);
        let r = check_bytes(&l.build());
        assert_eq!(r.status, Status::Intact, "{ss}: {:?}", r.problems);
        assert!(r.problems.is_empty());
        assert_eq!(r.sector_size, Some(ss));
        assert_eq!(r.last_lba, Some(l.lbas() - 1));
        assert_eq!(r.mbr.kind, MbrKind::Protective);
        assert_eq!(r.partitions_from, Some(Role::Primary));
        assert_eq!(r.partitions.len(), 2);
        assert_eq!(r.partitions[1].name, "two");
        assert_eq!(r.partitions[1].last_lba, l.last_usable());
        assert_eq!(r.backup.as_ref().unwrap().lba, l.lbas() - 1);
        assert!(r.primary.as_ref().unwrap().intact);
        assert_eq!(r.primary.as_ref().unwrap().entries_intact, Some(true));
    }
}

#[test]
fn one_flipped_byte_in_each_structure_is_named() {
    for ss in SECTOR_SIZES {
        let l = small(ss);
        let good = l.build();
        let s = ss as usize;
        let last = (l.lbas() - 1) as usize;
        let cases: Vec<(usize, Structure, &str)> = vec![
            (510, Structure::ProtectiveMbr, "mbr_signature_missing"),
            (446 + 4, Structure::ProtectiveMbr, "no_protective_partition"),
            (s + 60, Structure::PrimaryHeader, "header_crc_mismatch"),
            (
                2 * s + 40,
                Structure::PrimaryEntries,
                "entries_crc_mismatch",
            ),
            (
                last * s + 60,
                Structure::BackupHeader,
                "header_crc_mismatch",
            ),
            (
                (last - l.array_sectors() as usize) * s + 128 + 33,
                Structure::BackupEntries,
                "entries_crc_mismatch",
            ),
        ];
        for (at, structure, kind) in cases {
            let mut d = good.clone();
            d[at] ^= 0x5A;
            let r = check_bytes(&d);
            assert_eq!(r.status, Status::Damaged, "{ss} {at}");
            let p = r.errors().next().unwrap();
            assert_eq!(p.structure, structure, "{ss} {at}: {:?}", r.problems);
            let json = serde_json::to_value(p).unwrap();
            assert_eq!(json["kind"], kind);
            assert_eq!(json["severity"], "error");
            assert!(json["message"].as_str().unwrap().contains("LBA") || at < 512);
            // The partitions are still listed, from the intact copy.
            assert_eq!(r.partitions.len(), 2, "{ss} {at}");
        }
    }
}

#[test]
fn a_damaged_primary_lists_partitions_from_the_backup() {
    let l = small(512);
    let mut d = l.build();
    d[2 * 512 + 40] ^= 1;
    let r = check_bytes(&d);
    assert_eq!(r.partitions_from, Some(Role::Backup));
    assert_eq!(r.primary.as_ref().unwrap().entries_intact, Some(false));
    assert_eq!(r.errors, 1, "{:?}", r.problems);
}

#[test]
fn primary_header_gone_is_found_through_the_backup() {
    for ss in SECTOR_SIZES {
        let l = small(ss);
        let mut d = l.build();
        d[ss as usize] = 0; // "EFI PART" -> "\0FI PART"
        let r = check_bytes(&d);
        assert_eq!(r.sector_size, Some(ss));
        assert_eq!(
            kinds(&r),
            vec![(
                Structure::PrimaryHeader,
                &ProblemKind::HeaderMissing { lba: 1 }
            )]
        );
        assert_eq!(r.partitions_from, Some(Role::Backup));
    }
}

#[test]
fn no_gpt_and_lost_gpt() {
    let r = check_bytes(&vec![0u8; 1 << 20]);
    assert_eq!(r.status, Status::Absent);
    assert!(matches!(
        r.problems[0].kind,
        ProblemKind::NoGpt { mbr_partitions: 0 }
    ));
    assert_eq!(r.errors, 1);

    let r = check_bytes(&[0u8; 100]);
    assert_eq!(r.status, Status::Absent);
    assert_eq!(r.problems[0].kind, ProblemKind::DiskTooSmall { size: 100 });

    // A protective MBR but both headers wiped: damaged, not absent.
    let l = small(4096);
    let mut d = l.build();
    d[4096..8192].fill(0);
    let last = (l.lbas() - 1) as usize;
    d[last * 4096..].fill(0);
    let r = check_bytes(&d);
    assert_eq!(r.status, Status::Damaged);
    assert_eq!(r.sector_size, Some(4096));
    assert_eq!(r.errors, 2);
    assert!(r.partitions.is_empty());
}

#[test]
fn hybrid_and_short_protective_mbrs_are_warnings() {
    let l = small(512);
    let mut d = l.build();
    d[446 + 16 + 4] = 0x0C;
    let r = check_bytes(&d);
    assert_eq!(r.status, Status::Intact);
    assert_eq!(r.mbr.kind, MbrKind::Hybrid);
    assert_eq!(r.warnings, 1);
    assert_eq!(r.problems[0].severity(), Severity::Warning);

    let mut d = l.build();
    d[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
    let r = check_bytes(&d);
    assert_eq!(r.status, Status::Intact);
    assert!(matches!(
        r.problems[0].kind,
        ProblemKind::ProtectiveSizeMismatch { sectors: 100, .. }
    ));
    // 0xFFFFFFFF is accepted as "the whole disk".
    d[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(check_bytes(&d).problems.is_empty());

    d[446 + 8] = 2;
    let r = check_bytes(&d);
    assert_eq!(
        r.problems[0].kind,
        ProblemKind::ProtectiveStartWrong { first_lba: 2 }
    );
}

#[test]
fn header_fields_with_valid_crcs_are_still_checked() {
    let l = small(512);
    let last = l.lbas() - 1;
    let case = |lba: u64, f: &dyn Fn(&mut Header)| {
        let mut d = l.build();
        edit_header(&mut d, 512, lba, f);
        check_bytes(&d)
    };
    let r = case(1, &|h| h.revision = 0x0002_0000);
    assert_eq!(
        r.problems[0].kind,
        ProblemKind::BadRevision {
            revision: 0x0002_0000
        }
    );
    let r = case(1, &|h| h.my_lba = 7);
    assert_eq!(
        r.problems[0].kind,
        ProblemKind::WrongMyLba {
            my_lba: 7,
            expected: 1
        }
    );
    let r = case(last, &|h| h.alternate_lba = 2);
    assert_eq!(
        r.problems[0].kind,
        ProblemKind::WrongAlternateLba {
            alternate_lba: 2,
            expected: 1
        }
    );
    let r = case(1, &|h| h.partition_entry_size = 100);
    assert_eq!(
        r.problems[0].kind,
        ProblemKind::BadEntrySize { entry_size: 100 }
    );
    assert_eq!(r.primary.as_ref().unwrap().entries_intact, None);
    let r = case(1, &|h| h.num_partition_entries = u32::MAX);
    assert!(matches!(
        r.problems[0].kind,
        ProblemKind::EntryArrayTooLarge { .. }
    ));
    let r = case(1, &|h| h.partition_entry_lba = 1);
    assert!(matches!(
        r.problems[0].kind,
        ProblemKind::EntryArrayMisplaced { entry_lba: 1, .. }
    ));
    let r = case(1, &|h| h.last_usable_lba = last + 5);
    assert!(matches!(
        r.problems[0].kind,
        ProblemKind::UsableRangeBeyondDisk { .. }
    ));
    let r = case(1, &|h| h.first_usable_lba = u64::MAX);
    assert!(matches!(
        r.problems[0].kind,
        ProblemKind::UsableRangeEmpty { .. }
    ));
    let r = case(last, &|h| h.disk_guid = Guid([1; 16]));
    assert!(matches!(
        r.problems[0].kind,
        ProblemKind::HeadersDisagree {
            field: "disk_guid",
            ..
        }
    ));
    let r = case(1, &|h| h.reserved = 1);
    assert_eq!(r.status, Status::Intact);
    assert_eq!(r.warnings, 1);
    assert_eq!(
        r.problems[0].kind,
        ProblemKind::ReservedNotZero { value: 1 }
    );
    // Header sizes: too small, too large, and larger than 92 but valid.
    let mut d = l.build();
    d[512 + 12..512 + 16].copy_from_slice(&600u32.to_le_bytes());
    assert!(matches!(
        check_bytes(&d).problems[0].kind,
        ProblemKind::BadHeaderSize {
            header_size: 600,
            ..
        }
    ));
    let r = case(1, &|h| h.header_size = 96);
    let b = case(last, &|h| h.header_size = 96);
    assert!(!r
        .problems
        .iter()
        .any(|p| p.structure == Structure::PrimaryHeader));
    assert!(!b
        .problems
        .iter()
        .any(|p| p.structure == Structure::BackupHeader));
}

#[test]
fn bad_partitions_are_named() {
    let mut l = small(512);
    let (f, u) = (l.first_usable(), l.last_usable());
    l.parts = vec![
        (f, f + 10, "a"),
        (f + 5, f + 20, "b"),
        (f + 30, f + 29, "c"),
        (1, 5, "d"),
        (u, u + 1, "e"),
    ];
    let r = check_bytes(&l.build());
    assert_eq!(r.status, Status::Damaged);
    let k = kinds(&r);
    assert!(k.contains(&(
        Structure::Partition,
        &ProblemKind::PartitionReversed {
            index: 3,
            first_lba: f + 30,
            last_lba: f + 29
        }
    )));
    assert!(k
        .iter()
        .any(|(_, k)| matches!(k, ProblemKind::PartitionOutsideUsable { index: 4, .. })));
    assert!(k
        .iter()
        .any(|(_, k)| matches!(k, ProblemKind::PartitionOutsideUsable { index: 5, .. })));
    assert!(k.contains(&(
        Structure::Partition,
        &ProblemKind::PartitionsOverlap {
            index: 2,
            other: 1,
            first_lba: f + 5,
            last_lba: f + 20
        }
    )));
    assert!(!k
        .iter()
        .any(|(_, k)| matches!(k, ProblemKind::PartitionsOverlap { index: 3, .. })));
}

#[test]
fn a_grown_disk_is_damaged_until_the_backup_moves() {
    for ss in SECTOR_SIZES {
        let l = small(ss);
        let mut d = l.build();
        let old_last = l.lbas() - 1;
        d.resize(2 * l.size as usize, 0);
        let r = check_bytes(&d);
        assert_eq!(r.status, Status::Damaged);
        let k = kinds(&r);
        assert!(k.iter().any(|(s, k)| *s == Structure::BackupHeader
            && **k
                == ProblemKind::BackupNotAtEnd {
                    lba: old_last,
                    last_lba: 2 * l.lbas() - 1
                }));
        assert!(k.iter().any(|(s, k)| *s == Structure::PrimaryHeader
            && matches!(k, ProblemKind::WrongAlternateLba { .. })));
        assert!(k
            .iter()
            .any(|(_, k)| matches!(k, ProblemKind::ProtectiveSizeMismatch { .. })));
        assert_eq!(r.backup.as_ref().unwrap().lba, old_last);
        assert!(r.backup_rebuildable());

        // Relocating at the current size fixes it, and zeroes the old header.
        let rel = relocate(&mut d, 2 * l.size).unwrap();
        assert_eq!(rel.old_backup_lba, old_last);
        assert!(rel
            .writes()
            .any(|w| w.offset == old_last * u64::from(ss) && w.data.iter().all(|&b| b == 0)));
        let r = check_bytes(&d);
        assert_eq!(r.status, Status::Intact, "{ss}: {:?}", r.problems);
        assert!(r.problems.is_empty());
        assert_eq!(r.backup.as_ref().unwrap().lba, 2 * l.lbas() - 1);
        assert_eq!(
            r.primary.as_ref().unwrap().header.last_usable_lba,
            2 * l.lbas() - 2 - l.array_sectors()
        );
    }
}

#[test]
fn relocation_grows_and_shrinks() {
    for ss in SECTOR_SIZES {
        let mut l = small(ss);
        l.parts.truncate(1);
        let mut d = l.build();
        // Grow: plan on the old disk, apply on the new.
        relocate(&mut d, 3 * l.size).unwrap();
        let r = check_bytes(&d);
        assert!(r.problems.is_empty(), "{ss}: {:?}", r.problems);
        // Same size again: idempotent.
        let before = d.clone();
        relocate(&mut d, 3 * l.size).unwrap();
        assert_eq!(d, before);
        // Shrink back, still past the partition.
        relocate(&mut d, l.size).unwrap();
        let r = check_bytes(&d);
        assert!(r.problems.is_empty(), "{ss}: {:?}", r.problems);
        assert_eq!(d, l.build(), "shrinking back gives the original table");
    }
}

#[test]
fn relocation_refusals() {
    let l = small(512);
    let good = l.build();
    let plan = |d: &[u8], new: u64| plan_relocation(d.len() as u64, new, mem_read(d));
    // Cutting partition 2.
    let e = plan(&good, l.size - 4096).unwrap_err();
    assert!(
        matches!(e, GptError::WouldCutPartition { index: 2, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("partition 2"));
    // No room at all.
    assert!(matches!(
        plan(&good, 8192).unwrap_err(),
        GptError::TooSmall { .. }
    ));
    // No GPT.
    assert!(matches!(
        plan(&vec![0u8; 1 << 20], 2 << 20).unwrap_err(),
        GptError::NoGpt
    ));
    assert!(matches!(
        plan(&[0u8; 10], 2 << 20).unwrap_err(),
        GptError::NoGpt
    ));
    // Damaged primary header, then entries: refused, nothing to rebuild from.
    for at in [512 + 60, 1024 + 40] {
        let mut d = good.clone();
        d[at] ^= 1;
        assert!(!check_bytes(&d).backup_rebuildable());
        let e = plan(&d, 2 << 20).unwrap_err();
        assert!(matches!(e, GptError::PrimaryDamaged { .. }), "{e}");
        assert!(e.to_string().contains("CRC32 mismatch"), "{e}");
    }
    // Overlapping partitions: refused too.
    let mut o = small(512);
    o.parts[1].0 = o.parts[0].1;
    assert!(matches!(
        plan(&o.build(), 2 << 20).unwrap_err(),
        GptError::PrimaryDamaged { .. }
    ));
    // A damaged backup is what relocation rebuilds.
    let mut d = good.clone();
    let last = d.len() - 512;
    d[last + 60] ^= 1;
    relocate(&mut d, l.size).unwrap();
    assert!(check_bytes(&d).problems.is_empty());
}

#[test]
fn relocation_keeps_a_hybrid_mbr() {
    let l = small(512);
    let mut d = l.build();
    d[446 + 16 + 4] = 0x0C;
    let mbr = d[..512].to_vec();
    let rel = relocate(&mut d, 2 * l.size).unwrap();
    assert!(!rel.writes().any(|w| w.offset == 0));
    assert_eq!(d[..512], mbr[..]);
}

#[test]
fn io_errors_are_errors_not_panics() {
    let e = check(1 << 20, |_, _| Err(std::io::Error::other("boom"))).unwrap_err();
    assert!(matches!(
        e,
        GptError::Io {
            op: "read",
            offset: 0,
            ..
        }
    ));
    assert!(e.to_string().contains("boom"));
    let l = small(512);
    let d = l.build();
    let rel = plan_relocation(d.len() as u64, 2 << 20, mem_read(&d)).unwrap();
    let e = rel
        .apply(|_, _| Ok(()), || Err(std::io::Error::other("no flush")))
        .unwrap_err();
    assert!(matches!(e, GptError::Io { op: "flush", .. }));
}

#[test]
fn report_json_fields() {
    let r = check_bytes(&small(512).build());
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["status"], "intact");
    assert_eq!(j["sector_size"], 512);
    assert_eq!(j["mbr"]["kind"], "protective");
    assert_eq!(j["primary"]["my_lba"], 1);
    assert_eq!(j["primary"]["intact"], true);
    assert_eq!(
        j["primary"]["disk_guid"],
        "42424242-4242-4242-4242-424242424242"
    );
    assert_eq!(j["partitions_from"], "primary");
    assert_eq!(j["partitions"][0]["type_name"], "Linux filesystem");
    assert_eq!(j["partitions"][0]["type_guid"], LINUX);
    assert_eq!(j["errors"], 0);
    assert!(j["problems"].as_array().unwrap().is_empty());
}

/// A byte where the layout `l` keeps a structure: `region` 0 the MBR, 1
/// the primary header and array, 2 the backup array and header.
fn structure_byte(l: &Layout, region: u8, pick: u32) -> usize {
    let ss = l.ss as usize;
    let span = (l.array_sectors() as usize + 1) * ss;
    let size = l.size as usize;
    let pick = pick as usize;
    match region {
        0 => pick % 512,
        1 => ss + pick % span,
        _ => size - span + pick % span,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random byte mutations of a real table never panic, in the checker
    /// or the relocation; a mutation that the report calls intact plans
    /// a relocation that yields an intact table.
    #[test]
    fn random_mutations_never_panic(
        muts in prop::collection::vec((0u8..3, any::<u32>(), any::<u8>()), 1..8),
        ss_4k in any::<bool>(),
        new_size in (1u64..8 << 20),
        cut in prop::option::of(0usize..(4 << 20)),
    ) {
        let l = small(if ss_4k { 4096 } else { 512 });
        let mut d = l.build();
        for (region, pick, v) in muts {
            d[structure_byte(&l, region, pick)] = v;
        }
        if let Some(c) = cut { d.truncate(c); }
        let r = check_bytes(&d);
        prop_assert_eq!(r.errors, r.errors().count());
        let _ = serde_json::to_string(&r).unwrap();
        for p in &r.problems { let _ = p.message(); }
        let new_size = new_size / 512 * 512;
        if let Ok(rel) = plan_relocation(d.len() as u64, new_size, mem_read(&d)) {
            let mut d2 = d.clone();
            apply(&mut d2, new_size, &rel);
            let after = check_bytes(&d2);
            // Only the primary's world is rebuilt: MBR or entry oddities
            // the primary carries (warnings) may remain, errors must not.
            prop_assert!(after.problems.iter().all(|p| !p.is_error()
                || p.structure == Structure::ProtectiveMbr), "{:?}", after.problems);
        }
    }

    /// Header fields set to random values with a valid CRC reach the
    /// deeper checks without panicking.
    #[test]
    fn random_header_fields_never_panic(
        primary in any::<bool>(),
        fields in prop::collection::vec((0usize..13, any::<u64>()), 1..5),
        new_size in (1u64..4 << 20),
    ) {
        let l = small(512);
        let mut d = l.build();
        let lba = if primary { 1 } else { l.lbas() - 1 };
        edit_header(&mut d, 512, lba, |h| {
            for (f, v) in fields {
                match f {
                    0 => h.revision = v as u32,
                    1 => h.header_size = (v % 700) as u32,
                    2 => h.my_lba = v,
                    3 => h.alternate_lba = v,
                    4 => h.first_usable_lba = v,
                    5 => h.last_usable_lba = v,
                    6 => h.partition_entry_lba = v,
                    7 => h.num_partition_entries = v as u32,
                    8 => h.partition_entry_size = v as u32,
                    9 => h.partition_entry_array_crc32 = v as u32,
                    10 => h.first_usable_lba = v % 4096,
                    11 => h.partition_entry_lba = v % 4096,
                    _ => h.num_partition_entries = (v % 300) as u32,
                }
            }
            h.header_size = h.header_size.clamp(92, 512);
        });
        let r = check_bytes(&d);
        let _ = serde_json::to_string(&r).unwrap();
        let _ = plan_relocation(d.len() as u64, new_size / 512 * 512, mem_read(&d));
    }
}
