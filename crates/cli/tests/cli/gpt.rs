//! `gpt` and `resize --fix-gpt` (incident 1: checking a GPT is built in).
//! Tables are made by `sfdisk` on sparse files and imported; damage is
//! named, with exit 9; after growing, the backup moves to the new end and
//! `sfdisk --verify` / `sgdisk -v` on an export agree. The daemon gives the
//! same output and exit codes.
//!
//! `sfdisk` and `sgdisk` come from the `fdisk` and `gdisk` packages; a test
//! whose tool is missing says so and passes, unless `VDISK_REQUIRE_TOOLS`
//! is set.

use crate::common::*;
use crate::serve::{wait_exit, wait_listening};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Exit code of `gpt` on a damaged or missing GPT (docs/CLI.md).
const DAMAGED: i32 = 9;
const SIZE: u64 = 64 << 20;

fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&dirs)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!("{name} not found: install the {package} package");
        assert!(std::env::var_os("VDISK_REQUIRE_TOOLS").is_none(), "{msg}");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// A 64 MiB sparse raw file partitioned by sfdisk: EFI system 10 MiB,
/// "root" 20 MiB, swap 8 MiB (all within the first 40 MiB).
fn sfdisk_disk(e: &Env, name: &str) -> Option<PathBuf> {
    let sfdisk = tool("sfdisk", "fdisk")?;
    let p = e.file(name);
    std::fs::File::create(&p).unwrap().set_len(SIZE).unwrap();
    let mut child = spawn(
        Command::new(sfdisk)
            .args(["-q", "--no-reread", "--no-tell-kernel"])
            .arg(&p)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"label: gpt\nsize=10M, type=U, name=\"EFI system\"\n\
              size=20M, type=L, name=\"root\"\nsize=8M, type=S\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sfdisk: {:?}", out);
    Some(p)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Flips one byte of an image through the engine (`raw` holds the bytes
/// the image was imported from).
fn flip(e: &Env, spec: &str, raw: &[u8], at: u64) {
    e.write(spec, at, &[raw[at as usize] ^ 0x5A]);
}

#[test]
fn gpt_of_an_imported_sfdisk_disk_is_intact() {
    let e = Env::new();
    let Some(raw) = sfdisk_disk(&e, "disk.raw") else {
        return;
    };
    let raw = path_str(&raw);
    e.ok(&["import", &raw, "vm1"]);
    let out = e.ok(&["gpt", "vm1"]);
    assert!(out.ends_with("vm1: GPT intact\n"), "{out}");
    assert!(
        out.contains("disk: 64 MiB, 131072 sectors of 512 bytes"),
        "{out}"
    );
    assert!(out.contains("EFI System"), "{out}");
    assert!(
        out.contains("partitions (from the primary table): 3"),
        "{out}"
    );
    assert!(
        !out.contains("error:") && !out.contains("warning:"),
        "{out}"
    );

    let j = e.json(&["gpt", "vm1"]);
    assert_eq!(j["source"], "vm1");
    assert_eq!(j["status"], "intact");
    assert_eq!(j["sector_size"], 512);
    assert_eq!(j["last_lba"], SIZE / 512 - 1);
    assert_eq!(j["mbr"]["kind"], "protective");
    assert_eq!(j["primary"]["intact"], true);
    assert_eq!(j["backup"]["my_lba"], SIZE / 512 - 1);
    assert_eq!(j["partitions_from"], "primary");
    assert_eq!(j["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(j["partitions"][1]["name"], "root");
    assert_eq!(j["partitions"][2]["type_name"], "Linux swap");
    assert_eq!(j["errors"], 0);
    assert_eq!(j["problems"], serde_json::json!([]));

    // The file itself, and a snapshot.
    assert!(e
        .ok(&["gpt", &raw])
        .ends_with(&format!("{raw}: GPT intact\n")));
    e.ok(&["snap", "create", "vm1@s1"]);
    assert_eq!(e.json(&["gpt", "rbd/vm1@s1"])["status"], "intact");
}

#[test]
fn damage_in_each_structure_exits_9_and_names_it() {
    let e = Env::new();
    let Some(raw) = sfdisk_disk(&e, "disk.raw") else {
        return;
    };
    e.ok(&["import", &path_str(&raw), "vm1"]);
    let bytes = std::fs::read(&raw).unwrap();
    let cases: [(u64, &str, &str, &str); 6] = [
        (
            510,
            "protective_mbr",
            "protective MBR (LBA 0): no 55 AA",
            "protective MBR",
        ),
        (
            446 + 4,
            "protective_mbr",
            "protective MBR (LBA 0): none of its 1 partition record(s) has type 0xEE",
            "protective MBR",
        ),
        (
            512 + 60,
            "primary_header",
            "primary GPT header (LBA 1): CRC32 mismatch",
            "backup GPT is intact",
        ),
        (
            1024 + 200,
            "primary_entries",
            "primary partition entries (LBA 2-33): CRC32 mismatch",
            "backup GPT is intact",
        ),
        (
            SIZE - 512 + 60,
            "backup_header",
            "backup GPT header (LBA 131071): CRC32 mismatch",
            "--fix-gpt",
        ),
        (
            SIZE - 33 * 512 + 40,
            "backup_entries",
            "backup partition entries (LBA 131039-131070): CRC32 mismatch",
            "--fix-gpt",
        ),
    ];
    for (at, structure, message, hint) in cases {
        flip(&e, "vm1", &bytes, at);
        let err = e.fail(&["gpt", "vm1"], DAMAGED);
        assert!(
            err.contains(&format!("vdisk: error: vm1: GPT damaged: {message}")),
            "{at}: {err}"
        );
        assert!(
            err.contains("vdisk: hint: ") && err.contains(hint),
            "{at}: {err}"
        );
        // The report still goes to stdout, in both formats.
        let out = e.run(&["gpt", "vm1"]);
        assert!(
            stdout(&out).contains("vm1: GPT damaged: 1 error(s)"),
            "{at}"
        );
        let out = e.run(&["--format", "json", "gpt", "vm1"]);
        assert_eq!(out.status.code(), Some(DAMAGED));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["status"], "damaged");
        assert_eq!(j["problems"][0]["structure"], structure, "{at}");
        assert_eq!(j["problems"][0]["severity"], "error");
        assert!(j["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains(message));
        // Put the byte back: intact again.
        e.write("vm1", at, &[bytes[at as usize]]);
        e.ok(&["gpt", "vm1"]);
    }
}

#[test]
fn resize_fix_gpt_moves_the_backup_and_the_tools_agree() {
    let e = Env::new();
    let Some(raw) = sfdisk_disk(&e, "disk.raw") else {
        return;
    };
    let sfdisk = tool("sfdisk", "fdisk").unwrap();
    let raw = path_str(&raw);
    e.ok(&["import", &raw, "vm1"]);
    // Data inside partition 2 must survive every step.
    let data = random_data(64 << 10, 7);
    let in_part2 = 22528 * 512 + 4096;
    e.write("vm1", in_part2, &data);

    // Grown without --fix-gpt: the backup is left behind, `gpt` says so
    // and how to fix it.
    e.ok(&["resize", "vm1", "--size", "96M"]);
    let err = e.fail(&["gpt", "vm1"], DAMAGED);
    assert!(
        err.contains("not at the disk's last LBA") || err.contains("points to the other header"),
        "{err}"
    );
    assert!(
        err.contains("vdisk resize rbd/vm1 --size 100663296B --fix-gpt"),
        "{err}"
    );
    // ... which, at the same size, fixes it.
    e.ok(&["resize", "vm1", "--size", "100663296B", "--fix-gpt"]);
    e.ok(&["gpt", "vm1"]);

    // Growing with --fix-gpt, then shrinking back past the partitions.
    e.ok(&["resize", "vm1", "--size", "128M", "--fix-gpt"]);
    let j = e.json(&["gpt", "vm1"]);
    assert_eq!(j["status"], "intact", "{j}");
    assert_eq!(j["backup"]["my_lba"], (128 << 20) / 512 - 1);
    assert_eq!(j["primary"]["last_usable_lba"], (128 << 20) / 512 - 34);
    assert_eq!(j["mbr"]["partitions"][0]["sectors"], (128 << 20) / 512 - 1);

    for size in ["128M", "48M"] {
        if size == "48M" {
            e.ok(&[
                "resize",
                "vm1",
                "--size",
                size,
                "--fix-gpt",
                "--allow-shrink",
            ]);
        }
        let out = path_str(&e.file(&format!("out-{size}.raw")));
        e.ok(&["export", "vm1", &out, "--force"]);
        let (o, err) = {
            let r = output(Command::new(&sfdisk).arg("--verify").arg(&out));
            (stdout(&r), stderr(&r))
        };
        assert!(
            o.contains("No errors detected") && err.trim().is_empty(),
            "{size}: sfdisk --verify: {o}{err}"
        );
        if let Some(sgdisk) = tool("sgdisk", "gdisk") {
            let r = output(Command::new(sgdisk).arg("-v").arg(&out));
            assert!(
                stdout(&r).contains("No problems found"),
                "{size}: sgdisk -v: {}",
                stdout(&r)
            );
        }
        assert!(e.ok(&["gpt", &out]).ends_with("GPT intact\n"));
        let got = std::fs::read(&out).unwrap();
        assert_eq!(
            &got[in_part2 as usize..in_part2 as usize + data.len()],
            &data[..],
            "{size}"
        );
    }
}

#[test]
fn fix_gpt_refusals_change_nothing() {
    let e = Env::new();
    let Some(raw) = sfdisk_disk(&e, "disk.raw") else {
        return;
    };
    let bytes = std::fs::read(&raw).unwrap();
    e.ok(&["import", &path_str(&raw), "vm1"]);
    e.ok(&["create", "blank", "--size", "10M"]);

    let err = e.refused(
        &["resize", "blank", "--size", "20M", "--fix-gpt"],
        REFUSED,
        "no GPT found",
    );
    assert!(err.contains("nothing was resized"), "{err}");
    // Cutting partition 3 (it ends at 39 MiB).
    let err = e.refused(
        &[
            "resize",
            "vm1",
            "--size",
            "35M",
            "--fix-gpt",
            "--allow-shrink",
        ],
        REFUSED,
        "partition 3",
    );
    assert!(err.contains("shrinking would cut it"), "{err}");
    // Shrinking still needs its own flag, and says so first.
    e.refused(
        &["resize", "vm1", "--size", "48M", "--fix-gpt"],
        REFUSED,
        "--allow-shrink",
    );
    // A damaged primary: nothing to rebuild the backup from.
    flip(&e, "vm1", &bytes, 1024 + 200);
    let err = e.refused(
        &["resize", "vm1", "--size", "128M", "--fix-gpt"],
        DAMAGED,
        "primary GPT is damaged",
    );
    assert!(err.contains("vdisk gpt rbd/vm1"), "{err}");
    assert_eq!(e.json(&["info", "vm1"])["size"], SIZE);
    // A snapshot cannot be resized at all.
    e.ok(&["snap", "create", "vm1@s"]);
    e.fail(&["resize", "vm1@s", "--size", "128M", "--fix-gpt"], USAGE);
}

#[test]
fn gpt_bad_input() {
    let e = Env::new();
    e.fail(&["gpt", "/nonexistent/disk.raw"], NOT_FOUND);
    e.fail(&["gpt", "nope"], NOT_FOUND);
    e.fail(&["gpt", "a@b@c"], USAGE);
    e.fail(&["gpt"], USAGE);
    let dir = e.file("adir");
    std::fs::create_dir(&dir).unwrap();
    let err = e.fail(&["gpt", &path_str(&dir)], USAGE);
    assert!(err.contains("is a directory"), "{err}");
    let tiny = e.put_file("tiny.raw", &[0xAB; 100]);
    let err = e.fail(&["gpt", &tiny], DAMAGED);
    assert!(err.contains("cannot hold a GPT"), "{err}");
    let garbage = e.put_file("garbage.raw", &random_data(1 << 20, 3));
    let err = e.fail(&["gpt", &garbage], DAMAGED);
    assert!(err.contains("no GPT"), "{err}");
    let out = e.run(&["--format", "json", "gpt", &garbage]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["status"], "absent");
    assert_eq!(j["problems"][0]["kind"], "no_gpt");
}

/// `vdisk` in `cwd` (for relative paths).
fn run_in(e: &Env, cwd: &Path, args: &[&str]) -> Output {
    output(
        Command::new(env!("CARGO_BIN_EXE_vdisk"))
            .arg("--dir")
            .arg(e.store_dir())
            .arg("--no-progress")
            .args(args)
            .current_dir(cwd)
            .env_remove("VDISK_DIR"),
    )
}

/// `vdisk serve`, stopped with SIGTERM when dropped (also on a failed
/// assertion).
struct Serving(std::process::Child);

impl Serving {
    fn stop(&mut self) -> std::process::ExitStatus {
        if let Ok(Some(status)) = self.0.try_wait() {
            return status;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        wait_exit(&mut self.0, Duration::from_secs(60))
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn gpt_and_fix_gpt_through_the_daemon_print_the_same() {
    let e = Env::new();
    let Some(raw) = sfdisk_disk(&e, "disk.raw") else {
        return;
    };
    let bytes = std::fs::read(&raw).unwrap();
    e.ok(&["import", &path_str(&raw), "vm1"]);
    e.ok(&["import", &path_str(&raw), "vm2"]);
    flip(&e, "vm2", &bytes, 512 + 60);
    let dir = e.file("");
    let commands: [&[&str]; 6] = [
        &["gpt", "vm1"],
        &["--format", "json", "gpt", "vm1"],
        &["gpt", "vm2"],
        &["--format", "json", "gpt", "vm2"],
        &["gpt", "./disk.raw"],
        &["--format", "json", "gpt", "./disk.raw"],
    ];
    let direct: Vec<Output> = commands.iter().map(|c| run_in(&e, &dir, c)).collect();
    assert_eq!(direct[2].status.code(), Some(DAMAGED));
    assert!(stdout(&direct[4]).ends_with("./disk.raw: GPT intact\n"));

    let mut serve = Serving(e.spawn(&["serve", "--listen", "127.0.0.1:0"]));
    wait_listening(&mut serve.0);
    for (c, d) in commands.iter().zip(&direct) {
        let via = run_in(&e, &dir, c);
        assert_eq!(via.status.code(), d.status.code(), "{c:?}");
        assert_eq!(stdout(&via), stdout(d), "{c:?}");
        assert_eq!(stderr(&via), stderr(d), "{c:?}");
    }
    e.ok(&["resize", "vm1", "--size", "128M", "--fix-gpt"]);
    assert_eq!(e.json(&["gpt", "vm1"])["status"], "intact");
    e.refused(
        &["resize", "vm2", "--size", "128M", "--fix-gpt"],
        DAMAGED,
        "primary GPT is damaged",
    );

    assert!(serve.stop().success());
    assert_eq!(e.json(&["info", "vm1"])["size"], 128 << 20);
}
