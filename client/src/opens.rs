//! The files this client holds open, as the namenode must know them: a file whose last name
//! is removed (by any client) lives on while some client holds it.
//!
//! Opening claims the file at the namenode (`Open`, or `Create` with a claim); a background
//! task renews the whole set every [`OPEN_RENEW_INTERVAL`] while it is not empty and soon
//! after a last close (`KeepOpen`), which is also how the namenode learns of closes and how
//! it learns the set again after a restart. Every change bumps a generation; claims and
//! renewals carry it, so a renewal built before a claim cannot undo it.
//!
//! Renewals also name the blocks this client has stored and not yet committed, so the
//! namenode does not take them for the garbage of a client that died mid-upload.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use cairn_common::proto::{self, OpenClaim, OPEN_RENEW_INTERVAL};
use cairn_common::{BlockId, Ino};
use tokio::sync::Notify;

/// How long after a last close the renewal goes out: closes in a burst share one.
const CLOSE_DEBOUNCE: Duration = Duration::from_millis(200);

#[derive(Default)]
struct State {
    held: HashMap<Ino, Held>,
    /// Generations of creates under way: their files are claimed at the namenode but not
    /// yet held here, so a renewal must not speak for them.
    creating: Vec<u64>,
    gen: u64,
    /// The generation the namenode last acknowledged.
    sent_gen: u64,
    renewing: bool,
    /// Blocks stored and not yet committed, with how many slices use each.
    uploads: HashMap<BlockId, u32>,
    /// Files held by a lease, opened without a claim, that no renewal has named yet: the
    /// namenode does not know they are open here (with the generation of the open).
    unclaimed: HashMap<Ino, u64>,
}

/// A file held open here.
#[derive(Default)]
struct Held {
    handles: u32,
    /// Of those, how many are open for writing.
    writers: u32,
    /// Moves at every change of the file's bytes or size known here (see
    /// [`OpenSet::map_version`]).
    map_version: u64,
}

/// A block this client stored and has not committed yet: renewals name it while this lives.
pub(crate) struct Uploaded {
    set: std::sync::Arc<OpenSet>,
    block: BlockId,
}

impl Drop for Uploaded {
    fn drop(&mut self) {
        let mut s = self.set.state();
        if let Some(n) = s.uploads.get_mut(&self.block) {
            *n -= 1;
            if *n == 0 {
                s.uploads.remove(&self.block);
            }
        }
    }
}

pub(crate) struct OpenSet {
    session: u64,
    state: Mutex<State>,
    closed: Notify,
}

impl OpenSet {
    pub fn new(session: u64) -> OpenSet {
        OpenSet {
            session,
            state: Mutex::default(),
            closed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The claim for a file about to be created and opened; [`OpenSet::created`] ends it.
    pub fn creating(&self) -> OpenClaim {
        let mut s = self.state();
        s.gen += 1;
        let gen = s.gen;
        s.creating.push(gen);
        OpenClaim {
            session: self.session,
            gen,
        }
    }

    /// The create of `claim` is over: the file it made (if it did) is held. Returns whether
    /// the renewal task must be started.
    pub fn created(&self, claim: OpenClaim, ino: Option<Ino>) -> bool {
        let start = match ino {
            Some(ino) => self.hold(ino, true).1,
            None => false,
        };
        let mut s = self.state();
        if let Some(i) = s.creating.iter().position(|g| *g == claim.gen) {
            s.creating.swap_remove(i);
        }
        start
    }

    /// One more handle on `ino`, opened by a lease without telling the namenode: whether
    /// the renewal task must be started.
    pub fn hold_unclaimed(&self, ino: Ino) -> bool {
        let (claim, start) = self.hold(ino, false);
        self.state().unclaimed.entry(ino).or_insert(claim.gen);
        start
    }

    /// Is one of `inos` (or, with `None`, any file) held here without the namenode
    /// knowing yet?
    pub fn unheard(&self, inos: Option<&[Ino]>) -> bool {
        let s = self.state();
        match inos {
            Some(inos) => inos.iter().any(|ino| s.unclaimed.contains_key(ino)),
            None => !s.unclaimed.is_empty(),
        }
    }

    /// One more handle on `ino`, for writing if `write`: the claim to send for it, and
    /// whether the renewal task must be started.
    pub fn hold(&self, ino: Ino, write: bool) -> (OpenClaim, bool) {
        let mut s = self.state();
        let held = s.held.entry(ino).or_default();
        held.handles += 1;
        held.writers += u32::from(write);
        s.gen += 1;
        let claim = OpenClaim {
            session: self.session,
            gen: s.gen,
        };
        (claim, !std::mem::replace(&mut s.renewing, true))
    }

    /// `block` is stored and awaits its commit; the guard says so until it is dropped.
    pub fn uploaded(self: &std::sync::Arc<Self>, block: BlockId) -> Uploaded {
        *self.state().uploads.entry(block).or_default() += 1;
        Uploaded {
            set: self.clone(),
            block,
        }
    }

    /// One handle on `ino` fewer (one held for writing if `write`); at the last, or the last
    /// writer, the namenode hears of it soon.
    pub fn release(&self, ino: Ino, write: bool) {
        let mut s = self.state();
        let Some(held) = s.held.get_mut(&ino) else {
            return;
        };
        held.handles -= 1;
        held.writers -= u32::from(write);
        let (last, last_writer) = (held.handles == 0, write && held.writers == 0);
        if last {
            s.held.remove(&ino);
            s.unclaimed.remove(&ino);
        }
        if last || last_writer {
            s.gen += 1;
            drop(s);
            self.closed.notify_one();
        }
    }

    /// How many times the bytes or size of held file `ino` changed in a way this client
    /// knows of: through one of its handles (a commit, a truncate), a truncate by path, or
    /// another client's change the feed told of. A handle whose map is older than the
    /// version reads by a fresh one, so every handle of a file open here reads what any of
    /// them wrote and committed (POSIX within one mount), and what others committed once the
    /// feed tells of it (`tail -f` of a file another machine appends to).
    pub fn map_version(&self, ino: Ino) -> u64 {
        self.state().held.get(&ino).map_or(0, |h| h.map_version)
    }

    /// How many handles on `ino` this client has open.
    pub fn handles(&self, ino: Ino) -> u32 {
        self.state().held.get(&ino).map_or(0, |h| h.handles)
    }

    /// The map of `ino` changed (see [`OpenSet::map_version`]): its new version, if held.
    pub fn map_changed(&self, ino: Ino) -> u64 {
        match self.state().held.get_mut(&ino) {
            Some(h) => {
                h.map_version += 1;
                h.map_version
            }
            None => 0,
        }
    }

    /// The maps of held files among `changed` (all of them, with `None`) changed elsewhere.
    pub fn maps_changed_elsewhere(&self, changed: Option<&[Ino]>) {
        let mut s = self.state();
        match changed {
            Some(inos) => {
                for ino in inos {
                    if let Some(h) = s.held.get_mut(ino) {
                        h.map_version += 1;
                    }
                }
            }
            None => s.held.values_mut().for_each(|h| h.map_version += 1),
        }
    }

    /// What a renewal says now, if one is needed (something is held, or the namenode has
    /// not heard of the last change), with the generation it names every held file as of.
    fn renewal(&self) -> Option<(proto::KeepOpen, u64)> {
        let s = self.state();
        if s.held.is_empty() && s.gen == s.sent_gen {
            return None;
        }
        // Files being created are claimed at a generation this renewal must stay below.
        let gen = match s.creating.iter().min() {
            Some(g) => g - 1,
            None => s.gen,
        };
        let renewal = proto::KeepOpen {
            session: self.session,
            gen,
            open: s.held.keys().copied().collect(),
            writing: (s.held.iter())
                .filter(|(_, h)| h.writers > 0)
                .map(|(ino, _)| *ino)
                .collect(),
            uploads: s.uploads.keys().copied().collect(),
        };
        Some((renewal, s.gen))
    }

    /// The namenode took the renewal built at generation `built`.
    fn renewed(&self, renewal_gen: u64, built: u64) {
        let mut s = self.state();
        s.sent_gen = s.sent_gen.max(renewal_gen);
        s.unclaimed.retain(|_, gen| *gen > built);
    }

    #[cfg(test)]
    fn held(&self) -> Vec<Ino> {
        self.state().held.keys().copied().collect()
    }
}

/// Renews `client`'s open set until the client is dropped.
/// Tells the namenode now of every file this client holds open, if it holds any of
/// `changed` (files another client changed): one opened by a leased map, without a call,
/// is not known there as open yet, and must be before this client reads the feed on (the
/// namenode counts the lease as an open until then).
pub(crate) async fn renew_if_held(client: &crate::Client, changed: &[Ino]) {
    let set = client.inner.opens_handle();
    let held = {
        let s = set.state();
        changed.iter().any(|ino| s.held.contains_key(ino))
    };
    if !held {
        return;
    }
    if let Err(e) = renew_now(client).await {
        tracing::debug!("renewing open files failed: {e}");
    }
}

/// Before a change that may remove the last name of one of `reached` (with `None`, of any
/// file): the namenode purges a file nobody holds, so it must know of those held here by a
/// lease alone.
pub(crate) async fn tell_unheard(
    client: &crate::Client,
    reached: Option<&[Ino]>,
) -> cairn_common::FsResult<()> {
    if client.inner.opens_handle().unheard(reached) {
        renew_now(client).await?;
    }
    Ok(())
}

async fn renew_now(client: &crate::Client) -> cairn_common::FsResult<()> {
    let set = client.inner.opens_handle();
    let Some((renewal, built)) = set.renewal() else {
        return Ok(());
    };
    let gen = renewal.gen;
    client.namenode(renewal).await?;
    set.renewed(gen, built);
    Ok(())
}

pub(crate) async fn renew(client: Weak<crate::Inner>) {
    loop {
        let Some(inner) = client.upgrade() else {
            return;
        };
        let set = inner.opens_handle();
        drop(inner);
        tokio::select! {
            _ = set.closed.notified() => tokio::time::sleep(CLOSE_DEBOUNCE).await,
            _ = tokio::time::sleep(OPEN_RENEW_INTERVAL) => {}
        }
        let Some(inner) = client.upgrade() else {
            return;
        };
        let Some((renewal, built)) = set.renewal() else {
            continue;
        };
        let gen = renewal.gen;
        match crate::Client::from_inner(inner).namenode(renewal).await {
            Ok(()) => set.renewed(gen, built),
            // Tried again at the next tick; the lease spans several.
            Err(e) => tracing::debug!("renewing open files failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_follow_holds_and_last_closes() {
        let set = OpenSet::new(9);
        assert!(set.renewal().is_none(), "nothing held, nothing to say");
        assert!(
            set.hold(Ino(5), false).1,
            "the first hold starts the renewals"
        );
        assert!(!set.hold(Ino(5), false).1);
        let (r, built) = set.renewal().expect("a held file is renewed");
        assert_eq!((r.session, r.open.clone()), (9, vec![Ino(5)]));
        set.renewed(r.gen, built);
        set.release(Ino(5), false);
        assert_eq!(set.held(), vec![Ino(5)], "one handle is still open");
        set.release(Ino(5), false);
        let (r, built) = set.renewal().expect("the last close is told");
        assert!(r.open.is_empty());
        set.renewed(r.gen, built);
        assert!(set.renewal().is_none());
    }

    #[test]
    fn files_opened_by_a_lease_are_unheard_until_a_renewal_names_them() {
        let set = OpenSet::new(2);
        set.hold(Ino(1), false);
        assert!(
            !set.unheard(None),
            "opened with a claim: the namenode knows"
        );
        assert!(!set.hold_unclaimed(Ino(7)), "renewals already run");
        assert!(set.unheard(Some(&[Ino(7)])) && set.unheard(None));
        assert!(!set.unheard(Some(&[Ino(1), Ino(8)])));
        let (r, built) = set.renewal().unwrap();
        assert!(r.open.contains(&Ino(7)));
        set.hold_unclaimed(Ino(8));
        set.renewed(r.gen, built);
        assert!(!set.unheard(Some(&[Ino(7)])), "named by the renewal");
        assert!(set.unheard(Some(&[Ino(8)])), "opened after it was built");
        set.release(Ino(8), false);
        assert!(!set.unheard(None), "closed: nothing to keep");
    }

    #[test]
    fn map_versions_move_for_held_files_only() {
        let set = OpenSet::new(1);
        assert_eq!(set.map_changed(Ino(4)), 0, "not held: nothing to follow");
        set.hold(Ino(4), false);
        set.hold(Ino(4), false);
        assert_eq!((set.map_version(Ino(4)), set.handles(Ino(4))), (0, 2));
        assert_eq!(set.map_changed(Ino(4)), 1);
        set.maps_changed_elsewhere(Some(&[Ino(4), Ino(9)]));
        assert_eq!(set.map_version(Ino(4)), 2);
        set.maps_changed_elsewhere(None);
        assert_eq!(set.map_version(Ino(4)), 3);
        set.release(Ino(4), false);
        assert_eq!(set.map_version(Ino(4)), 3, "one handle is still open");
        set.release(Ino(4), false);
        assert_eq!(set.map_version(Ino(4)), 0, "forgotten with the last handle");
    }

    #[test]
    fn a_renewal_stays_below_creates_under_way() {
        let set = OpenSet::new(1);
        let (a, _) = set.hold(Ino(3), false);
        let c = set.creating();
        assert!(c.gen > a.gen);
        let (r, _) = set.renewal().unwrap();
        assert!(r.gen < c.gen, "the namenode keeps the create's claim");
        assert!(!set.created(c, Some(Ino(4))), "renewals already run");
        let (r, _) = set.renewal().unwrap();
        assert!(r.gen > c.gen);
        let mut open = r.open.clone();
        open.sort();
        assert_eq!(open, vec![Ino(3), Ino(4)]);
    }

    #[test]
    fn renewals_name_files_held_for_writing_until_their_last_writer_closes() {
        let set = OpenSet::new(4);
        set.hold(Ino(1), true);
        set.hold(Ino(1), false);
        set.created(set.creating(), Some(Ino(2)));
        let (r, built) = set.renewal().unwrap();
        let mut writing = r.writing.clone();
        writing.sort();
        assert_eq!(
            writing,
            vec![Ino(1), Ino(2)],
            "a created file is being written"
        );
        set.renewed(r.gen, built);
        set.release(Ino(1), true);
        let (r, _) = set.renewal().expect("the last writer's close is told");
        assert_eq!((r.open.len(), r.writing.clone()), (2, vec![Ino(2)]));
    }
}
