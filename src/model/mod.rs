//! The dual encoder: Hugging Face `VisionTextDualEncoderModel` (and `CLIPModel`)
//! in candle, weight-for-weight and output-for-output. `config` mirrors HF's
//! config.json, `vision/` and `text/` hold one file per tower, `dual` the
//! projections, logit scale and loss, `checkpoint` load / compose / init / save,
//! `hub` where `--model` points, `cpu` the CPU fast paths and `lanes` the
//! data-parallel split of a large CPU batch.

pub mod autograd;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod dual;
pub mod hub;
pub mod lanes;
pub mod layers;
pub mod text;
pub mod vision;
pub mod weights;

use std::path::PathBuf;

pub use config::{CheckpointKind, DualEncoderConfig, TextConfig, VisionConfig};
pub use dual::{DualEncoder, DualOutput, ImageInput, TokenInput, clip_loss, softmax};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {}{msg}", file.display(), if field.is_empty() { String::new() } else { format!("field `{field}`: ") })]
    Config {
        file: PathBuf,
        field: String,
        msg: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },
    #[error("model `{spec}` not found: {detail}")]
    ModelNotFound { spec: String, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
