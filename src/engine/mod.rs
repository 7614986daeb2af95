//! One loaded model with its vector space in the store and its HNSW index:
//! what both ingestion and queries work on, below both. Building it loads the
//! index checkpoint and replays only the vectors committed after it, or
//! rebuilds the index from the store when there is no usable checkpoint.
//! [`search`] is the one search routine; [`Engine::search`] runs it over this
//! engine's index and store.

pub mod pg_source;
pub mod search;
mod source;
mod verified;

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use crate::encoder::Encoder;
use crate::index::{IndexParams, VectorIndex};
use crate::store::pg::off_runtime;
use crate::store::{Commit, CommitOutcome, ContentHash, SegmentError, Space, Store, StoreError};

/// Why an engine could not be opened, checkpointed or searched.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    #[error(transparent)]
    Search(#[from] search::SearchError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("this store indexes its vectors itself: there is no in-memory index to rebuild")]
    NoLocalIndex,
}

/// Result alias for this module.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Whether `path` lies under `prefix`, comparing whole components: the
/// semantics the proto documents for `path_prefix` (`/photos/2020` matches
/// `/photos/2020/a.jpg` but not `/photos/2020-old/a.jpg`).
pub fn path_has_prefix(path: &Path, prefix: &Path) -> bool {
    path.starts_with(prefix)
}

pub struct Engine {
    pub encoder: Arc<Encoder>,
    pub store: Store,
    pub space: Space,
    /// Replaced whole by a compaction ([`Engine::swap_in`]); readers take
    /// the current one with [`Engine::index`]. `None` on PostgreSQL, whose
    /// own HNSW index (pgvector) answers candidates.
    index: Option<RwLock<Arc<VectorIndex>>>,
    params: IndexParams,
    /// Where this space's HNSW checkpoint lives.
    pub index_dir: PathBuf,
    /// Ids [`Engine::have_intact_vectors`] has read back intact since the start.
    verified: verified::Verified,
    /// Written from a commit until its vectors are in the index
    /// ([`Engine::commit`]), read while indexed files are counted for
    /// a client ([`Engine::indexed_file_count`]): a file a client sees
    /// counted is one its search finds.
    visible: RwLock<()>,
}

impl Engine {
    /// Opens the model's space (the store's active one) and its index.
    pub fn open(
        encoder: Arc<Encoder>,
        store: Store,
        data_dir: &Path,
        params: IndexParams,
    ) -> Result<Self> {
        let fp = encoder.fingerprint().to_string();
        let dim = encoder.dim();
        let space = store.space(&fp, dim)?;
        let index_dir = index_dir(data_dir, &fp);
        std::fs::create_dir_all(&index_dir).map_err(|source| EngineError::Io {
            path: index_dir.clone(),
            source,
        })?;
        if let (Space::Postgres(s), Store::Postgres(pg)) = (&space, &store) {
            // The space serves whatever happens to its index's upkeep.
            if let Err(e) = off_runtime(|| pg.tend_index(s)) {
                tracing::warn!(table = s.table(), "checking the space's vector index: {e}");
            }
            if !off_runtime(|| pg.has_search_index(s))? {
                if pg.builds_ivfflat() {
                    tracing::info!(
                        table = s.table(),
                        "this space has no IVFFlat index yet: searches scan every vector until it is built, in the background, once the space holds enough vectors"
                    );
                } else {
                    // Left so by a `dualsight migrate` cut short before its
                    // build: searches stay right (exact scans) but slow.
                    tracing::warn!(
                        table = s.table(),
                        "this space has no vector index, so searches scan every vector: run `dualsight migrate` again to finish, or start a daemon with --vector-index (docs/scale-out.md)"
                    );
                }
            }
            tracing::info!(
                vectors = space.vector_count()?,
                "searching through pgvector's index"
            );
            return Ok(Self {
                encoder,
                store,
                space,
                index: None,
                params,
                index_dir,
                verified: verified::Verified::default(),
                visible: RwLock::new(()),
            });
        }
        let started = Instant::now();
        let loaded = match VectorIndex::load(&index_dir, &fp, dim) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(error = %e, "index checkpoint unusable: rebuilding from the store");
                None
            }
        };
        let (index, from, (replayed, stale)) = match loaded {
            Some((index, last_id)) => {
                let caught_up = catch_up(&index, &store, &space, last_id + 1)?;
                (index, last_id + 1, caught_up)
            }
            None => {
                let index = rebuild(&store, &space, params, u64::MAX, &index_dir)?;
                let built = index.len();
                (index, 0, (built, 0))
            }
        };
        tracing::info!(
            vectors = index.len(),
            replayed,
            stale,
            from_checkpoint = from > 0,
            graph_loading = index.is_warming(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index ready"
        );
        Ok(Self {
            encoder,
            store,
            space,
            index: Some(RwLock::new(Arc::new(index))),
            params,
            index_dir,
            verified: verified::Verified::default(),
            visible: RwLock::new(()),
        })
    }

    /// Whether each content has a vector in this space that reads back
    /// intact, in their order, with the ids looked up in one statement. A
    /// damaged one (its segment record fails its checksum) is forgotten by
    /// the store and the index, so the caller embeds the file again: the
    /// startup scan, which asks this of every indexed file, is the repair.
    /// Each vector is read once per start; later asks only look it up.
    pub fn have_intact_vectors(&self, hashes: &[ContentHash]) -> Result<Vec<bool>> {
        let ids = self.space.vector_ids_for_hashes(hashes)?;
        ids.into_iter().map(|id| self.intact(id)).collect()
    }

    /// Whether vector `id` (if any) reads back intact; a damaged one is forgotten.
    fn intact(&self, id: Option<u64>) -> Result<bool> {
        let Some(id) = id else {
            return Ok(false);
        };
        // PostgreSQL checks its own pages: a vector it has is intact.
        if self.verified.contains(id) || self.index.is_none() {
            return Ok(true);
        }
        match self.space.vector(id) {
            Ok(v) => {
                if v.is_some() {
                    self.verified.insert(id);
                }
                Ok(v.is_some())
            }
            Err(StoreError::Segment(e @ SegmentError::Damaged { .. })) => {
                tracing::warn!(error = %e, "damaged vector: forgetting it to embed its files again");
                self.store.forget_vectors(&self.space, &[id])?;
                self.apply(&[], [id]);
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the index checkpoint covering every vector committed so far.
    /// Call only from the single writer (the committer), so no commit races it.
    pub fn checkpoint(&self) -> Result<()> {
        let Some(index) = self.index() else {
            return Ok(());
        };
        let last = self.space.last_vector_id()?;
        index.checkpoint(&self.index_dir, self.space.fingerprint(), last)?;
        Ok(())
    }

    /// The in-memory index searches and commits use now; `None` when the
    /// store indexes its vectors itself (PostgreSQL).
    pub fn index(&self) -> Option<Arc<VectorIndex>> {
        self.index
            .as_ref()
            .map(|i| i.read().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// Commits `items` to the store and brings the index in line with it
    /// ([`Engine::apply`]), both before any count of indexed files sees the
    /// commit: a file a client sees counted is one its search finds.
    pub fn commit(&self, items: &[Commit]) -> Result<CommitOutcome, StoreError> {
        let _gate = self.visible.write().unwrap_or_else(PoisonError::into_inner);
        let outcome = self.store.commit(&self.space, items)?;
        let inserted: Vec<(u64, &[f32])> = outcome
            .inserted
            .iter()
            .map(|(id, v)| (*id, v.as_slice()))
            .collect();
        self.apply(&inserted, outcome.orphaned_in(self.space.fingerprint()));
        Ok(outcome)
    }

    /// Files indexed, as clients are told: never one whose commit's vectors
    /// are still on their way into the index.
    pub fn indexed_file_count(&self) -> Result<u64, StoreError> {
        let _gate = self.visible.read().unwrap_or_else(PoisonError::into_inner);
        self.store.indexed_file_count()
    }

    /// Brings the in-memory index in line with a commit or removal: its new
    /// vectors in, its orphans out (nothing to do on PostgreSQL).
    pub fn apply(&self, inserted: &[(u64, &[f32])], removed: impl IntoIterator<Item = u64>) {
        let Some(index) = self.index() else {
            return;
        };
        if let Err(e) = index.insert_batch(inserted) {
            tracing::error!(error = %e, "index insert failed (the store has the vectors; a restart rebuilds)");
        }
        for id in removed {
            index.remove(id);
        }
    }

    /// Vectors searches can find.
    pub fn searchable(&self) -> u64 {
        match self.index() {
            Some(index) => index.len() as u64,
            None => self.space.vector_count().unwrap_or(0),
        }
    }

    /// The slow half of a compaction, off the writer thread: a new index of
    /// the store's vectors up to the last id committed when it starts, while
    /// searches and commits go on against the current one. Returns it with
    /// that id.
    pub fn build_fresh(&self) -> Result<(VectorIndex, u64)> {
        if self.index.is_none() {
            return Err(EngineError::NoLocalIndex);
        }
        let last = self.space.last_vector_id()?;
        let fresh = rebuild(&self.store, &self.space, self.params, last, &self.index_dir)?;
        Ok((fresh, last))
    }

    /// The quick half, on the writer thread (so nothing commits meanwhile):
    /// brings `fresh` up to date with what changed since `last` and puts it
    /// in the current index's place. What was removed while it was built is
    /// a tombstone in the current index, so the same ids leave `fresh`
    /// without a store lookup per vector; `catch_up` then finds the counts
    /// equal and adds only what came after `last`.
    pub fn swap_in(&self, fresh: VectorIndex, last: u64) -> Result<()> {
        let (Some(current), Some(slot)) = (self.index(), self.index.as_ref()) else {
            return Err(EngineError::NoLocalIndex);
        };
        for id in current.tombstoned_ids() {
            fresh.remove(id);
        }
        catch_up(&fresh, &self.store, &self.space, last + 1)?;
        *slot.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        Ok(())
    }

    /// Hits `offset .. offset + limit` for the query vector `q` with their
    /// exact cosines, best first: every path holding a matching vector is its
    /// own hit, and only paths that pass `filters` count (before the limit).
    /// Pages of one query neither repeat nor skip ([`search::search_page`]).
    pub fn search(
        &self,
        q: &[f32],
        filters: &Filters,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<(Found, f32)>> {
        let index = match (&self.space, self.index()) {
            (Space::Postgres(space), _) => {
                let source = pg_source::PgSource::new(space, filters);
                let query = search::Query {
                    vector: q,
                    limit,
                    min_score: filters.min_score,
                    // The database applies the filters (pg_source.rs).
                    accept: None,
                };
                return Ok(search::search_page(
                    &source, &source, &query, offset, limit,
                )?);
            }
            (Space::Sled(_), Some(index)) => index,
            (Space::Sled(_), None) => return Err(EngineError::NoLocalIndex),
        };
        let dated = filters.taken_after.is_some() || filters.taken_before.is_some();
        let accept = |p: &PathBuf| {
            if let Some(pre) = &filters.path_prefix
                && !path_has_prefix(p, pre)
            {
                return false;
            }
            if !dated {
                return true;
            }
            let Some(taken) = crate::store::path_str(p)
                .ok()
                .and_then(|p| self.store.file(p).ok().flatten())
                .map(|r| r.taken_at())
            else {
                return false;
            };
            filters.taken_after.is_none_or(|a| taken >= a)
                && filters.taken_before.is_none_or(|b| taken <= b)
        };
        let filtered = filters.path_prefix.is_some() || dated;
        let query = search::Query {
            vector: q,
            limit,
            min_score: filters.min_score,
            accept: filtered.then_some(&accept as &(dyn Fn(&PathBuf) -> bool + Sync)),
        };
        let hits = search::search_page(index.as_ref(), &self.space, &query, offset, limit)?;
        Ok(hits
            .into_iter()
            .map(|(path, score)| (Found { node: None, path }, score))
            .collect())
    }
}

/// A hit: a file, and the node holding it when the store is shared
/// (PostgreSQL); `None` is this daemon's own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub node: Option<String>,
    pub path: PathBuf,
}

/// What a search keeps besides the best scores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// Only paths under this directory (whole components).
    pub path_prefix: Option<PathBuf>,
    /// Only hits scoring at least this.
    pub min_score: Option<f32>,
    /// Only photos taken at or after / at or before (Unix seconds).
    pub taken_after: Option<i64>,
    pub taken_before: Option<i64>,
}

/// Where a model's index checkpoint lives.
pub fn index_dir(data_dir: &Path, fingerprint: &str) -> PathBuf {
    data_dir.join("index").join(fingerprint)
}

/// Brings an index loaded from a checkpoint covering ids `< from` (0: a
/// fresh index) up to the store: vectors added since are inserted, those
/// deleted since (files removed before a crash) tombstoned. Returns
/// (inserted, tombstoned).
fn catch_up(
    index: &VectorIndex,
    store: &Store,
    space: &Space,
    from: u64,
) -> Result<(usize, usize)> {
    let replayed = replay(index, store, space, from, u64::MAX)?;
    // Ids only grow and the checkpoint held every stored id below `from`, so
    // the store's ids are a subset of the index's live ones: equal counts
    // mean nothing was deleted since, and the per-id check (a store lookup
    // per vector: seconds at a million) is skipped, as after every clean
    // shutdown.
    let mut stale = 0usize;
    if from > 0 && space.vector_count()? != index.len() as u64 {
        for id in index.live_ids() {
            if !space.has_vector(id)? {
                index.remove(id);
                stale += 1;
            }
        }
    }
    Ok((replayed, stale))
}

/// Inserts the store's vectors with ids in `from..=to` into `index`; damaged
/// ones are forgotten (their files get embedded again). Returns how many
/// were inserted.
fn replay(index: &VectorIndex, store: &Store, space: &Space, from: u64, to: u64) -> Result<usize> {
    each_vector(store, space, from, to, |batch| {
        let items: Vec<(u64, &[f32])> = batch.iter().map(|(id, v)| (*id, v.as_slice())).collect();
        Ok(index.insert_batch(&items)?)
    })
}

/// An index of every vector the store holds up to `to`, built at once
/// (several times faster than inserting them; `index::bulk`), with
/// `scratch` for the graph's way into hnsw_rs.
fn rebuild(
    store: &Store,
    space: &Space,
    params: IndexParams,
    to: u64,
    scratch: &Path,
) -> Result<VectorIndex> {
    let mut load = VectorIndex::bulk(space.dim(), params)?;
    each_vector(store, space, 0, to, |batch| {
        let mut added = 0;
        for (id, v) in batch {
            added += usize::from(load.push(*id, v)?);
        }
        Ok(added)
    })?;
    Ok(load.finish(scratch)?)
}

/// Hands the store's vectors with ids in `from..=to` to `take` in batches
/// of 4096; damaged ones are forgotten (their files get embedded again).
/// Returns the sum of what `take` returned.
fn each_vector(
    store: &Store,
    space: &Space,
    from: u64,
    to: u64,
    mut take: impl FnMut(&[(u64, Vec<f32>)]) -> Result<usize>,
) -> Result<usize> {
    let mut batch: Vec<(u64, Vec<f32>)> = Vec::new();
    let mut taken = 0usize;
    let mut damaged = Vec::new();
    for v in space.iter_vectors_from(from) {
        let v = match v {
            Ok(v) if v.id > to => break,
            Ok(v) => v,
            Err(StoreError::Segment(SegmentError::Damaged { id, .. })) if id > to => break,
            Err(StoreError::Segment(e @ SegmentError::Damaged { id, .. })) => {
                tracing::warn!(error = %e, "damaged vector: its files will be embedded again");
                damaged.push(id);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        batch.push((v.id, v.vector));
        if batch.len() == 4096 {
            taken += take(&batch)?;
            batch.clear();
        }
    }
    taken += take(&batch)?;
    if !damaged.is_empty() {
        let n = store.forget_vectors(space, &damaged)?;
        tracing::warn!(
            forgotten = n,
            segment = %space.segment_path().map(|p| p.display().to_string()).unwrap_or_default(),
            "forgot damaged vectors: the startup scan embeds their files again"
        );
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_compares_whole_components() {
        let p = Path::new("/photos/2020/a.jpg");
        assert!(path_has_prefix(p, Path::new("/photos/2020")));
        assert!(path_has_prefix(p, Path::new("/photos/2020/")));
        assert!(path_has_prefix(p, Path::new("/")));
        assert!(!path_has_prefix(
            Path::new("/photos/2020-old/a.jpg"),
            Path::new("/photos/2020")
        ));
    }

    use crate::store::{Commit, ContentHash, Embedding, FileRecord};

    /// `/photos/{n}.jpg`, content `[n]`, embedded as `v`.
    fn photo(n: u8, v: Vec<f32>) -> Commit {
        Commit {
            path: format!("/photos/{n}.jpg"),
            record: FileRecord {
                size: 1,
                mtime_ns: 1,
                hash: ContentHash::of(&[n]),
                indexed_at_ms: 1,
                meta: Default::default(),
            },
            embedding: Embedding::New(v),
        }
    }

    fn commit(store: &Store, space: &Space, n: u8) {
        let v: Vec<f32> = (0..8)
            .map(|i| ((i * 7 + usize::from(n) * 3) % 11) as f32 + 0.5)
            .collect();
        store.commit(space, &[photo(n, v)]).unwrap();
    }

    /// A compaction: a fresh index built while vectors keep coming and
    /// going, then brought up to date and swapped in, holds exactly the
    /// store's vectors, with tombstones only for what went during the build.
    #[test]
    fn a_compaction_swaps_in_an_index_without_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let encoder = Arc::new(
            Encoder::load(
                &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/fashion/model"),
                &candle_core::Device::Cpu,
                candle_core::DType::F32,
            )
            .unwrap(),
        );
        let engine =
            Engine::open(encoder, store.clone(), dir.path(), IndexParams::default()).unwrap();
        let space = engine.space.clone();
        let vector = |n: u8| -> Vec<f32> {
            let mut g = crate::rng::SplitMix64::new(u64::from(n));
            (0..64).map(|_| g.next_f32() - 0.5).collect()
        };
        let add = |n: u8| {
            let out = store.commit(&space, &[photo(n, vector(n))]).unwrap();
            let items: Vec<(u64, &[f32])> = out
                .inserted
                .iter()
                .map(|(id, v)| (*id, v.as_slice()))
                .collect();
            engine.index().unwrap().insert_batch(&items).unwrap();
        };
        let remove = |n: u8| {
            for id in store
                .remove_path(&format!("/photos/{n}.jpg"))
                .unwrap()
                .orphaned_in(space.fingerprint())
            {
                engine.index().unwrap().remove(id);
            }
        };
        for n in 0..30 {
            add(n);
        }
        for n in 0..10 {
            remove(n);
        }
        assert!(engine.index().unwrap().needs_compaction());
        let (fresh, last) = engine.build_fresh().unwrap();
        // Changes while it was built: more vectors, and one it holds removed.
        add(30);
        add(31);
        remove(15);
        engine.swap_in(fresh, last).unwrap();
        let index = engine.index().unwrap();
        // Only what was removed while it was built is a tombstone.
        assert_eq!(index.tombstone_count(), 1);
        assert!(!index.needs_compaction());
        assert_eq!(index.len() as u64, space.vector_count().unwrap());
        assert_eq!(index.len(), 21);
        let live: Vec<u64> = space.iter_vectors_from(0).map(|v| v.unwrap().id).collect();
        assert_eq!(index.live_ids(), live);
        let hits = engine
            .search(&vector(31), &Filters::default(), 0, 1)
            .unwrap();
        assert_eq!(hits[0].0.path, std::path::PathBuf::from("/photos/31.jpg"));
    }

    /// A checkpoint, then vectors added and removed behind its back (as
    /// before a crash): catching up inserts the new ones and tombstones the
    /// removed ones; with no removal the counts agree and nothing is stale.
    #[test]
    fn catch_up_replays_additions_and_tombstones_removals() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let space = store.space("fp", 8).unwrap();
        for n in 0..20 {
            commit(&store, &space, n);
        }
        let index = VectorIndex::new(8, IndexParams::default(), 64).unwrap();
        assert_eq!(catch_up(&index, &store, &space, 0).unwrap(), (20, 0));
        let from = space.last_vector_id().unwrap() + 1;

        // Nothing changed: nothing to do.
        assert_eq!(catch_up(&index, &store, &space, from).unwrap(), (0, 0));

        for n in 20..25 {
            commit(&store, &space, n);
        }
        let gone = space
            .vector_id_for_hash(&ContentHash::of(&[3]))
            .unwrap()
            .unwrap();
        store.remove_path("/photos/3.jpg").unwrap();
        store.remove_path("/photos/22.jpg").unwrap();
        assert!(!space.has_vector(gone).unwrap());
        let (replayed, stale) = catch_up(&index, &store, &space, from).unwrap();
        assert_eq!((replayed, stale), (4, 1), "22 was never indexed, 3 was");
        assert_eq!(index.len() as u64, space.vector_count().unwrap());
        assert!(!index.live_ids().contains(&gone));
    }

    /// A store whose index has no checkpoint (a first start on a filled
    /// store, or a checkpoint that was lost) is indexed at once: every
    /// vector in, each found by its own vector, and no scratch left behind.
    #[test]
    fn a_store_without_a_checkpoint_is_indexed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let space = store.space("fp", 8).unwrap();
        for n in 0..200 {
            commit(&store, &space, n);
        }
        let index = rebuild(&store, &space, IndexParams::default(), u64::MAX, dir.path()).unwrap();
        assert_eq!(index.len() as u64, space.vector_count().unwrap());
        assert_eq!(index.len(), 200);
        for v in space.iter_vectors_from(0) {
            let v = v.unwrap();
            assert_eq!(index.exact_search(&v.vector, 1).unwrap()[0].1, 1.0);
            assert!(index.search(&v.vector, 1).unwrap()[0].1 > 0.999);
        }
        let up_to = space.iter_vectors_from(0).nth(49).unwrap().unwrap().id;
        let part = rebuild(&store, &space, IndexParams::default(), up_to, dir.path()).unwrap();
        assert_eq!(part.len(), 50);
        assert_eq!(part.max_id(), up_to);
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
