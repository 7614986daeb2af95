//! Writes Fashion-MNIST (Debian's `dataset-fashion-mnist`, idx files) as
//! class folders of PNG files, the layout `dualsight train` and the daemon
//! read:
//!
//! ```text
//! cargo run --release -p dualsight-bench --example fashion_mnist -- \
//!     --from /usr/share/datasets/fashion-mnist --out /tmp/fashion [--per-class N] [--test-per-class N]
//! ```
//!
//! gives `OUT/train/<class>/NNNNN.png` (60,000 photos) and `OUT/test/...`
//! (10,000), or the first N of each class per split.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;

use dualsight_bench::assets::FASHION_MNIST_CLASSES as CLASSES;

#[derive(Parser)]
struct Args {
    /// The folder with the four `*-ubyte.gz` files.
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    from: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Training photos per class (all when absent).
    #[arg(long)]
    per_class: Option<usize>,
    /// Test photos per class (all when absent).
    #[arg(long)]
    test_per_class: Option<usize>,
}

/// Reads a gzipped idx file: its dimensions and bytes, checked against `magic`.
fn idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{}: not a gzip file", path.display()))?;
    let word = |i: usize| -> Result<usize> {
        let b = bytes
            .get(4 * i..4 * i + 4)
            .with_context(|| format!("{}: truncated header", path.display()))?;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    if word(0)? != magic as usize {
        bail!(
            "{}: magic {:#x}, expected {magic:#x}",
            path.display(),
            word(0)?
        );
    }
    let rank = magic as usize & 0xff;
    let dims = (1..=rank).map(word).collect::<Result<Vec<_>>>()?;
    let data = bytes.split_off(4 * (rank + 1));
    if data.len() != dims.iter().product::<usize>() {
        bail!(
            "{}: {} bytes of data for dimensions {dims:?}",
            path.display(),
            data.len()
        );
    }
    Ok((dims, data))
}

fn split(args: &Args, prefix: &str, name: &str, per_class: Option<usize>) -> Result<usize> {
    let (dims, pixels) = idx(
        &args.from.join(format!("{prefix}-images-idx3-ubyte.gz")),
        0x803,
    )?;
    let (_, labels) = idx(
        &args.from.join(format!("{prefix}-labels-idx1-ubyte.gz")),
        0x801,
    )?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    if labels.len() != n {
        bail!("{prefix}: {} labels for {n} images", labels.len());
    }
    let mut counts = [0usize; 10];
    let mut written = 0;
    for (i, &label) in labels.iter().enumerate() {
        let class = CLASSES
            .get(label as usize)
            .with_context(|| format!("{prefix}: label {label} at {i}, expected 0..=9"))?;
        if per_class.is_some_and(|m| counts[label as usize] >= m) {
            continue;
        }
        counts[label as usize] += 1;
        let dir = args.out.join(name).join(class);
        std::fs::create_dir_all(&dir)?;
        let img = image::GrayImage::from_raw(
            w as u32,
            h as u32,
            pixels[i * h * w..(i + 1) * h * w].to_vec(),
        )
        .context("image buffer")?;
        img.save(dir.join(format!("{i:05}.png")))?;
        written += 1;
    }
    Ok(written)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let train = split(&args, "train", "train", args.per_class)?;
    let test = split(&args, "t10k", "test", args.test_per_class)?;
    println!(
        "wrote {train} training and {test} test photos under {}",
        args.out.display()
    );
    Ok(())
}
