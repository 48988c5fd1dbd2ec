//! Linearizability of recorded histories: the Wing–Gong search, with Lowe's memo of the
//! states already tried (WGL). A history is a list of calls, each with when it was asked,
//! when it was answered and what the answer was; it is linearizable if the calls can be
//! put in one order, each at a point between its asking and its answer, in which a model
//! of the object gives every answer recorded.
//!
//! A call that failed (a connection lost, a leader gone) has no answer: it may have taken
//! effect at any point after it was asked, even long after, or never. The search may place
//! it anywhere after its asking or leave it out.

use std::collections::{BTreeSet, HashSet};
use std::hash::Hash;
use std::time::Duration;

/// A sequential object: from a state, a call and its answer give the next state.
pub trait Model: Clone + Eq + Hash {
    type Op: std::fmt::Debug;
    type Ret: std::fmt::Debug;
    /// The state after `op` answered `ret` (`None`: not known, any answer), or `None` if
    /// the object in this state cannot answer so.
    fn step(&self, op: &Self::Op, ret: Option<&Self::Ret>) -> Option<Self>;
}

/// One call of a history.
#[derive(Debug)]
pub struct Call<M: Model> {
    pub op: M::Op,
    /// The answer, or `None` if the call failed and may or may not have taken effect.
    pub ret: Option<M::Ret>,
    pub asked: Duration,
    /// When the answer came (`None` with `ret`: never).
    pub answered: Option<Duration>,
}

/// Whether `calls` is linearizable from `init`; if not, why (the longest prefix that is,
/// and the calls that could not come next).
pub fn check<M: Model>(init: M, calls: &[Call<M>]) -> Result<(), String> {
    let mut search = Search {
        calls,
        tried: HashSet::new(),
        deepest: Vec::new(),
        order: Vec::new(),
        steps: 0,
    };
    let mut done = vec![false; calls.len()];
    if search.from(&init, &mut done) {
        return Ok(());
    }
    let placed: Vec<String> = search
        .deepest
        .iter()
        .rev()
        .take(10)
        .rev()
        .map(|&i| describe(&calls[i]))
        .collect();
    let mut done = vec![false; calls.len()];
    for &i in &search.deepest {
        done[i] = true;
    }
    let next: Vec<String> = candidates(calls, &done)
        .into_iter()
        .map(|i| describe(&calls[i]))
        .collect();
    Err(format!(
        "not linearizable: {} of {} calls placed; the last placed:\n  {}\nnone of these \
         can come next:\n  {}",
        search.deepest.len(),
        calls.len(),
        placed.join("\n  "),
        next.join("\n  ")
    ))
}

fn describe<M: Model>(call: &Call<M>) -> String {
    format!(
        "{:?} -> {:?} asked {:?} answered {:?}",
        call.op, call.ret, call.asked, call.answered
    )
}

/// The calls not yet placed that may come next: asked before every other unplaced call's
/// answer.
fn candidates<M: Model>(calls: &[Call<M>], done: &[bool]) -> Vec<usize> {
    let first_answer = calls
        .iter()
        .zip(done)
        .filter(|(_, d)| !**d)
        .filter_map(|(c, _)| c.answered)
        .min();
    (0..calls.len())
        .filter(|&i| !done[i] && first_answer.is_none_or(|a| calls[i].asked <= a))
        .collect()
}

struct Search<'h, M: Model> {
    calls: &'h [Call<M>],
    /// States from which the search failed: which calls were placed, the object's state.
    tried: HashSet<(Vec<u64>, M)>,
    /// The longest order found, for the report.
    deepest: Vec<usize>,
    order: Vec<usize>,
    steps: u64,
}

impl<M: Model> Search<'_, M> {
    fn from(&mut self, state: &M, done: &mut [bool]) -> bool {
        // Every answered call placed: the failed ones left may never have happened.
        if self
            .calls
            .iter()
            .zip(done.iter())
            .all(|(c, d)| *d || c.answered.is_none())
        {
            return true;
        }
        self.steps += 1;
        assert!(self.steps < 50_000_000, "the history is too large to check");
        let key = (bits(done), state.clone());
        if self.tried.contains(&key) {
            return false;
        }
        for i in candidates(self.calls, done) {
            let call = &self.calls[i];
            let Some(next) = state.step(&call.op, call.ret.as_ref()) else {
                continue;
            };
            done[i] = true;
            self.order.push(i);
            if self.order.len() > self.deepest.len() {
                self.deepest = self.order.clone();
            }
            let found = self.from(&next, done);
            self.order.pop();
            done[i] = false;
            if found {
                return true;
            }
        }
        self.tried.insert(key);
        false
    }
}

fn bits(done: &[bool]) -> Vec<u64> {
    let mut words = vec![0u64; done.len().div_ceil(64)];
    for (i, _) in done.iter().enumerate().filter(|(_, d)| **d) {
        words[i / 64] |= 1 << (i % 64);
    }
    words
}

/// A register: written whole, read whole; absent until first written.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Register(pub Option<u64>);

#[derive(Debug, Clone)]
pub enum RegisterOp {
    Write(u64),
    Read,
}

impl Model for Register {
    type Op = RegisterOp;
    /// What a read found (a write's answer is only that it was done).
    type Ret = Option<u64>;

    fn step(&self, op: &RegisterOp, ret: Option<&Option<u64>>) -> Option<Register> {
        match op {
            RegisterOp::Write(v) => Some(Register(Some(*v))),
            RegisterOp::Read => match ret {
                Some(found) if *found != self.0 => None,
                _ => Some(self.clone()),
            },
        }
    }
}

/// The names of a directory: made exclusively, removed, listed.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Names(pub BTreeSet<u8>);

#[derive(Debug, Clone)]
pub enum NamesOp {
    /// An exclusive create: done, or refused as there already.
    Make(u8),
    /// An unlink: done, or refused as not there.
    Remove(u8),
    List,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NamesRet {
    Done,
    Refused,
    Listed(BTreeSet<u8>),
}

impl Model for Names {
    type Op = NamesOp;
    type Ret = NamesRet;

    fn step(&self, op: &NamesOp, ret: Option<&NamesRet>) -> Option<Names> {
        let mut next = self.clone();
        let (there, answer) = match op {
            NamesOp::Make(n) => (!next.0.insert(*n), None),
            NamesOp::Remove(n) => (next.0.remove(n), None),
            NamesOp::List => (false, Some(NamesRet::Listed(self.0.clone()))),
        };
        let expected = match op {
            NamesOp::List => answer.unwrap(),
            NamesOp::Make(_) if there => NamesRet::Refused,
            NamesOp::Remove(_) if !there => NamesRet::Refused,
            _ => NamesRet::Done,
        };
        match ret {
            Some(r) if *r != expected => None,
            // Refused: nothing changed.
            _ if expected == NamesRet::Refused => Some(self.clone()),
            _ => Some(next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn call<M: Model>(op: M::Op, ret: Option<M::Ret>, asked: u64, answered: u64) -> Call<M> {
        Call {
            op,
            answered: ret.as_ref().map(|_| ms(answered)),
            ret,
            asked: ms(asked),
        }
    }

    #[test]
    fn a_read_after_a_write_answered_must_see_it() {
        use RegisterOp::*;
        let stale = [
            call::<Register>(Write(1), Some(None), 0, 10),
            call(Write(2), Some(None), 20, 30),
            call(Read, Some(Some(1)), 40, 50),
        ];
        let err = check(Register::default(), &stale).unwrap_err();
        assert!(err.contains("Read -> Some(Some(1))"), "{err}");
        // Overlapping the second write, it may see either.
        let concurrent = [
            call::<Register>(Write(1), Some(None), 0, 10),
            call(Write(2), Some(None), 20, 45),
            call(Read, Some(Some(1)), 40, 50),
            call(Read, Some(Some(2)), 60, 70),
        ];
        check(Register::default(), &concurrent).unwrap();
        // A read that saw the new value forbids a later one the old.
        let flicker = [
            call::<Register>(Write(1), Some(None), 0, 10),
            call(Write(2), Some(None), 20, 100),
            call(Read, Some(Some(2)), 30, 40),
            call(Read, Some(Some(1)), 50, 60),
        ];
        check(Register::default(), &flicker).unwrap_err();
    }

    #[test]
    fn a_failed_call_may_take_effect_late_or_never() {
        use RegisterOp::*;
        let late = [
            call::<Register>(Write(1), Some(None), 0, 10),
            call(Write(2), None, 20, 0),
            call(Read, Some(Some(1)), 40, 50),
            call(Read, Some(Some(2)), 60, 70),
        ];
        check(Register::default(), &late).unwrap();
        let never = [
            call::<Register>(Write(1), Some(None), 0, 10),
            call(Write(2), None, 20, 0),
            call(Read, Some(Some(1)), 40, 50),
        ];
        check(Register::default(), &never).unwrap();
        // But not before it was asked.
        let early = [
            call::<Register>(Write(1), Some(None), 0, 10),
            call(Read, Some(Some(2)), 20, 30),
            call(Write(2), None, 40, 0),
        ];
        check(Register::default(), &early).unwrap_err();
    }

    #[test]
    fn names_made_twice_or_listed_wrong_are_caught() {
        use NamesOp::*;
        let set = |names: &[u8]| NamesRet::Listed(names.iter().copied().collect());
        let fine = [
            call::<Names>(Make(1), Some(NamesRet::Done), 0, 10),
            call(Make(1), Some(NamesRet::Refused), 5, 15),
            call(List, Some(set(&[1])), 20, 30),
            call(Remove(1), Some(NamesRet::Done), 40, 50),
            call(Remove(1), Some(NamesRet::Refused), 60, 70),
            call(List, Some(set(&[])), 80, 90),
        ];
        check(Names::default(), &fine).unwrap();
        let twice = [
            call::<Names>(Make(1), Some(NamesRet::Done), 0, 10),
            call(Make(1), Some(NamesRet::Done), 20, 30),
        ];
        check(Names::default(), &twice).unwrap_err();
        let lost = [
            call::<Names>(Make(1), Some(NamesRet::Done), 0, 10),
            call(List, Some(set(&[])), 20, 30),
        ];
        check(Names::default(), &lost).unwrap_err();
    }
}
