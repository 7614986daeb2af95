//! What a reduced-precision model changes in what a search finds: the same
//! checkpoint loaded in f32 and in `--dtype` (default bf16) on this CPU
//! embeds the same photos and texts; prints the cosine between each pair of
//! embeddings (worst and mean) and recall@10 of the reduced model's
//! neighbours against the f32 model's, for text queries and for photo
//! queries, each model searching its own embeddings exactly.
//!
//! cargo run --release -p dualsight-bench --example dtype_recall -- <model-dir> <photo-dir> [photos] [dtype]
//!
//! `TEXT_WEIGHTS=int8` loads the reduced model with `--text-weights int8`
//! (its text tower's dense weights in 8 bits; `f32` as the dtype then
//! shows what the 8 bits alone change).
//!
//! Photos are every PNG/JPEG under the folder, sorted, up to `photos`
//! (default 1000); e.g. the Fashion-MNIST test set written by the
//! `fashion_mnist` example.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use dualsight::encoder::Encoder;
use dualsight::preprocess::Source;
use dualsight_bench::assets::FASHION_MNIST_CLASSES;

const K: usize = 10;
/// Photos per vision batch: a many-rows product, as the daemon's batches are.
const BATCH: usize = 16;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, photos, limit, dtype) = match &args[..] {
        [m, p, rest @ ..] if rest.len() <= 2 => (
            PathBuf::from(m),
            PathBuf::from(p),
            rest.first()
                .map_or(Ok(1000), |n| n.parse())
                .context("photos")?,
            match rest.get(1).map_or("bf16", |d| d.as_str()) {
                "bf16" => DType::BF16,
                "f16" => DType::F16,
                "f32" => DType::F32,
                other => bail!("dtype {other}: expected bf16, f16 or f32"),
            },
        ),
        _ => bail!("usage: dtype_recall <model-dir> <photo-dir> [photos] [bf16|f16|f32]"),
    };
    let text_weights: dualsight::device::TextWeights =
        std::env::var("TEXT_WEIGHTS").unwrap_or_default().parse()?;
    let files = photo_files(&photos, limit)?;
    if files.len() <= K {
        bail!(
            "{}: {} photos, need more than {K}",
            photos.display(),
            files.len()
        );
    }
    let texts: Vec<String> = FASHION_MNIST_CLASSES
        .iter()
        .chain(&OTHER_SUBJECTS)
        .flat_map(|s| {
            [
                format!("a photo of a {s}"),
                format!("{s} on a white background"),
            ]
        })
        .collect();
    let texts: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let embed = |dtype: DType, text| -> Result<Embedded> {
        let enc = Encoder::load_with(&model, &Device::Cpu, dtype, text)?;
        let t = Instant::now();
        let mut images = Vec::with_capacity(files.len());
        for chunk in files.chunks(BATCH) {
            let pixels = chunk
                .iter()
                .map(|f| enc.preprocess(Source::Path(f)))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            images.extend(enc.embed_pixels(&pixels)?);
        }
        let secs = t.elapsed().as_secs_f64();
        Ok(Embedded {
            images,
            texts: enc.embed_texts(&texts)?,
            secs,
        })
    };
    let Embedded {
        images: f32_images,
        texts: f32_texts,
        secs: f32_s,
    } = embed(DType::F32, Default::default())?;
    let Embedded {
        images: low_images,
        texts: low_texts,
        secs: low_s,
    } = embed(dtype, text_weights)?;
    let report = |what: &str, a: &[Vec<f32>], b: &[Vec<f32>]| {
        let c: Vec<f32> = a.iter().zip(b).map(|(x, y)| dot(x, y)).collect();
        let worst = c.iter().copied().fold(1f32, f32::min);
        let mean = c.iter().map(|&v| f64::from(v)).sum::<f64>() / c.len() as f64;
        println!(
            "{what}: cosine to f32 worst {worst:.6}, mean {mean:.6} ({} of them)",
            c.len()
        );
    };
    println!(
        "{} photos, {} texts, {dtype:?} (text weights {text_weights:?}) against f32 on this CPU (`DUALSIGHT_CPU` unset or as given)",
        files.len(),
        texts.len()
    );
    println!("photos embedded in {f32_s:.1} s (f32), {low_s:.1} s ({dtype:?})");
    report("photos", &f32_images, &low_images);
    report("texts", &f32_texts, &low_texts);
    let recall = |queries_f32: &[Vec<f32>], queries_low: &[Vec<f32>]| -> f64 {
        let found: usize = queries_f32
            .iter()
            .zip(queries_low)
            .map(|(qf, ql)| {
                let want = top(qf, &f32_images);
                top(ql, &low_images)
                    .iter()
                    .filter(|i| want.contains(i))
                    .count()
            })
            .sum();
        found as f64 / (K * queries_f32.len()) as f64
    };
    let photo_queries = files.len().min(200);
    println!(
        "recall@10 of {dtype:?}'s neighbours against f32's: text queries {:.4}, photo queries {:.4} (first {photo_queries} photos)",
        recall(&f32_texts, &low_texts),
        recall(&f32_images[..photo_queries], &low_images[..photo_queries]),
    );
    Ok(())
}

/// One model's embeddings of the photos and texts, and the photos' time.
struct Embedded {
    images: Vec<Vec<f32>>,
    texts: Vec<Vec<f32>>,
    secs: f64,
}

/// Subjects of the text queries beside Fashion-MNIST's classes.
const OTHER_SUBJECTS: [&str; 6] = ["cat", "dog", "car", "beach", "mountain", "city street"];

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Indices of the `K` rows of `rows` nearest to `q`, exactly.
fn top(q: &[f32], rows: &[Vec<f32>]) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (dot(q, r), i))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(K).map(|(_, i)| i).collect()
}

fn photo_files(dir: &Path, limit: usize) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    files.truncate(limit);
    Ok(files)
}
