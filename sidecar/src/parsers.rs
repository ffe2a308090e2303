//! Every parser of outside bytes, reachable from one place: the fuzz targets in `fuzz/` and the
//! property tests below call these entry points, so both exercise exactly the code the node
//! runs on a query string, a cursor, a config value, a peer's batch, a segment file read back
//! from disk or a server's SSE stream. Each returns a small summary (a count), never the parsed
//! value, so a caller can also check that the output stays bounded by the input.
//!
//! Not an API for anything else: the node calls the parsers directly.

use std::time::Duration;

/// Parses a search query; `Ok(n)` is the number of terms and operators in it.
pub fn query(text: &str) -> Result<usize, crate::index::QueryError> {
    crate::index::query::parse(text).map(|e| e.size())
}

/// Parses a cursor and a `since` value; `Ok(n)` is the number of origins the cursor names.
pub fn cursor(text: &str) -> Option<usize> {
    let _ = crate::events::StartPoint::parse_since(text);
    crate::events::Cursor::parse(text)
        .ok()
        .map(|c| c.seqs().len())
}

/// Parses a config duration and size.
pub fn duration(text: &str) -> (Option<Duration>, Option<u64>) {
    (
        crate::config::parse_duration(text).ok(),
        crate::config::parse_size(text).ok(),
    )
}

/// Reads and validates a config file's text (no environment); the number of problems found.
pub fn config(text: &str) -> usize {
    let env = std::collections::BTreeMap::new();
    let path = std::path::Path::new("/nonexistent/fuzz.config");
    match crate::config::load(crate::config::Source {
        file: Some((text, path)),
        env: &env,
    }) {
        Ok((_, report)) | Err(report) => report.errors.len() + report.warnings.len(),
    }
}

/// Parses a document or query timestamp and an `age:` value (epoch seconds).
pub fn date(text: &str) -> (Option<i64>, Option<i64>) {
    (
        crate::index::dates::parse_timestamp(text),
        crate::index::dates::parse_age(text),
    )
}

/// Parses an events-log replay time (`t1`, `t2`: epoch seconds) and reads the project of an
/// event's JSON (a consumer's filter); the project's length.
pub fn events_log(text: &str) -> (Option<u64>, Option<usize>) {
    (
        crate::events::replay::parse_time(text).ok(),
        crate::events::project_of(text.as_bytes()).map(|p| p.len()),
    )
}

/// Decodes a peer's batch body and each of its messages, as the receiver does; the count of
/// messages that decoded.
pub fn wire_batch(body: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(body).ok()?;
    let batch: crate::wire::Batch<'_> = serde_json::from_str(text).ok()?;
    Some(
        batch
            .messages
            .iter()
            .filter(|m| crate::wire::decode_message(m.get()).is_ok_and(|e| e.body.is_ok()))
            .count(),
    )
}

/// Decodes an outbox segment's bytes record by record; the records read before the first
/// incomplete or damaged one.
pub fn outbox_segment(bytes: &[u8]) -> usize {
    use crate::peers::outbox::segment::{decode, Decoded};
    let mut at = 0;
    let mut n = 0;
    while let Decoded::Record(_, len) = decode(&bytes[at..]) {
        at += len;
        n += 1;
    }
    n
}

/// Decodes an event log segment (header, then records); the records read.
pub fn event_segment(bytes: &[u8]) -> usize {
    use crate::events::record::{decode, decode_header, header_len, Decoded};
    let Ok(mut at) = header_len(bytes) else {
        return 0;
    };
    if at > bytes.len() || decode_header(bytes).is_err() {
        return 0;
    }
    let mut n = 0;
    while let Decoded::Record(_, len) = decode(&bytes[at..]) {
        at += len;
        n += 1;
    }
    n
}

/// Decodes an index journal; the records read.
pub fn journal(bytes: &[u8]) -> usize {
    crate::index::journal::decode(bytes).len()
}

/// Feeds a byte stream to the SSE parser in chunks cut at `cuts`; the messages and the bytes of
/// data they carry.
pub fn sse(bytes: &[u8], cuts: &[usize]) -> (usize, usize) {
    let mut p = crate::stream_client::SseParser::default();
    let (mut msgs, mut data) = (0, 0);
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let end = c.clamp(at, bytes.len());
        for m in p.push(&bytes[at..end]) {
            msgs += 1;
            data += m.data.len();
        }
        at = end;
    }
    (msgs, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Text made of the characters that matter to the parsers: separators of every kind
    /// (including Unicode spaces), quotes, operators, digits, letters.
    fn hostile_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just(" ".to_string()),
            Just("\u{a0}".to_string()),
            Just("\u{2003}".to_string()),
            Just("\u{3000}".to_string()),
            Just("\t".to_string()),
            Just("(".to_string()),
            Just(")".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("-".to_string()),
            Just(":".to_string()),
            Just("AND".to_string()),
            Just("OR".to_string()),
            Just("NOT".to_string()),
            Just("v1~".to_string()),
            Just("~".to_string()),
            "[0-9]{1,22}",
            "[a-z_]{1,8}",
            any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(piece, 0..64).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn query_terminates_with_bounded_output(q in hostile_text()) {
            if let Ok(n) = query(&q) {
                // Each term or operator takes at least one byte of the query.
                prop_assert!(n <= q.len() + 1, "{q:?} gave {n} nodes");
            }
        }

        #[test]
        fn query_of_any_string_terminates(q in any::<String>()) {
            let _ = query(&q);
        }

        #[test]
        fn cursor_terminates_with_bounded_output(t in hostile_text()) {
            if let Some(n) = cursor(&t) {
                prop_assert!(n <= t.len());
            }
        }

        #[test]
        fn durations_and_dates_never_panic(t in hostile_text(), u in any::<String>()) {
            let _ = duration(&t);
            let _ = duration(&u);
            let _ = date(&t);
            let _ = date(&u);
        }

        #[test]
        fn events_log_times_and_projects_terminate_bounded(t in hostile_text(), u in any::<String>()) {
            for text in [&t, &u] {
                let (_, project) = events_log(text);
                prop_assert!(project.is_none_or(|n| n <= text.len()));
            }
            let wrapped = format!(r#"{{"type":"x","project":{}}}"#, serde_json::Value::String(u.clone()));
            prop_assert_eq!(events_log(&wrapped).1, Some(u.len()));
        }

        #[test]
        fn config_text_never_panics(t in hostile_text(), key in "[a-z]{1,12}") {
            let _ = config(&t);
            let _ = config(&format!("[sidecar]\n  {key} = {t}\n[main]\n  {key} = {t}\n"));
        }

        #[test]
        fn wire_batch_decoder_never_panics(
            raw in any::<Vec<u8>>(),
            seq in any::<u64>(),
            kind in prop_oneof![Just("event"), Just("index"), Just("eviction"), Just("flush"), Just("x")],
            filler in hostile_text(),
        ) {
            let _ = wire_batch(&raw);
            let body = format!(
                r#"{{"origin":"a","messages":[{{"seq":{seq},"kind":"{kind}","event_seq":1,"event":{{"type":"x"}},"cache":"c","keys":["{}"]}}]}}"#,
                filler.replace(['"', '\\'], "")
            );
            let n = wire_batch(body.as_bytes());
            prop_assert!(n.is_none_or(|n| n <= 1));
        }

        #[test]
        fn segment_decoders_never_panic(bytes in any::<Vec<u8>>(), flips in any::<Vec<(usize, u8)>>()) {
            // Valid outbox records with damage laid over them reach the deeper checks.
            let mut seg = Vec::new();
            for i in 0..4u64 {
                crate::peers::outbox::segment::encode(i, i, &bytes, &mut seg);
            }
            for (at, b) in &flips {
                if !seg.is_empty() {
                    let i = at % seg.len();
                    seg[i] ^= b;
                }
            }
            prop_assert!(outbox_segment(&seg) <= 4);
            prop_assert!(outbox_segment(&bytes) <= bytes.len());
            prop_assert!(event_segment(&bytes) <= bytes.len());
            prop_assert!(journal(&bytes) <= bytes.len());
        }

        #[test]
        fn sse_parser_output_is_bounded_by_input(
            lines in prop::collection::vec(prop_oneof![
                Just("data: x".to_string()),
                Just("id: 1".to_string()),
                Just("event: e".to_string()),
                Just(":".to_string()),
                Just("".to_string()),
                Just("\r".to_string()),
                any::<String>(),
            ], 0..64),
            cuts in any::<Vec<usize>>(),
        ) {
            let bytes = lines.join("\n").into_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let (msgs, data) = sse(&bytes, &cuts);
            prop_assert!(msgs <= bytes.len() / 2 + 1);
            prop_assert!(data <= bytes.len());
        }
    }

    /// Found by `make fuzz` (target `sse`): invalid UTF-8 in a `data:` line is replaced by
    /// U+FFFD, so the data can be up to three times the bytes received; the bound is that.
    #[test]
    fn invalid_utf8_in_sse_data_is_replaced_within_three_bytes_per_byte() {
        let bytes = b"data:\xff\xff\xff\n\n";
        for cut in 0..=bytes.len() {
            let (msgs, data) = sse(bytes, &[cut]);
            assert_eq!((msgs, data), (1, 9), "cut at {cut}");
            assert!(data <= 3 * bytes.len());
        }
        let crash = [
            0x69, 0x64, 0x0b, 0x00, 0x0a, 0x64, 0x61, 0x74, 0x61, 0x3a, 0xff, 0xff, 0xff, 0xff,
            0xff, 0x0a, 0x0a,
        ];
        // An id line with a control byte, then five invalid bytes of data: 15 bytes of U+FFFD.
        assert_eq!(sse(&crash, &[3]), (1, 15));
    }

    #[test]
    fn the_no_break_space_query_ends() {
        assert_eq!(query("a\u{a0}b").unwrap(), 3);
        assert_eq!(query("\u{a0}").unwrap(), 1);
        assert!(query("-\u{a0}b").is_err());
    }
}
