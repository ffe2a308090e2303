//! The small requests and replies of the peer API: the batch reply, and the hello that a node
//! sends to say goodbye (`/v1/peer/leave`) or to ask for its backlog (`/v1/peer/backlog`).

use serde::{Deserialize, Serialize};

/// The receiver's answer to a batch it accepted (HTTP 200).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchReply {
    /// Messages applied now.
    pub applied: u64,
    /// Messages already applied before (seq at or below the high-water mark).
    pub duplicates: u64,
    /// Messages refused for good (bad content, unknown kind): the sender sets them aside.
    #[serde(default)]
    pub rejected: Vec<Rejection>,
}

/// One message the receiver will never accept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub seq: u64,
    pub error: String,
}

/// Body of `POST /v1/peer/leave` and `POST /v1/peer/backlog`: who is asking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub instance_id: String,
    pub listen_url: String,
}

/// `POST /v1/peer/leave` → whether the leaving node was a known peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveReply {
    pub known: bool,
}

/// `POST /v1/peer/backlog` → how many messages this node still holds for the asking node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacklogReply {
    pub known: bool,
    pub pending: u64,
}
