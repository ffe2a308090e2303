//! The peer protocol: every request and reply that crosses between sidecars (`/v1/peer/*`),
//! with its decoders and encoders. Nothing else in the crate writes or parses those bytes;
//! the fast paths (stored payloads, documents and events spliced in without re-serialising)
//! live here too. Golden-tested against `fixtures/wire/` (`tests.rs`): the bytes on the wire
//! are the contract of a rolling upgrade, so change them only compatibly.
//!
//! Adding a message kind (e.g. a replayed plugin call): a variant of [`PeerMessage`] and of
//! [`MessageKind`], its fields in `message::Fields` and its checks in `message::body`, its arm
//! in [`PeerMessage::encode`], a `fixtures/wire/message-<kind>.json` golden file (and a line in
//! `tests.rs`), then the receiver's `apply` arm. A receiver of an older version refuses the new
//! kind for good (the sender dead-letters it), so say in the README when a kind is added.

mod election;
mod events;
pub mod index_sync;
mod message;
mod plugin;
mod replies;

pub use election::{Claim, ElectionReply, ElectionRequest, Role};
pub use events::{CatchUpEvent, CatchUpQuery, CatchUpReply, OriginsReply};
pub use message::{
    decode_message, encode_batch, Batch, Doc, Envelope, MessageError, MessageKind, PeerMessage,
};
pub use plugin::{Family, PluginCall};
pub use replies::{BacklogReply, BatchReply, Hello, LeaveReply, Rejection};

/// Instance ids name directories and metric labels, so they are kept to a safe alphabet.
pub fn valid_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && id != "."
        && id != ".."
}

/// Cache names travel in URLs, metric labels and messages: a safe alphabet, bounded length.
pub fn valid_cache_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests;
