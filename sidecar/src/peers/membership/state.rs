//! The membership state machine, without I/O: what a peer's change of state means (an alert,
//! a log line, a metric), when a run of failed probes fails a peer, and when an absent peer's
//! queue expires. `Membership` feeds it what it saw and carries out what it says; the tests
//! drive it with paused time.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::peers::MemberState;

/// What a change of a peer's state means to the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    /// The state did not change: nothing to say.
    Unchanged,
    /// Failed → up: alert `peer_recovered`.
    Recovered,
    /// Left → up: logged.
    Rejoined,
    /// Up or left → failed: alert `peer_failed`, `ha_peer_failures_total`.
    Failed,
    /// Up or failed → left: logged; its messages are kept.
    Left,
}

pub(super) fn transition(old: MemberState, new: MemberState) -> Transition {
    match (old, new) {
        (MemberState::Failed, MemberState::Up) => Transition::Recovered,
        (MemberState::Left, MemberState::Up) => Transition::Rejoined,
        (MemberState::Up | MemberState::Left, MemberState::Failed) => Transition::Failed,
        (MemberState::Up | MemberState::Failed, MemberState::Left) => Transition::Left,
        (MemberState::Up, MemberState::Up)
        | (MemberState::Left, MemberState::Left)
        | (MemberState::Failed, MemberState::Failed) => Transition::Unchanged,
    }
}

/// Runs of failed readiness probes, per peer (static and dns discovery): a peer is failed once
/// its probes have failed without a break for `ttl`; any answer breaks the run.
#[derive(Default)]
pub(super) struct Unreachable {
    since: HashMap<String, Instant>,
}

impl Unreachable {
    /// A probe of `key` that got no answer at `now`: true once the run has lasted `ttl`.
    pub fn failed(&mut self, key: &str, now: Instant, ttl: Duration) -> bool {
        let since = *self.since.entry(key.to_owned()).or_insert(now);
        now.duration_since(since) >= ttl
    }

    /// The peer answered (ready or not): its run of failures is over.
    pub fn answered(&mut self, key: &str) {
        self.since.remove(key);
    }
}

/// An absent peer's queue is deleted once the peer has been absent longer than `retain`
/// (`peerInfo.retainAbsent`).
pub(super) fn expired(absent_since_ms: u64, now_ms: u64, retain: Duration) -> bool {
    now_ms.saturating_sub(absent_since_ms) > retain.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use MemberState::{Failed, Left, Up};

    #[test]
    fn every_transition_says_what_it_means() {
        let cases = [
            (Up, Up, Transition::Unchanged),
            (Up, Failed, Transition::Failed),
            (Up, Left, Transition::Left),
            (Failed, Up, Transition::Recovered),
            (Failed, Failed, Transition::Unchanged),
            (Failed, Left, Transition::Left),
            (Left, Up, Transition::Rejoined),
            (Left, Failed, Transition::Failed),
            (Left, Left, Transition::Unchanged),
        ];
        for (old, new, want) in cases {
            assert_eq!(transition(old, new), want, "{old:?} → {new:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_fails_after_ttl_of_unbroken_failed_probes() {
        let ttl = Duration::from_secs(10);
        let mut u = Unreachable::default();
        assert!(
            !u.failed("b", Instant::now(), ttl),
            "the first failure starts the run"
        );
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(!u.failed("b", Instant::now(), ttl), "just under ttl");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(u.failed("b", Instant::now(), ttl), "ttl of failures");
        // Another peer's run is its own.
        assert!(!u.failed("c", Instant::now(), ttl));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_breaks_the_run() {
        let ttl = Duration::from_secs(10);
        let mut u = Unreachable::default();
        u.failed("b", Instant::now(), ttl);
        tokio::time::advance(Duration::from_secs(8)).await;
        u.answered("b");
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(
            !u.failed("b", Instant::now(), ttl),
            "a new run began after the answer"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(u.failed("b", Instant::now(), ttl));
    }

    #[test]
    fn retain_absent_expires_strictly_after_the_retention() {
        // Wall-clock milliseconds: the time a peer went absent is kept in the roster across
        // restarts.
        let retain = Duration::from_secs(3600);
        let absent_since = 1_764_900_000_000;
        let at = absent_since + retain.as_millis() as u64;
        assert!(
            !expired(absent_since, at, retain),
            "exactly retainAbsent: kept"
        );
        assert!(expired(absent_since, at + 1, retain));
        // A clock that went back never expires a queue.
        assert!(!expired(absent_since, absent_since - 1, retain));
    }
}
