//! Vision towers. Each returns transformers' `pooler_output` for a batch of
//! preprocessed pixels `[B, C, H, W]`; the dual encoder projects it.

pub mod beit;
pub mod clip;
pub mod deit;
pub mod vit;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::VisionConfig;

#[derive(Debug, Clone)]
pub enum VisionTower {
    /// ViT, and DeiT (a ViT with a distillation token).
    Vit(vit::Vit),
    Beit(beit::Beit),
    Clip(clip::ClipVision),
}

impl VisionTower {
    /// `vb` points at the tower's root (`vision_model`).
    pub fn new(c: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match c {
            VisionConfig::Vit(c) => Self::Vit(vit::Vit::new(c, vb)?),
            VisionConfig::Deit(c) => Self::Vit(deit::new(c, vb)?),
            VisionConfig::Beit(c) => Self::Beit(beit::Beit::new(c, vb)?),
            VisionConfig::Clip(c) => Self::Clip(clip::ClipVision::new(c, vb)?),
        })
    }

    /// `[B, C, H, W]` → `pooler_output` `[B, hidden]`.
    pub fn pooled(&self, px: &Tensor) -> Result<Tensor> {
        match self {
            Self::Vit(m) => m.pooled(px),
            Self::Beit(m) => m.pooled(px),
            Self::Clip(m) => m.pooled(px),
        }
    }
}
