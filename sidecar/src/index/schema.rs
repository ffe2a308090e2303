//! The fields of each index kind and the mapping of a JSON document to a tantivy document.
//!
//! Every kind has the same internal fields (`_id`, `_version`, `_deleted_at`, `_live`,
//! `_source`) plus its searchable fields, listed in one table per kind. The whole JSON
//! document is stored in `_source` and returned as given; fields outside the table are kept
//! there but not indexed. Exact-match fields are raw (untokenized) terms; text fields use
//! tantivy's default analyzer (split on non-alphanumerics, lowercase). A tombstone is a
//! document with `_live = 0` and no source, so deletes survive restarts and carry a version.

use serde_json::Value;
use tantivy::schema::{
    Field, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STORED, STRING,
};
use tantivy::TantivyDocument;

use super::dates;
use super::Kind;

/// How a raw term is normalized, at index time and at query time alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Norm {
    Exact,
    Lower,
    /// Lowercase, and also index Gerrit's synonyms: `new` is `open`; `merged`/`abandoned` are `closed`.
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldType {
    /// One exact term per value (multi-valued when the JSON holds an array).
    Raw(Norm),
    /// Tokenized, lowercased free text with positions (phrases).
    Text,
    U64,
    /// Epoch seconds (i64), from an integer (epoch seconds) or a timestamp string.
    Date,
}

pub(crate) struct FieldSpec {
    /// Query name, also the tantivy field name.
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// JSON keys of the document read for this field, all of them.
    pub sources: &'static [&'static str],
    pub ty: FieldType,
}

const fn spec(
    name: &'static str,
    aliases: &'static [&'static str],
    sources: &'static [&'static str],
    ty: FieldType,
) -> FieldSpec {
    FieldSpec {
        name,
        aliases,
        sources,
        ty,
    }
}

use FieldType::{Date, Raw, Text, U64};
use Norm::{Exact, Lower, Status};

static CHANGES: &[FieldSpec] = &[
    spec("project", &["repo"], &["project"], Raw(Exact)),
    spec("branch", &[], &["branch"], Raw(Exact)),
    spec("status", &["is"], &["status"], Raw(Status)),
    spec("owner", &[], &["owner"], Raw(Exact)),
    spec("topic", &[], &["topic"], Raw(Exact)),
    spec("hashtag", &["hashtags"], &["hashtags"], Raw(Exact)),
    spec("subject", &[], &["subject"], Text),
    spec("message", &[], &["message", "commit_message"], Text),
    spec("number", &[], &["number", "_number"], U64),
    spec("updated", &[], &["updated"], Date),
];
static ACCOUNTS: &[FieldSpec] = &[
    spec("username", &[], &["username"], Raw(Exact)),
    spec("name", &[], &["name", "full_name"], Text),
    spec(
        "email",
        &["emails"],
        &["email", "emails", "secondary_emails"],
        Raw(Lower),
    ),
];
static GROUPS: &[FieldSpec] = &[
    spec("uuid", &[], &["uuid", "id"], Raw(Exact)),
    spec("name", &[], &["name"], Raw(Exact)),
    spec("owner", &[], &["owner", "owner_id"], Raw(Exact)),
];
static PROJECTS: &[FieldSpec] = &[
    spec("name", &[], &["name"], Raw(Exact)),
    spec("parent", &[], &["parent"], Raw(Exact)),
    spec("state", &[], &["state"], Raw(Lower)),
    spec("description", &[], &["description"], Text),
];

/// Keys read from an object value of a raw field, e.g. `"owner": {"username": "alice", ...}`.
const IDENTITY_KEYS: &[&str] = &["username", "email", "_account_id", "name", "id"];

pub(crate) struct KindSchema {
    pub kind: Kind,
    pub schema: Schema,
    pub id: Field,
    pub version: Field,
    pub deleted_at: Field,
    pub live: Field,
    pub source: Field,
    pub fields: Vec<(&'static FieldSpec, Field)>,
    /// Fields searched by bare words and bare phrases.
    pub default_fields: &'static [&'static str],
    pub updated: Option<Field>,
    /// Sort of results: `updated` desc then `number` desc (as Gerrit) for changes, else id.
    pub sort_by_updated: Option<(String, String)>,
}

impl KindSchema {
    pub fn new(kind: Kind) -> KindSchema {
        let (specs, default_fields): (&'static [FieldSpec], &'static [&'static str]) = match kind {
            Kind::Changes => (CHANGES, &["subject", "message"]),
            Kind::Accounts => (ACCOUNTS, &["name", "username", "email"]),
            Kind::Groups => (GROUPS, &["name", "uuid"]),
            Kind::Projects => (PROJECTS, &["name", "description"]),
        };
        let mut b = Schema::builder();
        let id = b.add_text_field("_id", STRING | STORED | FAST);
        let version = b.add_u64_field("_version", STORED | FAST);
        let deleted_at = b.add_u64_field("_deleted_at", STORED | FAST);
        let live = b.add_u64_field("_live", INDEXED);
        let source = b.add_text_field("_source", STORED);
        let text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("default")
                .set_index_option(tantivy::schema::IndexRecordOption::WithFreqsAndPositions),
        );
        let mut fields = Vec::new();
        let mut updated = None;
        for s in specs {
            let f = match s.ty {
                Raw(_) => b.add_text_field(s.name, STRING),
                Text => b.add_text_field(s.name, text.clone()),
                U64 => b.add_u64_field(s.name, INDEXED | FAST),
                Date => {
                    let f = b.add_i64_field(s.name, INDEXED | FAST);
                    updated = Some(f);
                    f
                }
            };
            fields.push((s, f));
        }
        let sort_by_updated = updated.map(|_| ("updated".to_string(), "number".to_string()));
        KindSchema {
            kind,
            sort_by_updated,
            schema: b.build(),
            id,
            version,
            deleted_at,
            live,
            source,
            fields,
            default_fields,
            updated,
        }
    }

    /// The field a query name refers to (name or alias).
    pub fn lookup(&self, name: &str) -> Option<(&'static FieldSpec, Field)> {
        self.fields
            .iter()
            .find(|(s, _)| s.name == name || s.aliases.contains(&name))
            .copied()
    }

    /// Query names, for error messages.
    pub fn field_names(&self) -> Vec<&'static str> {
        self.fields.iter().map(|(s, _)| s.name).collect()
    }

    pub fn live_document(
        &self,
        id: &str,
        version: u64,
        source: &str,
        doc: &Value,
    ) -> TantivyDocument {
        let mut d = TantivyDocument::default();
        d.add_text(self.id, id);
        d.add_u64(self.version, version);
        d.add_u64(self.deleted_at, 0);
        d.add_u64(self.live, 1);
        d.add_text(self.source, source);
        for (s, f) in &self.fields {
            for key in s.sources {
                let Some(v) = doc.get(*key) else { continue };
                match s.ty {
                    Raw(norm) => {
                        let mut out = Vec::new();
                        raw_values(v, &mut out, true);
                        for value in out {
                            for term in normalize(norm, &value) {
                                d.add_text(*f, term);
                            }
                        }
                    }
                    Text => {
                        let mut out = Vec::new();
                        raw_values(v, &mut out, false);
                        for value in out {
                            d.add_text(*f, value);
                        }
                    }
                    U64 => {
                        if let Some(n) = v.as_u64().or_else(|| v.as_str()?.parse().ok()) {
                            d.add_u64(*f, n);
                        }
                    }
                    Date => {
                        if let Some(t) = dates::doc_time(v) {
                            d.add_i64(*f, t);
                        }
                    }
                }
            }
        }
        d
    }

    pub fn tombstone_document(
        &self,
        id: &str,
        version: u64,
        deleted_at_ms: u64,
    ) -> TantivyDocument {
        let mut d = TantivyDocument::default();
        d.add_text(self.id, id);
        d.add_u64(self.version, version);
        d.add_u64(self.deleted_at, deleted_at_ms.max(1));
        d.add_u64(self.live, 0);
        d
    }
}

/// Scalar values of a JSON value: strings and numbers, array elements, and for `objects`
/// the identity keys of an object (an account given as `{"username": .., "email": ..}`).
fn raw_values(v: &Value, out: &mut Vec<String>, objects: bool) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|i| raw_values(i, out, objects)),
        Value::Object(map) if objects => {
            for key in IDENTITY_KEYS {
                if let Some(v @ (Value::String(_) | Value::Number(_))) = map.get(*key) {
                    raw_values(v, out, false);
                }
            }
        }
        _ => {}
    }
}

/// The terms indexed (or searched) for one raw value.
pub(crate) fn normalize(norm: Norm, value: &str) -> Vec<String> {
    match norm {
        Exact => vec![value.to_string()],
        Lower => vec![value.to_lowercase()],
        Status => {
            let v = value.to_lowercase();
            let synonym = match v.as_str() {
                "new" => Some("open"),
                "merged" | "abandoned" => Some("closed"),
                _ => None,
            };
            let mut terms = vec![v];
            terms.extend(synonym.map(str::to_string));
            terms
        }
    }
}

/// Query-side normalization: one term (synonyms are expanded at index time).
pub(crate) fn normalize_query(norm: Norm, value: &str) -> String {
    match norm {
        Exact => value.to_string(),
        Lower | Status => value.to_lowercase(),
    }
}
