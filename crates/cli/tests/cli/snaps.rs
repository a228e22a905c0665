//! `snap create|ls|rm|rename|rollback|protect|unprotect|purge|limit`.

use crate::common::*;

#[test]
fn snapshot_lifecycle() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "2M", "--order", "20"]);
    let v1 = random_data(2 * MIB, 10);
    e.write("img", 0, &v1);
    e.ok(&["snap", "create", "img@s1"]);
    let v2 = random_data(MIB, 11);
    e.write("img", 0, &v2);
    e.ok(&["snap", "add", "rbd/img@s2"]);

    // Snapshots read what the image held when they were taken.
    assert_eq!(e.read_all("img@s1"), v1);
    let mut now = v1.clone();
    now[..MIB].copy_from_slice(&v2);
    assert_eq!(e.read_all("img@s2"), now);
    assert_eq!(e.read_all("img"), now);

    let ls = e.ok(&["snap", "ls", "img"]);
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["SNAPID", "NAME", "SIZE", "PROTECTED", "TIMESTAMP"]
    );
    assert_eq!(lines.len(), 3, "{ls}");
    let j = e.json(&["snap", "ls", "img"]);
    let snaps = j.as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    for f in ["id", "name", "size", "protected", "timestamp"] {
        assert!(snaps[0].get(f).is_some(), "snap ls json lacks {f}");
    }
    assert_eq!(snaps[0]["name"], "s1");
    assert_eq!(snaps[0]["size"], 2 * MIB as u64);
    assert_eq!(snaps[0]["protected"], false);

    // Rename: full spec or bare name.
    e.ok(&["snap", "rename", "img@s1", "img@first"]);
    e.ok(&["snap", "rename", "rbd/img@s2", "second"]);
    let names: Vec<String> = e
        .json(&["snap", "ls", "img"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["first", "second"]);
    e.refused(
        &["snap", "rename", "img@first", "second"],
        EXISTS,
        "already exists",
    );
    e.refused(
        &["snap", "rename", "img@first", "other@x"],
        USAGE,
        "within its image",
    );
    e.refused(
        &["snap", "rename", "img@nope", "x"],
        NOT_FOUND,
        "does not exist",
    );

    // Protect / unprotect / remove.
    e.ok(&["snap", "protect", "img@first"]);
    e.refused(&["snap", "protect", "img@first"], REFUSED, "is protected");
    let err = e.refused(&["snap", "rm", "img@first"], REFUSED, "protected");
    assert!(err.contains("vdisk snap unprotect rbd/img@first"), "{err}");
    e.refused(&["rm", "img"], REFUSED, "snapshot");
    e.ok(&["snap", "unprotect", "img@first"]);
    e.refused(
        &["snap", "unprotect", "img@first"],
        REFUSED,
        "not protected",
    );
    e.ok(&["snap", "rm", "img@first"]);
    assert_eq!(e.json(&["snap", "ls", "img"]).as_array().unwrap().len(), 1);
    assert_eq!(e.read_all("img@second"), now);

    // Purge removes the unprotected ones.
    e.ok(&["snap", "create", "img@a"]);
    e.ok(&["snap", "create", "img@b"]);
    e.ok(&["snap", "purge", "img"]);
    assert_eq!(e.ok(&["snap", "ls", "img"]), "");
    e.ok(&["rm", "img"]);
}

#[test]
fn rollback_restores_content() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "3M", "--order", "20"]);
    let v1 = random_data(3 * MIB, 20);
    e.write("img", 0, &v1);
    e.ok(&["snap", "create", "img@s1"]);
    e.write("img", MIB as u64, &random_data(MIB, 21));
    e.zero("img", 0, 4096);
    e.ok(&["resize", "img", "--size", "5M"]);
    assert_ne!(e.read_all("img")[..3 * MIB], v1[..]);
    e.ok(&["snap", "rollback", "img@s1"]);
    assert_eq!(e.read_all("img"), v1);
    assert_eq!(e.json(&["info", "img"])["size"], 3 * MIB as u64);
    // The snapshot is still there and still the same.
    assert_eq!(e.read_all("img@s1"), v1);
    e.write("img", 0, &random_data(4096, 22));
    e.ok(&["snap", "revert", "img@s1"]);
    assert_eq!(e.read_all("img"), v1);
    e.refused(
        &["snap", "rollback", "img@nope"],
        NOT_FOUND,
        "does not exist",
    );
}

#[test]
fn snapshot_limit() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "1M"]);
    e.ok(&["snap", "limit", "set", "img", "--limit", "2"]);
    assert_eq!(e.json(&["info", "img"])["snap_limit"], 2);
    assert!(e.ok(&["info", "img"]).contains("snapshot_limit: 2"));
    e.ok(&["snap", "create", "img@a"]);
    e.ok(&["snap", "create", "img@b"]);
    let err = e.refused(&["snap", "create", "img@c"], REFUSED, "limit");
    assert!(err.contains("vdisk snap limit set"), "{err}");
    e.refused(
        &["snap", "limit", "set", "img", "--limit", "1"],
        REFUSED,
        "more than the requested limit",
    );
    e.ok(&["snap", "limit", "clear", "img"]);
    assert!(e.json(&["info", "img"])["snap_limit"].is_null());
    e.ok(&["snap", "create", "img@c"]);
    assert_eq!(e.json(&["snap", "ls", "img"]).as_array().unwrap().len(), 3);
}
