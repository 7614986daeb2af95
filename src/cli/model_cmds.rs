//! The model subcommands: `embed`, `classify`, `compose`, `init`. Output
//! formats here are a contract other tools parse (see README).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use crate::device::{DeviceSpec, parse_dtype};
use crate::encoder::Encoder;
use crate::model::checkpoint::{
    copy_image_processor, copy_tokenizer_files, default_image_processor,
};
use crate::model::{DualEncoder, hub};
use crate::preprocess::{Preprocessing, Source};
use crate::server::port::{LabelScore, rank_labels};

/// Where and how the model runs (shared by every command that runs it).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Model directory, or a hub id (org/name) found in the local Hugging Face cache.
    #[arg(long, env = "DUALSIGHT_MODEL")]
    pub model: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// f32 (default), f16 or bf16 (on the CPU: the dense weights; with AVX-512 BF16 also a batch's dense-layer inputs).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Decode large JPEGs at reduced scale, as the daemon does by default
    /// (`exact_preprocessing = false`), instead of exactly as transformers.
    #[arg(long)]
    pub fast_preprocessing: bool,
}

impl RunArgs {
    pub fn load(&self) -> Result<Encoder> {
        let dir = hub::resolve(&self.model)?;
        let device = self.device.open()?;
        let dtype = parse_dtype(&self.dtype)?;
        let mode = if self.fast_preprocessing {
            Preprocessing::Fast
        } else {
            Preprocessing::Exact
        };
        Ok(Encoder::load(&dir, &device, dtype)
            .with_context(|| format!("loading model {}", dir.display()))?
            .with_preprocessing(mode))
    }
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// A text to embed (repeatable).
    #[arg(long = "text")]
    pub texts: Vec<String>,
    /// An image file to embed (repeatable).
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// Print one JSON object (text_embeds, image_embeds, logit_scale, logits_per_text).
    #[arg(long)]
    pub json: bool,
}

pub fn embed(args: &EmbedArgs) -> Result<()> {
    if args.texts.is_empty() && args.images.is_empty() {
        bail!("nothing to embed: give --text and/or --image");
    }
    let enc = args.run.load()?;
    // Decode every image before any model work, so a bad file fails fast, naming itself.
    let pixels = args
        .images
        .iter()
        .map(|p| enc.preprocess(Source::Path(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let text_embeds = enc.embed_texts(&texts)?;
    let image_embeds = enc.embed_pixels(&pixels)?;
    let scale = enc.model().logit_scale_exp();
    let mut out =
        json!({ "text_embeds": text_embeds, "image_embeds": image_embeds, "logit_scale": scale });
    if !text_embeds.is_empty() && !image_embeds.is_empty() {
        let logits: Vec<Vec<f32>> = text_embeds
            .iter()
            .map(|t| image_embeds.iter().map(|i| dot(t, i) * scale).collect())
            .collect();
        out["logits_per_text"] = json!(logits);
    }
    if args.json {
        println!("{out}");
    } else {
        for (t, e) in args.texts.iter().zip(&text_embeds) {
            println!(
                "text  {t:?}: {} dims, first {:?}",
                e.len(),
                &e[..e.len().min(4)]
            );
        }
        for (p, e) in args.images.iter().zip(&image_embeds) {
            println!(
                "image {}: {} dims, first {:?}",
                p.display(),
                e.len(),
                &e[..e.len().min(4)]
            );
        }
        if let Some(l) = out.get("logits_per_text") {
            println!("logits_per_text (exp(logit_scale) = {scale}): {l}");
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The image to classify.
    #[arg(long)]
    pub image: PathBuf,
    /// A candidate label (repeatable, at least one).
    #[arg(long = "label", required = true)]
    pub labels: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Zero-shot classification: softmax over `logits_per_image` for the labels.
pub fn classify(args: &ClassifyArgs) -> Result<()> {
    let enc = args.run.load()?;
    let ranked = zero_shot(
        &enc,
        &enc.preprocess(Source::Path(&args.image))?,
        &args.labels,
    )?;
    if args.json {
        let rows: Vec<_> = ranked
            .iter()
            .map(|l| json!({"label": l.label, "probability": l.probability, "logit": l.logit, "score": l.score}))
            .collect();
        println!("{}", json!({ "image": args.image, "labels": rows }));
    } else {
        for l in ranked {
            println!("{:>8.4}  {}", l.probability, l.label);
        }
    }
    Ok(())
}

/// Zero-shot: each label's cosine with the image, logit and softmax
/// probability, highest first (the daemon's `Classify` ranks the same way).
pub fn zero_shot(enc: &Encoder, pixels: &[f32], labels: &[String]) -> Result<Vec<LabelScore>> {
    let texts: Vec<&str> = labels.iter().map(String::as_str).collect();
    let t = enc.embed_texts(&texts)?;
    let i = enc.embed_pixels(&[pixels.to_vec()])?;
    let scored = labels
        .iter()
        .cloned()
        .zip(t.iter().map(|t| dot(t, &i[0])))
        .collect();
    Ok(rank_labels(scored, enc.model().logit_scale()))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[derive(Debug, Args)]
pub struct ComposeArgs {
    /// Vision tower checkpoint directory (ViT, DeiT, BEiT, CLIP vision or a whole CLIP).
    #[arg(long)]
    pub vision: PathBuf,
    /// Text tower checkpoint directory (BERT, RoBERTa, XLM-R, CLIP text).
    #[arg(long)]
    pub text: PathBuf,
    #[arg(long, default_value_t = 512)]
    pub projection_dim: usize,
    /// Output directory: new or empty (created).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn compose(args: &ComposeArgs) -> Result<()> {
    check_projection_dim(args.projection_dim)?;
    check_out(&args.out, &[&args.vision, &args.text])?;
    let model = DualEncoder::compose(
        &args.vision,
        &args.text,
        args.projection_dim,
        &candle_core::Device::Cpu,
    )?;
    model.save(&args.out)?;
    copy_tokenizer_files(&args.text, &args.out)?;
    if !copy_image_processor(&args.vision, &args.out)? {
        write_json(
            &args.out.join("preprocessor_config.json"),
            &default_image_processor(model.config()),
        )?;
    }
    eprintln!(
        "composed {} + {} into {} (new projections, projection_dim {})",
        model.config().vision.model_type(),
        model.config().text.model_type(),
        args.out.display(),
        args.projection_dim
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// A vision tower config.json (vit, deit, beit, clip_vision_model or clip).
    #[arg(long)]
    pub vision_config: PathBuf,
    /// A text tower config.json (bert, roberta, xlm-roberta, clip_text_model or clip).
    #[arg(long)]
    pub text_config: PathBuf,
    #[arg(long, default_value_t = 512)]
    pub projection_dim: usize,
    /// Copy tokenizer files from this directory, so the model can embed text.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Output directory: new or empty (created).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn init(args: &InitArgs) -> Result<()> {
    check_projection_dim(args.projection_dim)?;
    let mut inputs = vec![args.vision_config.as_path(), args.text_config.as_path()];
    inputs.extend(args.tokenizer.as_deref());
    check_out(&args.out, &inputs)?;
    let model = DualEncoder::init_dir(
        &args.vision_config,
        &args.text_config,
        args.projection_dim,
        args.tokenizer.as_deref(),
        &args.out,
    )?;
    eprintln!(
        "initialised {} + {} with random weights in {}",
        model.config().vision.model_type(),
        model.config().text.model_type(),
        args.out.display()
    );
    Ok(())
}

/// A new model goes into a new or empty folder: over one of its inputs it
/// would truncate the files it is copying (tokenizer files to 0 bytes), and
/// over another model it would leave files the loader prefers to the new
/// ones (a `processor_config.json` beside the new `preprocessor_config.json`).
fn check_out(out: &Path, inputs: &[&Path]) -> Result<()> {
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    if let Some(o) = canonical(out) {
        for input in inputs {
            let dir = if input.is_file() {
                input.parent().unwrap_or(input)
            } else {
                input
            };
            if canonical(dir).as_ref() == Some(&o) {
                bail!(
                    "--out {}: is where {} is read from: write the new model to another folder",
                    out.display(),
                    input.display()
                );
            }
        }
    }
    if let Ok(mut entries) = std::fs::read_dir(out)
        && entries.next().is_some()
    {
        bail!(
            "--out {}: exists and is not empty: give a new or empty folder (a model written over another would mix their files)",
            out.display()
        );
    }
    Ok(())
}

fn check_projection_dim(p: usize) -> Result<()> {
    if p == 0 || p > 65536 {
        bail!("--projection-dim {p}: expected 1..=65536");
    }
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("{}: cannot write", path.display()))
}
