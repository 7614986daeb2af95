//! Text towers. Each returns transformers' `pooler_output` for a padded batch
//! of token ids; the dual encoder projects it.

pub mod bert;
pub mod clip;
pub mod roberta;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::TextConfig;

#[derive(Debug, Clone)]
pub enum TextTower {
    Bert(bert::Bert),
    Clip(clip::ClipText),
}

impl TextTower {
    /// `vb` points at the tower's root (`text_model`).
    pub fn new(c: &TextConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match c {
            TextConfig::Bert(c) => Self::Bert(bert::Bert::new(c, bert::Positions::Absolute, vb)?),
            TextConfig::Roberta(c) | TextConfig::XlmRoberta(c) => Self::Bert(roberta::new(c, vb)?),
            TextConfig::Clip(c) => Self::Clip(clip::ClipText::new(c, vb)?),
        })
    }

    /// `ids`, `mask`: `[B, L]` u32 → `pooler_output` `[B, hidden]`.
    pub fn pooled(&self, ids: &Tensor, mask: &Tensor, type_ids: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Self::Bert(m) => m.pooled(ids, mask, type_ids),
            Self::Clip(m) => m.pooled(ids, mask),
        }
    }
}
