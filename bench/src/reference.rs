//! The reference side: `scripts/bench_reference.py` (transformers + PyTorch
//! f32 + PIL) run on the same checkpoint, files, texts and thread count; its
//! figures use the same keys as ours.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::json;

use crate::report::RefFigure;
use crate::suite::{BenchConfig, say};
use crate::synth::query_texts;

pub struct Reference {
    pub python: String,
    pub script: PathBuf,
}

#[derive(Debug, Deserialize)]
pub struct RefOutput {
    pub figures: Vec<RefFigure>,
    #[serde(default)]
    pub info: serde_json::Value,
}

impl Reference {
    /// The JSON the script is driven by: every parameter, so both sides
    /// measure the same thing.
    pub fn params(cfg: &BenchConfig, jpegs: &[PathBuf]) -> serde_json::Value {
        json!({
            "model": cfg.model,
            "device": cfg.device.to_string(),
            "dtype": cfg.dtype.as_str(),
            "threads": cfg.threads,
            "sections": cfg.sections.names(),
            "batches": cfg.batches,
            "min_secs": cfg.min_secs,
            "min_iters": cfg.min_iters,
            "max_iters": cfg.max_iters,
            "jpegs": jpegs,
            "ingest_batch": cfg.ingest_batch,
            "sizes": cfg.sizes,
            "k": cfg.k,
            "texts": query_texts(cfg.queries.max(1), cfg.seed),
            "recall_queries": cfg.recall_queries,
            "index": {
                "m": cfg.index.max_nb_connection,
                "ef_construction": cfg.index.ef_construction,
                "ef_search": cfg.index.ef_search,
            },
            "ef_sweep": cfg.ef_sweep,
            "seed": cfg.seed,
        })
    }

    pub fn run(&self, cfg: &BenchConfig, jpegs: &[PathBuf], scratch: &Path) -> Result<RefOutput> {
        let params = scratch.join("reference-params.json");
        let out = scratch.join("reference-out.json");
        let mut p = Self::params(cfg, jpegs);
        // Where `search::shared_vectors` left the vectors of each size.
        p["vectors_dir"] = json!(scratch);
        std::fs::write(&params, serde_json::to_string_pretty(&p)?)?;
        say(format!(
            "reference: {} {}",
            self.python,
            self.script.display()
        ));
        let n = cfg.threads.to_string();
        // The child's stdout goes to our stderr: our stdout is the table.
        let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
        let status = Command::new(&self.python)
            .arg(&self.script)
            .arg("--params")
            .arg(&params)
            .arg("--out")
            .arg(&out)
            .env("OMP_NUM_THREADS", &n)
            .env("MKL_NUM_THREADS", &n)
            .env("OPENBLAS_NUM_THREADS", &n)
            .env("TOKENIZERS_PARALLELISM", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr))
            .status()
            .with_context(|| format!("running {} (set --python)", self.python))?;
        if !status.success() {
            bail!("{} exited with {status}", self.script.display());
        }
        let text = std::fs::read_to_string(&out)
            .with_context(|| format!("{}: the reference wrote no result", out.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: bad result", out.display()))
    }
}
