//! The query side of the daemon: [`crate::server::Core`] over the engine.
//! It moves work to blocking threads (text and image embedding, the engine's
//! search routine) and converts types; the search itself is
//! [`crate::engine::search`].

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use tokio::sync::watch;

use super::text_cache::{self, TextCache};
use crate::engine::{Engine, Filters};
use crate::ingest::pipeline::Counters;
use crate::preprocess::Source;
use crate::preprocess::meta::TakenFrom;
use crate::server::port::{
    ClassifyQuery, Core, CoreError, FailureList, FailureRecord, Hit, HitInfo, ImageQuery, ImageRef,
    LabelScore, ProgressSnapshot, ReplicaStatus, Result, RootStatus, StatusSnapshot, TextQuery,
    ThumbnailImage, rank_hits_on, rank_labels,
};
use crate::store::path_str;
use crate::thumbs::Thumbs;

/// What `Status` reports about the daemon beyond the engine.
pub struct DaemonCore {
    /// The engine answering queries: set once a model and index are loaded
    /// (until then queries get NOT_READY), swapped when a new model's index
    /// is complete. Held only to clone the Arc, never across an await.
    engine: RwLock<Option<Arc<Engine>>>,
    /// True while a new model's index is built beside the serving one.
    pub building: AtomicBool,
    pub counters: Arc<Counters>,
    /// The watched roots (a reload changes them).
    roots: RwLock<Vec<PathBuf>>,
    pub model_name: String,
    /// This daemon's node name: its own hits show it.
    pub node: String,
    progress: watch::Receiver<ProgressSnapshot>,
    texts: Arc<TextCache>,
    thumbs: Thumbs,
    /// Image decodes for queries (photos sent to search or classify by,
    /// thumbnails made again), one a core: a small file may declare up to
    /// `max_image_pixels` and take ~1 GB to decode, so the request limit
    /// alone would let dozens of them hold tens of GB at once.
    decodes: Arc<tokio::sync::Semaphore>,
}

impl DaemonCore {
    pub fn new(
        counters: Arc<Counters>,
        roots: Vec<PathBuf>,
        model_name: String,
        node: String,
        progress: watch::Receiver<ProgressSnapshot>,
        thumbs: Thumbs,
    ) -> Self {
        Self {
            engine: RwLock::new(None),
            building: AtomicBool::new(false),
            counters,
            roots: RwLock::new(roots),
            model_name,
            node,
            progress,
            texts: Arc::new(TextCache::new(text_cache::DEFAULT_CAPACITY)),
            thumbs,
            decodes: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        }
    }

    /// The engine's text vectors for `texts`, through the cache: only texts
    /// not seen recently (with this model) go through the text tower, and
    /// how many did is returned beside the vectors.
    async fn text_vectors(
        &self,
        engine: Arc<Engine>,
        texts: Vec<String>,
    ) -> Result<(Vec<Vec<f32>>, usize)> {
        let cache = self.texts.clone();
        Self::blocking(move || {
            let model = engine.space.fingerprint().to_string();
            let mut out: Vec<Option<Vec<f32>>> = texts
                .iter()
                .map(|t| cache.get(&model, t).map(|v| v.as_ref().clone()))
                .collect();
            let missing: Vec<&str> = texts
                .iter()
                .zip(&out)
                .filter(|(_, v)| v.is_none())
                .map(|(t, _)| t.as_str())
                .collect();
            let fresh_n = missing.len();
            if !missing.is_empty() {
                let fresh = engine
                    .encoder
                    .embed_texts(&missing)
                    .map_err(|e| CoreError::Internal(e.to_string()))?;
                let mut fresh = missing.into_iter().zip(fresh);
                for slot in out.iter_mut().filter(|v| v.is_none()) {
                    let (text, v) = fresh.next().expect("one vector per missing text");
                    cache.put(&model, text, Arc::new(v.clone()));
                    *slot = Some(v);
                }
            }
            let out = out.into_iter().map(|v| v.expect("filled above")).collect();
            Ok((out, fresh_n))
        })
        .await
    }

    /// Makes `engine` the one answering queries (at start, and when a new model's index is complete).
    pub fn set_engine(&self, engine: Arc<Engine>) {
        *self
            .engine
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(engine);
    }

    pub fn roots(&self) -> Vec<PathBuf> {
        self.roots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set_roots(&self, roots: Vec<PathBuf>) {
        *self
            .roots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = roots;
    }

    /// The engine answering queries, if one is loaded.
    pub fn serving(&self) -> Option<Arc<Engine>> {
        self.engine().ok()
    }

    fn engine(&self) -> Result<Arc<Engine>> {
        self.engine
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| CoreError::NotReady("loading the model and index".into()))
    }

    /// A decode slot, held by the blocking work it is moved into.
    async fn decode_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.decodes
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CoreError::Unavailable("shutting down".into()))
    }

    /// Runs CPU-heavy model work off the async threads.
    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| CoreError::Internal(format!("worker failed: {e}")))?
    }

    /// The query vector of an image reference: embed bytes, or look up an indexed path's vector.
    async fn image_vector(&self, engine: &Arc<Engine>, image: ImageRef) -> Result<Vec<f32>> {
        match image {
            ImageRef::Bytes(bytes) => {
                let engine = engine.clone();
                let slot = self.decode_slot().await?;
                Self::blocking(move || {
                    let _slot = slot;
                    let px = engine
                        .encoder
                        .preprocess(Source::Bytes {
                            bytes: &bytes,
                            name: "image",
                        })
                        .map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
                    let mut v = engine
                        .encoder
                        .embed_pixels(&[px])
                        .map_err(|e| CoreError::Internal(e.to_string()))?;
                    Ok(v.remove(0))
                })
                .await
            }
            ImageRef::Path(path) => {
                let p = path_str(&path).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
                let not_indexed =
                    || CoreError::NotFound(format!("path: {} is not indexed", path.display()));
                let record = engine
                    .store
                    .file(p)
                    .map_err(internal)?
                    .ok_or_else(not_indexed)?;
                let id = engine
                    .space
                    .vector_id_for_hash(&record.hash)
                    .map_err(internal)?
                    .ok_or_else(not_indexed)?;
                Ok(engine
                    .space
                    .vector(id)
                    .map_err(internal)?
                    .ok_or_else(not_indexed)?
                    .vector)
            }
        }
    }

    /// Searches `engine`, the one that embedded `q`: during a model switch
    /// the serving engine may change between the two, and a vector must
    /// never meet another model's index.
    async fn search(
        &self,
        engine: Arc<Engine>,
        q: Vec<f32>,
        filters: Filters,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Hit>> {
        let scale = engine.encoder.model().logit_scale();
        let own = self.node.clone();
        Self::blocking(move || {
            let scored = engine
                .search(&q, &filters, offset, limit)
                .map_err(internal)?;
            let scored = scored
                .into_iter()
                .map(|(found, score)| {
                    let node = found.node.unwrap_or_else(|| own.clone());
                    (node, found.path, score)
                })
                .collect();
            let mut hits = rank_hits_on(scored, scale);
            for hit in &mut hits {
                if let Ok(p) = path_str(&hit.path)
                    && let Ok(Some(r)) = engine.store.file_at(Some(&hit.node), p)
                {
                    hit.info = HitInfo {
                        taken_at_unix: r.taken_at(),
                        taken_from: match r.meta.taken_from {
                            TakenFrom::Unknown => TakenFrom::Mtime.name(),
                            other => other.name(),
                        },
                        width: r.meta.width,
                        height: r.meta.height,
                        size_bytes: r.size,
                    };
                }
            }
            Ok(hits)
        })
        .await
    }
}

/// The thumbnail of an indexed path: the stored one, else made from the
/// indexed file (a store from before thumbnails, a lost cache file).
fn thumbnail_of(
    thumbs: &Thumbs,
    engine: &Engine,
    path: &Path,
    size: u32,
) -> Result<ThumbnailImage> {
    let not_indexed = || CoreError::NotFound(format!("path: {} is not indexed", path.display()));
    let p = path_str(path).map_err(|_| not_indexed())?;
    let record = engine
        .store
        .file(p)
        .map_err(internal)?
        .ok_or_else(not_indexed)?;
    let stored = match thumbs.get(&record.hash) {
        Some(jpeg) => jpeg,
        None => {
            // Decoded only as large as a thumbnail needs (JPEGs at 1/4 or 1/8
            // scale), as the pipeline does: a 12 MP photo is not decoded whole.
            let image = crate::preprocess::decode::decode_path_reduced(
                path,
                &engine.encoder.limits(),
                crate::thumbs::min_decode,
            )
            .map(|r| r.image)
            .map_err(|e| {
                CoreError::NotFound(format!("path: {} cannot be read now: {e}", path.display()))
            })?;
            thumbs.put(&record.hash, &image).map_err(internal)?.bytes
        }
    };
    let t = crate::thumbs::resized(stored, size).map_err(internal)?;
    Ok(ThumbnailImage {
        jpeg: t.bytes,
        width: t.width,
        height: t.height,
    })
}

/// The engine's filters from a query's (text and image queries share them).
fn filters(
    path_prefix: Option<PathBuf>,
    min_score: Option<f32>,
    taken_after: Option<i64>,
    taken_before: Option<i64>,
) -> Filters {
    Filters {
        path_prefix,
        min_score,
        taken_after,
        taken_before,
    }
}

fn internal(e: impl std::fmt::Display) -> CoreError {
    CoreError::Internal(e.to_string())
}

impl Core for DaemonCore {
    async fn search_text(&self, query: TextQuery) -> Result<Vec<Hit>> {
        let engine = self.engine()?;
        let t0 = Instant::now();
        let (mut q, embedded) = self
            .text_vectors(engine.clone(), vec![query.text.clone()])
            .await?;
        let q = q.remove(0);
        let text = t0.elapsed();
        let filters = filters(
            query.path_prefix,
            query.min_score,
            query.taken_after,
            query.taken_before,
        );
        let hits = self
            .search(engine, q, filters, query.offset, query.limit)
            .await?;
        // Where a text query's time goes, for whoever profiles a slow one
        // (the bench reads it to split the daemon's latency).
        tracing::debug!(
            text_us = text.as_micros() as u64,
            search_us = (t0.elapsed() - text).as_micros() as u64,
            cached = embedded == 0,
            "text query timed"
        );
        Ok(hits)
    }

    async fn search_image(&self, query: ImageQuery) -> Result<Vec<Hit>> {
        let engine = self.engine()?;
        let q = self.image_vector(&engine, query.image).await?;
        let filters = filters(
            query.path_prefix,
            query.min_score,
            query.taken_after,
            query.taken_before,
        );
        self.search(engine, q, filters, query.offset, query.limit)
            .await
    }

    async fn thumbnail(&self, path: PathBuf, size: u32) -> Result<ThumbnailImage> {
        let engine = self.engine()?;
        let thumbs = self.thumbs.clone();
        let slot = self.decode_slot().await?;
        Self::blocking(move || {
            let _slot = slot;
            thumbnail_of(&thumbs, &engine, &path, size)
        })
        .await
    }

    async fn classify(&self, query: ClassifyQuery) -> Result<Vec<LabelScore>> {
        let engine = self.engine()?;
        let image = self.image_vector(&engine, query.image).await?;
        let scale = engine.encoder.model().logit_scale();
        let (texts, _) = self.text_vectors(engine, query.labels.clone()).await?;
        let scored = query
            .labels
            .into_iter()
            .zip(texts)
            .map(|(l, t)| (l, t.iter().zip(&image).map(|(a, b)| a * b).sum()))
            .collect();
        Ok(rank_labels(scored, scale))
    }

    async fn status(&self) -> Result<StatusSnapshot> {
        let Ok(engine) = self.engine() else {
            return Ok(StatusSnapshot {
                pending_files: self.counters.pending(),
                model_name: self.model_name.clone(),
                node: self.node.clone(),
                ..Default::default()
            });
        };
        // Pending first: a change that lands between the two reads then shows
        // in the count, never as idle beside a stale count.
        let pending_files = self.counters.pending();
        let offline = engine.store.offline_roots().map_err(internal)?;
        Ok(StatusSnapshot {
            indexed_files: engine.indexed_file_count().map_err(internal)?,
            pending_files,
            failed_files: engine.store.failure_count().map_err(internal)?,
            ready: true,
            model_fingerprint: engine.space.fingerprint().to_string(),
            model_name: self.model_name.clone(),
            embedding_dim: engine.encoder.dim() as u32,
            logit_scale: engine.encoder.model().logit_scale(),
            roots: self
                .roots()
                .iter()
                .map(|r| RootStatus {
                    path: r.clone(),
                    online: !offline.iter().any(|o| Path::new(o) == r),
                })
                .collect(),
            vectors: engine.store.vector_count(&engine.space).map_err(internal)?,
            // After `engine` above: see finish_model_switch.
            index_building: self.building.load(Ordering::SeqCst),
            embedded_images: self.counters.embedded.load(Ordering::Relaxed),
            reused_vectors: self.counters.reused.load(Ordering::Relaxed),
            ingest_error: self.counters.ingest_error().unwrap_or_default(),
            node: self.node.clone(),
            store: engine.store.backend().into(),
            database: engine
                .store
                .as_postgres()
                .map(|p| p.target().to_owned())
                .unwrap_or_default(),
            replicas: engine
                .store
                .as_postgres()
                .map(|p| p.replicas())
                .unwrap_or_default()
                .into_iter()
                .map(|r| ReplicaStatus {
                    target: r.target,
                    serving: r.serving,
                    lag_ms: r.lag.map_or(-1, |l| l.as_millis() as i64),
                    error: r.error,
                })
                .collect(),
        })
    }

    fn progress(&self) -> watch::Receiver<ProgressSnapshot> {
        self.progress.clone()
    }

    async fn failures(&self, limit: usize) -> Result<FailureList> {
        let engine = self.engine()?;
        // Off the async threads, holding the newest `limit` (and at most as
        // many again) while counting them all; a record the store cannot
        // read fails the call rather than leaving `total` short.
        Self::blocking(move || {
            let newest_first = |all: &mut Vec<FailureRecord>| {
                all.sort_by(|a, b| {
                    b.failed_at
                        .cmp(&a.failed_at)
                        .then_with(|| a.path.cmp(&b.path))
                });
                all.truncate(limit);
            };
            let mut kept: Vec<FailureRecord> = Vec::new();
            let mut total = 0u64;
            for row in engine.store.iter_failures() {
                let (path, f) = row.map_err(internal)?;
                total += 1;
                kept.push(FailureRecord {
                    path: PathBuf::from(path),
                    error: f.error,
                    failed_at: UNIX_EPOCH + Duration::from_millis(f.last_failed_ms),
                    attempts: f.attempts,
                });
                if kept.len() >= limit.saturating_mul(2).max(64) {
                    newest_first(&mut kept);
                }
            }
            newest_first(&mut kept);
            Ok(FailureList {
                failures: kept,
                total,
            })
        })
        .await
    }
}
