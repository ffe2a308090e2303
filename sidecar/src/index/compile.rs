//! Turns a parsed query (`query::Expr`) into tantivy queries for one kind's schema.
//!
//! Raw fields give a `TermQuery` on the normalized value; text fields are run through the
//! field's analyzer and give a `TermQuery` (one token) or a `PhraseQuery`; `age:`, `before:`
//! and `after:` give a `RangeQuery` on `updated`. `NOT` becomes a `MustNot` clause beside the
//! positive clauses of its conjunction, or beside "all documents" when it stands alone. Every
//! query finally excludes tombstones (`_live` 0), so they never match.
//!
//! A value the index cannot answer is refused (`400` naming it), never turned into an empty
//! result: Gerrit's regular expressions (`project:^tools/.*`), the caller's own account
//! (`owner:self`), a state the index does not record (`is:wip`, `is:private`, `state:foo`),
//! and a text value with no searchable word (`subject:!!!`).

use std::ops::Bound;

use tantivy::query::{AllQuery, BooleanQuery, Occur, PhraseQuery, Query, RangeQuery, TermQuery};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::Term;

use super::dates;
use super::query::{Expr, QueryError};
use super::schema::{normalize_query, FieldSpec, FieldType, KindSchema, Norm};

pub(crate) struct Compiler<'a> {
    pub schema: &'a KindSchema,
    /// The analyzer of the text fields (tantivy's "default": split on non-alphanumerics,
    /// lowercase, drop tokens over 40 bytes), the same one used at index time.
    pub analyzer: TextAnalyzer,
    /// Now, in epoch seconds, for `age:`.
    pub now: i64,
}

fn bad<T>(pos: usize, message: String) -> Result<T, QueryError> {
    Err(QueryError {
        message,
        position: pos,
    })
}

fn term_query(term: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(term, IndexRecordOption::Basic))
}

/// Values of `status:`/`is:` the index records (with Gerrit's synonyms).
const STATUS_VALUES: &[&str] = &["open", "new", "closed", "merged", "abandoned"];
/// Values of a project's `state:` (Gerrit's `ProjectState`, lowercased).
const PROJECT_STATES: &[&str] = &["active", "read_only", "hidden"];
/// Identity fields whose `self`/`me` means the caller's account, which the index never knows.
const IDENTITY_FIELDS: &[&str] = &["owner"];

/// Refuses a raw value the index cannot answer (a value the index simply does not hold is
/// answered: an empty result is then true).
fn answerable(spec: &FieldSpec, name: &str, value: &str, pos: usize) -> Result<(), QueryError> {
    let FieldType::Raw(norm) = spec.ty else {
        return Ok(());
    };
    if value.starts_with('^') {
        return bad(
            pos,
            format!(
                "'{name}:{value}' is a regular expression; the sidecar index matches '{name}:' \
                 exactly (no regular expressions)"
            ),
        );
    }
    let lower = value.to_lowercase();
    if IDENTITY_FIELDS.contains(&spec.name) && matches!(lower.as_str(), "self" | "me") {
        return bad(
            pos,
            format!(
                "'{name}:{value}' needs the caller's account, which the sidecar index does not \
                 know; name the account (username or email)"
            ),
        );
    }
    let vocabulary = match (norm, spec.name) {
        (Norm::Status, _) => Some(STATUS_VALUES),
        (_, "state") => Some(PROJECT_STATES),
        _ => None,
    };
    if let Some(known) = vocabulary {
        if !known.contains(&lower.as_str()) {
            return bad(
                pos,
                format!(
                    "'{name}:{value}' cannot be answered: the sidecar index records only {} {}",
                    spec.name,
                    known.join(", ")
                ),
            );
        }
    }
    Ok(())
}

impl Compiler<'_> {
    /// The whole query, restricted to live documents: tombstones (`_live` 0, every document
    /// has the field) are excluded rather than live ones intersected, because tombstones are
    /// few and an exclusion by a short (often empty) list costs next to nothing per match.
    pub fn compile(&mut self, e: &Expr) -> Result<Box<dyn Query>, QueryError> {
        let tombstones = term_query(Term::from_field_u64(self.schema.live, 0));
        let q = match e {
            Expr::All => Box::new(AllQuery),
            e => self.expr(e)?,
        };
        Ok(Box::new(BooleanQuery::new(vec![
            (Occur::Must, q),
            (Occur::MustNot, tombstones),
        ])))
    }

    fn expr(&mut self, e: &Expr) -> Result<Box<dyn Query>, QueryError> {
        match e {
            Expr::All => Ok(Box::new(AllQuery)),
            Expr::Or(items) => {
                let mut clauses = Vec::with_capacity(items.len());
                for i in items {
                    clauses.push((Occur::Should, self.expr(i)?));
                }
                Ok(Box::new(BooleanQuery::new(clauses)))
            }
            Expr::And(items) => {
                let mut clauses = Vec::with_capacity(items.len() + 1);
                for i in items {
                    match i {
                        Expr::Not(inner) => clauses.push((Occur::MustNot, self.expr(inner)?)),
                        other => clauses.push((Occur::Must, self.expr(other)?)),
                    }
                }
                if clauses.iter().all(|(o, _)| *o == Occur::MustNot) {
                    clauses.push((Occur::Must, Box::new(AllQuery)));
                }
                Ok(Box::new(BooleanQuery::new(clauses)))
            }
            Expr::Not(inner) => Ok(Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(AllQuery) as Box<dyn Query>),
                (Occur::MustNot, self.expr(inner)?),
            ]))),
            Expr::Term {
                field: None,
                value,
                pos,
                ..
            } => {
                let mut clauses = Vec::new();
                for name in self.schema.default_fields {
                    let (spec, f) = self
                        .schema
                        .lookup(name)
                        .expect("default fields are in the schema");
                    if let Some(q) = self.value_query(spec, f, value, *pos)? {
                        clauses.push((Occur::Should, q));
                    }
                }
                match clauses.len() {
                    0 => bad(
                        *pos,
                        format!(
                            "'{value}' has no searchable word for {} (searched: {})",
                            self.schema.kind,
                            self.schema.default_fields.join(", ")
                        ),
                    ),
                    1 => Ok(clauses.pop().map(|(_, q)| q).expect("one clause")),
                    _ => Ok(Box::new(BooleanQuery::new(clauses))),
                }
            }
            Expr::Term {
                field: Some(name),
                value,
                pos,
                ..
            } => self.field_term(name, value, *pos),
        }
    }

    fn field_term(
        &mut self,
        name: &str,
        value: &str,
        pos: usize,
    ) -> Result<Box<dyn Query>, QueryError> {
        let kind = self.schema.kind;
        match name {
            "id" => return Ok(term_query(Term::from_field_text(self.schema.id, value))),
            "age" | "before" | "until" | "after" | "since" => {
                let Some(updated) = self.schema.updated else {
                    return bad(
                        pos,
                        format!("'{name}:' is not available for {kind}: they have no updated time"),
                    );
                };
                let (lower, upper) = match name {
                    "age" => {
                        let Some(secs) = dates::parse_age(value) else {
                            return bad(
                                pos,
                                format!("bad age '{value}' (use e.g. 2d, 3h, 1w, 2mon, 1y)"),
                            );
                        };
                        (None, Some(self.now.saturating_sub(secs)))
                    }
                    _ => {
                        let Some(t) = dates::parse_timestamp(value) else {
                            return bad(
                                pos,
                                format!("bad date '{value}' for '{name}:' (use YYYY-MM-DD or YYYY-MM-DD HH:MM:SS)"),
                            );
                        };
                        if matches!(name, "after" | "since") {
                            (Some(t), None)
                        } else {
                            (None, Some(t))
                        }
                    }
                };
                let bound = |v: Option<i64>| {
                    v.map_or(Bound::Unbounded, |v| {
                        Bound::Included(Term::from_field_i64(updated, v))
                    })
                };
                return Ok(Box::new(RangeQuery::new(bound(lower), bound(upper))));
            }
            _ => {}
        }
        let Some((spec, f)) = self.schema.lookup(name) else {
            return bad(
                pos,
                format!(
                    "unknown field '{name}' for {kind} (known: id, {}{})",
                    self.schema.field_names().join(", "),
                    if self.schema.updated.is_some() {
                        ", age, before, after"
                    } else {
                        ""
                    }
                ),
            );
        };
        answerable(spec, name, value, pos)?;
        match self.value_query(spec, f, value, pos)? {
            Some(q) => Ok(q),
            None => bad(
                pos,
                format!("'{name}:{value}' has no searchable word (text is matched by words)"),
            ),
        }
    }

    /// The query for one value on one field; `None` when a text value has no tokens.
    fn value_query(
        &mut self,
        spec: &FieldSpec,
        f: Field,
        value: &str,
        pos: usize,
    ) -> Result<Option<Box<dyn Query>>, QueryError> {
        Ok(match spec.ty {
            FieldType::Raw(norm) => Some(term_query(Term::from_field_text(
                f,
                &normalize_query(norm, value),
            ))),
            FieldType::Text => {
                let mut terms = Vec::new();
                let mut stream = self.analyzer.token_stream(value);
                while let Some(tok) = stream.next() {
                    terms.push((tok.position, Term::from_field_text(f, &tok.text)));
                }
                match terms.len() {
                    0 => None,
                    1 => terms.pop().map(|(_, t)| term_query(t)),
                    _ => Some(Box::new(PhraseQuery::new_with_offset(terms))),
                }
            }
            FieldType::U64 => match value.parse::<u64>() {
                Ok(n) => Some(term_query(Term::from_field_u64(f, n))),
                Err(_) => {
                    return bad(
                        pos,
                        format!("'{}:' needs a whole number, got '{value}'", spec.name),
                    )
                }
            },
            FieldType::Date => {
                return bad(
                    pos,
                    format!("query '{}' with age:, before: or after:", spec.name),
                );
            }
        })
    }
}
