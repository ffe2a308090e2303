//! The events-log plugin's replay query over this log (`GET /plugins/events-log/events/`, see
//! `api/events_log`): the events created between two times, both bounds included, ordered by
//! creation, at most `limit` of them. Read through [`EventLog::read`] with the caller's filter,
//! like every other reader.
//!
//! Times are the plugin's: `yyyy-MM-dd HH:mm:ss` or `yyyy-MM-dd` (midnight), in this server's
//! local time zone (`TZ`, else `/etc/localtime`), since the plugin compares them with the
//! server's local `LocalDateTime`; an event's `eventCreatedOn` has whole seconds. With one
//! bound the other is now; reversed bounds are swapped; with none, the newest `limit` events.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use bytes::Bytes;

use super::filter::TypeFilter;
use super::{EventError, EventLog, Result, StartPoint};

/// Events per read of the log.
const PAGE: usize = 1024;

/// Epoch seconds of a plugin time (`yyyy-MM-dd HH:mm:ss` or `yyyy-MM-dd`) in the local time
/// zone; the error says what is accepted.
pub fn parse_time(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let civil = if t.len() == 10 {
        jiff::civil::Date::strptime("%Y-%m-%d", t)
            .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
    } else {
        jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", t)
    };
    let civil = civil.map_err(|_| {
        format!(
            "`{t}` is not a time: use yyyy-MM-dd HH:mm:ss or yyyy-MM-dd (this server's local time)"
        )
    })?;
    let zoned = civil
        .to_zoned(jiff::tz::TimeZone::system())
        .map_err(|e| format!("`{t}` is out of range: {e}"))?;
    u64::try_from(zoned.timestamp().as_second()).map_err(|_| format!("`{t}` is before 1970"))
}

/// The window a request asks for, in epoch seconds, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Between two times (swapped if reversed).
    Between(u64, u64),
    /// No bounds: the newest events.
    Newest,
}

impl Window {
    /// From the optional bounds of a request: one alone goes to `now` (epoch seconds).
    pub fn new(t1: Option<u64>, t2: Option<u64>, now: u64) -> Window {
        match (t1, t2) {
            (None, None) => Window::Newest,
            (Some(a), None) | (None, Some(a)) => Window::Between(a.min(now), a.max(now)),
            (Some(a), Some(b)) => Window::Between(a.min(b), a.max(b)),
        }
    }
}

/// An event kept for the answer: ordered by creation, then log order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Kept(u64, u64, Bytes);

/// The events of `window` that `filter` admits, oldest first, at most `limit` (the oldest
/// `limit` of a window; the newest `limit` with no bounds). Blocking reads: async callers use
/// `spawn_blocking`. Memory: `limit` events.
pub fn replay(
    log: &EventLog,
    window: Window,
    filter: &TypeFilter,
    limit: usize,
) -> Result<Vec<Bytes>> {
    let (from, lo, hi) = match window {
        Window::Between(lo, hi) => (StartPoint::SinceEpochSeconds(lo), lo, hi),
        Window::Newest => (StartPoint::Beginning, 0, u64::MAX),
    };
    // Oldest `limit`: a max-heap drops the newest; newest `limit`: a min-heap drops the oldest.
    let mut oldest: BinaryHeap<Kept> = BinaryHeap::new();
    let mut newest: BinaryHeap<Reverse<Kept>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut at = from;
    loop {
        let page = match log.read(&at, filter, PAGE) {
            // Retention dropped some of the window: the plugin answers what it still holds.
            Err(EventError::CursorExpired(_)) if at != StartPoint::Beginning => {
                at = StartPoint::Beginning;
                continue;
            }
            other => other?,
        };
        for (_, body) in page.events {
            let Some(created) = super::created_on(&body) else {
                continue;
            };
            if created < lo || created > hi {
                continue;
            }
            order += 1;
            let kept = Kept(created, order, body);
            match window {
                Window::Between(..) => {
                    oldest.push(kept);
                    if oldest.len() > limit {
                        oldest.pop();
                    }
                }
                Window::Newest => {
                    newest.push(Reverse(kept));
                    if newest.len() > limit {
                        newest.pop();
                    }
                }
            }
        }
        if page.caught_up {
            break;
        }
        at = StartPoint::Cursor(page.next);
    }
    let mut kept: Vec<Kept> = oldest.into_vec();
    kept.extend(newest.into_iter().map(|Reverse(k)| k));
    kept.sort_unstable();
    Ok(kept.into_iter().map(|Kept(_, _, b)| b).collect())
}

/// The event as one line: the line breaks of a pretty-printed event (whitespace in valid
/// JSON) become spaces.
pub fn one_line(body: &[u8], out: &mut Vec<u8>) {
    out.extend(
        body.iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_times_in_local_time() {
        let tz = jiff::tz::TimeZone::system();
        let want = |y, m, d, h, mi, s| {
            jiff::civil::date(y, m, d)
                .at(h, mi, s, 0)
                .to_zoned(tz.clone())
                .unwrap()
                .timestamp()
                .as_second() as u64
        };
        assert_eq!(
            parse_time("2024-02-29 10:11:12"),
            Ok(want(2024, 2, 29, 10, 11, 12))
        );
        assert_eq!(parse_time("2024-02-29"), Ok(want(2024, 2, 29, 0, 0, 0)));
        for bad in [
            "2024-02-31",
            "2024-02-30 10:00:00",
            "yesterday",
            "2024-01-01T10:00:00",
            "",
        ] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains("yyyy-MM-dd HH:mm:ss"), "{bad}: {e}");
        }
    }

    #[test]
    fn windows_from_one_two_or_no_bounds() {
        assert_eq!(Window::new(Some(10), None, 50), Window::Between(10, 50));
        assert_eq!(Window::new(None, Some(10), 50), Window::Between(10, 50));
        assert_eq!(Window::new(Some(40), Some(20), 50), Window::Between(20, 40));
        assert_eq!(Window::new(None, None, 50), Window::Newest);
    }

    #[test]
    fn one_line_per_event() {
        let mut out = Vec::new();
        one_line(b"{\n  \"type\": \"x\"\r\n}", &mut out);
        assert_eq!(out, b"{   \"type\": \"x\"  }\n");
    }
}
