//! Roles in a hot-standby cluster (SPEC §9): which node is active. Every `heartbeat` this node
//! sends its claim (ping, candidacy, lease renewal) to every known peer over the signed
//! `POST /v1/peer/election`; the rules (`state`) decide grants and roles; the role reaches
//! `/health` through `Health::set_standby`, and every change is logged, counted, alerted and
//! kept for the status page. With `main.mode = active-active` nothing here runs and every node
//! is active. ARCHITECTURE.md (Roles, precisely) has the protocol and its safety argument.

mod state;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ElectionStrategy, Mode};
use crate::health::Health;
use crate::lifecycle::Scope;
use crate::locks::LockExt;
use crate::metrics::Metrics;
use crate::peers::outbox::now_ms;
use crate::peers::Peers;
use crate::wire::{Claim, ElectionReply, ElectionRequest, Role};
pub use state::majority;
use state::{Change, Params, State};

/// Why a promotion was refused.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("main.mode is active-active: every healthy node is active already")]
    NotHotStandby,
    #[error("election.strategy is {0}: nodes elect themselves; promote needs election.strategy = manual")]
    NotManual(&'static str),
    #[error("this node cannot serve now ({0}): it cannot be promoted")]
    CannotServe(&'static str),
}

/// The answer to a promotion.
#[derive(Debug, Serialize)]
pub struct Promoted {
    pub instance_id: String,
    pub role: &'static str,
    pub epoch: u64,
    /// Peers that took the news; the others learn it at their next exchange.
    pub told: Vec<String>,
    pub unreachable: Vec<String>,
}

/// What `/v1/status` shows of the election.
#[derive(Debug, Serialize)]
pub struct ElectionView {
    pub mode: &'static str,
    pub strategy: &'static str,
    pub role: &'static str,
    /// Epoch of the active node (this one or the one it follows); 0: none known.
    pub epoch: u64,
    pub active: Option<String>,
    /// Nodes known (this one included) and heard from within ttl (this one included).
    pub known: usize,
    pub live: usize,
    pub majority: usize,
    pub changes: Vec<ChangeView>,
    #[serde(skip)]
    pub peers: Vec<PeerRole>,
}

#[derive(Debug, Serialize)]
pub struct ChangeView {
    pub role: &'static str,
    pub epoch: u64,
    pub reason: String,
    pub at_ms: u64,
}

/// A peer's role and health as this node last heard them.
#[derive(Debug, Clone)]
pub struct PeerRole {
    pub instance_id: String,
    pub url: Option<String>,
    pub role: &'static str,
    pub health: String,
    pub heard_ms_ago: u64,
    pub live: bool,
}

pub struct Election {
    config: Arc<Config>,
    peers: Arc<Peers>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    wake: Notify,
    epoch_path: PathBuf,
    saved_epoch: Mutex<u64>,
    /// Where alert deliveries run (the node's membership stage).
    scope: Scope,
}

impl Election {
    /// A node's election; with hot-standby it starts standby (`/health` 503 "standby").
    pub fn new(
        config: Arc<Config>,
        peers: Arc<Peers>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        scope: Scope,
    ) -> Election {
        let epoch_path = config.data_dir.join("election.json");
        let epoch = std::fs::read(&epoch_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()))
            .unwrap_or(0);
        let params = Params {
            strategy: config.election,
            ttl: config.peers.ttl,
            me: config.instance_id.clone(),
            started_at_ms: now_ms(),
        };
        let hot = config.mode == Mode::HotStandby;
        health.set_standby(hot);
        let e = Election {
            state: Mutex::new(State::new(params, epoch, Instant::now())),
            config,
            peers,
            health,
            metrics,
            wake: Notify::new(),
            epoch_path,
            saved_epoch: Mutex::new(epoch),
            scope,
        };
        e.set_metrics(if hot { Role::Standby } else { Role::Active }, epoch);
        e
    }

    fn hot(&self) -> bool {
        self.config.mode == Mode::HotStandby
    }

    pub fn role(&self) -> Role {
        if !self.hot() {
            return Role::Active;
        }
        self.state.locked().role()
    }

    fn set_metrics(&self, role: Role, epoch: u64) {
        for r in [Role::Active, Role::Standby] {
            self.metrics
                .roles
                .role
                .get_or_create(&crate::metrics::RoleLabel {
                    role: r.as_str().to_owned(),
                })
                .set((r == role) as i64);
        }
        self.metrics.roles.epoch.set(epoch as i64);
    }

    /// This node's `health` field in the exchange: its reason without its role.
    fn my_health(&self) -> &'static str {
        self.health.serving_reason().unwrap_or("healthy")
    }

    /// Whether this node could serve: the health reasons without the role, and the disk.
    async fn eligible(&self) -> bool {
        if self.health.serving_reason().is_some() {
            return false;
        }
        let disk = self.health.disk().clone();
        !matches!(
            tokio::task::spawn_blocking(move || disk.full()).await,
            Ok(Some(_))
        )
    }

    /// Applies a role change: `/health`, metrics, a log line, the webhook.
    fn changed(&self, change: Option<Change>) {
        let Some(c) = change else {
            return;
        };
        self.health.set_standby(c.role == Role::Standby);
        self.set_metrics(c.role, c.epoch);
        self.metrics.roles.changes.inc();
        match c.role {
            Role::Active => {
                tracing::info!(role = "active", epoch = c.epoch, reason = %c.reason, "role changed: this node is now active")
            }
            Role::Standby => {
                tracing::warn!(role = "standby", epoch = c.epoch, reason = %c.reason, "role changed: this node is now standby")
            }
        }
        if let Some(url) = self.config.alert_webhook.clone() {
            let body = serde_json::json!({
                "event": "role_changed",
                "node": self.config.instance_id,
                "role": c.role.as_str(),
                "epoch": c.epoch,
                "strategy": self.config.election.name(),
                "reason": c.reason,
                "at_ms": c.at_ms,
            });
            self.peers
                .client()
                .spawn_alert(&self.scope, url, body, self.metrics.clone());
        }
        self.wake.notify_one();
    }

    /// `POST /v1/peer/election` from a peer.
    pub fn on_request(&self, req: &ElectionRequest) -> ElectionReply {
        let (reply, change) =
            self.state
                .locked()
                .on_request(req, self.my_health(), Instant::now(), now_ms());
        self.changed(change);
        if req.claim == Claim::Release {
            self.wake.notify_one();
        }
        reply
    }

    /// A peer said goodbye (`/v1/peer/leave`): it holds no role now; stand at once if due.
    pub fn on_leave(&self, instance_id: &str) {
        if !self.hot() {
            return;
        }
        self.state.locked().on_leave(instance_id);
        self.wake.notify_one();
    }

    /// Graceful stop, before the goodbye to peers (which lets them elect at once).
    pub fn step_down_for_stop(&self) {
        if !self.hot() {
            return;
        }
        let c = self.state.locked().step_down("shutting down", now_ms());
        self.changed(c);
    }

    /// manual: an operator's promotion. The peers are told before the answer.
    pub async fn promote(&self) -> Result<Promoted, ElectionError> {
        if !self.hot() {
            return Err(ElectionError::NotHotStandby);
        }
        if self.config.election != ElectionStrategy::Manual {
            return Err(ElectionError::NotManual(self.config.election.name()));
        }
        if let Some(why) = self.health.serving_reason() {
            return Err(ElectionError::CannotServe(why));
        }
        let (epoch, change) = self.state.locked().promote(Instant::now(), now_ms());
        self.changed(change);
        self.save_epoch().await;
        let (replies, unreachable) = self.exchange(Claim::Active, epoch).await;
        let told = replies.iter().map(|r| r.instance_id.clone()).collect();
        self.absorb(&replies);
        tracing::info!(epoch, "promoted by an operator");
        Ok(Promoted {
            instance_id: self.config.instance_id.clone(),
            role: self.role().as_str(),
            epoch,
            told,
            unreachable,
        })
    }

    fn absorb(&self, replies: &[ElectionReply]) {
        let (now, ms) = (Instant::now(), now_ms());
        for r in replies {
            let c = self.state.locked().on_reply(r, now, ms);
            self.changed(c);
        }
    }

    /// Sends one claim to every known peer; the replies, and the peers that did not answer.
    async fn exchange(&self, claim: Claim, epoch: u64) -> (Vec<ElectionReply>, Vec<String>) {
        let started_at_ms = self.state.locked().p.started_at_ms;
        let body = serde_json::to_vec(&ElectionRequest {
            instance_id: self.config.instance_id.clone(),
            listen_url: self.config.advertise_url.to_string(),
            started_at_ms,
            claim,
            epoch,
            health: self.my_health().to_owned(),
        })
        .expect("an election request serialises");
        let timeout = (self.config.peers.ttl / 4)
            .min(self.config.http.connection_timeout)
            .clamp(Duration::from_millis(100), Duration::from_secs(2));
        let client = self.peers.client();
        let targets: Vec<(String, url::Url)> = self
            .peers
            .list()
            .iter()
            .map(|p| {
                (
                    p.status().instance_id.unwrap_or_else(|| p.key.clone()),
                    p.url(),
                )
            })
            .collect();
        let sends = targets.iter().map(|(name, url)| {
            let body = body.clone();
            async move {
                match client
                    .post_signed(url, "v1/peer/election", body, timeout)
                    .await
                {
                    Ok((200, b)) => serde_json::from_slice::<ElectionReply>(&b)
                        .map_err(|e| format!("unreadable election reply: {e}")),
                    Ok((status, _)) => Err(format!("answered {status}")),
                    Err(e) => Err(e.to_string()),
                }
                .map_err(|e| {
                    tracing::debug!(peer = %name, error = %e, "election exchange failed");
                    name.clone()
                })
            }
        });
        let mut replies = Vec::new();
        let mut failed = Vec::new();
        for r in futures_util::future::join_all(sends).await {
            match r {
                Ok(reply) => replies.push(reply),
                Err(name) => failed.push(name),
            }
        }
        (replies, failed)
    }

    /// Known nodes, this one included: the majority is taken of these.
    fn known(&self) -> usize {
        self.peers.list().len() + 1
    }

    /// One round: the lease, eligibility, then this node's claim to every peer.
    async fn round(&self) {
        let eligible = self.eligible().await;
        let (now, ms) = (Instant::now(), now_ms());
        let c = self.state.locked().tick(now, ms);
        self.changed(c);
        let strategy = self.config.election;
        if !eligible && strategy != ElectionStrategy::Manual && self.role() == Role::Active {
            let why = self.health.serving_reason().unwrap_or("disk full");
            let c = self
                .state
                .locked()
                .step_down(format!("this node cannot serve: {why}"), ms);
            self.changed(c);
            let epoch = self.state.locked().active_epoch;
            let (replies, _) = self.exchange(Claim::Release, epoch).await;
            self.absorb(&replies);
            return;
        }
        let candidacy = self.state.locked().candidacy(eligible, now);
        if candidacy.is_some() {
            self.stand().await;
        } else {
            let (claim, epoch) = self.state.locked().claim();
            let sent = Instant::now();
            let (replies, _) = self.exchange(claim, epoch).await;
            let grants = replies.iter().filter(|r| r.granted).count();
            self.absorb(&replies);
            if claim == Claim::Active && strategy == ElectionStrategy::KeepMajority {
                self.state
                    .locked()
                    .end_renewal(grants, self.known(), sent, Instant::now());
            }
        }
        let c = self
            .state
            .locked()
            .decide_oldest(eligible, Instant::now(), now_ms());
        self.changed(c);
        self.save_epoch().await;
    }

    /// keep-majority: a candidacy after a random pause (so two standbys rarely stand at once);
    /// a lost one releases the votes it got.
    async fn stand(&self) {
        let pause = self
            .config
            .peers
            .heartbeat
            .mul_f64(rand::random::<f64>() * 0.5);
        tokio::time::sleep(pause).await;
        let eligible = self.eligible().await;
        let now = Instant::now();
        let epoch = {
            let mut s = self.state.locked();
            // Voted for another meanwhile, or learned of an active node: no candidacy.
            let Some(epoch) = s.candidacy(eligible, now) else {
                return;
            };
            s.begin_candidacy(epoch, now);
            epoch
        };
        let sent = Instant::now();
        let (replies, _) = self.exchange(Claim::Candidate, epoch).await;
        let grants = replies.iter().filter(|r| r.granted).count();
        self.absorb(&replies);
        let known = self.known();
        let c =
            self.state
                .locked()
                .end_candidacy(epoch, grants, known, sent, Instant::now(), now_ms());
        let won = c.as_ref().is_some_and(|c| c.role == Role::Active);
        self.changed(c);
        if won {
            // Tell everyone at once (they follow it, and it renews its lease).
            let sent = Instant::now();
            let (replies, _) = self.exchange(Claim::Active, epoch).await;
            let grants = replies.iter().filter(|r| r.granted).count();
            self.absorb(&replies);
            self.state
                .locked()
                .end_renewal(grants, known, sent, Instant::now());
        } else {
            tracing::debug!(epoch, grants, known, "candidacy lost");
            if grants > 0 {
                let (replies, _) = self.exchange(Claim::Release, epoch).await;
                self.absorb(&replies);
            }
        }
    }

    /// Persists the highest epoch seen (a restarted node never reuses one); no fsync: losing
    /// the last write only costs epochs learnt again from peers.
    async fn save_epoch(&self) {
        let epoch = self.state.locked().epoch;
        {
            let mut saved = self.saved_epoch.locked();
            if *saved >= epoch {
                return;
            }
            *saved = epoch;
        }
        let path = self.epoch_path.clone();
        let body = serde_json::to_vec(&serde_json::json!({ "epoch": epoch }))
            .expect("an epoch serialises");
        let r = tokio::task::spawn_blocking(move || {
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, body)?;
            std::fs::rename(&tmp, &path)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = r {
            tracing::warn!(path = %self.epoch_path.display(), error = %e, "cannot save the election epoch");
        }
    }

    /// Rounds every `heartbeat` (sooner when a lease ends or a peer leaves) until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if !self.hot() {
            return;
        }
        tracing::info!(
            strategy = self.config.election.name(),
            ttl_ms = self.config.peers.ttl.as_millis() as u64,
            "hot-standby: starting as standby"
        );
        let tick = self.config.peers.heartbeat.max(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = self.round() => {}
                _ = stop.cancelled() => return,
            }
            let next = Instant::now() + tick;
            let wake_at = self
                .state
                .locked()
                .lease_until()
                .map_or(next, |l| l.min(next));
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at.into()) => {}
                _ = self.wake.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// The election as `/v1/status` shows it.
    pub fn view(&self) -> ElectionView {
        let known = self.known();
        let s = self.state.locked();
        let now = Instant::now();
        let hot = self.hot();
        let live: Vec<String> = s.live_peers(now).map(|(id, _)| id.clone()).collect();
        ElectionView {
            mode: self.config.mode.name(),
            strategy: self.config.election.name(),
            role: if hot { s.role().as_str() } else { "active" },
            epoch: if s.active(now).is_some() {
                s.active_epoch
            } else {
                0
            },
            active: s.active(now).map(str::to_owned),
            known,
            live: live.len() + 1,
            majority: majority(known),
            changes: s
                .changes
                .iter()
                .rev()
                .map(|c| ChangeView {
                    role: c.role.as_str(),
                    epoch: c.epoch,
                    reason: c.reason.clone(),
                    at_ms: c.at_ms,
                })
                .collect(),
            peers: s
                .peers
                .iter()
                .map(|(id, v)| PeerRole {
                    instance_id: id.clone(),
                    url: v.url.clone(),
                    role: v.role.as_str(),
                    health: v.health.clone(),
                    heard_ms_ago: now.duration_since(v.seen).as_millis() as u64,
                    live: live.contains(id),
                })
                .collect(),
        }
    }
}
