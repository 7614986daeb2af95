//! Contrastive fine-tuning (`dualsight train`) with the semantics of
//! transformers' Trainer running `run_clip.py`: the model's contrastive
//! loss, AdamW in two weight-decay groups, the linear schedule with warmup,
//! gradient clipping by global norm, and freezing a tower but not its
//! projection. `data` reads the pairs, `batches` orders and decodes them,
//! `optim` and `schedule` step, `eval` measures, `state` saves and resumes,
//! `progress` reports.

pub mod batches;
pub mod data;
pub mod eval;
pub mod optim;
pub mod progress;
pub mod schedule;
pub mod state;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde_json::json;

use crate::encoder::Encoder;
use crate::model::{DualEncoder, ImageInput};
use crate::rng::SplitMix64;
use batches::{Images, epoch_order};
use eval::{EvalReport, EvalSet};
use optim::{AdamW, AdamWConfig, clip_grad_norm};
use state::{Position, Settings, TrainerState};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Batch(#[from] batches::BatchError),
    #[error(transparent)]
    Eval(#[from] eval::EvalError),
    #[error(transparent)]
    Optim(#[from] optim::OptimError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Encoder(#[from] crate::encoder::EncoderError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// A run's settings; the defaults are `run_clip.py`'s and the Trainer's.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    pub eval_data: Option<PathBuf>,
    pub columns: data::Columns,
    pub caption_template: Option<String>,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub shuffle: bool,
    pub freeze_vision: bool,
    pub freeze_text: bool,
    pub save_steps: Option<usize>,
    pub resume: Option<PathBuf>,
    pub eval_steps: Option<usize>,
    pub logging_steps: usize,
    pub device: Device,
}

impl TrainOptions {
    /// The defaults for a model, data set and output folder.
    pub fn new(model: PathBuf, data: PathBuf, out: PathBuf) -> Self {
        Self {
            model,
            data,
            out,
            eval_data: None,
            columns: data::Columns::default(),
            caption_template: None,
            epochs: 3,
            max_steps: None,
            batch_size: 64,
            learning_rate: 5e-5,
            weight_decay: 0.0,
            warmup_steps: 0,
            max_grad_norm: 1.0,
            seed: 42,
            shuffle: true,
            freeze_vision: false,
            freeze_text: false,
            save_steps: None,
            resume: None,
            eval_steps: None,
            logging_steps: 10,
            device: Device::Cpu,
        }
    }
}

/// One optimizer step, as reported.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub step: usize,
    /// The step this run (or resumed run) started from.
    pub start_step: usize,
    pub total: usize,
    pub epoch: f64,
    pub loss: f32,
    pub grad_norm: f64,
    /// The learning rate for the next step (what the Trainer logs).
    pub learning_rate: f64,
    pub images: usize,
    pub elapsed_s: f64,
}

/// What a run tells its caller as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    Step(StepReport),
    Skipped { image: PathBuf, reason: String },
    Eval { step: usize, report: EvalReport },
    Saved(PathBuf),
}

/// What a finished run returns.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: usize,
    pub last_loss: Option<f32>,
    pub skipped: Vec<(PathBuf, String)>,
    pub eval: Option<EvalReport>,
    /// Over the training steps (not the checks before, nor the last eval and save).
    pub images_per_second: f64,
}

fn check(opts: &TrainOptions) -> Result<()> {
    let bad = |flag: &str, what: &str| Err(TrainError::Invalid(format!("{flag}: {what}")));
    if opts.batch_size == 0 {
        return bad("--batch-size", "expected at least 1");
    }
    if opts.epochs == 0 && opts.max_steps.is_none() {
        return bad("--epochs", "expected at least 1 (or --max-steps)");
    }
    if opts.max_steps == Some(0) {
        return bad("--max-steps", "expected at least 1");
    }
    if !(opts.learning_rate.is_finite() && opts.learning_rate >= 0.0) {
        return bad("--learning-rate", "expected a finite number >= 0");
    }
    if !(opts.weight_decay.is_finite() && opts.weight_decay >= 0.0) {
        return bad("--weight-decay", "expected a finite number >= 0");
    }
    if !opts.max_grad_norm.is_finite() {
        return bad(
            "--max-grad-norm",
            "expected a finite number (0 turns clipping off)",
        );
    }
    for (flag, v) in [
        ("--save-steps", opts.save_steps),
        ("--eval-steps", opts.eval_steps),
        ("--logging-steps", Some(opts.logging_steps)),
    ] {
        if v == Some(0) {
            return bad(flag, "expected at least 1");
        }
    }
    if opts.freeze_vision && opts.freeze_text && opts.learning_rate > 0.0 {
        // Legal (the projections and logit scale still train), as in run_clip.py.
        tracing::info!("both towers frozen: only the projections and logit_scale train");
    }
    Ok(())
}

/// Trains as `opts` says, writes the model into `opts.out` and returns what
/// happened; `on_event` hears each step, skip, evaluation and save.
pub fn train(opts: &TrainOptions, on_event: &mut dyn FnMut(Event)) -> Result<TrainSummary> {
    check(opts)?;
    let pairs = data::load(&opts.data, &opts.columns, opts.caption_template.as_deref())?;
    let eval_pairs = opts
        .eval_data
        .as_ref()
        // The template is for class folders: a captioned eval file beside
        // a folder of classes keeps its own captions.
        .map(|p| {
            let template = opts.caption_template.as_deref().filter(|_| p.is_dir());
            data::load(p, &opts.columns, template)
        })
        .transpose()?;
    let source: &Path = opts.resume.as_deref().unwrap_or(&opts.model);
    let mut frozen = Vec::new();
    if opts.freeze_vision {
        frozen.push("vision_model");
    }
    if opts.freeze_text {
        frozen.push("text_model");
    }
    let (model, vars) = DualEncoder::load_trainable(source, &opts.device, &frozen)?;
    let encoder = Encoder::with_model(source, model)?;
    let config = AdamWConfig {
        weight_decay: opts.weight_decay,
        ..AdamWConfig::default()
    };
    let mut optimizer = AdamW::new(vars, config);

    let mut skip = |image: &PathBuf, reason: &str| {
        on_event(Event::Skipped {
            image: image.clone(),
            reason: reason.to_string(),
        })
    };
    // LiT: a frozen tower without dropout gives each image one pooled
    // output, so it is computed once. With dropout it stays in the step, as
    // in the Trainer (a frozen tower still runs in training mode).
    let lit = opts.freeze_vision && encoder.model().config().vision.max_dropout() == 0.0;
    let images = Images::prepare(&encoder, pairs, lit, &mut skip)?;
    let eval_set = match (&eval_pairs, &opts.eval_data) {
        (Some(p), Some(path)) => Some(EvalSet::prepare(&encoder, p, path, &mut skip)?),
        _ => None,
    };
    let n = images.pairs().len();
    if n == 0 {
        let first = images
            .skipped()
            .first()
            .map_or_else(String::new, |(_, why)| format!("; the first: {why}"));
        return Err(TrainError::Invalid(format!(
            "{}: no image of the data set could be decoded ({} skipped{first}); check the \
             --image-column paths (relative ones resolve against the data file's folder)",
            opts.data.display(),
            images.skipped().len()
        )));
    }
    let steps_per_epoch = n.div_ceil(opts.batch_size);
    let total = match opts.max_steps {
        Some(m) => m,
        None => opts.epochs.checked_mul(steps_per_epoch).ok_or_else(|| {
            TrainError::Invalid(format!("--epochs {}: too many steps", opts.epochs))
        })?,
    };
    let settings = Settings::of(opts);
    let mut state = match &opts.resume {
        Some(dir) => resume_state(dir, opts, &settings, total, &mut optimizer)?,
        None => TrainerState {
            global_step: 0,
            epoch: 0.0,
            max_steps: total,
            num_train_epochs: total.div_ceil(steps_per_epoch),
            train_batch_size: opts.batch_size,
            logging_steps: opts.logging_steps,
            save_steps: opts.save_steps.unwrap_or(0),
            eval_steps: opts.eval_steps.unwrap_or(0),
            log_history: Vec::new(),
            position: Position::default(),
            settings,
        },
    };

    let started = Instant::now();
    let start_step = state.global_step;
    let mut seen = 0usize;
    let mut window = Vec::new();
    let mut last_loss = None;
    let mut last_eval = None;
    let evaluate = |encoder: &Encoder| -> Result<Option<EvalReport>> {
        match &eval_set {
            Some(set) => Ok(Some(set.evaluate(encoder, &encoder.model().snapshot()?)?)),
            None => Ok(None),
        }
    };
    let mut order = (usize::MAX, Vec::new());
    while state.global_step < total {
        let Position { epoch, batch } = state.position;
        if batch >= steps_per_epoch {
            state.position = Position {
                epoch: epoch + 1,
                batch: 0,
            };
            continue;
        }
        if order.0 != epoch {
            order = (epoch, epoch_order(n, opts.seed, epoch, opts.shuffle));
        }
        let rows = &order.1[batch * opts.batch_size..((batch + 1) * opts.batch_size).min(n)];
        let b = images.batch(&encoder, rows)?;
        let captions: Vec<&str> = b.captions.iter().map(String::as_str).collect();
        let input = encoder.tokenize(&captions)?;
        let image_input = if b.pooled {
            ImageInput::Pooled(&b.images)
        } else {
            ImageInput::Pixels(&b.images)
        };
        // Dropout masks for this step, from the seed and the step alone.
        let dropout_seed = SplitMix64::keyed(opts.seed, 2, state.global_step as u64).next_u64();
        let loss = encoder
            .model()
            .contrastive_loss(&input, image_input, dropout_seed)?;
        let grads = loss.backward()?;
        let loss = loss.to_scalar::<f32>()?;
        let mut grads = optimizer.gradients(&grads)?;
        let grad_norm = clip_grad_norm(&mut grads, opts.max_grad_norm);
        let factor = schedule::linear_with_warmup(state.global_step, opts.warmup_steps, total);
        optimizer.step(&grads, opts.learning_rate * factor)?;
        state.global_step += 1;
        state.position.batch += 1;
        seen += rows.len();
        let step = state.global_step;
        state.epoch = epoch as f64 + state.position.batch as f64 / steps_per_epoch as f64;
        let next_lr =
            opts.learning_rate * schedule::linear_with_warmup(step, opts.warmup_steps, total);
        window.push(loss);
        last_loss = Some(loss);
        if step % opts.logging_steps == 0 || step == total {
            let mean = window.iter().sum::<f32>() / window.len() as f32;
            window.clear();
            state.log_history.push(json!({
                "loss": mean,
                "grad_norm": grad_norm,
                "learning_rate": next_lr,
                "epoch": state.epoch,
                "step": step,
            }));
        }
        on_event(Event::Step(StepReport {
            step,
            start_step,
            total,
            epoch: state.epoch,
            loss,
            grad_norm,
            learning_rate: next_lr,
            images: seen,
            elapsed_s: started.elapsed().as_secs_f64(),
        }));
        if opts.eval_steps.is_some_and(|e| step % e == 0)
            && step < total
            && let Some(report) = evaluate(&encoder)?
        {
            state.log_history.push(eval_log(&report, step, state.epoch));
            on_event(Event::Eval { step, report });
        }
        if opts.save_steps.is_some_and(|s| step % s == 0) && step < total {
            let dir = opts.out.join(format!("checkpoint-{step}"));
            state::save_checkpoint(encoder.model(), source, &optimizer, &state, &dir)?;
            on_event(Event::Saved(dir));
        }
    }
    let train_secs = started.elapsed().as_secs_f64();
    if let Some(report) = evaluate(&encoder)? {
        state
            .log_history
            .push(eval_log(&report, state.global_step, state.epoch));
        on_event(Event::Eval {
            step: state.global_step,
            report: report.clone(),
        });
        last_eval = Some(report);
    }
    state::save_checkpoint(encoder.model(), source, &optimizer, &state, &opts.out)?;
    on_event(Event::Saved(opts.out.clone()));
    let secs = train_secs;
    Ok(TrainSummary {
        steps: state.global_step,
        last_loss,
        skipped: images.skipped().to_vec(),
        eval: last_eval,
        images_per_second: if secs > 0.0 { seen as f64 / secs } else { 0.0 },
    })
}

fn eval_log(report: &EvalReport, step: usize, epoch: f64) -> serde_json::Value {
    json!({
        "eval_zero_shot_accuracy": report.zero_shot_accuracy,
        "eval_image_to_text_recall@1": report.image_to_text_recall_at_1,
        "eval_image_to_text_recall@5": report.image_to_text_recall_at_5,
        "eval_text_to_image_recall@1": report.text_to_image_recall_at_1,
        "eval_text_to_image_recall@5": report.text_to_image_recall_at_5,
        "epoch": epoch,
        "step": step,
    })
}

/// The state a resumed run continues from; the optimizer's moments are
/// loaded into `optimizer`. Every setting that shapes the run must be the
/// one it started with, or the resumed run would not equal an unbroken one.
fn resume_state(
    dir: &Path,
    opts: &TrainOptions,
    settings: &Settings,
    total: usize,
    optimizer: &mut AdamW,
) -> Result<TrainerState> {
    let mut state = TrainerState::read(dir)?;
    if let Some(what) = state.settings.differs(settings) {
        return Err(TrainError::Invalid(format!(
            "--resume {}: {what}; resume with the settings the run started with",
            dir.display()
        )));
    }
    if state.max_steps != total {
        return Err(TrainError::Invalid(format!(
            "--resume {}: the run had a schedule of {} steps, this one {total} \
             (same --epochs / --max-steps and data)",
            dir.display(),
            state.max_steps
        )));
    }
    optimizer.load(&dir.join(state::OPTIMIZER_FILE))?;
    state.logging_steps = opts.logging_steps;
    Ok(state)
}
