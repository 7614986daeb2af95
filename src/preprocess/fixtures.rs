//! Test-only access to `tests/fixtures/preprocess/` (written by
//! `scripts/make_preprocess_fixtures.py`): the JSON index and the arrays in
//! `reference.safetensors`, parsed here with serde_json rather than a new crate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

pub fn dir() -> PathBuf {
    root().join("tests/fixtures/preprocess")
}

pub fn index() -> &'static Value {
    static INDEX: OnceLock<Value> = OnceLock::new();
    INDEX.get_or_init(|| {
        let text = std::fs::read_to_string(dir().join("index.json")).expect("fixture index.json");
        serde_json::from_str(&text).expect("index.json parses")
    })
}

/// One stored array: its shape and raw little-endian bytes.
pub struct Array {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl Array {
    pub fn u8(&self) -> &[u8] {
        assert_eq!(self.dtype, "U8");
        &self.bytes
    }

    pub fn f32(&self) -> Vec<f32> {
        assert_eq!(self.dtype, "F32");
        self.bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

pub fn arrays() -> &'static HashMap<String, Array> {
    static ARRAYS: OnceLock<HashMap<String, Array>> = OnceLock::new();
    ARRAYS.get_or_init(|| {
        let data =
            std::fs::read(dir().join("reference.safetensors")).expect("reference.safetensors");
        let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
        let header: serde_json::Map<String, Value> =
            serde_json::from_slice(&data[8..8 + n]).expect("safetensors header");
        let body = &data[8 + n..];
        header
            .into_iter()
            .filter(|(k, _)| k != "__metadata__")
            .map(|(k, v)| {
                let offsets: Vec<usize> = v["data_offsets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect();
                let array = Array {
                    dtype: v["dtype"].as_str().unwrap().to_string(),
                    shape: v["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_u64().unwrap() as usize)
                        .collect(),
                    bytes: body[offsets[0]..offsets[1]].to_vec(),
                };
                (k, array)
            })
            .collect()
    })
}

pub fn array(name: &str) -> &'static Array {
    arrays()
        .get(name)
        .unwrap_or_else(|| panic!("no array {name} in reference.safetensors"))
}

/// The script's LCG noise (`x = x * 1103515245 + 12345 mod 2^31`, byte = bits 16..24).
pub fn lcg_noise(width: u32, height: u32, seed: u32) -> image::RgbImage {
    let mut x = seed & 0x7FFF_FFFF;
    let bytes = (0..width as usize * height as usize * 3)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345) & 0x7FFF_FFFF;
            (x >> 16) as u8
        })
        .collect();
    image::RgbImage::from_raw(width, height, bytes).unwrap()
}

/// Largest absolute difference between two byte buffers of equal length.
pub fn max_abs_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// The pixels stored for a decode: all of them, or the GRID subsample.
pub fn stored_pixels(key: &str, image: &image::RgbImage) -> (Vec<u8>, Vec<u8>) {
    if let Some(a) = arrays().get(&format!("decode/{key}")) {
        return (a.u8().to_vec(), image.as_raw().clone());
    }
    let grid = index()["grid"].as_u64().unwrap() as u32;
    let a = array(&format!("decode_grid/{key}"));
    let mut ours = Vec::new();
    for y in (grid / 2..image.height()).step_by(grid as usize) {
        for x in (grid / 2..image.width()).step_by(grid as usize) {
            ours.extend_from_slice(&image.get_pixel(x, y).0);
        }
    }
    (a.u8().to_vec(), ours)
}
