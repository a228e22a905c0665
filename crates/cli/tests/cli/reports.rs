//! `du`, `diff`, `object-map check|rebuild`, `check`.

use crate::common::*;

#[test]
fn diff_lists_written_extents() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "8M", "--order", "20"]);
    assert_eq!(e.json(&["diff", "img"]), serde_json::json!([]));
    e.write("img", 0, &random_data(8192, 50));
    e.write("img", 3 * MIB as u64, &random_data(MIB, 51));
    let j = e.json(&["diff", "img"]);
    assert_eq!(
        j,
        serde_json::json!([
            {"offset": 0, "length": 8192, "exists": true},
            {"offset": 3 * MIB, "length": MIB, "exists": true},
        ])
    );
    e.ok(&["snap", "create", "img@s1"]);
    e.write("img", 5 * MIB as u64 + 4096, &random_data(4096, 52));
    e.zero("img", 3 * MIB as u64, 65536);
    let j = e.json(&["diff", "img", "--from-snap", "s1"]);
    assert_eq!(
        j,
        serde_json::json!([
            {"offset": 3 * MIB, "length": 65536, "exists": false},
            {"offset": 5 * MIB + 4096, "length": 4096, "exists": true},
        ])
    );
    let plain = e.ok(&["diff", "rbd/img", "--from-snap", "s1"]);
    let rows: Vec<Vec<&str>> = plain
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["Offset", "Length", "Type"]);
    assert_eq!(rows[1], [(3 * MIB).to_string().as_str(), "65536", "zero"]);
    assert_eq!(
        rows[2],
        [(5 * MIB + 4096).to_string().as_str(), "4096", "data"]
    );
    assert_eq!(rows.len(), 3);
    // A snapshot against an older one.
    e.ok(&["snap", "create", "img@s2"]);
    e.write("img", 0, &random_data(4096, 53));
    assert_eq!(e.json(&["diff", "img@s2", "--from-snap", "s1"]), j);
    e.refused(
        &["diff", "img", "--from-snap", "nope"],
        NOT_FOUND,
        "does not exist",
    );
    e.refused(&["diff", "img@s1", "--from-snap", "s2"], USAGE, "not older");
    e.refused(&["diff", "nope"], NOT_FOUND, "does not exist");
}

fn used(e: &Env, spec: &str) -> u64 {
    let j = e.json(&["du", spec]);
    j["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["used"].as_u64().unwrap())
        .sum()
}

#[test]
fn du_grows_and_shrinks() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "8M", "--order", "20"]);
    assert_eq!(used(&e, "img"), 0);
    e.write("img", 0, &random_data(2 * MIB, 60));
    assert_eq!(used(&e, "img"), 2 * MIB as u64);
    let j = e.json(&["du", "img"]);
    for f in ["images", "total_provisioned", "total_used"] {
        assert!(j.get(f).is_some(), "du json lacks {f}");
    }
    assert_eq!(j["images"][0]["name"], "img");
    assert_eq!(j["images"][0]["provisioned"], 8 * MIB as u64);
    e.zero("img", 0, MIB as u64);
    assert_eq!(used(&e, "img"), MIB as u64);
    e.ok(&["snap", "create", "img@s"]);
    e.write("img", 4 * MIB as u64, &random_data(MIB, 61));
    let j = e.json(&["du", "img"]);
    let rows = j["images"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{j}");
    assert_eq!(rows[0]["name"], "img@s");
    assert_eq!(rows[0]["used"], MIB as u64);
    assert_eq!(rows[1]["name"], "img");
    assert_eq!(rows[1]["used"], MIB as u64);
    assert_eq!(j["total_used"], 2 * MIB as u64);
    assert_eq!(j["total_provisioned"], 8 * MIB as u64);
    e.ok(&["resize", "img", "--size", "4M", "--allow-shrink"]);
    assert_eq!(e.json(&["du", "img"])["images"][1]["used"], 0);

    // Whole pool, with the <TOTAL> row.
    e.ok(&["create", "other", "--size", "1M"]);
    let plain = e.ok(&["du"]);
    let rows: Vec<Vec<&str>> = plain
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAME", "PROVISIONED", "USED"]);
    assert_eq!(rows.last().unwrap()[0], "<TOTAL>");
    assert_eq!(rows.len(), 5, "{plain}");
    let j = e.json(&["du"]);
    assert_eq!(j["images"].as_array().unwrap().len(), 3);
    assert_eq!(j["total_provisioned"], 5 * MIB as u64);
    assert_eq!(
        e.json(&["du", "img@s"])["images"].as_array().unwrap().len(),
        1
    );
    e.refused(&["du", "img@nope"], NOT_FOUND, "does not exist");
    e.refused(&["du", "-p", "nope"], NOT_FOUND, "does not exist");
}

#[test]
fn object_map_and_check() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "4M", "--order", "20"]);
    e.ok(&["create", "plain", "--size", "4M", "--features", "layering"]);
    e.write("img", 0, &random_data(2 * MIB, 70));
    let out = e.ok(&["object-map", "check", "img"]);
    assert!(out.contains("consistent"), "{out}");
    let j = e.json(&["object-map", "check", "img"]);
    assert_eq!(j["image"], "rbd/img");
    assert_eq!(j["errors"], serde_json::json!([]));
    assert!(j.get("warnings").is_some());
    e.ok(&["object-map", "rebuild", "img"]);
    e.refused(&["object-map", "rebuild", "plain"], USAGE, "object-map");
    e.refused(&["object-map", "check", "plain"], USAGE, "object-map");
    e.refused(
        &["object-map", "check", "nope"],
        NOT_FOUND,
        "does not exist",
    );

    let out = e.ok(&["check"]);
    assert!(out.contains("no errors found"), "{out}");
    let j = e.json(&["check"]);
    for f in [
        "pools",
        "images",
        "objects",
        "data_objects",
        "errors",
        "warnings",
        "repaired",
    ] {
        assert!(j.get(f).is_some(), "check json lacks {f}");
    }
    assert_eq!(j["images"], 2);

    // Damage: remove a data object of img.
    let pool_dir = e.store_dir().join("pools").join("rbd");
    let victim = find_file(&pool_dir).expect("a data object");
    std::fs::remove_file(&victim).unwrap();
    let out = e.run(&["check"]);
    let err = check_failure(&["check"], &out, CORRUPT);
    assert!(err.contains("error(s)"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("error: rbd/img"), "{stdout}");
    let out = e.run(&["--format", "json", "check"]);
    check_failure(&["check"], &out, CORRUPT);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!j["errors"].as_array().unwrap().is_empty());
    e.fail(&["object-map", "check", "img"], CORRUPT);
}

fn find_file(p: &std::path::Path) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(p).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(f) = find_file(&path) {
                return Some(f);
            }
        } else {
            return Some(path);
        }
    }
    None
}

#[test]
fn check_repair_removes_orphans() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "2M", "--order", "20"]);
    e.write("img", 0, &random_data(MIB, 71));
    // An orphan data object, as an interrupted removal leaves behind.
    let pool_dir = e.store_dir().join("pools").join("rbd");
    let real = find_file(&pool_dir).expect("a data object");
    let orphan = real.with_file_name("000000000007.1");
    std::fs::copy(&real, &orphan).unwrap();
    // And the data of an image whose removal never got to its data.
    let gone_dir = pool_dir.join("000000ff");
    std::fs::create_dir(&gone_dir).unwrap();
    std::fs::copy(&real, gone_dir.join("000000000000.1")).unwrap();
    let j = e.json(&["check"]);
    assert!(!j["warnings"].as_array().unwrap().is_empty(), "{j}");
    let j = e.json(&["check", "--repair"]);
    assert!(!j["repaired"].as_array().unwrap().is_empty(), "{j}");
    assert_eq!(j["remaining_errors"], serde_json::json!([]));
    assert!(!orphan.exists());
    assert!(!gone_dir.exists(), "the removed image's directory was kept");
    assert_eq!(e.json(&["check"])["warnings"], serde_json::json!([]));
    assert_eq!(e.read_all("img")[..MIB], random_data(MIB, 71)[..]);
}
