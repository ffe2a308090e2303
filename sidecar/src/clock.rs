//! The wall clock, in one place: epoch milliseconds for records, timestamps of status and
//! tombstones, signatures. The event log's injectable `Clock` wraps it; durations that must not
//! jump with the host clock use `Instant` instead.

/// Milliseconds since the Unix epoch (0 if the host clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
