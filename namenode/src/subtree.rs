//! Exports of a subtree: a connection whose export rule names a `root` other than `/` sees
//! that directory as the root of the namespace and cannot name or reach anything outside
//! it, as NFS's and MooseFS's exports of a subdirectory.
//!
//! Two things make it so, both here. Every inode number a request names goes through
//! [`Subtree::enter`]: the root's number and 1 change places (so the client's root is the
//! subtree's), and the inode must lie inside the subtree ([`MetaEngine::within`]: a
//! directory below the root, or a file with a name in such a directory). Every answer goes
//! through [`Subtree::leave`], which changes the two numbers back. `..` needs nothing: no
//! request resolves it (the client's kernel does, from what it was told).
//!
//! [`MetaEngine::within`]: crate::engine::MetaEngine::within

use cairn_common::attr::{DirEntry, InodeAttr};
use cairn_common::proto::*;
use cairn_common::Ino;

/// The subtree one connection is confined to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subtree {
    pub root: Ino,
}

impl Subtree {
    fn swap(self, ino: Ino) -> Ino {
        if ino == Ino::ROOT {
            self.root
        } else if ino == self.root {
            Ino::ROOT
        } else {
            ino
        }
    }

    /// Translates the inode numbers `req` names into the namespace's, and returns them for
    /// the caller to check.
    pub fn enter(self, req: &mut NamenodeRequest) -> Vec<Ino> {
        let mut named = Vec::new();
        req.each_ino(&mut |ino| {
            *ino = self.swap(*ino);
            named.push(*ino);
        });
        named
    }

    /// Translates the inode numbers of an answer into the connection's.
    pub fn leave<T: Inos>(self, answer: &mut T) {
        answer.each_ino(&mut |ino| *ino = self.swap(*ino));
    }
}

/// Something that names inodes: each is visited, and may be rewritten.
pub trait Inos {
    fn each_ino(&mut self, f: &mut impl FnMut(&mut Ino));
}

impl<T: Inos> Inos for Vec<T> {
    fn each_ino(&mut self, f: &mut impl FnMut(&mut Ino)) {
        self.iter_mut().for_each(|t| t.each_ino(f));
    }
}

impl<T: Inos> Inos for Option<T> {
    fn each_ino(&mut self, f: &mut impl FnMut(&mut Ino)) {
        if let Some(t) = self {
            t.each_ino(f);
        }
    }
}

impl<T: Inos, E> Inos for Result<T, E> {
    fn each_ino(&mut self, f: &mut impl FnMut(&mut Ino)) {
        if let Ok(t) = self {
            t.each_ino(f);
        }
    }
}

impl Inos for Ino {
    fn each_ino(&mut self, f: &mut impl FnMut(&mut Ino)) {
        f(self);
    }
}

/// Types whose listed fields are all that name inodes.
macro_rules! inos_in {
    ($($t:ty => [$($field:ident),*];)*) => {
        $(impl Inos for $t {
            #[allow(unused_variables)]
            fn each_ino(&mut self, f: &mut impl FnMut(&mut Ino)) {
                $(self.$field.each_ino(f);)*
            }
        })*
    };
}

inos_in! {
    // Answers.
    InodeAttr => [ino];
    DirEntry => [ino, attr];
    CreateReply => [attr];
    Removed => [ino, trash];
    Renamed => [moved, replaced, trash];
    ChangedDir => [attr];
    ChunkMap => [attr];
    Opened => [map];
    Copied => [attr];
    ChangesReply => [changes];
    DirListing => [entries, whole];
    Delegation => [granted];
    Granted => [attr, names];
    TrashPage => [entries];
    TrashEntry => [dir, origin];
    TrashOrigin => [parent];
    // Answers that name no inode.
    () => [];
    u8 => [];
    u64 => [];
    FsStats => [];
    Placement => [];
    DatanodeStatus => [];
    LockRange => [];
    RegisterReply => [];
    HeartbeatReply => [];
    RepairStatus => [];
    SafeModeStatus => [];
    BalanceStatus => [];
    MetaHealth => [];
    MountStatus => [];
    InoRange => [];
    NamespaceCheck => [];
    Identity => [];
    cairn_common::exports::ExportRule => [];
    cairn_common::token::BlockToken => [];
    // Requests' parts.
    Create => [parent, ino];
    Unlink => [parent];
    Rmdir => [parent];
    CommitSlices => [ino];
}

impl<T: Inos> Inos for Changed<T> {
    fn each_ino(&mut self, f: &mut impl FnMut(&mut Ino)) {
        self.reply.each_ino(f);
        self.dirs.each_ino(f);
    }
}

impl Inos for Change {
    fn each_ino(&mut self, f: &mut impl FnMut(&mut Ino)) {
        match self {
            Change::Inode(ino)
            | Change::Entries(ino, _)
            | Change::Recall(ino)
            | Change::Delegated(ino) => f(ino),
        }
    }
}

impl Inos for QueuedDone {
    fn each_ino(&mut self, f: &mut impl FnMut(&mut Ino)) {
        match self {
            QueuedDone::Created(r) => r.each_ino(f),
            QueuedDone::Removed(r) => r.each_ino(f),
            QueuedDone::Committed(r) => r.each_ino(f),
            QueuedDone::Attr(r) => r.each_ino(f),
        }
    }
}

impl Inos for QueuedOp {
    fn each_ino(&mut self, f: &mut impl FnMut(&mut Ino)) {
        match self {
            QueuedOp::Create(r) => r.each_ino(f),
            QueuedOp::Unlink(r) => r.each_ino(f),
            QueuedOp::Rmdir(r) => r.each_ino(f),
            QueuedOp::Commit { dir, commit } => {
                f(dir);
                commit.each_ino(f);
            }
            QueuedOp::SetAttr { dir, ino, .. } => {
                f(dir);
                f(ino);
            }
        }
    }
}

impl Inos for NamenodeRequest {
    /// Every inode the request names. No wildcard: a new request must say what it names.
    fn each_ino(&mut self, f: &mut impl FnMut(&mut Ino)) {
        use NamenodeRequest as R;
        match self {
            R::Lookup(r) => f(&mut r.parent),
            R::GetAttr(r) => f(&mut r.ino),
            R::Accessed(r) => f(&mut r.ino),
            R::SetAttrReq(r) => f(&mut r.ino),
            R::Mkdir(r) => f(&mut r.parent),
            R::Create(r) => r.each_ino(f),
            R::Mknod(r) => f(&mut r.parent),
            R::Unlink(r) => r.each_ino(f),
            R::Rmdir(r) => r.each_ino(f),
            R::Rename(r) => {
                f(&mut r.parent);
                f(&mut r.new_parent);
            }
            R::Symlink(r) => f(&mut r.parent),
            R::Readlink(r) => f(&mut r.ino),
            R::Link(r) => {
                f(&mut r.ino);
                f(&mut r.new_parent);
            }
            R::ReadDir(r) => f(&mut r.ino),
            R::ListDir(r) => f(&mut r.ino),
            R::SetXattr(r) => f(&mut r.ino),
            R::GetXattr(r) => f(&mut r.ino),
            R::ListXattr(r) => f(&mut r.ino),
            R::RemoveXattr(r) => f(&mut r.ino),
            R::SetReplication(r) => f(&mut r.ino),
            R::ReadChunks(r) => f(&mut r.ino),
            R::AllocateBlock(r) => f(&mut r.ino),
            R::CommitSlices(r) => r.each_ino(f),
            R::CopyRange(r) => {
                f(&mut r.src);
                f(&mut r.dst);
            }
            R::Punch(r) => f(&mut r.ino),
            R::Seek(r) => f(&mut r.ino),
            R::GetLock(r) => f(&mut r.ino),
            R::SetLock(r) => f(&mut r.ino),
            R::ReleaseLocks(r) => f(&mut r.ino),
            R::Open(r) => f(&mut r.ino),
            R::KeepOpen(r) => {
                r.open.each_ino(f);
                r.writing.each_ino(f);
            }
            R::Delegate(r) => f(&mut r.dir),
            R::Queued(q) => q.ops.iter_mut().for_each(|c| c.op.each_ino(f)),
            R::Restore(r) => {
                f(&mut r.parent);
                if let Some((parent, _)) = &mut r.to {
                    f(parent);
                }
            }
            R::ListTrash(r) => {
                if let Some((dir, _)) = &mut r.after {
                    f(dir);
                }
            }
            R::StatFs(_)
            | R::ReportBadReplica(_)
            | R::ListDatanodes(_)
            | R::Register(_)
            | R::BlockReport(_)
            | R::BlockReceived(_)
            | R::Heartbeat(_)
            | R::GetRepairStatus(_)
            | R::SafeMode(_)
            | R::Balance(_)
            | R::SetAdminState(_)
            | R::Changes(_)
            | R::GetMetaHealth(_)
            | R::ListMounts(_)
            | R::ForgetDatanode(_)
            | R::SyncMetadata(_)
            | R::ReserveInos(_)
            | R::CheckNamespace(_)
            | R::WhoAmI(_)
            | R::ListExports(_)
            | R::GrantWrite(_)
            | R::Raft(_)
            | R::ListNamenodes(_)
            | R::ChangeNamenodes(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_and_the_subtree_change_places_both_ways() {
        let s = Subtree { root: Ino(40) };
        let mut req = NamenodeRequest::Rename(Rename {
            parent: Ino::ROOT,
            name: b"a".to_vec(),
            new_parent: Ino(41),
            new_name: b"b".to_vec(),
            mode: RenameMode::Replace,
        });
        assert_eq!(s.enter(&mut req), [Ino(40), Ino(41)]);
        let mut req = NamenodeRequest::GetAttr(GetAttr { ino: Ino(40) });
        // The subtree's own number names the namespace's root: outside, refused later.
        assert_eq!(s.enter(&mut req), [Ino::ROOT]);
        let mut answer = DirListing {
            entries: vec![DirEntry {
                name: b"x".to_vec(),
                ino: Ino(41),
                kind: cairn_common::attr::FileKind::Dir,
                attr: None,
            }],
            whole: None,
        };
        s.leave(&mut answer);
        assert_eq!(answer.entries[0].ino, Ino(41));
        let mut feed = vec![Change::Entries(Ino(40), 3), Change::Inode(Ino(9))];
        s.leave(&mut feed);
        assert_eq!(feed, [Change::Entries(Ino::ROOT, 3), Change::Inode(Ino(9))]);
    }
}
