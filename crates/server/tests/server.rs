//! The NBD server against real clients (qemu-img, qemu-io, nbdinfo,
//! nbdcopy; a test skips, saying so, when its client is not installed) and
//! against hostile raw-socket clients. Each test serves its own store in a
//! temporary directory on 127.0.0.1:0 and a Unix socket.

#[path = "server/common.rs"]
mod common;
#[path = "server/raw.rs"]
mod raw;

#[path = "server/clients.rs"]
mod clients;
#[path = "server/hostile.rs"]
mod hostile;
#[path = "server/inline.rs"]
mod inline;
#[path = "server/lifecycle.rs"]
mod lifecycle;
