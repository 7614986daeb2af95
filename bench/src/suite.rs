//! One benchmark run: the sections in order, the scratch space, the report.
//!
//! Figures (see BENCHMARKS.md for what each one means):
//! 1. [`vision`]: vision tower throughput from ready pixel tensors, per batch size.
//! 2. [`ingest`]: decode + preprocess of 4000×3000 JPEGs (one thread, all
//!    threads), and end-to-end indexing through the daemon's real pipeline
//!    (decode pool → batcher → vision tower → sled commit → HNSW).
//! 3. [`search`]: text query latency (tokenize + text tower + HNSW search) at
//!    each index size, HNSW recall@10 against exact search, build time, memory.
//! 4. [`restart`]: at the largest size, checkpoint / load times and a real
//!    daemon start on a data dir holding that many vectors: start → ready,
//!    resident memory, live gRPC query latency, SIGTERM → exit.
//!
//! Speed is measured here and only here: tests never assert timings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::assets::{self, Machine};
use crate::report::{self, Figures};
use crate::stats::Repeat;
use crate::{ingest, reference, search, synth, vision};
use candle_core::DType;
use dualsight::device::{DeviceSpec, TextWeights};
use dualsight::encoder::Encoder;
use dualsight::index::IndexParams;

/// Which parts to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sections {
    pub vision: bool,
    pub ingest: bool,
    pub search: bool,
    pub restart: bool,
}

impl Sections {
    pub const ALL: Sections = Sections {
        vision: true,
        ingest: true,
        search: true,
        restart: true,
    };

    /// "vision,ingest,search,restart" (any subset).
    pub fn parse(s: &str) -> Result<Sections> {
        let mut out = Sections {
            vision: false,
            ingest: false,
            search: false,
            restart: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "vision" => out.vision = true,
                "ingest" => out.ingest = true,
                "search" => out.search = true,
                "restart" => out.restart = true,
                other => bail!("--only: unknown part `{other}` (vision, ingest, search, restart)"),
            }
        }
        Ok(out)
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (on, n) in [
            (self.vision, "vision"),
            (self.ingest, "ingest"),
            (self.search, "search"),
            (self.restart, "restart"),
        ] {
            if on {
                v.push(n);
            }
        }
        v
    }
}

/// Everything a run is parameterised by; recorded in the report.
#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    pub model: PathBuf,
    pub work_dir: PathBuf,
    /// Read once, by the command line; passed on (to the daemon, the
    /// reference script, the report) in its one spelling, so that `gpu` or
    /// `bfloat16` mean to them what they meant to us.
    #[serde(serialize_with = "as_text")]
    pub device: DeviceSpec,
    /// Our model's `--dtype` (the reference's is f32 on the CPU).
    #[serde(serialize_with = "dtype_name")]
    pub dtype: DType,
    /// Our text tower's `--text-weights`.
    #[serde(serialize_with = "as_text")]
    pub text_weights: TextWeights,
    pub threads: usize,
    pub sections: Sections,
    pub batches: Vec<usize>,
    pub min_secs: f64,
    pub min_iters: usize,
    pub max_iters: usize,
    pub images: usize,
    pub image_size: (u32, u32),
    pub jpeg_quality: u8,
    pub ingest_batch: usize,
    pub sizes: Vec<usize>,
    pub queries: usize,
    pub recall_queries: usize,
    pub k: usize,
    pub index: IndexParams,
    /// Extra ef_search values to report recall and search latency at (the
    /// daemon's configured one is always measured).
    pub ef_sweep: Vec<usize>,
    pub daemon: bool,
    /// The `dualsight` binary run as the daemon (restart section).
    pub dualsight: PathBuf,
    pub seed: u64,
    pub keep_scratch: bool,
    /// The restart section's kept (and maybe reused) data dir.
    pub daemon_data: Option<PathBuf>,
    pub quick: bool,
    /// Test photos the JPEGs are made from.
    pub source_images: Vec<PathBuf>,
}

fn as_text<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn dtype_name<S: serde::Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.as_str())
}

impl BenchConfig {
    pub fn repeat(&self) -> Repeat {
        Repeat {
            min_time: Duration::from_secs_f64(self.min_secs.max(0.0)),
            min_iters: self.min_iters.max(1),
            max_iters: self.max_iters.max(1),
        }
    }
}

/// One run's results.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub kind: &'static str,
    pub started_unix_s: u64,
    pub duration_s: f64,
    pub machine: Machine,
    pub versions: std::collections::BTreeMap<String, String>,
    pub config: BenchConfig,
    pub figures: Figures,
    /// What the reference script reported about itself (versions, threads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<serde_json::Value>,
    pub notes: Vec<String>,
}

/// A directory removed when dropped (unless kept).
pub struct Scratch {
    pub dir: PathBuf,
    keep: bool,
}

impl Scratch {
    pub fn new(work: &Path, keep: bool) -> Result<Scratch> {
        let dir = work.join(format!("run-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).ok();
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch { dir, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: scratch kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Progress on stderr (stdout carries the table), with seconds since the first message.
pub fn say(msg: impl AsRef<str>) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("bench [{t:6.1}s]: {}", msg.as_ref());
}

/// Runs every selected part in order; `reference` (the Python interpreter and
/// script) adds the transformers figures beside ours.
pub fn run(cfg: &BenchConfig, reference: Option<&reference::Reference>) -> Result<Report> {
    let started = Instant::now();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut machine = Machine::probe(cfg.threads);
    let mut notes = Vec::new();
    let mut figs = Figures::default();
    let scratch = Scratch::new(&cfg.work_dir, cfg.keep_scratch)?;

    let device = cfg.device.open().context("opening the device")?;
    say(format!(
        "loading {} on {} in {} with {} threads",
        cfg.model.display(),
        cfg.device,
        cfg.dtype.as_str(),
        machine.candle_threads
    ));
    let t = Instant::now();
    let encoder = Arc::new(
        Encoder::load_with(&cfg.model, &device, cfg.dtype, cfg.text_weights)
            .with_context(|| format!("loading {}", cfg.model.display()))?
            // As the daemon runs it: end-to-end indexing measures its default.
            .with_preprocessing(dualsight::config::Settings::default().preprocessing()),
    );
    figs.add(
        "model.load_s",
        "model",
        "checkpoint load (weights + fingerprint hash)",
        "s",
        report::Better::Lower,
        t.elapsed().as_secs_f64(),
    );
    let t = Instant::now();
    dualsight::encoder::fingerprint(&cfg.model)?;
    figs.add(
        "model.fingerprint_s",
        "model",
        "  of which fingerprint (blake3 of config + weights)",
        "s",
        report::Better::Lower,
        t.elapsed().as_secs_f64(),
    );
    let ids = encoder.tokenize(&[&synth::query_texts(1, cfg.seed)[0]])?;
    let tokens = ids.ids.dim(1)?;
    notes.push(format!(
        "queries are {} words, {tokens} tokens with [CLS]/[SEP]",
        synth::QUERY_WORDS
    ));

    if cfg.sections.vision {
        vision::run(cfg, &encoder, &mut figs)?;
    }
    let jpegs = if cfg.sections.ingest {
        let dir = assets::jpeg_dir(
            &cfg.work_dir,
            cfg.image_size.0,
            cfg.image_size.1,
            cfg.jpeg_quality,
        );
        let files = assets::make_jpegs(
            &dir,
            &cfg.source_images,
            cfg.images,
            cfg.image_size,
            cfg.jpeg_quality,
            cfg.threads,
        )?;
        ingest::run(cfg, &encoder, &files, &scratch.dir, &mut figs, &mut notes)?;
        files
    } else {
        Vec::new()
    };
    if cfg.sections.search || cfg.sections.restart {
        search::run(
            cfg,
            &encoder,
            &scratch.dir,
            reference.is_some(),
            &mut figs,
            &mut notes,
        )?;
    }
    drop(encoder);

    let mut reference_info = None;
    if let Some(r) = reference {
        let out = r.run(cfg, &jpegs, &scratch.dir)?;
        figs.merge_reference(&out.figures);
        reference_info = Some(out.info);
    }
    machine.load_end = assets::loadavg();
    Ok(Report {
        kind: if cfg.quick { "quick" } else { "full" },
        started_unix_s,
        duration_s: started.elapsed().as_secs_f64(),
        machine,
        versions: assets::crate_versions(),
        config: cfg.clone(),
        figures: figs,
        reference: reference_info,
        notes,
    })
}

/// The index parameters the daemon runs with by default (config/dualsight.toml).
pub fn daemon_index_params() -> IndexParams {
    let s = dualsight::config::Settings::default();
    IndexParams {
        max_nb_connection: s.index.m,
        ef_construction: s.index.ef_construction,
        ef_search: s.index.ef_search,
        ..IndexParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every part end to end on the tiny fixture checkpoint with tiny sizes
    /// (no daemon child: a test build need not have built `dualsight`). Checks that each
    /// figure is produced and sane, never how fast anything is.
    #[test]
    fn smoke_on_tiny_model() {
        let tree = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        let work = tempfile::tempdir().unwrap();
        let images = tree.join("tests/fixtures/images");
        let cfg = BenchConfig {
            model: tree.join("tests/fixtures/models/vit-bert"),
            work_dir: work.path().to_path_buf(),
            device: DeviceSpec::Cpu,
            dtype: DType::F32,
            text_weights: TextWeights::Dtype,
            threads: 2,
            sections: Sections::ALL,
            batches: vec![1, 2],
            min_secs: 0.0,
            min_iters: 1,
            max_iters: 2,
            images: 3,
            image_size: (64, 48),
            jpeg_quality: 80,
            ingest_batch: 2,
            sizes: vec![600, 300],
            queries: 4,
            recall_queries: 20,
            k: 5,
            index: daemon_index_params(),
            ef_sweep: vec![32],
            daemon: false,
            dualsight: PathBuf::from("dualsight"),
            seed: 1,
            keep_scratch: false,
            daemon_data: None,
            quick: true,
            source_images: vec![images.join("chelsea.png"), images.join("rocket.jpg")],
        };
        let r = run(&cfg, None).unwrap();
        let value = |key: &str| {
            r.figures
                .get(key)
                .and_then(|f| f.dualsight)
                .unwrap_or_else(|| panic!("no figure {key}:\n{}", r.figures.table(false)))
        };
        let ef = daemon_index_params().ef_search;
        let p99 = format!("search.n600.ef{ef}.p99_ms");
        let recall = format!("search.n300.ef{ef}.recall5");
        for key in [
            "model.load_s",
            "vision.b1.images_per_s",
            "vision.b2.images_per_s",
            "decode.ms_per_image",
            "decode.images_per_s",
            "decode_fast.ms_per_image",
            "decode_fast.images_per_s",
            "ingest.images_per_s",
            "text.p50_ms",
            "text.p99_ms",
            "index.n300.build_at_once_s",
            "index.n600.live_inserts_per_s",
            "exact.n600.p50_ms",
            p99.as_str(),
            "query.n600.p50_ms",
            "store.commit_per_s",
            "restart.checkpoint_s",
            "restart.index_load_s",
        ] {
            let v = value(key);
            assert!(v.is_finite() && v > 0.0, "{key} = {v}");
        }
        for key in [recall.as_str(), "search.n600.ef32.recall5"] {
            let v = value(key);
            assert!((0.0..=1.0).contains(&v), "{key} = {v}");
        }
        assert!(r.figures.get("daemon.ready_s").is_none());
        // Scratch is cleaned up; the generated JPEGs stay as a cache.
        let left: Vec<_> = std::fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["jpeg-64x48-q80-v2".to_string()]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["config"]["sizes"], serde_json::json!([600, 300]));
        assert!(r.figures.table(false).contains("text query"));
    }

    #[test]
    fn sections_parse() {
        let s = Sections::parse("vision, search").unwrap();
        assert_eq!(s.names(), ["vision", "search"]);
        assert!(Sections::parse("vision,gpu").is_err());
        assert_eq!(Sections::ALL.names().len(), 4);
    }
}
