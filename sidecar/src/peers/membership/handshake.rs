//! The handshakes of a start and a stop: catching up with what the peers hold for this node
//! before it takes traffic, and the goodbye of a graceful stop.

use super::*;

impl Membership {
    pub(super) fn hello(&self) -> Vec<u8> {
        serde_json::to_vec(&Hello {
            instance_id: self.config.instance_id.clone(),
            listen_url: self.config.advertise_url.to_string(),
        })
        .expect("a hello serialises")
    }

    /// After a start: `/health` says "catching up" until every reachable peer reports nothing
    /// left for this node (or `sidecar.catchUpTimeout` passes).
    pub(super) async fn catch_up(self: Arc<Self>, stop: CancellationToken) {
        let started = Instant::now();
        let deadline = started + self.config.catch_up_timeout;
        let client = self.peers.client();
        let body = self.hello();
        let mut waiting: Vec<url::Url> = self
            .peers
            .list()
            .iter()
            .filter(|p| p.is_forwarding())
            .map(|p| p.url())
            .collect();
        while !waiting.is_empty() && Instant::now() < deadline && !stop.is_cancelled() {
            let asks = waiting.iter().map(|u| {
                let body = body.clone();
                async move {
                    let r = client
                        .post_signed(u, "v1/peer/backlog", body, Duration::from_secs(2))
                        .await;
                    match r {
                        Ok((200, b)) => serde_json::from_slice::<BacklogReply>(&b)
                            .map(|r| r.pending)
                            .unwrap_or(0),
                        // Unreachable, unknown to it, or too old to answer: it holds nothing
                        // it could deliver now.
                        _ => 0,
                    }
                }
            });
            let pending = futures_util::future::join_all(asks).await;
            waiting = waiting
                .into_iter()
                .zip(pending)
                .filter(|(_, n)| *n > 0)
                .map(|(u, _)| u)
                .collect();
            if !waiting.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
        if !waiting.is_empty() && !stop.is_cancelled() {
            tracing::warn!(peers = ?waiting.iter().map(|u| u.as_str()).collect::<Vec<_>>(), "catch-up incomplete after sidecar.catchUpTimeout; serving anyway");
        }
        if !stop.is_cancelled() {
            self.health.end_catch_up("peers");
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "caught up with peers"
            );
        }
    }

    /// Graceful stop: mark the heartbeat leaving, tell every present peer, remove the heartbeat.
    pub async fn leave(&self) {
        self.write_heartbeat(true).await;
        let client = self.peers.client();
        let body = self.hello();
        let targets: Vec<_> = self.peers.list().iter().map(|p| p.url()).collect();
        let sends = targets.iter().map(|u| {
            let body = body.clone();
            async move {
                let r = client
                    .post_signed(u, "v1/peer/leave", body, Duration::from_secs(1))
                    .await;
                match r {
                    Ok((200..=299, _)) => {}
                    Ok((status, _)) => {
                        tracing::debug!(peer = %u, status, "a peer did not take the goodbye")
                    }
                    Err(e) => {
                        tracing::debug!(peer = %u, error = %e, "could not say goodbye to a peer")
                    }
                }
            }
        });
        futures_util::future::join_all(sends).await;
        if let Some(hb) = self.heartbeats.clone() {
            match self.shared_dir.run(move || hb.remove()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove this node's heartbeat"),
                Err(e) => tracing::warn!(error = %e, "heartbeat task failed"),
            }
        }
        tracing::info!(peers = targets.len(), "told peers this node is leaving");
    }
}
