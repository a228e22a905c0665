//! `clone`, `children`, `flatten`, and the refusals around them.

use crate::common::*;

#[test]
fn clone_reads_parent_then_diverges_then_flattens() {
    let e = Env::new();
    e.ok(&["create", "base", "--size", "4M", "--order", "20"]);
    let base = random_data(4 * MIB, 30);
    e.write("base", 0, &base);
    e.ok(&["snap", "create", "base@gold"]);

    // Cloning needs a protected snapshot.
    let err = e.refused(&["clone", "base@gold", "vm1"], REFUSED, "not protected");
    assert!(err.contains("vdisk snap protect rbd/base@gold"), "{err}");
    e.refused(
        &["clone", "base", "vm1"],
        USAGE,
        "snapshot name is required",
    );
    e.ok(&["snap", "protect", "base@gold"]);
    e.ok(&["clone", "base@gold", "vm1"]);
    e.ok(&["pool", "create", "vms"]);
    e.ok(&[
        "clone",
        "rbd/base@gold",
        "vms/vm2",
        "--features",
        "layering",
    ]);

    // Reads through to the parent.
    assert_eq!(e.read_all("vm1"), base);
    let info = e.ok(&["info", "vm1"]);
    assert!(info.contains("\tparent: rbd/base@gold\n"), "{info}");
    assert!(info.contains("\toverlap: 4 MiB\n"), "{info}");
    let j = e.json(&["info", "vm1"]);
    assert_eq!(j["parent"]["pool"], "rbd");
    assert_eq!(j["parent"]["overlap"], 4 * MIB as u64);
    assert_eq!(j["op_features"], serde_json::json!(["clone-child"]));

    // Diverges: writes to the clone don't touch the parent, and back.
    let patch = random_data(MIB, 31);
    e.write("vm1", MIB as u64, &patch);
    let mut vm1 = base.clone();
    vm1[MIB..2 * MIB].copy_from_slice(&patch);
    assert_eq!(e.read_all("vm1"), vm1);
    assert_eq!(e.read_all("base@gold"), base);
    e.write("base", 0, &random_data(MIB, 32));
    assert_eq!(e.read_all("vm1"), vm1);

    // children
    assert_eq!(e.ok(&["children", "base@gold"]), "rbd/vm1\nvms/vm2\n");
    let j = e.json(&["children", "base@gold"]);
    assert_eq!(
        j,
        serde_json::json!([{"pool": "rbd", "image": "vm1"}, {"pool": "vms", "image": "vm2"}])
    );
    assert_eq!(e.ok(&["children", "base"]), "rbd/vm1\nvms/vm2\n");

    // The parent can't lose what clones read.
    let err = e.refused(&["snap", "unprotect", "base@gold"], REFUSED, "clone");
    assert!(err.contains("vdisk flatten"), "{err}");
    e.refused(&["snap", "rm", "base@gold"], REFUSED, "protected");
    let err = e.refused(&["rm", "base"], REFUSED, "snapshot");
    assert!(err.contains("vdisk: hint:"), "{err}");

    // Flatten both, then the parent snapshot is free.
    e.ok(&["flatten", "vm1"]);
    e.ok(&["flatten", "vms/vm2"]);
    assert_eq!(e.read_all("vm1"), vm1);
    assert_eq!(e.read_all("vms/vm2"), base);
    assert!(e.json(&["info", "vm1"])["parent"].is_null());
    assert_eq!(e.ok(&["children", "base@gold"]), "");
    e.refused(&["flatten", "vm1"], USAGE, "not a clone");
    e.ok(&["snap", "unprotect", "base@gold"]);
    e.ok(&["snap", "rm", "base@gold"]);
    e.ok(&["rm", "base"]);
    assert_eq!(e.read_all("vm1"), vm1);
}

#[test]
fn clone_errors() {
    let e = Env::new();
    e.ok(&[
        "create",
        "base",
        "--size",
        "1M",
        "--features",
        "exclusive-lock",
    ]);
    e.ok(&["snap", "create", "base@s"]);
    e.ok(&["snap", "protect", "base@s"]);
    e.refused(&["clone", "base@s", "c"], REFUSED, "layering");
    e.ok(&["create", "p", "--size", "1M"]);
    e.ok(&["snap", "create", "p@s"]);
    e.ok(&["snap", "protect", "p@s"]);
    e.refused(&["clone", "p@nope", "c"], NOT_FOUND, "does not exist");
    e.refused(&["clone", "nope@s", "c"], NOT_FOUND, "does not exist");
    e.refused(&["clone", "p@s", "p"], EXISTS, "already exists");
    e.refused(
        &["clone", "p@s", "c", "--features", "exclusive-lock"],
        REFUSED,
        "layering",
    );
    e.refused(&["clone", "p@s", "c@x"], USAGE, "snapshot is not allowed");
    e.refused(&["clone", "p@s", "nopool/c"], NOT_FOUND, "nopool");
    e.refused(&["children", "p@nope"], NOT_FOUND, "does not exist");
    e.refused(&["flatten", "nope"], NOT_FOUND, "does not exist");
}

/// Principle 2: an object map may over-report, never under-report (flatten
/// of a clone with snapshots used to leave their maps under-reporting).
#[test]
fn flatten_with_snapshots_keeps_object_maps_valid() {
    let e = Env::new();
    e.ok(&["create", "base", "--size", "4M", "--order", "20"]);
    e.write("base", 0, &random_data(4 * MIB, 33));
    e.ok(&["snap", "create", "base@s"]);
    e.ok(&["snap", "protect", "base@s"]);
    e.ok(&["clone", "base@s", "c1"]);
    e.ok(&["snap", "create", "c1@x"]);
    e.ok(&["flatten", "c1"]);
    e.ok(&["check"]);
}

/// Shrinking a clone only needs a smaller overlap (as in rbd), not a
/// copy-up of the parent's data in the discarded tail.
#[test]
fn shrinking_a_clone_copies_nothing() {
    let e = Env::new();
    e.ok(&["create", "base", "--size", "4M", "--order", "20"]);
    e.write("base", 0, &random_data(4 * MIB, 34));
    e.ok(&["snap", "create", "base@s"]);
    e.ok(&["snap", "protect", "base@s"]);
    e.ok(&["clone", "base@s", "c1"]);
    e.ok(&["resize", "c1", "--size", "1M", "--allow-shrink"]);
    assert_eq!(e.json(&["du", "c1"])["images"][0]["used"], 0);
    let j = e.json(&["check"]);
    assert_eq!(j["warnings"], serde_json::json!([]), "{j}");
}
