//! Everything the Cairn daemons, the client library and the CLI share: identifiers, file
//! attributes, the wire protocol of each service, the frame codec, the QUIC transport with
//! mutual TLS, and the cluster certificate authority.
//!
//! This crate never touches RocksDB, FUSE or a block file: it is the common language, not a
//! component.

pub mod attr;
pub mod cert;
pub mod codec;
pub mod config;
pub mod disk;
pub mod error;
pub mod exports;
pub mod ids;
pub mod layout;
pub mod locks;
pub mod namenodes;
pub mod proto;
pub mod token;
pub mod transport;
pub mod verified;

pub use error::{FsError, FsResult};

/// Cases per property of a fuzz test (proptest): `default` in the suite, the
/// `CAIRN_FUZZ_CASES` environment variable's number to run them longer by hand.
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("CAIRN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
pub use ids::{BlockId, DatanodeId, Ino};
