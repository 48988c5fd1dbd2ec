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
pub mod proto;
pub mod token;
pub mod transport;
pub mod verified;

pub use error::{FsError, FsResult};
pub use ids::{BlockId, DatanodeId, Ino};
