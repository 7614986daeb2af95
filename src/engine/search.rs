//! The one search routine: candidates → rescoring → filters → widening.
//!
//! An approximate index answers *candidates* (ids, best first, from its 8-bit
//! copies); a [`VectorSource`] gives each candidate's exact f32 vector and the
//! items (paths) that hold it. Hits get the exact cosine, filters apply to
//! items, and the fetch widens 4× until `limit` items pass or the candidates
//! run out. The daemon, the benchmark and any other backend call this, so
//! what is measured is what is served (qdrant's shard owns the same steps
//! over its segments).

use std::borrow::Cow;

/// Why a search failed. Messages name what failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("rescoring: {0}")]
    Rescoring(String),
}

/// Result alias for this module.
pub type Result<T, E = SearchError> = std::result::Result<T, E>;

/// Where candidates come from: an approximate nearest-neighbour index.
pub trait Candidates: Sync {
    /// Live vectors: the most candidates there can be.
    fn live(&self) -> usize;
    /// Up to `n` ids nearest to `query`, best first.
    fn candidates(&self, query: &[f32], n: usize) -> Result<Vec<u64>>;
    /// True when candidates come ranked by their exact cosine (an index over
    /// the f32 vectors, as pgvector's is): rescoring then only confirms the
    /// order, and `limit` of them, with a few more for float ties, suffice.
    fn ranks_exactly(&self) -> bool {
        false
    }
    /// True when a fetch of fewer than `n` candidates returns the first of
    /// a fetch of `n`, and that fetch is sorted through its `n`th: the
    /// index's course does not depend on how many are asked for (pgvector's
    /// walk up to its `ef_search`, IVFFlat's probed lists while they hold
    /// `n`). With [`Candidates::ranks_exactly`], a first page then needs
    /// only as many candidates as it shows, not its whole block.
    fn fetches_nest(&self, _n: usize) -> Result<bool> {
        Ok(false)
    }
}

/// Candidates past `limit` fetched from an exactly ranking index: ties
/// within float rounding (f32 in the index, f64 here) may straddle the cut.
const EXACT_MARGIN: usize = 4;

impl Candidates for crate::index::VectorIndex {
    fn live(&self) -> usize {
        self.len()
    }
    fn candidates(&self, query: &[f32], n: usize) -> Result<Vec<u64>> {
        Ok(self
            .search(query, n)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }
}

/// A candidate's exact vector, and what ties it to its items.
pub struct Exact<'a, K> {
    pub key: K,
    pub vector: Cow<'a, [f32]>,
}

/// Where candidates' exact vectors, and the items holding them, come from.
pub trait VectorSource: Sync {
    /// What ties a vector to its items (the store's content hash).
    type Key: Send;
    /// One hit: every item holding a vector is a hit of its own.
    type Item: Ord + Clone + Send;
    /// The f32 vector of `id` and its key; `None`, or a key without items,
    /// if it was deleted since the index answered.
    fn vector(&self, id: u64) -> Result<Option<Exact<'_, Self::Key>>>;
    /// The items that hold `key`'s vector.
    fn items(&self, key: &Self::Key) -> Result<Vec<Self::Item>>;
}

/// One search: a query vector, how many items, and the filters.
pub struct Query<'a, I> {
    pub vector: &'a [f32],
    pub limit: usize,
    /// Hits scoring below this are dropped (and end the search: scores only fall).
    pub min_score: Option<f32>,
    /// Only items this accepts are hits (e.g. a path prefix).
    pub accept: Option<&'a (dyn Fn(&I) -> bool + Sync)>,
}

/// Approximate hits to fetch so that `limit` of them, rescored with exact
/// f32 cosines, match exact search: 8-bit scores swap near-ties across the
/// `limit`-th place, and a walk's extra candidates are nearly free. Large
/// limits fetch twice as many, since each candidate is a store read
/// (`benches/results/HISTORY.md`: 100 candidates against 32 at 100k and 1M).
pub fn candidates_for(limit: usize) -> usize {
    limit.saturating_mul(2).max(limit.saturating_add(90))
}

/// The best `limit` items for `query` with their exact cosine scores, best
/// first, ties by item.
pub fn search<C, S>(
    index: &C,
    source: &S,
    query: &Query<'_, S::Item>,
) -> Result<Vec<(S::Item, f32)>>
where
    C: Candidates + ?Sized,
    S: VectorSource,
{
    search_leading(index, source, query, query.limit)
}

/// The leading `need` (≤ `query.limit`) items of [`search`]'s answer, the
/// same items in the same order, with the items of only as many candidates
/// looked up as those need: a first page of 10 cut from a block of
/// [`PAGE_BLOCK`] reads the paths of ~10 candidates, not of 100 (each a store
/// read). Returns at least `need` items where `search` has them, and may
/// return more.
fn search_leading<C, S>(
    index: &C,
    source: &S,
    query: &Query<'_, S::Item>,
    need: usize,
) -> Result<Vec<(S::Item, f32)>>
where
    C: Candidates + ?Sized,
    S: VectorSource,
{
    let limit = query.limit;
    let live = index.live();
    if limit == 0 || live == 0 {
        return Ok(Vec::new());
    }
    let need = need.clamp(1, limit);
    let full = if index.ranks_exactly() {
        limit.saturating_add(EXACT_MARGIN)
    } else {
        candidates_for(limit)
    }
    .min(live);
    // An exactly ranking index whose short fetches lead its long ones gives
    // the leading `need` from `need` candidates (plus the tie margin): each
    // is a row read on PostgreSQL, so a first page reads ~14, not ~104.
    let short = need.saturating_add(EXACT_MARGIN);
    let mut leading_only = query.accept.is_none()
        && index.ranks_exactly()
        && short < full
        && index.fetches_nest(full)?;
    let mut fetch = if leading_only { short } else { full };
    loop {
        let found = index.candidates(query.vector, fetch)?;
        let exhausted = found.len() < fetch || fetch >= live;
        let scored = rescored(source, query.vector, &found)?;
        // Unfiltered, every live candidate holds at least one item (a vector
        // leaves the store with its last path), so `limit` candidates fill
        // the search without looking: only the leading `need` are looked up.
        let fills = query.accept.is_none() && scored.len() >= limit;
        let cut = if fills || leading_only { need } else { limit };
        let mut hits: Vec<(S::Item, f32)> = Vec::new();
        // A vector deleted as the index answered may read back beside its
        // content's new one (the same content added again): one hit each.
        let mut seen = std::collections::BTreeSet::new();
        let mut below_min = false;
        let mut cut_below = false;
        for (key, score) in scored {
            if query.min_score.is_some_and(|m| score < m) {
                below_min = true;
                break;
            }
            // Candidates come best first: once `cut` hits are in, one
            // scoring below the cut-th cannot enter (a tie still can, by
            // item order), so the rest need no item lookups.
            if hits.len() >= cut && score < hits[cut - 1].1 {
                cut_below = true;
                break;
            }
            for item in source.items(&key)? {
                if query.accept.is_none_or(|accept| accept(&item)) && seen.insert(item.clone()) {
                    hits.push((item, score));
                }
            }
        }
        // A short fetch holds the leading `need` only once it also holds a
        // candidate scoring below them (or the index ran out): copies of
        // one photo tie exactly, and the index returns ties in no order,
        // so a tie group may run on past the fetch's end.
        let done = if leading_only {
            cut_below || exhausted || below_min
        } else {
            fills || hits.len() >= limit || exhausted || below_min
        };
        if done {
            hits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            hits.truncate(limit);
            return Ok(hits);
        }
        // Not settled by the short fetch (a tie past its end, or candidates
        // deleted as the index answered): the whole block, as without it.
        fetch = if leading_only {
            full
        } else {
            fetch.saturating_mul(4).min(live)
        };
        leading_only = false;
    }
}

/// The smallest search pages are cut from (see [`search_page`]).
pub const PAGE_BLOCK: usize = 100;

/// Hits `offset .. offset + limit` of `query` (its own `limit` is ignored).
///
/// With an approximate index, a search for more hits may rank an item a
/// smaller search missed ahead of ones it returned, so cutting page 2 from a
/// search of 20 and page 1 from a search of 10 could repeat or skip an item.
/// Pages are therefore cut from searches of fixed sizes, [`PAGE_BLOCK`] then
/// four times larger each: every page of a query reads the same leading
/// blocks, and each block only adds the items the ones before did not have.
/// A first page of 10 costs a search of 100, which rescores ~100 more
/// candidates than a search of 10 (the index walk is the same at the default
/// `ef_search`), but looks up the items of only the ~10 it shows when no
/// filter applies (`search_leading`). On an index that ranks exactly and
/// whose fetches nest (pgvector's), it reads only the ~14 candidates it
/// needs: the block's first rows are a short fetch's.
pub fn search_page<C, S>(
    index: &C,
    source: &S,
    query: &Query<'_, S::Item>,
    offset: usize,
    limit: usize,
) -> Result<Vec<(S::Item, f32)>>
where
    C: Candidates + ?Sized,
    S: VectorSource,
{
    if limit == 0 {
        return Ok(Vec::new());
    }
    let want = offset.saturating_add(limit);
    let mut shown: Vec<(S::Item, f32)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut block = PAGE_BLOCK;
    loop {
        let block_query = Query {
            limit: block,
            ..*query
        };
        // The first block's leading items are the page's own; a later
        // block's new items are only known once its whole answer is.
        let hits = if shown.is_empty() {
            search_leading(index, source, &block_query, want.min(block))?
        } else {
            search(index, source, &block_query)?
        };
        let exhausted = hits.len() < block;
        for (item, score) in hits {
            if seen.insert(item.clone()) {
                shown.push((item, score));
            }
        }
        if shown.len() >= want || exhausted {
            break;
        }
        block = block.saturating_mul(4);
    }
    Ok(shown.into_iter().skip(offset).take(limit).collect())
}

/// Exact cosines of the candidates, best first (ties by id); deleted ones
/// are dropped. Each candidate is a source read (a store read once the store
/// outgrows its cache), so two threads share them when there are many: a
/// query is otherwise one thread.
fn rescored<S: VectorSource>(source: &S, q: &[f32], found: &[u64]) -> Result<Vec<(S::Key, f32)>> {
    let qn = norm(q);
    let score = |ids: &[u64]| -> Result<Vec<(u64, S::Key, f32)>> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(Exact { key, vector: v }) = source.vector(id)? {
                let dot: f64 = q
                    .iter()
                    .zip(v.iter())
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                out.push((id, key, (dot / (qn * norm(&v))).min(1.0) as f32));
            }
        }
        Ok(out)
    };
    let mut out = if found.len() >= PARALLEL_RESCORING_MIN {
        let (a, b) = found.split_at(found.len() / 2);
        std::thread::scope(|s| {
            let other = s.spawn(|| score(b));
            let mut out = score(a)?;
            let rest = other
                .join()
                .map_err(|_| SearchError::Rescoring("thread panicked".into()))??;
            out.extend(rest);
            Ok::<_, SearchError>(out)
        })?
    } else {
        score(found)?
    };
    out.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
    Ok(out
        .into_iter()
        .map(|(_, key, score)| (key, score))
        .collect())
}

/// Fewer candidates are rescored on the calling thread alone.
const PARALLEL_RESCORING_MIN: usize = 16;

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt()
}

/// Rows of one flat f32 table, row `i` under id `i + 1`, each its own item:
/// the benchmark's stored vectors, and a source for tests.
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub dim: usize,
}

impl VectorSource for Rows<'_> {
    type Key = u64;
    type Item = u64;
    fn vector(&self, id: u64) -> Result<Option<Exact<'_, u64>>> {
        let row = (id as usize)
            .checked_sub(1)
            .and_then(|r| self.data.get(r * self.dim..(r + 1) * self.dim));
        Ok(row.map(|v| Exact {
            key: id,
            vector: Cow::Borrowed(v),
        }))
    }
    fn items(&self, key: &u64) -> Result<Vec<u64>> {
        Ok(vec![*key])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{IndexParams, VectorIndex};

    #[test]
    fn candidates_leave_room_beyond_the_limit() {
        for k in [0, 1, 10, 89, 90, 91, 1000, usize::MAX / 2, usize::MAX] {
            let c = candidates_for(k);
            assert!(c >= k, "{k}");
            assert!(
                c >= k.saturating_add(90) && c >= k.saturating_mul(2),
                "{k}: {c}"
            );
        }
    }

    /// Deterministic unit vectors around a few directions.
    fn rows(n: usize, dim: usize) -> Vec<f32> {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        };
        let mut out = Vec::with_capacity(n * dim);
        for i in 0..n {
            let mut v: Vec<f32> = (0..dim)
                .map(|d| next() + if d == i % 7 { 2.0 } else { 0.0 })
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            out.extend(v);
        }
        out
    }

    fn index_of(data: &[f32], dim: usize) -> VectorIndex {
        let idx = VectorIndex::new(dim, IndexParams::default(), data.len() / dim).unwrap();
        let items: Vec<(u64, &[f32])> = data
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, v)| (i as u64 + 1, v))
            .collect();
        idx.insert_batch(&items).unwrap();
        idx
    }

    /// Exact cosine order over the rows that `accept` lets through.
    fn exact(data: &[f32], dim: usize, q: &[f32], accept: impl Fn(u64) -> bool) -> Vec<(u64, f32)> {
        let source = Rows { data, dim };
        let mut all: Vec<(u64, f32)> = (1..=(data.len() / dim) as u64)
            .filter(|id| accept(*id))
            .map(|id| {
                let v = source.vector(id).unwrap().unwrap().vector;
                let dot: f64 = q
                    .iter()
                    .zip(v.iter())
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                (id, (dot / (norm(q) * norm(&v))).min(1.0) as f32)
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all
    }

    /// Pages of an approximate index, concatenated, are one long page: no
    /// item twice, none skipped, across the block boundary at 100 too.
    #[test]
    fn pages_of_an_approximate_index_neither_repeat_nor_skip() {
        let dim = 16;
        let data = rows(3000, dim);
        let idx = index_of(&data, dim);
        let source = Rows { data: &data, dim };
        let q = &data[5 * dim..6 * dim];
        let query = Query {
            vector: q,
            limit: 0,
            min_score: None,
            accept: None,
        };
        let long = search_page(&idx, &source, &query, 0, 230).unwrap();
        assert_eq!(long.len(), 230);
        let ids: std::collections::BTreeSet<u64> = long.iter().map(|h| h.0).collect();
        assert_eq!(ids.len(), long.len(), "an item twice");
        for per_page in [7, 10, 33] {
            let mut paged = Vec::new();
            while paged.len() < 230 {
                let want = per_page.min(230 - paged.len());
                let page = search_page(&idx, &source, &query, paged.len(), want).unwrap();
                assert_eq!(page.len(), want);
                paged.extend(page);
            }
            assert_eq!(paged, long, "pages of {per_page}");
        }
        // The first page is the best of the first block, in exact order.
        let first = search_page(&idx, &source, &query, 0, 10).unwrap();
        let block = search(
            &idx,
            &source,
            &Query {
                limit: PAGE_BLOCK,
                ..query
            },
        )
        .unwrap();
        assert_eq!(first[..], block[..10]);
        assert!(search_page(&idx, &source, &query, 5, 0).unwrap().is_empty());
    }

    #[test]
    fn hits_carry_exact_scores_in_exact_order() {
        let dim = 16;
        let data = rows(500, dim);
        let idx = index_of(&data, dim);
        let source = Rows { data: &data, dim };
        let q = &data[3 * dim..4 * dim];
        let hits = search(
            &idx,
            &source,
            &Query {
                vector: q,
                limit: 10,
                min_score: None,
                accept: None,
            },
        )
        .unwrap();
        let want = exact(&data, dim, q, |_| true);
        assert_eq!(hits.len(), 10);
        assert_eq!(hits[0].0, 4, "a stored vector finds itself first");
        for (h, w) in hits.iter().zip(&want) {
            assert!((h.1 - w.1).abs() < 1e-6, "{h:?} vs {w:?}");
        }
        assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
    }

    #[test]
    fn a_selective_filter_widens_until_it_has_its_hits() {
        let dim = 16;
        let data = rows(2000, dim);
        let idx = index_of(&data, dim);
        let source = Rows { data: &data, dim };
        let q = &data[..dim];
        // One row in 250 passes: far beyond the first fetch of 100.
        let accept = |id: &u64| id.is_multiple_of(250);
        let hits = search(
            &idx,
            &source,
            &Query {
                vector: q,
                limit: 5,
                min_score: None,
                accept: Some(&accept),
            },
        )
        .unwrap();
        let want: Vec<u64> = exact(&data, dim, q, |id| id.is_multiple_of(250))
            .into_iter()
            .take(5)
            .map(|h| h.0)
            .collect();
        let got: Vec<u64> = hits.iter().map(|h| h.0).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn min_score_stops_the_search_and_drops_what_is_below() {
        let dim = 16;
        let data = rows(300, dim);
        let idx = index_of(&data, dim);
        let source = Rows { data: &data, dim };
        let q = &data[..dim];
        let all = exact(&data, dim, q, |_| true);
        let min = all[20].1;
        let hits = search(
            &idx,
            &source,
            &Query {
                vector: q,
                limit: 100,
                min_score: Some(min),
                accept: None,
            },
        )
        .unwrap();
        assert!(hits.iter().all(|h| h.1 >= min));
        assert!(hits.len() >= 18 && hits.len() <= 21, "{}", hits.len());
        let none = search(
            &idx,
            &source,
            &Query {
                vector: q,
                limit: 0,
                min_score: None,
                accept: None,
            },
        )
        .unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn every_item_of_a_vector_is_a_hit_and_deleted_vectors_are_dropped() {
        /// Two items per vector; vector 2 was deleted after the index answered.
        struct Twice<'a>(Rows<'a>);
        impl VectorSource for Twice<'_> {
            type Key = u64;
            type Item = (u64, u8);
            fn vector(&self, id: u64) -> Result<Option<Exact<'_, u64>>> {
                if id == 2 {
                    return Ok(None);
                }
                self.0.vector(id)
            }
            fn items(&self, key: &u64) -> Result<Vec<(u64, u8)>> {
                Ok(vec![(*key, 0), (*key, 1)])
            }
        }
        let dim = 16;
        let data = rows(200, dim);
        let idx = index_of(&data, dim);
        let source = Twice(Rows { data: &data, dim });
        let hits = search(
            &idx,
            &source,
            &Query {
                vector: &data[dim..2 * dim],
                limit: 6,
                min_score: None,
                accept: None,
            },
        )
        .unwrap();
        assert_eq!(hits.len(), 6);
        assert!(hits.iter().all(|((id, _), _)| *id != 2));
        // Both items of a vector share its score, in item order.
        assert_eq!(hits[0].0.0, hits[1].0.0);
        assert_eq!((hits[0].0.1, hits[1].0.1), (0, 1));
        assert_eq!(hits[0].1, hits[1].1);
    }

    /// Counts the item lookups of a source.
    struct Counting<'a, S> {
        inner: &'a S,
        items: std::sync::atomic::AtomicUsize,
    }

    impl<S: VectorSource> VectorSource for Counting<'_, S> {
        type Key = S::Key;
        type Item = S::Item;
        fn vector(&self, id: u64) -> Result<Option<Exact<'_, S::Key>>> {
            self.inner.vector(id)
        }
        fn items(&self, key: &S::Key) -> Result<Vec<S::Item>> {
            self.items
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.items(key)
        }
    }

    /// A first page is cut from a block of 100 but looks up the items of
    /// only the candidates it shows; a filtered one still looks up what it
    /// must to know the block.
    #[test]
    fn a_first_page_looks_up_only_the_items_it_shows() {
        let dim = 16;
        let data = rows(3000, dim);
        let idx = index_of(&data, dim);
        let rows = Rows { data: &data, dim };
        let source = Counting {
            inner: &rows,
            items: Default::default(),
        };
        let query = Query {
            vector: &data[7 * dim..8 * dim],
            limit: 0,
            min_score: None,
            accept: None,
        };
        let page = search_page(&idx, &source, &query, 0, 10).unwrap();
        let looked = source.items.swap(0, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(page.len(), 10);
        assert!(looked <= 11, "{looked} item lookups for a page of 10");
        let block = search(
            &idx,
            &rows,
            &Query {
                limit: PAGE_BLOCK,
                ..query
            },
        )
        .unwrap();
        assert_eq!(page[..], block[..10]);
        let odd = |id: &u64| id % 2 == 1;
        let filtered = Query {
            accept: Some(&odd),
            ..query
        };
        let page = search_page(&idx, &source, &filtered, 0, 10).unwrap();
        assert!(page.iter().all(|(id, _)| odd(id)));
        assert!(source.items.load(std::sync::atomic::Ordering::Relaxed) >= 100);
    }

    /// The leading items of a search are those of the whole search, in its
    /// order, for any number of them: with keys of several items and equal
    /// scores across keys (the same vector stored twice), where the cut
    /// falls inside a tie.
    #[test]
    fn leading_items_are_the_whole_searchs() {
        /// Key `k` holds items (1000 - k, 0..k % 3 + 1), so a tie's later
        /// key has the first items; rows 2i and 2i + 1 are equal.
        struct Tied<'a>(Rows<'a>);
        impl VectorSource for Tied<'_> {
            type Key = u64;
            type Item = (u64, u8);
            fn vector(&self, id: u64) -> Result<Option<Exact<'_, u64>>> {
                self.0.vector(id)
            }
            fn items(&self, key: &u64) -> Result<Vec<(u64, u8)>> {
                Ok((0..(key % 3) as u8 + 1).map(|i| (1000 - *key, i)).collect())
            }
        }
        let dim = 16;
        let half = rows(400, dim);
        let data: Vec<f32> = half
            .chunks_exact(dim)
            .flat_map(|r| r.iter().chain(r).copied())
            .collect();
        let idx = index_of(&data, dim);
        let source = Tied(Rows { data: &data, dim });
        for row in [0, 9, 301] {
            let query = Query {
                vector: &data[row * dim..(row + 1) * dim],
                limit: PAGE_BLOCK,
                min_score: None,
                accept: None,
            };
            let whole = search(&idx, &source, &query).unwrap();
            assert_eq!(whole.len(), PAGE_BLOCK);
            assert_eq!(whole[0].1, whole[1].1, "a row and its copy tie");
            for need in [1, 2, 5, 10, 33, PAGE_BLOCK] {
                let lead = search_leading(&idx, &source, &query, need).unwrap();
                assert!(lead.len() >= need, "{need}: {}", lead.len());
                assert_eq!(lead[..need], whole[..need], "row {row}, need {need}");
            }
        }
    }

    /// A query with no filter or score floor (pages set their own limit).
    fn unfiltered(vector: &[f32]) -> Query<'_, u64> {
        Query {
            vector,
            limit: 0,
            min_score: None,
            accept: None,
        }
    }

    /// An exactly ranking index over `Rows` (brute force), recording what
    /// each fetch asked for; `gone` ids read back deleted. Ties come
    /// highest id first, as no index promises otherwise.
    struct ExactRows<'a> {
        rows: Rows<'a>,
        nests: bool,
        gone: Vec<u64>,
        asked: std::sync::Mutex<Vec<usize>>,
    }

    impl<'a> ExactRows<'a> {
        fn new(data: &'a [f32], dim: usize, nests: bool) -> Self {
            Self {
                rows: Rows { data, dim },
                nests,
                gone: Vec::new(),
                asked: Default::default(),
            }
        }
        fn asked(&self) -> Vec<usize> {
            std::mem::take(&mut *self.asked.lock().unwrap())
        }
    }

    impl Candidates for ExactRows<'_> {
        fn live(&self) -> usize {
            self.rows.data.len() / self.rows.dim
        }
        fn candidates(&self, query: &[f32], n: usize) -> Result<Vec<u64>> {
            self.asked.lock().unwrap().push(n);
            let mut all = exact(self.rows.data, self.rows.dim, query, |_| true);
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
            Ok(all.into_iter().take(n).map(|h| h.0).collect())
        }
        fn ranks_exactly(&self) -> bool {
            true
        }
        fn fetches_nest(&self, _n: usize) -> Result<bool> {
            Ok(self.nests)
        }
    }

    impl VectorSource for ExactRows<'_> {
        type Key = u64;
        type Item = u64;
        fn vector(&self, id: u64) -> Result<Option<Exact<'_, u64>>> {
            if self.gone.contains(&id) {
                return Ok(None);
            }
            self.rows.vector(id)
        }
        fn items(&self, key: &u64) -> Result<Vec<u64>> {
            self.rows.items(key)
        }
    }

    /// On an exactly ranking index whose fetches nest (pgvector's), a first
    /// page of 10 asks for 14 candidates, not its block's 104, and is still
    /// the block's first 10; later pages still neither repeat nor skip. An
    /// index that does not nest is asked for the block.
    #[test]
    fn a_first_page_of_a_nesting_index_reads_only_what_it_shows() {
        let dim = 16;
        let data = rows(2000, dim);
        let q = &data[11 * dim..12 * dim];
        let query = unfiltered(q);
        let block_query = Query {
            limit: PAGE_BLOCK,
            ..query
        };
        let nesting = ExactRows::new(&data, dim, true);
        let block = search(&nesting, &nesting, &block_query).unwrap();
        assert_eq!(nesting.asked(), [PAGE_BLOCK + EXACT_MARGIN]);
        let page = search_page(&nesting, &nesting, &query, 0, 10).unwrap();
        assert_eq!(nesting.asked(), [10 + EXACT_MARGIN]);
        assert_eq!(page[..], block[..10]);
        assert_eq!(page[0].0, 12, "a stored vector finds itself first");
        let long = search_page(&nesting, &nesting, &query, 0, 230).unwrap();
        let mut paged = Vec::new();
        while paged.len() < 230 {
            let want = 10.min(230 - paged.len());
            paged.extend(search_page(&nesting, &nesting, &query, paged.len(), want).unwrap());
        }
        assert_eq!(paged, long);

        let plain = ExactRows::new(&data, dim, false);
        assert_eq!(search_page(&plain, &plain, &query, 0, 10).unwrap(), page);
        assert_eq!(plain.asked(), [PAGE_BLOCK + EXACT_MARGIN]);
    }

    /// When candidates of the short fetch were deleted as the index
    /// answered, leaving fewer hits than the page shows, the block is
    /// fetched after all, and the page is the block's.
    #[test]
    fn a_short_fetch_missing_deleted_candidates_falls_back_to_the_block() {
        let dim = 16;
        let data = rows(2000, dim);
        let q = &data[..dim];
        let query = unfiltered(q);
        let mut source = ExactRows::new(&data, dim, true);
        let order = exact(&data, dim, q, |_| true);
        source.gone = order[..6].iter().map(|h| h.0).collect();
        let page = search_page(&source, &source, &query, 0, 10).unwrap();
        // (The block, 6 short of its 100, widens as it always has.)
        let asked = source.asked();
        assert!(
            asked.starts_with(&[14, PAGE_BLOCK + EXACT_MARGIN]),
            "{asked:?}"
        );
        let want: Vec<u64> = order[6..16].iter().map(|h| h.0).collect();
        assert_eq!(page.iter().map(|h| h.0).collect::<Vec<_>>(), want);
        // Fewer deleted than the margin: the short fetch still holds the page.
        source.gone.truncate(3);
        let page = search_page(&source, &source, &query, 0, 10).unwrap();
        assert_eq!(source.asked(), [14]);
        let want: Vec<u64> = order[3..13].iter().map(|h| h.0).collect();
        assert_eq!(page.iter().map(|h| h.0).collect::<Vec<_>>(), want);
    }

    /// Twenty copies of one photo tie exactly, and the index returns them
    /// in its own order: a short fetch that ends inside the tie does not
    /// settle a page, so pages of 10 are still one long page.
    #[test]
    fn a_tie_running_past_a_short_fetch_reads_the_block() {
        let dim = 16;
        let mut data = rows(2000, dim);
        let copy: Vec<f32> = data[..dim].iter().map(|x| x + 0.01).collect();
        for r in 1..=20 {
            data[r * dim..(r + 1) * dim].copy_from_slice(&copy);
        }
        let q = data[..dim].to_vec();
        let query = unfiltered(&q);
        let source = ExactRows::new(&data, dim, true);
        let long = search_page(&source, &source, &query, 0, 30).unwrap();
        let ids: Vec<u64> = long.iter().map(|h| h.0).take(21).collect();
        assert_eq!(
            ids,
            (1..=21).collect::<Vec<u64>>(),
            "the copies in item order"
        );
        source.asked();
        let mut paged = search_page(&source, &source, &query, 0, 10).unwrap();
        assert_eq!(source.asked(), [14, PAGE_BLOCK + EXACT_MARGIN]);
        paged.extend(search_page(&source, &source, &query, 10, 10).unwrap());
        paged.extend(search_page(&source, &source, &query, 20, 10).unwrap());
        assert_eq!(paged, long);
    }

    /// A vector deleted as the index answered can read back beside its
    /// content's new vector (the same key under another id): its items are
    /// hits once in a search, not only in a page (which drops items an
    /// earlier block showed).
    #[test]
    fn a_key_read_back_twice_is_one_hit() {
        struct Stale<'a>(Rows<'a>);
        impl VectorSource for Stale<'_> {
            type Key = u64;
            type Item = u64;
            fn vector(&self, id: u64) -> Result<Option<Exact<'_, u64>>> {
                // Ids 1 and 2 hold the same content: key 1.
                Ok(self.0.vector(id)?.map(|e| Exact {
                    key: if id == 2 { 1 } else { e.key },
                    vector: e.vector,
                }))
            }
            fn items(&self, key: &u64) -> Result<Vec<u64>> {
                Ok(vec![*key])
            }
        }
        let dim = 16;
        let mut data = rows(200, dim);
        let first: Vec<f32> = data[..dim].to_vec();
        data[dim..2 * dim].copy_from_slice(&first);
        let idx = index_of(&data, dim);
        let source = Stale(Rows { data: &data, dim });
        for accept in [
            None,
            Some(&(|_: &u64| true) as &(dyn Fn(&u64) -> bool + Sync)),
        ] {
            let hits = search(
                &idx,
                &source,
                &Query {
                    vector: &first,
                    limit: 10,
                    min_score: None,
                    accept,
                },
            )
            .unwrap();
            let items: std::collections::BTreeSet<u64> = hits.iter().map(|h| h.0).collect();
            assert_eq!(items.len(), hits.len(), "an item twice: {hits:?}");
            assert_eq!(hits[0].0, 1);
            assert_eq!(hits.len(), 10);
        }
    }
}
