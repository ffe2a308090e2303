//! The one back-off: exponential from `base`, doubling up to `cap`, with equal jitter (half of
//! the delay fixed, half random), so retries of many nodes spread out. Used by the forwarder,
//! index anti-entropy, the event relay and the stream client.

use std::time::Duration;

/// The delay before retry number `attempt` (0 for the first retry).
pub fn delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(20)).min(cap);
    let half = exp / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// Consecutive failures of one thing, and the delay before its next try.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// Counts a failure and returns how long to wait before trying again.
    pub fn next_delay(&mut self) -> Duration {
        let d = delay(self.attempt, self.base, self.cap);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// A success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_capped_and_resets() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Backoff::new(base, cap);
        for attempt in 0..30u32 {
            assert_eq!(b.attempt(), attempt);
            let d = b.next_delay();
            let exp = base.saturating_mul(1 << attempt.min(20)).min(cap);
            assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d:?}");
        }
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert!(b.next_delay() <= base);
    }
}
