//! Training, step for step with PyTorch + transformers (fixtures from
//! `scripts/make_train_fixtures.py`): the first batch's loss and every
//! parameter's gradient, then the weights after three AdamW steps through
//! the CLI (decay groups, warmup, clipping, file order), with and without a
//! frozen vision tower.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use dualsight::encoder::Encoder;
use dualsight::model::weights::canonical_key;
use dualsight::model::{DualEncoder, ImageInput};
use dualsight::preprocess::Source;
use dualsight::train::data::{self, Columns};

use crate::cli::{dualsight, run_err, run_ok};
use crate::util::fixtures;

const CHECKPOINTS: &[&str] = &[
    "vit-bert",
    "deit-roberta",
    "beit-xlmr",
    "clipvision-bert",
    "clip",
    "vit-cliptext",
];

fn train_dir() -> PathBuf {
    fixtures().join("train")
}

fn reference(name: &str) -> serde_json::Value {
    let path = train_dir().join(name).join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A safetensors file's tensors under dualsight's canonical names.
fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter_map(|(k, t)| canonical_key(&k).map(|k| (k, t)))
        .collect()
}

/// A run's `trainer_state.json`.
fn trainer_state(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("trainer_state.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn norm(t: &Tensor) -> f32 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn diff_norm(a: &Tensor, b: &Tensor) -> f32 {
    norm(&(a - b).unwrap())
}

/// Tensors whose true gradient is zero (attention key biases: softmax does
/// not see a shift shared by every key) carry only rounding noise, in both
/// frameworks: under this fraction of the global norm, a gradient is noise.
const NOISE: f32 = 1e-6;

#[test]
fn first_step_loss_and_gradients_match_pytorch() {
    let pairs = data::load(&train_dir().join("data.jsonl"), &Columns::default(), None).unwrap();
    for name in CHECKPOINTS {
        let dir = train_dir().join(name).join("model");
        let (model, vars) = DualEncoder::load_trainable(&dir, &Device::Cpu, &[]).unwrap();
        let encoder = Encoder::with_model(&dir, model).unwrap();
        let batch = &pairs[..2];
        let pixels: Vec<f32> = batch
            .iter()
            .flat_map(|p| encoder.preprocess(Source::Path(&p.image)).unwrap())
            .collect();
        let (c, h, w) = encoder.model().image_shape();
        let px = Tensor::from_vec(pixels, (2, c, h, w), &Device::Cpu).unwrap();
        let captions: Vec<&str> = batch.iter().map(|p| p.caption.as_str()).collect();
        let input = encoder.tokenize(&captions).unwrap();
        let loss = encoder
            .model()
            .contrastive_loss(&input, ImageInput::Pixels(&px), 0)
            .unwrap();
        let grads = loss.backward().unwrap();
        let want_loss = reference(name)["loss_1"].as_f64().unwrap();
        let got_loss = f64::from(loss.to_scalar::<f32>().unwrap());
        assert!(
            (got_loss - want_loss).abs() < 1e-5,
            "{name}: loss {got_loss}, transformers {want_loss}"
        );

        let want = tensors(&train_dir().join(name).join("grads-1.safetensors"));
        let global = want.values().map(|g| norm(g).powi(2)).sum::<f32>().sqrt();
        let mut seen = 0;
        let mut off = Vec::new();
        for (var_name, var) in &vars {
            let Some(want) = want.get(var_name) else {
                // transformers gives no gradient to a tensor the forward never
                // reads (BEiT's mask_token): neither must we.
                assert!(
                    grads.get(var.as_tensor()).is_none(),
                    "{name}: {var_name} has a gradient here but not in transformers"
                );
                continue;
            };
            seen += 1;
            let got = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient reached {var_name}"));
            let scale = norm(want);
            if scale < NOISE * global {
                assert!(
                    norm(got) < 10.0 * NOISE * global,
                    "{name}: {var_name} should have a (near) zero gradient, has norm {}",
                    norm(got)
                );
                continue;
            }
            off.push((diff_norm(got, want) / scale, var_name.clone()));
        }
        // Every tensor within 2e-4; a failure lists the worst five. f32 sums
        // in another order give ~1e-4 on their own: with gemm's AVX-512
        // kernels, clipvision-bert's logit_scale gradient is 1.2e-4 off (its
        // AVX2 kernels stay under 1e-4).
        off.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert!(
            off.first().is_none_or(|(rel, _)| *rel < 2e-4),
            "{name}: gradients differ from transformers' by more than 2e-4 relative L2: {:?}",
            &off[..off.len().min(5)]
        );
        assert_eq!(
            seen,
            want.len(),
            "{name}: transformers has gradients for tensors we do not train"
        );
    }
}

fn train_three_steps(name: &str, freeze: Option<&str>, out: &Path) -> serde_json::Value {
    let r = reference(name);
    let h = &r["hyper"];
    let mut cmd = dualsight();
    cmd.arg("train")
        .arg("--model")
        .arg(train_dir().join(name).join("model"))
        .arg("--data")
        .arg(train_dir().join("data.jsonl"))
        .arg("--out")
        .arg(out)
        .arg("--no-shuffle")
        .arg("--logging-steps")
        .arg("1");
    for flag in [
        "batch_size",
        "learning_rate",
        "weight_decay",
        "warmup_steps",
        "max_grad_norm",
        "max_steps",
    ] {
        cmd.arg(format!("--{}", flag.replace('_', "-")))
            .arg(h[flag].to_string());
    }
    if let Some(flag) = freeze {
        cmd.arg(flag);
    }
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{name}: train failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    trainer_state(out)
}

/// After three steps, the weights must be PyTorch's. Adam divides each
/// gradient by its own running magnitude, so a well-determined gradient
/// gives the same step to ~1e-4; where the true gradient is zero (key
/// biases), both frameworks step by about `lr` in a direction set by
/// rounding noise, so there we only bound the step by what Adam can take:
/// the sum of the learning rates (each step moves an element by at most
/// about `lr`, as `|m̂| / sqrt(v̂) <= 1` for a gradient of steady sign).
fn compare_after_steps(name: &str, got: &Path, want: &Path, start: &Path, frozen: &[&str]) {
    let r = reference(name);
    let got = tensors(got);
    let want = tensors(want);
    let start = tensors(start);
    let grads1 = tensors(&train_dir().join(name).join("grads-1.safetensors"));
    let global = grads1.values().map(|g| norm(g).powi(2)).sum::<f32>().sqrt();
    let lr_sum: f64 = r["full"]["learning_rates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert_eq!(
        got.keys().collect::<std::collections::BTreeSet<_>>(),
        want.keys().collect(),
        "{name}: saved tensors differ from transformers' save_pretrained"
    );
    for (k, w) in &want {
        let g = &got[k];
        let s = &start[k];
        if frozen.iter().any(|p| k.starts_with(&format!("{p}."))) {
            assert_eq!(
                g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                s.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{name}: frozen {k} changed"
            );
            continue;
        }
        let step = diff_norm(w, s);
        let noise = grads1.get(k).is_some_and(|g| norm(g) < NOISE * global);
        if noise {
            let max = (g - w).unwrap().abs().unwrap().flatten_all().unwrap();
            let max: f32 = max.max(0).unwrap().to_scalar().unwrap();
            assert!(
                f64::from(max) <= 2.0 * lr_sum,
                "{name}: {k} (zero true gradient) moved {max} from transformers, more than Adam's 2 x {lr_sum}"
            );
            continue;
        }
        let off = diff_norm(g, w);
        assert!(
            off <= 1e-3 * step.max(1e-6) + 1e-6,
            "{name}: {k} after 3 steps is {off:.3e} from transformers (its step was {step:.3e})"
        );
    }
}

#[test]
fn three_adamw_steps_through_the_cli_match_pytorch() {
    for name in CHECKPOINTS {
        let tmp = tempfile::tempdir().unwrap();
        let state = train_three_steps(name, None, tmp.path());
        let r = reference(name);
        let losses: Vec<f64> = state["log_history"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["loss"].as_f64())
            .collect();
        let want: Vec<f64> = r["full"]["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(losses.len(), 3, "{name}: one loss per logging step");
        for (i, (g, w)) in losses.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() < 1e-5,
                "{name}: step {} loss {g}, transformers {w}",
                i + 1
            );
        }
        let model = train_dir().join(name).join("model");
        compare_after_steps(
            name,
            &tmp.path().join("model.safetensors"),
            &train_dir().join(name).join("params-3.safetensors"),
            &model.join("model.safetensors"),
            &[],
        );
    }
}

#[test]
fn a_frozen_tower_stays_bit_identical_while_the_rest_matches_pytorch() {
    for name in CHECKPOINTS {
        for (flag, tower, file) in [
            (
                "--freeze-vision-model",
                "vision_model",
                "params-3-frozen-vision.safetensors",
            ),
            (
                "--freeze-text-model",
                "text_model",
                "params-3-frozen-text.safetensors",
            ),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            train_three_steps(name, Some(flag), tmp.path());
            let model = train_dir().join(name).join("model");
            compare_after_steps(
                name,
                &tmp.path().join("model.safetensors"),
                &train_dir().join(name).join(file),
                &model.join("model.safetensors"),
                &[tower],
            );
        }
    }
}

fn run_train(args: &[&std::ffi::OsStr]) -> std::process::Output {
    run_ok(dualsight().arg("train").args(args))
}

/// A run stopped at a checkpoint and resumed gives the weights of a run
/// that never stopped, bit for bit: same optimizer moments, schedule, place
/// in the (shuffled) data across an epoch boundary, and dropout masks (the
/// checkpoint's text tower has dropout 0.1).
#[test]
fn resuming_gives_the_same_weights_as_never_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, resumed) = (tmp.path().join("whole"), tmp.path().join("resumed"));
    let model = fixtures().join("models/vit-bert");
    let data = train_dir().join("data.jsonl");
    let common = |out: &Path| -> Vec<std::ffi::OsString> {
        [
            "--model".as_ref(),
            model.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--batch-size".as_ref(),
            "2".as_ref(),
            "--max-steps".as_ref(),
            "5".as_ref(),
            "--learning-rate".as_ref(),
            "1e-3".as_ref(),
            "--warmup-steps".as_ref(),
            "2".as_ref(),
            "--weight-decay".as_ref(),
            "0.01".as_ref(),
            "--save-steps".as_ref(),
            "2".as_ref(),
        ]
        .iter()
        .map(|s| s.to_os_string())
        .collect()
    };
    let args = common(&whole);
    run_train(&args.iter().map(|s| s.as_os_str()).collect::<Vec<_>>());
    let checkpoint = whole.join("checkpoint-2");
    assert!(checkpoint.join("optimizer.safetensors").is_file());
    assert!(checkpoint.join("tokenizer.json").is_file());
    let mut args = common(&resumed);
    args.push("--resume".into());
    args.push(checkpoint.into_os_string());
    run_train(&args.iter().map(|s| s.as_os_str()).collect::<Vec<_>>());
    let a = tensors(&whole.join("model.safetensors"));
    let b = tensors(&resumed.join("model.safetensors"));
    let start = tensors(&model.join("model.safetensors"));
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        let (x, y) = (
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(x, y, "{k} differs after resuming");
    }
    assert!(
        diff_norm(
            &a["text_projection.weight"],
            &start["text_projection.weight"]
        ) > 0.0,
        "the run did not train"
    );
    let state = trainer_state(&resumed);
    assert_eq!(state["global_step"], 5);

    // A resume with another setting would not continue the same run: refused.
    let mut args = common(&tmp.path().join("changed"));
    args[11] = "2e-3".into();
    args.push("--resume".into());
    args.push(whole.join("checkpoint-4").into_os_string());
    let stderr = run_err(dualsight().arg("train").args(&args));
    assert!(stderr.contains("--learning-rate"), "{stderr}");
}

/// A row whose image is missing or broken is reported once, by path, and
/// skipped; the run goes on and counts the skips.
#[test]
fn unreadable_images_are_reported_once_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    let images = train_dir().join("images");
    let broken = fixtures().join("images/bad/truncated.jpg");
    let rows = [
        (images.join("chelsea.png"), "a cat"),
        (tmp.path().join("missing.png"), "nothing"),
        (images.join("coffee.png"), "coffee"),
        (broken.clone(), "half a photo"),
        (images.join("rocket.png"), "a rocket"),
    ];
    let mut text = String::new();
    for (image, caption) in &rows {
        text += &serde_json::json!({"image": image, "caption": caption, "id": 7}).to_string();
        text.push('\n');
    }
    std::fs::write(&data, text).unwrap();
    let out = run_train(&[
        "--model".as_ref(),
        train_dir().join("vit-bert/model").as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        tmp.path().join("out").as_os_str(),
        "--batch-size".as_ref(),
        "2".as_ref(),
        "--epochs".as_ref(),
        "2".as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for bad in ["missing.png", "truncated.jpg"] {
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.starts_with("skipped") && l.contains(bad))
                .count(),
            1,
            "{bad} should be reported once: {stderr}"
        );
    }
    assert!(stderr.contains("2 rows skipped"), "{stderr}");
    assert!(tmp.path().join("out/model.safetensors").is_file());
}

#[test]
fn frozen_towers_hold_no_gradient_leaves() {
    let dir = train_dir().join("vit-bert").join("model");
    let (_, vars) = DualEncoder::load_trainable(&dir, &Device::Cpu, &["vision_model"]).unwrap();
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.iter().all(|n| !n.starts_with("vision_model.")));
    for trained in [
        "visual_projection.weight",
        "text_projection.weight",
        "logit_scale",
    ] {
        assert!(names.contains(&trained), "{trained} must train: {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("text_model.")));
}

/// A small version of the Fashion-MNIST demo: a tiny model from `init`,
/// trained from scratch on 500 photos for 300 steps, beats the chance level
/// of 1 in 10 on 200 held-out photos by a wide margin (it reached 0.42 to
/// 0.64 over repeated runs from different random weights).
#[test]
fn a_model_trained_from_scratch_beats_chance_on_fashion_mnist() {
    let tmp = tempfile::tempdir().unwrap();
    let fashion = fixtures().join("fashion");
    let init = tmp.path().join("init");
    run_ok(
        dualsight()
            .arg("init")
            .arg("--vision-config")
            .arg(fashion.join("vision_config.json"))
            .arg("--text-config")
            .arg(fashion.join("text_config.json"))
            .args(["--projection-dim", "64"])
            .arg("--tokenizer")
            .arg(fashion.join("model"))
            .arg("--out")
            .arg(&init),
    );
    let trained = tmp.path().join("trained");
    run_train(&[
        "--model".as_ref(),
        init.as_os_str(),
        "--data".as_ref(),
        fashion.join("train").as_os_str(),
        "--caption-template".as_ref(),
        "a photo of a {}".as_ref(),
        "--eval-data".as_ref(),
        fashion.join("test").as_os_str(),
        "--out".as_ref(),
        trained.as_os_str(),
        "--epochs".as_ref(),
        "30".as_ref(),
        "--batch-size".as_ref(),
        "50".as_ref(),
        "--learning-rate".as_ref(),
        "1e-3".as_ref(),
        "--warmup-steps".as_ref(),
        "20".as_ref(),
        "--eval-steps".as_ref(),
        "100".as_ref(),
    ]);
    let state = trainer_state(&trained);
    let accuracy = state["log_history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find_map(|e| e["eval_zero_shot_accuracy"].as_f64())
        .expect("an evaluation at the end");
    let eval_steps: Vec<u64> = state["log_history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("eval_zero_shot_accuracy").is_some())
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        eval_steps,
        vec![100, 200, 300],
        "--eval-steps 100 and the end"
    );
    assert!(
        accuracy >= 0.25,
        "zero-shot accuracy {accuracy} on 10 classes is not well above chance (0.1)"
    );
    // The trained checkpoint serves: it loads as a model for embedding.
    run_ok(
        dualsight()
            .arg("classify")
            .arg("--model")
            .arg(&trained)
            .arg("--image")
            .arg(
                fashion
                    .join("test/sneaker")
                    .read_dir()
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap()
                    .path(),
            )
            .args([
                "--label",
                "a photo of a sneaker",
                "--label",
                "a photo of a bag",
            ]),
    );
}

/// Bad data sets fail before training with one line that names the file
/// and says what was expected.
#[test]
fn bad_data_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 5] = [
        (
            "wrong.jsonl",
            "{\"img\": \"a.png\", \"caption\": \"a cat\"}\n",
            "no `image` field",
        ),
        ("empty.csv", "", "no image-caption pairs"),
        (
            "numbers.csv",
            "image,caption\na.png,1\nb.png,2.5\n",
            "`caption` holds only numbers",
        ),
        ("notes.txt", "a.png a cat\n", "unknown data format"),
        (
            "gone.jsonl",
            "{\"image\": \"gone.png\", \"caption\": \"nothing\"}\n",
            "no image of the data set could be decoded",
        ),
    ];
    for (name, text, want) in cases {
        let data = tmp.path().join(name);
        std::fs::write(&data, text).unwrap();
        let out = dualsight()
            .arg("train")
            .arg("--model")
            .arg(train_dir().join("vit-bert/model"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(tmp.path().join("out"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: trained on bad data");
        assert!(
            stderr.contains(name) && stderr.contains(want),
            "{name}: expected an error naming the file and `{want}`, got: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Dropout follows the config in a training forward, with masks fixed by
/// the step's seed, and never touches inference: vit-bert's text tower has
/// dropout 0.1.
#[test]
fn dropout_applies_to_training_forwards_only() {
    let dir = fixtures().join("models/vit-bert");
    let (model, _) = DualEncoder::load_trainable(&dir, &Device::Cpu, &[]).unwrap();
    let encoder = Encoder::with_model(&dir, model).unwrap();
    let input = encoder.tokenize(&["a cat", "a rocket on the pad"]).unwrap();
    let (c, h, w) = encoder.model().image_shape();
    let px = Tensor::randn(0f32, 1., (2, c, h, w), &Device::Cpu).unwrap();
    let loss = |seed: u64| -> f32 {
        encoder
            .model()
            .contrastive_loss(&input, ImageInput::Pixels(&px), seed)
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let losses: Vec<f32> = (0..4).map(loss).collect();
    assert!(
        losses.windows(2).any(|p| p[0] != p[1]),
        "dropout 0.1 gave the same loss for four seeds: {losses:?}"
    );
    // Masks come from the seed alone: a step can be replayed (resume).
    assert_eq!(loss(7), loss(7));
    let a = encoder.model().embed_texts(&input).unwrap();
    let b = encoder.model().embed_texts(&input).unwrap();
    assert_eq!(
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

/// CSV with its own column names, in file order: five rows in batches of
/// two are three steps an epoch, the last one partial.
#[test]
fn csv_columns_and_a_partial_last_batch_in_file_order() {
    let tmp = tempfile::tempdir().unwrap();
    let images = train_dir().join("images");
    let mut csv = String::from("id,file,text\n");
    for (i, (name, caption)) in [
        ("chelsea", "a cat"),
        ("coffee", "a cup"),
        ("rocket", "a rocket"),
        ("camera", "a camera man"),
        ("rocket_progressive", "a rocket again"),
    ]
    .iter()
    .enumerate()
    {
        csv += &format!(
            "{i},{},{caption}\n",
            images.join(format!("{name}.png")).display()
        );
    }
    let data = tmp.path().join("pairs.csv");
    std::fs::write(&data, csv).unwrap();
    let out = tmp.path().join("out");
    run_train(&[
        "--model".as_ref(),
        train_dir().join("vit-bert/model").as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--image-column".as_ref(),
        "file".as_ref(),
        "--caption-column".as_ref(),
        "text".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
        "--batch-size".as_ref(),
        "2".as_ref(),
        "--epochs".as_ref(),
        "1".as_ref(),
        "--no-shuffle".as_ref(),
        "--logging-steps".as_ref(),
        "1".as_ref(),
    ]);
    let state = trainer_state(&out);
    assert_eq!(state["global_step"], 3);
    assert_eq!(state["log_history"].as_array().unwrap().len(), 3);
    assert_eq!(state["epoch"], 1.0);
}
