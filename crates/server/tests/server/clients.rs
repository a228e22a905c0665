//! Real clients (qemu-img, qemu-io, nbdinfo, nbdcopy) against the server,
//! over TCP and the Unix socket, checked against what the engine holds.

use crate::common::*;
use crate::require;
use std::process::Command;

#[test]
fn qemu_img_info_convert_and_compare() {
    require!("qemu-img");
    let server = TestServer::start();
    let expected = content(&server.store, "img");
    let engine_raw = content_file(&server, "img");
    // The default pool's images answer to their bare name too.
    for (i, uri) in server
        .uris("rbd/img")
        .into_iter()
        .chain([server.tcp("img")])
        .enumerate()
    {
        let info = run(Command::new("qemu-img").args(["info", "--output=json", &uri]));
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
        assert_eq!(info["virtual-size"], SIZE, "{uri}");

        let out = server.file(&format!("convert{i}.raw"));
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &uri])
            .arg(&out));
        assert!(
            std::fs::read(&out).expect("read copy") == expected,
            "qemu-img convert of {uri} differs from the engine's content"
        );
        run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&engine_raw)
            .arg(&uri));
    }
    // Another pool, and a clone reading through to its parent.
    for export in ["other/disk", "rbd/child"] {
        let engine_raw = content_file(&server, export);
        run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&engine_raw)
            .arg(server.unix(export)));
    }
}

#[test]
fn qemu_io_writes_reach_the_engine() {
    require!("qemu-io");
    let server = TestServer::start();
    for (base, uri) in [(0, server.tcp("rbd/img")), (8 * M, server.unix("rbd/img"))] {
        let at = |off: u64| (base + off).to_string();
        let cmds = [
            format!("write -P 0xab {} 64k", at(0)),
            format!("read -P 0xab {} 64k", at(0)),
            format!("discard {} 64k", at(64 * K)),
            format!("write -z {} 64k", at(128 * K)),
            "flush".to_owned(),
            format!("aio_write -P 0xcd {} 128k", at(M)),
            format!("aio_write -P 0xce {} 4k", at(2 * M + 512)),
            format!("aio_write -f -P 0xcf {} 64k", at(3 * M)),
            "aio_flush".to_owned(),
            format!("read -P 0xcd {} 128k", at(M)),
        ];
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "raw"]);
        for c in &cmds {
            cmd.args(["-c", c]);
        }
        cmd.arg(&uri);
        let out = run(&mut cmd);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout.contains("Pattern verification failed") && !stdout.contains("error"),
            "{uri}: {stdout}"
        );

        let img = open(&server.store, "img");
        let read = |off: u64, len: u64| {
            let mut buf = vec![0u8; len as usize];
            img.read_at(base + off, &mut buf).expect("read");
            buf
        };
        assert!(read(0, 64 * K).iter().all(|b| *b == 0xab), "{uri}");
        assert!(read(64 * K, 128 * K).iter().all(|b| *b == 0), "{uri}");
        assert!(read(M, 128 * K).iter().all(|b| *b == 0xcd), "{uri}");
        assert!(read(2 * M + 512, 4 * K).iter().all(|b| *b == 0xce), "{uri}");
        assert!(read(3 * M, 64 * K).iter().all(|b| *b == 0xcf), "{uri}");
        // Discard and write zeroes left zeros that are metadata, not data.
        let status = img.block_status(base + 64 * K, 128 * K).expect("status");
        assert!(status.iter().all(|&(_, _, zero)| zero), "{uri}: {status:?}");
    }
    // The snapshot did not change.
    let s1 = content(&server.store, "img@s1");
    assert_eq!(&s1[..M as usize], &pattern(1, M as usize)[..]);
}

#[test]
fn nbdinfo_map_matches_block_status() {
    require!("nbdinfo");
    let server = TestServer::start();
    let cases = [
        server.tcp("rbd/img"),
        server.unix("rbd/img"),
        server.tcp("img@s1"),
        server.unix("rbd/child"),
        server.tcp("blank"),
    ];
    for uri in cases {
        let export = export_of(&uri);
        let out = run(Command::new("nbdinfo").args(["--map", "--json", &uri]));
        let map: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let got: Vec<(u64, u64, u32)> = map
            .as_array()
            .expect("array")
            .iter()
            .map(|e| {
                (
                    e["offset"].as_u64().expect("offset"),
                    e["length"].as_u64().expect("length"),
                    e["type"].as_u64().expect("type") as u32,
                )
            })
            .collect();
        let expected = engine_map(&server.store, &export);
        assert_eq!(merge_map(got), expected, "{uri}");
    }
    // The fixture has every kind of extent somewhere.
    let img = engine_map(&server.store, "img");
    for ty in [0, 2, 3] {
        assert!(
            img.iter().any(|e| e.2 == ty),
            "no extent of type {ty}: {img:?}"
        );
    }
}

#[test]
fn nbdinfo_list_shows_every_export() {
    require!("nbdinfo");
    let server = TestServer::start();
    for base in [
        format!("nbd://127.0.0.1:{}", server.port),
        format!("nbd+unix://?socket={}", server.socket.display()),
    ] {
        let out = run(Command::new("nbdinfo").args(["--list", "--json", &base]));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let exports = list["exports"].as_array().expect("exports");
        // nbdinfo shows the canonical name the server gives (NBD_INFO_NAME)
        // and the URI it connected to, which carries the listed name.
        let listed: Vec<String> = exports
            .iter()
            .map(|e| export_of(e["uri"].as_str().expect("uri")))
            .collect();
        for name in [
            "rbd/img",
            "img",
            "rbd/img@s1",
            "img@s1",
            "rbd/child",
            "child",
            "rbd/blank",
            "other/disk",
        ] {
            assert!(listed.iter().any(|l| l == name), "{name} not in {listed:?}");
        }
        // Only the default pool has bare names.
        assert!(!listed.iter().any(|l| l == "disk"), "{listed:?}");
        for e in exports {
            let snapshot = e["uri"].as_str().unwrap_or("").contains('@');
            assert_eq!(e["is_read_only"], snapshot, "{e}");
            assert_eq!(e["can_multi_conn"], true, "{e}");
        }
    }
}

#[test]
fn nbdcopy_from_and_to_exports() {
    require!("nbdcopy");
    let server = TestServer::start();
    let expected = content(&server.store, "img");
    // Export → file, one connection, then four.
    for (i, connections) in ["--connections=1", "--connections=4"].iter().enumerate() {
        let out = server.file(&format!("copy{i}.raw"));
        std::fs::File::create(&out).expect("create");
        let uri = &server.uris("rbd/img")[i % 2];
        run(Command::new("nbdcopy")
            .args([*connections, uri.as_str()])
            .arg(&out));
        assert!(
            std::fs::read(&out).expect("read") == expected,
            "nbdcopy {connections} from {uri} differs from the engine's content"
        );
    }
    // File → export (the empty `blank`), with four connections: multi-conn
    // writes plus nbdcopy's final flush on each.
    let src = server.file("src.raw");
    let mut data = pattern(9, SIZE as usize);
    data[10 * M as usize..20 * M as usize].fill(0);
    std::fs::write(&src, &data).expect("write");
    for (i, uri) in server.uris("rbd/blank").iter().enumerate() {
        if i == 1 {
            data[..M as usize].fill(0x77);
            std::fs::write(&src, &data).expect("write");
        }
        run(Command::new("nbdcopy")
            .args(["--connections=4", "--flush"])
            .arg(&src)
            .arg(uri));
        assert!(
            content(&server.store, "blank") == data,
            "nbdcopy into {uri} differs from the source"
        );
    }
    // The zeros were not stored as data.
    let status = open(&server.store, "blank")
        .block_status(10 * M, 10 * M)
        .expect("status");
    assert!(status.iter().all(|&(_, _, zero)| zero), "{status:?}");
}

#[test]
fn snapshot_exports_are_read_only() {
    require!("qemu-io", "qemu-img");
    // (The server's own refusal, EPERM, is checked in hostile.rs: qemu
    // refuses to open a read-only export for writing before sending any.)
    let server = TestServer::start();
    let before = content(&server.store, "img@s1");
    for uri in server.uris("rbd/img@s1") {
        let out =
            try_run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0xee 0 4k", &uri]));
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success() || !all.contains("wrote"),
            "write to {uri} did not fail: {all}"
        );
        // It reads the snapshot's content, not the head's.
        let engine_raw = content_file(&server, "img@s1");
        run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&engine_raw)
            .arg(&uri));
    }
    assert!(content(&server.store, "img@s1") == before);
    assert_ne!(
        content(&server.store, "img")[..64 * K as usize],
        before[..64 * K as usize]
    );
}
