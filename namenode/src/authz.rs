//! Who may send what, decided in one place before a request is looked at: which roles may
//! send a request at all ([`class`], [`Class::roles`]), and as whom a request acts in the
//! namespace — a user certificate as itself, a mount as its caller within its export rule,
//! an administrator as it says ([`IdMap`]). The POSIX checks that follow use that identity.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use cairn_common::attr::Caller;
use cairn_common::cert::Role;
use cairn_common::exports::{rule_for, ExportRule, IdMap};
use cairn_common::proto::{BalanceAction, NamenodeRequest, SafeModeAction};
use cairn_common::transport::Peer;
use cairn_common::{FsError, FsResult};
use tracing::warn;

/// What a request does, as far as who may send it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Looks at the namespace.
    Read,
    /// Changes the namespace (refused on a read-only export).
    Change,
    /// Keeps a mount's own state: open files, locks, its reading of the change feed.
    Session,
    /// Reads the cluster's health, as `cairn admin status` shows it.
    Status,
    /// A datanode's report of itself.
    Datanode,
    /// A reader's or a scrubber's word that a replica is bad.
    Report,
    /// Changes how the cluster runs, or shows what is other users' (`cairn admin`).
    Admin,
    /// Raft's messages between the members of the namenode group.
    Member,
}

impl Class {
    /// The roles that may send a request of this class.
    pub fn roles(self) -> &'static [Role] {
        const NAMESPACE: &[Role] = &[Role::Admin, Role::Mount, Role::User];
        match self {
            Class::Read | Class::Change | Class::Session | Class::Status => NAMESPACE,
            Class::Datanode => &[Role::Datanode],
            Class::Report => &[Role::Datanode, Role::Admin, Role::Mount, Role::User],
            Class::Admin => &[Role::Admin],
            Class::Member => &[Role::Namenode],
        }
    }
}

/// The class of `req`. Every request is named: a new one must be placed here.
pub fn class(req: &NamenodeRequest) -> Class {
    use NamenodeRequest as R;
    match req {
        R::Lookup(_)
        | R::GetAttr(_)
        | R::Readlink(_)
        | R::ReadDir(_)
        | R::StatFs(_)
        | R::GetXattr(_)
        | R::ListXattr(_)
        | R::ReadChunks(_)
        | R::Seek(_)
        | R::GetLock(_)
        | R::ListDir(_)
        | R::WhoAmI(_) => Class::Read,
        R::Open(r) if r.write => Class::Change,
        R::Open(_) => Class::Read,
        R::ListTrash(r) if r.all => Class::Admin,
        R::ListTrash(_) => Class::Read,
        R::Accessed(_)
        | R::SetAttrReq(_)
        | R::Mkdir(_)
        | R::Create(_)
        | R::Mknod(_)
        | R::Unlink(_)
        | R::Rmdir(_)
        | R::Rename(_)
        | R::Symlink(_)
        | R::Link(_)
        | R::SetXattr(_)
        | R::RemoveXattr(_)
        | R::SetReplication(_)
        | R::AllocateBlock(_)
        | R::CommitSlices(_)
        | R::CopyRange(_)
        | R::Punch(_)
        | R::Restore(_)
        | R::Delegate(_)
        | R::ReserveInos(_)
        | R::Queued(_)
        | R::GrantWrite(_) => Class::Change,
        R::SetLock(_)
        | R::ReleaseLocks(_)
        | R::KeepOpen(_)
        | R::Changes(_)
        | R::SyncMetadata(_) => Class::Session,
        R::ListDatanodes(_) | R::GetRepairStatus(_) | R::GetMetaHealth(_) | R::ListNamenodes(_) => {
            Class::Status
        }
        R::SafeMode(r) if r.action == SafeModeAction::Get => Class::Status,
        R::Balance(r) if matches!(r.action, BalanceAction::Get) => Class::Status,
        R::SafeMode(_)
        | R::Balance(_)
        | R::SetAdminState(_)
        | R::ForgetDatanode(_)
        | R::ListMounts(_)
        | R::CheckNamespace(_)
        | R::ListExports(_)
        | R::ChangeNamenodes(_) => Class::Admin,
        R::Register(_) | R::BlockReport(_) | R::BlockReceived(_) | R::Heartbeat(_) => {
            Class::Datanode
        }
        R::ReportBadReplica(_) => Class::Report,
        R::Raft(_) => Class::Member,
    }
}

/// The request's name, for messages.
fn request_name(req: &NamenodeRequest) -> String {
    let debug = format!("{req:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The export rules and revoked certificates in force, reloaded on SIGHUP.
pub struct Authz {
    rules: RwLock<Arc<Vec<ExportRule>>>,
    /// Serials of revoked certificates (the namenode's `crl`).
    revoked: RwLock<Arc<HashSet<Vec<u8>>>>,
    /// Counts loads of the rules, from a random start.
    generation: AtomicU64,
    /// Each connection's map, as of a load of the rules.
    maps: Mutex<HashMap<u64, Arc<PeerMap>>>,
}

/// How one connection's requests act.
pub struct PeerMap {
    pub map: IdMap,
    /// The export rule's name pattern, when one names the certificate.
    pub rule: Option<String>,
    /// The names from `/` to the directory the rule confines it to (none: not confined),
    /// and that directory once found.
    pub root: Vec<Vec<u8>>,
    pub root_ino: std::sync::OnceLock<cairn_common::Ino>,
    generation: u64,
}

impl Authz {
    pub fn new(rules: Vec<ExportRule>, revoked: Vec<Vec<u8>>) -> Authz {
        Authz {
            rules: RwLock::new(Arc::new(rules)),
            revoked: RwLock::new(Arc::new(revoked.into_iter().collect())),
            // Another run's rules may differ: mounts ask again after a restart too.
            generation: AtomicU64::new(rand::random::<u32>().into()),
            maps: Mutex::default(),
        }
    }

    /// Puts `rules` and `revoked` in force for every request from now on.
    pub fn reload(&self, rules: Vec<ExportRule>, revoked: Vec<Vec<u8>>) {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        *self.revoked.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(revoked.into_iter().collect());
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn rules(&self) -> Arc<Vec<ExportRule>> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every revoked serial, as datanodes are told them.
    pub fn revoked(&self) -> Vec<Vec<u8>> {
        let revoked = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        revoked.iter().cloned().collect()
    }

    /// Why `peer` may not be served: its certificate was revoked.
    pub fn refuses(&self, peer: &Peer) -> Option<String> {
        let revoked = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        revoked.contains(&peer.cert_serial).then(|| peer.revoked())
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// How `peer`'s requests act, and the rule that says so; worked out once per
    /// connection and load of the rules.
    pub fn map(&self, peer: &Peer) -> Arc<PeerMap> {
        let generation = self.generation();
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = maps
            .get(&peer.serial)
            .filter(|m| m.generation == generation)
        {
            return m.clone();
        }
        let rules = self.rules();
        let rule = match peer.role {
            Role::Mount | Role::User => rule_for(&rules, &peer.name),
            _ => None,
        };
        let map = Arc::new(PeerMap {
            map: IdMap::of(peer.role, &peer.name, peer.ids.as_ref(), &rules),
            rule: rule.map(|r| r.name.clone()),
            // Checked when the rules were loaded.
            root: rule.and_then(|r| r.root_names().ok()).unwrap_or_default(),
            root_ino: Default::default(),
            generation,
        });
        maps.insert(peer.serial, map.clone());
        map
    }

    /// The connection of `peer` ended.
    pub fn forget(&self, peer: &Peer) {
        self.maps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer.serial);
    }

    /// Admits `req` from `peer`, which names `claimed` as its caller: refused unless the
    /// peer's role may send it (and, on a read-only export, unless it changes nothing);
    /// otherwise the caller it acts as. Every refusal is logged.
    pub fn admit(&self, peer: &Peer, req: &NamenodeRequest, claimed: Caller) -> FsResult<Caller> {
        let class = class(req);
        if !class.roles().contains(&peer.role) {
            let roles: Vec<&str> = class.roles().iter().map(|r| r.as_str()).collect();
            let why = format!(
                "{} needs a certificate of role {}, and {:?} is a {} certificate",
                request_name(req),
                roles.join(" or "),
                peer.name,
                peer.role
            );
            warn!(peer = %peer.name, addr = %peer.addr, "refused: {why}");
            return Err(FsError::WrongRole(why));
        }
        if matches!(peer.role, Role::Datanode | Role::Namenode) {
            return Ok(claimed);
        }
        let peer_map = self.map(peer);
        let map = &peer_map.map;
        if map.read_only && class == Class::Change {
            return Err(FsError::ReadOnly(format!(
                "the export of {:?} is read-only",
                peer.name
            )));
        }
        if class != Class::Read && class != Class::Change {
            // A mount's own upkeep (the feed, renewals, locks), sent as whoever the mount
            // process is: it acts as no one in particular.
            return Ok(map.apply(claimed));
        }
        map.admit(claimed.clone()).inspect_err(|_| {
            warn!(
                peer = %peer.name, addr = %peer.addr, uid = claimed.uid, gid = claimed.gid,
                "refused: a request acting as ids its export does not allow"
            );
        })
    }

    /// Who one of a holder's queued changes acts as (each names its own caller).
    pub fn admit_queued(&self, peer: &Peer, claimed: Caller) -> FsResult<Caller> {
        if peer.role == Role::Admin {
            return Ok(claimed);
        }
        self.map(peer).map.admit(claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::proto::{BlockReceived, ListMounts, Lookup, Open, OpenClaim};
    use cairn_common::Ino;

    fn peer(role: Role, name: &str) -> Peer {
        Peer {
            role,
            name: name.into(),
            ids: None,
            cert_serial: vec![1],
            addr: "127.0.0.1:1".parse().unwrap(),
            connection: 1,
            // Each its own connection.
            serial: rand::random(),
        }
    }

    #[test]
    fn each_role_sends_only_what_it_is_for() {
        let authz = Authz::new(vec![], vec![]);
        let lookup = NamenodeRequest::Lookup(Lookup {
            parent: Ino(1),
            name: b"x".to_vec(),
        });
        let mounts = NamenodeRequest::ListMounts(ListMounts {});
        let root = Caller::ROOT;
        for role in [Role::Namenode, Role::Datanode] {
            assert!(matches!(
                authz.admit(&peer(role, "n"), &lookup, root.clone()),
                Err(FsError::WrongRole(_))
            ));
        }
        let err = authz
            .admit(&peer(Role::Mount, "m"), &mounts, root.clone())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("ListMounts needs a certificate of role admin"),
            "{err}"
        );
        assert_eq!(
            authz.admit(&peer(Role::Admin, "a"), &mounts, root.clone()),
            Ok(Caller::ROOT)
        );
        // A mount's root is squashed by default.
        let acted = authz
            .admit(&peer(Role::Mount, "m"), &lookup, root.clone())
            .unwrap();
        assert_eq!(acted.uid, cairn_common::exports::ANON_ID);
        let received = NamenodeRequest::BlockReceived(BlockReceived {
            id: cairn_common::DatanodeId(7),
            added: vec![],
            removed: vec![],
        });
        assert!(authz
            .admit(&peer(Role::Admin, "a"), &received, root.clone())
            .is_err());
        assert!(authz
            .admit(&peer(Role::Datanode, "d"), &received, root.clone())
            .is_ok());
    }

    #[test]
    fn a_read_only_export_refuses_every_change_and_reloads_take_effect() {
        let authz = Authz::new(
            vec![ExportRule {
                access: cairn_common::exports::Access::Ro,
                ..ExportRule::default_for("ro-*")
            }],
            vec![],
        );
        let open = |write| {
            NamenodeRequest::Open(Open {
                ino: Ino(2),
                write,
                claim: OpenClaim { session: 1, gen: 1 },
            })
        };
        let p = peer(Role::Mount, "ro-1");
        assert!(authz.admit(&p, &open(false), Caller::ROOT).is_ok());
        assert!(matches!(
            authz.admit(&p, &open(true), Caller::ROOT),
            Err(FsError::ReadOnly(_))
        ));
        assert!(authz
            .admit(&peer(Role::Mount, "rw-1"), &open(true), Caller::ROOT)
            .is_ok());
        let before = authz.generation();
        assert_eq!(authz.refuses(&p), None);
        authz.reload(vec![], vec![vec![1]]);
        assert!(authz.generation() > before);
        assert!(authz.admit(&p, &open(true), Caller::ROOT).is_ok());
        assert!(authz.refuses(&p).unwrap().contains("revoked"));
    }
}
