//! `snap schedule add|ls|rm|status` without and with a daemon: records
//! are kept either way, `status` says whether anything runs them, bad
//! input fails with the documented exit code and changes nothing. Runs
//! themselves (with a manual clock, no sleeping) are tested in
//! crates/server/tests/scheduler.rs and the engine's schedule tests.

use crate::common::*;
use crate::serve::{wait_exit, wait_listening};
use std::process::{Child, Command};
use std::time::Duration;

/// `vdisk serve` on the test's directory, stopped (SIGTERM) when dropped.
struct Daemon(Child);

impl Daemon {
    fn start(e: &Env) -> Daemon {
        let mut child = e.spawn(&["serve", "--listen", "127.0.0.1:0"]);
        wait_listening(&mut child);
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let status = wait_exit(&mut self.0, Duration::from_secs(60));
        assert!(status.success() || std::thread::panicking(), "{status:?}");
    }
}

fn ls_json(e: &Env) -> serde_json::Value {
    e.json(&["snap", "schedule", "ls"])
}

#[test]
fn schedules_are_kept_and_listed_without_a_daemon() {
    let e = Env::new();
    e.ok(&["create", "vm", "--size", "10M"]);
    let out = e.run(&[
        "snap", "schedule", "add", "vm", "--every", "1h", "--keep", "3",
    ]);
    assert_success(&["snap", "schedule", "add"], &out);
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vdisk: warning: no daemon runs") && err.contains("vdisk serve"),
        "{err}"
    );
    e.ok(&["snap", "schedule", "add", "rbd/vm", "--every", "1w"]);

    let plain = e.ok(&["snap", "schedule", "ls"]);
    let lines: Vec<&str> = plain.lines().collect();
    assert_eq!(lines.len(), 3, "{plain}");
    assert!(lines[0].starts_with("SPEC") && lines[0].contains("NEXT RUN"));
    assert!(lines[1].starts_with("rbd/vm  1h") && lines[1].contains(" 3 "));
    assert!(lines[2].starts_with("rbd/vm  1w") && lines[2].contains("all"));

    let v = ls_json(&e);
    let l = v.as_array().expect("a list");
    assert_eq!(l.len(), 2);
    assert_eq!(l[0]["spec"], "rbd/vm");
    assert_eq!(l[0]["every"], "1h");
    assert_eq!(l[0]["every_seconds"], 3600);
    assert_eq!(l[0]["keep"], 3);
    assert_eq!(l[0]["state"], "active");
    assert_eq!(l[0]["runs"], 0);
    assert!(l[0]["last_result"].is_null() && l[0]["last_run"].is_null());
    assert!(l[0]["next_run"].as_str().unwrap().ends_with(":00:00Z"));
    assert!(l[1]["keep"].is_null());
    assert_eq!(l[1]["every_seconds"], 604_800);

    let status = e.ok(&["snap", "schedule", "status", "vm"]);
    assert!(
        status.starts_with("daemon: not running on ") && status.contains("RESULT"),
        "{status}"
    );
    let s = e.json(&["snap", "schedule", "status"]);
    assert_eq!(s["daemon_running"], false);
    assert_eq!(s["schedules"].as_array().unwrap().len(), 2);

    // Bad input: clear errors, documented codes, nothing changed.
    let before = ls_json(&e);
    for (args, code, says) in [
        (
            &["snap", "schedule", "add", "vm", "--every", "1h"][..],
            EXISTS,
            "already has a schedule every 1h",
        ),
        (
            &["snap", "schedule", "add", "vm", "--every", "30s"],
            USAGE,
            "minimum of 1m",
        ),
        (
            &["snap", "schedule", "add", "vm", "--every", "1x"],
            USAGE,
            "not a unit",
        ),
        (
            &["snap", "schedule", "add", "vm", "--every", "90"],
            USAGE,
            "needs a unit",
        ),
        (
            &[
                "snap", "schedule", "add", "vm", "--every", "2h", "--keep", "0",
            ],
            USAGE,
            "--keep 0",
        ),
        (
            &[
                "snap", "schedule", "add", "vm", "--every", "2h", "--keep", "-1",
            ],
            USAGE,
            "error",
        ),
        (
            &["snap", "schedule", "add", "vm@s", "--every", "2h"],
            USAGE,
            "snapshot is not allowed",
        ),
        (
            &["snap", "schedule", "add", "nope", "--every", "2h"],
            NOT_FOUND,
            "does not exist",
        ),
        (&["snap", "schedule", "add", "vm"], USAGE, "--every"),
        (
            &["snap", "schedule", "rm", "vm", "--every", "2h"],
            NOT_FOUND,
            "no schedule every 2h",
        ),
        (
            &["snap", "schedule", "rm", "other"],
            NOT_FOUND,
            "no snapshot schedule",
        ),
        (
            &["snap", "schedule", "rm", "vm", "--every", "soon"],
            USAGE,
            "invalid interval",
        ),
        (
            &["snap", "schedule", "ls", "a/b/c"],
            USAGE,
            "more than one '/'",
        ),
    ] {
        let err = e.fail(args, code);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(before, ls_json(&e));

    e.ok(&["snap", "schedule", "rm", "vm", "--every", "1h"]);
    assert_eq!(ls_json(&e).as_array().unwrap().len(), 1);
    e.ok(&["snap", "schedule", "rm", "vm"]);
    assert_eq!(e.ok(&["snap", "schedule", "ls"]), "");
    assert!(e
        .ok(&["snap", "schedule", "status"])
        .ends_with("schedules: none\n"));
}

#[test]
fn schedule_verbs_work_through_a_daemon() {
    let e = Env::new();
    e.ok(&["create", "vm", "--size", "10M"]);
    e.ok(&[
        "snap", "schedule", "add", "vm", "--every", "1w", "--keep", "2",
    ]);
    let ls_alone = e.ok(&["snap", "schedule", "ls"]);
    let json_alone = ls_json(&e);

    let d = Daemon::start(&e);
    assert_eq!(e.ok(&["snap", "schedule", "ls"]), ls_alone);
    assert_eq!(ls_json(&e), json_alone);
    let s = e.json(&["snap", "schedule", "status"]);
    assert_eq!(s["daemon_running"], true);
    assert!(e
        .ok(&["snap", "schedule", "status"])
        .starts_with("daemon: running"));

    // Added through the daemon: no warning, and it is kept.
    let out = e.run(&["snap", "schedule", "add", "vm", "--every", "1d"]);
    assert_success(&["snap", "schedule", "add"], &out);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    e.fail(&["snap", "schedule", "add", "vm", "--every", "1d"], EXISTS);
    e.fail(
        &["snap", "schedule", "rm", "vm", "--every", "1h"],
        NOT_FOUND,
    );
    e.ok(&["snap", "schedule", "rm", "vm", "--every", "1w"]);
    drop(d);

    let l = ls_json(&e);
    let l = l.as_array().unwrap();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["every"], "1d");
}
