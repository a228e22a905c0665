//! `convert`, `compare`, `map`, and `import`/`export` of qcow2 files and
//! NBD exports (issue 4): round trips file ↔ qcow2 ↔ pool ↔ NBD checked
//! with `qemu-img compare`, `map` against `qemu-img map`, incident 1
//! through the CLI (a garbage-filled NBD export whose zeroing lies), and
//! bad input that fails clearly and writes nothing.
//!
//! Needs qemu-img, qemu-nbd, nbdkit and sfdisk; a test whose tool is
//! missing says so and passes, unless `VDISK_REQUIRE_TOOLS` is set.

#[path = "cli/common.rs"]
#[allow(dead_code)]
mod common;

#[path = "../../convert/tests/common/lying_nbdkit.rs"]
mod lying_nbdkit;

use common::*;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SIZE: u64 = 24 << 20;

fn tool(name: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&dirs)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!("{name} not found (apt-get install qemu-utils nbdkit fdisk)");
        assert!(std::env::var_os("VDISK_REQUIRE_TOOLS").is_none(), "{msg}");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

fn run_tool(c: &mut Command) -> std::process::Output {
    let out = output(c);
    assert!(out.status.success(), "{c:?}: {out:?}");
    out
}

fn qemu_img_compare(a: &Path, b: &Path) -> bool {
    let q = tool("qemu-img").expect("qemu-img");
    let out = output(Command::new(q).arg("compare").arg(a).arg(b));
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("qemu-img compare {a:?} {b:?}: {out:?}"),
    }
}

fn garbage(size: u64) -> Vec<u8> {
    (0..size)
        .map(|i| ((i * 7 + 3) % 251) as u8 | 0x80)
        .collect()
}

/// A raw disk with a GPT and scattered data (zero runs between), and the
/// same as qcow2 with a zero-flag cluster range.
fn source(e: &Env) -> Option<(PathBuf, PathBuf)> {
    let sfdisk = tool("sfdisk")?;
    let qemu_img = tool("qemu-img")?;
    let raw = e.file("src.raw");
    std::fs::File::create(&raw).unwrap().set_len(SIZE).unwrap();
    let mut child = spawn(
        Command::new(sfdisk)
            .args(["-q", "--no-reread", "--no-tell-kernel"])
            .arg(&raw)
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nsize=8M, type=U\nsize=8M, type=L, name=\"root\"\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    for (i, off) in [1u64 << 20, (5 << 20) + 4096, 12 << 20, 20 << 20]
        .into_iter()
        .enumerate()
    {
        f.write_all_at(&random_data(200_000, i as u64), off)
            .unwrap();
    }
    drop(f);
    let qcow2 = e.file("src.qcow2");
    run_tool(
        Command::new(&qemu_img)
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow2),
    );
    // A zero-flag range the map must show as present zeros.
    let qemu_io = tool("qemu-io")?;
    run_tool(
        Command::new(qemu_io)
            .args(["-f", "qcow2", "-c", "write -z 16M 1M"])
            .arg(&qcow2),
    );
    Some((raw, qcow2))
}

/// An NBD server on a Unix socket, killed on drop.
struct Server {
    child: Child,
    uri: String,
}

impl Server {
    fn wait(child: Child, sock: PathBuf) -> Self {
        let start = Instant::now();
        // The socket file appears at bind(), before listen(): wait until
        // it takes connections.
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "NBD server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            uri: format!("nbd+unix:///?socket={}", sock.display()),
        }
    }

    /// qemu-nbd serving a raw file (honest zeroing).
    fn qemu_nbd(e: &Env, file: &Path) -> Option<Self> {
        let q = tool("qemu-nbd")?;
        let sock = e.file("qemu-nbd.sock");
        let _ = std::fs::remove_file(&sock);
        let child = spawn(
            Command::new(q)
                .args(["-f", "raw", "-t", "-k"])
                .arg(&sock)
                .arg(file)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        Some(Self::wait(child, sock))
    }

    /// nbdkit over a file, whose WRITE_ZEROES and TRIM succeed without
    /// zeroing (incident 1).
    fn lying(e: &Env, file: &Path) -> Option<Self> {
        let nbdkit = tool("nbdkit")?;
        let sock = e.file("lying.sock");
        let _ = std::fs::remove_file(&sock);
        let size = std::fs::metadata(file).unwrap().len();
        let child = spawn(
            Command::new(nbdkit)
                .args(["-f", "--exit-with-parent", "-U"])
                .arg(&sock)
                .args(lying_nbdkit::eval_args(file, size))
                .stdout(Stdio::null()),
        );
        Some(Self::wait(child, sock))
    }
}

impl Server {
    /// nbdkit's pattern plugin (data everywhere) answering each READ after
    /// `secs` seconds; its log (`-v`) goes to `NAME.log` next to the socket.
    fn slow(e: &Env, name: &str, secs: u32) -> Option<Self> {
        let nbdkit = tool("nbdkit")?;
        let sock = e.file(&format!("{name}.sock"));
        let _ = std::fs::remove_file(&sock);
        let log = std::fs::File::create(e.file(&format!("{name}.log"))).unwrap();
        let child = spawn(
            Command::new(nbdkit)
                .args(["-f", "-v", "--exit-with-parent", "-U"])
                .arg(&sock)
                .args(["--filter=delay", "pattern", "8M"])
                .arg(format!("rdelay={secs}"))
                .stdout(Stdio::null())
                .stderr(log),
        );
        Some(Self::wait(child, sock))
    }
}

/// Runs `args` (with `{}` standing for the URI) against a server of its
/// own that stops answering, and returns stderr. Each command meets a
/// fresh server, so what is tested is vdisk's timeout, not how nbdkit
/// copes with the clients that gave up before it; nbdkit's log is
/// attached when the command fails in another way than expected.
fn against_silent_server(e: &Env, name: &str, args: &[&str], code: i32) -> Option<String> {
    let mut server = Server::slow(e, name, 30)?;
    let args: Vec<String> = args.iter().map(|a| a.replace("{}", &server.uri)).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = e.run(&args);
    if out.status.code() != Some(code) {
        let alive = server.child.try_wait().ok().flatten();
        let log = std::fs::read_to_string(e.file(&format!("{name}.log"))).unwrap_or_default();
        panic!("{args:?}: {out:?}\nnbdkit exit status: {alive:?}\nnbdkit log:\n{log}");
    }
    Some(check_failure(&args, &out, code))
}

/// A server that stops answering fails the copy after the request timeout
/// (`VDISK_NBD_TIMEOUT`), naming the cause, and leaves no output behind;
/// a bad timeout value is refused before anything is created.
#[test]
fn a_server_that_stops_answering_times_out() {
    let e = Env::new();
    let out = e.file("out.raw");
    let out_s = path_str(&out);
    e.set_var("VDISK_NBD_TIMEOUT", "1");
    let start = Instant::now();
    let Some(err) = against_silent_server(&e, "convert", &["convert", "{}", &out_s], 1) else {
        return;
    };
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    assert!(err.contains("did not answer a request within 1 s"), "{err}");
    assert!(!out.exists());
    let err = against_silent_server(&e, "import", &["import", "{}", "rbd/slow"], 1).unwrap();
    assert!(err.contains("did not answer"), "{err}");
    assert!(e.ok(&["ls"]).trim().is_empty());
    e.set_var("VDISK_NBD_TIMEOUT", "soon");
    let err = against_silent_server(&e, "bad", &["convert", "{}", &out_s], 1).unwrap();
    assert!(err.contains("not a number of seconds"), "{err}");
    assert!(!out.exists());
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn convert_onto_a_lying_nbd_export_is_exact_and_its_gpt_checks() {
    let e = Env::new();
    let Some((raw, qcow2)) = source(&e) else {
        return;
    };
    let target = e.file("target.img");
    std::fs::write(&target, garbage(SIZE)).unwrap();
    let Some(server) = Server::lying(&e, &target) else {
        return;
    };
    let args = ["convert", &path_str(&qcow2), &server.uri];
    let out = e.run(&args);
    assert_success(&args, &out);
    drop(server);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WRITE_ZEROES reported success but did not zero; writing zeros as data")
            && err.contains("lying.sock"),
        "{err}"
    );
    assert!(std::fs::read(&target).unwrap() == std::fs::read(&raw).unwrap());
    assert!(qemu_img_compare(&qcow2, &target));
    e.ok(&["gpt", &path_str(&target)]);
}

#[test]
fn round_trips_between_files_qcow2_pool_and_nbd() {
    let e = Env::new();
    let Some((raw, qcow2)) = source(&e) else {
        return;
    };
    let (q, r) = (path_str(&qcow2), path_str(&raw));
    // qcow2 file -> pool -> qcow2 file, raw file, compressed qcow2.
    e.ok(&["import", &q, "rbd/a"]);
    let out_q = path_str(&e.file("out.qcow2"));
    e.ok(&["export", "rbd/a", &out_q, "-O", "qcow2"]);
    assert!(qemu_img_compare(&raw, Path::new(&out_q)));
    let out_r = path_str(&e.file("out.raw"));
    e.ok(&["convert", "rbd/a", &out_r]);
    assert!(qemu_img_compare(&raw, Path::new(&out_r)));
    let out_c = path_str(&e.file("out-c.qcow2"));
    e.ok(&["convert", &r, &out_c, "-c", "--compression-type", "zstd"]);
    assert!(qemu_img_compare(&raw, Path::new(&out_c)));
    // Raw import keeps its old path; the image equals the qcow2 one.
    e.ok(&["import", &r, "rbd/r"]);
    e.ok(&["compare", "rbd/a", "rbd/r"]);
    // pool -> NBD (qemu-nbd over garbage: honest zeroing, proven, verified).
    let target = e.file("nbd.img");
    std::fs::write(&target, garbage(SIZE)).unwrap();
    let Some(server) = Server::qemu_nbd(&e, &target) else {
        return;
    };
    let v = e.json(&["convert", "rbd/a", &server.uri]);
    assert_eq!(v["zeroing"], "proven", "{v}");
    assert_eq!(v["verified"], true, "{v}");
    // NBD -> pool, and NBD -> qcow2 file.
    e.ok(&["import", &server.uri, "rbd/b"]);
    let out_n = path_str(&e.file("from-nbd.qcow2"));
    e.ok(&["convert", &server.uri, &out_n, "-O", "qcow2"]);
    drop(server);
    assert!(qemu_img_compare(&raw, &target));
    assert!(qemu_img_compare(&raw, Path::new(&out_n)));
    e.ok(&["compare", "rbd/a", "rbd/b"]);
    e.ok(&["compare", &q, "rbd/b"]);
    // `export` onto an existing, larger raw file with -n.
    let over = e.put_file("over.raw", &garbage(SIZE + 4096));
    e.ok(&["export", "rbd/a", &over, "-n"]);
    let got = std::fs::read(&over).unwrap();
    assert!(got[..SIZE as usize] == std::fs::read(&raw).unwrap()[..]);
    // Past the image's end the old bytes stay, and compare says where.
    let out = e.run(&["compare", &q, &over]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("offset {SIZE}!")));
}

#[test]
fn map_matches_qemu_img_map() {
    let e = Env::new();
    let Some((_raw, qcow2)) = source(&e) else {
        return;
    };
    let qemu_img = tool("qemu-img").unwrap();
    let out = run_tool(
        Command::new(qemu_img)
            .args(["map", "--output=json"])
            .arg(&qcow2),
    );
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = e.json(&["map", &path_str(&qcow2)]);
    // Merge adjacent runs alike in (present, zero, data): qemu splits data
    // where host offsets jump.
    let norm = |v: &serde_json::Value| {
        let mut out: Vec<(u64, u64, bool, bool, bool)> = Vec::new();
        for x in v.as_array().unwrap() {
            let k = (
                x["present"].as_bool().unwrap(),
                x["zero"].as_bool().unwrap(),
                x["data"].as_bool().unwrap(),
            );
            let (s, l) = (x["start"].as_u64().unwrap(), x["length"].as_u64().unwrap());
            match out.last_mut() {
                Some(p) if (p.2, p.3, p.4) == k && p.0 + p.1 == s => p.1 += l,
                _ => out.push((s, l, k.0, k.1, k.2)),
            }
        }
        out
    };
    assert_eq!(norm(&ours), norm(&theirs));
    assert!(norm(&ours).iter().any(|x| x.2 && x.3), "no zero-flag run");
    let plain = e.ok(&["map", &path_str(&qcow2)]);
    assert!(
        plain.starts_with("   Offset") || plain.contains("Offset"),
        "{plain}"
    );
}

#[test]
fn compare_exit_codes_follow_qemu_img() {
    let e = Env::new();
    let a = e.put_file("a.raw", &random_data(1 << 20, 1));
    let mut d = random_data(1 << 20, 1);
    d[777_777] ^= 0x40;
    let b = e.put_file("b.raw", &d);
    assert_eq!(e.ok(&["compare", &a, &a]), "Images are identical.\n");
    let out = e.run(&["compare", &a, &b]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Content mismatch at offset 777777!\n"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&e.run(&["--format", "json", "compare", &a, &b]).stdout).unwrap();
    assert_eq!(v["first_difference"], 777_777);
    // Errors (a missing file, a bad URI, a missing image) are 2.
    e.fail(&["compare", &a, "./missing.raw"], 2);
    e.fail(&["compare", &a, "nbd://"], 2);
    e.fail(&["compare", &a, "rbd/missing"], 2);
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let e = Env::new();
    let src = e.put_file("src.raw", &random_data(1 << 20, 2));
    e.ok(&["create", "rbd/keep", "--size", "1M"]);
    let out = path_str(&e.file("out.raw"));
    // Bad URIs: usage errors naming the expected form.
    for uri in [
        "nbd://host:notaport/x",
        "nbd+unix:///x",
        "nbd://h/x?bogus=1",
    ] {
        let err = e.refused(&["convert", &src, uri], USAGE, "bad NBD URI");
        assert!(err.contains("nbd+unix:///EXPORT?socket=PATH"), "{err}");
        e.refused(&["import", uri, "rbd/x"], USAGE, "bad NBD URI");
    }
    e.refused(&["convert", &src, "nbds://h/x"], UNSUPPORTED, "TLS");
    // Nobody listening: an I/O error naming the socket; nothing created.
    let sock = path_str(&e.file("nobody.sock"));
    let uri = format!("nbd+unix:///x?socket={sock}");
    e.refused(&["import", &uri, "rbd/x"], 1, "nobody.sock");
    e.refused(&["convert", &uri, &out], 1, "nobody.sock");
    assert!(!Path::new(&out).exists());
    // Missing input: not found; no output file, no image.
    e.refused(
        &["convert", "./missing.qcow2", &out],
        NOT_FOUND,
        "missing.qcow2",
    );
    e.refused(
        &["import", "./missing.qcow2", "rbd/x"],
        NOT_FOUND,
        "missing.qcow2",
    );
    assert!(!Path::new(&out).exists());
    // A bare file name is an image spec (as in `rbd`); when a file of that
    // name is there, the error says how to name the file instead (what a
    // `qemu-img` user types first).
    let bare = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .arg("--dir")
        .arg(e.store_dir())
        .arg("--no-progress")
        .args(["convert", "src.raw", "./bare-out.raw"])
        .current_dir(e.file(""))
        .env_remove("VDISK_DIR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bare.stderr);
    assert_eq!(bare.status.code(), Some(NOT_FOUND), "{err}");
    assert!(err.contains("write it as ./src.raw"), "{err}");
    assert!(!e.file("bare-out.raw").exists());
    // The other way round: a bare destination that reads like a file name
    // is a pool image, said on stderr; `-O qcow2` there is refused with
    // the path to write instead.
    let err = e.refused(
        &["convert", &src, "copy.raw", "-O", "qcow2"],
        USAGE,
        "./copy.raw",
    );
    assert!(err.contains("pool image"), "{err}");
    let stderr = |args: &[&str]| {
        let out = e.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {err}");
        err
    };
    let err = stderr(&["convert", &src, "copy.raw"]);
    assert!(
        err.contains("pool image rbd/copy.raw") && err.contains("./copy.raw"),
        "{err}"
    );
    assert_eq!(e.read_all("copy.raw"), random_data(1 << 20, 2));
    let err = stderr(&["convert", &src, "rbd/copy2.raw"]);
    assert!(!err.contains("warning"), "{err}");
    // A truncated qcow2: refused as damaged; nothing written.
    let Some(qemu_img) = tool("qemu-img") else {
        return;
    };
    let q = e.file("t.qcow2");
    run_tool(
        Command::new(qemu_img)
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&src)
            .arg(&q),
    );
    let bytes = std::fs::read(&q).unwrap();
    std::fs::write(&q, &bytes[..bytes.len() / 2]).unwrap();
    let qs = path_str(&q);
    let err = e.refused(&["convert", &qs, &out], CORRUPT, "t.qcow2");
    assert!(!Path::new(&out).exists(), "{err}");
    e.refused(&["import", &qs, "rbd/t"], CORRUPT, "t.qcow2");
    // Existing destinations are not overwritten without a word.
    let existing = e.put_file("exists.raw", b"keep me");
    e.refused(&["convert", &src, &existing], EXISTS, "--force");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    e.refused(&["convert", &src, "rbd/keep"], EXISTS, "-n");
    // A destination smaller than the source: refused before writing.
    let small = e.put_file("small.raw", &[7u8; 4096]);
    e.refused(&["convert", &src, &small, "-n"], USAGE, "less than");
    assert_eq!(std::fs::read(&small).unwrap(), vec![7u8; 4096]);
}

/// vdisk's own server as the NBD peer, over TCP: a qcow2 file copied into a
/// served image (WRITE_ZEROES proven, verified), compared and mapped
/// through the same URI while the daemon runs.
#[test]
fn vdisk_serve_is_a_peer_over_tcp() {
    use std::io::BufRead;
    let e = Env::new();
    let Some((raw, qcow2)) = source(&e) else {
        return;
    };
    e.ok(&["create", "rbd/img", "--size", "24M"]);
    let mut child = e.spawn(&["serve", "--listen", "127.0.0.1:0"]);
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut port = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("listening on TCP addr=").nth(1) {
            port = Some(rest.trim().parse::<std::net::SocketAddr>().unwrap().port());
        }
        if line.contains("listening on Unix socket") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let uri = format!("nbd://127.0.0.1:{}/rbd/img", port.expect("TCP port"));
    let v = e.json(&["convert", &path_str(&qcow2), &uri]);
    assert_eq!(v["zeroing"], "proven", "{v}");
    assert_eq!(v["verified"], true, "{v}");
    e.ok(&["compare", &path_str(&raw), &uri]);
    let map = e.json(&["map", &uri]);
    assert!(map.as_array().unwrap().iter().any(|x| x["data"] == true));
    // Through the daemon: an image spec makes the command go to it.
    e.ok(&["compare", "rbd/img", &path_str(&qcow2)]);
    let _ = child.kill();
    let _ = child.wait();
}

/// A loop device over a file, detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    /// Needs root (losetup); skipped otherwise, even with
    /// `VDISK_REQUIRE_TOOLS` (CI machines may not give root).
    fn attach(file: &Path) -> Option<Self> {
        let losetup = tool("losetup")?;
        let out = Command::new(losetup)
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: no loop device ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Some(Loop { dev })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A block device destination: written in place (needs -n), zero ranges
/// with BLKZEROOUT only after proving it on this device (a loop device
/// zeroes for real), read back by default; the device then holds exactly
/// the source, garbage included nowhere. And a block device as a source.
#[test]
fn block_device_destination_proves_blkzeroout_and_verifies() {
    let e = Env::new();
    let Some((raw, qcow2)) = source(&e) else {
        return;
    };
    let backing = e.file("loop.img");
    std::fs::write(&backing, garbage(SIZE)).unwrap();
    let Some(dev) = Loop::attach(&backing) else {
        return;
    };
    let d = path_str(&dev.dev);
    // Refused without -n/--force, and nothing written.
    let err = e.fail(&["convert", &path_str(&qcow2), &d], EXISTS);
    assert!(err.contains("-n"), "{err}");
    assert_eq!(std::fs::read(&backing).unwrap(), garbage(SIZE));

    let report = e.json(&["convert", &path_str(&qcow2), &d, "-n"]);
    assert_eq!(report["zeroing"], "proven", "{report}");
    assert_eq!(report["zeroing_detail"], "BLKZEROOUT", "{report}");
    assert_eq!(report["verified"], true, "{report}");
    assert!(report["zeroed_fast"].as_u64().unwrap() > 0, "{report}");
    let want = std::fs::read(&raw).unwrap();
    let mut got = vec![0u8; want.len()];
    std::fs::File::open(&dev.dev)
        .unwrap()
        .read_exact_at(&mut got, 0)
        .unwrap();
    assert!(got == want, "the device differs from the source");
    e.ok(&["gpt", &d]);
    assert_eq!(
        e.run(&["compare", &path_str(&raw), &d]).status.code(),
        Some(0)
    );

    // The device as a source.
    e.ok(&["import", &d, "rbd/fromdev"]);
    assert!(e.read_all("rbd/fromdev") == want);
}

/// qemu-img's `-S`, `-W` and `-o` as an operator types them: `-S 0`
/// writes every byte (a fully allocated raw file, allocated qcow2
/// clusters), `-o cluster_size=…,refcount_bits=…` shapes the qcow2 that
/// `qemu-img check` then accepts, and unknown or impossible options are
/// refused by name before anything is written.
#[test]
fn qemu_img_style_sparse_and_creation_options() {
    let e = Env::new();
    let Some(qemu_img) = tool("qemu-img") else {
        return;
    };
    let src = e.file("sparse.raw");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(8 << 20).unwrap();
    f.write_all_at(&random_data(1 << 20, 7), 3 << 20).unwrap();
    drop(f);
    let s = path_str(&src);
    let allocated = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks() * 512
    };

    let thin = e.file("thin.raw");
    e.ok(&["convert", &s, &path_str(&thin), "-W"]);
    assert!(allocated(&thin) <= 2 << 20, "{}", allocated(&thin));
    let full = e.file("full.raw");
    let r = e.json(&["convert", &s, &path_str(&full), "-S", "0"]);
    assert_eq!(r["zeroing"], "disabled", "{r}");
    assert_eq!(r["written"], 8 << 20, "{r}");
    assert!(allocated(&full) >= 8 << 20, "{}", allocated(&full));
    assert!(std::fs::read(&full).unwrap() == std::fs::read(&src).unwrap());

    let q = e.file("opts.qcow2");
    e.ok(&[
        "convert",
        &s,
        &path_str(&q),
        "-O",
        "qcow2",
        "-o",
        "cluster_size=128k",
        "-o",
        "refcount_bits=8",
    ]);
    let info = run_tool(
        Command::new(&qemu_img)
            .args(["info", "--output=json"])
            .arg(&q),
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["cluster-size"], 128 << 10, "{info}");
    assert_eq!(
        info["format-specific"]["data"]["refcount-bits"], 8,
        "{info}"
    );
    run_tool(Command::new(&qemu_img).arg("check").arg(&q));
    assert!(qemu_img_compare(&src, &q));

    let out = path_str(&e.file("never.qcow2"));
    for (opt, needle) in [
        ("preallocation=full", "not an option"),
        ("cluster_size=3k", "power of two"),
        ("refcount_bits=3", "refcount widths"),
        ("compression_type=lz4", "zlib and zstd"),
        ("cluster_size", "key=value"),
    ] {
        let err = e.fail(&["convert", &s, &out, "-O", "qcow2", "-o", opt], USAGE);
        assert!(err.contains(needle), "{opt}: {err}");
    }
    let err = e.fail(&["convert", &s, &out, "-o", "cluster_size=64k"], USAGE);
    assert!(err.contains("add -O qcow2"), "{err}");
    e.fail(&["convert", &s, &out, "-S", "lots"], USAGE);
    assert!(!Path::new(&out).exists());
}
