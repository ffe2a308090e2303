//! Data-driven over `fixtures/gerrit/`: every call of both wire generations is accepted and
//! kept exactly; every malformed one is refused with the plugin servlet's status.

use super::*;

const STABLE_3_13: &str = include_str!("../../../../fixtures/gerrit/calls-stable-3.13.jsonl");
const V3_14: &str = include_str!("../../../../fixtures/gerrit/calls-3.14.jsonl");
const REFUSED: &str = include_str!("../../../../fixtures/gerrit/refused.jsonl");

fn header(v: &serde_json::Value, k: &str) -> Option<String> {
    match v.get(k)? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn check(
    line: &str,
) -> (
    serde_json::Value,
    Result<(Family, PluginCall), IngressError>,
) {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let (ct, created, body) = (
        header(&v, "content_type"),
        header(&v, "created_on"),
        header(&v, "body").unwrap_or_default(),
    );
    let r = parse(&Request {
        method: v["method"].as_str().unwrap(),
        path: v["path"].as_str().unwrap(),
        content_type: ct.as_deref(),
        created_on: created.as_deref(),
        body: body.as_bytes(),
    });
    (v, r)
}

#[test]
fn both_generations_are_accepted_and_kept_exactly() {
    let mut families = std::collections::HashSet::new();
    for line in STABLE_3_13.lines().chain(V3_14.lines()) {
        let (v, r) = check(line);
        let (family, call) = r.unwrap_or_else(|e| panic!("{line}: {e}"));
        families.insert(family);
        assert_eq!(call.method, v["method"].as_str().unwrap());
        assert_eq!(call.path, v["path"].as_str().unwrap());
        assert_eq!(call.body.as_deref(), v["body"].as_str(), "{line}");
        assert_eq!(call.content_type.as_deref(), v["content_type"].as_str());
        assert_eq!(call.created_on, v["created_on"].as_u64());
    }
    assert_eq!(families.len(), Family::ALL.len());
}

#[test]
fn malformed_calls_get_the_servlets_status() {
    for line in REFUSED.lines() {
        let (v, r) = check(line);
        let status = match r {
            Ok(_) => panic!("accepted: {line}"),
            Err(IngressError::BadRequest(_)) => 400,
            Err(IngressError::NotFound(_)) => 404,
            Err(IngressError::MethodNotAllowed(_)) => 405,
            Err(IngressError::UnsupportedMediaType(_)) => 415,
        };
        assert_eq!(status, v["status"].as_u64().unwrap(), "{line}");
    }
}
