//! `[event]` and `[event "consumer NAME"]`: the event log, the stream's token, and the stream
//! consumers that see only some projects.

use std::collections::BTreeSet;

use super::V;
use crate::config::{EventConfig, ListenUrl, Secret, StreamConsumer};

/// `[event "consumer NAME"]`: each consumer's token and projects.
fn stream_consumers(v: &mut V<'_>, stream_token: Option<&Secret>) -> Vec<StreamConsumer> {
    let subs: BTreeSet<String> = v
        .raw
        .values
        .keys()
        .filter(|k| k.section == "event")
        .filter_map(|k| k.subsection.clone())
        .filter(|sub| sub.starts_with("consumer "))
        .collect();
    let mut consumers: Vec<StreamConsumer> = Vec::new();
    for sub in subs {
        let name = sub["consumer ".len()..].trim().to_owned();
        let key = |k: &str| format!("event.{sub}.{k}");
        let Some(token) = v.token_in("event", Some(&sub), "token") else {
            v.err(&key("token"), "a stream consumer needs its token");
            continue;
        };
        let taken = stream_token.is_some_and(|t| t.0 == token.0)
            || consumers.iter().any(|c| c.token.0 == token.0);
        if taken {
            v.err(
                &key("token"),
                "another consumer (or event.streamToken) has the same token: tokens must differ",
            );
            continue;
        }
        let patterns = v.list("event", Some(&sub), "project");
        let projects = if patterns.is_empty() {
            None
        } else {
            match crate::events::ProjectFilter::new(patterns) {
                Ok(f) => Some(std::sync::Arc::new(f)),
                Err(e) => {
                    v.err(&key("project"), e);
                    continue;
                }
            }
        };
        consumers.push(StreamConsumer {
            name,
            token,
            projects,
        });
    }
    consumers
}

pub(super) fn event_config(v: &mut V<'_>, listen: &ListenUrl) -> EventConfig {
    let stream_token = v.token("event", "streamToken");
    let consumers = stream_consumers(v, stream_token.as_ref());
    let event = EventConfig {
        synchronize: v.boolean("event", "synchronize"),
        retention: v.duration("event", None, "retention"),
        stream_token,
        consumers,
        return_limit: v.size("event", "returnLimit") as usize,
        heartbeat: v.duration("event", None, "heartbeatInterval"),
        segment_bytes: v.size("event", "segmentSize"),
        max_bytes: v.size("event", "maxSize"),
        max_event_bytes: v.size("event", "maxEventSize") as usize,
    };
    if !listen.is_loopback() && event.stream_token.is_none() && event.consumers.is_empty() {
        v.err(
            "event.streamToken",
            "required when sidecar.listenUrl is not on loopback (or [event \"consumer NAME\"] \
             tokens): stream events are not public",
        );
    }
    event
}
