//! How many images go to the vision tower at once: `[ingest] batch_size =
//! "auto"` sized from the GPU's free memory, and a batch that still runs
//! out of it split in halves instead of failing (the files would only be
//! retried by the next scan, and fail again).

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device};

use crate::config::BatchSize;
use crate::model::config::VisionConfig;

/// Share of the free device memory a batch may take: the rest is for the
/// allocator's fragmentation, cuBLAS workspaces and the text tower's queries.
const MARGIN: f64 = 0.7;

/// The batch `setting` means for this model on `device`.
pub fn resolve(setting: BatchSize, vision: &VisionConfig, device: &Device, dtype: DType) -> usize {
    if setting != BatchSize::Auto || device.is_cpu() {
        return setting.on_cpu();
    }
    match free_memory(device) {
        Some(free) => {
            let n = fitting(free, per_image_bytes(vision, dtype.size_in_bytes()));
            tracing::info!(
                free_bytes = free,
                batch_size = n,
                "batch size chosen from the GPU's free memory"
            );
            n
        }
        None => {
            let n = BatchSize::CPU_AUTO;
            tracing::warn!(
                batch_size = n,
                "cannot read the GPU's free memory: batch size {n}; set [ingest] batch_size to choose"
            );
            n
        }
    }
}

/// The most images whose activations fit in `MARGIN` of `free` bytes, each
/// needing `per_image`, at least 1 and at most [`BatchSize::MAX`], rounded
/// down to a multiple of 8 past 8 (the GEMM tiles' granularity).
pub fn fitting(free: u64, per_image: u64) -> usize {
    let n = (free as f64 * MARGIN / per_image.max(1) as f64) as usize;
    let n = n.clamp(1, BatchSize::MAX);
    if n > 8 { n / 8 * 8 } else { n }
}

/// Peak activation bytes one image adds to a vision forward (no gradients,
/// so one layer's buffers at a time): the residual stream and its norm, q,
/// k, v and the context (6 × tokens × hidden), the MLP's hidden layer
/// (tokens × intermediate), the attention scores and probabilities (2 ×
/// heads × tokens²) and the pixels, doubled for the allocator's rounding
/// and the copies between ops.
pub fn per_image_bytes(vision: &VisionConfig, elem: usize) -> u64 {
    let (t, h) = (vision.tokens() as u64, vision.hidden_size() as u64);
    let (heads, inter) = (vision.num_heads() as u64, vision.intermediate_size() as u64);
    let (ih, iw) = vision.image_size();
    let elems = 6 * t * h + t * inter + 2 * heads * t * t;
    let pixels = (vision.num_channels() * ih * iw * 4) as u64;
    2 * (elems * elem as u64 + pixels)
}

/// Free bytes on the device; `None` where it cannot say.
#[cfg(feature = "cuda")]
fn free_memory(device: &Device) -> Option<u64> {
    let cuda = device.as_cuda_device().ok()?;
    let (free, _total) = cuda.cuda_stream().context().mem_get_info().ok()?;
    Some(free as u64)
}

#[cfg(not(feature = "cuda"))]
fn free_memory(_device: &Device) -> Option<u64> {
    None
}

/// True for the error a device gives when a batch does not fit.
pub fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("out_of_memory")
}

/// Runs `embed` over `items` in chunks of at most `cap`; a chunk that runs
/// out of memory is split in halves and `cap` lowered for every later
/// batch, down to single items (whose failure is returned).
pub fn embed_in_halves<T, V, E: std::fmt::Display>(
    items: &[T],
    cap: &AtomicUsize,
    mut embed: impl FnMut(&[T]) -> Result<Vec<V>, E>,
) -> Result<Vec<V>, E> {
    let mut out = Vec::with_capacity(items.len());
    let mut rest = items;
    while !rest.is_empty() {
        let size = cap.load(Ordering::Relaxed).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        match embed(chunk) {
            Ok(v) => out.extend(v),
            Err(e) if size > 1 && is_out_of_memory(&e.to_string()) => {
                let half = size / 2;
                tracing::warn!(batch = size, now = half, error = %e, "out of device memory: halving the batch");
                cap.store(half, Ordering::Relaxed);
                continue;
            }
            Err(e) => return Err(e),
        }
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::parse_vision;
    use std::path::Path;

    fn vit_b16() -> VisionConfig {
        let v = serde_json::json!({
            "model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072, "image_size": 224,
            "patch_size": 16, "num_channels": 3
        });
        parse_vision(&v, Path::new("config.json"), "vision_config").unwrap()
    }

    #[test]
    fn a_vit_b16_image_needs_tens_of_megabytes() {
        let c = vit_b16();
        assert_eq!(c.tokens(), 197);
        let f32_bytes = per_image_bytes(&c, 4);
        // 6·197·768 + 197·3072 + 2·12·197² ≈ 2.44M values, doubled, plus pixels.
        assert!((18 << 20..22 << 20).contains(&f32_bytes), "{f32_bytes}");
        assert!(per_image_bytes(&c, 2) < f32_bytes * 6 / 10);
    }

    #[test]
    fn the_batch_fits_the_free_memory_with_a_margin() {
        let per = 20 << 20;
        // 80 GiB free (an H100 at rest): 0.7 · 81920 MiB / 20 MiB = 2867 → 2864;
        // 200 GiB would pass the cap.
        assert_eq!(fitting(80 << 30, per), 2864);
        assert_eq!(fitting(200 << 30, per), BatchSize::MAX);
        // 4 GiB free: 0.7 · 4096 MiB / 20 MiB = 143 → 136 (a multiple of 8).
        assert_eq!(fitting(4 << 30, per), 136);
        let n = fitting(4 << 30, per) as u64;
        assert!(n * per <= ((4u64 << 30) as f64 * MARGIN) as u64);
        // Less than one image's worth still runs one at a time.
        assert_eq!(fitting(1 << 20, per), 1);
        assert_eq!(fitting(0, per), 1);
        assert_eq!(fitting(5 * per, per), 3);
    }

    #[test]
    fn auto_on_the_cpu_and_fixed_sizes_are_what_they_say() {
        let c = vit_b16();
        assert_eq!(
            resolve(BatchSize::Auto, &c, &Device::Cpu, DType::F32),
            BatchSize::CPU_AUTO
        );
        assert_eq!(
            resolve(BatchSize::Fixed(5), &c, &Device::Cpu, DType::F32),
            5
        );
    }

    #[test]
    fn out_of_memory_halves_the_batch_until_it_fits() {
        // A device that fits 3 images at a time.
        let cap = AtomicUsize::new(16);
        let mut calls = Vec::new();
        let items: Vec<u32> = (0..10).collect();
        let got = embed_in_halves(&items, &cap, |chunk: &[u32]| {
            calls.push(chunk.len());
            if chunk.len() > 3 {
                Err("CUDA_ERROR_OUT_OF_MEMORY: out of memory".to_string())
            } else {
                Ok(chunk.iter().map(|i| i * 10).collect())
            }
        })
        .unwrap();
        assert_eq!(got, (0..10).map(|i| i * 10).collect::<Vec<_>>());
        assert_eq!(calls, [10, 5, 2, 2, 2, 2, 2]);
        assert_eq!(
            cap.load(Ordering::Relaxed),
            2,
            "later batches start at the size that fitted"
        );
    }

    #[test]
    fn other_errors_and_single_images_are_not_retried() {
        let cap = AtomicUsize::new(8);
        let mut calls = 0;
        let err = embed_in_halves(
            &[1, 2, 3],
            &cap,
            &mut |_: &[i32]| -> Result<Vec<i32>, String> {
                calls += 1;
                Err("shape mismatch".into())
            },
        )
        .unwrap_err();
        assert_eq!((err.as_str(), calls), ("shape mismatch", 1));
        let mut calls = 0;
        let cap = AtomicUsize::new(1);
        assert!(
            embed_in_halves(&[1], &cap, |_: &[i32]| -> Result<Vec<i32>, String> {
                calls += 1;
                Err("out of memory".into())
            })
            .is_err()
        );
        assert_eq!(calls, 1);
        assert!(is_out_of_memory(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"
        ));
        assert!(!is_out_of_memory("no such file"));
    }
}
