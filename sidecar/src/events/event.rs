//! Validation of one Gerrit event's JSON and the byte-preserving `instanceId` fill.

use serde::Deserialize;
use serde_json::Value;

use super::{EventError, Result};

/// `type` is stored in each record header with a one-byte length.
pub(crate) const MAX_TYPE_LEN: usize = 255;

/// Deepest nesting of arrays and objects an event may have: serde_json's own limit, which every
/// other JSON endpoint applies when it parses a body. An event's body is kept as bytes and
/// only its head is parsed, so the limit is checked here, by a scan.
pub(crate) const MAX_DEPTH: usize = 128;

/// Whether `body` nests arrays and objects deeper than `max` (strings skipped). One pass, no
/// allocation; on invalid JSON the answer does not matter (parsing refuses it).
fn nested_deeper_than(body: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The fields of an event the log needs; the rest of the JSON is kept as bytes and never parsed again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventHead {
    pub event_type: String,
    /// `eventCreatedOn` in epoch seconds (negative clamps to 0, fractions are dropped).
    pub created_on: u64,
    pub has_instance_id: bool,
}

#[derive(Deserialize)]
struct RawHead {
    #[serde(rename = "type", default)]
    event_type: Option<Value>,
    #[serde(rename = "eventCreatedOn", default)]
    created_on: Option<Value>,
    #[serde(rename = "instanceId", default)]
    instance_id: Option<Value>,
}

/// Checks size, that `body` is one JSON object, that `type` is a string and `eventCreatedOn`
/// a number, and that `instanceId`, when present, is a non-empty string.
pub(crate) fn validate(body: &[u8], max_bytes: usize) -> Result<EventHead> {
    if body.len() > max_bytes {
        return Err(EventError::TooLarge {
            size: body.len(),
            limit: max_bytes,
        });
    }
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => return Err(EventError::BadEvent("body is empty".into())),
        Some(_) => {
            // Say "not JSON" for garbage and "not an object" for valid JSON of another kind.
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    Ok(_) => EventError::BadEvent("event must be a JSON object".into()),
                    Err(e) => EventError::BadEvent(format!("not valid JSON: {e}")),
                },
            );
        }
    }
    if nested_deeper_than(body, MAX_DEPTH) {
        return Err(EventError::BadEvent(format!(
            "event JSON is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let raw: RawHead = serde_json::from_slice(body)
        .map_err(|e| EventError::BadEvent(format!("not valid JSON: {e}")))?;

    let mut missing = Vec::new();
    if raw.event_type.is_none() {
        missing.push("`type` (string)");
    }
    if raw.created_on.is_none() {
        missing.push("`eventCreatedOn` (number, epoch seconds)");
    }
    if !missing.is_empty() {
        return Err(EventError::BadEvent(format!(
            "event lacks {}",
            missing.join(" and ")
        )));
    }
    let event_type = match raw.event_type {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_TYPE_LEN => s,
        Some(Value::String(s)) if s.is_empty() => {
            return Err(EventError::BadEvent("`type` is empty".into()))
        }
        Some(Value::String(_)) => {
            return Err(EventError::BadEvent(format!(
                "`type` is longer than {MAX_TYPE_LEN} bytes"
            )))
        }
        _ => return Err(EventError::BadEvent("`type` must be a string".into())),
    };
    let created_on = match raw.created_on {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|_| 0))
            .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
            .unwrap_or(0),
        _ => {
            return Err(EventError::BadEvent(
                "`eventCreatedOn` must be a number (epoch seconds)".into(),
            ))
        }
    };
    let has_instance_id = match raw.instance_id {
        None => false,
        Some(Value::String(s)) if !s.is_empty() => true,
        Some(_) => {
            return Err(EventError::BadEvent(
                "`instanceId` must be a non-empty string when present".into(),
            ))
        }
    };
    Ok(EventHead {
        event_type,
        created_on,
        has_instance_id,
    })
}

/// Adds `"instanceId":"<id>"` as the last member of a validated, non-empty event object,
/// leaving every other byte where it was. `id` is a valid instanceId, so it needs no escaping.
pub(crate) fn with_instance_id(body: &[u8], id: &str) -> Vec<u8> {
    let close = body.iter().rposition(|&b| b == b'}').unwrap_or(body.len());
    // Insert right after the last member, before any whitespace preceding the closing brace.
    let at = body[..close]
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(close, |p| p + 1);
    let mut out = Vec::with_capacity(body.len() + id.len() + 16);
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(b",\"instanceId\":\"");
    out.extend_from_slice(id.as_bytes());
    out.push(b'"');
    out.extend_from_slice(&body[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str) -> String {
        match validate(body.as_bytes(), 1 << 20) {
            Err(EventError::BadEvent(m)) => m,
            other => panic!("expected BadEvent for {body:?}, got {other:?}"),
        }
    }

    #[test]
    fn nesting_is_limited_like_other_json_endpoints() {
        let nest = |n: usize| {
            format!(
                r#"{{"type":"x","eventCreatedOn":1,"a":{}1{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        // The event object itself is one level.
        assert!(validate(nest(MAX_DEPTH - 1).as_bytes(), 1 << 20).is_ok());
        assert!(bad(&nest(MAX_DEPTH)).contains("nested deeper than 128"));
        assert!(bad(&nest(100_000)).contains("nested deeper"));
        // Brackets inside strings (escaped quotes too) are text, not nesting.
        let text = format!(
            r#"{{"type":"x","eventCreatedOn":1,"s":"\"{}"}}"#,
            "[{".repeat(1000)
        );
        assert!(validate(text.as_bytes(), 1 << 20).is_ok());
    }

    #[test]
    fn validation_names_what_is_wrong() {
        assert!(bad(r#"{"eventCreatedOn":1}"#).contains("`type`"));
        assert!(!bad(r#"{"eventCreatedOn":1}"#).contains("eventCreatedOn"));
        assert!(bad(r#"{"type":"x"}"#).contains("`eventCreatedOn`"));
        let both = bad(r#"{"a":1}"#);
        assert!(
            both.contains("`type`") && both.contains("`eventCreatedOn`"),
            "{both}"
        );
        assert!(bad("{nope").contains("not valid JSON"));
        assert!(bad("hello").contains("not valid JSON"));
        assert!(bad("[1,2]").contains("JSON object"));
        assert!(bad("\"str\"").contains("JSON object"));
        assert!(bad("").contains("empty"));
        assert!(bad(r#"{"type":5,"eventCreatedOn":1}"#).contains("`type` must be a string"));
        assert!(bad(r#"{"type":"x","eventCreatedOn":"1"}"#).contains("must be a number"));
        assert!(bad(r#"{"type":"x","eventCreatedOn":1,"instanceId":""}"#).contains("instanceId"));
        assert!(bad(r#"{"type":"x","eventCreatedOn":1} trailing"#).contains("not valid JSON"));
        assert!(bad(r#"{"type":"x","type":"y","eventCreatedOn":1}"#).contains("duplicate"));
    }

    #[test]
    fn too_large_is_its_own_error() {
        let body = format!(
            r#"{{"type":"x","eventCreatedOn":1,"pad":"{}"}}"#,
            "a".repeat(100)
        );
        match validate(body.as_bytes(), 64) {
            Err(EventError::TooLarge { size, limit }) => {
                assert_eq!((size, limit), (body.len(), 64));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn head_fields_are_extracted() {
        let h = validate(
            br#" {"type":"ref-updated","eventCreatedOn":1686214571.9} "#,
            1024,
        )
        .unwrap();
        assert_eq!(h.event_type, "ref-updated");
        assert_eq!(h.created_on, 1686214571);
        assert!(!h.has_instance_id);
        let h = validate(
            br#"{"type":"t","eventCreatedOn":-5,"instanceId":"m"}"#,
            1024,
        )
        .unwrap();
        assert_eq!(h.created_on, 0);
        assert!(h.has_instance_id);
    }

    #[test]
    fn instance_id_is_inserted_without_touching_other_bytes() {
        let body = b"{\n  \"type\": \"x\",\n  \"eventCreatedOn\": 1\n}\n";
        let out = with_instance_id(body, "node-a");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "{\n  \"type\": \"x\",\n  \"eventCreatedOn\": 1,\"instanceId\":\"node-a\"\n}\n"
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["instanceId"], "node-a");
        let compact = with_instance_id(br#"{"type":"x","eventCreatedOn":1}"#, "n");
        assert_eq!(
            compact,
            br#"{"type":"x","eventCreatedOn":1,"instanceId":"n"}"#
        );
    }
}
