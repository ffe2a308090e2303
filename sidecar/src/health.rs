//! Whether this node should receive traffic: a start-up latch, a persisted drain flag, the
//! shutting-down state, and (hot-standby) the node's role. `/health` is 204 only when started,
//! not drained, not stopping and, in hot-standby mode, active (the `election` sets the role).

use crate::locks::LockExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

const STARTING: u8 = 0;
const READY: u8 = 1;
const CATCHING_UP: u8 = 2;
const STOPPING: u8 = 3;

pub struct Health {
    phase: AtomicU8,
    drained: AtomicBool,
    drain_file: PathBuf,
    /// Set while this node's Gerrit master fails its health check (`[gerrit] url`).
    master_down: AtomicBool,
    /// What this node is still catching up on (peers' backlogs, the index): ready when empty.
    catching_up: std::sync::Mutex<Vec<&'static str>>,
    /// The data directory's full-disk mark, shared with the stores.
    disk: std::sync::Arc<crate::durable::DiskWatch>,
    /// Hot-standby: set while this node is not the active one (the `election` owns the role).
    standby: AtomicBool,
}

impl Health {
    /// Reads the persisted drain flag: a drain survives a restart.
    pub fn new(data_dir: &Path) -> Self {
        let drain_file = data_dir.join("drained");
        Health {
            phase: AtomicU8::new(STARTING),
            drained: AtomicBool::new(drain_file.exists()),
            drain_file,
            master_down: AtomicBool::new(false),
            catching_up: std::sync::Mutex::new(Vec::new()),
            disk: std::sync::Arc::new(crate::durable::DiskWatch::new(data_dir)),
            standby: AtomicBool::new(false),
        }
    }

    /// The full-disk mark the stores report to; `/health` is `503 disk full` while it is set.
    pub fn disk(&self) -> &std::sync::Arc<crate::durable::DiskWatch> {
        &self.disk
    }

    pub fn set_ready(&self) {
        self.phase.store(READY, Ordering::SeqCst);
    }

    /// Starts catching up on `what`: 503 "catching up" until every such `what` has ended.
    pub fn begin_catch_up(&self, what: &'static str) {
        let mut pending = self.catching_up.locked();
        if !pending.contains(&what) {
            pending.push(what);
        }
        let _ =
            self.phase
                .compare_exchange(STARTING, CATCHING_UP, Ordering::SeqCst, Ordering::SeqCst);
        let _ = self
            .phase
            .compare_exchange(READY, CATCHING_UP, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Catching up on `what` is over; when nothing else is pending the node is healthy, unless a
    /// stop began meanwhile.
    pub fn end_catch_up(&self, what: &'static str) {
        let mut pending = self.catching_up.locked();
        pending.retain(|w| *w != what);
        if pending.is_empty() {
            let _ =
                self.phase
                    .compare_exchange(CATCHING_UP, READY, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    pub fn set_stopping(&self) {
        self.phase.store(STOPPING, Ordering::SeqCst);
    }

    /// Ready to serve requests at all (`/readyz`).
    pub fn is_ready(&self) -> bool {
        matches!(self.phase.load(Ordering::SeqCst), READY | CATCHING_UP)
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    /// `None` when the node should get traffic, else why not.
    pub fn unhealthy_reason(&self) -> Option<&'static str> {
        self.serving_reason()
            .or_else(|| self.standby.load(Ordering::SeqCst).then_some("standby"))
    }

    /// Hot-standby: the election marks this node standby (`/health` 503 "standby") or active.
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::SeqCst);
    }

    /// Why this node could not serve whatever its role (`None`: it could): what the election
    /// asks before a node stands, and what makes an active one step down.
    pub fn serving_reason(&self) -> Option<&'static str> {
        match self.phase.load(Ordering::SeqCst) {
            STARTING => Some("starting"),
            CATCHING_UP => Some("catching up"),
            STOPPING => Some("shutting down"),
            _ if self.is_drained() => Some("drained"),
            _ if self.master_down.load(Ordering::SeqCst) => Some("master unhealthy"),
            _ => None,
        }
    }

    /// Records the master's health (the probe in `gerrit::probe`); returns whether it changed.
    pub fn set_master_healthy(&self, healthy: bool) -> bool {
        self.master_down.swap(!healthy, Ordering::SeqCst) == healthy
    }

    /// Drains (true) or restores (false), persisting the choice.
    pub fn set_drained(&self, drained: bool) -> std::io::Result<()> {
        if drained {
            crate::durable::write_small(
                &self.drain_file,
                b"drained by DELETE /health\n",
                crate::durable::Fsync::Durable,
            )?;
        } else {
            match std::fs::remove_file(&self.drain_file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.drained.store(drained, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_catch_up_ended() {
        let d = tempfile::tempdir().unwrap();
        let h = Health::new(d.path());
        h.begin_catch_up("peers");
        h.begin_catch_up("index");
        assert_eq!(h.unhealthy_reason(), Some("catching up"));
        h.end_catch_up("index");
        assert_eq!(h.unhealthy_reason(), Some("catching up"));
        h.end_catch_up("peers");
        assert_eq!(h.unhealthy_reason(), None);
        h.begin_catch_up("index");
        h.set_stopping();
        h.end_catch_up("index");
        assert_eq!(h.unhealthy_reason(), Some("shutting down"));
    }

    #[test]
    fn an_unhealthy_master_makes_the_node_unhealthy() {
        let d = tempfile::tempdir().unwrap();
        let h = Health::new(d.path());
        h.set_ready();
        assert!(h.set_master_healthy(false));
        assert!(!h.set_master_healthy(false));
        assert_eq!(h.unhealthy_reason(), Some("master unhealthy"));
        assert!(h.set_master_healthy(true));
        assert_eq!(h.unhealthy_reason(), None);
    }

    #[test]
    fn drain_survives_restart() {
        let d = tempfile::tempdir().unwrap();
        let h = Health::new(d.path());
        assert_eq!(h.unhealthy_reason(), Some("starting"));
        h.set_ready();
        assert_eq!(h.unhealthy_reason(), None);
        h.set_drained(true).unwrap();
        let h2 = Health::new(d.path());
        h2.set_ready();
        assert_eq!(h2.unhealthy_reason(), Some("drained"));
        h2.set_drained(false).unwrap();
        assert!(!Health::new(d.path()).is_drained());
    }

    #[test]
    fn standby_is_the_last_reason() {
        let d = tempfile::tempdir().unwrap();
        let h = Health::new(d.path());
        h.set_ready();
        h.set_standby(true);
        assert_eq!(h.unhealthy_reason(), Some("standby"));
        assert_eq!(h.serving_reason(), None);
        h.set_drained(true).unwrap();
        assert_eq!(h.unhealthy_reason(), Some("drained"));
        h.set_drained(false).unwrap();
        h.set_standby(false);
        assert_eq!(h.unhealthy_reason(), None);
    }
}
