//! What a run writes beside its weights: `trainer_state.json` (transformers'
//! fields: `global_step`, `epoch`, `log_history` with the loss per logging
//! step; plus where in the data the run stands, for `--resume`), and whole
//! checkpoints: the model in the Hugging Face layout, its tokenizer and
//! processor files, the optimizer's moments and the state.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::optim::AdamW;
use crate::model::DualEncoder;
use crate::model::checkpoint::{copy_image_processor, copy_tokenizer_files};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Optim(#[from] super::optim::OptimError),
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Where the next batch comes from: epoch `epoch`, batch `batch` of its order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: usize,
    pub batch: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub global_step: usize,
    /// Epochs done, fractional (transformers' `epoch`).
    pub epoch: f64,
    pub max_steps: usize,
    pub num_train_epochs: usize,
    pub train_batch_size: usize,
    pub logging_steps: usize,
    pub save_steps: usize,
    pub eval_steps: usize,
    pub log_history: Vec<Value>,
    /// The next batch, and what decided the order (a resume must match).
    pub position: Position,
    pub seed: u64,
    pub shuffle: bool,
}

impl TrainerState {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let err = |message: String| StateError::File {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| err(format!("not a dualsight trainer state: {e}")))
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self).expect("state serialises") + "\n";
        crate::durable::replace(&path, text.as_bytes()).map_err(|e| StateError::File {
            path,
            message: e.to_string(),
        })
    }
}

/// Writes the model as `from_pretrained` reads it into `out`, with the
/// tokenizer and processor files of `source` (the checkpoint training started from).
pub fn save_model(model: &DualEncoder, source: &Path, out: &Path) -> Result<()> {
    model.save(out)?;
    if source != out {
        copy_tokenizer_files(source, out)?;
        copy_image_processor(source, out)?;
        let processor = source.join("processor_config.json");
        if processor.is_file() {
            std::fs::copy(&processor, out.join("processor_config.json")).map_err(|e| {
                StateError::File {
                    path: processor.clone(),
                    message: e.to_string(),
                }
            })?;
        }
    }
    Ok(())
}

/// A whole checkpoint (`--save-steps`, and what `--resume` reads).
pub fn save_checkpoint(
    model: &DualEncoder,
    source: &Path,
    optimizer: &AdamW,
    state: &TrainerState,
    out: &Path,
) -> Result<()> {
    save_model(model, source, out)?;
    optimizer.save(&out.join(OPTIMIZER_FILE))?;
    state.write(out)
}
