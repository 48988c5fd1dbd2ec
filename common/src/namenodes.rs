//! Which namenode to ask: the members of the namenode group a client or a datanode knows,
//! and the one that leads as far as it last heard. A member that does not lead answers
//! [`FsError::NotLeader`] naming the one that does; one that cannot be reached is passed
//! over for the next.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::FsError;

/// A member that could not be reached is not gone back to on another's word for this long:
/// a member that has not noticed the leader's death yet still names it.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// The pause before asking the next member while the group has no leader.
const ELECTING: Duration = Duration::from_millis(100);

pub struct Namenodes {
    members: Vec<SocketAddr>,
    state: Mutex<State>,
}

struct State {
    /// The one asked now.
    current: SocketAddr,
    /// Members that could not be reached, and when.
    down: HashMap<SocketAddr, Instant>,
}

impl Namenodes {
    /// `first`, then `others` (duplicates dropped).
    pub fn new(first: SocketAddr, others: &[SocketAddr]) -> Namenodes {
        let mut members = vec![first];
        for addr in others {
            if !members.contains(addr) {
                members.push(*addr);
            }
        }
        Namenodes {
            members,
            state: Mutex::new(State {
                current: first,
                down: HashMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The namenode to ask now.
    pub fn current(&self) -> SocketAddr {
        self.state().current
    }

    /// What to do after `addr` answered `error`: ask again after the pause returned (the
    /// namenode to ask having moved to the leader it named, or on from one that is not
    /// reachable or knows no leader), or, with `None`, give up.
    pub fn moved_on(&self, addr: SocketAddr, error: &FsError) -> Option<Duration> {
        let mut state = self.state();
        if state.current != addr {
            // Another request moved on already.
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        state
            .down
            .retain(|_, at| now.duration_since(*at) < DOWN_FOR);
        match error {
            FsError::NotLeader(Some(leader))
                if *leader != addr && !state.down.contains_key(leader) =>
            {
                state.current = *leader;
                Some(Duration::ZERO)
            }
            FsError::NotLeader(_) => {
                self.next(&mut state, addr);
                Some(ELECTING)
            }
            FsError::Unavailable(_) if self.members.len() > 1 => {
                state.down.insert(addr, now);
                self.next(&mut state, addr);
                Some(Duration::ZERO)
            }
            _ => None,
        }
    }

    /// Moves on from `addr` to the next member, one not known down if there is one.
    fn next(&self, state: &mut State, addr: SocketAddr) {
        let at = self.members.iter().position(|m| *m == addr).unwrap_or(0);
        let n = self.members.len();
        let after = (1..=n).map(|k| self.members[(at + k) % n]);
        let up = after.clone().find(|m| !state.down.contains_key(m));
        state.current = up.unwrap_or_else(|| self.members[(at + 1) % n]);
    }

    pub fn members(&self) -> &[SocketAddr] {
        &self.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_is_followed_and_an_unreachable_member_passed_over() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let nn = Namenodes::new(a, &[b, c, a]);
        assert_eq!(nn.members(), &[a, b, c]);
        assert_eq!(
            nn.moved_on(a, &FsError::NotLeader(Some(c))),
            Some(Duration::ZERO)
        );
        assert_eq!(nn.current(), c);
        assert_eq!(
            nn.moved_on(c, &FsError::unavailable("gone")),
            Some(Duration::ZERO)
        );
        assert_eq!(nn.current(), a);
        // A member that has not noticed yet names the one that is gone: not followed.
        assert_eq!(nn.moved_on(a, &FsError::NotLeader(Some(c))), Some(ELECTING));
        assert_eq!(nn.current(), b);
        assert_eq!(nn.moved_on(b, &FsError::NotLeader(None)), Some(ELECTING));
        assert_eq!(nn.current(), a, "the next member that is not down");
        // What another request found already stands.
        assert_eq!(
            nn.moved_on(b, &FsError::unavailable("gone")),
            Some(Duration::ZERO)
        );
        assert_eq!(nn.current(), a);
        assert_eq!(nn.moved_on(a, &FsError::NotFound), None);
        let alone = Namenodes::new(a, &[]);
        assert_eq!(alone.moved_on(a, &FsError::unavailable("restarting")), None);
        assert_eq!(
            alone.moved_on(a, &FsError::NotLeader(Some(b))),
            Some(Duration::ZERO)
        );
        assert_eq!(alone.current(), b);
    }
}
