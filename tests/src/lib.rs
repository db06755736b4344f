//! The end-to-end harness: builds and spawns Vigil's binaries and their real peers on 127.0.0.1
//! ports, with helpers to wait for them, talk HTTP, and receive remote-write.
//!
//! Everything here is test support; it must never be linked into a product binary.

pub mod aws;
pub mod browser;
pub mod campaign;
pub mod compliance;
pub mod ha;
pub mod hook;
pub mod http;
pub mod procs;
pub mod promql_gen;
pub mod proxy;
pub mod receiver;
pub mod tls;

pub use procs::{bin, free_port, peer, secret, tempdir, wait_http, wait_until, Child, TempDir};
