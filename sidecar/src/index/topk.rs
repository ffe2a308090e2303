//! The top-k of a changes search: `updated` descending, then `number` descending, then
//! document address ascending (tantivy's order for the same sort, kept), with the count of
//! every match.
//!
//! Why not tantivy's sort-key collector: it reads both sort values of every match, and
//! documents arrive in ascending doc id, which is ascending `updated` (changes are indexed as
//! they are updated), so with a descending sort almost every match enters its buffer — the
//! buffer's truncations and the value reads were half of a broad query's time. Here each
//! segment's matches are gathered and counted first; a segment whose largest `updated` (a
//! column bound, O(1)) cannot beat the k-th best kept is only counted; segments are visited
//! newest bound first and their matches newest doc first, so the kept set fills with winners
//! early and most matches are refused after one value read.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tantivy::columnar::Column;
use tantivy::query::{EnableScoring, Query};
use tantivy::{DocAddress, DocId, Searcher};

/// Better is greater: newer `updated`, then larger `number`, then the lower address. A missing
/// value is lower than any value (last in the descending order), as tantivy's.
type Key = (Option<i64>, Option<u64>, Reverse<DocAddress>);

/// Matches of one segment, gathered before they are ranked.
struct Gathered {
    docs: Vec<DocId>,
    updated: Vec<Option<i64>>,
}

/// Every match of `query` counted, and the first `limit` (> 0) of them in order.
pub(crate) fn top_by_updated(
    searcher: &Searcher,
    query: &dyn Query,
    updated: &str,
    number: &str,
    limit: usize,
) -> tantivy::Result<(usize, Vec<DocAddress>)> {
    let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
    let mut segments = Vec::with_capacity(searcher.segment_readers().len());
    for (ord, reader) in searcher.segment_readers().iter().enumerate() {
        let ff = reader.fast_fields();
        let updated_col: Option<Column<i64>> = ff.column_opt(updated)?;
        let number_col: Option<Column<u64>> = ff.column_opt(number)?;
        // The largest `updated` any document of the segment can have (None: no values at all).
        let bound = updated_col
            .as_ref()
            .filter(|c| c.values.num_vals() > 0)
            .map(|c| c.max_value());
        segments.push((bound, ord as u32, reader, updated_col, number_col));
    }
    segments.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));

    let mut total = 0usize;
    // A min-heap of the best `limit` keys: its top is the worst kept.
    let mut kept: BinaryHeap<Reverse<Key>> = BinaryHeap::with_capacity(limit + 1);
    let mut g = Gathered {
        docs: Vec::new(),
        updated: Vec::new(),
    };
    for (bound, ord, reader, updated_col, number_col) in segments {
        let worst = (kept.len() == limit).then(|| kept.peek().map(|Reverse(k)| k.0));
        if let Some(Some(worst_updated)) = worst {
            if bound < worst_updated {
                // Nothing here can enter the top: count only.
                total += weight.count(reader)? as usize;
                continue;
            }
        }
        g.docs.clear();
        let alive = reader.alive_bitset();
        weight.for_each_no_score(reader, &mut |block: &[DocId]| match alive {
            Some(a) => g.docs.extend(block.iter().filter(|d| a.is_alive(**d))),
            None => g.docs.extend_from_slice(block),
        })?;
        total += g.docs.len();
        g.updated.clear();
        g.updated.resize(g.docs.len(), None);
        if let Some(col) = &updated_col {
            col.first_vals(&g.docs, &mut g.updated);
        }
        for (&doc, &u) in g.docs.iter().zip(&g.updated).rev() {
            if kept.len() == limit {
                let Some(Reverse(w)) = kept.peek() else { break };
                if u < w.0 {
                    continue;
                }
            }
            let n = number_col.as_ref().and_then(|c| c.first(doc));
            let key = (u, n, Reverse(DocAddress::new(ord, doc)));
            if kept.len() < limit {
                kept.push(Reverse(key));
            } else if kept.peek().is_some_and(|Reverse(w)| key > *w) {
                kept.pop();
                kept.push(Reverse(key));
            }
        }
    }
    // `into_sorted_vec` of `Reverse` keys is best first.
    let addrs = kept
        .into_sorted_vec()
        .into_iter()
        .map(|Reverse((_, _, Reverse(addr)))| addr)
        .collect();
    Ok((total, addrs))
}
