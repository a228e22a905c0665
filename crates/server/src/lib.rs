//! The vdisk NBD server: serves the images and snapshots of a [`Store`] to
//! VMs and tools over TCP and a Unix socket.
//!
//! ```text
//!   listeners (TCP..., Unix) ── accept ──► one task per connection
//!                                             │ handshake: vdisk_nbd::ServerHandshake
//!                                             │   export name → ImageSpec → Store::open
//!                                             ▼
//!                                        transmission: reader → spawn_blocking(engine) → writer
//! ```
//!
//! The protocol itself lives in the sans-IO `vdisk-nbd` crate; this crate
//! does the I/O, maps requests onto the synchronous engine on tokio's
//! blocking pool, and enforces limits. One bad client never affects another:
//! protocol violations close that connection, engine errors become NBD
//! errors, panics in a request become `EIO`.
//!
//! Export names are image specs: `pool/image`, `pool/image@snap`, and for
//! the default pool `rbd` also `image` and `image@snap`. Heads are
//! read-write, snapshots read-only. Every export offers structured replies,
//! `base:allocation` block status (from metadata, see
//! `Image::block_status`), trim, write zeroes (fast), flush/FUA and
//! multi-conn (one shared state per image, so a flush on any connection
//! covers writes completed on all of them).
//!
//! Alongside the NBD listeners, a management API (HTTP/JSON on a Unix
//! socket, see [`api`]) reports the connected clients, running jobs and
//! per-export metrics kept in the [`registry::Registry`], and runs CLI
//! commands against the same in-process store. One writer per image: a
//! second client opening an image head is refused unless
//! [`ServeConfig::shared`] (see [`registry`]).
//!
//! Testable in one process, like mini-redis: [`Server::bind`] on
//! `127.0.0.1:0` and a socket in a temporary directory, then
//! [`Server::serve`] with a future that completes at shutdown.
//!
//! ```no_run
//! # async fn demo(store: vdisk_engine::Store) -> vdisk_server::Result<()> {
//! let cfg = vdisk_server::ServeConfig {
//!     listen: vec!["127.0.0.1:0".parse().unwrap()],
//!     socket: Some("/tmp/vdisk-demo.sock".into()),
//!     limits: Default::default(),
//!     shared: false,
//!     api_socket: Some("/tmp/vdisk-demo-api.sock".into()),
//! };
//! let server = vdisk_server::Server::bind(store, cfg).await?;
//! println!("serving on {:?}", server.local_addrs());
//! server.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
// Two exceptions, with their reasons, both in `transmission/socket.rs`:
// registering the connection socket with tokio for writability only, and
// setting SO_RCVLOWAT (no safe wrapper has it) to grow the receive buffer.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
mod config;
mod error;
mod exports;
mod negotiate;
pub mod registry;
mod scheduler;
mod server;
mod transmission;
mod trimmer;

pub use config::{parse_listen, Limits, ServeConfig, DEFAULT_PORT};
pub use error::{Error, Result};
pub use registry::Registry;
pub use scheduler::{Clock, ManualClock, SystemClock};
pub use server::Server;

use std::future::Future;
use vdisk_engine::Store;

/// Binds what `cfg` names and serves `store` until `shutdown` completes,
/// then drains, flushes every image and returns (see [`Server::serve`]).
pub async fn run(store: Store, cfg: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    Server::bind(store, cfg).await?.serve(shutdown).await
}
