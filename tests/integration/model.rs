//! Parity with transformers on the tiny fixtures: same pixels and token ids →
//! the same pooled outputs, features, embeddings, logits and loss; and
//! compose / init / save produce transformers' exact key layout.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use dualsight::model::{DualEncoder, TokenInput};
use dualsight::preprocess::Source;

use crate::util::*;

const TOL: f32 = 1e-4;

fn token_input(r: &Reference, prefix: &str) -> TokenInput {
    let ids = r.ids(&format!("{prefix}input_ids")).unwrap();
    let mask = r
        .ids(&format!("{prefix}attention_mask"))
        .unwrap_or_else(|| ids.ones_like().unwrap());
    let type_ids = r.ids(&format!("{prefix}token_type_ids"));
    TokenInput {
        ids,
        mask,
        type_ids,
    }
}

#[test]
fn every_tower_pairing_matches_transformers() {
    for name in MODELS {
        let dir = model_dir(name);
        let model = DualEncoder::load(&dir, &Device::Cpu, DType::F32)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = Reference::load(&dir);
        let px = r.get("pixel_values");
        let text = token_input(&r, "");
        assert_close(
            &format!("{name} vision_pooled"),
            &model.vision_pooled(&px).unwrap(),
            &r.get("vision_pooled"),
            TOL,
        );
        assert_close(
            &format!("{name} text_pooled"),
            &model.text_pooled(&text).unwrap(),
            &r.get("text_pooled"),
            TOL,
        );
        assert_close(
            &format!("{name} image_features"),
            &model.image_features(&px).unwrap(),
            &r.get("image_features"),
            TOL,
        );
        assert_close(
            &format!("{name} text_features"),
            &model.text_features(&text).unwrap(),
            &r.get("text_features"),
            TOL,
        );
        let out = model.forward(&text, &px, true).unwrap();
        assert_close(
            &format!("{name} image_embeds"),
            &out.image_embeds,
            &r.get("image_embeds"),
            TOL,
        );
        assert_close(
            &format!("{name} text_embeds"),
            &out.text_embeds,
            &r.get("text_embeds"),
            TOL,
        );
        // Logits are cosines times exp(logit_scale) (~14): scale the tolerance with it.
        let scale = model.logit_scale_exp();
        assert!(
            (scale - r.json["logit_scale_exp"].as_f64().unwrap() as f32).abs() < 1e-4,
            "{name} logit scale"
        );
        assert_close(
            &format!("{name} logits_per_text"),
            &out.logits_per_text,
            &r.get("logits_per_text"),
            TOL * scale,
        );
        assert_close(
            &format!("{name} logits_per_image"),
            &out.logits_per_image,
            &r.get("logits_per_image"),
            TOL * scale,
        );
        let loss = out.loss.unwrap().to_scalar::<f32>().unwrap();
        let want = r.get("loss").to_scalar::<f32>().unwrap();
        assert!((loss - want).abs() < 1e-4, "{name} loss {loss} vs {want}");
        // Every photo, one batch.
        let all = model.embed_images(&r.get("all_pixel_values")).unwrap();
        assert_close(
            &format!("{name} all_image_embeds"),
            &all,
            &r.get("all_image_embeds"),
            TOL,
        );
    }
}

#[test]
fn zero_shot_probabilities_match() {
    for name in MODELS {
        let dir = model_dir(name);
        let model = DualEncoder::load(&dir, &Device::Cpu, DType::F32).unwrap();
        let r = Reference::load(&dir);
        let z = &r.json["zero_shot"];
        let flat = |key: &str| -> Vec<u32> {
            z[key]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|row| {
                    row.as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap() as u32)
                })
                .collect()
        };
        let (ids, mask) = (flat("input_ids"), flat("attention_mask"));
        let batch = z["input_ids"].as_array().unwrap().len();
        let labels =
            TokenInput::new(&ids, &mask, None, batch, ids.len() / batch, &Device::Cpu).unwrap();
        let px = r.get("pixel_values").narrow(0, 0, 1).unwrap();
        let out = model.forward(&labels, &px, false).unwrap();
        let probs = dualsight::model::softmax(&out.logits_per_image)
            .unwrap()
            .squeeze(0)
            .unwrap();
        assert_close(
            &format!("{name} zero-shot"),
            &probs,
            &r.get("zero_shot_probs"),
            1e-4,
        );
    }
}

#[test]
fn transformers_4_key_names_and_pytorch_bin_load_to_the_same_outputs() {
    for (legacy, name) in [
        ("clipvision-bert", "clipvision-bert"),
        ("vit-cliptext", "vit-cliptext"),
        ("deit-roberta-bin", "deit-roberta"),
    ] {
        let model = DualEncoder::load(
            &model_dir(&format!("legacy/{legacy}")),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        let r = Reference::load(&model_dir(name));
        let out = model
            .forward(&token_input(&r, ""), &r.get("pixel_values"), false)
            .unwrap();
        assert_close(
            &format!("legacy {name} image_embeds"),
            &out.image_embeds,
            &r.get("image_embeds"),
            TOL,
        );
        assert_close(
            &format!("legacy {name} text_embeds"),
            &out.text_embeds,
            &r.get("text_embeds"),
            TOL,
        );
    }
}

/// `[name, shape]` pairs from a key list the fixture script recorded.
fn key_list(path: &std::path::Path) -> BTreeMap<String, Vec<usize>> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            let name = pair[0].as_str().unwrap().to_string();
            let shape = pair[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (name, shape)
        })
        .collect()
}

fn saved_keys(dir: &std::path::Path) -> BTreeMap<String, Vec<usize>> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.dims().to_vec()))
        .collect()
}

#[test]
fn save_writes_transformers_keys_and_reloads_identically() {
    for name in MODELS {
        let dir = model_dir(name);
        let model = DualEncoder::load(&dir, &Device::Cpu, DType::F32).unwrap();
        let out = tempfile::tempdir().unwrap();
        model.save(out.path()).unwrap();
        assert_eq!(
            saved_keys(out.path()),
            key_list(&dir.join("keys.json")),
            "{name}: saved keys differ from transformers' save_pretrained"
        );
        let again = DualEncoder::load(out.path(), &Device::Cpu, DType::F32).unwrap();
        let r = Reference::load(&dir);
        let px = r.get("pixel_values");
        assert_eq!(
            max_abs_diff(
                &again.embed_images(&px).unwrap(),
                &model.embed_images(&px).unwrap()
            ),
            0.0,
            "{name}"
        );
        assert_eq!(again.logit_scale(), model.logit_scale());
    }
}

#[test]
fn compose_reuses_tower_weights_and_saves_transformers_layout() {
    let compose = fixtures().join("models").join("compose");
    let towers = fixtures().join("models").join("towers");
    let reference =
        candle_core::safetensors::load(compose.join("compose.safetensors"), &Device::Cpu).unwrap();
    for (name, vision, text) in [
        ("vit-bert", "vit", "bert"),
        ("clip-roberta", "clip", "roberta"),
        ("vitcls-bert", "vit-classifier", "bert"),
    ] {
        let model =
            DualEncoder::compose(&towers.join(vision), &towers.join(text), 16, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = tempfile::tempdir().unwrap();
        model.save(out.path()).unwrap();
        assert_eq!(
            saved_keys(out.path()),
            key_list(&compose.join(format!("{name}.keys.json"))),
            "{name}: composed keys"
        );
        // The towers are the source towers: their pooled outputs are unchanged.
        let px = reference[&format!("{name}.pixel_values")].clone();
        if name != "vitcls-bert" {
            assert_close(
                &format!("{name} composed vision_pooled"),
                &model.vision_pooled(&px).unwrap(),
                &reference[&format!("{name}.vision_pooled")],
                TOL,
            );
        }
        let ids = reference[&format!("{name}.input_ids")]
            .to_dtype(DType::U32)
            .unwrap();
        let text_in = TokenInput {
            mask: ids.ones_like().unwrap(),
            ids,
            type_ids: None,
        };
        assert_close(
            &format!("{name} composed text_pooled"),
            &model.text_pooled(&text_in).unwrap(),
            &reference[&format!("{name}.text_pooled")],
            TOL,
        );
        // And it round-trips through save → load.
        let again = DualEncoder::load(out.path(), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(
            max_abs_diff(
                &again.embed_images(&px).unwrap(),
                &model.embed_images(&px).unwrap()
            ),
            0.0
        );
        assert_eq!(
            max_abs_diff(
                &again.embed_texts(&text_in).unwrap(),
                &model.embed_texts(&text_in).unwrap()
            ),
            0.0
        );
    }
}

#[test]
fn init_from_configs_has_transformers_keys() {
    let init = fixtures().join("models").join("init");
    for (name, vision, text) in [
        ("vit-bert", "vit", "bert"),
        ("beit-xlmr", "beit", "xlmr"),
        ("clipvision-roberta", "clip_vision", "roberta"),
    ] {
        let model = DualEncoder::init(
            &init.join(format!("{vision}.config.json")),
            &init.join(format!("{text}.config.json")),
            16,
            &Device::Cpu,
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        model.save(out.path()).unwrap();
        assert_eq!(
            saved_keys(out.path()),
            key_list(&init.join(format!("{name}.keys.json"))),
            "{name}: init keys"
        );
        // Random weights still give unit-norm embeddings of the right size.
        let px = Tensor::randn(0f32, 1., (2, 3, 32, 32), &Device::Cpu).unwrap();
        let e = rows(&model.embed_images(&px).unwrap());
        assert_eq!(e[0].len(), 16);
        assert!(
            e.iter()
                .all(|v| (v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4)
        );
    }
}

/// The fast preprocessing path against the exact one on every fixture photo,
/// through the tiny ViT-BERT model (32×32 input, so every JPEG from 256 px on
/// is decoded at 1/8 or 1/4): embeddings within cosine 0.995, pixel values
/// within a few grey levels on average, and failures with the exact path's
/// very message (hostile files in `bad/` included).
#[test]
fn fast_preprocessing_stays_close_to_exact() {
    use dualsight::encoder::Encoder;
    use dualsight::preprocess::Preprocessing;

    let dir = model_dir("vit-bert");
    let exact = Encoder::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let fast = Encoder::load(&dir, &Device::Cpu, DType::F32)
        .unwrap()
        .with_preprocessing(Preprocessing::Fast);
    let mut files: Vec<_> = ["images", "images/bad"]
        .iter()
        .flat_map(|d| std::fs::read_dir(fixtures().join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e != "md"))
        .collect();
    files.sort();
    let mut reduced = Vec::new();
    let mut worst = (1.0f32, String::new());
    for path in &files {
        let name = path.display().to_string();
        let (want, got) = match (
            exact.preprocess(Source::Path(path)),
            fast.preprocess(Source::Path(path)),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(a), Err(b)) => {
                assert_eq!(b.to_string(), a.to_string());
                continue;
            }
            (a, b) => panic!("{name}: exact {:?}, fast {:?}", a.err(), b.err()),
        };
        let scale = fast
            .image_processor()
            .decode_reduced(Source::Path(path), &fast.limits())
            .unwrap()
            .scale;
        if scale > 1 {
            reduced.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
        // Normalised with mean = std = 0.5: one grey level is 2/255.
        let levels = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / want.len() as f32
            * 127.5;
        let embeds = exact.embed_pixels(&[want, got]).unwrap();
        let cos = cosines(&embeds[..1], &embeds[1..])[0];
        eprintln!("{name}: 1/{scale}, mean diff {levels:.2} grey levels, cosine {cos:.6}");
        // Measured worst: 1.75 (the CMYK astronaut).
        assert!(levels < 2.5, "{name}: mean diff {levels} grey levels");
        assert!(cos >= 0.995, "{name}: cosine {cos}");
        if cos < worst.0 {
            worst = (cos, name);
        }
    }
    eprintln!("worst cosine {:.6}: {}", worst.0, worst.1);
    // The JPEGs big enough to reduce for a 32-pixel model really were: the
    // grey one, the CMYK one, the EXIF-rotated ones and a plain one.
    reduced.sort();
    assert_eq!(
        reduced,
        [
            "astronaut_cmyk.jpg",
            "camera_grey.jpg",
            "chelsea_exif6.jpg",
            "coffee_phone_exif6.jpg",
            "rocket.jpg",
        ]
    );
}

#[test]
fn a_batch_split_into_lanes_and_slices_embeds_each_image_as_alone() {
    // The CPU runs big batches in lanes side by side and each lane in
    // slices; every image must come out as if embedded on its own, whatever
    // lane and slice it fell in (the last ones short). Four threads make
    // lanes on any machine: 4 equal lanes, each in full slices and a short
    // one, then the last image on all four threads.
    let n = dualsight::model::dual::CPU_VISION_CHUNK * 5 + 5;
    let four = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    assert_eq!(dualsight::model::lanes::count(n, 4), 4);
    for name in ["vit-bert", "beit-xlmr", "clipvision-bert"] {
        let model = DualEncoder::load(&model_dir(name), &Device::Cpu, DType::F32).unwrap();
        let (c, h, w) = model.image_shape();
        let px = Tensor::randn(0f32, 1., (n, c, h, w), &Device::Cpu).unwrap();
        let all = four
            .install(|| model.embed_images(&px))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(all.len(), n);
        for (i, row) in all.iter().enumerate() {
            let one = model
                .embed_images(&px.narrow(0, i, 1).unwrap())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let diff = row
                .iter()
                .zip(&one[0])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "{name}: image {i} differs by {diff}");
        }
    }
}

/// The token ids behind those embeddings: the same cut as transformers, on the
/// side `truncation_side` names, and logits through the same ids.
#[test]
fn long_captions_tokenize_as_transformers_truncates_them() {
    for name in TRUNCATION_MODELS {
        let dir = model_dir(name);
        let r = Reference::load(&dir);
        let enc = dualsight::encoder::Encoder::load(&dir, &Device::Cpu, DType::F32).unwrap();
        let texts = r.strings("texts");
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let input = enc.tokenize(&texts).unwrap();
        let want = r.ids("input_ids").unwrap();
        assert_eq!(
            input.ids.to_vec2::<u32>().unwrap(),
            want.to_vec2::<u32>().unwrap(),
            "{name}"
        );
        assert_eq!(
            input.mask.to_vec2::<u32>().unwrap(),
            r.ids("attention_mask").unwrap().to_vec2::<u32>().unwrap(),
            "{name}"
        );
        let embeds = enc.model().embed_texts(&input).unwrap();
        assert_close(name, &embeds, &r.get("text_embeds"), TOL);
        let images = enc.model().embed_images(&r.get("pixel_values")).unwrap();
        let logits = enc.model().logits(&embeds, &images).unwrap();
        assert_close(name, &logits, &r.get("logits_per_text"), TOL);
    }
}

/// The path CUDA runs in half precision (every tensor f16 or bf16: the
/// towers' masks, norms, attention and activations in half), run on the
/// CPU on every fixture: image and text embeddings within cosine 0.999 of
/// transformers' f32 ones.
#[test]
fn every_tower_in_half_precision_stays_within_cosine_0_999() {
    for name in MODELS {
        let dir = model_dir(name);
        let r = Reference::load(&dir);
        let text = token_input(&r, "");
        for dtype in [DType::BF16, DType::F16] {
            let model = DualEncoder::load_uniform(&dir, &Device::Cpu, dtype)
                .unwrap_or_else(|e| panic!("{name} {dtype:?}: {e}"));
            let images = model
                .embed_images(&r.get("all_pixel_values"))
                .unwrap_or_else(|e| panic!("{name} {dtype:?} images: {e}"));
            let out = model
                .forward(&text, &r.get("pixel_values"), false)
                .unwrap_or_else(|e| panic!("{name} {dtype:?} forward: {e}"));
            near_transformers(
                &format!("{name} {dtype:?} uniform"),
                &r,
                &images,
                &out.text_embeds,
            );
        }
    }
}

/// Every photo's and the text's embeddings within cosine 0.999 of
/// transformers' f32 ones (the worst printed, for the record).
fn near_transformers(label: &str, r: &Reference, images: &Tensor, texts: &Tensor) {
    for (what, got, want) in [
        ("image", images, r.get("all_image_embeds")),
        ("text", texts, r.get("text_embeds")),
    ] {
        let worst = worst_cosine(got, &want);
        eprintln!("{label} {what}: worst cosine {worst:.6}");
        assert!(worst >= 0.999, "{label} {what}: cosine {worst}");
    }
}

/// The lowest cosine between matching rows of two `[n, d]` tensors.
fn worst_cosine(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (rows(a), rows(b));
    assert_eq!(a.len(), b.len());
    cosines(&a, &b).into_iter().fold(1f32, f32::min)
}

/// `--text-weights int8`: the text tower's dense weights held as 8 bits per
/// column and met by 16-bit inputs. Only the text embeddings move, each
/// fixture's within cosine 0.999 of transformers' f32 ones; the image side
/// is the dtype's own, bit for bit. A model holding them refuses to be
/// written as a checkpoint, which they are not.
#[test]
fn int8_text_weights_keep_every_text_embedding_close() {
    use dualsight::model::layers::Int8TextWeights;
    for name in MODELS {
        let dir = model_dir(name);
        let r = Reference::load(&dir);
        let px = r.get("all_pixel_values");
        let text = token_input(&r, "");
        for dtype in [DType::F32, DType::BF16] {
            let plain = DualEncoder::load(&dir, &Device::Cpu, dtype).unwrap();
            let model = {
                let _int8 = Int8TextWeights::enter();
                DualEncoder::load(&dir, &Device::Cpu, dtype).unwrap()
            };
            let images = model.embed_images(&px).unwrap();
            assert_eq!(
                images.to_vec2::<f32>().unwrap(),
                plain.embed_images(&px).unwrap().to_vec2::<f32>().unwrap(),
                "{name} {dtype:?}: the image side is untouched"
            );
            let texts = model.embed_texts(&text).unwrap();
            near_transformers(&format!("{name} {dtype:?} int8 text"), &r, &images, &texts);
            assert_ne!(
                texts.to_vec2::<f32>().unwrap(),
                plain.embed_texts(&text).unwrap().to_vec2::<f32>().unwrap(),
                "{name} {dtype:?}: the text weights were not quantized"
            );
        }
    }
    let dir = model_dir("vit-bert");
    let model = {
        let _int8 = Int8TextWeights::enter();
        DualEncoder::load(&dir, &Device::Cpu, DType::F32).unwrap()
    };
    let out = tempfile::tempdir().unwrap();
    let err = model.save(out.path()).unwrap_err().to_string();
    assert!(err.contains("text_weights = int8"), "{err}");
    assert!(
        !out.path().join("model.safetensors").exists() && !out.path().join("config.json").exists()
    );
    // Through the encoder, as the daemon loads it: 8-bit where this CPU runs
    // the 8-bit kernel, else the dtype's weights (and a warning).
    use dualsight::device::TextWeights;
    use dualsight::encoder::Encoder;
    let texts = ["a photo of a cat"];
    let plain = Encoder::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let int8 = Encoder::load_with(&dir, &Device::Cpu, DType::F32, TextWeights::Int8).unwrap();
    let quantized = int8.embed_texts(&texts).unwrap() != plain.embed_texts(&texts).unwrap();
    assert_eq!(int8.text_weights() == TextWeights::Int8, quantized);
    assert_eq!(plain.text_weights(), TextWeights::Dtype);
    assert_eq!(
        quantized,
        dualsight::model::cpu::PanelWeight::int8_runs_fast(),
        "8-bit text weights where, and only where, the kernel runs"
    );
}

/// `--dtype bf16|f16` on the CPU: the dense weights are rounded (and, on
/// CPUs with AVX-512 BF16, a batch's bf16 dense-layer inputs), nothing
/// else is, so every fixture's image and text embeddings stay within
/// cosine 0.999 of transformers' f32 ones. Rounded they are: the outputs
/// are not the f32 ones bit for bit.
#[test]
fn half_precision_weights_on_the_cpu_keep_every_embedding_close() {
    for name in MODELS {
        let dir = model_dir(name);
        let r = Reference::load(&dir);
        let px = r.get("all_pixel_values");
        let text = token_input(&r, "");
        let exact = DualEncoder::load(&dir, &Device::Cpu, DType::F32).unwrap();
        let f32_images = exact.embed_images(&px).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let model = DualEncoder::load(&dir, &Device::Cpu, dtype)
                .unwrap_or_else(|e| panic!("{name} {dtype:?}: {e}"));
            assert_eq!(model.dtype(), dtype);
            let images = model.embed_images(&px).unwrap();
            assert_eq!(images.dtype(), DType::F32, "{name}: embeddings stay f32");
            let out = model.forward(&text, &r.get("pixel_values"), false).unwrap();
            near_transformers(&format!("{name} {dtype:?}"), &r, &images, &out.text_embeds);
            assert_ne!(
                images.to_vec2::<f32>().unwrap(),
                f32_images.to_vec2::<f32>().unwrap(),
                "{name} {dtype:?}: the weights were not rounded"
            );
        }
    }
    // The model holds its dense weights in the half type alone (no f32 copy
    // kept for `save`): saved, they are half, everything else f32, and
    // reloaded in f32 they give the half model's embeddings.
    let dir = model_dir("vit-bert");
    let model = DualEncoder::load(&dir, &Device::Cpu, DType::BF16).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save(out.path()).unwrap();
    let saved =
        candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let dtype_of = |k: &str| saved[k].dtype();
    assert_eq!(dtype_of("text_projection.weight"), DType::BF16);
    assert_eq!(
        dtype_of("vision_model.encoder.layer.0.attention.attention.query.weight"),
        DType::BF16
    );
    assert_eq!(
        dtype_of("vision_model.encoder.layer.0.attention.attention.query.bias"),
        DType::F32
    );
    assert_eq!(
        dtype_of("text_model.embeddings.word_embeddings.weight"),
        DType::F32
    );
    let again = DualEncoder::load(out.path(), &Device::Cpu, DType::F32).unwrap();
    let px = Reference::load(&dir).get("all_pixel_values");
    let half = model.embed_images(&px).unwrap();
    let widened = again.embed_images(&px).unwrap();
    if dualsight::simd::level() >= dualsight::simd::Level::Avx512Bf16 {
        // Here the bf16 model also rounds a batch's dense-layer inputs, which
        // the f32 reload does not: close, and equal once reloaded in bf16.
        assert!(worst_cosine(&widened, &half) >= 0.99999);
        let reloaded = DualEncoder::load(out.path(), &Device::Cpu, DType::BF16).unwrap();
        assert!(max_abs_diff(&reloaded.embed_images(&px).unwrap(), &half) < 1e-6);
    } else {
        assert!(max_abs_diff(&widened, &half) < 1e-6);
    }
}
