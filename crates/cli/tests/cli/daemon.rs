//! The CLI with a daemon running (`vdisk serve`): commands go through its
//! management API and print the same, with the same exit codes, as
//! without it; snapshots while a client writes; rollback, removal and
//! second writers refused while clients are connected; flatten as a job;
//! `status`; `/metrics`; the API socket's mode.

use crate::common::*;
use crate::serve::{wait_exit, wait_listening};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `vdisk serve` on the test's data directory, stopped (SIGTERM) when
/// dropped.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    fn start(e: &Env, extra: &[&str]) -> Daemon {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = e.spawn(&args);
        wait_listening(&mut child);
        Daemon {
            child,
            dir: e.store_dir(),
        }
    }

    /// `nbd+unix:///EXPORT?socket=DIR/nbd.sock`.
    fn uri(&self, export: &str) -> String {
        format!(
            "nbd+unix:///{export}?socket={}",
            self.dir.join("nbd.sock").display()
        )
    }

    fn api(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = wait_exit(&mut self.child, Duration::from_secs(60));
        assert!(
            status.success() || std::thread::panicking(),
            "serve exited with {status:?}"
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// An interactive `qemu-io` on an export: a client that stays connected
/// between the commands the test gives it.
struct Qio {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl Qio {
    fn start(uri: &str) -> Qio {
        Self::start_with(&["-f", "raw", uri])
    }

    /// Read-only (a snapshot export).
    fn start_ro(uri: &str) -> Qio {
        Self::start_with(&["-r", "-f", "raw", uri])
    }

    fn start_with(args: &[&str]) -> Qio {
        let mut child = spawn(
            Command::new("qemu-io")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let stdin = child.stdin.take().expect("stdin");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Qio { child, stdin, out }
    }

    /// Runs one command; waits for the line saying it completed.
    fn cmd(&mut self, cmd: &str, done: &str) {
        writeln!(self.stdin, "{cmd}").expect("qemu-io stdin");
        self.stdin.flush().expect("flush");
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = self.out.read_line(&mut line).expect("qemu-io output");
            seen.push_str(&line);
            assert!(n > 0, "qemu-io ended during {cmd:?}: {seen}");
            assert!(
                !line.contains("failed") && !line.contains("error"),
                "{cmd:?}: {seen}"
            );
            if line.contains(done) {
                return;
            }
        }
    }

    fn quit(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let status = self.child.wait().expect("wait qemu-io");
        assert!(status.success(), "qemu-io: {status:?}");
    }
}

/// Runs a client tool; returns its output.
fn tool(program: &str, args: &[&str]) -> Output {
    output(Command::new(program).args(args))
}

/// One HTTP/1.1 request on the API socket, as curl --unix-socket would
/// send it; returns the status and the body.
fn http(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: vdisk\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("headers");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

/// Waits until the daemon has no client connected to `spec` (a client
/// that exited is unregistered when the daemon sees its socket close).
fn wait_disconnected(e: &Env, spec: &str) {
    let start = Instant::now();
    while !e.ok(&["status", spec]).contains("connections: none") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{spec} still served"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn commands_print_and_exit_the_same_through_the_daemon() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "4M", "--order", "20"]);
    e.write("img", 0, &random_data(64 * 1024, 1));
    e.ok(&["snap", "create", "img@s1"]);
    e.ok(&["pool", "create", "p2"]);
    e.ok(&["create", "p2/other", "--size", "1M"]);
    let cases: &[&[&str]] = &[
        &["ls"],
        &["ls", "-l"],
        &["--format", "json", "ls", "-l"],
        &["ls", "p2"],
        &["info", "img"],
        &["--format", "json", "info", "img@s1"],
        &["snap", "ls", "img"],
        &["--format", "json", "snap", "ls", "img"],
        &["du"],
        &["--format", "json", "du", "img"],
        &["diff", "img"],
        &["pool", "ls", "-l"],
        &["children", "img"],
        &["check"],
        &["object-map", "check", "img"],
        &["meta", "backup", "rbd", "-"],
        // Bad input: the same errors, hints and exit codes.
        &["info", "nosuch"],
        &["info", "nosuch/img"],
        &["create", "img", "--size", "1M"],
        &["create", "new", "--size", "0"],
        &["create", "bad@name", "--size", "1M"],
        &["create", "new", "--size", "1M", "--features", "journaling"],
        &["resize", "img", "--size", "1M"],
        &["rm", "img"],
        &["snap", "rm", "img@nope"],
        &["snap", "create", "img@s1"],
        &["snap", "rollback", "nosuch@s"],
        &["clone", "img@s1", "c"],
        &["feature", "enable", "img", "bogus"],
        &["flatten", "img"],
        &["pool", "rm", "p2"],
        &["rename", "img", "p2/img"],
        &["export", "nosuch", "-"],
        &["meta", "restore", "rbd", "/nonexistent/backup.json"],
    ];
    let before: Vec<Output> = cases.iter().map(|c| e.run(c)).collect();
    let d = Daemon::start(&e, &[]);
    for (args, want) in cases.iter().zip(&before) {
        let got = e.run(args);
        assert_eq!(
            (got.status.code(), text(&got.stdout), text(&got.stderr)),
            (want.status.code(), text(&want.stdout), text(&want.stderr)),
            "vdisk {args:?} differs with the daemon running"
        );
    }

    // Changes go through the daemon too.
    e.ok(&["create", "vm1", "--size", "8M"]);
    assert!(e.ok(&["info", "vm1"]).contains("size 8 MiB"));
    e.ok(&["snap", "create", "vm1@a"]);
    assert_eq!(e.json(&["snap", "ls", "vm1"])[0]["name"], "a");
    e.ok(&["resize", "vm1", "--size", "16M"]);
    e.ok(&["rename", "vm1", "vm2"]);
    e.ok(&["snap", "rm", "vm2@a"]);
    e.ok(&["rm", "vm2"]);
    assert_eq!(e.ok(&["ls"]), "img\n");
    // Usage errors never reach the daemon (clap), same as always.
    e.fail(&["create"], USAGE);
    // A second server on the directory is refused, naming the first.
    let err = e.fail(&["serve", "--listen", "none"], BUSY);
    assert!(err.contains("in use by pid"), "{err}");
    d.stop();
    // After it stopped, the directory is opened directly again.
    assert_eq!(e.ok(&["ls"]), "img\n");
}

#[test]
fn snapshots_and_refusals_while_a_client_writes() {
    if !have("qemu-io") {
        eprintln!("SKIPPED: qemu-io is not installed");
        return;
    }
    let e = Env::new();
    e.ok(&["create", "img", "--size", "8M"]);
    e.ok(&["create", "img2", "--size", "8M"]);
    let d = Daemon::start(&e, &[]);
    let mut q = Qio::start(&d.uri("img"));
    q.cmd("write -P 0xaa 0 1M", "wrote ");
    // The snapshot is taken while the client is connected: it holds every
    // write completed before it.
    e.ok(&["snap", "create", "img@s1"]);
    q.cmd("write -P 0xbb 0 1M", "wrote ");

    // status lists the connection.
    let st = e.json(&["status"]);
    let conns = st["connections"].as_array().expect("connections");
    assert_eq!(conns.len(), 1, "{st}");
    assert_eq!(conns[0]["export"], "rbd/img");
    assert_eq!(conns[0]["mode"], "rw");
    assert!(conns[0]["client"]
        .as_str()
        .is_some_and(|c| c.starts_with("unix pid=")));
    assert!(conns[0]["bytes_received"].as_u64().unwrap() >= 2 << 20);
    let plain = e.ok(&["status", "img"]);
    assert!(
        plain.contains("rbd/img") && plain.contains(" rw "),
        "{plain}"
    );
    assert!(e.ok(&["status", "img2"]).contains("connections: none"));

    // The snapshot reads what was written before it (another process
    // reading a snapshot is no second writer).
    let out = tool(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0xaa 0 1M",
            &d.uri("img@s1"),
        ],
    );
    assert!(
        out.status.success() && !text(&out.stdout).contains("verification failed"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // A second writer (another process) is refused, saying why.
    let out = tool("qemu-io", &["-f", "raw", "-c", "read 0 4k", &d.uri("img")]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("one writer per image"),
        "{}",
        text(&out.stderr)
    );

    // Rollback under a connected writer: refused unless --force.
    let err = e.refused(&["snap", "rollback", "img@s1"], REFUSED, "--force");
    assert!(err.contains("open read-write by 1 client(s)"), "{err}");
    // Removal of a served image: refused.
    let mut q2 = Qio::start(&d.uri("img2"));
    q2.cmd("write -P 0x11 0 4k", "wrote ");
    e.refused(&["rm", "img2"], REFUSED, "in use by 1 client(s)");
    // Resize: takes effect for new connections; the connected one is told
    // about on stderr.
    let out = e.run(&["resize", "img2", "--size", "16M"]);
    assert_success(&["resize"], &out);
    assert!(text(&out.stderr).contains("keep the old size"));
    q2.quit();
    wait_disconnected(&e, "img2");
    if have("qemu-img") {
        let info = tool("qemu-img", &["info", "--output=json", &d.uri("img2")]);
        assert!(info.status.success(), "{}", text(&info.stderr));
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
        assert_eq!(v["virtual-size"], 16 << 20);
    }

    // --force rolls back under the writer.
    e.ok(&["snap", "rollback", "--force", "img@s1"]);
    q.quit();
    wait_disconnected(&e, "img");
    // With nobody connected no --force is needed; the head is the
    // snapshot's content.
    e.ok(&["snap", "rollback", "img@s1"]);
    // A snapshot being read (a backup) is not removed under its reader:
    // its space would be trimmed.
    e.ok(&["snap", "create", "img@s2"]);
    let mut r = Qio::start_ro(&d.uri("img@s2"));
    r.cmd("read -P 0xaa 0 4k", "read ");
    let err = e.refused(&["snap", "rm", "img@s2"], REFUSED, "disconnect them first");
    assert!(
        err.contains("rbd/img@s2 is being read by 1 client(s)"),
        "{err}"
    );
    e.refused(&["snap", "purge", "img"], REFUSED, "disconnect them first");
    assert!(e.ok(&["snap", "ls", "img"]).contains("s2"));
    r.quit();
    wait_disconnected(&e, "img");
    e.ok(&["snap", "rm", "img@s2"]);
    let out = tool(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0xaa 0 1M", &d.uri("img")],
    );
    assert!(
        out.status.success() && !text(&out.stdout).contains("verification failed"),
        "{}",
        text(&out.stdout)
    );
    d.stop();
}

#[test]
fn flatten_runs_as_a_job() {
    let e = Env::new();
    e.ok(&["create", "base", "--size", "8M", "--order", "20"]);
    e.write("base", 0, &random_data(8 * MIB, 5));
    e.ok(&["snap", "create", "base@g"]);
    e.ok(&["snap", "protect", "base@g"]);
    e.ok(&["clone", "base@g", "c1"]);
    e.ok(&["clone", "base@g", "c2"]);
    // Without a daemon there is no job to hand back.
    e.refused(&["flatten", "--no-wait", "c1"], REFUSED, "daemon");

    let d = Daemon::start(&e, &[]);
    // Waits, prints nothing, as without a daemon.
    assert_eq!(e.ok(&["flatten", "c1"]), "");
    assert!(e.json(&["info", "c1"])["parent"].is_null());
    let id: u64 = e
        .ok(&["flatten", "--no-wait", "c2"])
        .trim()
        .parse()
        .expect("a job id");
    let start = Instant::now();
    let job = loop {
        let st = e.json(&["status", "c2"]);
        let job = st["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .find(|j| j["id"] == id)
            .cloned()
            .expect("the job is listed");
        assert_ne!(job["state"], "failed", "{job}");
        if job["state"] == "done" {
            break job;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{job}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(job["kind"], "flatten");
    assert_eq!(job["spec"], "rbd/c2");
    assert_eq!(job["done"], job["total"], "{job}");
    assert!(e.json(&["info", "c2"])["parent"].is_null());
    // Both jobs are in the plain listing.
    let plain = e.ok(&["status"]);
    let rows: Vec<&str> = plain
        .lines()
        .filter(|l| l.contains("flatten") && l.contains("done"))
        .collect();
    assert_eq!(rows.len(), 2, "{plain}");
    assert!(
        rows[1].contains("rbd/c2") && rows[1].contains("(100%)"),
        "{plain}"
    );
    // A job that fails reports its error and exit code (not a clone: 2).
    let err = e.fail(&["flatten", "c1"], USAGE);
    assert!(err.contains("not a clone"), "{err}");
    let st = e.json(&["status", "c1"]);
    assert!(st["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["state"] == "failed" && j["error"]["kind"] == "invalid_input"));
    d.stop();
}

#[test]
fn snap_rm_under_the_daemon_trims_in_the_background() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "8M", "--order", "20"]);
    e.write("img", 0, &random_data(8 * MIB, 1));
    e.ok(&["snap", "create", "img@old"]);
    e.write("img", 0, &random_data(8 * MIB, 2));
    let d = Daemon::start(&e, &[]);
    // Returns once the snapshot is gone from the metadata; the space it
    // alone held is released by a `trim` job of the daemon's.
    e.ok(&["snap", "rm", "img@old"]);
    assert!(!e.ok(&["snap", "ls", "img"]).contains("old"));
    let start = Instant::now();
    let job = loop {
        let st = e.json(&["status", "img"]);
        let trim = st["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .find(|j| j["kind"] == "trim" && j["state"] == "done")
            .cloned();
        if let Some(job) = trim {
            break job;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{st}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(job["spec"], "rbd/img");
    assert_eq!(job["done"], job["total"], "{job}");
    assert!(job["total"].as_u64().unwrap() >= 8, "{job}");
    // Nothing left queued: check has no backlog warning.
    let out = e.ok(&["check"]);
    assert!(!out.contains("queued for trimming"), "{out}");
    d.stop();
    // The head still reads what was written last.
    let out = path_str(&e.file("img.raw"));
    e.ok(&["export", "img", &out]);
    assert!(std::fs::read(&out).unwrap() == random_data(8 * MIB, 2));
}

#[test]
fn status_without_a_daemon() {
    let e = Env::new();
    e.ok(&["ls"]);
    let out = e.ok(&["status"]);
    assert_eq!(
        out,
        format!("no daemon is running on {}\n", e.store_dir().display())
    );
    let j = e.json(&["status"]);
    assert!(j["daemon"].is_null());
    assert_eq!(j["connections"], serde_json::json!([]));
    assert_eq!(j["jobs"], serde_json::json!([]));
    e.fail(&["status", "bad@@spec"], USAGE);
    // A stale API socket (its daemon died) is ignored: commands open the
    // directory themselves.
    let stale = e.store_dir().join("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(e.ok(&["status"]).starts_with("no daemon is running"));
    e.ok(&["create", "img", "--size", "1M"]);
    // And the next daemon replaces it.
    let d = Daemon::start(&e, &[]);
    assert!(e.ok(&["status"]).starts_with("daemon: pid "));
    d.stop();
    assert!(!stale.exists());
}

#[test]
fn files_metadata_and_the_api_itself() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "2M", "--order", "20"]);
    let data = random_data(2 * MIB, 8);
    e.write("img", 0, &data);
    let backup = e.backup();
    let d = Daemon::start(&e, &[]);

    // The API socket is private.
    let mode = std::fs::metadata(d.api())
        .expect("api.sock")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // Files: the daemon reads and writes them itself (absolute paths;
    // the CLI makes relative ones absolute).
    let src = e.put_file("in.raw", &data);
    e.ok(&["import", &src, "imported"]);
    let out = output(
        Command::new(env!("CARGO_BIN_EXE_vdisk"))
            .current_dir(e.file(""))
            .arg("--dir")
            .arg(e.store_dir())
            .args(["export", "imported", "out.raw"]),
    );
    assert_success(&["export", "imported", "out.raw"], &out);
    assert_eq!(std::fs::read(e.file("out.raw")).expect("read"), data);
    e.ok(&["cp", "img", "copy"]);
    // Bulk data through the client's stdin/stdout: refused, with what to
    // use instead.
    let err = e.refused(&["export", "img", "-"], REFUSED, "nbdcopy");
    assert!(err.contains("not supported while the daemon"), "{err}");
    let out = e.run_stdin(&["import", "-", "fromstdin"], &data);
    let err = check_failure(&["import", "-"], &out, REFUSED);
    assert!(err.contains("qemu-img convert"), "{err}");
    e.refused(
        &["bench", "img", "--io-type", "read", "--io-total", "1M"],
        REFUSED,
        "fio",
    );
    // Metadata backup and restore through the daemon (stdin is sent).
    e.ok(&["rm", "copy"]);
    e.ok(&["rm", "imported"]);
    assert_eq!(e.backup(), backup);
    let out = e.run_stdin(&["meta", "restore", "rbd", "-"], backup.as_bytes());
    assert_success(&["meta", "restore", "rbd", "-"], &out);
    assert_eq!(e.backup(), backup);

    // The API as orchestrators use it: JSON in, JSON out.
    let (code, body) = http(
        &d.api(),
        "POST",
        "/v1/commands",
        r#"{"command": {"info": {"spec": "img"}}, "format": "json"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(reply["exit_code"], 0, "{reply}");
    let info: serde_json::Value =
        serde_json::from_str(reply["stdout"].as_str().unwrap()).expect("info json");
    assert_eq!(info["size"], 2 * MIB as u64);
    let (code, body) = http(
        &d.api(),
        "POST",
        "/v1/commands",
        r#"{"command": {"snap": {"rm": {"spec": "img@nope"}}}}"#,
    );
    assert_eq!(code, 200);
    let reply: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(reply["exit_code"], NOT_FOUND, "{reply}");
    assert_eq!(reply["error"]["kind"], "not_found");
    let (code, body) = http(
        &d.api(),
        "POST",
        "/v1/commands",
        r#"{"command": {"info": {"spec": "img", "typo": 1}}}"#,
    );
    assert_eq!(code, 200);
    let reply: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(reply["exit_code"], USAGE, "{reply}");
    assert!(
        reply["stderr"].as_str().unwrap().contains("typo"),
        "{reply}"
    );
    let (code, _) = http(&d.api(), "POST", "/v1/commands", "not json");
    assert_eq!(code, 400);
    // An error quotes what it refuses, but not 1 MiB of it (twice).
    let huge = "x".repeat(1 << 20);
    for body in [
        format!(r#"{{"command": "{huge}"}}"#),
        format!(r#"{{"command": {{"info": {{"spec": "img"}}}}, "format": "{huge}"}}"#),
        format!(r#"{{"{huge}": 1}}"#),
    ] {
        let (code, reply) = http(&d.api(), "POST", "/v1/commands", &body);
        assert!(code == 200 || code == 400, "{code}");
        assert!(reply.len() < 16 << 10, "a {} byte reply", reply.len());
        assert!(reply.contains("more bytes)"), "{reply}");
        serde_json::from_str::<serde_json::Value>(&reply).expect("still JSON");
    }

    // /metrics after a client read the image.
    if have("qemu-io") {
        let out = tool("qemu-io", &["-f", "raw", "-c", "read 0 1M", &d.uri("img")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let (code, metrics) = http(&d.api(), "GET", "/metrics", "");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("# TYPE vdisk_nbd_connections gauge"),
        "{metrics}"
    );
    if have("qemu-io") {
        assert!(
            metrics.contains("vdisk_nbd_connections_total{export=\"rbd/img\"} 1"),
            "{metrics}"
        );
        assert!(metrics.contains("vdisk_nbd_sent_bytes_total{export=\"rbd/img\"}"));
    }
    assert!(metrics.contains("vdisk_api_requests_total"));
    // The I/O threads, with their limits.
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .parse()
            .expect("a number")
    };
    assert!(gauge("vdisk_copy_threads") <= gauge("vdisk_copy_threads_max"));
    assert!(gauge("vdisk_copy_threads_max") >= 4);
    assert!(gauge("vdisk_engine_workers") <= gauge("vdisk_engine_workers_max"));
    d.stop();
}

/// `import --no-sync` run by the daemon: the daemon syncs the copy right
/// after, so a restart once that is done loses nothing (the image opens
/// with another boot id).
#[test]
fn the_daemon_syncs_a_no_sync_import_at_once() {
    let e = Env::new();
    let data = random_data(6 * MIB, 3);
    let src = e.put_file("disk.raw", &data);
    e.set_boot_id("boot-1");
    let d = Daemon::start(&e, &[]);
    e.ok(&["import", &src, "rbd/fast", "--no-sync"]);
    // The sync runs on a thread of the daemon's: a moment.
    std::thread::sleep(Duration::from_millis(1500));
    d.stop();
    e.set_boot_id("boot-2");
    assert!(e.read_all("rbd/fast") == data);
}
