//! One loaded model with its vector space in the store and its HNSW index:
//! what both ingestion and queries work on. Building it loads the index
//! checkpoint and replays only the vectors committed after it, or rebuilds
//! the index from the store when there is no usable checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::encoder::Encoder;
use crate::index::{IndexParams, VectorIndex};
use crate::store::{Space, Store};

use super::{DaemonError, Result};

pub struct Engine {
    pub encoder: Arc<Encoder>,
    pub store: Store,
    pub space: Space,
    pub index: Arc<VectorIndex>,
    /// Where this space's HNSW checkpoint lives.
    pub index_dir: PathBuf,
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
        std::fs::create_dir_all(&index_dir).map_err(|source| DaemonError::Io {
            path: index_dir.clone(),
            source,
        })?;
        let started = Instant::now();
        let (index, from) = match VectorIndex::load(&index_dir, &fp, dim) {
            Ok(Some((index, last_id))) => (index, last_id + 1),
            Ok(None) => (
                VectorIndex::new(dim, params, store.vector_count(&space)? as usize)?,
                0,
            ),
            Err(e) => {
                tracing::warn!(error = %e, "index checkpoint unusable: rebuilding from the store");
                (
                    VectorIndex::new(dim, params, store.vector_count(&space)? as usize)?,
                    0,
                )
            }
        };
        // Vectors deleted after the checkpoint was written (files removed
        // before a crash) are tombstoned; those added after it are replayed.
        let mut stale = 0usize;
        if from > 0 {
            for id in index.live_ids() {
                if !space.has_vector(id)? {
                    index.remove(id);
                    stale += 1;
                }
            }
        }
        let mut batch: Vec<(u64, Vec<f32>)> = Vec::new();
        let mut replayed = 0usize;
        for v in space.iter_vectors_from(from) {
            let v = v?;
            batch.push((v.id, v.vector));
            if batch.len() == 4096 {
                replayed += insert(&index, &batch)?;
                batch.clear();
            }
        }
        replayed += insert(&index, &batch)?;
        tracing::info!(
            vectors = index.len(),
            replayed,
            stale,
            from_checkpoint = from > 0,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index ready"
        );
        Ok(Self {
            encoder,
            store,
            space,
            index: Arc::new(index),
            index_dir,
        })
    }

    /// Writes the index checkpoint covering every vector committed so far.
    /// Call only from the single writer (the committer), so no commit races it.
    pub fn checkpoint(&self) -> Result<()> {
        let last = self.space.last_vector_id()?;
        self.index
            .checkpoint(&self.index_dir, self.space.fingerprint(), last)?;
        Ok(())
    }
}

/// Where a model's index checkpoint lives.
pub fn index_dir(data_dir: &Path, fingerprint: &str) -> PathBuf {
    data_dir.join("index").join(fingerprint)
}

fn insert(index: &VectorIndex, batch: &[(u64, Vec<f32>)]) -> Result<usize> {
    let items: Vec<(u64, &[f32])> = batch.iter().map(|(id, v)| (*id, v.as_slice())).collect();
    Ok(index.insert_batch(&items)?)
}
