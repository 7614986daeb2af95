//! PostgreSQL's space as both halves of the search routine: pgvector's HNSW
//! index gives the candidates, with their exact vectors in the same rows,
//! and the files of every node holding them are read once per widening, the
//! filters applied by the database (`store/pg/read.rs`).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};

use super::search::{Candidates, Exact, Result, VectorSource};
use super::{Filters, Found};
use crate::store::ContentHash;
use crate::store::pg::{Nearest, PgSpace, SearchFilters};

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
        }
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

    fn candidates(&self, query: &[f32], n: usize) -> Result<Vec<u64>> {
        let exact = self.exact()?;
        let found = self.space.nearest_routed(query, n, &self.filters, exact)?;
        let ids = found.iter().map(|v| v.id).collect();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        for v in found {
            seen.insert(v.id, v);
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

    /// The first ask after a widening reads the holders of every candidate
    /// not asked about yet, in one query.
    fn items(&self, key: &ContentHash) -> Result<Vec<Found>> {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        if !holders.contains_key(key) {
            let wanted: BTreeSet<ContentHash> = {
                let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
                seen.values()
                    .map(|v| v.hash)
                    .filter(|h| !holders.contains_key(h))
                    .chain(std::iter::once(*key))
                    .collect()
            };
            let wanted: Vec<ContentHash> = wanted.into_iter().collect();
            for h in &wanted {
                holders.insert(*h, Vec::new());
            }
            for f in self.space.holders(&wanted, &self.filters)? {
                holders.entry(f.hash).or_default().push(Found {
                    node: Some(f.node),
                    path: PathBuf::from(f.path),
                });
            }
        }
        Ok(holders.get(key).cloned().unwrap_or_default())
    }
}
