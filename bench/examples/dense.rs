//! Micro-benchmark of one dense layer shape, to see whether the few-row
//! kernel is bound by memory or by the FMA units: `layers` distinct weights
//! (so they stream from memory, as a text query's 12 layers do), `reps` times.
//!
//! cargo run --release -p dualsight-bench --example dense -- <m> <k> <n> <layers> [reps] [iters]
//!
//! `m 768 3072 36` is BERT-base's weight volume; `m 768 36 1` with many reps
//! keeps the weight in cache and shows the compute rate alone.
//! `DENSE_WEIGHTS=bf16` (or `f16`) stores the weights in that type, as
//! `--dtype bf16` on the CPU does. `DENSE_LAYOUT=panels` stores them as the
//! text tower of a model loaded for queries does (`PanelWeight`), and
//! `DENSE_LAYOUT=int8` as `--text-weights int8` does (8 bits a weight; the
//! GB/s printed then count the bytes of `DENSE_WEIGHTS`' type).

use std::time::Instant;

use anyhow::{Context, Result};
use dualsight::model::cpu::{PanelWeight, WeightElem, matmul_wt};
use half::{bf16, f16};

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("arguments are counts"))
        .collect::<Result<_>>()?;
    let (m, k, n, layers) = match args[..] {
        [m, k, n, layers, ..] => (m, k, n, layers),
        _ => anyhow::bail!("usage: dense <m> <k> <n> <layers> [reps] [iters]"),
    };
    let reps = args.get(4).copied().unwrap_or(1);
    let iters = args.get(5).copied().unwrap_or(7);
    let ws: Vec<Vec<f32>> = (0..layers)
        .map(|l| (0..n * k).map(|i| ((i + l) % 7) as f32 * 0.01).collect())
        .collect();
    let shape = Shape {
        m,
        k,
        n,
        reps,
        iters,
    };
    match std::env::var("DENSE_WEIGHTS").as_deref() {
        Ok("bf16") => run(&shape, &convert(&ws, bf16::from_f32)),
        Ok("f16") => run(&shape, &convert(&ws, f16::from_f32)),
        Ok("f32") | Err(_) => run(&shape, &ws),
        Ok(other) => anyhow::bail!("DENSE_WEIGHTS={other}: expected f32, bf16 or f16"),
    }
}

struct Shape {
    m: usize,
    k: usize,
    n: usize,
    reps: usize,
    iters: usize,
}

fn convert<W>(ws: &[Vec<f32>], f: fn(f32) -> W) -> Vec<Vec<W>> {
    ws.iter()
        .map(|w| w.iter().map(|&v| f(v)).collect())
        .collect()
}

fn run<W: WeightElem + candle_core::WithDType>(s: &Shape, ws: &[Vec<W>]) -> Result<()> {
    let Shape {
        m,
        k,
        n,
        reps,
        iters,
    } = *s;
    let x: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32).collect();
    let mut dst = vec![0f32; m * n];
    let panels = match std::env::var("DENSE_LAYOUT").as_deref() {
        Ok("panels") => ws
            .iter()
            .map(|w| {
                let t = candle_core::Tensor::from_slice(w, (n, k), &candle_core::Device::Cpu)?;
                PanelWeight::from_tensor(&t).context("a CPU weight")
            })
            .collect::<Result<Vec<_>>>()?,
        Ok("int8") => ws
            .iter()
            .map(|w| {
                let t = candle_core::Tensor::from_slice(w, (n, k), &candle_core::Device::Cpu)?;
                PanelWeight::from_tensor_int8(&t).context("a CPU weight")
            })
            .collect::<Result<Vec<_>>>()?,
        Ok("rows") | Err(_) => Vec::new(),
        Ok(other) => anyhow::bail!("DENSE_LAYOUT={other}: expected rows, panels or int8"),
    };
    let mut best = f64::INFINITY;
    for _ in 0..iters {
        let t = Instant::now();
        for _ in 0..reps {
            if panels.is_empty() {
                for w in ws {
                    matmul_wt(&x, w, (m, k, n), &mut dst, n, false);
                }
            } else {
                for p in &panels {
                    p.matmul(&x, m, &mut dst, n, false);
                }
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let calls = (reps * ws.len()) as f64;
    println!(
        "m={m} k={k} n={n} ({} B weights): best {:.2} ms, weights at {:.2} GB/s, {:.1} GFLOP/s",
        std::mem::size_of::<W>(),
        best * 1e3,
        calls * (n * k * std::mem::size_of::<W>()) as f64 / best / 1e9,
        calls * 2.0 * (m * n * k) as f64 / best / 1e9
    );
    Ok(())
}
