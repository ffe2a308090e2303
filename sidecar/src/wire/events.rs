//! The signed event catch-up endpoints: `GET /v1/peer/events` ([`OriginsReply`]) and
//! `GET /v1/peer/events/{origin}?after=N&limit=M` ([`CatchUpReply`]), Gerrit's bytes spliced in.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// `GET /v1/peer/events` → what the answering node's log holds: each origin's last seq.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OriginsReply {
    pub origins: BTreeMap<String, u64>,
}

/// The query of `GET /v1/peer/events/{origin}`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CatchUpQuery {
    #[serde(default)]
    pub after: u64,
    pub limit: Option<usize>,
    /// When `after` is below the oldest event held, start at that event instead of answering
    /// `410` (a history restore takes whatever is retained). Older nodes ignore it.
    #[serde(default)]
    pub from_oldest: bool,
}

/// `GET /v1/peer/events/{origin}` → the origin's events after `after`, in seq order.
#[derive(Debug, Clone)]
pub struct CatchUpReply<'a> {
    pub origin: Cow<'a, str>,
    /// The origin's last seq in the answering node's log (more may follow `events`).
    pub last_seq: u64,
    pub events: Vec<CatchUpEvent<'a>>,
}

/// One event of a catch-up reply: its seq and Gerrit's JSON, byte for byte.
#[derive(Debug, Clone, Copy)]
pub struct CatchUpEvent<'a> {
    pub seq: u64,
    pub event: &'a [u8],
}

impl<'a> CatchUpReply<'a> {
    /// Encodes the reply around events given as stored bytes (validated JSON objects),
    /// without re-serialising them: `{"last_seq":N,"origin":"…","events":[{"seq":N,"event":…}]}`.
    pub fn encode<'e, I>(origin: &str, last_seq: u64, events: I) -> Vec<u8>
    where
        I: Iterator<Item = (u64, &'e [u8])> + Clone,
    {
        let size: usize = events.clone().map(|(_, b)| b.len() + 32).sum();
        let mut out = Vec::with_capacity(size + 64);
        let _ = write!(out, "{{\"last_seq\":{last_seq},\"origin\":");
        serde_json::to_writer(&mut out, origin).expect("a string serialises");
        out.extend_from_slice(b",\"events\":[");
        for (i, (seq, bytes)) in events.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = write!(out, "{{\"seq\":{seq},\"event\":");
            out.extend_from_slice(bytes);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// Decodes a reply, borrowing each event's bytes from `body`.
    pub fn decode(body: &'a [u8]) -> serde_json::Result<CatchUpReply<'a>> {
        #[derive(Deserialize)]
        struct Event<'b> {
            seq: u64,
            #[serde(borrow)]
            event: &'b RawValue,
        }
        #[derive(Deserialize)]
        struct Reply<'b> {
            #[serde(borrow)]
            origin: Cow<'b, str>,
            last_seq: u64,
            #[serde(borrow)]
            events: Vec<Event<'b>>,
        }
        let r: Reply = serde_json::from_slice(body)?;
        Ok(CatchUpReply {
            origin: r.origin,
            last_seq: r.last_seq,
            events: r
                .events
                .into_iter()
                .map(|e| CatchUpEvent {
                    seq: e.seq,
                    event: e.event.get().as_bytes(),
                })
                .collect(),
        })
    }

    /// This reply's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        Self::encode(
            &self.origin,
            self.last_seq,
            self.events.iter().map(|e| (e.seq, e.event)),
        )
    }
}
