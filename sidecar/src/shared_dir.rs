//! The bulkhead in front of the shared directory: every call this node makes on it (session
//! reads and writes, cleanup, heartbeats, shared-fs discovery) runs here, on a blocking thread,
//! under a bounded number of permits and a deadline.
//!
//! The shared directory is an NFS mount, mounted `hard`: when the server hangs, every system
//! call on it blocks in the kernel, uninterruptibly, for as long as the server is away. Without
//! a bound each request would pin one more blocking thread (tokio allows 512) and every caller
//! would wait forever. Here:
//!
//! * **Bounded threads.** At most `main.sharedDirectoryConcurrency` calls are in flight. The
//!   permit moves into the blocking closure and is released only when the call really returns,
//!   so a call that outlived its caller's deadline still holds its permit: a hung mount pins at
//!   most that many threads, however many requests arrive.
//! * **Bounded waits.** A caller waits at most `main.sharedDirectoryTimeout` in all (for a
//!   permit, then for the call) and gets [`SharedDirError::NotResponding`], which the API
//!   answers `503 shared directory not responding`. With every permit pinned by hung calls,
//!   new callers fail after that deadline, without starting a thread.
//! * **Background work** (cleanup) takes a permit too but has no deadline: it is one task.
//!
//! The watcher (`shared_fs::watch`) polls on its own single thread, outside the bulkhead: a hung
//! mount stops that thread only.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// What failed when calling into the shared directory.
#[derive(Debug, thiserror::Error)]
pub enum SharedDirError {
    /// The call did not finish (or could not start) within the deadline.
    #[error("shared directory not responding")]
    NotResponding,
    /// The blocking task panicked.
    #[error("shared directory task failed: {0}")]
    Failed(String),
}

/// The one gate to the shared directory of a node.
pub struct SharedDir {
    permits: Arc<Semaphore>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl SharedDir {
    /// A bulkhead allowing `concurrency` calls at once, each caller waiting at most `timeout`.
    pub fn new(concurrency: usize, timeout: Duration, metrics: Arc<Metrics>) -> SharedDir {
        SharedDir {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            timeout,
            metrics,
        }
    }

    /// The deadline of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `f` on a blocking thread under a permit; [`SharedDirError::NotResponding`] when no
    /// permit came free and the call did not return within the deadline.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, SharedDirError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let permit =
            match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) | Err(_) => return Err(self.not_responding("no free slot")),
            };
        let task = self.spawn(permit, f);
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(SharedDirError::Failed(e.to_string())),
            Err(_) => Err(self.not_responding("call timed out")),
        }
    }

    /// Runs background work (cleanup) under a permit, with no deadline.
    pub async fn run_background<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, SharedDirError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| SharedDirError::Failed(e.to_string()))?;
        self.spawn(permit, f)
            .await
            .map_err(|e| SharedDirError::Failed(e.to_string()))
    }

    fn spawn<T: Send + 'static>(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        let in_flight = InFlight::new(self.metrics.shared_dir_in_flight.clone(), permit);
        tokio::task::spawn_blocking(move || {
            let _in_flight = in_flight;
            f()
        })
    }

    fn not_responding(&self, why: &'static str) -> SharedDirError {
        self.metrics.shared_dir_not_responding.inc();
        tracing::warn!(
            why,
            timeout_ms = self.timeout.as_millis() as u64,
            "shared directory not responding"
        );
        SharedDirError::NotResponding
    }
}

/// A call in flight: holds its permit and counts itself until the call returns (or panics).
struct InFlight {
    gauge: prometheus_client::metrics::gauge::Gauge,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl InFlight {
    fn new(
        gauge: prometheus_client::metrics::gauge::Gauge,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> InFlight {
        gauge.inc();
        InFlight {
            gauge,
            _permit: permit,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hung_calls_pin_at_most_the_permits_and_callers_get_not_responding() {
        let m = Arc::new(Metrics::new());
        let dir = Arc::new(SharedDir::new(2, Duration::from_millis(200), m.clone()));
        let (release, hung) = mpsc::channel::<()>();
        let hung = Arc::new(std::sync::Mutex::new(hung));
        let started = Arc::new(AtomicUsize::new(0));
        let mut calls = Vec::new();
        for _ in 0..20 {
            let (d, h, s) = (dir.clone(), hung.clone(), started.clone());
            calls.push(tokio::spawn(async move {
                d.run(move || {
                    s.fetch_add(1, Ordering::SeqCst);
                    // A hung NFS call: returns when the test lets it.
                    let _ = h.lock().unwrap().recv();
                })
                .await
            }));
        }
        let t0 = std::time::Instant::now();
        for c in calls {
            assert!(matches!(
                c.await.unwrap(),
                Err(SharedDirError::NotResponding)
            ));
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        // Only the permitted calls ever started a thread.
        assert_eq!(started.load(Ordering::SeqCst), 2);
        assert!(m.encode().contains("ha_shared_dir_not_responding_total 20"));
        // The mount comes back: the pinned calls return, their permits free up.
        drop(release);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if dir.run(|| 7).await.ok() == Some(7) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "permits never came back"
            );
        }
    }

    #[tokio::test]
    async fn background_work_waits_without_a_deadline() {
        let dir = SharedDir::new(1, Duration::from_millis(10), Arc::new(Metrics::new()));
        let v = dir
            .run_background(|| {
                std::thread::sleep(Duration::from_millis(50));
                3
            })
            .await
            .unwrap();
        assert_eq!(v, 3);
    }
}
