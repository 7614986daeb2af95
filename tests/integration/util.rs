//! Helpers shared by the integration tests: fixture paths, reference tensors,
//! tolerance checks.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// Calls `done` every 100 ms until it holds; past `secs` seconds fails
/// with what `why` says then.
pub fn poll_until(secs: u64, mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{}", why());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

/// The dual-encoder fixtures, one per tower pairing.
pub const MODELS: &[&str] = &[
    "vit-bert",
    "deit-roberta",
    "beit-xlmr",
    "clipvision-bert",
    "vit-cliptext",
    "clip",
];

/// Copies of four of them whose tokenizer's `model_max_length` is below the
/// text tower's position table (BERT, RoBERTa cut from the left, XLM-R, CLIP text).
pub const TRUNCATION_MODELS: &[&str] = &[
    "truncation/vit-bert",
    "truncation/deit-roberta",
    "truncation/beit-xlmr",
    "truncation/vit-cliptext",
];

pub struct Reference {
    pub tensors: HashMap<String, Tensor>,
    pub json: serde_json::Value,
}

impl Reference {
    pub fn load(dir: &std::path::Path) -> Self {
        let tensors =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
                .expect("reference.safetensors");
        let json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        Self { tensors, json }
    }
    pub fn get(&self, name: &str) -> Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference tensor {name}"))
            .clone()
    }
    /// Integer tensors (ids, masks) as u32.
    pub fn ids(&self, name: &str) -> Option<Tensor> {
        self.tensors
            .get(name)
            .map(|t| t.to_dtype(DType::U32).unwrap())
    }
    pub fn strings(&self, key: &str) -> Vec<String> {
        self.json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }
}

/// Largest absolute difference between two f32 tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = b
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let d = max_abs_diff(got, want);
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
}

/// Row-wise cosine similarity of two `[N, D]` matrices.
pub fn cosines(a: &[Vec<f32>], b: &[Vec<f32>]) -> Vec<f32> {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let nx: f32 = x.iter().map(|p| p * p).sum::<f32>().sqrt();
            let ny: f32 = y.iter().map(|p| p * p).sum::<f32>().sqrt();
            dot / (nx * ny)
        })
        .collect()
}

pub fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
}
