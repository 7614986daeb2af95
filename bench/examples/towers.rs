//! Profiling driver: runs one tower in a loop so `perf record` sees only the
//! forward pass (`dualsight-bench` also measures load, decode and search).
//!
//! cargo run --release -p dualsight-bench --example towers -- <model-dir> vision|text <batch> <iters>
//!
//! `TOWERS_DTYPE=bf16` (or `f16`) loads the model as `--dtype` does, and
//! `TOWERS_TEXT_WEIGHTS=int8` as `--text-weights int8` does.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use dualsight::encoder::Encoder;

// The daemon's allocator: under glibc's, each product's large buffers are
// mapped and unmapped again, and the text tower ran ~1.6× slower.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    dualsight::heap::mimalloc_keep_freed_pages();
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, tower, batch, iters] = &args[..] else {
        anyhow::bail!("usage: towers <model-dir> vision|text <batch> <iters>");
    };
    let batch: usize = batch.parse().context("batch")?;
    let iters: usize = iters.parse().context("iters")?;
    let t = Instant::now();
    let dtype = match std::env::var("TOWERS_DTYPE").as_deref() {
        Ok("bf16") => DType::BF16,
        Ok("f16") => DType::F16,
        Ok("f32") | Err(_) => DType::F32,
        Ok(other) => anyhow::bail!("TOWERS_DTYPE={other}: expected f32, bf16 or f16"),
    };
    let text = std::env::var("TOWERS_TEXT_WEIGHTS").unwrap_or_else(|_| "dtype".into());
    let text = text.parse()?;
    let enc = Encoder::load_with(dir.as_ref(), &Device::Cpu, dtype, text)?;
    eprintln!("load {:.3} s", t.elapsed().as_secs_f64());
    let model = enc.model();
    let mut times = Vec::new();
    match tower.as_str() {
        "vision" => {
            let (c, h, w) = model.image_shape();
            let px = Tensor::randn(0f32, 1f32, (batch, c, h, w), &Device::Cpu)?;
            for _ in 0..iters {
                let t = Instant::now();
                let _ = model.embed_images(&px)?.to_vec2::<f32>()?;
                times.push(t.elapsed().as_secs_f64());
            }
        }
        "text" => {
            let texts: Vec<String> = (0..batch)
                .map(|i| format!("a photo of dog {i} on the grass"))
                .collect();
            let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
            for _ in 0..iters {
                let t = Instant::now();
                let _ = enc.embed_texts(&refs)?;
                times.push(t.elapsed().as_secs_f64());
            }
        }
        other => anyhow::bail!("unknown tower {other}"),
    }
    let warm = &mut times[1.min(times.len() - 1)..].to_vec();
    warm.sort_by(|a, b| a.total_cmp(b));
    let med = warm[warm.len() / 2];
    eprintln!(
        "{tower} batch {batch}: median {:.1} ms, min {:.1} ms, {:.2} items/s",
        med * 1e3,
        warm[0] * 1e3,
        batch as f64 / med
    );
    Ok(())
}
