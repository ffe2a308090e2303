//! A replayed call of Gerrit's high-availability plugin (`kind: "plugin"`, SPEC §8): what the
//! origin's master sent its sidecar, replayed verbatim into each receiver's own master. Also
//! the payload of the master's delivery queues ([`PluginCall::encode`] / [`PluginCall::decode`]).

use serde::{Deserialize, Serialize};

/// A family of plugin endpoints. Order is kept within a family; families are delivered by
/// separate queues, so stream events never wait behind an index storm (the plugin's
/// Issue 40013901).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Cache,
    Index,
    Event,
    ProjectList,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::Cache,
        Family::Index,
        Family::Event,
        Family::ProjectList,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Cache => "cache",
            Family::Index => "index",
            Family::Event => "event",
            Family::ProjectList => "project_list",
        }
    }

    /// The family of a plugin path (relative to `/plugins/<pluginName>/`).
    pub fn of(path: &str) -> Option<Family> {
        if path.starts_with("cache/project_list/") {
            Some(Family::ProjectList)
        } else if path.starts_with("cache/") {
            Some(Family::Cache)
        } else if path.starts_with("index/") {
            Some(Family::Index)
        } else if path.starts_with("event/") {
            Some(Family::Event)
        } else {
            None
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A call of the plugin (reference §1.2), as its origin's master sent it: replayed with the
/// same method, path, body, `Content-Type` and `Event-Created-On`, under the receiving
/// master's own plugin name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginCall {
    /// `POST` or `DELETE`.
    pub method: String,
    /// The path under `/plugins/<pluginName>/`, still percent-encoded as sent
    /// (e.g. `index/change/tools%2Fgerrit~42`).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The `Event-Created-On` header (epoch ms; stable-3.14 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_on: Option<u64>,
    /// The body as sent (JSON for index, event and cache calls; none for deletes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Why a plugin call cannot be replayed into a master.
#[derive(Debug, thiserror::Error)]
pub enum PluginCallError {
    #[error("plugin call with method `{0}`")]
    Method(String),
    #[error("plugin call to no known endpoint: `{0}`")]
    Endpoint(String),
}

impl PluginCall {
    /// Why this call cannot be replayed: a method or an endpoint the plugin does not have.
    pub fn check(&self) -> Result<(), PluginCallError> {
        if !matches!(self.method.as_str(), "POST" | "DELETE") {
            return Err(PluginCallError::Method(self.method.clone()));
        }
        if Family::of(&self.path).is_none() {
            return Err(PluginCallError::Endpoint(self.path.clone()));
        }
        Ok(())
    }

    /// The call's family; a checked call always has one.
    pub fn family(&self) -> Family {
        Family::of(&self.path).unwrap_or(Family::Index)
    }

    /// A master-queue payload.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a plugin call serialises")
    }

    /// A master-queue payload back.
    pub fn decode(bytes: &[u8]) -> serde_json::Result<PluginCall> {
        serde_json::from_slice(bytes)
    }
}
