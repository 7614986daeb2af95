//! HEIC and AVIF (issue 19): decoded through libheif as Pillow + pillow-heif
//! decode them (the 8x8 grids of mean RGB in reference.json, written by
//! scripts/make_heif_fixtures.py), and embedded within cosine 0.999 of
//! transformers fed by them. Without the `heif` feature they are refused
//! with a message that says how to build with it.

use std::path::PathBuf;

use dualsight::preprocess::decode::{DecodeLimits, decode_path};

use crate::util::fixtures;

fn heif_dir() -> PathBuf {
    fixtures().join("images").join("heif")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(heif_dir().join("reference.json")).unwrap())
        .unwrap()
}

#[cfg(feature = "heif")]
#[test]
fn heic_and_avif_decode_and_embed_as_pillow_heif_and_transformers() {
    use candle_core::{DType, Device};
    use dualsight::encoder::Encoder;
    use dualsight::preprocess::Source;

    let encoder = Encoder::load(
        &fixtures().join("models/vit-bert"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let reference = reference();
    let files = reference.as_object().unwrap();
    assert_eq!(files.len(), 3);
    for (name, want) in files {
        let path = heif_dir().join(name);
        let image = decode_path(&path, &DecodeLimits::default()).unwrap();
        let (w, h) = image.dimensions();
        assert_eq!(
            [w, h],
            [
                want["size"][0].as_u64().unwrap() as u32,
                want["size"][1].as_u64().unwrap() as u32
            ],
            "{name}"
        );
        // Pixels: each 8x8 cell's mean within 1.5 of Pillow's (AVIF goes
        // through another AV1 decoder than Pillow's libavif).
        let (w, h) = (w as usize, h as usize);
        let mut worst = 0f64;
        for (i, cell) in want["grid"].as_array().unwrap().iter().enumerate() {
            let (gy, gx) = (i / 8, i % 8);
            let mut sum = [0f64; 3];
            let mut n = 0f64;
            for y in gy * h / 8..(gy + 1) * h / 8 {
                for x in gx * w / 8..(gx + 1) * w / 8 {
                    let p = image.get_pixel(x as u32, y as u32);
                    for c in 0..3 {
                        sum[c] += f64::from(p[c]);
                    }
                    n += 1.0;
                }
            }
            for c in 0..3 {
                worst = worst.max((sum[c] / n - cell[c].as_f64().unwrap()).abs());
            }
        }
        assert!(
            worst < 1.5,
            "{name}: a cell's mean is {worst:.2} off Pillow's"
        );

        // The size the index records, without decoding.
        let meta = dualsight::preprocess::meta::read_meta(&std::fs::read(&path).unwrap(), 0);
        assert_eq!(
            (meta.width as usize, meta.height as usize),
            (w, h),
            "{name}"
        );

        let px = encoder.preprocess(Source::Path(&path)).unwrap();
        let ours = &encoder.embed_pixels(&[px]).unwrap()[0];
        let theirs: Vec<f32> = want["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let dot: f32 = ours.iter().zip(&theirs).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine = dot / (norm(ours) * norm(&theirs));
        assert!(cosine >= 0.999, "{name}: cosine {cosine}");
    }
    // A truncated HEIC is an error naming the file, not a panic.
    let bytes = std::fs::read(heif_dir().join("chelsea.heic")).unwrap();
    let cut = std::env::temp_dir().join(format!("dualsight-cut-{}.heic", std::process::id()));
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let e = decode_path(&cut, &DecodeLimits::default())
        .unwrap_err()
        .to_string();
    std::fs::remove_file(&cut).unwrap();
    assert!(e.contains("dualsight-cut") && e.contains("HEIF"), "{e}");
    // The pixel budget holds before decoding.
    let tiny = DecodeLimits {
        max_pixels: 1000,
        ..DecodeLimits::default()
    };
    let e = decode_path(&heif_dir().join("chelsea.heic"), &tiny)
        .unwrap_err()
        .to_string();
    assert!(e.contains("over the limit of 1000"), "{e}");
}

#[cfg(not(feature = "heif"))]
#[test]
fn heic_and_avif_without_libheif_are_refused_with_the_way_to_get_it() {
    for name in reference().as_object().unwrap().keys() {
        let e = decode_path(&heif_dir().join(name), &DecodeLimits::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(name.as_str()) && e.contains("--features heif"),
            "{e}"
        );
    }
}
