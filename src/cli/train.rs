//! `dualsight train`: the flags of transformers' `run_clip.py` and Trainer,
//! spelled the dualsight way, over [`crate::train::train`].

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::device::DeviceSpec;
use crate::model::hub;
use crate::train::progress::Progress;
use crate::train::{TrainOptions, data::Columns, train};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The checkpoint to train (from `compose`, `init`, or a trained one).
    #[arg(long)]
    pub model: String,
    /// Training pairs: a .jsonl or .csv file, or a folder of class folders.
    #[arg(long)]
    pub data: PathBuf,
    /// Where the trained model (and checkpoint-N folders) go.
    #[arg(long)]
    pub out: PathBuf,
    /// Held-out pairs for zero-shot accuracy and recall.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    #[arg(long, default_value = "image")]
    pub image_column: String,
    #[arg(long, default_value = "caption")]
    pub caption_column: String,
    /// Captions for class folders, `{}` standing for the folder name.
    #[arg(long)]
    pub caption_template: Option<String>,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides --epochs, as in the Trainer).
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 5e-5)]
    pub learning_rate: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Clip gradients to this global L2 norm (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Take batches in file order.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Freeze the vision tower (its projection still trains): LiT.
    #[arg(long)]
    pub freeze_vision_model: bool,
    /// Freeze the text tower (its projection still trains).
    #[arg(long)]
    pub freeze_text_model: bool,
    /// Save a resumable checkpoint-N folder every N steps.
    #[arg(long)]
    pub save_steps: Option<usize>,
    /// Continue from a checkpoint-N folder.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Evaluate on --eval-data every N steps (and always at the end).
    #[arg(long)]
    pub eval_steps: Option<usize>,
    /// Log the mean loss every N steps (into trainer_state.json, and as a line off a terminal).
    #[arg(long, default_value_t = 10)]
    pub logging_steps: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let model = hub::resolve(&args.model)?;
    let mut opts = TrainOptions::new(model, args.data.clone(), args.out.clone());
    opts.eval_data = args.eval_data.clone();
    opts.columns = Columns {
        image: args.image_column.clone(),
        caption: args.caption_column.clone(),
    };
    opts.caption_template = args.caption_template.clone();
    opts.epochs = args.epochs;
    opts.max_steps = args.max_steps;
    opts.batch_size = args.batch_size;
    opts.learning_rate = args.learning_rate;
    opts.weight_decay = args.weight_decay;
    opts.warmup_steps = args.warmup_steps;
    opts.max_grad_norm = args.max_grad_norm;
    opts.seed = args.seed;
    opts.shuffle = !args.no_shuffle;
    opts.freeze_vision = args.freeze_vision_model;
    opts.freeze_text = args.freeze_text_model;
    opts.save_steps = args.save_steps;
    opts.resume = args.resume.clone();
    opts.eval_steps = args.eval_steps;
    opts.logging_steps = args.logging_steps;
    opts.device = args.device.open()?;
    let stderr = std::io::stderr();
    let tty = stderr.is_terminal();
    let mut progress = Progress::new(stderr.lock(), tty, args.logging_steps);
    let summary = train(&opts, &mut |e| progress.event(&e));
    progress.finish();
    // The errors name their file (data, image, checkpoint) or flag already.
    let summary = summary?;
    eprintln!(
        "trained {} steps at {:.1} images/s; final loss {}; {} rows skipped; model in {}",
        summary.steps,
        summary.images_per_second,
        summary
            .last_loss
            .map_or_else(|| "-".to_string(), |l| format!("{l:.4}")),
        summary.skipped.len(),
        args.out.display()
    );
    Ok(())
}
