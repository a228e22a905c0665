//! Incident 1 as a test: a destination pre-filled with garbage whose
//! WRITE_ZEROES and TRIM report success without zeroing (nbdkit's `eval`
//! plugin over a file), and a GPT-partitioned qcow2 copied onto it with
//! default options. The copy must be byte-identical, its GPT intact, and
//! the lie reported. The same setup with `qemu-img convert -n` and its
//! default `-S 4k` corrupts the partition table (kept as documentation of
//! the scenario); `-S 0` does not.
//!
//! Needs nbdkit, qemu-img and sfdisk; a missing tool skips the test unless
//! `VDISK_REQUIRE_TOOLS` is set.

#[path = "common/lying_nbdkit.rs"]
mod lying_nbdkit;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_convert::nbd::NbdDest;
use vdisk_convert::{copy, CopyOptions, FileSource, NbdClient, NbdUri, ZeroProof};

pub const SIZE: u64 = 32 << 20;

pub fn tool(name: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&dirs)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!("{name} not found (apt-get install nbdkit qemu-utils fdisk)");
        assert!(std::env::var_os("VDISK_REQUIRE_TOOLS").is_none(), "{msg}");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

fn run(c: &mut Command) -> std::process::Output {
    let out = c.output().expect("spawn");
    assert!(out.status.success(), "{c:?}: {out:?}");
    out
}

/// A raw disk with a GPT (three partitions) and scattered data, and the
/// same disk as qcow2 (zeros left out by qemu-img).
fn gpt_source(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let sfdisk = tool("sfdisk")?;
    let qemu_img = tool("qemu-img")?;
    let raw = dir.join("src.raw");
    std::fs::File::create(&raw).unwrap().set_len(SIZE).unwrap();
    let mut child = Command::new(sfdisk)
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&raw)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"label: gpt\nsize=8M, type=U\nsize=12M, type=L, name=\"root\"\nsize=4M, type=S\n",
        )
        .unwrap();
    assert!(child.wait().unwrap().success());
    // Data in the partitions, leaving zero runs between.
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    use std::os::unix::fs::FileExt;
    for (i, off) in [1u64 << 20, 3 << 20, (9 << 20) + 4096, 20 << 20, 29 << 20]
        .into_iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..300_000u32)
            .map(|k| (k * 31 + i as u32) as u8 | 1)
            .collect();
        f.write_all_at(&data, off).unwrap();
    }
    drop(f);
    let qcow2 = dir.join("src.qcow2");
    run(Command::new(qemu_img)
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    Some((raw, qcow2))
}

fn garbage() -> Vec<u8> {
    (0..SIZE)
        .map(|i| ((i * 7 + 3) % 251) as u8 | 0x80)
        .collect()
}

/// nbdkit serving `file` on a Unix socket, writing through but lying about
/// WRITE_ZEROES, TRIM and fast zero (all "succeed" without touching it).
#[derive(Debug)]
pub struct LyingServer {
    child: Child,
    pub uri: String,
}

impl LyingServer {
    pub fn start(dir: &Path, file: &Path) -> Option<Self> {
        let nbdkit = tool("nbdkit")?;
        let sock = dir.join("lying.sock");
        // A killed nbdkit leaves its socket behind.
        let _ = std::fs::remove_file(&sock);
        let child = Command::new(nbdkit)
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(&sock)
            .args(lying_nbdkit::eval_args(file, SIZE))
            .stdout(Stdio::null())
            .spawn()
            .expect("nbdkit");
        let start = Instant::now();
        // The socket file appears at bind(), before listen(): wait until
        // it takes connections.
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nbdkit did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(LyingServer {
            child,
            uri: format!("nbd+unix:///?socket={}", sock.display()),
        })
    }
}

impl Drop for LyingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gpt_status(bytes: &[u8]) -> vdisk_gpt::Status {
    vdisk_gpt::check_bytes(bytes).status
}

#[test]
fn lying_nbd_destination_gets_an_exact_copy_with_an_intact_gpt() {
    let dir = tempfile::tempdir().unwrap();
    let Some((raw, qcow2)) = gpt_source(dir.path()) else {
        return;
    };
    let target = dir.path().join("target.img");
    std::fs::write(&target, garbage()).unwrap();
    let Some(server) = LyingServer::start(dir.path(), &target) else {
        return;
    };
    let src = FileSource::open(&qcow2, None).unwrap();
    let client = Arc::new(NbdClient::connect(&NbdUri::parse(&server.uri).unwrap()).unwrap());
    let dst = NbdDest::new(client.clone(), false).unwrap();
    let warnings = parking_lot::Mutex::new(Vec::<String>::new());
    // What the CLI does by default for an NBD destination: verify.
    let opts = CopyOptions {
        verify: true,
        ..Default::default()
    };
    let report = copy(&src, &dst, &opts, &vdisk_engine::NoProgress, &|w| {
        warnings.lock().push(w)
    })
    .unwrap();
    drop(dst);
    client.disconnect();
    let uri = server.uri.clone();
    drop(server);
    assert!(
        matches!(report.zeroing, ZeroProof::Failed("WRITE_ZEROES", _)),
        "{report:?}"
    );
    assert!(report.verified);
    let w = warnings.into_inner();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(&uri) && w[0].contains("WRITE_ZEROES reported success but did not zero"),
        "{w:?}"
    );
    let want = std::fs::read(&raw).unwrap();
    let got = std::fs::read(&target).unwrap();
    assert!(got == want, "the copy differs from the source");
    assert_eq!(gpt_status(&got), vdisk_gpt::Status::Intact);
}

/// Documents the scenario: qemu-img's default `-S 4k` trusts the lying
/// zeroing and leaves garbage in the GPT's entry array; `-S 0` writes
/// every zero and gets it right.
#[test]
fn qemu_img_convert_n_corrupts_the_same_setup_unless_s0() {
    let dir = tempfile::tempdir().unwrap();
    let Some((raw, qcow2)) = gpt_source(dir.path()) else {
        return;
    };
    let Some(qemu_img) = tool("qemu-img") else {
        return;
    };
    let want = std::fs::read(&raw).unwrap();
    for (extra, corrupts) in [(None, true), (Some("-S0"), false)] {
        let target = dir.path().join("target.img");
        std::fs::write(&target, garbage()).unwrap();
        let Some(server) = LyingServer::start(dir.path(), &target) else {
            return;
        };
        let mut c = Command::new(&qemu_img);
        c.args(["convert", "-n", "-f", "qcow2", "-O", "raw"]);
        if let Some(x) = extra {
            c.arg(x);
        }
        run(c.arg(&qcow2).arg(&server.uri));
        drop(server);
        let got = std::fs::read(&target).unwrap();
        assert_eq!(got != want, corrupts, "qemu-img convert -n {extra:?}");
        assert_eq!(
            gpt_status(&got) != vdisk_gpt::Status::Intact,
            corrupts,
            "GPT after qemu-img convert -n {extra:?}"
        );
    }
}
