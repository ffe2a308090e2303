//! How far ahead of what is known a peer's seq may be: the bound that keeps one forged message
//! (signed with the cluster secret) from silencing an origin by pushing its high-water mark to
//! `u64::MAX`, after which every real message of that origin would be dropped as a duplicate.
//!
//! Why a bound exists: every seq is seeded from the clock. The outbox (`outbox/seq.next`) and
//! the event log (`EventLogOptions::seq_from_clock`) of a node that has no record of its own
//! start at the clock in microseconds, then grow by one per message; the outbox also skips at
//! most 2^20 (about one second's worth) per restart. A node accepting fewer than a million
//! messages a second therefore never issues a seq above its clock in microseconds plus about a
//! second per restart. A receiver accepts a seq up to `max(mark, now_µs) + MAX_AHEAD_US`, one
//! hour: room for clock skew (far more than the signature window allows), thousands of
//! restarts within the hour, and an origin whose mark is already ahead of this node's clock.
//! Beyond it a seq is refused (the sender sets the message aside), counted in
//! `ha_forged_messages_total{reason="seq_ahead"}` (`event_seq_ahead` for an event's own seq,
//! `own_origin` for a batch naming this node) and logged as an error; it is not applied
//! and moves no mark.
//!
//! What it does not stop: a forger may still push a mark up to an hour ahead per message; the
//! error and the metric are the alarm. Mutual TLS (a batch's origin bound to the peer's
//! certificate) closes that: one node can then speak only for itself.

use std::time::{SystemTime, UNIX_EPOCH};

/// One hour in microseconds.
pub const MAX_AHEAD_US: u64 = 3_600 * 1_000_000;

/// The clock in microseconds since the epoch (0 before 1970).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The highest seq acceptable after `mark` at `now_us`.
pub fn max_seq(mark: u64, now_us: u64) -> u64 {
    mark.max(now_us).saturating_add(MAX_AHEAD_US)
}

/// Whether `seq` is within reach of `mark` at `now_us`.
pub fn seq_ok(seq: u64, mark: u64, now_us: u64) -> bool {
    seq <= max_seq(mark, now_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_follows_the_clock_and_the_mark_and_never_wraps() {
        let now = 1_700_000_000_000_000;
        assert!(seq_ok(now, 0, now));
        assert!(seq_ok(now + MAX_AHEAD_US, 5, now));
        assert!(!seq_ok(now + MAX_AHEAD_US + 1, 5, now));
        assert!(!seq_ok(u64::MAX, 5, now));
        // An origin already ahead of this clock keeps going.
        assert!(seq_ok(now + 3 * MAX_AHEAD_US, now + 2 * MAX_AHEAD_US, now));
        assert_eq!(max_seq(u64::MAX - 1, now), u64::MAX);
        // Dense seqs of a node seeded at 1 (tests, the library default) are far below.
        assert!(seq_ok(10_000, 9_000, now));
    }
}
