//! Bad input: each gets a clear error, the documented exit code, and leaves
//! the pool unchanged (`meta backup` before and after).

use crate::common::*;

fn setup() -> Env {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "2M", "--order", "20"]);
    e.write("img", 0, &random_data(4096, 90));
    e.ok(&["snap", "create", "img@s"]);
    e
}

#[test]
fn bad_sizes() {
    let e = setup();
    let cases = [
        ("0", "greater than 0"),
        ("-1", "negative"),
        ("10X", "unknown unit"),
        ("99999999999999999999999", "2^64"),
        ("99999999999999999999999G", "2^64"),
        ("999999999999999999999999999999999999999999", "too large"),
        ("16E", "2^64"),
        ("2E", "limit"),
        ("1000B", "multiple of 512"),
        ("", "empty"),
        ("G", "number"),
        ("1.2.3G", "not a number"),
    ];
    for (size, why) in cases {
        let err = e.refused(&["create", "new", "--size", size], USAGE, why);
        assert!(err.contains("vdisk: hint:"), "{err}");
        e.refused(&["resize", "img", "--size", size], USAGE, why);
    }
    e.refused(&["create", "new"], USAGE, "--size");
}

#[test]
fn bad_names() {
    let e = setup();
    let long = "x".repeat(300);
    let cases: Vec<(String, &str)> = vec![
        ("a/b/c".into(), "more than one '/'"),
        ("a@b@c".into(), "more than one '@'"),
        ("img@".into(), "empty"),
        ("..".into(), "'..'"),
        ("rbd/..".into(), "'..'"),
        ("a..b".into(), "'..'"),
        (".hidden".into(), "starts with '.'"),
        ("".into(), "empty"),
        ("rbd/".into(), "empty"),
        ("/img".into(), "empty"),
        (long.clone(), "limit is 255"),
        (format!("rbd/{long}"), "limit is 255"),
        ("a\u{1}b".into(), "control character"),
    ];
    for (name, why) in &cases {
        e.refused(&["create", name, "--size", "1M"], USAGE, why);
        e.refused(&["rename", "img", name], USAGE, why);
        e.refused(&["info", name], USAGE, why);
    }
    // '@' where a snapshot is not allowed, and missing where required.
    e.refused(
        &["create", "a@b", "--size", "1M"],
        USAGE,
        "snapshot is not allowed",
    );
    e.refused(
        &["snap", "create", "img"],
        USAGE,
        "snapshot name is required",
    );
    e.refused(&["snap", "create", "img@a/b"], USAGE, "'/'");
    e.refused(&["snap", "create", "img@.."], USAGE, "'..'");
    e.refused(
        &["snap", "create", &format!("img@{long}")],
        USAGE,
        "limit is 255",
    );
    e.refused(
        &["snap", "rename", "img@s", "a@b@c"],
        USAGE,
        "more than one '@'",
    );
    e.refused(&["snap", "rename", "img@s", ".."], USAGE, "'..'");
    e.refused(&["snap", "rename", "img@s", ""], USAGE, "empty");
}

#[test]
fn missing_things() {
    let e = setup();
    for args in [
        vec!["info", "nope"],
        vec!["rm", "nope"],
        vec!["resize", "nope", "--size", "1M"],
        vec!["snap", "ls", "nope"],
        vec!["snap", "create", "nope@s"],
        vec!["export", "nope", "-"],
        vec!["du", "nope"],
        vec!["diff", "nope"],
        vec!["bench", "nope", "--io-type", "read"],
        vec!["object-map", "rebuild", "nope"],
        vec!["snap", "limit", "set", "nope", "--limit", "3"],
    ] {
        e.refused(&args, NOT_FOUND, "image rbd/nope does not exist");
    }
    for args in [
        vec!["info", "img@nope"],
        vec!["snap", "rm", "img@nope"],
        vec!["snap", "protect", "img@nope"],
        vec!["snap", "unprotect", "img@nope"],
        vec!["snap", "rollback", "img@nope"],
        vec!["export", "img@nope", "-"],
        vec!["children", "img@nope"],
    ] {
        let err = e.refused(&args, NOT_FOUND, "snapshot rbd/img@nope does not exist");
        assert!(err.contains("vdisk snap ls rbd/img"), "{err}");
    }
    for args in [
        vec!["ls", "nopool"],
        vec!["info", "nopool/img"],
        vec!["create", "nopool/img", "--size", "1M"],
        vec!["pool", "rm", "nopool"],
        vec!["meta", "backup", "nopool", "-"],
    ] {
        let err = e.refused(&args, NOT_FOUND, "pool \"nopool\" does not exist");
        assert!(err.contains("vdisk pool ls"), "{err}");
    }
}

#[test]
fn refused_states() {
    let e = setup();
    e.refused(&["create", "img", "--size", "1M"], EXISTS, "already exists");
    e.refused(&["snap", "create", "img@s"], EXISTS, "already exists");
    e.refused(&["rm", "img"], REFUSED, "has 1 snapshot");
    e.refused(
        &["resize", "img", "--size", "1M"],
        REFUSED,
        "--allow-shrink",
    );
    e.ok(&["snap", "protect", "img@s"]);
    e.refused(&["snap", "rm", "img@s"], REFUSED, "is protected");
    e.refused(&["snap", "purge", "img"], REFUSED, "is protected");
    e.ok(&["clone", "img@s", "kid"]);
    e.refused(&["snap", "unprotect", "img@s"], REFUSED, "rbd/kid");
    e.refused(&["rm", "img"], REFUSED, "snapshot");
    e.refused(
        &["bench", "img@s", "--io-type", "write", "--io-total", "4K"],
        REFUSED,
        "read-only",
    );
}

#[test]
fn bad_features() {
    let e = setup();
    let cases = [
        ("object-map", REFUSED, "object-map needs exclusive-lock"),
        ("fast-diff", REFUSED, "fast-diff needs object-map"),
        (
            "exclusive-lock,fast-diff",
            REFUSED,
            "fast-diff needs object-map",
        ),
        ("journaling", REFUSED, "journaling needs exclusive-lock"),
        ("exclusive-lock,journaling", UNSUPPORTED, "journaling"),
        ("striping", UNSUPPORTED, "striping"),
        ("bogus", USAGE, "unknown feature \"bogus\""),
        ("65536", USAGE, "unknown bits"),
        ("-1", USAGE, "unknown feature"),
    ];
    for (f, code, why) in cases {
        let arg = format!("--features={f}");
        e.refused(&["create", "new", "--size", "1M", &arg], code, why);
        e.refused(&["import", "-", "new", &arg], code, why);
    }
    e.ok(&["snap", "protect", "img@s"]);
    e.refused(
        &["clone", "img@s", "kid", "--features", "object-map"],
        REFUSED,
        "exclusive-lock",
    );
    e.refused(
        &["feature", "disable", "img", "object-map"],
        REFUSED,
        "fast-diff",
    );
    e.refused(
        &["feature", "disable", "img", "layering"],
        REFUSED,
        "cannot be disabled",
    );
    e.refused(
        &["feature", "enable", "img", "65536"],
        USAGE,
        "unknown bits",
    );
}

#[test]
fn usage_errors() {
    let e = setup();
    for args in [
        vec!["frobnicate"],
        vec!["create", "x", "--size", "1M", "--order", "30"],
        vec!["create", "x", "--size", "1M", "--order", "11"],
        vec!["create", "x", "--size", "1M", "--order", "abc"],
        vec!["create", "x", "--size", "1M", "--bogus"],
        vec!["snap"],
        vec!["--format", "yaml", "ls"],
        vec!["bench", "img", "--io-type", "sideways"],
        vec!["bench", "img", "--io-type", "read", "--io-threads", "0"],
        vec!["feature", "enable", "img"],
        vec!["snap", "limit", "set", "img", "--limit", "-1"],
    ] {
        e.refused(&args, USAGE, "");
    }
    e.refused(
        &["bench", "img", "--io-type", "read", "--io-size", "0"],
        USAGE,
        "io-size",
    );
    e.refused(
        &["bench", "img", "--io-type", "read", "--io-size", "4M"],
        USAGE,
        "larger than",
    );
    // Help and version succeed.
    assert!(e.ok(&["--help"]).contains("Usage"));
    assert!(e.ok(&["snap", "--help"]).contains("rollback"));
    assert!(e.ok(&["--version"]).contains("vdisk"));
}
