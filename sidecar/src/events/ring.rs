//! The most recently committed records, in log order, held in memory for live tailers.
//!
//! Every committed record has a *position*: its 1-based rank among the records committed since
//! the log was opened (`State::appended` counts them). A tailer that has read everything up to
//! position `p` (a read that came back caught up says how far it went) takes what follows `p`
//! from here, without a file read, a blocking thread or re-encoding the event: each entry
//! carries its event already split into SSE `data:` lines. The ring is bounded by entries and
//! bytes; a tailer that fell behind its front reads the log instead, so a slow reader costs
//! memory to nobody and is never dropped.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

/// At most this many entries...
pub(crate) const RING_EVENTS: usize = 8192;
/// ...and about this many bytes of formatted events.
pub(crate) const RING_BYTES: usize = 16 << 20;

/// One committed record as a live tailer needs it.
#[derive(Debug)]
pub struct RecentEvent {
    pub(crate) position: u64,
    pub(crate) origin: Arc<str>,
    pub(crate) seq: u64,
    pub(crate) created_on: u64,
    pub(crate) event_type: Box<str>,
    /// The event's bytes as SSE `data: ` lines, each ending with `\n` (no blank line after).
    pub(crate) sse_data: Bytes,
}

impl RecentEvent {
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn created_on(&self) -> u64 {
        self.created_on
    }

    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    pub fn sse_data(&self) -> &[u8] {
        &self.sse_data
    }

    /// The event's JSON rebuilt from its `data:` lines, for a filter that reads the body (a
    /// consumer's projects). A line break of the original, which valid JSON holds only as
    /// whitespace, comes back as `\n`; a dropped `\r` is whitespace too.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.sse_data.len());
        let lines = self
            .sse_data
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty());
        for (i, line) in lines.enumerate() {
            if i > 0 {
                out.push(b'\n');
            }
            out.extend_from_slice(line.strip_prefix(b"data: ").unwrap_or(line));
        }
        out
    }
}

/// Writes `body` as SSE `data:` lines (a line per line of the event, `\r` dropped).
pub fn sse_data_lines(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + 8);
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
}

#[derive(Debug)]
pub(crate) struct Ring {
    entries: VecDeque<RecentEvent>,
    bytes: usize,
    /// The position the next entry will have.
    next: u64,
}

/// What [`Ring::read_after`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recent {
    /// Fed every entry after the given position up to `position` (inclusive); `more` when
    /// the ring holds entries past it (the caller stopped early).
    Read { position: u64, more: bool },
    /// Entries right after the given position are no longer held: read the log.
    Behind,
}

impl Ring {
    /// An empty ring whose first entry will have position `next`.
    pub fn new(next: u64) -> Self {
        Ring {
            entries: VecDeque::new(),
            bytes: 0,
            next,
        }
    }

    pub fn push(&mut self, e: RecentEvent) {
        debug_assert_eq!(e.position, self.next);
        self.next = e.position + 1;
        self.bytes += e.sse_data.len() + 64;
        self.entries.push_back(e);
        while self.entries.len() > RING_EVENTS || self.bytes > RING_BYTES {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= old.sse_data.len() + 64,
                None => break,
            }
        }
    }

    /// Feeds `f` the entries after `position` in log order while it returns `true` (it is
    /// called at least once when there is an entry), up to `max` entries.
    pub fn read_after(
        &self,
        position: u64,
        max: usize,
        mut f: impl FnMut(&RecentEvent) -> bool,
    ) -> Recent {
        let first = self.entries.front().map_or(self.next, |e| e.position);
        if position + 1 < first {
            return Recent::Behind;
        }
        if position + 1 >= self.next {
            // Nothing after it yet (or the ring has not caught up with a read of the state).
            return Recent::Read {
                position,
                more: false,
            };
        }
        let skip = (position + 1 - first) as usize;
        let mut at = position;
        let mut n = 0;
        for e in self.entries.range(skip..) {
            at = e.position;
            n += 1;
            if !f(e) || n >= max {
                break;
            }
        }
        Recent::Read {
            position: at,
            more: at + 1 < self.next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(position: u64, size: usize) -> RecentEvent {
        RecentEvent {
            position,
            origin: Arc::from("a"),
            seq: position,
            created_on: 0,
            event_type: "t".into(),
            sse_data: Bytes::from(vec![b'x'; size]),
        }
    }

    #[test]
    fn the_body_comes_back_from_its_data_lines() {
        for body in [
            &b"{\"type\":\"x\",\"project\":\"p\"}"[..],
            b"{\n  \"type\": \"x\"\n}",
        ] {
            let mut sse = Vec::new();
            sse_data_lines(body, &mut sse);
            let e = RecentEvent {
                sse_data: Bytes::from(sse),
                ..entry(1, 0)
            };
            assert_eq!(e.body(), body);
        }
    }

    #[test]
    fn reads_after_a_position_and_says_when_behind() {
        let mut r = Ring::new(11);
        assert_eq!(
            r.read_after(10, 5, |_| true),
            Recent::Read {
                position: 10,
                more: false
            }
        );
        for p in 11..=20 {
            r.push(entry(p, 10));
        }
        let mut seen = Vec::new();
        let got = r.read_after(12, 5, |e| {
            seen.push(e.seq);
            true
        });
        assert_eq!(seen, vec![13, 14, 15, 16, 17]);
        assert_eq!(
            got,
            Recent::Read {
                position: 17,
                more: true
            }
        );
        assert_eq!(r.read_after(9, 5, |_| true), Recent::Behind);
        assert_eq!(
            r.read_after(10, 100, |_| true),
            Recent::Read {
                position: 20,
                more: false
            }
        );
        // A reader ahead of the ring (it read the state before the ring was fed) waits.
        assert_eq!(
            r.read_after(25, 100, |_| true),
            Recent::Read {
                position: 25,
                more: false
            }
        );
        for p in 21..21 + RING_EVENTS as u64 {
            r.push(entry(p, 10));
        }
        // 11..=20 were pushed out: a reader that still needs 20 reads the log.
        assert_eq!(r.read_after(19, 1, |_| true), Recent::Behind);
        assert_eq!(
            r.read_after(20, 1, |_| true),
            Recent::Read {
                position: 21,
                more: true
            }
        );
        let mut big = Ring::new(1);
        for p in 1..=10 {
            big.push(entry(p, RING_BYTES / 4));
        }
        assert!(big.entries.len() < 4 && big.bytes <= RING_BYTES);
    }

    #[test]
    fn data_lines() {
        let mut out = Vec::new();
        sse_data_lines(b"{\"a\":1,\r\n\"b\":2}", &mut out);
        assert_eq!(out, b"data: {\"a\":1,\ndata: \"b\":2}\n");
    }
}
