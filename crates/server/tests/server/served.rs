//! `vdisk serve` in-process, for tests that drive the engine directly while
//! clients use NBD: a store served on 127.0.0.1:0 and a Unix socket, in its
//! own runtime thread, until [`Served::stop`] (or drop).
#![allow(dead_code)]

use std::path::PathBuf;
use std::thread::{self, JoinHandle};
use tokio::sync::oneshot;
use vdisk_engine::Store;
use vdisk_server::{Limits, ServeConfig, Server};

pub struct Served {
    pub port: u16,
    pub socket: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<vdisk_server::Result<()>>>,
}

impl Served {
    /// Serves `store` as `vdisk serve` does by default (one writer per
    /// image unless from the same client).
    pub fn start(store: Store, socket: PathBuf) -> Served {
        let cfg = ServeConfig {
            listen: vec!["127.0.0.1:0".parse().expect("addr")],
            socket: Some(socket.clone()),
            limits: Limits::default(),
            ..ServeConfig::default()
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt.block_on(Server::bind(store, cfg)).expect("bind");
        let port = server.local_addrs()[0].port();
        let (tx, rx) = oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            rt.block_on(server.serve(async {
                let _ = rx.await;
            }))
        });
        Served {
            port,
            socket,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops the server (drain, flush) and checks it stopped cleanly
    /// (unless the test is already failing).
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let result = t.join().expect("server thread panicked");
            if !thread::panicking() {
                result.expect("server stopped with an error");
            }
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}
