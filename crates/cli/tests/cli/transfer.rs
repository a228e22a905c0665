//! `import`, `export`, `cp`.

use crate::common::*;

/// Random data with holes of zeros (thin provisioning must not lose them).
fn mixed(len: usize, seed: u64) -> Vec<u8> {
    let mut d = random_data(len, seed);
    for (i, chunk) in d.chunks_mut(256 << 10).enumerate() {
        if i % 3 == 1 {
            chunk.fill(0);
        }
    }
    d
}

#[test]
fn import_export_file_roundtrip() {
    let e = Env::new();
    let data = mixed(3 * MIB + 1000, 40);
    let src = e.put_file("disk.raw", &data);
    e.ok(&["import", &src, "img", "--order", "20"]);
    // Size is the file's, rounded up to 512.
    let size = (data.len() as u64).div_ceil(512) * 512;
    let j = e.json(&["info", "img"]);
    assert_eq!(j["size"], size);
    assert_eq!(j["order"], 20);
    let out = path_str(&e.file("out.raw"));
    e.ok(&["export", "img", &out]);
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len() as u64, size);
    assert_eq!(&got[..data.len()], &data[..]);
    assert!(got[data.len()..].iter().all(|b| *b == 0));

    // Refuses to overwrite unless --force.
    let err = e.fail(&["export", "img", &out], EXISTS);
    assert!(err.contains("--force"), "{err}");
    e.ok(&["snap", "create", "img@s"]);
    e.write("img", 0, &random_data(4096, 41));
    e.ok(&["export", "img@s", &out, "--force"]);
    assert_eq!(&std::fs::read(&out).unwrap()[..data.len()], &data[..]);

    // The image name defaults to the file's base name.
    e.ok(&["import", &src]);
    assert_eq!(e.ok(&["ls"]), "disk.raw\nimg\n");

    // A missing image leaves no empty file behind.
    let none = e.file("none.raw");
    e.fail(&["export", "nope", &path_str(&none)], NOT_FOUND);
    assert!(!none.exists());
}

#[test]
fn import_export_streams() {
    let e = Env::new();
    // 1 MiB objects: several chunks, a whole zero one, and a zero tail
    // (the image must still grow to the full length).
    let mut data = mixed(4 * MIB + 512, 42);
    data[MIB..2 * MIB].fill(0);
    data[3 * MIB..].fill(0);
    let out = e.run_stdin(&["import", "-", "img", "--order", "20"], &data);
    assert_success(&["import", "-"], &out);
    assert_eq!(e.json(&["info", "img"])["size"], data.len() as u64);
    assert_eq!(e.read_all("img"), data);
    let used = e.json(&["du", "img"])["images"][0]["used"]
        .as_u64()
        .unwrap();
    assert!(used < 2 * MIB as u64, "zeros were stored: {used}");
    // A length that is not a multiple of 512 is padded with zeros.
    let odd = random_data(1000, 43);
    let out = e.run_stdin(&["import", "-", "odd", "--features", "layering"], &odd);
    assert_success(&["import", "-"], &out);
    let got = e.read_all("odd");
    assert_eq!(got.len(), 1024);
    assert_eq!(&got[..1000], &odd[..]);
    // Empty standard input: clear error, nothing created.
    let before = e.backup();
    let out = e.run_stdin(&["import", "-", "empty"], b"");
    let err = check_failure(&["import", "-"], &out, USAGE);
    assert!(err.contains("standard input was empty"), "{err}");
    assert_eq!(before, e.backup());
    // Standard input needs an image name.
    e.refused(&["import", "-"], USAGE, "name the image");
}

#[test]
fn import_errors_leave_pool_unchanged() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "1M"]);
    let src = e.put_file("f.raw", &random_data(4096, 44));
    e.refused(&["import", &src, "img"], EXISTS, "already exists");
    let missing = path_str(&e.file("missing.raw"));
    e.refused(&["import", &missing, "x"], NOT_FOUND, "missing.raw");
    let empty = e.put_file("empty.raw", b"");
    e.refused(&["import", &empty, "x"], USAGE, "empty");
    let dir = path_str(&e.file(""));
    e.refused(&["import", &dir, "x"], USAGE, "directory");
    e.refused(
        &["import", &src, "x", "--features", "fast-diff"],
        REFUSED,
        "object-map",
    );
    e.refused(&["import", &src, "a/b/c"], USAGE, "more than one '/'");
    e.refused(&["import", &src, "x@s"], USAGE, "snapshot is not allowed");
    e.refused(&["export", "img@nope", "-"], NOT_FOUND, "does not exist");
}

#[test]
fn copy_images() {
    let e = Env::new();
    e.ok(&["create", "src", "--size", "3M", "--order", "20"]);
    let v1 = mixed(3 * MIB, 45);
    e.write("src", 0, &v1);
    e.ok(&["snap", "create", "src@s"]);
    e.write("src", 0, &random_data(MIB, 46));
    e.ok(&["cp", "src@s", "fromsnap"]);
    e.ok(&["pool", "create", "p2"]);
    e.ok(&["copy", "src", "p2/head"]);
    assert_eq!(e.read_all("fromsnap"), v1);
    assert_eq!(e.read_all("p2/head"), e.read_all("src"));
    // Independent copies: no parent, no snapshots, same order.
    let j = e.json(&["info", "fromsnap"]);
    assert!(j["parent"].is_null());
    assert_eq!(j["snapshot_count"], 0);
    assert_eq!(j["order"], 20);
    e.refused(&["cp", "src", "fromsnap"], EXISTS, "already exists");
    e.refused(&["cp", "nope", "x"], NOT_FOUND, "does not exist");
    e.refused(&["cp", "src", "x@y"], USAGE, "snapshot is not allowed");
}

/// `--no-sync` copies into a pool (import of a raw file, convert into a new
/// image): the next command of the same boot syncs them and they read back
/// whole; a restart before that (another boot id) makes them refused with
/// the reason, reported by `check`, and removable.
#[test]
fn no_sync_copies_are_synced_by_the_next_command_or_refused_after_a_restart() {
    let e = Env::new();
    let data = mixed(6 * MIB + 512, 41);
    let src = e.put_file("disk.raw", &data);

    // Same boot: the next command syncs; afterwards no restart matters.
    e.set_boot_id("boot-1");
    e.ok(&["import", &src, "rbd/kept", "--no-sync"]);
    e.ok(&["info", "rbd/kept"]);
    e.set_boot_id("boot-2");
    assert_eq!(e.read_all("rbd/kept"), data);
    let check = e.ok(&["check"]);
    assert!(check.contains("no errors"), "{check}");

    // A restart right after: refused (exit 7, corrupt), named by check,
    // removable, and the rest of the pool is untouched.
    e.set_boot_id("boot-3");
    e.ok(&["import", &src, "rbd/raw", "--no-sync"]);
    e.set_boot_id("boot-4");
    e.ok(&["convert", &src, "rbd/conv", "--no-sync"]);
    e.set_boot_id("boot-5");
    for spec in ["rbd/conv", "rbd/raw"] {
        let err = e.fail(&["info", spec], 7);
        assert!(
            err.contains("restarted before its data was synced"),
            "{err}"
        );
        assert!(err.contains(&format!("vdisk rm {spec}")), "{err}");
        e.fail(&["export", spec, "-"], 7);
        e.fail(&["snap", "create", &format!("{spec}@s")], 7);
    }
    let out = e.run(&["check"]);
    assert_eq!(out.status.code(), Some(7));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("rbd/raw: copied with --no-sync") && report.contains("rbd/conv"),
        "{report}"
    );
    assert_eq!(e.read_all("rbd/kept"), data);
    e.ok(&["rm", "rbd/raw"]);
    e.ok(&["rm", "rbd/conv"]);
    e.ok(&["check"]);
    // The name is free again; a normal (synced) import needs no mark.
    e.ok(&["import", &src, "rbd/raw"]);
    e.set_boot_id("boot-6");
    assert_eq!(e.read_all("rbd/raw"), data);

    // Only images the command creates: not an existing one (-n).
    let err = e.fail(&["convert", &src, "rbd/raw", "-n", "--no-sync"], 2);
    assert!(err.contains("--no-sync applies to pool images"), "{err}");
}
