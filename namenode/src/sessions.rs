//! Whose each client session is. A session (a mount, a library client) holds open files and
//! locks under a number it drew itself; any request naming the number acts for it. So the
//! first certificate that names a session owns it, and a request from another certificate
//! that names it is refused and logged: a holder of another certificate cannot renew,
//! release or take over another mount's open files and locks. The same certificate may
//! name it again from a new connection (a mount reconnecting after a namenode restart or a
//! lost network keeps its session).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::{FsError, FsResult};

/// Sessions remembered before those unheard of for [`FORGET_AFTER`] are dropped.
const SWEEP_AT: usize = 65_536;
/// A session unheard of this long is over (its opens' lease is seconds).
const FORGET_AFTER: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub struct SessionOwners {
    owners: Mutex<HashMap<u64, (String, Instant)>>,
}

impl SessionOwners {
    /// Is `session` certificate `holder`'s?
    pub fn is_of(&self, session: u64, holder: &str) -> bool {
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners
            .get(&session)
            .is_some_and(|(owner, _)| owner == holder)
    }

    /// A request of certificate `holder` names `session`: its own, or no one's yet.
    pub fn claim(&self, session: u64, holder: &str) -> FsResult<()> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if owners.len() >= SWEEP_AT {
            owners.retain(|_, (_, seen)| now.duration_since(*seen) < FORGET_AFTER);
        }
        match owners.get_mut(&session) {
            Some((owner, seen)) if owner == holder => *seen = now,
            Some((owner, _)) => {
                tracing::warn!(
                    session,
                    owner = %owner,
                    asker = %holder,
                    "refused: a request named another certificate's client session"
                );
                return Err(FsError::NotPermitted);
            }
            None => {
                owners.insert(session, (holder.to_string(), now));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_its_first_certificates() {
        let owners = SessionOwners::default();
        owners.claim(7, "host-a").unwrap();
        owners.claim(7, "host-a").unwrap();
        assert!(matches!(
            owners.claim(7, "mallory"),
            Err(FsError::NotPermitted)
        ));
        owners.claim(8, "mallory").unwrap();
        assert!(owners.claim(8, "host-a").is_err());
    }
}
