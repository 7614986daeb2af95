//! Model switching: which model answers while another's index is built, the
//! `models.json` record of which directory made each fingerprint, and the
//! switch once the new space covers every indexed file.

use super::*;

/// The configured store: sled in the data dir, or the PostgreSQL library.
pub(super) fn open_store(s: &Settings) -> crate::store::Result<Store> {
    match s.postgres() {
        Some(options) => Store::open_postgres(&options),
        None => Store::open(s.data_dir.join("store")),
    }
}

/// Loads the configured model and its index; if the store's active space
/// belongs to another model that can still be loaded (its directory is
/// recorded in `models.json`), loads that one too, to serve while the new
/// index is built. Returns (new, previous).
pub(super) fn load_engines(s: &Settings) -> Result<(Engine, Option<Engine>)> {
    let dir = crate::model::hub::resolve(s.model.as_deref().unwrap_or_default())?;
    let device = s.device.parse::<DeviceSpec>()?.open()?;
    let dtype = parse_dtype(&s.dtype)?;
    let text = s.text_weights()?;
    let limits = DecodeLimits {
        max_bytes: s.ingest.max_image_bytes,
        max_pixels: s.ingest.max_image_pixels,
    };
    // The store opens (and, once, migrates) while the model loads: both
    // read their files from disk, and SERVING waits for the slower one only.
    let (encoder, store) = std::thread::scope(|scope| {
        let store = std::thread::Builder::new()
            .name("store-open".into())
            .spawn_scoped(scope, || open_store(s))
            .map_err(|e| DaemonError::Task(format!("cannot start the store-open thread: {e}")))?;
        let encoder = Encoder::load_with(&dir, &device, dtype, text);
        let store = store
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok::<_, DaemonError>((encoder?, store?))
    })?;
    let encoder = encoder
        .with_limits(limits.clone())
        .with_preprocessing(s.preprocessing());
    let fp = encoder.fingerprint().to_string();
    tracing::info!(model = %dir.display(), fingerprint = %fp, dim = encoder.dim(), preprocessing = ?encoder.preprocessing(), text_weights = ?encoder.text_weights(), "model loaded");
    let params = s.index_params();
    let mut models = ModelDirs::load(&s.data_dir);
    let previous = match store.active_space()? {
        Some(active) if active.fingerprint() != fp => {
            let old_fp = active.fingerprint().to_string();
            let old = models.get(&old_fp).and_then(|old_dir| match Encoder::load_with(&old_dir, &device, dtype, text) {
                Ok(e) if e.fingerprint() == old_fp => Some(e),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(model = %old_dir.display(), error = %e, "previous model cannot be loaded");
                    None
                }
            });
            match old {
                Some(old) => {
                    tracing::info!(old = %old_fp, new = %fp, "model changed: the old index serves while the new one is built");
                    Some(Engine::open(
                        Arc::new(
                            old.with_limits(limits)
                                .with_preprocessing(s.preprocessing()),
                        ),
                        store.clone(),
                        &s.data_dir,
                        params,
                    )?)
                }
                None => {
                    tracing::warn!(old = %old_fp, new = %fp, "model changed and the old model is gone: building the new index from scratch");
                    drop_space(&store, &s.data_dir, &old_fp);
                    None
                }
            }
        }
        _ => None,
    };
    models.set(&fp, &dir);
    models.save(&s.data_dir);
    let engine = Engine::open(Arc::new(encoder), store.clone(), &s.data_dir, params)?;
    if previous.is_none() {
        store.set_active(&fp)?;
    }
    Ok((engine, previous))
}

pub(super) fn drop_space(store: &Store, data_dir: &std::path::Path, fingerprint: &str) {
    if let Err(e) = store.drop_space(fingerprint) {
        tracing::error!(fingerprint, error = %e, "cannot drop the old vector space");
    }
    let _ = std::fs::remove_dir_all(crate::engine::index_dir(data_dir, fingerprint));
}

/// Which model directory produced each fingerprint (`models.json` in the data
/// dir), so a model change can keep serving with the old model.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub(super) struct ModelDirs(std::collections::BTreeMap<String, PathBuf>);

impl ModelDirs {
    pub(super) fn load(data_dir: &std::path::Path) -> Self {
        std::fs::read(data_dir.join("models.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
    pub(super) fn get(&self, fp: &str) -> Option<PathBuf> {
        self.0.get(fp).cloned()
    }
    pub(super) fn set(&mut self, fp: &str, dir: &std::path::Path) {
        self.0.insert(
            fp.to_string(),
            std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
        );
    }
    pub(super) fn save(&self, data_dir: &std::path::Path) {
        let path = data_dir.join("models.json");
        let json = serde_json::to_vec_pretty(self).expect("serialisable");
        if let Err(e) = crate::durable::replace(&path, &json) {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the model directory");
        }
    }
}

/// Once the new model's space holds a vector for every indexed file, it
/// becomes the active one and answers queries; the old space is dropped.
pub(super) fn finish_model_switch(
    engine: &Arc<Engine>,
    core: &DaemonCore,
    data_dir: &std::path::Path,
) {
    if !core.building.load(Ordering::Relaxed) {
        return;
    }
    let (Ok(done), Ok(files)) = (engine.space.indexed_path_count(), engine.store.file_count())
    else {
        return;
    };
    if done < files || core.counters.pending() > 0 {
        return;
    }
    let old = engine
        .store
        .active_space()
        .ok()
        .flatten()
        .map(|s| s.fingerprint().to_string());
    if let Err(e) = engine.store.set_active(engine.space.fingerprint()) {
        tracing::error!(error = %e, "cannot activate the new vector space");
        return;
    }
    // Cleared before the swap: `status` reads the engine first, then this
    // flag, so it can never report the new model as still building (it
    // could, between these two lines, the other way round).
    core.building.store(false, Ordering::SeqCst);
    core.set_engine(engine.clone());
    if let Some(old) = old.filter(|o| o != engine.space.fingerprint()) {
        drop_space(&engine.store, data_dir, &old);
    }
    tracing::info!(fingerprint = %engine.space.fingerprint(), files, "new model's index complete: now serving it");
}
