//! Numbers for the changes this client asks the namenode for ([`RequestId`]), so that one
//! whose answer was lost with its connection can be asked for again without being made
//! twice, and the answers the namenode may forget: those this client has received.

use std::sync::{Arc, Mutex};

use cairn_common::proto::RequestId;

pub(crate) struct Requests {
    session: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next: u64,
    /// Changes answered here whose answers the namenode may still keep.
    answered: Vec<u64>,
}

impl Requests {
    pub fn new(session: u64) -> Arc<Requests> {
        Arc::new(Requests {
            session,
            state: Mutex::new(State {
                next: 1,
                answered: Vec::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers a new change; it tells the namenode to forget answers received since.
    pub fn begin(self: &Arc<Self>) -> Pending {
        let mut state = self.state();
        let seq = state.next;
        state.next += 1;
        let keep = state.answered.len().saturating_sub(RequestId::FORGET_MAX);
        let forget = state.answered.split_off(keep);
        Pending {
            requests: self.clone(),
            id: RequestId {
                session: self.session,
                seq,
                forget,
            },
            outcome: None,
        }
    }
}

/// A change asked for and not answered yet.
pub(crate) struct Pending {
    requests: Arc<Requests>,
    pub id: RequestId,
    /// Whether the namenode made it (and so keeps its answer); `None` while unknown.
    outcome: Option<bool>,
}

impl Pending {
    /// The namenode answered: it made the change (`made`), or refused it (and so
    /// forgot nothing either: the request's writes were undone).
    pub fn answered(&mut self, made: bool) {
        self.outcome = Some(made);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut state = self.requests.state();
        if self.outcome != Some(true) {
            state.answered.append(&mut self.id.forget);
        }
        // Made, or perhaps made (the answer never came): its answer may be kept.
        if self.outcome != Some(false) {
            state.answered.push(self.id.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namenode_is_told_to_forget_each_answer_received_once() {
        let requests = Requests::new(5);
        let mut first = requests.begin();
        let second = requests.begin();
        assert_eq!((first.id.session, first.id.seq), (5, 1));
        assert!(first.id.forget.is_empty() && second.id.forget.is_empty());
        first.answered(true);
        drop(first);
        let mut third = requests.begin();
        assert_eq!((third.id.seq, &third.id.forget[..]), (3, &[1][..]));
        // Refused: nothing was forgotten, nor kept.
        third.answered(false);
        drop(third);
        // Its answer lost: perhaps kept.
        drop(second);
        let mut fourth = requests.begin();
        assert_eq!(fourth.id.forget, vec![1, 2]);
        fourth.answered(true);
        drop(fourth);
        assert_eq!(requests.begin().id.forget, vec![4]);
    }
}
