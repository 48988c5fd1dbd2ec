//! Block access tokens: what lets a datanode serve a block without asking the namenode.
//!
//! The namenode, having checked a caller may read a file, hands it with the file's map one
//! token per block, naming the block, the access (read), the certificate it is for (its
//! serial) and when it expires, and signed with a key only the namenode and the registered
//! datanodes know (keyed BLAKE3). A writer gets one write token for any block: blocks are
//! named by their hash, so writing one can only add bytes, never change another's. A
//! datanode serves `GetBlock`, `GetRange`, `PutBlock` and `SyncBlocks` only with a valid
//! token presented by the certificate it names (or forwarded by another datanode: a
//! pipeline's next hop, a copy the namenode ordered).
//!
//! Keys roll: each signs for one epoch of a tenth of the tokens' lifetime, and is known to datanodes from a
//! moment before its epoch to when the last token it signed has expired. They are derived
//! from a master secret the namenode derives from its own private key, so they survive its
//! restarts without a key of their own on any disk; datanodes hold them in memory only, and
//! learn them from the namenode over their mutually authenticated connection.

use serde::{Deserialize, Serialize};

use crate::{BlockId, FsError, FsResult};

/// How long a token is valid by default (HDFS's default too): a reader whose token expires
/// mid-read fetches its file's map again, which brings new ones.
pub const DEFAULT_LIFETIME_SECS: u64 = 10 * 3600;

/// How far ahead of their epochs datanodes learn keys.
pub const KEYS_AHEAD: std::time::Duration = std::time::Duration::from_secs(30);

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    /// `GetBlock` and `GetRange` of its block.
    Read,
    /// `PutBlock` of its block (any block when it names none) and `SyncBlocks`.
    Write,
}

/// A signed permission to access a block on any datanode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockToken {
    /// The epoch of the key that signed it.
    pub key: u64,
    /// Unix seconds after which it is refused.
    pub expires: u64,
    pub access: Access,
    /// The block; `None` for a write token (any block).
    pub block: Option<BlockId>,
    /// The serial of the certificate it was given to.
    pub holder: Vec<u8>,
    pub mac: [u8; 32],
}

/// One of the keys tokens are signed with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockKey {
    /// Its epoch: it signs tokens from `epoch * roll` to `(epoch + 1) * roll` (Unix seconds),
    /// `roll` being a tenth of the tokens' lifetime.
    pub epoch: u64,
    pub secret: [u8; 32],
}

impl std::fmt::Debug for BlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockKey {{ epoch: {}, .. }}", self.epoch)
    }
}

fn mac(
    secret: &[u8; 32],
    (key, expires, access, block, holder): (u64, u64, Access, &Option<BlockId>, &[u8]),
) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(&key.to_le_bytes());
    h.update(&expires.to_le_bytes());
    h.update(&[access as u8]);
    match block {
        Some(b) => h.update(&[1]).update(&b.0),
        None => h.update(&[0]),
    };
    h.update(&(holder.len() as u64).to_le_bytes());
    h.update(holder);
    h.finalize()
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The namenode's side: signs tokens and says which keys datanodes need.
pub struct Signer {
    master: [u8; 32],
    lifetime: u64,
    roll: u64,
}

impl Signer {
    /// A signer whose keys derive from `secret` (the namenode's private key), for tokens
    /// valid `lifetime` seconds.
    pub fn new(secret: &[u8], lifetime: u64) -> Signer {
        let lifetime = lifetime.max(1);
        Signer {
            master: blake3::derive_key("cairn 2026 block access token keys", secret),
            lifetime,
            roll: (lifetime / 10).max(1),
        }
    }

    pub fn lifetime(&self) -> u64 {
        self.lifetime
    }

    fn key(&self, epoch: u64) -> BlockKey {
        let mut h = blake3::Hasher::new_keyed(&self.master);
        h.update(&epoch.to_le_bytes());
        BlockKey {
            epoch,
            secret: *h.finalize().as_bytes(),
        }
    }

    /// A token for `holder`, signed now.
    pub fn sign(&self, access: Access, block: Option<BlockId>, holder: &[u8]) -> BlockToken {
        let now = now();
        let key = self.key(now / self.roll);
        let expires = now + self.lifetime;
        let mac = mac(&key.secret, (key.epoch, expires, access, &block, holder));
        BlockToken {
            key: key.epoch,
            expires,
            access,
            block,
            holder: holder.to_vec(),
            mac: *mac.as_bytes(),
        }
    }

    /// The keys a datanode needs now: every one that signed a token still valid, and those
    /// of the next [`KEYS_AHEAD`] (at least the next epoch's), so that a datanode whose
    /// heartbeats come late still knows the key of a token signed meanwhile.
    pub fn keys(&self) -> Vec<BlockKey> {
        let now = now();
        let first = now.saturating_sub(self.lifetime) / self.roll;
        let last = (now + KEYS_AHEAD.as_secs()) / self.roll + 1;
        (first..=last).map(|e| self.key(e)).collect()
    }
}

/// A datanode's side: the keys the namenode gave, and the check of a request's token.
#[derive(Default)]
pub struct Verifier {
    keys: std::sync::RwLock<Vec<BlockKey>>,
}

/// Why a token was refused: what the datanode answers, as an access error.
fn refused(why: impl std::fmt::Display) -> FsError {
    FsError::Token(why.to_string())
}

impl Verifier {
    /// Takes the keys of the namenode's latest answer.
    pub fn set_keys(&self, keys: Vec<BlockKey>) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// Whether the namenode has given any key yet.
    pub fn has_keys(&self) -> bool {
        !self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Checks `token` allows `access` to `block` for a peer with certificate serial
    /// `serial`; `forwarded` when the peer is another datanode passing on a request (a
    /// pipeline's next hop), which may carry another holder's token.
    pub fn check(
        &self,
        token: Option<&BlockToken>,
        access: Access,
        block: Option<&BlockId>,
        serial: &[u8],
        forwarded: bool,
    ) -> FsResult<()> {
        let Some(t) = token else {
            return Err(refused("the request carries no block access token"));
        };
        if t.access != access {
            return Err(refused(format!(
                "the token allows {:?} access, the request needs {access:?}",
                t.access
            )));
        }
        match (&t.block, block) {
            (None, _) if access == Access::Write => {}
            (Some(b), Some(want)) if b == want => {}
            (Some(b), _) => return Err(refused(format!("the token is for block {b}"))),
            (None, _) => return Err(refused("a read token must name its block")),
        }
        if !forwarded && t.holder != serial {
            return Err(refused("the token was given to another certificate"));
        }
        let now = now();
        if t.expires < now {
            return Err(refused(format!(
                "the token expired {} s ago",
                now - t.expires
            )));
        }
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let Some(key) = keys.iter().find(|k| k.epoch == t.key) else {
            return Err(refused(if keys.is_empty() {
                "this datanode has not heard from the namenode yet".to_string()
            } else {
                format!("the token's key ({}) is unknown here", t.key)
            }));
        };
        let want = mac(
            &key.secret,
            (t.key, t.expires, t.access, &t.block, &t.holder),
        );
        // blake3::Hash compares in constant time.
        if want != blake3::Hash::from_bytes(t.mac) {
            return Err(refused("the token's signature does not verify"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(signer: &Signer) -> Verifier {
        let v = Verifier::default();
        v.set_keys(signer.keys());
        v
    }

    #[test]
    fn a_token_opens_its_block_for_its_holder_and_nothing_else() {
        let signer = Signer::new(b"namenode key", 60);
        let v = verifier(&signer);
        let (a, b) = (BlockId::of(b"a"), BlockId::of(b"b"));
        let t = signer.sign(Access::Read, Some(a), b"alice");
        v.check(Some(&t), Access::Read, Some(&a), b"alice", false)
            .unwrap();
        let refusals = [
            v.check(None, Access::Read, Some(&a), b"alice", false),
            v.check(Some(&t), Access::Read, Some(&b), b"alice", false),
            v.check(Some(&t), Access::Write, Some(&a), b"alice", false),
            v.check(Some(&t), Access::Read, Some(&a), b"mallory", false),
        ];
        for r in refusals {
            assert!(matches!(r, Err(FsError::Token(_))), "{r:?}");
        }
        // Passed on by a datanode of the pipeline.
        v.check(Some(&t), Access::Read, Some(&a), b"dn2", true)
            .unwrap();

        let w = signer.sign(Access::Write, None, b"alice");
        v.check(Some(&w), Access::Write, Some(&b), b"alice", false)
            .unwrap();
        assert!(v
            .check(Some(&w), Access::Read, Some(&b), b"alice", false)
            .is_err());
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_refused() {
        let signer = Signer::new(b"namenode key", 60);
        let v = verifier(&signer);
        let a = BlockId::of(b"a");
        let good = signer.sign(Access::Read, Some(a), b"alice");
        let check = |t: &BlockToken| v.check(Some(t), Access::Read, Some(&a), b"alice", false);

        let mut later = good.clone();
        later.expires += 3600;
        assert!(check(&later).unwrap_err().to_string().contains("signature"));
        let mut flipped = good.clone();
        flipped.mac[0] ^= 1;
        assert!(check(&flipped).is_err());
        let mut old = good.clone();
        old.expires = now() - 5;
        assert!(check(&old).unwrap_err().to_string().contains("expired"));
        let other = Signer::new(b"another cluster", 60).sign(Access::Read, Some(a), b"alice");
        assert!(check(&other).unwrap_err().to_string().contains("signature"));
        let mut unknown = good.clone();
        unknown.key += 1000;
        assert!(check(&unknown).unwrap_err().to_string().contains("unknown"));
        assert!(Verifier::default()
            .check(Some(&good), Access::Read, Some(&a), b"alice", false)
            .unwrap_err()
            .to_string()
            .contains("not heard"));
    }

    #[test]
    fn keys_survive_a_restart_and_cover_every_live_token() {
        let signer = Signer::new(b"namenode key", 100);
        let again = Signer::new(b"namenode key", 100);
        assert_eq!(signer.keys(), again.keys());
        let keys = signer.keys();
        let epoch = now() / signer.roll;
        assert!(keys.iter().any(|k| k.epoch == epoch + 1), "the next key");
        let ahead = (now() + KEYS_AHEAD.as_secs()) / signer.roll;
        assert!(
            keys.iter().any(|k| k.epoch == ahead),
            "keys for late heartbeats"
        );
        // The oldest signed tokens that may still be valid.
        assert!(keys[0].epoch <= (now() - 100) / signer.roll);
    }
}
