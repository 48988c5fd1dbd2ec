//! The one error type that crosses the wire. Every failure a caller can see is one of these,
//! and each has exactly one errno, so the CLI and the FUSE layer map errors totally.

use serde::{Deserialize, Serialize};

pub type FsResult<T> = Result<T, FsError>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file name too long (more than 255 bytes)")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("operation not permitted")]
    NotPermitted,
    #[error("permission denied")]
    AccessDenied,
    /// The peer's certificate is of another role than the request needs (a datanode
    /// started with a client's certificate): no retry helps.
    #[error("refused: {0}")]
    WrongRole(String),
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("no such attribute")]
    NoAttr,
    #[error("too many links")]
    TooManyLinks,
    #[error("file too large")]
    TooLarge,
    #[error("result does not fit the caller's buffer")]
    Range,
    /// A lock is held by someone else and the caller did not ask to wait.
    #[error("resource temporarily unavailable (lock held elsewhere)")]
    WouldBlock,
    /// Data could not be read or stored; the cause says which block and where.
    #[error("I/O error: {0}")]
    Io(String),
    /// A peer could not be reached or refused service; another replica or a retry may work.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A peer sent something that does not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Not now: the thing asked for is in a transition that ends by itself; try again soon.
    #[error("busy: {0}")]
    Busy(String),
    /// The caller's export is read-only.
    #[error("read-only file system: {0}")]
    ReadOnly(String),
    /// A datanode refused the request's block access token (missing, expired, for another
    /// block or holder, or not signed by the namenode): a new one from the namenode helps.
    #[error("block access refused: {0}")]
    Token(String),
    /// The namenode asked is a member of a namenode group that does not lead it: the
    /// leader, at the address given if known, serves the request. It did nothing with it.
    #[error("this namenode does not lead its group{}", leader_at(.0))]
    NotLeader(Option<std::net::SocketAddr>),
}

fn leader_at(leader: &Option<std::net::SocketAddr>) -> String {
    match leader {
        Some(addr) => format!(": the leader is at {addr}"),
        None => ", and knows no leader now".into(),
    }
}

impl FsError {
    /// The errno a local file system would return for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NotPermitted => libc::EPERM,
            FsError::AccessDenied | FsError::WrongRole(_) => libc::EACCES,
            FsError::NoSpace(_) => libc::ENOSPC,
            FsError::NoAttr => libc::ENODATA,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::TooLarge => libc::EFBIG,
            FsError::Range => libc::ERANGE,
            FsError::WouldBlock => libc::EAGAIN,
            FsError::Io(_) | FsError::Protocol(_) => libc::EIO,
            FsError::Unavailable(_) | FsError::NotLeader(_) => libc::ENOTCONN,
            FsError::Busy(_) => libc::EBUSY,
            FsError::ReadOnly(_) => libc::EROFS,
            FsError::Token(_) => libc::EACCES,
        }
    }

    /// Is it worth trying again, or against another replica?
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            FsError::Unavailable(_) | FsError::Io(_) | FsError::NotLeader(_)
        )
    }

    pub fn invalid(msg: impl Into<String>) -> FsError {
        FsError::Invalid(msg.into())
    }

    pub fn io(msg: impl std::fmt::Display) -> FsError {
        FsError::Io(msg.to_string())
    }

    pub fn unavailable(msg: impl std::fmt::Display) -> FsError {
        FsError::Unavailable(msg.to_string())
    }

    pub fn protocol(msg: impl std::fmt::Display) -> FsError {
        FsError::Protocol(msg.to_string())
    }
}
