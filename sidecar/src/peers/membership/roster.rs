//! The roster: the peers this node knew, remembered in `<data>/peers.json` across restarts so a
//! peer absent at start keeps its queue until `retainAbsent` ends.

use super::*;

/// One remembered peer in `<data>/peers.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct RosterEntry {
    key: String,
    url: String,
    instance_id: Option<String>,
    state: MemberState,
    absent_since_ms: Option<u64>,
}

impl Membership {
    pub(super) fn load_roster(&self) {
        let entries: Vec<RosterEntry> = match std::fs::read(&self.roster_path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(path = %self.roster_path.display(), error = %e, "unreadable peer roster; starting without it");
                    return;
                }
            },
            Err(_) => return,
        };
        let now = now_ms();
        for e in &entries {
            let Ok(url) = url::Url::parse(&e.url) else {
                continue;
            };
            let since = e.absent_since_ms.unwrap_or(now);
            if self.expired(since, now) {
                self.forget(&e.key);
                continue;
            }
            match self.peers.add_absent(&e.key, url, since, e.state) {
                Ok(p) => {
                    if let Some(id) = &e.instance_id {
                        p.set_instance_id(id);
                    }
                    tracing::info!(peer = %e.key, pending = p.queue.stats().pending, "remembered peer: queueing for it until discovery sees it");
                }
                Err(err) => {
                    tracing::error!(peer = %e.key, error = %err, "cannot reopen a remembered peer's queue")
                }
            }
        }
    }

    pub(super) async fn save_roster(&self) {
        if self.source.is_none() {
            return;
        }
        let entries: Vec<RosterEntry> = self
            .peers
            .list()
            .iter()
            .map(|p| {
                let s = p.status();
                RosterEntry {
                    key: p.key.clone(),
                    url: p.url().to_string(),
                    instance_id: s.instance_id,
                    state: s.state,
                    absent_since_ms: s.absent_since_ms,
                }
            })
            .collect();
        {
            let mut inner = self.inner.locked();
            if inner.last_roster.as_ref() == Some(&entries) {
                return;
            }
            inner.last_roster = Some(entries.clone());
        }
        let path = self.roster_path.clone();
        let body = serde_json::to_vec_pretty(&entries).expect("the roster serialises");
        let res = tokio::task::spawn_blocking(move || {
            crate::durable::write_small(&path, &body, crate::durable::Fsync::Durable)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = res {
            tracing::warn!(path = %self.roster_path.display(), error = %e, "cannot save the peer roster");
        }
    }
}
