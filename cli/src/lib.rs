//! The `cairn` command's library half: the in-process development cluster that `cairn dev`
//! runs and the system tests start, and the command implementations.

pub mod admin_cmd;
pub mod balance_cmd;
pub mod bench;
pub mod devcluster;
pub mod fs_cmd;
pub mod mount_cmd;
pub mod trash_cmd;
