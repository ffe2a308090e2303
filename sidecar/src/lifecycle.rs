//! The node's background work as one tree: every long-lived task is spawned into a [`Scope`], and
//! every scope is a child of the node's root scope.
//!
//! A scope is a cancellation token and a task tracker. Cancelling a scope cancels its children;
//! [`Scope::stop`] cancels it and waits until its own tasks and its children's have ended. The
//! parent counts a child among its tasks until that child is cancelled and drained, so stopping
//! the root waits for everything that was ever spawned, and a task that ignores its token shows up
//! as a stop that does not end (`main` bounds it by `sidecar.shutdownGrace`).
//!
//! The node stops in stages (index sync, then membership, then the listeners, then the relay,
//! forwarders and master delivery, then housekeeping; see `App::shutdown`): each stage is a child
//! scope, stopped in that order.

use std::future::Future;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug)]
pub struct Scope {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Scope {
    /// The root of a tree: the node's (or a test's) whole background work.
    pub fn root() -> Scope {
        Scope {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// A child scope: cancelled with this one (or alone); this scope counts it as running until
    /// it has been cancelled and its tasks have ended.
    pub fn child(&self) -> Scope {
        let child = Scope {
            token: self.token.child_token(),
            tracker: TaskTracker::new(),
        };
        let (token, tracker) = (child.token.clone(), child.tracker.clone());
        self.tracker.spawn(async move {
            token.cancelled().await;
            tracker.close();
            tracker.wait().await;
        });
        child
    }

    /// Spawns `task` on the runtime, tracked by this scope. The task is expected to watch
    /// [`Scope::token`] (or a child's) and end once it is cancelled.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// The token this scope's tasks watch.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once this scope (or an ancestor) is cancelled.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Cancels without waiting (an ancestor's [`Scope::stop`] waits for it).
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Cancels this scope and its children, then waits until all their tasks have ended.
    pub async fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Tasks still running in this scope (a running child counts as one).
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    async fn worker(scope: Scope, ended: Arc<AtomicUsize>, linger: Duration) {
        scope.cancelled().await;
        tokio::time::sleep(linger).await;
        ended.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_the_root_waits_for_every_descendant() {
        let root = Scope::root();
        let ended = Arc::new(AtomicUsize::new(0));
        let a = root.child();
        let b = a.child();
        root.spawn(worker(
            root.clone(),
            ended.clone(),
            Duration::from_millis(5),
        ));
        a.spawn(worker(a.clone(), ended.clone(), Duration::from_millis(50)));
        b.spawn(worker(b.clone(), ended.clone(), Duration::from_secs(3)));
        root.stop().await;
        assert_eq!(ended.load(Ordering::SeqCst), 3);
        assert_eq!(root.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_stops_alone_and_its_parent_stops_counting_it() {
        let root = Scope::root();
        let ended = Arc::new(AtomicUsize::new(0));
        let stage = root.child();
        stage.spawn(worker(
            stage.clone(),
            ended.clone(),
            Duration::from_millis(10),
        ));
        assert_eq!(root.running(), 1, "the child counts while it runs");
        stage.stop().await;
        assert_eq!(ended.load(Ordering::SeqCst), 1);
        assert!(!root.is_cancelled());
        // The parent's watcher of the child ends once the child has drained.
        tokio::time::timeout(Duration::from_secs(1), async {
            while root.running() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the parent stops counting a drained child");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_its_token_holds_the_stop() {
        let root = Scope::root();
        root.spawn(tokio::time::sleep(Duration::from_secs(3600)));
        let stopped = tokio::time::timeout(Duration::from_secs(10), root.stop()).await;
        assert!(
            stopped.is_err(),
            "stop must wait for a task that does not end"
        );
    }
}
