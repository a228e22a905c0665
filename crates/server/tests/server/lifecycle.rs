//! Starting and stopping: socket files, shutdown with writes not yet
//! flushed by the client.

use crate::common::*;
use crate::raw::Raw;
use vdisk_engine::Store;
use vdisk_nbd::{Command, CommandFlags};
use vdisk_server::{Error, ServeConfig, Server};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Opens a data directory again, retrying while it is still locked: a
/// client process another test forks at that moment inherits the lock's
/// file descriptor until it executes (then CLOEXEC closes it).
fn reopen(dir: &std::path::Path) -> Store {
    let mut tries = 0;
    loop {
        match Store::open_dir(dir, "reopen") {
            Ok(store) => return store,
            Err(e) if e.kind() == vdisk_engine::ErrorKind::Busy && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

#[test]
fn shutdown_flushes_writes_and_removes_the_socket() {
    let server = TestServer::start();
    let socket = server.socket.clone();
    let mut c = Raw::tcp(server.port, "rbd/blank");
    let data = pattern(77, 256 * 1024);
    // Acknowledged but never flushed by the client.
    c.write(5 * M, &data);
    let done = c.call(
        Command::WriteZeroes,
        CommandFlags::empty(),
        5 * M,
        4096,
        &[],
    );
    assert_eq!(done.error, None);
    // The client is still connected when the server stops: its connection
    // is closed after the drain.
    let (result, dir) = server.stop_and_keep_dir();
    result.expect("serve returned an error");
    assert!(!socket.exists(), "socket file left behind");
    assert!(crate::raw::closed_by_peer(&mut c.stream));
    // Reopening the directory (the server's lock is gone) finds the data.
    let store = reopen(&dir.path().join("data"));
    let got = content(&store, "blank");
    assert!(got[5 * M as usize..][..4096].iter().all(|b| *b == 0));
    assert_eq!(
        got[5 * M as usize + 4096..][..256 * 1024 - 4096],
        data[4096..]
    );
}

#[test]
fn socket_files_stale_live_and_foreign() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_dir(&dir.path().join("data"), "test").expect("store");
    let rt = runtime();
    let cfg = |socket: &std::path::Path| ServeConfig {
        listen: vec![],
        socket: Some(socket.to_path_buf()),
        limits: Default::default(),
        shared: false,
        api_socket: None,
    };
    // A stale socket (its listener is gone) is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    let server = rt
        .block_on(Server::bind(store.clone(), cfg(&stale)))
        .expect("stale socket not replaced");
    // A live one is not.
    let err = rt
        .block_on(Server::bind(store.clone(), cfg(&stale)))
        .expect_err("live socket replaced");
    assert!(matches!(err, Error::SocketInUse(_)), "{err}");
    drop(server);
    // Neither is a file that is not a socket.
    let file = dir.path().join("file");
    std::fs::write(&file, b"precious").expect("write");
    let err = rt
        .block_on(Server::bind(store.clone(), cfg(&file)))
        .expect_err("file replaced");
    assert!(matches!(err, Error::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read(&file).expect("read"), b"precious");
    // Nothing to listen on, and a port in use, are clear errors.
    let none = ServeConfig {
        listen: vec![],
        socket: None,
        limits: Default::default(),
        shared: false,
        api_socket: None,
    };
    assert!(matches!(
        rt.block_on(Server::bind(store.clone(), none)),
        Err(Error::NoListener)
    ));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = ServeConfig {
        listen: vec![taken.local_addr().expect("addr")],
        socket: None,
        limits: Default::default(),
        shared: false,
        api_socket: None,
    };
    let err = rt
        .block_on(Server::bind(store, busy))
        .expect_err("port in use");
    assert_eq!(err.kind(), vdisk_engine::ErrorKind::Busy, "{err}");
    assert!(err.hint().is_some());
}
