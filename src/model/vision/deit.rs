//! DeiT (`DeiTModel`): ViT's encoder with a distillation token after CLS, so
//! the sequence is `[CLS, DIST, patches]` with `num_patches + 2` positions. The
//! pooler reads token 0 (CLS), exactly like ViT's.

use candle_core::{D, Result, Tensor};
use candle_nn::VarBuilder;

use super::vit::{PatchEmbedding, VitTrunk};
use crate::model::config::VitConfig;
use crate::model::layers::param;

#[derive(Debug, Clone)]
pub struct Deit {
    patch: PatchEmbedding,
    cls_token: Tensor,
    distillation_token: Tensor,
    positions: Tensor,
    trunk: VitTrunk,
}

impl Deit {
    pub fn new(c: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let std = c.initializer_range;
        let patch = PatchEmbedding::new(
            c.hidden_size,
            c.num_channels,
            c.image_size.hw(),
            c.patch_size.hw(),
            true,
            std,
            emb.pp("patch_embeddings").pp("projection"),
        )?;
        let n = patch.num_patches();
        Ok(Self {
            cls_token: param((1, 1, c.hidden_size), "cls_token", std, &emb)?,
            distillation_token: param((1, 1, c.hidden_size), "distillation_token", std, &emb)?,
            positions: param((1, n + 2, c.hidden_size), "position_embeddings", std, &emb)?,
            patch,
            trunk: VitTrunk::new(c, &vb)?,
        })
    }

    pub fn pooled(&self, px: &Tensor) -> Result<Tensor> {
        let patches = self.patch.forward(px)?;
        let b = patches.dim(0)?;
        let h = self.cls_token.dim(D::Minus1)?;
        let cls = self.cls_token.broadcast_as((b, 1, h))?;
        let dist = self.distillation_token.broadcast_as((b, 1, h))?;
        let xs = Tensor::cat(&[&cls, &dist, &patches], 1)?.broadcast_add(&self.positions)?;
        self.trunk.pooled(xs)
    }
}
