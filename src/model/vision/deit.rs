//! DeiT (`DeiTModel`): ViT's encoder with a distillation token after CLS, so
//! the sequence is `[CLS, DIST, patches]` with `num_patches + 2` positions. The
//! pooler reads token 0 (CLS), exactly like ViT's, so DeiT is a ViT with one
//! more learned token.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::vit::Vit;
use crate::model::config::VitConfig;

pub fn new(c: &VitConfig, vb: VarBuilder) -> Result<Vit> {
    Vit::with_tokens(c, &["cls_token", "distillation_token"], vb)
}
