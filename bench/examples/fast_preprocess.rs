//! The fast preprocessing path against the exact one, on real files: for each
//! file the JPEG scale the fast path chose, the mean pixel difference, and the
//! cosine of the two embeddings; then the CPU time per image of each path on
//! one thread. benches/results/HISTORY.md ("Decode and preprocess") was measured with it:
//!
//! ```sh
//! cargo run --release -p dualsight-bench --example fast_preprocess -- MODEL_DIR FILE...
//! taskset -c 0 target/release/examples/fast_preprocess --time-only MODEL_DIR FILE...
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use dualsight::encoder::Encoder;
use dualsight::preprocess::{Preprocessing, Source};

/// CPU time this thread has run, in seconds (Linux's schedstat: nanoseconds
/// on CPU, not counting time other processes on a busy machine took).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns * 1e-9)
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let time_only = args.first().is_some_and(|a| a == "--time-only");
    if time_only {
        args.remove(0);
    }
    let (model, files) = args
        .split_first()
        .context("usage: fast_preprocess [--time-only] MODEL_DIR FILE...")?;
    let mut files: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
    let exact = Encoder::load(Path::new(model), &Device::Cpu, DType::F32)?;
    let fast = Encoder::load(Path::new(model), &Device::Cpu, DType::F32)?
        .with_preprocessing(Preprocessing::Fast);

    if !time_only {
        let mut worst = (f32::INFINITY, String::new());
        for path in &files {
            let name = path.display().to_string();
            let (a, b) = match (
                exact.preprocess(Source::Path(path)),
                fast.preprocess(Source::Path(path)),
            ) {
                (Ok(a), Ok(b)) => (a, b),
                (a, b) => {
                    let say = |r: Result<_, dualsight::encoder::EncoderError>| match r {
                        Ok(_) => "decoded".to_string(),
                        Err(e) => e.to_string(),
                    };
                    println!("exact: {}\nfast:  {}", say(a), say(b));
                    continue;
                }
            };
            let scale = fast
                .image_processor()
                .decode_reduced(Source::Path(path), &fast.limits())?
                .scale;
            let std = exact.image_processor().config().image_std[0] as f32;
            let levels = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
                * 255.0
                * std;
            let e = exact.embed_pixels(&[a, b])?;
            let cos: f32 = e[0].iter().zip(&e[1]).map(|(x, y)| x * y).sum();
            println!("{name}: 1/{scale}, mean diff {levels:.2} grey levels, cosine {cos:.6}");
            if cos < worst.0 {
                worst = (cos, name);
            }
        }
        println!("worst cosine {:.6}: {}", worst.0, worst.1);
    }

    // Files neither path decodes are not timed.
    files.retain(|p| exact.preprocess(Source::Path(p)).is_ok());
    // Alternating passes, so load from elsewhere hits both paths alike.
    let (mut ex, mut fa) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for (encoder, out) in [(&exact, &mut ex), (&fast, &mut fa)] {
            let start = cpu_seconds();
            for path in &files {
                std::hint::black_box(encoder.preprocess(Source::Path(path))?);
            }
            out.push((cpu_seconds() - start) * 1e3 / files.len() as f64);
        }
    }
    for (name, v) in [("exact", &mut ex), ("fast", &mut fa)] {
        v.sort_by(f64::total_cmp);
        println!(
            "{name}: CPU ms/image over {} files, 5 passes: min {:.1}, median {:.1}, max {:.1}",
            files.len(),
            v[0],
            v[2],
            v[4]
        );
    }
    Ok(())
}
