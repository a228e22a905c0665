//! `vdisk serve`: listens where told, holds the data directory, and stops
//! cleanly on SIGTERM (in-flight work drained, images flushed, exit 0).
//! The NBD protocol itself is tested in crates/server.

use crate::common::*;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `NBDMAGIC`, the first 8 bytes a server sends.
const NBDMAGIC: &[u8] = b"NBDMAGIC";

/// Reads the server's log until it listens on both; returns the TCP port
/// and every log line read.
pub fn wait_listening(child: &mut Child) -> (u16, Vec<String>) {
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let mut port = None;
    while let Some(Ok(line)) = lines.next() {
        seen.push(line.clone());
        if let Some(rest) = line.split("listening on TCP addr=").nth(1) {
            let addr: std::net::SocketAddr = rest.trim().parse().expect("addr");
            port = Some(addr.port());
        }
        if line.contains("listening on Unix socket") {
            // Keep draining stderr so the server never blocks on it.
            std::thread::spawn(move || for _ in lines {});
            return (port.expect("TCP address logged first"), seen);
        }
    }
    panic!("server exited before listening: {seen:#?}");
}

pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("server still running {within:?} after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_listens_and_stops_on_sigterm() {
    let e = Env::new();
    e.ok(&["create", "img", "--size", "8M"]);
    let mut child = e.spawn(&["serve", "--listen", "127.0.0.1:0"]);
    let (port, _log) = wait_listening(&mut child);

    // Both listeners speak NBD.
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut greeting = [0u8; 8];
    tcp.read_exact(&mut greeting).expect("greeting");
    assert_eq!(greeting, NBDMAGIC);
    let socket = e.store_dir().join("nbd.sock");
    let mut unix = std::os::unix::net::UnixStream::connect(&socket).expect("unix connect");
    unix.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    unix.read_exact(&mut greeting).expect("greeting");
    assert_eq!(greeting, NBDMAGIC);

    // The data directory is the server's while it runs: other commands go
    // through its API; a second server is refused, naming the first.
    assert_eq!(e.ok(&["ls"]), "img\n");
    let err = e.fail(&["serve", "--listen", "127.0.0.1:0"], BUSY);
    assert!(err.contains("in use"), "{err}");
    let api = e.store_dir().join("api.sock");
    assert!(api.exists());

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "serve exited with {status:?}");
    assert!(!socket.exists(), "socket left behind");
    assert!(!api.exists(), "API socket left behind");
    // Released: other commands work again.
    assert!(e.ok(&["ls"]).contains("img"));
}

#[test]
fn serve_bad_arguments() {
    let e = Env::new();
    let err = e.fail(&["serve", "--listen", "10809"], USAGE);
    assert!(err.contains("ADDR:PORT"), "{err}");
    let err = e.fail(
        &["serve", "--listen", "none", "--listen", "127.0.0.1:0"],
        USAGE,
    );
    assert!(err.contains("none"), "{err}");
    let err = e.fail(&["serve", "--listen", "none", "--socket", "none"], USAGE);
    assert!(err.contains("nothing to listen on"), "{err}");
    // A socket path that is a regular file is not replaced.
    let file = e.put_file("not-a-socket", b"keep me");
    e.fail(&["serve", "--listen", "none", "--socket", &file], EXISTS);
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
}
