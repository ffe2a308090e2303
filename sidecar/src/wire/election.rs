//! The election exchange of a hot-standby cluster (`POST /v1/peer/election`): every `heartbeat`
//! each node sends its claim to every known peer, and the reply says what the peer grants and
//! whom it follows. See `election` for what the fields mean to the protocol.

use serde::{Deserialize, Serialize};

/// What the sender says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Claim {
    /// A standby saying it is alive (and asking who is active).
    Ping,
    /// A standby asking for votes to become active at `epoch`.
    Candidate,
    /// The active node of `epoch` renewing its lease.
    Active,
    /// The sender gives the role up (graceful stop, drain): stop following it now.
    Release,
}

/// A node's role as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Active,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

/// Body of `POST /v1/peer/election`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionRequest {
    pub instance_id: String,
    pub listen_url: String,
    /// When the sender started (ms since the epoch, its clock): keep-oldest ranks by it.
    pub started_at_ms: u64,
    pub claim: Claim,
    /// `Candidate`: the epoch asked for; `Active`: the epoch won; otherwise the epoch of the
    /// active node the sender follows (0: none known).
    pub epoch: u64,
    /// The sender's `/health` reason without its role (`healthy` when it could serve).
    pub health: String,
}

/// Reply to an [`ElectionRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionReply {
    pub instance_id: String,
    pub started_at_ms: u64,
    pub role: Role,
    /// A vote (`Candidate`) or a lease acknowledgement (`Active`) was granted.
    pub granted: bool,
    /// The highest epoch the replier has seen (claimed, voted or won).
    pub epoch: u64,
    /// The node the replier follows as active and its epoch, if any.
    pub active: Option<String>,
    pub active_epoch: u64,
    pub health: String,
}
