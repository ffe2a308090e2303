//! The election's rules, without I/O: what a node grants, when it stands, when it is active and
//! when it steps down. Time is passed in (`Instant`), so the rules are unit-tested without
//! sleeping. `election/mod.rs` runs them over the network; ARCHITECTURE.md has the safety
//! argument.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::ElectionStrategy;
use crate::wire::{Claim, ElectionReply, ElectionRequest, Role};

/// How many role changes the status page shows.
const CHANGES_KEPT: usize = 20;

/// A node's fixed facts for the rules.
#[derive(Debug, Clone)]
pub struct Params {
    pub strategy: ElectionStrategy,
    pub ttl: Duration,
    pub me: String,
    pub started_at_ms: u64,
}

/// What this node last heard from (or about) a peer.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub url: Option<String>,
    pub started_at_ms: u64,
    pub role: Role,
    pub health: String,
    pub seen: Instant,
    /// It gave the role up or is leaving: not live until it speaks again.
    pub released: bool,
}

/// "I grant nothing to anyone else until `until`": given with a vote or a lease
/// acknowledgement (and by an active node to itself).
#[derive(Debug, Clone)]
struct Promise {
    holder: String,
    until: Instant,
}

/// The node the rules believe active (this one, or one a peer follows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub holder: String,
    pub epoch: u64,
    pub until: Instant,
}

/// One change of this node's role.
#[derive(Debug, Clone)]
pub struct Change {
    pub role: Role,
    pub epoch: u64,
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Debug)]
pub struct State {
    pub p: Params,
    /// This process's start: no vote, no lease acknowledgement and no candidacy before
    /// `started + ttl` (a promise given before a crash may still be held by someone).
    started: Instant,
    /// The highest epoch seen: claimed, voted for or won.
    pub epoch: u64,
    role: Role,
    /// Epoch of the active node this node is or follows.
    pub active_epoch: u64,
    /// keep-majority: the active node's lease ends here (measured from the start of the last
    /// round that a majority acknowledged). `None` with the other strategies.
    lease_until: Option<Instant>,
    voted: Option<(u64, String)>,
    promise: Option<Promise>,
    pub known: Option<Known>,
    pub peers: BTreeMap<String, PeerView>,
    pub changes: VecDeque<Change>,
}

pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

impl State {
    pub fn new(p: Params, epoch: u64, now: Instant) -> State {
        State {
            p,
            started: now,
            epoch,
            role: Role::Standby,
            active_epoch: 0,
            lease_until: None,
            voted: None,
            promise: None,
            known: None,
            peers: BTreeMap::new(),
            changes: VecDeque::new(),
        }
    }

    /// The lease an active keep-majority node takes from a round started at `sent`: shorter
    /// than the promises behind it (each runs `ttl` from its arrival, after `sent`), with a
    /// tenth of `ttl` for clock rate differences.
    fn lease_len(&self) -> Duration {
        self.p.ttl - self.p.ttl / 10
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn in_start_window(&self, now: Instant) -> bool {
        now < self.started + self.p.ttl
    }

    fn promised_to_other(&self, who: &str, now: Instant) -> bool {
        self.promise
            .as_ref()
            .is_some_and(|p| p.holder != who && p.until > now)
    }

    fn known_other(&self, now: Instant) -> Option<&Known> {
        self.known
            .as_ref()
            .filter(|k| k.holder != self.p.me && k.until > now)
    }

    /// Who is active as far as this node knows (itself, or the node it follows).
    pub fn active(&self, now: Instant) -> Option<&str> {
        if self.role == Role::Active {
            return Some(&self.p.me);
        }
        self.known_other(now).map(|k| k.holder.as_str())
    }

    fn change(&mut self, role: Role, reason: String, now_ms: u64) -> Option<Change> {
        if self.role == role {
            return None;
        }
        self.role = role;
        if role == Role::Standby {
            self.lease_until = None;
            if self.promise.as_ref().is_some_and(|p| p.holder == self.p.me) {
                self.promise = None;
            }
            if self.known.as_ref().is_some_and(|k| k.holder == self.p.me) {
                self.known = None;
            }
        }
        let c = Change {
            role,
            epoch: self.active_epoch,
            reason,
            at_ms: now_ms,
        };
        self.changes.push_back(c.clone());
        while self.changes.len() > CHANGES_KEPT {
            self.changes.pop_front();
        }
        Some(c)
    }

    fn become_active(
        &mut self,
        epoch: u64,
        lease: Option<Instant>,
        reason: String,
        now: Instant,
        now_ms: u64,
    ) -> Option<Change> {
        self.epoch = self.epoch.max(epoch);
        self.active_epoch = epoch;
        self.lease_until = lease;
        self.known = Some(Known {
            holder: self.p.me.clone(),
            epoch,
            until: now + self.p.ttl,
        });
        self.change(Role::Active, reason, now_ms)
    }

    pub fn step_down(&mut self, reason: impl Into<String>, now_ms: u64) -> Option<Change> {
        self.change(Role::Standby, reason.into(), now_ms)
    }

    /// keep-majority: the lease ran out (no majority acknowledged a renewal within it).
    pub fn tick(&mut self, now: Instant, now_ms: u64) -> Option<Change> {
        match self.lease_until {
            Some(l) if self.role == Role::Active && now >= l => self.step_down(
                "lease expired: no majority of the known nodes answered within the lease",
                now_ms,
            ),
            _ => None,
        }
    }

    /// When the active node must act next (its lease end), if any.
    pub fn lease_until(&self) -> Option<Instant> {
        self.lease_until.filter(|_| self.role == Role::Active)
    }

    /// (started, id): keep-oldest's order, the same on every node.
    fn rank_of(&self, started_at_ms: u64, id: &str) -> (u64, String) {
        (started_at_ms, id.to_owned())
    }

    fn older_than_me(&self, started_at_ms: u64, id: &str) -> bool {
        self.rank_of(started_at_ms, id) < self.rank_of(self.p.started_at_ms, &self.p.me)
    }

    /// What was just heard from a peer; a reply carries no URL, so the known one is kept.
    fn record(&mut self, id: &str, mut heard: PeerView) {
        if let Some(old) = self.peers.get(id) {
            if heard.url.is_none() {
                heard.url = old.url.clone();
            }
        }
        self.peers.insert(id.to_owned(), heard);
    }

    /// Learns that `holder` is active at `epoch` (seen in a claim or a reply): a newer active
    /// node than the one this node is or follows.
    fn learn_active(
        &mut self,
        holder: &str,
        epoch: u64,
        older: bool,
        now: Instant,
        now_ms: u64,
    ) -> Option<Change> {
        self.epoch = self.epoch.max(epoch);
        if holder == self.p.me {
            return None;
        }
        if self.role == Role::Active {
            let stays = match self.p.strategy {
                // The oldest live node is the active one whatever the epochs say; it takes a
                // newer epoch so fencing by epoch agrees with it.
                ElectionStrategy::KeepOldest => !older,
                _ => {
                    epoch < self.active_epoch
                        || (epoch == self.active_epoch && holder > self.p.me.as_str())
                }
            };
            if stays {
                if epoch >= self.active_epoch {
                    self.active_epoch = self.epoch + 1;
                    self.epoch = self.active_epoch;
                    if let Some(k) = &mut self.known {
                        k.epoch = self.active_epoch;
                    }
                }
                return None;
            }
            let c = self.step_down(format!("{holder} is active at epoch {epoch}"), now_ms);
            self.follow(holder, epoch, now);
            return c;
        }
        if epoch >= self.active_epoch || self.known_other(now).is_none() {
            self.follow(holder, epoch, now);
        }
        None
    }

    fn follow(&mut self, holder: &str, epoch: u64, now: Instant) {
        self.active_epoch = epoch;
        self.known = Some(Known {
            holder: holder.to_owned(),
            epoch,
            until: now + self.p.ttl,
        });
    }

    /// A peer's claim (`POST /v1/peer/election`): the reply, and this node's role change if any.
    pub fn on_request(
        &mut self,
        req: &ElectionRequest,
        my_health: &str,
        now: Instant,
        now_ms: u64,
    ) -> (ElectionReply, Option<Change>) {
        let from = req.instance_id.as_str();
        let role = if req.claim == Claim::Active {
            Role::Active
        } else {
            Role::Standby
        };
        self.record(
            from,
            PeerView {
                url: Some(req.listen_url.clone()),
                started_at_ms: req.started_at_ms,
                role,
                health: req.health.clone(),
                seen: now,
                released: req.claim == Claim::Release,
            },
        );
        let older = self.older_than_me(req.started_at_ms, from);
        let mut change = None;
        let granted = match req.claim {
            Claim::Release => {
                if self.promise.as_ref().is_some_and(|p| p.holder == from) {
                    self.promise = None;
                }
                if self.known.as_ref().is_some_and(|k| k.holder == from) {
                    self.known = None;
                }
                true
            }
            Claim::Ping => false,
            Claim::Active => {
                if req.epoch < self.active_epoch && self.p.strategy != ElectionStrategy::KeepOldest
                {
                    false // a deposed active node: the reply's active_epoch tells it
                } else {
                    change = self.learn_active(from, req.epoch, older, now, now_ms);
                    let following = self.known.as_ref().is_some_and(|k| k.holder == from);
                    match self.p.strategy {
                        ElectionStrategy::KeepMajority => {
                            let ok = following
                                && !self.in_start_window(now)
                                && !self.promised_to_other(from, now);
                            if ok {
                                self.promise = Some(Promise {
                                    holder: from.to_owned(),
                                    until: now + self.p.ttl,
                                });
                            }
                            ok
                        }
                        _ => following,
                    }
                }
            }
            Claim::Candidate => self.vote(from, req.epoch, now),
        };
        let reply = ElectionReply {
            instance_id: self.p.me.clone(),
            started_at_ms: self.p.started_at_ms,
            role: self.role,
            granted,
            epoch: self.epoch,
            active: self.active(now).map(str::to_owned),
            active_epoch: if self.active(now).is_some() {
                self.active_epoch
            } else {
                0
            },
            health: my_health.to_owned(),
        };
        (reply, change)
    }

    /// keep-majority: one vote per epoch, none while a promise to another node holds.
    fn vote(&mut self, candidate: &str, epoch: u64, now: Instant) -> bool {
        self.epoch = self.epoch.max(epoch);
        let ok = self.p.strategy == ElectionStrategy::KeepMajority
            && !self.in_start_window(now)
            && self.role == Role::Standby
            && !self.promised_to_other(candidate, now)
            && epoch > self.active_epoch
            && self
                .voted
                .as_ref()
                .is_none_or(|(e, c)| epoch > *e || (epoch == *e && c == candidate));
        if ok {
            self.voted = Some((epoch, candidate.to_owned()));
            self.promise = Some(Promise {
                holder: candidate.to_owned(),
                until: now + self.p.ttl,
            });
        }
        ok
    }

    /// keep-majority: whether this standby should stand now, and at which epoch.
    pub fn candidacy(&self, eligible: bool, now: Instant) -> Option<u64> {
        let free = self.p.strategy == ElectionStrategy::KeepMajority
            && eligible
            && self.role == Role::Standby
            && !self.in_start_window(now)
            && !self.promised_to_other(&self.p.me, now)
            && self.known_other(now).is_none();
        free.then(|| {
            self.epoch
                .max(self.voted.as_ref().map_or(0, |v| v.0))
                .max(self.active_epoch)
                + 1
        })
    }

    /// Votes for itself before asking the others.
    pub fn begin_candidacy(&mut self, epoch: u64, now: Instant) {
        self.epoch = self.epoch.max(epoch);
        self.voted = Some((epoch, self.p.me.clone()));
        self.promise = Some(Promise {
            holder: self.p.me.clone(),
            until: now + self.p.ttl,
        });
    }

    /// A reply to one of this node's claims: what the peer says about itself and whom it follows.
    pub fn on_reply(&mut self, reply: &ElectionReply, now: Instant, now_ms: u64) -> Option<Change> {
        let from = reply.instance_id.as_str();
        if from == self.p.me {
            return None;
        }
        self.record(
            from,
            PeerView {
                url: None,
                started_at_ms: reply.started_at_ms,
                role: reply.role,
                health: reply.health.clone(),
                seen: now,
                released: false,
            },
        );
        self.epoch = self.epoch.max(reply.epoch);
        let older = self.older_than_me(reply.started_at_ms, from);
        match (&reply.active, reply.role) {
            // The peer itself is active.
            (_, Role::Active) => self.learn_active(from, reply.active_epoch, older, now, now_ms),
            // It follows a node other than this one at a newer epoch.
            (Some(holder), _) if holder != &self.p.me && reply.active_epoch > self.active_epoch => {
                let holder_older = self
                    .peers
                    .get(holder)
                    .is_some_and(|v| self.older_than_me(v.started_at_ms, holder));
                let holder = holder.clone();
                self.learn_active(&holder, reply.active_epoch, holder_older, now, now_ms)
            }
            _ => None,
        }
    }

    /// The end of a candidacy started at `sent` with `grants` votes from peers out of `known`
    /// nodes (this one included).
    pub fn end_candidacy(
        &mut self,
        epoch: u64,
        grants: usize,
        known: usize,
        sent: Instant,
        now: Instant,
        now_ms: u64,
    ) -> Option<Change> {
        let won = self.role == Role::Standby
            && self
                .voted
                .as_ref()
                .is_some_and(|(e, c)| *e == epoch && c == &self.p.me)
            && self.known_other(now).is_none()
            && grants + 1 >= majority(known);
        if won {
            let lease = Some(sent + self.lease_len());
            return self.become_active(
                epoch,
                lease,
                format!("elected by {} of {known} nodes", grants + 1),
                now,
                now_ms,
            );
        }
        if self.promise.as_ref().is_some_and(|p| p.holder == self.p.me) {
            self.promise = None;
        }
        None
    }

    /// keep-majority: a renewal round started at `sent` was acknowledged by `grants` peers.
    pub fn end_renewal(&mut self, grants: usize, known: usize, sent: Instant, now: Instant) {
        if self.role == Role::Active && grants + 1 >= majority(known) {
            let lease = sent + self.lease_len();
            self.lease_until = Some(self.lease_until.map_or(lease, |l| l.max(lease)));
            self.promise = Some(Promise {
                holder: self.p.me.clone(),
                until: sent + self.p.ttl,
            });
            if let Some(k) = &mut self.known {
                k.until = now + self.p.ttl;
            }
        }
    }

    /// Peers heard from within `ttl` that did not give up (this node not included).
    pub fn live_peers(&self, now: Instant) -> impl Iterator<Item = (&String, &PeerView)> {
        let ttl = self.p.ttl;
        self.peers
            .iter()
            .filter(move |(_, v)| !v.released && now.duration_since(v.seen) < ttl)
    }

    /// keep-oldest: the oldest live node that could serve becomes active when no live node is;
    /// an active node stays until it stops, cannot serve, or meets an older active node (a
    /// healed partition), so a returning or recovering node never takes the role back.
    pub fn decide_oldest(&mut self, eligible: bool, now: Instant, now_ms: u64) -> Option<Change> {
        if self.p.strategy != ElectionStrategy::KeepOldest || self.in_start_window(now) {
            return None;
        }
        let me = (self.p.started_at_ms, self.p.me.clone());
        let other_active = self
            .live_peers(now)
            .filter(|(_, v)| v.role == Role::Active)
            .map(|(id, v)| (v.started_at_ms, id.clone()))
            .min();
        if self.role == Role::Active {
            return match other_active {
                _ if !eligible => self.step_down("this node cannot serve", now_ms),
                Some(o) if o < me => self.step_down(format!("{} is older and active", o.1), now_ms),
                _ => None,
            };
        }
        if !eligible || other_active.is_some() || self.known_other(now).is_some() {
            return None;
        }
        let oldest_other = self
            .live_peers(now)
            .filter(|(_, v)| v.health == "healthy")
            .map(|(id, v)| (v.started_at_ms, id.clone()))
            .min();
        if oldest_other.is_some_and(|o| o < me) {
            return None;
        }
        let epoch = self.epoch.max(self.active_epoch) + 1;
        self.become_active(
            epoch,
            None,
            "oldest live node, and no node is active".into(),
            now,
            now_ms,
        )
    }

    /// manual: an operator's promotion to a new epoch.
    pub fn promote(&mut self, now: Instant, now_ms: u64) -> (u64, Option<Change>) {
        if self.role == Role::Active {
            return (self.active_epoch, None);
        }
        let epoch = self.epoch.max(self.active_epoch) + 1;
        let c = self.become_active(epoch, None, "promoted by an operator".into(), now, now_ms);
        (epoch, c)
    }

    /// A peer's graceful leave (`/v1/peer/leave`): it follows nobody and holds nothing now.
    pub fn on_leave(&mut self, id: &str) {
        if let Some(v) = self.peers.get_mut(id) {
            v.released = true;
            v.role = Role::Standby;
        }
        if self.promise.as_ref().is_some_and(|p| p.holder == id) {
            self.promise = None;
        }
        if self.known.as_ref().is_some_and(|k| k.holder == id) {
            self.known = None;
        }
    }

    /// The claim this node sends this round (a candidacy is sent separately).
    pub fn claim(&self) -> (Claim, u64) {
        match self.role {
            Role::Active => (Claim::Active, self.active_epoch),
            Role::Standby => (Claim::Ping, self.active_epoch),
        }
    }
}

#[cfg(test)]
mod tests;
