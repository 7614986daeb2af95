//! The image processors against transformers' PIL backend, and their configs.

use super::config::*;
use super::*;
use crate::preprocess::fixtures;

/// transformers' PIL-backend `pixel_values` for every fixture processor
/// (nested `processor_config.json`, legacy `preprocessor_config.json`, int
/// sizes, longest-edge cap, padding crop, no rescale) on the photos: within
/// 1e-6 where the decode is exact, and for JPEG within what the decode
/// difference allows (a few grey levels over the std, in normalised units).
#[test]
fn matches_transformers_pil_backend() {
    let index = fixtures::index();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, entry) in index["processors"].as_object().unwrap() {
        let dir = fixtures::root().join(entry["dir"].as_str().unwrap());
        let processor = ImageProcessor::from_model_dir(&dir);
        let keys = entry["keys"].as_array().unwrap();
        if keys.is_empty() {
            continue;
        }
        let processor = processor.unwrap_or_else(|e| panic!("{name}: {e}"));
        for key in keys {
            let key = key.as_str().unwrap();
            let photo = &index["decode"][key];
            let path = fixtures::root().join(photo["path"].as_str().unwrap());
            let ours = processor
                .run(
                    Source::Path(&path),
                    &DecodeLimits::default(),
                    Preprocessing::Exact,
                )
                .unwrap();
            let theirs = fixtures::array(&format!("{name}/{key}"));
            let (h, w) = processor.output_size();
            assert_eq!(theirs.shape, [3, h as usize, w as usize], "{name}/{key}");
            assert_eq!(ours.len(), processor.output_len());
            let max = theirs
                .f32()
                .iter()
                .zip(&ours)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            checked += 1;
            let c = processor.config();
            let grey_level = if c.do_rescale {
                c.rescale_factor as f32
            } else {
                1.0
            };
            let std = if c.do_normalize {
                c.image_std.iter().cloned().fold(f64::MAX, f64::min) as f32
            } else {
                1.0
            };
            let tolerance = if photo["format"] == "JPEG" {
                f32::from(crate::preprocess::decode::tests::JPEG_MAX_DIFF) * grey_level / std + 1e-6
            } else {
                1e-6
            };
            eprintln!("{name}/{key}: max abs diff {max:e}");
            if max > tolerance {
                failures.push(format!(
                    "{name}/{key}: max abs diff {max:e} > {tolerance:e}"
                ));
            }
        }
    }
    assert!(checked >= 20, "only {checked} outputs checked");
    assert!(
        failures.is_empty(),
        "processor mismatches:\n{}",
        failures.join("\n")
    );
}

/// Config files holding only `image_processor_type` get transformers' class
/// defaults (DeiT 256 + crop 224 bicubic 0.5/0.5, BEiT 224 bicubic no crop, ...).
#[test]
fn class_defaults_match_transformers() {
    for (name, entry) in fixtures::index()["processors"].as_object().unwrap() {
        let Some(effective) = entry.get("effective") else {
            continue;
        };
        let dir = fixtures::root().join(entry["dir"].as_str().unwrap());
        let c = ImageProcessorConfig::from_model_dir(&dir).unwrap();
        let ours = c.to_json();
        for field in [
            "do_resize",
            "size",
            "resample",
            "do_center_crop",
            "do_rescale",
            "rescale_factor",
            "do_normalize",
            "image_mean",
            "image_std",
        ] {
            assert_eq!(ours[field], effective[field], "{name}: {field}");
        }
        if c.do_center_crop || !effective["crop_size"].is_null() {
            assert_eq!(
                ours["crop_size"], effective["crop_size"],
                "{name}: crop_size"
            );
        }
    }
}

/// A 1x5000 strip through a CLIP-style shortest-edge resize would be
/// 32x160000 before the crop; only the crop is computed.
#[test]
fn thin_strips_do_not_blow_up() {
    let dir = fixtures::root().join("tests/fixtures/preprocess/models/clip_bert");
    let p = ImageProcessor::from_model_dir(&dir).unwrap();
    let strip = RgbImage::from_fn(1, 5000, |_, y| image::Rgb([(y % 256) as u8, 0, 255]));
    let start = std::time::Instant::now();
    let out = p.preprocess(&strip).unwrap();
    assert_eq!(out.len(), 3 * 32 * 32);
    let wide = RgbImage::from_fn(5000, 1, |x, _| image::Rgb([(x % 256) as u8, 9, 0]));
    assert_eq!(p.preprocess(&wide).unwrap().len(), 3 * 32 * 32);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn missing_config_names_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let err = ImageProcessor::from_model_dir(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&dir.path().display().to_string()),
        "{err}"
    );
    std::fs::write(dir.path().join("preprocessor_config.json"), "{not json").unwrap();
    let err = ImageProcessor::from_model_dir(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("preprocessor_config.json: invalid JSON"),
        "{err}"
    );
    // A processor_config.json without an image processor falls back to the legacy file.
    std::fs::write(
        dir.path().join("processor_config.json"),
        r#"{"processor_class": "X"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        r#"{"image_processor_type": "ViTImageProcessor"}"#,
    )
    .unwrap();
    let p = ImageProcessor::from_model_dir(dir.path()).unwrap();
    assert_eq!(p.output_size(), (224, 224));
}

#[test]
fn decode_errors_pass_through_with_the_path() {
    let dir = fixtures::root().join("tests/fixtures/preprocess/models/clip_bert");
    let p = ImageProcessor::from_model_dir(&dir).unwrap();
    let bad = fixtures::root().join("tests/fixtures/images/bad/truncated.jpg");
    let err = p
        .run(
            Source::Path(&bad),
            &DecodeLimits::default(),
            Preprocessing::Exact,
        )
        .unwrap_err();
    assert!(
        err.to_string().starts_with(&bad.display().to_string()),
        "{err}"
    );
    let err = p
        .run(
            Source::Bytes {
                bytes: b"",
                name: "upload.jpg",
            },
            &DecodeLimits::default(),
            Preprocessing::Exact,
        )
        .unwrap_err();
    assert!(err.to_string().starts_with("upload.jpg: "), "{err}");
    let err = p.preprocess(&RgbImage::new(0, 0)).unwrap_err();
    assert!(err.to_string().contains("at least one pixel"), "{err}");
}

/// Mean difference of fast and exact pixel values allowed on that photo,
/// in grey levels (measured: 0.64 ViT, 0.88 CLIP).
const FAST_MAX_MEAN_LEVELS: f32 = 1.5;

/// The fast path on a 1200×900 phone photo (stored turned, EXIF 6) for
/// 128-pixel processors: decoded at 1/4 (1/8 would keep under 1.5 × 128),
/// upright, and its pixel values close to the exact path's. DeiT's
/// default resizes to 256 first, which 1/4 would not cover with the
/// margin; a crop-only processor needs the original pixels: neither is
/// reduced.
#[test]
fn fast_path_reduces_a_photo_with_margin() {
    let photo = fixtures::root().join("tests/fixtures/images/coffee_phone_exif6.jpg");
    let limits = DecodeLimits::default();
    let configs = [
        (
            r#"{"image_processor_type": "ViTImageProcessor", "size": 128}"#,
            4,
        ),
        (
            r#"{"image_processor_type": "CLIPImageProcessor", "size": 128, "crop_size": 128}"#,
            4,
        ),
        (r#"{"image_processor_type": "DeiTImageProcessor"}"#, 1),
    ];
    for (json, scale) in configs {
        let p = ImageProcessor::new(parse(json).unwrap()).unwrap();
        let reduced = p.decode_reduced(Source::Path(&photo), &limits).unwrap();
        assert_eq!(reduced.scale, scale, "{json}");
        assert_eq!(reduced.full, (1200, 900), "{json}");
        let (w, h) = (1200_u32.div_ceil(scale), 900_u32.div_ceil(scale));
        assert_eq!(reduced.image.dimensions(), (w, h), "{json}");
        let exact = p
            .run(Source::Path(&photo), &limits, Preprocessing::Exact)
            .unwrap();
        let fast = p
            .run(Source::Path(&photo), &limits, Preprocessing::Fast)
            .unwrap();
        let n = exact.len() as f32;
        let mean = exact
            .iter()
            .zip(&fast)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / n;
        // In grey levels (the normalised range is 255 levels wide over ~2 units).
        let levels = mean * 255.0 * p.config().image_std[0] as f32;
        eprintln!("{json}: fast vs exact mean diff {levels:.3} grey levels");
        assert!(
            levels < FAST_MAX_MEAN_LEVELS,
            "{json}: mean diff {levels} grey levels"
        );
    }
    let crop_only =
        parse(r#"{"image_processor_type": "CLIPImageProcessor", "do_resize": false}"#).unwrap();
    let p = ImageProcessor::new(crop_only).unwrap();
    assert_eq!(
        p.decode_reduced(Source::Path(&photo), &limits)
            .unwrap()
            .scale,
        1
    );
}

fn parse(json: &str) -> Result<ImageProcessorConfig> {
    let Value::Object(map) = serde_json::from_str(json).unwrap() else {
        panic!("test json is not an object")
    };
    ImageProcessorConfig::from_map(&map, Path::new("/m/preprocessor_config.json"))
}

#[test]
fn shortest_edge_truncates_like_python_int() {
    let s = Size::ShortestEdge {
        shortest: 224,
        longest: None,
    };
    // 224 * 451 / 300 = 336.74... -> 336.
    assert_eq!(s.output_for(300, 451), (224, 336));
    assert_eq!(s.output_for(451, 300), (336, 224));
    assert_eq!(s.output_for(224, 224), (224, 224));
    assert_eq!(s.output_for(10, 1000), (224, 22400));
}

#[test]
fn longest_edge_cap_uses_bankers_rounding() {
    let s = Size::ShortestEdge {
        shortest: 32,
        longest: Some(40),
    };
    // 300x451: 451/300*32 = 48.1 > 40 -> raw = 40*300/451 = 26.607 -> size 27,
    // width = int(26.607 * 451 / 300) = 40.
    assert_eq!(s.output_for(300, 451), (27, 40));
    // Under the cap: plain shortest edge.
    assert_eq!(s.output_for(32, 35), (32, 35));
}

#[test]
fn legacy_int_sizes_follow_default_to_square() {
    let clip =
        parse(r#"{"feature_extractor_type": "CLIPFeatureExtractor", "size": 32, "crop_size": 30}"#)
            .unwrap();
    assert_eq!(
        clip.size,
        Some(Size::ShortestEdge {
            shortest: 32,
            longest: None
        })
    );
    assert_eq!(clip.crop_size, Some((30, 30)));
    let vit = parse(r#"{"feature_extractor_type": "ViTFeatureExtractor", "size": 32}"#).unwrap();
    assert_eq!(
        vit.size,
        Some(Size::Exact {
            height: 32,
            width: 32
        })
    );
}

#[test]
fn errors_name_file_and_field() {
    let err =
        parse(r#"{"image_processor_type": "ViTImageProcessor", "do_resize": "yes"}"#).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("/m/preprocessor_config.json: field `do_resize`"),
        "{msg}"
    );
    let err = parse(r#"{"image_processor_type": "SomethingNew", "do_resize": true}"#).unwrap_err();
    assert!(err.to_string().contains("field `size`: missing"), "{err}");
    let err = parse(r#"{"image_processor_type": "ViTImageProcessor", "resample": 7}"#).unwrap_err();
    assert!(err.to_string().contains("field `resample`"), "{err}");
    let err =
        parse(r#"{"image_processor_type": "ViTImageProcessor", "size": {"longest_edge": 3}}"#)
            .unwrap_err();
    assert!(err.to_string().contains("field `size`"), "{err}");
    let err = parse(r#"{"image_processor_type": "ViTImageProcessor", "image_mean": [1, 2]}"#)
        .unwrap_err();
    assert!(err.to_string().contains("field `image_mean`"), "{err}");
}

#[test]
fn nulls_take_class_defaults() {
    let c = parse(r#"{"image_processor_type": "CLIPImageProcessor", "size": null, "image_mean": null, "do_center_crop": null}"#).unwrap();
    assert!(c.do_center_crop);
    assert_eq!(c.image_mean, CLIP_MEAN);
    assert_eq!(c.fixed_output_size(), Some((224, 224)));
}

#[test]
fn variable_output_size_is_refused() {
    let c = parse(r#"{"image_processor_type": "CLIPImageProcessor", "do_center_crop": false}"#)
        .unwrap();
    let err = ImageProcessor::new(c).unwrap_err();
    assert!(
        err.to_string().contains("does not produce a fixed size"),
        "{err}"
    );
}

#[test]
fn config_json_round_trips() {
    let c = parse(r#"{"image_processor_type": "DeiTImageProcessor"}"#).unwrap();
    let Value::Object(map) = c.to_json() else {
        unreachable!()
    };
    let again =
        ImageProcessorConfig::from_map(&map, Path::new("/m/preprocessor_config.json")).unwrap();
    assert_eq!(c, again);
}
