//! BEiT (`BeitModel`, transformers' names, not timm's): ViT-like pre-norm layers
//! with a bias-free key projection, layer scale (`lambda_1`, `lambda_2`), a
//! relative position bias added to the attention scores (per layer, or shared),
//! optional absolute positions, and the default mean pooling:
//! `pooler.layernorm(mean(h[:, 1:]))` (the final `layernorm` is then Identity).

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::vit::PatchEmbedding;
use serde::Deserialize;

use crate::model::config::Size2;
use crate::model::layers::{
    FeedForward, Norm, SelfAttention, drop_path, dropout, layer_norm, linear, param,
};

/// `BeitConfig` (the fields that shape `BeitModel`), with the class defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BeitConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub image_size: Size2,
    pub patch_size: Size2,
    pub num_channels: usize,
    pub use_mask_token: bool,
    pub use_absolute_position_embeddings: bool,
    pub use_relative_position_bias: bool,
    pub use_shared_relative_position_bias: bool,
    pub layer_scale_init_value: f64,
    pub use_mean_pooling: bool,
    pub hidden_dropout_prob: f32,
    pub attention_probs_dropout_prob: f32,
    pub drop_path_rate: f32,
}

impl Default for BeitConfig {
    /// `BeitConfig()`.
    fn default() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            image_size: Size2::One(224),
            patch_size: Size2::One(16),
            num_channels: 3,
            use_mask_token: false,
            use_absolute_position_embeddings: false,
            use_relative_position_bias: false,
            use_shared_relative_position_bias: false,
            layer_scale_init_value: 0.1,
            use_mean_pooling: true,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            drop_path_rate: 0.1,
        }
    }
}

/// transformers' `generate_relative_position_index`: for every (query, key)
/// pair of `[CLS] + patches`, the row of the bias table to use.
fn relative_position_index(window: (usize, usize)) -> Vec<u32> {
    let (wh, ww) = window;
    let area = wh * ww;
    let num_relative = (2 * wh - 1) * (2 * ww - 1) + 3;
    let n = area + 1;
    let mut index = vec![0u32; n * n];
    for i in 0..area {
        let (yi, xi) = ((i / ww) as i64, (i % ww) as i64);
        for j in 0..area {
            let (yj, xj) = ((j / ww) as i64, (j % ww) as i64);
            let dy = yi - yj + wh as i64 - 1;
            let dx = xi - xj + ww as i64 - 1;
            index[(i + 1) * n + (j + 1)] = (dy * (2 * ww as i64 - 1) + dx) as u32;
        }
    }
    for j in 0..n {
        index[j] = (num_relative - 3) as u32; // cls to token
        index[j * n] = (num_relative - 2) as u32; // token to cls
    }
    index[0] = (num_relative - 1) as u32; // cls to cls
    index
}

/// A relative position bias table and its expansion to `[1, heads, L, L]`.
/// The expansion is made once for inference; a trainable table is expanded
/// again at every forward, so the bias follows the table as it learns.
#[derive(Debug, Clone)]
struct RelativeBias {
    table: Tensor,
    index: Tensor,
    heads: usize,
    expanded: Tensor,
}

impl RelativeBias {
    fn new(
        c: &BeitConfig,
        window: (usize, usize),
        vb: VarBuilder,
        device: &Device,
    ) -> Result<Self> {
        let num_relative = (2 * window.0 - 1) * (2 * window.1 - 1) + 3;
        let heads = c.num_attention_heads;
        let table = vb.get_with_hints(
            (num_relative, heads),
            "relative_position_bias_table",
            Init::Const(0.),
        )?;
        let n = window.0 * window.1 + 1;
        let index = Tensor::from_vec(relative_position_index(window), n * n, device)?;
        let expanded = Self::expand(&table, &index, heads)?;
        Ok(Self {
            table,
            index,
            heads,
            expanded,
        })
    }

    fn expand(table: &Tensor, index: &Tensor, heads: usize) -> Result<Tensor> {
        let n = (index.dim(0)? as f64).sqrt() as usize;
        table
            .index_select(index, 0)?
            .reshape((n, n, heads))?
            .permute((2, 0, 1))?
            .contiguous()?
            .unsqueeze(0)
    }

    fn get(&self) -> Result<Tensor> {
        if self.table.track_op() {
            Self::expand(&self.table, &self.index, self.heads)
        } else {
            Ok(self.expanded.clone())
        }
    }
}

#[derive(Debug, Clone)]
struct BeitLayer {
    attention: SelfAttention,
    bias: Option<RelativeBias>,
    ffn: FeedForward,
    before: Norm,
    after: Norm,
    drop_path: f32,
    lambda_1: Option<Tensor>,
    lambda_2: Option<Tensor>,
}

impl BeitLayer {
    /// `drop_path`: this layer's stochastic depth rate.
    fn new(c: &BeitConfig, window: (usize, usize), drop_path: f32, vb: VarBuilder) -> Result<Self> {
        let (h, std) = (c.hidden_size, c.initializer_range);
        let att = vb.pp("attention").pp("attention");
        let attention = SelfAttention {
            q: linear(h, h, true, std, att.pp("query"))?,
            k: linear(h, h, false, std, att.pp("key"))?,
            v: linear(h, h, true, std, att.pp("value"))?,
            o: linear(h, h, true, std, vb.pp("attention").pp("output").pp("dense"))?
                .with_dropout(c.hidden_dropout_prob),
            heads: c.num_attention_heads,
            dropout: c.attention_probs_dropout_prob,
        };
        let bias = if c.use_relative_position_bias {
            Some(RelativeBias::new(
                c,
                window,
                att.pp("relative_position_bias"),
                vb.device(),
            )?)
        } else {
            None
        };
        let (lambda_1, lambda_2) = if c.layer_scale_init_value > 0.0 {
            let init = Init::Const(c.layer_scale_init_value);
            (
                Some(vb.get_with_hints(h, "lambda_1", init)?),
                Some(vb.get_with_hints(h, "lambda_2", init)?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            attention,
            bias,
            ffn: FeedForward::new(h, c.intermediate_size, &c.hidden_act, std, &vb)?
                .with_dropout(c.hidden_dropout_prob),
            drop_path,
            before: layer_norm(h, c.layer_norm_eps, vb.pp("layernorm_before"))?,
            after: layer_norm(h, c.layer_norm_eps, vb.pp("layernorm_after"))?,
            lambda_1,
            lambda_2,
        })
    }

    fn forward(&self, xs: &Tensor, shared_bias: Option<&Tensor>) -> Result<Tensor> {
        let bias = match (&self.bias, shared_bias) {
            (Some(own), Some(shared)) => Some(own.get()?.broadcast_add(shared)?),
            (Some(own), None) => Some(own.get()?),
            (None, shared) => shared.cloned(),
        };
        let mut att = self
            .attention
            .forward(&self.before.forward(xs)?, bias.as_ref())?;
        if let Some(l) = &self.lambda_1 {
            att = att.broadcast_mul(l)?;
        }
        let xs = (drop_path(&att, self.drop_path)? + xs)?;
        let mut mlp = self.ffn.forward(&self.after.forward(&xs)?)?;
        if let Some(l) = &self.lambda_2 {
            mlp = mlp.broadcast_mul(l)?;
        }
        drop_path(&mlp, self.drop_path)? + xs
    }
}

#[derive(Debug, Clone)]
pub struct Beit {
    patch: PatchEmbedding,
    cls_token: Tensor,
    positions: Option<Tensor>,
    shared_bias: Option<RelativeBias>,
    layers: Vec<BeitLayer>,
    dropout: f32,
    /// The final `layernorm` (only without mean pooling) or `pooler.layernorm` (with).
    norm: Norm,
    mean_pooling: bool,
}

impl Beit {
    pub fn new(c: &BeitConfig, vb: VarBuilder) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let std = c.initializer_range;
        let (image, patch_size) = (c.image_size.hw(), c.patch_size.hw());
        let patch = PatchEmbedding::new(
            c.hidden_size,
            c.num_channels,
            image,
            patch_size,
            true,
            std,
            emb.pp("patch_embeddings").pp("projection"),
        )?;
        let n = patch.num_patches();
        let window = (image.0 / patch_size.0, image.1 / patch_size.1);
        let cls_token = emb.get_with_hints((1, 1, c.hidden_size), "cls_token", Init::Const(0.))?;
        if c.use_mask_token {
            // Unused for embedding, but part of the checkpoint: keep it so a save round-trips.
            emb.get_with_hints((1, 1, c.hidden_size), "mask_token", Init::Const(0.))?;
        }
        let positions = if c.use_absolute_position_embeddings {
            Some(param(
                (1, n + 1, c.hidden_size),
                "position_embeddings",
                std,
                &emb,
            )?)
        } else {
            None
        };
        let shared_bias = if c.use_shared_relative_position_bias {
            Some(RelativeBias::new(
                c,
                window,
                vb.pp("encoder").pp("relative_position_bias"),
                vb.device(),
            )?)
        } else {
            None
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                // torch.linspace(0, drop_path_rate, num_hidden_layers)[i]
                let steps = c.num_hidden_layers.saturating_sub(1).max(1) as f32;
                let rate = c.drop_path_rate * i as f32 / steps;
                BeitLayer::new(c, window, rate, vb.pp("encoder").pp("layer").pp(i))
            })
            .collect::<Result<Vec<_>>>()?;
        let norm_vb = if c.use_mean_pooling {
            vb.pp("pooler").pp("layernorm")
        } else {
            vb.pp("layernorm")
        };
        Ok(Self {
            patch,
            cls_token,
            positions,
            shared_bias,
            layers,
            dropout: c.hidden_dropout_prob,
            norm: layer_norm(c.hidden_size, c.layer_norm_eps, norm_vb)?,
            mean_pooling: c.use_mean_pooling,
        })
    }

    pub fn pooled(&self, px: &Tensor) -> Result<Tensor> {
        let patches = self.patch.forward(px)?;
        let (b, n, h) = patches.dims3()?;
        let cls = self.cls_token.broadcast_as((b, 1, h))?;
        let mut xs = Tensor::cat(&[&cls, &patches], 1)?;
        if let Some(p) = &self.positions {
            xs = xs.broadcast_add(p)?;
        }
        let mut xs = dropout(&xs, self.dropout)?;
        let shared_bias = self
            .shared_bias
            .as_ref()
            .map(RelativeBias::get)
            .transpose()?;
        for layer in &self.layers {
            xs = layer.forward(&xs, shared_bias.as_ref())?;
        }
        if self.mean_pooling {
            let mean = xs.narrow(1, 1, n)?.mean(1)?;
            self.norm.forward(&mean)
        } else {
            let xs = self.norm.forward(&xs)?;
            xs.narrow(1, 0, 1)?.squeeze(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_index_matches_transformers_on_a_2x2_window() {
        // Computed with transformers' generate_relative_position_index((2, 2)).
        let expected = [
            [11, 9, 9, 9, 9],
            [10, 4, 3, 1, 0],
            [10, 5, 4, 2, 1],
            [10, 7, 6, 4, 3],
            [10, 8, 7, 5, 4],
        ];
        let got = relative_position_index((2, 2));
        let flat: Vec<u32> = expected.iter().flatten().copied().collect();
        assert_eq!(got, flat);
    }
}
