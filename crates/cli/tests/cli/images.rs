//! `create`, `ls`, `info`, `rm`, `rename`, `resize`, `feature`.

use crate::common::*;

#[test]
fn create_and_info() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "4M", "--order", "20"]);
    let info = e.ok(&["info", "img"]);
    for want in [
        "rbd image 'img':\n",
        "\tsize 4 MiB in 4 objects\n",
        "\torder 20 (1 MiB objects)\n",
        "\tsnapshot_count: 0\n",
        "\tformat: 2\n",
        "\tfeatures: layering, exclusive-lock, object-map, fast-diff, deep-flatten\n",
        "\tblock_name_prefix: ",
        "\tcreate_timestamp: ",
    ] {
        assert!(info.contains(want), "info lacks {want:?}:\n{info}");
    }
    let j = e.json(&["info", "rbd/img"]);
    for f in [
        "pool",
        "name",
        "id",
        "block_name_prefix",
        "size",
        "objects",
        "order",
        "object_size",
        "snapshot_count",
        "format",
        "features",
        "features_bits",
        "op_features",
        "flags",
        "create_timestamp",
        "snap_limit",
        "parent",
        "snapshot",
    ] {
        assert!(j.get(f).is_some(), "info json lacks {f}: {j}");
    }
    assert_eq!(j["size"], 4 * MIB as u64);
    assert_eq!(j["objects"], 4);
    assert_eq!(j["object_size"], MIB as u64);
    assert_eq!(j["features_bits"], 61);
    assert!(j["parent"].is_null());
    assert!(j["snapshot"].is_null());

    // Default order 22, bare size = MiB, features by number and by name.
    e.ok(&["create", "b", "--size", "8", "--features", "1"]);
    let j = e.json(&["info", "b"]);
    assert_eq!(j["size"], 8 * MIB as u64);
    assert_eq!(j["order"], 22);
    assert_eq!(j["features"], serde_json::json!(["layering"]));
    e.ok(&[
        "create",
        "c",
        "-s",
        "1G",
        "--features",
        "layering",
        "--features",
        "exclusive-lock,object-map",
    ]);
    assert_eq!(e.json(&["info", "c"])["features_bits"], 13);
    e.ok(&["create", "d", "--size", "1.5M", "--image-feature", "61"]);
    assert_eq!(e.json(&["info", "d"])["size"], 3 * MIB as u64 / 2);
    // Snapshot info.
    e.ok(&["snap", "create", "img@s1"]);
    e.ok(&["snap", "protect", "img@s1"]);
    let info = e.ok(&["info", "img@s1"]);
    assert!(info.contains("\tprotected: True\n"), "{info}");
    let j = e.json(&["info", "img@s1"]);
    assert_eq!(j["snapshot"]["name"], "s1");
    assert_eq!(j["snapshot"]["protected"], true);
}

#[test]
fn list_short_and_long() {
    let e = Env::new();
    assert_eq!(e.ok(&["ls"]), "");
    assert_eq!(e.json(&["ls"]), serde_json::json!([]));
    e.ok(&["create", "b", "--size", "2M"]);
    e.ok(&["create", "a", "--size", "1M"]);
    assert_eq!(e.ok(&["ls"]), "a\nb\n");
    assert_eq!(e.ok(&["ls", "rbd"]), "a\nb\n");
    assert_eq!(e.json(&["list"]), serde_json::json!(["a", "b"]));
    e.ok(&["snap", "create", "a@s1"]);
    e.ok(&["snap", "protect", "a@s1"]);
    e.ok(&["clone", "a@s1", "c"]);
    let long = e.ok(&["ls", "-l"]);
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(lines.len(), 5, "{long}");
    let cols: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(cols, ["NAME", "SIZE", "PARENT", "FMT", "PROT", "LOCK"]);
    assert!(
        lines[1].starts_with("a ") && lines[1].contains("1 MiB"),
        "{long}"
    );
    assert!(
        lines[2].starts_with("a@s1 ") && lines[2].contains("yes"),
        "{long}"
    );
    assert!(lines[3].starts_with("b "), "{long}");
    assert!(
        lines[4].starts_with("c ") && lines[4].contains("rbd/a@s1"),
        "{long}"
    );
    let j = e.json(&["ls", "-l"]);
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[1]["snapshot"]["name"], "s1");
    assert_eq!(rows[3]["parent"]["image"], "a");
    assert_eq!(rows[3]["parent"]["snapshot"], "s1");
    assert_eq!(rows[3]["parent"]["overlap"], MIB as u64);
}

#[test]
fn remove_and_rename() {
    let e = Env::new();
    e.ok(&["create", "a", "--size", "1M"]);
    e.ok(&["create", "b", "--size", "1M"]);
    e.ok(&["pool", "create", "p2"]);
    e.ok(&["rename", "a", "a2"]);
    assert_eq!(e.ok(&["ls"]), "a2\nb\n");
    e.ok(&["mv", "rbd/a2", "rbd/a3"]);
    assert_eq!(e.ok(&["ls"]), "a3\nb\n");
    // A bare destination stays in the source's pool, as in rbd.
    e.ok(&["create", "p2/x", "--size", "1M"]);
    e.ok(&["rename", "p2/x", "y"]);
    assert_eq!(e.ok(&["ls", "p2"]), "y\n");
    e.refused(&["rename", "a3", "p2/a3"], USAGE, "another pool");
    e.refused(&["rename", "a3", "b"], EXISTS, "already exists");
    e.refused(&["rename", "nope", "x"], NOT_FOUND, "does not exist");
    e.refused(&["rename", "a3", "a/b/c"], USAGE, "more than one '/'");
    e.refused(&["rename", "a3", "x@s"], USAGE, "snapshot is not allowed");
    e.write("a3", 0, &[7; 4096]);
    e.write("b", 512 << 10, &[8; 4096]);
    let data = e.store_dir().join("pools").join("rbd");
    let dirs = || {
        let mut names: Vec<String> = std::fs::read_dir(&data)
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(dirs().len(), 2, "one data directory per written image");
    e.ok(&["rm", "a3"]);
    assert_eq!(dirs().len(), 1, "rm left its image's directory behind");
    e.ok(&["remove", "rbd/b"]);
    assert_eq!(e.ok(&["ls"]), "");
    assert_eq!(dirs(), Vec::<String>::new());
    e.refused(&["rm", "b"], NOT_FOUND, "image rbd/b does not exist");
}

#[test]
fn resize_grow_and_shrink() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "2M", "--order", "20"]);
    e.write("img", 0, &random_data(2 * MIB, 3));
    e.ok(&["resize", "img", "--size", "4M"]);
    assert_eq!(e.json(&["info", "img"])["size"], 4 * MIB as u64);
    let err = e.refused(&["resize", "img", "--size", "1M"], REFUSED, "discard data");
    assert!(err.contains("--allow-shrink"), "{err}");
    e.ok(&["resize", "img", "--size", "1M", "--allow-shrink"]);
    assert_eq!(e.json(&["info", "img"])["size"], MIB as u64);
    assert_eq!(e.read_all("img"), random_data(2 * MIB, 3)[..MIB].to_vec());
    // Growing again reads zeros beyond the old end (the tail was discarded).
    e.ok(&["resize", "img", "--size", "2M"]);
    let data = e.read_all("img");
    assert_eq!(&data[..MIB], &random_data(2 * MIB, 3)[..MIB]);
    assert!(data[MIB..].iter().all(|b| *b == 0));
}

#[test]
fn feature_enable_disable() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "4M", "--features", "layering"]);
    e.ok(&["feature", "enable", "img", "exclusive-lock"]);
    e.ok(&["feature", "enable", "img", "object-map", "fast-diff"]);
    assert_eq!(e.json(&["info", "img"])["features_bits"], 29);
    let err = e.refused(
        &["feature", "disable", "img", "object-map"],
        REFUSED,
        "fast-diff",
    );
    assert!(err.contains("vdisk feature disable"), "{err}");
    e.refused(
        &["feature", "disable", "img", "exclusive-lock"],
        REFUSED,
        "needs",
    );
    e.refused(
        &["feature", "enable", "img", "layering"],
        REFUSED,
        "cannot be enabled",
    );
    e.refused(
        &["feature", "enable", "img", "bogus"],
        USAGE,
        "unknown feature",
    );
    e.refused(
        &["feature", "enable", "img", "journaling"],
        UNSUPPORTED,
        "journaling",
    );
    e.refused(
        &["feature", "enable", "nope", "fast-diff"],
        NOT_FOUND,
        "does not exist",
    );
    e.ok(&["feature", "disable", "img", "fast-diff,object-map"]);
    assert_eq!(e.json(&["info", "img"])["features_bits"], 5);
    e.ok(&["feature", "disable", "img", "4"]);
    assert_eq!(
        e.json(&["info", "img"])["features"],
        serde_json::json!(["layering"])
    );
}
