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
    /// The next batch.
    pub position: Position,
    /// What decided the run (a resume must match).
    pub settings: Settings,
}

/// The settings a resumed run must share with the run it continues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub data: PathBuf,
    pub batch_size: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub max_grad_norm: f64,
    pub freeze_vision_model: bool,
    pub freeze_text_model: bool,
    /// The captions themselves: a resume with another template or columns
    /// would train on other texts. (A state written before these were kept
    /// reads as the defaults.)
    #[serde(default)]
    pub caption_template: Option<String>,
    #[serde(default = "default_caption_column")]
    pub caption_column: String,
    #[serde(default = "default_image_column")]
    pub image_column: String,
}

fn default_caption_column() -> String {
    super::data::Columns::default().caption
}

fn default_image_column() -> String {
    super::data::Columns::default().image
}

impl Settings {
    pub fn of(o: &super::TrainOptions) -> Self {
        Self {
            data: std::path::absolute(&o.data).unwrap_or_else(|_| o.data.clone()),
            batch_size: o.batch_size,
            seed: o.seed,
            shuffle: o.shuffle,
            learning_rate: o.learning_rate,
            weight_decay: o.weight_decay,
            warmup_steps: o.warmup_steps,
            max_grad_norm: o.max_grad_norm,
            freeze_vision_model: o.freeze_vision,
            freeze_text_model: o.freeze_text,
            caption_template: o.caption_template.clone(),
            caption_column: o.columns.caption.clone(),
            image_column: o.columns.image.clone(),
        }
    }

    /// The first setting `now` changes, said as `the run used X, this one Y`.
    pub fn differs(&self, now: &Settings) -> Option<String> {
        let was = serde_json::to_value(self).expect("settings serialise");
        let now = serde_json::to_value(now).expect("settings serialise");
        let (was, now) = (was.as_object()?, now.as_object()?);
        was.iter().find_map(|(k, v)| {
            (now.get(k) != Some(v)).then(|| {
                format!(
                    "the run used --{} {v}, this one {}",
                    k.replace('_', "-"),
                    now.get(k).unwrap_or(&Value::Null)
                )
            })
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The captions' template and columns are settings a resume must share,
    /// and a state written before they were kept reads them as the defaults.
    #[test]
    fn captions_are_part_of_what_a_resume_must_match() {
        let o = crate::train::TrainOptions::new("m".into(), "d.csv".into(), "o".into());
        let was = Settings::of(&o);
        for (change, flag) in [
            (
                &(|o: &mut crate::train::TrainOptions| o.caption_template = Some("a {}".into()))
                    as &dyn Fn(&mut _),
                "--caption-template",
            ),
            (
                &|o: &mut crate::train::TrainOptions| o.columns.caption = "text".into(),
                "--caption-column",
            ),
            (
                &|o: &mut crate::train::TrainOptions| o.columns.image = "file".into(),
                "--image-column",
            ),
        ] {
            let mut now = o.clone();
            change(&mut now);
            let said = was.differs(&Settings::of(&now)).expect(flag);
            assert!(said.contains(flag), "{said}");
        }
        let mut old = serde_json::to_value(&was).unwrap();
        for key in ["caption_template", "caption_column", "image_column"] {
            old.as_object_mut().unwrap().remove(key);
        }
        let old: Settings = serde_json::from_value(old).unwrap();
        assert_eq!(old.differs(&was), None);
    }
}
