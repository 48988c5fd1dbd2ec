//! Export rules: what the holders of mount and user certificates may do in the namespace,
//! as NFS's `/etc/exports` and MooseFS's `mfsexports.cfg` say it per client. A rule names
//! certificates by a glob on their name and says whether they may change anything (`ro`),
//! whether root (`root_squash`, on by default) or everyone (`all_squash`) acts as the
//! anonymous user, and which uids and gids a mount may act as.
//!
//! The namenode decides with these rules ([`IdMap::admit`]); a mount learns its own rule's
//! [`IdMap`] and applies it to its callers before it answers anything itself
//! ([`IdMap::apply`]), so what it answers under a delegation is what the namenode would.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::attr::Caller;
use crate::cert::{Role, UserIds};
use crate::{FsError, FsResult};

/// The anonymous user and group of NFS (`nobody`, `nogroup` on Debian).
pub const ANON_ID: u32 = 65534;

/// May the certificates of a rule change the namespace?
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[default]
    Rw,
    Ro,
}

/// An inclusive range of ids, written `1000-1999` or `1000`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdRange {
    pub first: u32,
    pub last: u32,
}

impl IdRange {
    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }
}

impl FromStr for IdRange {
    type Err = String;
    fn from_str(s: &str) -> Result<IdRange, String> {
        let bad = || format!("{s:?} is not an id or a range of ids such as 1000-1999");
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let first: u32 = first.parse().map_err(|_| bad())?;
        let last: u32 = last.parse().map_err(|_| bad())?;
        if first > last {
            return Err(bad());
        }
        Ok(IdRange { first, last })
    }
}

impl TryFrom<String> for IdRange {
    type Error = String;
    fn try_from(s: String) -> Result<IdRange, String> {
        s.parse()
    }
}

impl From<IdRange> for String {
    fn from(r: IdRange) -> String {
        r.to_string()
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One `[[exports]]` rule of the namenode's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRule {
    /// The certificate names it applies to, a glob (`web-*`, `alice`, `*`).
    pub name: String,
    #[serde(default)]
    pub access: Access,
    /// uid 0 acts as `anon_uid`, gid 0 as `anon_gid` (NFS's default, and Cairn's).
    #[serde(default = "yes")]
    pub root_squash: bool,
    /// Every uid acts as `anon_uid`, every gid as `anon_gid`.
    #[serde(default)]
    pub all_squash: bool,
    #[serde(default = "anon")]
    pub anon_uid: u32,
    #[serde(default = "anon")]
    pub anon_gid: u32,
    /// The uids a mount certificate may act as (empty: any); others are refused.
    #[serde(default)]
    pub uids: Vec<IdRange>,
    /// The gids it may act as (empty: any); other supplementary groups are dropped.
    /// (Never skipped when empty: the wire format is positional.)
    #[serde(default)]
    pub gids: Vec<IdRange>,
    /// Its mounts may honour set-user-id and set-group-id bits (`cairn mount -o suid`).
    /// Off by default: a file another client made setuid root then makes nobody root.
    #[serde(default)]
    pub suid: bool,
    /// Its mounts may open device nodes (`cairn mount -o dev`). Off by default.
    #[serde(default)]
    pub dev: bool,
    /// The directory its certificates see as the root of the namespace (NFS's and
    /// MooseFS's export of a subdirectory): nothing outside it can be named or reached.
    #[serde(default = "slash")]
    pub root: String,
}

fn slash() -> String {
    "/".to_string()
}

fn yes() -> bool {
    true
}

fn anon() -> u32 {
    ANON_ID
}

impl ExportRule {
    /// What a certificate no rule names gets: everything, read-write, root squashed.
    pub fn default_for(name: &str) -> ExportRule {
        ExportRule {
            name: name.to_string(),
            access: Access::Rw,
            root_squash: true,
            all_squash: false,
            anon_uid: ANON_ID,
            anon_gid: ANON_ID,
            uids: Vec::new(),
            gids: Vec::new(),
            suid: false,
            dev: false,
            root: slash(),
        }
    }

    /// Refuses a rule whose name is not a glob or whose root is not an absolute path.
    pub fn check(&self) -> anyhow::Result<()> {
        glob::Pattern::new(&self.name)
            .map_err(|e| anyhow::anyhow!("export name {:?} is not a glob: {e}", self.name))?;
        self.root_names()
            .map_err(|e| anyhow::anyhow!("export {:?}: {e}", self.name))?;
        Ok(())
    }

    /// The names from `/` to the rule's root, in order (none: the whole namespace).
    pub fn root_names(&self) -> Result<Vec<Vec<u8>>, String> {
        let root = &self.root;
        if !root.starts_with('/') {
            return Err(format!("root {root:?} is not an absolute path"));
        }
        root.split('/')
            .filter(|part| !part.is_empty())
            .map(|part| match part {
                "." | ".." => Err(format!("root {root:?} may not contain {part:?}")),
                _ if part.len() > crate::attr::NAME_MAX || part.contains('\0') => {
                    Err(format!("root {root:?} has a name no directory can have"))
                }
                _ => Ok(part.as_bytes().to_vec()),
            })
            .collect()
    }

    pub fn matches(&self, cert_name: &str) -> bool {
        glob::Pattern::new(&self.name).is_ok_and(|p| p.matches(cert_name))
    }
}

/// The first rule naming `cert_name`, if any.
pub fn rule_for<'a>(rules: &'a [ExportRule], cert_name: &str) -> Option<&'a ExportRule> {
    rules.iter().find(|r| r.matches(cert_name))
}

/// How the requests of one certificate act in the namespace: as whom, and whether they may
/// change it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// A user certificate's identity, which replaces whatever a request names.
    pub fixed: Option<UserIds>,
    pub root_squash: bool,
    pub all_squash: bool,
    pub anon_uid: u32,
    pub anon_gid: u32,
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    pub read_only: bool,
    /// Its mounts may honour setuid bits (`-o suid`), and open device nodes (`-o dev`).
    pub suid: bool,
    pub dev: bool,
}

impl IdMap {
    /// An administrator's: requests act as they say.
    pub fn trusted() -> IdMap {
        IdMap {
            fixed: None,
            root_squash: false,
            all_squash: false,
            anon_uid: ANON_ID,
            anon_gid: ANON_ID,
            uids: Vec::new(),
            gids: Vec::new(),
            read_only: false,
            suid: true,
            dev: true,
        }
    }

    /// The map of a certificate with `role`, name and (a user's) ids under `rules`. Admin
    /// certificates are trusted; the servers' own never act in the namespace (the role
    /// table refuses them first).
    pub fn of(role: Role, name: &str, ids: Option<&UserIds>, rules: &[ExportRule]) -> IdMap {
        if role != Role::Mount && role != Role::User {
            return IdMap::trusted();
        }
        let rule = rule_for(rules, name)
            .cloned()
            .unwrap_or_else(|| ExportRule::default_for(name));
        IdMap {
            fixed: if role == Role::User {
                ids.cloned()
            } else {
                None
            },
            root_squash: rule.root_squash,
            all_squash: rule.all_squash,
            anon_uid: rule.anon_uid,
            anon_gid: rule.anon_gid,
            uids: rule.uids,
            gids: rule.gids,
            read_only: rule.access == Access::Ro,
            suid: rule.suid,
            dev: rule.dev,
        }
    }

    /// Refuses mount options `suid` and `dev` this map does not allow, saying what would.
    pub fn allows_mount(&self, name: &str, suid: bool, dev: bool) -> Result<(), String> {
        let refused: Vec<&str> = [("suid", suid && !self.suid), ("dev", dev && !self.dev)]
            .into_iter()
            .filter_map(|(option, refused)| refused.then_some(option))
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        let options = refused.join(",");
        let keys: Vec<String> = refused.iter().map(|o| format!("{o} = true")).collect();
        Err(format!(
            "-o {options} is not allowed for certificate \"{name}\": the namenode's export \
             rule for it must say {} (without it the mount is nosuid,nodev)",
            keys.join(" and ")
        ))
    }

    fn uid_allowed(&self, uid: u32) -> bool {
        self.fixed.is_some()
            || uid == self.anon_uid
            || self.uids.is_empty()
            || self.uids.iter().any(|r| r.contains(uid))
    }

    fn gid_allowed(&self, gid: u32) -> bool {
        self.fixed.is_some()
            || gid == self.anon_gid
            || self.gids.is_empty()
            || self.gids.iter().any(|r| r.contains(gid))
    }

    /// Squashes `claimed` as the rule says (a user certificate's ids replace it first).
    fn squash(&self, claimed: Caller) -> Caller {
        let mut c = match &self.fixed {
            Some(ids) => Caller {
                uid: ids.uid,
                gid: ids.gid,
                groups: ids.groups.clone(),
            },
            None => claimed,
        };
        if self.all_squash {
            return Caller {
                uid: self.anon_uid,
                gid: self.anon_gid,
                groups: Vec::new(),
            };
        }
        if self.root_squash {
            if c.uid == 0 {
                c.uid = self.anon_uid;
            }
            if c.gid == 0 {
                c.gid = self.anon_gid;
            }
            for g in &mut c.groups {
                if *g == 0 {
                    *g = self.anon_gid;
                }
            }
        }
        c
    }

    /// Who a request naming `claimed` acts as, at the namenode: squashed, and refused
    /// (`EPERM`) when it names a uid or gid the rule does not allow; supplementary groups
    /// the rule does not allow are dropped.
    pub fn admit(&self, claimed: Caller) -> FsResult<Caller> {
        let mut c = self.squash(claimed);
        if !self.uid_allowed(c.uid) || !self.gid_allowed(c.gid) {
            return Err(FsError::NotPermitted);
        }
        c.groups.retain(|&g| self.gid_allowed(g));
        Ok(c)
    }

    /// Who a mount's caller acts as, as the namenode will admit it: a uid or gid the rule
    /// does not allow acts as the anonymous user. `admit(apply(c)) == Ok(apply(c))`.
    pub fn apply(&self, caller: Caller) -> Caller {
        let mut c = self.squash(caller);
        if !self.uid_allowed(c.uid) || !self.gid_allowed(c.gid) {
            c.uid = self.anon_uid;
            c.gid = self.anon_gid;
        }
        c.groups.retain(|&g| self.gid_allowed(g));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(toml_text: &str) -> ExportRule {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn a_rule_is_safe_unless_it_says_otherwise() {
        let r = rule("name = \"web-*\"");
        assert_eq!(r, ExportRule::default_for("web-*"));
        assert!(r.matches("web-1") && !r.matches("db-1"));
        let r = rule(
            "name = \"ci\"\naccess = \"ro\"\nroot_squash = false\nuids = [\"1000-1999\", \"0\"]",
        );
        assert_eq!(r.access, Access::Ro);
        assert_eq!(
            r.uids[0],
            IdRange {
                first: 1000,
                last: 1999
            }
        );
        for bad in [
            "name = \"x\"\nuids = [\"9-1\"]",
            "name = \"x\"\nuids = [\"a\"]",
            "name = \"x\"\nsubtree = \"/\"",
        ] {
            assert!(toml::from_str::<ExportRule>(bad).is_err(), "{bad}");
        }
        assert!(rule("name = \"[\"").check().is_err());
        assert_eq!(r.root_names().unwrap(), Vec::<Vec<u8>>::new());
        let r = rule("name = \"x\"\nroot = \"/srv//web/\"");
        assert_eq!(r.root_names().unwrap(), [b"srv".to_vec(), b"web".to_vec()]);
        for bad in ["srv", "/srv/../etc", "/./srv"] {
            let r = rule(&format!("name = \"x\"\nroot = \"{bad}\""));
            assert!(r.check().is_err(), "{bad}");
        }
    }

    #[test]
    fn root_is_squashed_by_default_and_a_user_is_who_its_certificate_says() {
        let root = Caller {
            uid: 0,
            gid: 0,
            groups: vec![0, 4],
        };
        let mount = IdMap::of(Role::Mount, "h", None, &[]);
        let squashed = mount.admit(root.clone()).unwrap();
        assert_eq!((squashed.uid, squashed.gid), (ANON_ID, ANON_ID));
        assert_eq!(squashed.groups, vec![ANON_ID, 4]);

        let trusting = [rule("name = \"h\"\nroot_squash = false")];
        let mount = IdMap::of(Role::Mount, "h", None, &trusting);
        assert_eq!(mount.admit(root.clone()).unwrap(), root);
        assert_eq!(
            IdMap::of(Role::Admin, "h", None, &[]).admit(root.clone()),
            Ok(root.clone())
        );

        let alice = UserIds {
            uid: 1000,
            gid: 1000,
            groups: vec![27],
        };
        let user = IdMap::of(Role::User, "alice", Some(&alice), &trusting);
        let acted = user.admit(root.clone()).unwrap();
        assert_eq!((acted.uid, acted.gid, acted.groups), (1000, 1000, vec![27]));
    }

    #[test]
    fn a_mount_acts_only_as_the_ids_its_rule_allows() {
        let rules = [rule(
            "name = \"lab-*\"\nuids = [\"1000-1999\"]\ngids = [\"100\"]",
        )];
        let map = IdMap::of(Role::Mount, "lab-3", None, &rules);
        let caller = |uid, gid, groups: &[u32]| Caller {
            uid,
            gid,
            groups: groups.to_vec(),
        };
        assert_eq!(
            map.admit(caller(1500, 100, &[100, 7])),
            Ok(caller(1500, 100, &[100]))
        );
        assert_eq!(map.admit(caller(42, 100, &[])), Err(FsError::NotPermitted));
        assert_eq!(map.admit(caller(1500, 7, &[])), Err(FsError::NotPermitted));
        // Root is squashed to the anonymous user, which is always allowed.
        assert_eq!(
            map.admit(caller(0, 0, &[])),
            Ok(caller(ANON_ID, ANON_ID, &[]))
        );
        assert_eq!(
            map.apply(caller(42, 100, &[])),
            caller(ANON_ID, ANON_ID, &[])
        );
    }

    proptest! {
        #[test]
        fn what_a_mount_applies_the_namenode_admits_unchanged(
            uid in 0u32..3000, gid in 0u32..300, groups in proptest::collection::vec(0u32..300, 0..4),
            squash_root: bool, squash_all: bool, ranged: bool, user: bool,
        ) {
            let mut r = ExportRule::default_for("*");
            r.root_squash = squash_root;
            r.all_squash = squash_all;
            if ranged {
                r.uids = vec![IdRange { first: 1000, last: 1999 }];
                r.gids = vec![IdRange { first: 100, last: 199 }, IdRange { first: 0, last: 0 }];
            }
            let ids = UserIds { uid: 7, gid: 8, groups: vec![9] };
            let map = if user {
                IdMap::of(Role::User, "u", Some(&ids), &[r])
            } else {
                IdMap::of(Role::Mount, "m", None, &[r])
            };
            let applied = map.apply(Caller { uid, gid, groups });
            prop_assert_eq!(map.admit(applied.clone()), Ok(applied.clone()));
            prop_assert_eq!(map.apply(applied.clone()), applied);
        }
    }
}
