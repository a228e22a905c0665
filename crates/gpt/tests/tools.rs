//! Against the tools operators trust: tables made by `sfdisk` (and `fdisk
//! -b 4096` for 4 KiB sectors) on sparse files, damaged one structure at a
//! time, relocated; `sgdisk -v` and `sfdisk --verify` must agree with the
//! verdict, and our relocation must write what `sfdisk --relocate
//! gpt-bak-std` writes.
//!
//! The tools come from the `fdisk` and `gdisk` packages. A test whose tool
//! is missing says so and passes, unless `VDISK_REQUIRE_TOOLS` is set (CI),
//! where it fails.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use vdisk_gpt::{check, plan_relocation, GptReport, ProblemKind, Role, Status, Structure};

const MIB: u64 = 1 << 20;

/// The tool's path (also looked for in the sbin directories, which a
/// non-root PATH often lacks), or `None` after saying why the test skips.
fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&dirs)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg =
            format!("{name} not found: install the {package} package (apt-get install {package})");
        if std::env::var_os("VDISK_REQUIRE_TOOLS").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run tool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sparse(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn sfdisk_script(sfdisk: &Path, path: &Path, script: &str) {
    let mut child = Command::new(sfdisk)
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SCRIPT: &str = "label: gpt\n\
    size=10M, type=U, name=\"EFI system\"\n\
    size=20M, type=L, name=\"root\"\n\
    size=8M, type=S\n";

fn check_file(path: &Path) -> GptReport {
    let f = File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    check(size, |off, buf| f.read_exact_at(buf, off)).unwrap()
}

fn relocate_file(path: &Path, new_size: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let size = f.metadata().unwrap().len();
    let plan = plan_relocation(size, new_size, |off, buf| f.read_exact_at(buf, off)).unwrap();
    if new_size > size {
        f.set_len(new_size).unwrap();
    }
    plan.apply(|off, data| f.write_all_at(data, off), || f.sync_data())
        .unwrap();
    if new_size < size {
        f.set_len(new_size).unwrap();
    }
}

/// `sgdisk -v` finds nothing wrong.
fn sgdisk_clean(sgdisk: &Path, path: &Path) -> bool {
    let (_, out, _) = run(Command::new(sgdisk).arg("-v").arg(path));
    out.contains("No problems found")
}

/// `sfdisk --verify` finds nothing wrong (it exits 0 either way: the
/// verdict is in what it prints).
fn sfdisk_clean(sfdisk: &Path, path: &Path) -> bool {
    let (_, out, err) = run(Command::new(sfdisk).arg("--verify").arg(path));
    out.contains("No errors detected") && err.trim().is_empty()
}

fn flip(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x5A], at).unwrap();
}

#[test]
fn sfdisk_table_is_intact_and_read_as_sfdisk_reads_it() {
    let Some(sfdisk) = tool("sfdisk", "fdisk") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = sparse(dir.path(), "disk.raw", 64 * MIB);
    sfdisk_script(&sfdisk, &disk, SCRIPT);
    let r = check_file(&disk);
    assert_eq!(r.status, Status::Intact, "{:?}", r.problems);
    assert!(r.problems.is_empty());
    assert_eq!(r.sector_size, Some(512));
    assert!(sfdisk_clean(&sfdisk, &disk));

    let (ok, json, _) = run(Command::new(&sfdisk).arg("--json").arg(&disk));
    assert!(ok);
    let t: serde_json::Value = serde_json::from_str(&json).unwrap();
    let t = &t["partitiontable"];
    let primary = &r.primary.as_ref().unwrap().header;
    assert_eq!(t["id"], primary.disk_guid.to_string());
    assert_eq!(t["firstlba"], primary.first_usable_lba);
    assert_eq!(t["lastlba"], primary.last_usable_lba);
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), r.partitions.len());
    for (p, q) in r.partitions.iter().zip(parts) {
        assert_eq!(q["start"], p.first_lba);
        assert_eq!(q["size"], p.sectors());
        assert_eq!(q["type"], p.type_guid.to_string());
        assert_eq!(q["uuid"], p.unique_guid.to_string());
        assert_eq!(q["name"].as_str().unwrap_or(""), p.name);
    }
    assert_eq!(r.partitions[0].type_name, Some("EFI System"));
    assert_eq!(r.partitions[1].name, "root");
}

#[test]
fn each_damaged_structure_is_named_and_the_tools_agree() {
    let (Some(sfdisk), Some(sgdisk)) = (tool("sfdisk", "fdisk"), tool("sgdisk", "gdisk")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let good = sparse(dir.path(), "good.raw", 64 * MIB);
    sfdisk_script(&sfdisk, &good, SCRIPT);
    assert!(sgdisk_clean(&sgdisk, &good));
    let size = 64 * MIB;
    // (byte, structure we name, what sgdisk -v says about it)
    let cases = [
        (510, Structure::ProtectiveMbr, "corrupt MBR"),
        (446 + 4, Structure::ProtectiveMbr, "Invalid partition data"),
        (
            512 + 60,
            Structure::PrimaryHeader,
            "invalid main GPT header",
        ),
        (
            1024 + 200,
            Structure::PrimaryEntries,
            "Main partition table: ERROR",
        ),
        (
            size - 512 + 60,
            Structure::BackupHeader,
            "Backup header: ERROR",
        ),
        (
            size - 33 * 512 + 40,
            Structure::BackupEntries,
            "Backup partition table: ERROR",
        ),
    ];
    for (at, structure, sgdisk_says) in cases {
        let d = dir.path().join(format!("bad-{at}.raw"));
        std::fs::copy(&good, &d).unwrap();
        flip(&d, at);
        let r = check_file(&d);
        assert_eq!(r.status, Status::Damaged, "byte {at}");
        let first = r.errors().next().unwrap();
        assert_eq!(first.structure, structure, "byte {at}: {:?}", r.problems);
        let (_, out, err) = run(Command::new(&sgdisk).arg("-v").arg(&d));
        let out = out + &err;
        assert!(
            out.contains(sgdisk_says),
            "byte {at}: sgdisk -v said:\n{out}"
        );
        // Whichever copy survived still gives every partition.
        assert_eq!(r.partitions.len(), 3, "byte {at}");
        if matches!(
            structure,
            Structure::PrimaryHeader | Structure::PrimaryEntries
        ) {
            assert_eq!(r.partitions_from, Some(Role::Backup));
        }
        if structure != Structure::ProtectiveMbr {
            assert!(
                !sfdisk_clean(&sfdisk, &d),
                "byte {at}: sfdisk --verify found nothing"
            );
        }
    }
}

#[test]
fn relocation_after_growing_matches_sfdisk_relocate_and_verifies() {
    let (Some(sfdisk), Some(sgdisk)) = (tool("sfdisk", "fdisk"), tool("sgdisk", "gdisk")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = sparse(dir.path(), "disk.raw", 64 * MIB);
    sfdisk_script(&sfdisk, &disk, SCRIPT);
    let old_last = 64 * MIB / 512 - 1;

    // Grown without moving the backup: both we and the tools complain.
    File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    let r = check_file(&disk);
    assert_eq!(r.status, Status::Damaged);
    assert!(r
        .problems
        .iter()
        .any(|p| matches!(p.kind, ProblemKind::BackupNotAtEnd { lba, .. } if lba == old_last)));
    assert!(!sgdisk_clean(&sgdisk, &disk));
    assert!(!sfdisk_clean(&sfdisk, &disk));

    // The reference: util-linux's "backup GPT to the standard place".
    // (`sgdisk -e` differs on purpose: it rounds the last usable LBA down
    // to its alignment and leaves a gap before the backup array.)
    let theirs = dir.path().join("sfdisk-relocate.raw");
    std::fs::copy(&disk, &theirs).unwrap();
    let (ok, _, err) = run(Command::new(&sfdisk)
        .args([
            "--no-reread",
            "--no-tell-kernel",
            "--relocate",
            "gpt-bak-std",
        ])
        .arg(&theirs));
    assert!(ok, "sfdisk --relocate: {err}");

    relocate_file(&disk, 128 * MIB);
    let r = check_file(&disk);
    assert_eq!(r.status, Status::Intact, "{:?}", r.problems);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert!(sgdisk_clean(&sgdisk, &disk));
    assert!(sfdisk_clean(&sfdisk, &disk));

    // Byte for byte what sfdisk writes: MBR, primary header, backup array
    // and header. (We also zero the stale old backup header, which sfdisk
    // leaves.)
    let (a, b) = (
        std::fs::read(&disk).unwrap(),
        std::fs::read(&theirs).unwrap(),
    );
    let sector = |d: &[u8], lba: u64| d[(lba * 512) as usize..((lba + 1) * 512) as usize].to_vec();
    let new_last = 128 * MIB / 512 - 1;
    for lba in [0, 1].into_iter().chain(new_last - 32..=new_last) {
        assert_eq!(sector(&a, lba), sector(&b, lba), "LBA {lba}");
    }
    assert!(sector(&a, old_last).iter().all(|&x| x == 0));
    assert_eq!(&sector(&b, old_last)[..8], b"EFI PART");
    let differing: Vec<u64> = (0..new_last + 1)
        .filter(|&l| sector(&a, l) != sector(&b, l))
        .collect();
    assert_eq!(differing, vec![old_last]);
}

#[test]
fn relocation_when_shrinking_past_the_partitions_verifies() {
    let (Some(sfdisk), Some(sgdisk)) = (tool("sfdisk", "fdisk"), tool("sgdisk", "gdisk")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = sparse(dir.path(), "disk.raw", 128 * MIB);
    sfdisk_script(&sfdisk, &disk, SCRIPT); // partitions end before 40 MiB
    relocate_file(&disk, 48 * MIB);
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 48 * MIB);
    let r = check_file(&disk);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert!(sgdisk_clean(&sgdisk, &disk));
    assert!(sfdisk_clean(&sfdisk, &disk));

    // Cutting the last partition is refused, naming it.
    let f = File::open(&disk).unwrap();
    let e = plan_relocation(48 * MIB, 35 * MIB, |o, b| f.read_exact_at(b, o)).unwrap_err();
    assert!(e.to_string().contains("partition 3"), "{e}");
}

#[test]
fn fdisk_4096_byte_sector_tables() {
    let Some(fdisk) = tool("fdisk", "fdisk") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = sparse(dir.path(), "disk4k.raw", 64 * MIB);
    let mut child = Command::new(&fdisk)
        .args(["-b", "4096"])
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // New GPT, a 8 MiB partition and one over the rest, write.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"g\nn\n\n\n+8M\nn\n\n\n\nw\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let listing = |p: &Path| run(Command::new(&fdisk).args(["-b", "4096", "-l"]).arg(p));

    let r = check_file(&disk);
    assert_eq!(r.status, Status::Intact, "{:?}", r.problems);
    assert_eq!(r.sector_size, Some(4096));
    assert_eq!(r.partitions.len(), 2);
    assert_eq!(r.partitions[0].sectors(), 2048); // 8 MiB of 4 KiB
    assert_eq!(r.last_lba, Some(64 * MIB / 4096 - 1));

    // Damage: the primary header, then the backup array.
    for at in [4096 + 60, 64 * MIB - 4096 - 4 * 4096 + 10] {
        let d = dir.path().join(format!("bad-{at}.raw"));
        std::fs::copy(&disk, &d).unwrap();
        flip(&d, at);
        let r = check_file(&d);
        assert_eq!(r.status, Status::Damaged, "byte {at}");
        assert_eq!(r.sector_size, Some(4096));
        let (_, _, err) = listing(&d);
        assert!(err.contains("corrupt"), "byte {at}: fdisk -l said: {err}");
    }

    // Grow, relocate: intact, and fdisk has nothing to say.
    File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(96 * MIB)
        .unwrap();
    let (_, _, err) = listing(&disk);
    assert!(
        !err.trim().is_empty(),
        "fdisk -l saw nothing wrong with a grown disk"
    );
    relocate_file(&disk, 96 * MIB);
    let r = check_file(&disk);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.backup.as_ref().unwrap().lba, 96 * MIB / 4096 - 1);
    let (ok, out, err) = listing(&disk);
    assert!(ok && err.trim().is_empty(), "fdisk -l: {err}");
    assert!(out.contains("Disklabel type: gpt"), "{out}");
}
