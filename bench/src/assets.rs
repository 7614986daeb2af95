//! What a run needs besides code: the full-size random checkpoint, the
//! 4000×3000 JPEGs, and facts about the machine (CPU, memory, versions, RSS).

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::RgbImage;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::{self, FilterType};
use serde::Serialize;

use crate::synth::Rng;
use dualsight::model::DualEncoder;

/// transformers 5.24 `ViTConfig().to_dict()`: ViT-B/16 at 224 px.
pub const VIT_BASE_CONFIG: &str = r#"{
  "architectures": null, "attention_probs_dropout_prob": 0.0, "chunk_size_feed_forward": 0,
  "dtype": null, "encoder_stride": 16, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
  "hidden_size": 768, "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "image_size": 224,
  "initializer_range": 0.02, "intermediate_size": 3072, "is_encoder_decoder": false,
  "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "layer_norm_eps": 1e-12, "model_type": "vit",
  "num_attention_heads": 12, "num_channels": 3, "num_hidden_layers": 12,
  "output_attentions": false, "output_hidden_states": false, "patch_size": 16,
  "pooler_act": "tanh", "pooler_output_size": 768, "problem_type": null, "qkv_bias": true,
  "return_dict": true, "transformers_version": "5.24.0"
}"#;

/// transformers 5.24 `BertConfig().to_dict()`: BERT-base (uncased vocabulary size).
pub const BERT_BASE_CONFIG: &str = r#"{
  "add_cross_attention": false, "architectures": null, "attention_probs_dropout_prob": 0.1,
  "bos_token_id": null, "chunk_size_feed_forward": 0, "classifier_dropout": null, "dtype": null,
  "eos_token_id": null, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
  "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "initializer_range": 0.02,
  "intermediate_size": 3072, "is_decoder": false, "is_encoder_decoder": false,
  "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "layer_norm_eps": 1e-12,
  "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
  "num_hidden_layers": 12, "output_attentions": false, "output_hidden_states": false,
  "pad_token_id": 0, "problem_type": null, "return_dict": true, "tie_word_embeddings": true,
  "transformers_version": "5.24.0", "type_vocab_size": 2, "use_cache": true, "vocab_size": 30522
}"#;

pub const PROJECTION_DIM: usize = 512;

/// Fashion-MNIST's ten classes in label order, as folder names (and so
/// captions): `examples/fashion_mnist.rs` writes them, `dtype_recall.rs`
/// queries them.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// Writes the benchmark checkpoint (ViT-B/16 + BERT-base, random weights,
/// projection 512, the fixture's WordPiece tokenizer) into `out`, exactly as
/// `dualsight init` does. Built beside `out` and renamed into place, so an
/// interrupted run never leaves half a model behind.
pub fn make_model(out: &Path, tokenizer_dir: &Path) -> Result<()> {
    if out.join("config.json").is_file() {
        bail!("{}: already holds a checkpoint", out.display());
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let configs = parent.join(format!(".{name}.configs-{}", std::process::id()));
    std::fs::create_dir_all(&configs)?;
    let vision = configs.join("vit-base.json");
    let text = configs.join("bert-base.json");
    std::fs::write(&vision, VIT_BASE_CONFIG)?;
    std::fs::write(&text, BERT_BASE_CONFIG)?;
    let result = DualEncoder::init_dir(&vision, &text, PROJECTION_DIM, Some(tokenizer_dir), &tmp);
    let _ = std::fs::remove_dir_all(&configs);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.into());
    }
    if out.exists() {
        // An empty directory given as the target.
        std::fs::remove_dir(out).with_context(|| format!("{}: not empty", out.display()))?;
    }
    std::fs::rename(&tmp, out)
        .with_context(|| format!("moving {} to {}", tmp.display(), out.display()))?;
    Ok(())
}

/// Where the generated JPEGs of one kind live (name carries every parameter).
pub fn jpeg_dir(work: &Path, width: u32, height: u32, quality: u8) -> PathBuf {
    work.join(format!("jpeg-{width}x{height}-q{quality}-v2"))
}

/// Makes (or reuses) `n` distinct `width×height` JPEGs from the test photos:
/// photo `i % k`, a crop that moves with `i`, mirrored every other round,
/// resized (bilinear), with a light deterministic grain so each file is
/// unique content (identical files would share one vector and skip the
/// model) and compresses like a camera photo, not like a smooth upscale.
pub fn make_jpegs(
    dir: &Path,
    sources: &[PathBuf],
    n: usize,
    (width, height): (u32, u32),
    quality: u8,
    threads: usize,
) -> Result<Vec<PathBuf>> {
    if sources.is_empty() {
        bail!("no source photos to make JPEGs from");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let photos: Vec<RgbImage> = sources
        .iter()
        .map(|p| {
            image::open(p)
                .map(|i| i.to_rgb8())
                .with_context(|| format!("{}: cannot open", p.display()))
        })
        .collect::<Result<_>>()?;
    let paths: Vec<PathBuf> = (0..n)
        .map(|i| dir.join(format!("photo-{i:05}.jpg")))
        .collect();
    let todo: Vec<usize> = (0..n).filter(|&i| !paths[i].is_file()).collect();
    if !todo.is_empty() {
        eprintln!(
            "bench: writing {} JPEGs of {width}x{height} (q{quality}) into {} (kept for later runs)",
            todo.len(),
            dir.display()
        );
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let errors = std::sync::Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let t = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&i) = todo.get(t) else { break };
                    let img = synth_photo(&photos, i, width, height);
                    if let Err(e) = write_jpeg(&paths[i], &img, quality) {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("{}: {e:#}", paths[i].display()));
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    if let Some(e) = errors.first() {
        bail!("writing JPEGs: {e}");
    }
    Ok(paths)
}

fn synth_photo(photos: &[RgbImage], i: usize, width: u32, height: u32) -> RgbImage {
    let k = photos.len();
    let src = &photos[i % k];
    let round = (i / k) as u32;
    let (sw, sh) = src.dimensions();
    let (cw, ch) = ((sw * 4 / 5).max(1), (sh * 4 / 5).max(1));
    let x = (round * 37) % (sw - cw + 1);
    let y = (round * 23) % (sh - ch + 1);
    let mut crop = imageops::crop_imm(src, x, y, cw, ch).to_image();
    if round % 2 == 1 {
        imageops::flip_horizontal_in_place(&mut crop);
    }
    let mut img = imageops::resize(&crop, width, height, FilterType::Triangle);
    let mut r = Rng(0xB16_F00D ^ i as u64);
    for px in img.pixels_mut() {
        let bits = r.next_u64();
        for (c, v) in px.0.iter_mut().enumerate() {
            // Triangular noise, σ ≈ 3 grey levels: camera-like file sizes.
            let a = ((bits >> (c * 16)) & 0xFF) as i32;
            let b = ((bits >> (c * 16 + 8)) & 0xFF) as i32;
            let noise = (a + b - 255) / 24;
            *v = (*v as i32 + noise).clamp(0, 255) as u8;
        }
    }
    img
}

fn write_jpeg(path: &Path, img: &RgbImage, quality: u8) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        let f = std::fs::File::create(&tmp)?;
        let mut w = BufWriter::new(f);
        JpegEncoder::new_with_quality(&mut w, quality).encode_image(img)?;
        std::io::Write::flush(&mut w)?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The machine a run happened on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub logical_cpus: usize,
    pub physical_cores: Option<usize>,
    pub memory_gib: Option<f64>,
    pub kernel: Option<String>,
    /// 1/5/15-minute load averages when the run started and ended: a busy
    /// machine shows here.
    pub load_start: Option<String>,
    pub load_end: Option<String>,
    pub threads: usize,
    pub candle_threads: usize,
    /// The CPU's vector extensions that matter to the kernels (from
    /// `/proc/cpuinfo`), and the level dualsight's own kernels ran at
    /// (`DUALSIGHT_CPU` can lower it).
    pub simd_flags: Vec<String>,
    pub simd_level: String,
}

impl Machine {
    pub fn probe(threads: usize) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |line: &str| line.split_once(':').map(|(_, v)| v.trim().to_string());
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(field)
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let mut cores = std::collections::BTreeSet::new();
        let mut phys = String::new();
        for l in cpuinfo.lines() {
            if l.starts_with("physical id") {
                phys = field(l).unwrap_or_default();
            } else if l.starts_with("core id") {
                cores.insert((phys.clone(), field(l).unwrap_or_default()));
            }
        }
        let flags: Vec<&str> = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.split_whitespace().collect())
            .unwrap_or_default();
        let simd_flags = flags
            .into_iter()
            .filter(|f| {
                ["avx", "fma", "f16c", "amx"]
                    .iter()
                    .any(|p| f.starts_with(p))
            })
            .map(String::from)
            .collect();
        let memory_gib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .map(|kb| kb / (1024.0 * 1024.0))
        });
        Machine {
            cpu,
            logical_cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            physical_cores: (!cores.is_empty()).then_some(cores.len()),
            memory_gib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            load_start: loadavg(),
            load_end: None,
            threads,
            candle_threads: candle_core::utils::get_num_threads(),
            simd_flags,
            simd_level: dualsight::simd::level().name().to_string(),
        }
    }
}

pub fn loadavg() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// `VmRSS` and `VmHWM` (peak) of a process in bytes (`None` off Linux).
pub fn rss(pid: Option<u32>) -> Option<(u64, u64)> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    let s = std::fs::read_to_string(path).ok()?;
    let kb = |key: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    Some((kb("VmRSS:")?, kb("VmHWM:")?))
}

/// Bytes of a process's anonymous memory held in transparent huge pages
/// (`AnonHugePages` of `/proc/PID/smaps_rollup`).
pub fn huge_pages(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("AnonHugePages:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Versions of the crates that decide the figures, from the Cargo.lock this
/// binary was built with.
pub fn crate_versions() -> BTreeMap<String, String> {
    const LOCK: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"));
    const WANTED: &[&str] = &[
        "candle-core",
        "candle-nn",
        "gemm",
        "hnsw_rs",
        "image",
        "zune-jpeg",
        "sled",
        "tokenizers",
        "tonic",
    ];
    let mut out = BTreeMap::new();
    out.insert("dualsight".into(), env!("CARGO_PKG_VERSION").into());
    let mut name: Option<&str> = None;
    for line in LOCK.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"'));
        } else if let (Some(n), Some(v)) = (name, line.strip_prefix("version = "))
            && WANTED.contains(&n)
        {
            out.insert(n.to_string(), v.trim_matches('"').to_string());
            name = None;
        }
    }
    out.insert(
        "profile".into(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tower_configs_are_the_transformers_defaults() {
        let v: serde_json::Value = serde_json::from_str(VIT_BASE_CONFIG).unwrap();
        assert_eq!(v["model_type"], "vit");
        assert_eq!(
            (v["hidden_size"].as_u64(), v["patch_size"].as_u64()),
            (Some(768), Some(16))
        );
        let b: serde_json::Value = serde_json::from_str(BERT_BASE_CONFIG).unwrap();
        assert_eq!(b["model_type"], "bert");
        assert_eq!(b["vocab_size"], 30522);
    }

    #[test]
    fn versions_come_from_the_lock_file() {
        let v = crate_versions();
        assert!(
            v.contains_key("candle-core") && v.contains_key("hnsw_rs"),
            "{v:?}"
        );
    }

    #[test]
    fn synthetic_photos_differ() {
        let src = RgbImage::from_fn(50, 40, |x, y| image::Rgb([x as u8 * 5, y as u8 * 6, 128]));
        let photos = vec![src];
        let a = synth_photo(&photos, 0, 64, 48);
        let b = synth_photo(&photos, 1, 64, 48);
        assert_eq!(a.dimensions(), (64, 48));
        assert_ne!(a, b);
        assert_eq!(a, synth_photo(&photos, 0, 64, 48));
    }
}
