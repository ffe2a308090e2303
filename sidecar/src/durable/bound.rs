//! The bound on what waits for a store's committer thread (the outbox's, the event log's, the
//! index writer's). Requests travel over a plain channel to the thread, but a caller first
//! enters the bound and stays in it until its reply arrives, so at most `max` requests are
//! queued or being committed at once; the rest wait here, asynchronously, without taking a
//! thread (backpressure reaches the HTTP handlers, and through them the clients). Control
//! messages (add a queue, shut down) do not enter: they are few and must never wait behind a
//! full queue.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default room: far above one group commit (the outbox gathers up to 4,096 appends), so the
/// bound only bites when producers outrun the disk.
pub const DEFAULT_MAX: usize = 16_384;

#[derive(Debug, Clone)]
pub struct Bound {
    room: Arc<Semaphore>,
    max: usize,
}

/// Held while requests are queued or being committed; dropping it makes room.
#[derive(Debug)]
pub struct Entered(#[allow(dead_code)] OwnedSemaphorePermit);

impl Bound {
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Bound {
            room: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Waits until `n` more requests fit. A batch larger than the whole bound waits for all of
    /// it (so it goes alone) rather than forever.
    pub async fn enter(&self, n: usize) -> Entered {
        let n = n.clamp(1, self.max) as u32;
        let permit = self
            .room
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the bound's semaphore is never closed");
        Entered(permit)
    }

    /// Requests queued or being committed now.
    pub fn in_flight(&self) -> usize {
        self.max - self.room.available_permits()
    }
}

impl Default for Bound {
    fn default() -> Self {
        Bound::new(DEFAULT_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn callers_wait_for_room_and_a_large_batch_goes_alone() {
        let b = Bound::new(3);
        let one = b.enter(1).await;
        let two = b.enter(2).await;
        assert_eq!(b.in_flight(), 3);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.enter(1).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "no room: it waits");
        drop(one);
        let three = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("room was made")
            .unwrap();
        drop((two, three));
        let all = tokio::time::timeout(std::time::Duration::from_secs(5), b.enter(100))
            .await
            .expect("a batch above the bound takes all of it");
        assert_eq!(b.in_flight(), 3);
        drop(all);
        assert_eq!(b.in_flight(), 0);
    }
}
