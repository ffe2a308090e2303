//! The read side of [`IndexStore`]: `get`, `search`, and the anti-entropy calls.
//!
//! `get` is exact at once: the version map says whether the document lives and, until the
//! next commit, holds its JSON (`pending`); after the commit the searcher has it. `search` is
//! near-real-time: it sees what the last commit made visible (≤ `refresh_interval` old).

use std::ops::RangeInclusive;

use serde_json::Value;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::TermQuery;
use tantivy::schema::{IndexRecordOption, Value as _};
use tantivy::{DocAddress, Order, Searcher, TantivyDocument, Term};

use super::compile::Compiler;
use super::store::{IndexStore, KindShared};
use super::{query, ExportedDoc, IndexError, Kind, RangeDigest, Result, SearchResult, StoredDoc};
use crate::locks::RwLockExt;

/// Most results one search returns.
pub const MAX_LIMIT: usize = 10_000;

fn parse_source(kind: Kind, id: &str, source: &str) -> Result<Value> {
    serde_json::from_str(source)
        .map_err(|e| IndexError::internal(format!("stored document {kind}/{id}"), e))
}

fn read_doc(ks: &KindShared, searcher: &Searcher, addr: DocAddress) -> Result<StoredDoc> {
    let kind = ks.schema.kind;
    let doc: TantivyDocument = searcher
        .doc(addr)
        .map_err(|e| IndexError::internal(format!("read stored {kind} document"), e))?;
    let id = doc
        .get_first(ks.schema.id)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let version = doc
        .get_first(ks.schema.version)
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let source = doc
        .get_first(ks.schema.source)
        .and_then(|v| v.as_str())
        .unwrap_or("{}");
    let doc = parse_source(kind, &id, source)?;
    Ok(StoredDoc { id, version, doc })
}

impl IndexStore {
    fn kind(&self, kind: Kind) -> &KindShared {
        &self.shared.kinds[kind.index()]
    }

    /// The live document `kind`/`id`, as of now (tombstones and unknown ids give `None`).
    pub fn get(&self, kind: Kind, id: &str) -> Result<Option<StoredDoc>> {
        let ks = self.kind(kind);
        {
            let vm = ks.versions.read_locked();
            match vm.get(id) {
                None => return Ok(None),
                Some(e) if e.deleted() => return Ok(None),
                Some(_) => {}
            }
            if let Some(p) = vm.pending(id) {
                let doc = parse_source(kind, id, &p.source)?;
                return Ok(Some(StoredDoc {
                    id: id.to_string(),
                    version: p.version,
                    doc,
                }));
            }
        }
        // Not pending: committed, and the reader was reloaded before `pending` was cleared.
        let searcher = ks.reader.searcher();
        let q = TermQuery::new(
            Term::from_field_text(ks.schema.id, id),
            IndexRecordOption::Basic,
        );
        let hits = searcher
            .search(&q, &TopDocs::with_limit(4).order_by_score())
            .map_err(|e| IndexError::internal(format!("get {kind}/{id}"), e))?;
        let mut best: Option<StoredDoc> = None;
        for (_, addr) in hits {
            let d = read_doc(ks, &searcher, addr)?;
            if best.as_ref().is_none_or(|b| b.version < d.version) {
                best = Some(d);
            }
        }
        // A tombstone document has no source; the version map said live, so it is not one.
        Ok(best)
    }

    /// Runs a query in the Gerrit subset; `total` counts every match, `results` holds the
    /// first `limit` (at most [`MAX_LIMIT`]): changes by `updated` descending then change
    /// number descending (as Gerrit), the other kinds by id.
    pub fn search(&self, kind: Kind, q: &str, limit: usize) -> Result<SearchResult> {
        let ks = self.kind(kind);
        let expr = query::parse(q)?;
        let analyzer = ks
            .index
            .tokenizers()
            .get("default")
            .ok_or_else(|| IndexError::internal("search", "no default tokenizer"))?;
        let now = (super::store::now_ms() / 1000) as i64;
        let query = Compiler {
            schema: &ks.schema,
            analyzer,
            now,
        }
        .compile(&expr)?;
        let searcher = ks.reader.searcher();
        let err = |e| IndexError::internal(format!("search {kind}"), e);
        let limit = limit.min(MAX_LIMIT);
        if limit == 0 {
            let total = searcher.search(&query, &Count).map_err(err)?;
            return Ok(SearchResult {
                total,
                results: Vec::new(),
            });
        }
        let top = TopDocs::with_limit(limit);
        let (total, addrs): (usize, Vec<DocAddress>) = match &ks.schema.sort_by_updated {
            Some((updated, number)) => {
                super::topk::top_by_updated(&searcher, query.as_ref(), updated, number, limit)
                    .map_err(err)?
            }
            None => {
                let by = top.order_by_string_fast_field("_id", Order::Asc);
                let (n, hits) = searcher.search(&query, &(Count, by)).map_err(err)?;
                (n, hits.into_iter().map(|(_, a)| a).collect())
            }
        };
        let mut results = Vec::with_capacity(addrs.len());
        for addr in addrs {
            results.push(read_doc(ks, &searcher, addr)?);
        }
        Ok(SearchResult { total, results })
    }

    /// Digest of the buckets in `range` (bucket = first byte of SHA-256(id)); O(buckets).
    pub fn digest(&self, kind: Kind, range: RangeInclusive<u8>) -> RangeDigest {
        self.kind(kind).versions.read_locked().digest(range)
    }

    /// (id, version, deleted) of every document and tombstone of one bucket, sorted by id.
    pub fn entries(&self, kind: Kind, bucket: u8) -> Vec<(String, u64, bool)> {
        self.kind(kind).versions.read_locked().entries(bucket)
    }

    /// The current state of `ids` for a peer: documents with their JSON, tombstones without;
    /// unknown ids are left out.
    pub fn export(&self, kind: Kind, ids: &[String]) -> Result<Vec<ExportedDoc>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let entry = self.kind(kind).versions.read_locked().get(id);
            match entry {
                None => {}
                Some(e) if e.deleted() => out.push(ExportedDoc {
                    id: id.clone(),
                    version: e.version,
                    deleted: true,
                    doc: None,
                    deleted_at: Some(e.deleted_at),
                }),
                Some(_) => {
                    if let Some(d) = self.get(kind, id)? {
                        out.push(ExportedDoc {
                            id: d.id,
                            version: d.version,
                            deleted: false,
                            doc: Some(d.doc),
                            deleted_at: None,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}
