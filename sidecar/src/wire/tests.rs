//! Golden files: every message and reply kind of the peer protocol, as today's encoders write
//! it, in `fixtures/wire/`. Each is decoded with the wire decoder and encoded again with the
//! encoder the node uses; any byte that changes fails the test. A file may end with one
//! newline, which is not part of the message.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::index_sync::*;
use super::*;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/wire")
}

/// Decodes with `T`'s `Deserialize` and encodes with its `Serialize`.
fn serde_round_trip<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Vec<u8> {
    let v: T = serde_json::from_slice(bytes).expect("decodes");
    serde_json::to_vec(&v).expect("encodes")
}

/// One message of a batch: decoded once, its payload encoded as the outbox stores it, and
/// given its seq as the forwarder does.
fn message_round_trip(bytes: &[u8], kind: MessageKind) -> Vec<u8> {
    let raw = std::str::from_utf8(bytes).expect("utf-8");
    let env = decode_message(raw).expect("has a seq");
    assert_eq!(env.kind, kind);
    let msg = env.body.expect("decodes");
    assert_eq!(msg.kind(), kind);
    encode_batch("o", std::iter::once((env.seq, msg.encode().as_slice())))
        .strip_prefix(br#"{"origin":"o","messages":["#.as_slice())
        .and_then(|b| b.strip_suffix(b"]}"))
        .expect("one message")
        .to_vec()
}

fn batch_round_trip(bytes: &[u8]) -> Vec<u8> {
    let batch: Batch = serde_json::from_slice(bytes).expect("decodes");
    let payloads: Vec<(u64, Vec<u8>)> = batch
        .messages
        .iter()
        .map(|raw| {
            let env = decode_message(raw.get()).expect("has a seq");
            (env.seq, env.body.expect("decodes").encode())
        })
        .collect();
    encode_batch(
        &batch.origin,
        payloads.iter().map(|(s, p)| (*s, p.as_slice())),
    )
}

fn export_round_trip(bytes: &[u8]) -> Vec<u8> {
    let reply: ExportReply = serde_json::from_slice(bytes).expect("decodes");
    let mut w = ExportReplyWriter::new();
    for d in &reply.docs {
        w.push(d);
    }
    let out = w.finish(reply.consumed);
    assert_eq!(out, serde_json::to_vec(&reply).unwrap(), "writer = serde");
    out
}

fn catch_up_round_trip(bytes: &[u8]) -> Vec<u8> {
    CatchUpReply::decode(bytes).expect("decodes").to_bytes()
}

/// The one check: the golden file `name` survives `round_trip` byte for byte.
fn check(name: &str, round_trip: RoundTrip) {
    let path = fixtures().join(name);
    let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let golden = golden.strip_suffix(b"\n").unwrap_or(&golden);
    let again = round_trip(golden);
    assert!(
        again == golden,
        "{name} changed on the wire:\n  golden: {}\n  now:    {}",
        String::from_utf8_lossy(golden),
        String::from_utf8_lossy(&again)
    );
}

/// Decodes a golden file's bytes and encodes them again.
type RoundTrip = fn(&[u8]) -> Vec<u8>;

const GOLDEN: &[(&str, RoundTrip)] = &[
    ("message-eviction.json", |b| {
        message_round_trip(b, MessageKind::Eviction)
    }),
    ("message-flush.json", |b| {
        message_round_trip(b, MessageKind::Flush)
    }),
    ("message-index-upsert.json", |b| {
        message_round_trip(b, MessageKind::Index)
    }),
    ("message-index-delete.json", |b| {
        message_round_trip(b, MessageKind::Index)
    }),
    ("message-event.json", |b| {
        message_round_trip(b, MessageKind::Event)
    }),
    ("message-plugin.json", |b| {
        message_round_trip(b, MessageKind::Plugin)
    }),
    ("message-plugin-delete.json", |b| {
        message_round_trip(b, MessageKind::Plugin)
    }),
    ("batch.json", batch_round_trip),
    ("batch-reply.json", serde_round_trip::<BatchReply>),
    ("hello.json", serde_round_trip::<Hello>),
    ("leave-reply.json", serde_round_trip::<LeaveReply>),
    ("backlog-reply.json", serde_round_trip::<BacklogReply>),
    ("election-request.json", serde_round_trip::<ElectionRequest>),
    ("election-reply.json", serde_round_trip::<ElectionReply>),
    (
        "index-digest-request.json",
        serde_round_trip::<DigestRequest>,
    ),
    ("index-digest-reply.json", serde_round_trip::<RangeDigest>),
    (
        "index-entries-request.json",
        serde_round_trip::<EntriesRequest>,
    ),
    ("index-entries-reply.json", serde_round_trip::<EntriesReply>),
    (
        "index-export-request.json",
        serde_round_trip::<ExportRequest>,
    ),
    ("index-export-reply.json", export_round_trip),
    ("index-apply-request.json", serde_round_trip::<ApplyRequest>),
    ("index-apply-reply.json", serde_round_trip::<ApplyReply>),
    (
        "events-origins-reply.json",
        serde_round_trip::<OriginsReply>,
    ),
    ("events-catch-up-reply.json", catch_up_round_trip),
];

#[test]
fn golden_files_round_trip_byte_for_byte() {
    for (name, round_trip) in GOLDEN {
        check(name, *round_trip);
    }
}

#[test]
fn every_golden_file_is_checked() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = GOLDEN.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

#[test]
fn a_message_is_decoded_once_with_its_bytes_borrowed() {
    let raw =
        r#"{"seq":3,"kind":"index","index":"changes","id":"c1","version":2,"doc":{"b":1,"a":"x"}}"#;
    let env = decode_message(raw).unwrap();
    let (kind, d) = env.body.unwrap().into_raw_doc().unwrap();
    assert_eq!((env.seq, kind), (3, Kind::Changes));
    assert_eq!((d.id.as_str(), d.version, d.deleted), ("c1", 2, false));
    assert_eq!(d.source.as_deref(), Some(r#"{"b":1,"a":"x"}"#));
    let raw = r#"{"seq":9,"kind":"event","event_seq":4,"event":{"type":"t", "x":[1 ,2]}}"#;
    match decode_message(raw).unwrap().body.unwrap() {
        PeerMessage::Event { event_seq, event } => {
            assert_eq!(event_seq, 4);
            assert_eq!(event, br#"{"type":"t", "x":[1 ,2]}"#);
        }
        other => panic!("not an event: {other:?}"),
    }
}

#[test]
fn bad_messages_are_named_by_seq_and_kind() {
    for (raw, seq, kind) in [
        (
            r#"{"seq":5,"kind":"index","index":"changes","id":"c1","version":2}"#,
            5,
            MessageKind::Index,
        ),
        (
            r#"{"seq":5,"kind":"index","index":"changes","id":"c1","version":2,"doc":null}"#,
            5,
            MessageKind::Index,
        ),
        (
            r#"{"seq":5,"kind":"index","index":"changes","id":"c1","version":2,"deleted":true,"doc":{}}"#,
            5,
            MessageKind::Index,
        ),
        (
            r#"{"seq":5,"kind":"index","index":"nope","id":"c1","version":2,"doc":{}}"#,
            5,
            MessageKind::Index,
        ),
        (
            r#"{"seq":5,"kind":"index","index":"changes","version":2,"doc":{}}"#,
            5,
            MessageKind::Index,
        ),
        (
            r#"{"seq":6,"kind":"eviction","cache":"c","keys":[1]}"#,
            6,
            MessageKind::Eviction,
        ),
        (
            r#"{"seq":7,"kind":"teleport","to":"mars"}"#,
            7,
            MessageKind::Unknown,
        ),
        (r#"{"seq":8,"cache":"c"}"#, 8, MessageKind::Unknown),
        (
            r#"{"seq":9,"kind":"event","event_seq":1}"#,
            9,
            MessageKind::Event,
        ),
        (
            r#"{"seq":10,"kind":"plugin","path":"cache/projects"}"#,
            10,
            MessageKind::Plugin,
        ),
        (
            r#"{"seq":11,"kind":"plugin","method":"GET","path":"cache/projects"}"#,
            11,
            MessageKind::Plugin,
        ),
        (
            r#"{"seq":12,"kind":"plugin","method":"POST","path":"query/x"}"#,
            12,
            MessageKind::Plugin,
        ),
    ] {
        let env = decode_message(raw).unwrap();
        assert_eq!((env.seq, env.kind), (seq, kind), "{raw}");
        assert!(env.body.is_err(), "{raw}");
    }
    for raw in [
        r#"{"kind":"flush","cache":"c"}"#,
        r#"{"seq":"1","kind":"flush"}"#,
    ] {
        assert!(
            matches!(decode_message(raw), Err(MessageError::NoSeq(_))),
            "{raw}"
        );
    }
}

#[test]
fn a_batch_splices_stored_payloads_and_escapes_its_origin() {
    let payloads: [(u64, &[u8]); 2] = [(4, br#"{"kind":"flush","cache":"c"}"#), (9, b"{}")];
    let body = encode_batch("a\"b", payloads.into_iter());
    assert_eq!(
        body,
        br#"{"origin":"a\"b","messages":[{"seq":4,"kind":"flush","cache":"c"},{"seq":9}]}"#
    );
}
