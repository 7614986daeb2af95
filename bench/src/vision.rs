//! Figure 1: vision tower throughput from ready pixel tensors (vision tower +
//! projection + L2 norm, what `embed_images` does for the daemon), per batch
//! size; the median of repeated runs after one warm-up.

use anyhow::Result;
use candle_core::Tensor;

use crate::report::{Better, Figures};
use crate::stats::{measure, median};
use crate::suite::{BenchConfig, say};
use crate::synth::Rng;
use dualsight::encoder::Encoder;

pub const SECTION: &str = "1. vision tower, pixels ready (embed_images)";

/// Deterministic pixel values in [-1, 1) (the range after ViT normalisation).
pub fn pixels(batch: usize, (c, h, w): (usize, usize, usize), seed: u64) -> Vec<f32> {
    let mut r = Rng(seed ^ 0x9_1C5E1);
    (0..batch * c * h * w)
        .map(|_| r.uniform() * 2.0 - 1.0)
        .collect()
}

pub fn run(cfg: &BenchConfig, enc: &Encoder, figs: &mut Figures) -> Result<()> {
    let model = enc.model();
    let shape = model.image_shape();
    for &b in &cfg.batches {
        let px = Tensor::from_vec(
            pixels(b, shape, cfg.seed),
            (b, shape.0, shape.1, shape.2),
            model.device(),
        )?;
        say(format!("vision tower, batch {b}"));
        let times = measure(cfg.repeat(), || -> Result<()> {
            let e = model.embed_images(&px)?;
            // Forces the result (a no-op wait on CPU, a sync on CUDA).
            let _ = e.to_vec2::<f32>()?;
            Ok(())
        })?;
        let t = median(&times).unwrap_or(f64::NAN);
        figs.add(
            format!("vision.b{b}.images_per_s"),
            SECTION,
            format!("batch {b}"),
            "images/s",
            Better::Higher,
            b as f64 / t,
        )
        .note = Some(format!("median of {}", times.len()));
    }
    Ok(())
}
