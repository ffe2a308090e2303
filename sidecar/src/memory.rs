//! Returning freed heap to the system after a burst (issue 14, item 6).
//!
//! glibc's malloc keeps memory a burst freed (10,000 connections' buffers, a partition's
//! backlog of requests): the node's RSS stayed at its peak after the burst ended
//! (`bench/NOTES.md`, *Memory after floods*: 125 MiB after 10,000 connections closed, 27 MiB
//! before; limiting the arenas did not change it, jemalloc returned to 51 MiB). Every
//! [`INTERVAL`] this task asks glibc how much free memory it holds (`mallinfo2`) and, above
//! [`SLACK`], gives it back (`malloc_trim(0)`, on a blocking thread: it walks the arenas under
//! their locks, a few milliseconds). Idle, it costs one `mallinfo2` call per interval.

use std::time::Duration;

use crate::lifecycle::Scope;

/// How often the allocator's free memory is looked at.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Free memory the allocator may keep before it is trimmed.
pub const SLACK: usize = 16 << 20;

/// Free bytes glibc's malloc holds (in its arenas, not given back).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn free_held() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    info.fordblks
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn free_held() -> usize {
    0
}

/// Gives free heap memory back to the system; returns the bytes released (by `free_held`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> usize {
    let before = free_held();
    // SAFETY: malloc_trim takes no pointers; 0 keeps no padding at the top of the heap.
    unsafe { libc::malloc_trim(0) };
    before
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> usize {
    0
}

/// Starts the trimming task in `scope`.
pub fn spawn_trimmer(scope: &Scope) {
    let stop = scope.token().clone();
    scope.spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if free_held() > SLACK {
                if let Ok(free) = tokio::task::spawn_blocking(trim).await {
                    tracing::debug!(free_mib = free >> 20, "freed heap memory given back");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    fn rss_mib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap()
            >> 10
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_freed_burst_is_given_back() {
        // 80 MiB of small blocks (as connection buffers are), one in 64 kept: the freed ones
        // lie between blocks in use, so glibc keeps their pages until trimmed.
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8 | 1; 4096]).collect();
        let pin: Vec<Vec<u8>> = blocks.into_iter().step_by(64).collect();
        let freed = rss_mib();
        assert!(super::free_held() > 64 << 20, "{}", super::free_held());
        super::trim();
        let trimmed = rss_mib();
        assert!(
            trimmed + 40 < freed,
            "RSS {freed} MiB after free, {trimmed} MiB after trim"
        );
        drop(pin);
    }
}
