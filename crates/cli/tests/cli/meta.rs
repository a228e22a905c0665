//! `meta backup|restore`, and incidents 2 and 4b.

use crate::common::*;
use serde_json::{json, Value};

#[test]
fn backup_restore_roundtrip() {
    let e = Env::new();
    e.ok(&["create", "a", "--size", "2M", "--order", "20"]);
    let data = random_data(MIB, 80);
    e.write("a", 0, &data);
    e.ok(&["snap", "create", "a@s"]);
    let b1 = e.backup();
    // Deterministic: two backups of an unchanged pool are identical.
    assert_eq!(b1, e.backup());
    let v: Value = serde_json::from_str(&b1).unwrap();
    for f in [
        "format",
        "version",
        "pool",
        "images",
        "objects",
        "object_maps",
    ] {
        assert!(v.get(f).is_some(), "backup lacks {f}");
    }
    assert_eq!(v["format"], "vdisk-meta-backup");
    let file = path_str(&e.file("rbd.json"));
    e.ok(&["meta", "backup", "rbd", &file]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), b1);
    e.fail(&["meta", "backup", "rbd", &file], EXISTS);
    e.ok(&["meta", "backup", "rbd", &file, "--force"]);

    // Change things, then restore: the old metadata is back.
    e.ok(&["create", "b", "--size", "1M"]);
    e.ok(&["snap", "rm", "a@s"]);
    e.ok(&["meta", "restore", "rbd", &file]);
    assert_eq!(e.backup(), b1);
    assert_eq!(e.ok(&["ls"]), "a\n");
    assert_eq!(e.read_all("a")[..MIB], data[..]);
    // From standard input too.
    let out = e.run_stdin(&["meta", "restore", "rbd", "-"], b1.as_bytes());
    assert_success(&["meta", "restore"], &out);
    assert_eq!(e.backup(), b1);
}

#[test]
fn restore_rejects_bad_backups() {
    let e = Env::new();
    e.ok(&["create", "a", "--size", "1M"]);
    let garbage = e.put_file("garbage.json", b"{ not json");
    e.refused(
        &["meta", "restore", "rbd", &garbage],
        USAGE,
        "not a vdisk metadata backup",
    );
    let mut v: Value = serde_json::from_str(&e.backup()).unwrap();
    v["version"] = json!(99);
    let newer = e.put_file("newer.json", v.to_string().as_bytes());
    e.refused(
        &["meta", "restore", "rbd", &newer],
        UNSUPPORTED,
        "version 99",
    );
    e.ok(&["pool", "create", "p2"]);
    let other = e.put_file("p2.json", e.backup_of("p2").as_bytes());
    e.refused(&["meta", "restore", "rbd", &other], USAGE, "pool \"p2\"");
    let missing = path_str(&e.file("missing.json"));
    e.refused(
        &["meta", "restore", "rbd", &missing],
        NOT_FOUND,
        "missing.json",
    );
    e.refused(
        &["meta", "backup", "nope", "-"],
        NOT_FOUND,
        "does not exist",
    );
}

/// Edits the backup of pool rbd with `f` and restores it.
fn edit_and_restore(e: &Env, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&e.backup()).unwrap();
    f(&mut v);
    let file = e.put_file(
        "edited.json",
        serde_json::to_string_pretty(&v).unwrap().as_bytes(),
    );
    e.ok(&["meta", "restore", "rbd", &file]);
}

#[test]
fn incident2_unknown_feature_names_feature_and_command() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "1M"]);
    e.ok(&["create", "ok", "--size", "1M"]);
    edit_and_restore(&e, |v| {
        for img in v["images"].as_array_mut().unwrap() {
            if img["name"] == "img" {
                img["features"] = json!(61 | 4096);
            }
        }
    });
    let err = e.fail(&["info", "img"], UNSUPPORTED);
    assert!(err.contains("0x1000"), "{err}");
    assert!(
        err.contains("vdisk feature disable rbd/img 0x1000"),
        "{err}"
    );
    e.fail(&["export", "img", "-"], UNSUPPORTED);
    // The rest of the pool is unaffected, and listings still show it.
    e.ok(&["info", "ok"]);
    assert_eq!(e.ok(&["ls"]), "img\nok\n");
    let j = e.json(&["ls", "-l"]);
    assert!(
        j[0]["features"]
            .as_array()
            .unwrap()
            .contains(&json!("0x1000")),
        "{j}"
    );
}

/// The command incident 2's error message suggests must work.
#[test]
fn incident2_suggested_command_works() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "1M"]);
    edit_and_restore(&e, |v| v["images"][0]["features"] = json!(61 | 4096));
    e.ok(&["feature", "disable", "rbd/img", "0x1000"]);
    e.ok(&["info", "img"]);
}

#[test]
fn incident4b_unknown_fields_with_braces_restore() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "2M", "--order", "20"]);
    let data = random_data(MIB, 81);
    e.write("img", 0, &data);
    e.ok(&["snap", "create", "img@s"]);
    let clean = e.backup();
    edit_and_restore(&e, |v| {
        v["future_section"] = json!({"a": "}", "b": ["{", {"c": "} }"}]});
        let img = &mut v["images"][0];
        img["policy_settings"] = json!("{ } }");
        img["cache"] =
            json!({"policy": "cleaner", "policy_settings": {"migration_threshold": "2048 }"}});
        img["snaps"][0]["notes"] = json!("}{");
        v["pool"]["segments"] = json!([{"type": "cache-pool", "settings": "{"}]);
    });
    // Restored fine; unknown fields are dropped, the rest is intact.
    assert_eq!(e.backup(), clean);
    assert!(e.ok(&["info", "img"]).contains("snapshot_count: 1"));
    assert_eq!(e.read_all("img")[..MIB], data[..]);
    assert_eq!(e.read_all("img@s")[..MIB], data[..]);
}
