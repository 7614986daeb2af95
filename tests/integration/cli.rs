//! The CLI contract: `embed --json` from real image files matches transformers'
//! whole pipeline (load_image + PIL image processor + model), bad files fail
//! cleanly naming themselves, and compose / init / classify work end to end.

use std::path::Path;
use std::process::{Command, Output};

use crate::util::*;

pub fn dualsight() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dualsight"))
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run dualsight");
    assert!(
        out.status.success(),
        "dualsight failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail; its stderr.
pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run dualsight");
    assert!(
        !out.status.success(),
        "dualsight succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn embed_json(model: &Path, texts: &[String], images: &[std::path::PathBuf]) -> serde_json::Value {
    let mut cmd = dualsight();
    cmd.arg("embed")
        .arg("--model")
        .arg(model)
        .arg("--json")
        .arg("--device")
        .arg("cpu");
    for t in texts {
        cmd.arg("--text").arg(t);
    }
    for i in images {
        cmd.arg("--image").arg(i);
    }
    serde_json::from_slice(&run_ok(&mut cmd).stdout).expect("embed prints one JSON object")
}

fn matrix(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// Largest absolute difference between two rows.
fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn embed_from_files_matches_the_transformers_pipeline() {
    for name in MODELS {
        let dir = model_dir(name);
        let r = Reference::load(&dir);
        let texts = r.strings("texts");
        let all = r.strings("all_images");
        let paths: Vec<_> = all.iter().map(|f| image(f)).collect();
        let out = embed_json(&dir, &texts, &paths);
        // Same token ids as transformers' tokenizer ⇒ text embeddings equal to 1e-4.
        let text = matrix(&out["text_embeds"]);
        let want_text = rows(&r.get("text_embeds"));
        for (got, want) in text.iter().zip(&want_text) {
            let d = max_abs(got, want);
            assert!(d < 1e-4, "{name}: text embedding differs by {d}");
        }
        // Whole pipeline from files: cosine ≥ 0.999 for every photo and format.
        let images = matrix(&out["image_embeds"]);
        let want = rows(&r.get("all_image_embeds"));
        for ((file, c), _) in all.iter().zip(cosines(&images, &want)).zip(&images) {
            assert!(c >= 0.999, "{name} {file}: cosine {c} < 0.999");
        }
        let scale = out["logit_scale"].as_f64().unwrap() as f32;
        assert!((scale - r.json["logit_scale_exp"].as_f64().unwrap() as f32).abs() < 1e-4);
        let logits = matrix(&out["logits_per_text"]);
        assert_eq!((logits.len(), logits[0].len()), (texts.len(), all.len()));
    }
}

#[test]
fn texts_longer_than_the_tower_are_truncated_not_refused() {
    let long = "a photo of a cat on a table ".repeat(200);
    for name in ["vit-bert", "deit-roberta", "clip"] {
        let v = embed_json(&model_dir(name), &[long.clone(), "a photo".into()], &[]);
        let e = matrix(&v["text_embeds"]);
        assert_eq!(e.len(), 2, "{name}");
        assert!(e[0].iter().all(|x| x.is_finite()), "{name}");
    }
}

/// Issue 14: captions longer than the tokenizer's `model_max_length` (below
/// the tower's position table) embed as transformers' processor with
/// `truncation=True` embeds them.
#[test]
fn long_captions_are_cut_at_the_tokenizers_model_max_length() {
    for name in TRUNCATION_MODELS {
        let dir = model_dir(name);
        let r = Reference::load(&dir);
        let out = embed_json(&dir, &r.strings("texts"), &[]);
        let got = matrix(&out["text_embeds"]);
        let want = rows(&r.get("text_embeds"));
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = max_abs(g, w);
            assert!(d < 1e-4, "{name} text {i}: embedding differs by {d}");
        }
    }
}

#[test]
fn hostile_files_fail_with_one_line_naming_the_file() {
    let dir = model_dir("vit-bert");
    for entry in std::fs::read_dir(fixtures().join("images").join("bad")).unwrap() {
        let path = entry.unwrap().path();
        let out = dualsight()
            .arg("embed")
            .arg("--model")
            .arg(&dir)
            .arg("--json")
            .arg("--image")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: accepted", path.display());
        assert!(out.stdout.is_empty(), "{}: printed output", path.display());
        assert!(
            stderr.contains(&*path.to_string_lossy()),
            "{}: error does not name the file: {stderr}",
            path.display()
        );
        assert!(
            !stderr.contains("panicked"),
            "{}: panic: {stderr}",
            path.display()
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{}: not one line: {stderr}",
            path.display()
        );
    }
    let missing = fixtures().join("images").join("no-such-file.jpg");
    let out = dualsight()
        .arg("embed")
        .arg("--model")
        .arg(&dir)
        .arg("--image")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no-such-file.jpg")
    );
}

#[test]
fn a_missing_model_explains_how_to_point_at_one() {
    let out = dualsight()
        .args(["embed", "--model", "nobody/nothing-here", "--text", "x"])
        .env("HF_HUB_CACHE", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("nobody/nothing-here")
            && stderr.contains("--model"),
        "{stderr}"
    );
}

/// `dualsight compose` of two towers into `out`.
fn compose(vision: &Path, text: &Path, projection_dim: usize, out: &Path) -> Command {
    let mut cmd = dualsight();
    cmd.arg("compose")
        .arg("--vision")
        .arg(vision)
        .arg("--text")
        .arg(text)
        .arg("--projection-dim")
        .arg(projection_dim.to_string())
        .arg("--out")
        .arg(out);
    cmd
}

#[test]
fn compose_then_embed_and_classify() {
    let towers = fixtures().join("models").join("towers");
    let out = tempfile::tempdir().unwrap();
    let composed = out.path().join("vit-bert");
    run_ok(&mut compose(
        &towers.join("vit"),
        &towers.join("bert"),
        24,
        &composed,
    ));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        assert!(composed.join(f).is_file(), "compose did not write {f}");
    }
    let v = embed_json(
        &composed,
        &["a photo of a cat".into()],
        &[image("chelsea.png")],
    );
    assert_eq!(matrix(&v["image_embeds"])[0].len(), 24);
    let out = run_ok(
        dualsight()
            .arg("classify")
            .arg("--model")
            .arg(&composed)
            .arg("--image")
            .arg(image("coffee.webp"))
            .args([
                "--label",
                "a cat",
                "--label",
                "a cup of coffee",
                "--label",
                "a rocket",
                "--json",
            ]),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probs: Vec<f64> = v["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["probability"].as_f64().unwrap())
        .collect();
    assert_eq!(probs.len(), 3);
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    assert!(
        probs.windows(2).all(|w| w[0] >= w[1]),
        "not sorted: {probs:?}"
    );
}

#[test]
fn init_makes_a_loadable_model() {
    let init = fixtures().join("models").join("init");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("m");
    run_ok(
        dualsight()
            .arg("init")
            .arg("--vision-config")
            .arg(init.join("vit.config.json"))
            .arg("--text-config")
            .arg(init.join("bert.config.json"))
            .args(["--projection-dim", "8", "--tokenizer"])
            .arg(model_dir("vit-bert"))
            .arg("--out")
            .arg(&dir),
    );
    let v = embed_json(&dir, &["hello".into()], &[image("rocket.jpg")]);
    assert_eq!(matrix(&v["text_embeds"])[0].len(), 8);
    assert_eq!(matrix(&v["image_embeds"])[0].len(), 8);
}

/// `fsck` checks a stopped daemon's store: a fresh one passes, a data dir
/// without a store is a clear error.
#[test]
fn fsck_checks_a_store_and_names_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = dualsight::store::Store::open(tmp.path().join("store")).unwrap();
    drop(store);
    let out = run_ok(
        dualsight()
            .arg("fsck")
            .arg("--data-dir")
            .arg(tmp.path())
            .arg("--json"),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["files"], 0);
    let missing = tmp.path().join("nothing-here");
    let stderr = run_err(dualsight().arg("fsck").arg("--data-dir").arg(&missing));
    assert!(
        stderr.contains("nothing-here") && stderr.contains("no store"),
        "{stderr}"
    );
}

/// `dualsight parity` (what the GPU check runs): every fixture passes on the
/// CPU in f32 and, by cosine, in bf16; a tolerance nothing meets fails with
/// exit 1 and says which check; a directory without references is named.
#[test]
fn parity_checks_a_checkpoint_against_its_recorded_references() {
    for name in MODELS {
        for dtype in ["f32", "bf16"] {
            let out = run_ok(
                dualsight()
                    .arg("parity")
                    .arg("--model")
                    .arg(model_dir(name))
                    .args(["--device", "cpu", "--dtype", dtype]),
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["pass"], true, "{name} {dtype}: {v}");
            assert_eq!(v["checks"].as_array().unwrap().len(), 2, "{v}");
        }
    }
    let out = dualsight()
        .arg("parity")
        .arg("--model")
        .arg(model_dir("vit-bert"))
        .args([
            "--device",
            "cpu",
            "--dtype",
            "bf16",
            "--min-cosine",
            "1.0000001",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pass"], false);
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["pass"] == false),
        "{v}"
    );
    let empty = tempfile::tempdir().unwrap();
    let err = run_err(dualsight().arg("parity").arg("--model").arg(empty.path()));
    assert!(err.contains("reference.safetensors"), "{err}");
}

/// `dualsight bench ARGS` runs the harness `dualsight-bench` with ARGS
/// verbatim (its own `--help` too), and its exit status is the command's:
/// the one beside the binary first, else the one on PATH; with neither,
/// one line says how to build it. The binary is copied beside stand-in
/// harnesses, so that a real harness built into the same target directory
/// cannot answer instead.
#[cfg(unix)]
#[test]
fn bench_runs_the_harness_beside_the_binary_or_on_path() {
    use std::os::unix::fs::PermissionsExt;
    let (bin, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let exe = bin.path().join("dualsight");
    // A link where the temp dir shares the target's file system: a copy's
    // write handle, inherited by a process another test forks meanwhile,
    // can make running it fail as "Text file busy" (retried below anyway).
    if std::fs::hard_link(env!("CARGO_BIN_EXE_dualsight"), &exe).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_dualsight"), &exe).unwrap();
    }
    let harness = |dir: &Path, status: u8| {
        let script = dir.join("dualsight-bench");
        let log = dir.join("args");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> '{}'; done\nexit {status}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        log
    };
    let args = [
        "--reference",
        "--only",
        "vision,ingest,search",
        "--sizes",
        "10k,100k",
        "--help",
        "-x y",
    ];
    // A file just written can be "busy" to exec while a process forked
    // by another test still holds its write handle: tried again a while.
    let busy = |out: &std::io::Result<Output>| match out {
        Err(e) => e.kind() == std::io::ErrorKind::ExecutableFileBusy,
        Ok(o) => String::from_utf8_lossy(&o.stderr).contains("Text file busy"),
    };
    let run = |path: &Path| {
        let mut tries = 0;
        loop {
            let out = Command::new(&exe)
                .arg("bench")
                .args(args)
                .env("PATH", path)
                .output();
            tries += 1;
            if !busy(&out) || tries == 50 {
                return out.expect("run dualsight");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let lines = |log: &Path| {
        let text = std::fs::read_to_string(log).unwrap();
        std::fs::remove_file(log).unwrap();
        text.lines().map(str::to_owned).collect::<Vec<_>>()
    };

    let on_path = harness(other.path(), 0);
    let out = run(other.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&on_path), args);

    let beside = harness(bin.path(), 7);
    let out = run(other.path());
    assert_eq!(out.status.code(), Some(7), "the harness's status");
    assert_eq!(lines(&beside), args);
    assert!(!on_path.exists(), "the harness on PATH ran too");

    std::fs::remove_file(bin.path().join("dualsight-bench")).unwrap();
    std::fs::remove_file(other.path().join("dualsight-bench")).unwrap();
    let err = run_err(Command::new(&exe).arg("bench").env("PATH", other.path()));
    assert!(
        err.contains("cargo build --release -p dualsight-bench")
            && err.contains(&bin.path().display().to_string()),
        "{err}"
    );
}

/// A new model goes into a new or empty folder: over one of its towers it
/// truncated the tower's tokenizer files, and over another model it left
/// that model's image processor, which the loader preferred.
#[test]
fn compose_and_init_refuse_an_out_that_holds_files() {
    let towers = fixtures().join("models").join("towers");
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("bert");
    std::fs::create_dir(&text).unwrap();
    for f in std::fs::read_dir(towers.join("bert")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, text.join(f.file_name().unwrap())).unwrap();
    }
    let before = std::fs::read(text.join("tokenizer.json")).unwrap();
    let compose_into = |out: &Path| compose(&towers.join("vit"), &text, 8, out);
    let err = run_err(&mut compose_into(&text));
    assert!(err.contains("--out") && err.contains("read from"), "{err}");
    assert_eq!(std::fs::read(text.join("tokenizer.json")).unwrap(), before);
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    run_ok(&mut compose_into(&fresh));
    let err = run_err(&mut compose_into(&fresh));
    assert!(err.contains("not empty"), "{err}");
    let init = fixtures().join("models").join("init");
    let err = run_err(
        dualsight()
            .arg("init")
            .arg("--vision-config")
            .arg(init.join("vit.config.json"))
            .arg("--text-config")
            .arg(init.join("bert.config.json"))
            .arg("--out")
            .arg(&fresh),
    );
    assert!(err.contains("not empty"), "{err}");
}
