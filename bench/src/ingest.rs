//! Figure 2: from 4000×3000 JPEG files to committed vectors.
//! - decode + preprocess alone, one thread (ms per image, split into decode
//!   and resize/normalise), and on all threads (images/s), for the exact
//!   path (as transformers) and the fast one (JPEG decoded at 1/8 or 1/4);
//! - end-to-end indexing through the daemon's own pipeline
//!   ([`dualsight::ingest::pipeline::Pipeline`]: decode workers → batcher →
//!   vision tower → sled commit, flushed → HNSW insert → final checkpoint) on
//!   a fresh store in a scratch directory, preprocessing as the daemon does
//!   by default.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::report::{Better, Figures};
use crate::stats::{measure, median};
use crate::suite::{BenchConfig, daemon_index_params, say};
use dualsight::encoder::Encoder;
use dualsight::engine::Engine;
use dualsight::ingest::Change;
use dualsight::ingest::pipeline::{Counters, Pipeline, PipelineConfig};
use dualsight::preprocess::{DecodeLimits, ImageProcessor, Preprocessing, Source, decode_path};
use dualsight::store::Store;

pub const SECTION: &str = "2. indexing 4000×3000 JPEGs";

pub fn run(
    cfg: &BenchConfig,
    enc: &Arc<Encoder>,
    files: &[PathBuf],
    scratch: &Path,
    figs: &mut Figures,
    notes: &mut Vec<String>,
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    notes.push(format!(
        "{} JPEGs of {}x{} (quality {}), {:.2} MB on average",
        files.len(),
        cfg.image_size.0,
        cfg.image_size.1,
        cfg.jpeg_quality,
        bytes as f64 / files.len() as f64 / 1e6
    ));
    let processor = ImageProcessor::from_model_dir(enc.dir())?;
    let limits = enc.limits();

    // One thread: decode and preprocess timed apart, per file, over passes.
    say("decode + preprocess, one thread");
    let (mut dec, mut pre, mut total) = (Vec::new(), Vec::new(), Vec::new());
    measure(cfg.repeat(), || -> Result<()> {
        dec.clear();
        pre.clear();
        total.clear();
        for f in files {
            let t0 = Instant::now();
            let img = decode_path(f, &limits)?;
            let t1 = Instant::now();
            let px = processor.preprocess(&img)?;
            let t2 = Instant::now();
            std::hint::black_box(px);
            dec.push((t1 - t0).as_secs_f64());
            pre.push((t2 - t1).as_secs_f64());
            total.push((t2 - t0).as_secs_f64());
        }
        Ok(())
    })?;
    let ms = |v: &[f64]| median(v).unwrap_or(f64::NAN) * 1e3;
    figs.add(
        "decode.ms_per_image",
        SECTION,
        "decode + preprocess, 1 thread",
        "ms/image",
        Better::Lower,
        ms(&total),
    );
    figs.add(
        "decode.decode_ms",
        SECTION,
        "  of which decode (+EXIF, to RGB)",
        "ms/image",
        Better::Lower,
        ms(&dec),
    );
    figs.add(
        "decode.preprocess_ms",
        SECTION,
        "  of which resize + rescale + normalise",
        "ms/image",
        Better::Lower,
        ms(&pre),
    );

    // The fast path, the same way: decode (at reduced scale) and resize apart.
    say("decode + preprocess, one thread, fast path");
    let mut scales = Vec::new();
    measure(cfg.repeat(), || -> Result<()> {
        dec.clear();
        pre.clear();
        total.clear();
        scales.clear();
        for f in files {
            let t0 = Instant::now();
            let reduced = processor.decode_reduced(Source::Path(f), &limits)?;
            let t1 = Instant::now();
            let px = processor.preprocess_reduced(&reduced, &f.display().to_string())?;
            let t2 = Instant::now();
            std::hint::black_box(px);
            scales.push(reduced.scale);
            dec.push((t1 - t0).as_secs_f64());
            pre.push((t2 - t1).as_secs_f64());
            total.push((t2 - t0).as_secs_f64());
        }
        Ok(())
    })?;
    scales.sort_unstable();
    scales.dedup();
    let at = scales
        .iter()
        .map(|s| format!("1/{s}"))
        .collect::<Vec<_>>()
        .join(", ");
    figs.add(
        "decode_fast.ms_per_image",
        SECTION,
        format!("fast path: decode ({at} scale) + preprocess, 1 thread"),
        "ms/image",
        Better::Lower,
        ms(&total),
    );
    figs.add(
        "decode_fast.decode_ms",
        SECTION,
        "  of which reduced decode (+EXIF, to RGB)",
        "ms/image",
        Better::Lower,
        ms(&dec),
    );
    figs.add(
        "decode_fast.preprocess_ms",
        SECTION,
        "  of which resize + rescale + normalise",
        "ms/image",
        Better::Lower,
        ms(&pre),
    );

    // All threads: wall time for every file, both paths.
    for (mode, key, label) in [
        (
            Preprocessing::Exact,
            "decode.images_per_s",
            "decode + preprocess",
        ),
        (
            Preprocessing::Fast,
            "decode_fast.images_per_s",
            "fast path: decode + preprocess",
        ),
    ] {
        say(format!("{label}, {} threads", cfg.threads));
        let walls = measure(cfg.repeat(), || -> Result<()> {
            parallel_preprocess(files, &processor, &limits, mode, cfg.threads)
        })?;
        figs.add(
            key,
            SECTION,
            format!("{label}, {} threads", cfg.threads),
            "images/s",
            Better::Higher,
            files.len() as f64 / median(&walls).unwrap_or(f64::NAN),
        );
    }

    // End to end, through the daemon's pipeline, on a fresh store each time.
    say(format!(
        "end-to-end indexing of {} files (daemon pipeline, batch {})",
        files.len(),
        cfg.ingest_batch
    ));
    let mut round = 0;
    let walls = measure(cfg.repeat(), || -> Result<()> {
        round += 1;
        index_files(cfg, enc, files, &scratch.join(format!("ingest-{round}")))
    })?;
    figs.add(
        "ingest.images_per_s",
        SECTION,
        format!(
            "end to end ({} preprocessing): decode → embed (batch {}) → sled commit → HNSW",
            match enc.preprocessing() {
                Preprocessing::Exact => "exact",
                Preprocessing::Fast => "fast",
            },
            cfg.ingest_batch
        ),
        "images/s",
        Better::Higher,
        files.len() as f64 / median(&walls).unwrap_or(f64::NAN),
    )
    .note = Some(format!("median of {}", walls.len()));
    Ok(())
}

fn parallel_preprocess(
    files: &[PathBuf],
    processor: &ImageProcessor,
    limits: &DecodeLimits,
    mode: Preprocessing,
    threads: usize,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while let Some(f) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                        std::hint::black_box(processor.run(Source::Path(f), limits, mode)?);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("decode thread panicked")?;
        }
        Ok(())
    })
}

/// Indexes `files` into a new store under `data_dir` with the daemon's
/// pipeline, as the watcher would feed it; returns once everything is
/// committed, flushed and checkpointed. The store is deleted afterwards.
fn index_files(
    cfg: &BenchConfig,
    enc: &Arc<Encoder>,
    files: &[PathBuf],
    data_dir: &Path,
) -> Result<()> {
    let store = Store::open(data_dir.join("store"))?;
    let engine = Arc::new(Engine::open(
        enc.clone(),
        store,
        data_dir,
        daemon_index_params(),
    )?);
    // As the daemon does for a fresh store: this model's space is the one served.
    engine.store.set_active(engine.space.fingerprint())?;
    let counters = Arc::new(Counters::default());
    let defaults = dualsight::config::Settings::default();
    let pcfg = PipelineConfig {
        batch_size: cfg.ingest_batch,
        batch_timeout: Duration::from_millis(defaults.ingest.batch_timeout_ms),
        decode_threads: cfg.threads,
        queue: defaults.ingest.queue,
        remove_grace: Duration::from_millis(defaults.ingest.remove_grace_ms),
        checkpoint_every: Duration::from_secs(3600),
        min_free_bytes: defaults.ingest.min_free_mb << 20,
        // As the daemon: each new photo's thumbnail is written at indexing.
        thumbs: Some(dualsight::thumbs::Thumbs::new(data_dir)),
    };
    let changes: Vec<Change> = files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).with_context(|| f.display().to_string())?;
            let mtime_ns = meta
                .modified()?
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            Ok(Change::Upsert {
                path: std::path::absolute(f)?,
                size: meta.len(),
                mtime_ns,
            })
        })
        .collect::<Result<_>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (tx, rx) = dualsight::ingest::feed::channel(pcfg.queue.max(16) * 4);
        let pipeline = Pipeline::spawn(engine.clone(), counters.clone(), pcfg, rx);
        for c in changes {
            tx.send(c).await.ok();
        }
        drop(tx);
        pipeline.join().await;
    });
    let embedded = counters.embedded.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    let indexed = engine.store.indexed_file_count()?;
    let in_index = engine.searchable() as usize;
    drop(engine);
    let _ = std::fs::remove_dir_all(data_dir);
    if embedded != files.len() as u64 || failed != 0 || indexed != files.len() as u64 {
        bail!(
            "pipeline indexed {indexed} of {} files ({embedded} embedded, {failed} failed, {in_index} in the index)",
            files.len()
        );
    }
    Ok(())
}
