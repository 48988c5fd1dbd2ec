//! Safe mode: after a start, the namenode knows its blocks but not yet where their replicas
//! are; until datanodes have reported enough of them it makes no replication or deletion
//! decisions, which would copy (or trim) on the strength of reports still on their way.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::proto::{RepairStatus, SafeModeAction, SafeModeStatus};
use tracing::info;

struct State {
    on: bool,
    manual: bool,
    /// When the threshold was first met in a row of passes.
    reached: Option<Instant>,
    blocks: u64,
    blocks_reported: u64,
}

pub struct SafeMode {
    threshold: f64,
    extension: Duration,
    state: Mutex<State>,
}

impl SafeMode {
    /// On at start: it ends by itself once `threshold` of the referenced blocks have a live
    /// replica and stayed so for `extension` (the rest of the reports arrive meanwhile).
    pub fn new(threshold: f64, extension: Duration) -> SafeMode {
        SafeMode {
            threshold,
            extension,
            state: Mutex::new(State {
                on: true,
                manual: false,
                reached: None,
                blocks: 0,
                blocks_reported: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_on(&self) -> bool {
        self.state().on
    }

    /// On since the start and not entered by hand: datanodes' reports are still coming.
    pub fn is_starting(&self) -> bool {
        let s = self.state();
        s.on && !s.manual
    }

    /// Takes a repair pass's counts; returns whether safe mode is (still) on.
    pub fn observe(&self, status: &RepairStatus) -> bool {
        let mut s = self.state();
        s.blocks = status.blocks;
        s.blocks_reported = status.blocks_reported;
        if !s.on || s.manual {
            return s.on;
        }
        let fraction = if status.blocks == 0 {
            1.0
        } else {
            status.blocks_reported as f64 / status.blocks as f64
        };
        if fraction < self.threshold {
            s.reached = None;
            return true;
        }
        let reached = *s.reached.get_or_insert_with(Instant::now);
        if reached.elapsed() >= self.extension {
            s.on = false;
            info!(
                blocks = status.blocks,
                reported = status.blocks_reported,
                "leaving safe mode: enough blocks reported; repair decisions resume"
            );
        }
        s.on
    }

    /// On again as at a start: this namenode has just come to lead its group, and hears
    /// from the datanodes anew.
    pub fn restart(&self) {
        let mut s = self.state();
        s.on = true;
        s.manual = false;
        s.reached = None;
    }

    pub fn act(&self, action: SafeModeAction) -> SafeModeStatus {
        let mut s = self.state();
        match action {
            SafeModeAction::Get => {}
            SafeModeAction::Enter => {
                s.on = true;
                s.manual = true;
                info!("safe mode entered by an operator");
            }
            SafeModeAction::Leave => {
                if s.on {
                    info!("safe mode left by an operator");
                }
                s.on = false;
                s.manual = false;
            }
        }
        SafeModeStatus {
            on: s.on,
            manual: s.manual,
            blocks: s.blocks,
            blocks_reported: s.blocks_reported,
            threshold: self.threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(blocks: u64, blocks_reported: u64) -> RepairStatus {
        RepairStatus {
            blocks,
            blocks_reported,
            ..RepairStatus::default()
        }
    }

    #[test]
    fn it_ends_once_enough_blocks_are_reported_for_a_while() {
        let sm = SafeMode::new(0.99, Duration::from_millis(30));
        assert!(sm.observe(&counts(100, 50)));
        assert!(sm.observe(&counts(100, 100)), "the extension runs first");
        std::thread::sleep(Duration::from_millis(40));
        assert!(!sm.observe(&counts(100, 100)));
        assert!(!sm.is_on());
    }

    #[test]
    fn an_operator_holds_it_and_ends_it() {
        let sm = SafeMode::new(0.99, Duration::ZERO);
        let status = sm.act(SafeModeAction::Enter);
        assert!(status.on && status.manual);
        assert!(
            sm.observe(&counts(10, 10)),
            "reports do not end a manual safe mode"
        );
        assert!(!sm.act(SafeModeAction::Leave).on);
        assert!(
            !sm.observe(&counts(10, 0)),
            "once left, it does not come back by itself"
        );
    }
}
