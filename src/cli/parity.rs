//! `dualsight parity --model DIR`: this build, on this device and dtype,
//! against the numbers transformers recorded beside a checkpoint
//! (`reference.safetensors`, as `scripts/make_fixtures.py` writes them for
//! every fixture): the same pixels and token ids in, the embeddings
//! compared. It is how a GPU machine without a Rust toolchain checks a
//! carried binary (`scripts/gpu-check.sh`).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde_json::json;

use crate::device::{DeviceSpec, parse_dtype};
use crate::model::{DualEncoder, TokenInput};

#[derive(Debug, Args)]
pub struct ParityArgs {
    /// A checkpoint directory holding `reference.safetensors`.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// In f32: the largest absolute difference that passes.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f32,
    /// In f16 / bf16: the lowest cosine that passes.
    #[arg(long, default_value_t = 0.999)]
    pub min_cosine: f32,
}

/// Prints one JSON object; `Ok(false)` when a check fails.
pub fn run(args: &ParityArgs) -> Result<bool> {
    let path = args.model.join("reference.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("{}: cannot read the reference tensors", path.display()))?;
    let get = |name: &str| -> Result<Tensor> {
        tensors
            .get(name)
            .cloned()
            .with_context(|| format!("{}: no tensor {name:?}", path.display()))
    };
    let device = args.device.open()?;
    let dtype = parse_dtype(&args.dtype)?;
    let model = DualEncoder::load(&args.model, &device, dtype)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let text = token_input(&tensors, &get)?;
    let images = model.embed_images(&get("all_pixel_values")?)?;
    let out = model.forward(&text, &get("pixel_values")?, false)?;

    let mut pass = true;
    let mut checks = Vec::new();
    for (name, got, want) in [
        ("image_embeds", images, get("all_image_embeds")?),
        ("text_embeds", out.text_embeds, get("text_embeds")?),
    ] {
        let (max_abs, min_cos) = compare(&got, &want)
            .with_context(|| format!("{name}: shapes {:?} and {:?}", got.dims(), want.dims()))?;
        let ok = if dtype == DType::F32 {
            max_abs <= args.tolerance
        } else {
            min_cos >= args.min_cosine
        };
        pass &= ok;
        checks.push(json!({
            "name": name,
            "rows": want.dims().first(),
            "max_abs_diff": max_abs,
            "min_cosine": min_cos,
            "pass": ok,
        }));
    }
    let report = json!({
        "model": args.model,
        "device": args.device.to_string(),
        "dtype": args.dtype,
        "tolerance": if dtype == DType::F32 {
            json!({"max_abs_diff": args.tolerance})
        } else {
            json!({"min_cosine": args.min_cosine})
        },
        "checks": checks,
        "pass": pass,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(pass)
}

/// The recorded token ids, mask and (for BERT) token types, as u32.
fn token_input(
    tensors: &HashMap<String, Tensor>,
    get: &dyn Fn(&str) -> Result<Tensor>,
) -> Result<TokenInput> {
    let ids = get("input_ids")?.to_dtype(DType::U32)?;
    let mask = match tensors.get("attention_mask") {
        Some(m) => m.to_dtype(DType::U32)?,
        None => ids.ones_like()?,
    };
    let type_ids = tensors
        .get("token_type_ids")
        .map(|t| t.to_dtype(DType::U32))
        .transpose()?;
    Ok(TokenInput {
        ids,
        mask,
        type_ids,
    })
}

/// The largest absolute difference and the lowest row cosine of two `[n, d]`
/// tensors.
fn compare(got: &Tensor, want: &Tensor) -> Result<(f32, f32)> {
    let got = got
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?;
    let want = want.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    anyhow::ensure!(
        got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| a.len() == b.len()),
        "different shapes"
    );
    let mut max_abs = 0f32;
    let mut min_cos = 1f32;
    for (a, b) in got.iter().zip(&want) {
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        min_cos = min_cos.min((dot / (norm(a) * norm(b))) as f32);
        for (x, y) in a.iter().zip(b) {
            max_abs = max_abs.max((x - y).abs());
        }
    }
    // `min` and `max` pass over NaN: a model whose outputs are NaN would
    // compare as perfect. Any non-finite output fails both measures.
    if got.iter().flatten().any(|x| !x.is_finite()) {
        return Ok((f32::NAN, f32::NAN));
    }
    Ok((max_abs, min_cos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_finds_the_worst_row() -> Result<()> {
        let a = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu)?;
        let b = Tensor::new(&[[1f32, 0.0], [0.6, 0.8]], &Device::Cpu)?;
        let (max_abs, min_cos) = compare(&a, &b)?;
        assert!((max_abs - 0.6).abs() < 1e-6);
        assert!((min_cos - 0.8).abs() < 1e-6);
        let c = Tensor::new(&[[1f32, 0.0, 0.0]], &Device::Cpu)?;
        assert!(compare(&a, &c).is_err());
        let nan = Tensor::new(&[[f32::NAN, f32::NAN], [f32::NAN, f32::NAN]], &Device::Cpu)?;
        let (max_abs, min_cos) = compare(&nan, &b)?;
        assert!(max_abs.is_nan() && min_cos.is_nan());
        Ok(())
    }
}
