//! PostgreSQL's space as both halves of the search routine: pgvector's index
//! gives the candidates, with their exact vectors and the files of every
//! node holding them in the same statement, the filters applied by the
//! database (`store/pg/read.rs`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use super::search::{Candidates, Exact, Result, VectorSource};
use super::{Filters, Found};
use crate::store::ContentHash;
use crate::store::pg::{Holder, Nearest, PgSpace, SearchFilters};

/// One search's view of a PostgreSQL space.
pub struct PgSource<'a> {
    space: &'a PgSpace,
    filters: SearchFilters,
    /// Candidates the index returned, by id.
    seen: Mutex<BTreeMap<u64, Nearest>>,
    /// Files holding each content the search asked about.
    holders: Mutex<BTreeMap<ContentHash, Vec<Found>>>,
    /// Whether the filter ranks its vectors exactly, decided at the first
    /// ask: widenings keep the route.
    exact: OnceLock<bool>,
    /// Statements that read files apart from the candidates' own.
    file_reads: AtomicUsize,
}

impl<'a> PgSource<'a> {
    pub fn new(space: &'a PgSpace, filters: &Filters) -> Self {
        Self {
            space,
            filters: SearchFilters {
                path_prefix: filters
                    .path_prefix
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
                taken_after: filters.taken_after,
                taken_before: filters.taken_before,
            },
            seen: Mutex::default(),
            holders: Mutex::default(),
            exact: OnceLock::new(),
            file_reads: AtomicUsize::new(0),
        }
    }

    /// How many statements this search spent reading files apart from the
    /// ones that found its candidates (none, unless asked about a content
    /// it never fetched).
    pub fn file_reads(&self) -> usize {
        self.file_reads.load(Ordering::Relaxed)
    }
}

impl PgSource<'_> {
    /// Whether the filter ranks its vectors exactly, decided once.
    fn exact(&self) -> Result<bool> {
        if let Some(&exact) = self.exact.get() {
            return Ok(exact);
        }
        let exact = self.space.ranks_exactly(&self.filters)?;
        Ok(*self.exact.get_or_init(|| exact))
    }
}

impl Candidates for PgSource<'_> {
    /// The walk stops by itself when the space (or the filter) runs out, so
    /// no count is needed to bound it.
    fn live(&self) -> usize {
        usize::MAX >> 8
    }

    /// pgvector's indexes (HNSW, IVFFlat) hold the f32 vectors and order
    /// by their exact cosine distance: no 8-bit near-ties to rescore past
    /// the limit, so the rows (each with its 2 KB vector) a search of 10
    /// fetches are ~14, not ~100.
    fn ranks_exactly(&self) -> bool {
        true
    }

    /// Unfiltered, the index's own fetches nest (`PgSpace::fetches_nest`);
    /// a selective filter's exact ranking always does. A filtered walk does
    /// not: the filter pushes it past its first sorted batch, after which
    /// `relaxed_order` no longer sorts.
    fn fetches_nest(&self, n: usize) -> Result<bool> {
        if self.filters.is_empty() {
            Ok(self.space.fetches_nest(n)?)
        } else {
            self.exact()
        }
    }

    /// The candidates come with their files, which are kept for `items`,
    /// so that a search asks the database once per widening.
    fn candidates(&self, query: &[f32], n: usize) -> Result<Vec<u64>> {
        let exact = self.exact()?;
        let found = self.space.nearest_routed(query, n, &self.filters, exact)?;
        let ids = found.iter().map(|c| c.nearest.id).collect();
        // `items`' order: holders, then seen.
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        for c in found {
            // A content read back under two ids (deleted and added again as
            // the search ran) keeps its first rows' files, not both.
            holders
                .entry(c.nearest.hash)
                .or_insert_with(|| c.files.into_iter().map(hit_file).collect());
            seen.insert(c.nearest.id, c.nearest);
        }
        Ok(ids)
    }
}

impl VectorSource for PgSource<'_> {
    type Key = ContentHash;
    type Item = Found;

    fn vector(&self, id: u64) -> Result<Option<Exact<'_, ContentHash>>> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(seen.get(&id).map(|v| Exact {
            key: v.hash,
            vector: Cow::Owned(v.vector.clone()),
        }))
    }

    /// Candidates come with their files; a key the search never fetched
    /// is read alone.
    fn items(&self, key: &ContentHash) -> Result<Vec<Found>> {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = holders.get(key) {
            return Ok(found.clone());
        }
        self.file_reads.fetch_add(1, Ordering::Relaxed);
        let files: Vec<Found> = self
            .space
            .holders(std::slice::from_ref(key), &self.filters)?
            .into_iter()
            .map(hit_file)
            .collect();
        holders.insert(*key, files.clone());
        Ok(files)
    }
}

/// A file holding a candidate, as a search's hit names it.
fn hit_file(h: Holder) -> Found {
    Found {
        node: Some(h.node),
        path: PathBuf::from(h.path),
    }
}
