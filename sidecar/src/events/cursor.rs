//! Cursors (per-origin read positions plus a time start for unseen origins), start points and
//! type filters. Semantics are in the module docs of `events`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::{EventError, EventId, Result};
use crate::wire::valid_instance_id;

const VERSION: &str = "v1";
const SEP: char = '~';
/// Marks a seq an origin was skipped through before its first event at or after `since`.
const SKIPPED: char = 's';
/// Keeps a hostile cursor from costing more than a few allocations.
const MAX_CURSOR_LEN: usize = 16 << 10;
/// Above this, a `since` value is surely milliseconds, not seconds (year 5138).
const MAX_SINCE: u64 = 100_000_000_000;

/// How far a client has read: per origin the last seq read, and for origins it has not read
/// yet, the `eventCreatedOn` (epoch seconds) from which their events count.
///
/// `skipped` remembers, for an origin not started yet, the last seq passed over because it was
/// created before `since`; it only saves rescanning and never changes which events are delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    since: u64,
    seqs: BTreeMap<String, u64>,
    skipped: BTreeMap<String, u64>,
}

impl Cursor {
    /// Everything retained.
    pub fn beginning() -> Self {
        Cursor::default()
    }

    /// Events created at or after `epoch_seconds`, for every origin.
    pub fn since(epoch_seconds: u64) -> Self {
        Cursor {
            since: epoch_seconds,
            ..Cursor::default()
        }
    }

    pub fn since_seconds(&self) -> u64 {
        self.since
    }

    /// The last seq read of `origin`, `None` when the cursor has not seen it.
    pub fn seq(&self, origin: &str) -> Option<u64> {
        self.seqs.get(origin).copied()
    }

    pub fn seqs(&self) -> &BTreeMap<String, u64> {
        &self.seqs
    }

    /// Records `id` as read. Seqs only move forward.
    pub fn advance(&mut self, id: &EventId) {
        self.set(&id.origin, id.seq);
    }

    pub(crate) fn set(&mut self, origin: &str, seq: u64) {
        match self.seqs.get_mut(origin) {
            Some(s) => *s = (*s).max(seq),
            None => {
                self.skipped.remove(origin);
                self.seqs.insert(origin.to_string(), seq);
            }
        }
    }

    /// Every seq the cursor holds, read or skipped, with its origin.
    pub(crate) fn all_seqs(&self) -> impl Iterator<Item = (&str, u64)> {
        self.seqs
            .iter()
            .chain(&self.skipped)
            .map(|(o, s)| (o.as_str(), *s))
    }

    /// For an origin not started yet: the last seq passed over as created before `since`.
    pub(crate) fn skipped(&self, origin: &str) -> Option<u64> {
        self.skipped.get(origin).copied()
    }

    /// Decides whether the event (`origin`, `seq`, `created_on`), met in seq order, is ahead of
    /// this cursor; either way the cursor moves past it (read, or skipped as too old).
    pub(crate) fn visit(&mut self, origin: &str, seq: u64, created_on: u64) -> bool {
        if let Some(&last) = self.seqs.get(origin) {
            if seq <= last {
                return false;
            }
        } else {
            let skipped = self.skipped.get(origin).copied().unwrap_or(0);
            if seq <= skipped {
                return false;
            }
            if created_on < self.since {
                self.skipped.insert(origin.to_string(), seq);
                return false;
            }
        }
        self.set(origin, seq);
        true
    }

    /// The compact, URL-safe text form, also valid as an SSE `id:`.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(24 + 24 * (self.seqs.len() + self.skipped.len()));
        self.write_to(&mut out);
        String::from_utf8(out).expect("cursors are ASCII")
    }

    /// Appends [`encode`](Self::encode)'s text to `out`, without the formatting machinery: a
    /// stream writes one per event per tailer.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(VERSION.as_bytes());
        out.push(SEP as u8);
        push_u64(out, self.since);
        for (origin, seq) in &self.seqs {
            out.push(SEP as u8);
            out.extend_from_slice(origin.as_bytes());
            out.push(SEP as u8);
            push_u64(out, *seq);
        }
        for (origin, seq) in &self.skipped {
            out.push(SEP as u8);
            out.extend_from_slice(origin.as_bytes());
            out.push(SEP as u8);
            out.push(SKIPPED as u8);
            push_u64(out, *seq);
        }
    }

    pub fn parse(text: &str) -> Result<Cursor> {
        let bad = |what: String| EventError::BadCursor(what);
        if text.len() > MAX_CURSOR_LEN {
            return Err(bad(format!("cursor is longer than {MAX_CURSOR_LEN} bytes")));
        }
        let mut parts = text.split(SEP);
        match parts.next() {
            Some(VERSION) => {}
            _ => {
                return Err(bad(format!(
                "cursor must start with `{VERSION}{SEP}` (take it from an event's `id:`), got {:?}",
                shorten(text)
            )))
            }
        }
        let since = parts
            .next()
            .ok_or_else(|| bad("cursor lacks its start time".into()))
            .and_then(|s| parse_u64(s, "start time"))?;
        let mut c = Cursor::since(since);
        while let Some(origin) = parts.next() {
            if !valid_instance_id(origin) {
                return Err(bad(format!(
                    "cursor names an invalid instanceId {:?}",
                    shorten(origin)
                )));
            }
            let token = parts
                .next()
                .ok_or_else(|| bad(format!("cursor has no seq for origin {origin:?}")))?;
            let twice = match token.strip_prefix(SKIPPED) {
                Some(s) => c
                    .skipped
                    .insert(origin.to_string(), parse_u64(s, "seq")?)
                    .is_some(),
                None => c
                    .seqs
                    .insert(origin.to_string(), parse_u64(token, "seq")?)
                    .is_some(),
            };
            if twice || (c.seqs.contains_key(origin) && c.skipped.contains_key(origin)) {
                return Err(bad(format!("cursor names origin {origin:?} twice")));
            }
        }
        Ok(c)
    }
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn parse_u64(s: &str, what: &str) -> Result<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EventError::BadCursor(format!(
            "cursor {what} must be a decimal number, got {:?}",
            shorten(s)
        )));
    }
    s.parse()
        .map_err(|_| EventError::BadCursor(format!("cursor {what} is out of range")))
}

fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl FromStr for Cursor {
    type Err = EventError;
    fn from_str(s: &str) -> Result<Cursor> {
        Cursor::parse(s)
    }
}

/// Where a read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPoint {
    /// Every retained event.
    Beginning,
    /// Only events appended from now on (the default of a stream with no cursor).
    Now,
    /// Events whose `eventCreatedOn` is at or after this time.
    SinceEpochSeconds(u64),
    /// Right after what this cursor has read.
    Cursor(Cursor),
}

impl StartPoint {
    /// Parses a `since` value: `beginning`, `now`, epoch seconds, or a cursor.
    pub fn parse_since(text: &str) -> Result<StartPoint> {
        let text = text.trim();
        match text {
            "beginning" => Ok(StartPoint::Beginning),
            "now" => Ok(StartPoint::Now),
            t if t.starts_with(VERSION) => Cursor::parse(t).map(StartPoint::Cursor),
            t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => match t.parse::<u64>() {
                Ok(s) if s <= MAX_SINCE => Ok(StartPoint::SinceEpochSeconds(s)),
                _ => Err(EventError::BadCursor(format!(
                    "since={t} is too large for epoch seconds (milliseconds?)"
                ))),
            },
            t => Err(EventError::BadCursor(format!(
                "since must be `beginning`, `now`, epoch seconds or a cursor, got {:?}",
                shorten(t)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_parse_round_trip() {
        let mut c = Cursor::since(1686214571);
        c.set("node-a", 500);
        c.set("node_b.x", 321);
        let text = c.encode();
        assert_eq!(text, "v1~1686214571~node-a~500~node_b.x~321");
        assert_eq!(c.to_string(), text);
        c.set("z", u64::MAX);
        c.set("y", 0);
        assert_eq!(
            Cursor::parse(&c.encode()).unwrap(),
            c,
            "extreme seqs round-trip"
        );
        let mut c = Cursor::parse(&text).unwrap();
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)));
        assert_eq!(Cursor::parse(&text).unwrap(), c);
        assert_eq!(Cursor::parse("v1~0").unwrap(), Cursor::beginning());
        let mut s = Cursor::since(100);
        assert!(!s.visit("z", 1, 99), "created before since");
        assert_eq!(s.encode(), "v1~100~z~s1");
        assert_eq!(Cursor::parse("v1~100~z~s1").unwrap(), s);
        assert!(!s.visit("z", 1, 200), "already passed over");
        assert!(s.visit("z", 2, 100));
        assert!(s.visit("z", 3, 5), "once started, every later event counts");
        assert_eq!(s.encode(), "v1~100~z~3");
        c.set("node-a", 10);
        assert_eq!(c.seq("node-a"), Some(500), "seqs never move back");
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let msg = |t: &str| match Cursor::parse(t) {
            Err(EventError::BadCursor(m)) => m,
            other => panic!("expected BadCursor for {t:?}, got {other:?}"),
        };
        assert!(msg("").contains("must start with"));
        assert!(msg("v2~0").contains("must start with"));
        assert!(msg("v1").contains("start time"));
        assert!(msg("v1~x").contains("start time"));
        assert!(msg("v1~0~a").contains("no seq"));
        assert!(msg("v1~0~a~-1").contains("decimal"));
        assert!(msg("v1~0~a~99999999999999999999").contains("out of range"));
        assert!(msg("v1~0~a b~1").contains("invalid instanceId"));
        assert!(msg("v1~0~a~1~a~2").contains("twice"));
        assert!(msg("v1~0~a~1~a~s2").contains("twice"));
        assert!(msg("v1~0~a~sx").contains("decimal"));
        assert!(msg("v1~0~a~1\nid: x").contains("decimal"));
    }

    #[test]
    fn since_values() {
        assert_eq!(
            StartPoint::parse_since("beginning").unwrap(),
            StartPoint::Beginning
        );
        assert_eq!(StartPoint::parse_since("now").unwrap(), StartPoint::Now);
        assert_eq!(
            StartPoint::parse_since("1686214571").unwrap(),
            StartPoint::SinceEpochSeconds(1686214571)
        );
        assert!(matches!(
            StartPoint::parse_since("v1~5~a~1").unwrap(),
            StartPoint::Cursor(_)
        ));
        assert!(StartPoint::parse_since("1686214571000000").is_err());
        assert!(StartPoint::parse_since("yesterday").is_err());
    }
}
