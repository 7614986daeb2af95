//! CLIP vision tower (`CLIPVisionModel`): bias-free patch embedding, a class
//! embedding, learned positions, `pre_layrnorm` (sic), pre-norm layers, and
//! `pooler_output = post_layernorm(h[:, 0])` (no dense, no tanh). Inside a
//! dual encoder its weights sit under `vision_model.` (transformers 5) or
//! `vision_model.vision_model.` (4.x; renamed on load). The encoder is shared
//! with the CLIP text tower.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::vit::PatchEmbedding;
use serde::Deserialize;

use crate::model::config::Size2;
use crate::model::layers::{Activation, Dense, Norm, SelfAttention, layer_norm, linear, param};

/// `CLIPVisionConfig`, with the class defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: Size2,
    pub patch_size: Size2,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub initializer_range: f64,
    pub attention_dropout: f32,
}

impl Default for ClipVisionConfig {
    /// `CLIPVisionConfig()`: ViT-B/32 at 224 pixels.
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: Size2::One(224),
            patch_size: Size2::One(32),
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            initializer_range: 0.02,
            attention_dropout: 0.0,
        }
    }
}

#[derive(Debug, Clone)]
struct ClipLayer {
    attention: SelfAttention,
    norm1: Norm,
    norm2: Norm,
    fc1: Dense,
    fc2: Dense,
    act: Activation,
}

/// CLIP's encoder (`encoder.layers.N.{self_attn,layer_norm1,mlp,layer_norm2}`).
impl ClipLayer {
    /// The layer's output for the first `keep` tokens (all `L` for the whole
    /// layer; see [`SelfAttention::forward_first`]): `[B, keep, H]`.
    fn forward_first(&self, xs: &Tensor, keep: usize, bias: Option<&Tensor>) -> Result<Tensor> {
        let xs = self.attention.pre_norm_first(&self.norm1, xs, keep, bias)?;
        let hidden = self.fc1.forward_act(&self.norm2.forward(&xs)?, self.act)?;
        self.fc2.forward_residual(&hidden, &xs)
    }
}

#[derive(Debug, Clone)]
pub struct ClipEncoder {
    layers: Vec<ClipLayer>,
}

/// The shape parameters CLIP's encoder needs, common to both CLIP configs.
pub struct ClipEncoderShape<'a> {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub eps: f64,
    pub act: &'a str,
    pub std: f64,
    /// `attention_dropout`, on the attention probabilities while training.
    pub attention_dropout: f32,
}

impl ClipEncoder {
    /// `vb` points at `encoder`.
    pub fn new(s: &ClipEncoderShape, vb: VarBuilder) -> Result<Self> {
        let (h, std) = (s.hidden, s.std);
        let layers = (0..s.layers)
            .map(|i| {
                let vb = vb.pp("layers").pp(i);
                let att = vb.pp("self_attn");
                Ok(ClipLayer {
                    attention: SelfAttention {
                        q: linear(h, h, true, std, att.pp("q_proj"))?,
                        k: linear(h, h, true, std, att.pp("k_proj"))?,
                        v: linear(h, h, true, std, att.pp("v_proj"))?,
                        o: linear(h, h, true, std, att.pp("out_proj"))?,
                        heads: s.heads,
                        dropout: s.attention_dropout,
                    },
                    norm1: layer_norm(h, s.eps, vb.pp("layer_norm1"))?,
                    norm2: layer_norm(h, s.eps, vb.pp("layer_norm2"))?,
                    fc1: linear(h, s.intermediate, true, std, vb.pp("mlp").pp("fc1"))?,
                    fc2: linear(s.intermediate, h, true, std, vb.pp("mlp").pp("fc2"))?,
                    act: Activation::from_hf(s.act).expect("validated by config"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// `bias`: additive attention bias broadcastable to `[B, heads, L, L]`.
    pub fn forward(&self, mut xs: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        for l in &self.layers {
            xs = l.forward_first(&xs, xs.dim(1)?, bias)?;
        }
        Ok(xs)
    }

    /// [`Self::forward`] for a caller that reads only the first `keep`
    /// tokens: the last layer computes the rest for those alone
    /// ([`SelfAttention::forward_first`]). `[B, L, H]` → `[B, keep, H]`.
    pub fn forward_first(
        &self,
        mut xs: Tensor,
        keep: usize,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let Some((last, rest)) = self.layers.split_last() else {
            return xs.narrow(1, 0, keep);
        };
        for l in rest {
            xs = l.forward_first(&xs, xs.dim(1)?, bias)?;
        }
        last.forward_first(&xs, keep, bias)
    }
}

#[derive(Debug, Clone)]
pub struct ClipVision {
    patch: PatchEmbedding,
    class_embedding: Tensor,
    positions: Tensor,
    pre_norm: Norm,
    encoder: ClipEncoder,
    post_norm: Norm,
}

impl ClipVision {
    pub fn new(c: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let std = c.initializer_range;
        let patch = PatchEmbedding::new(
            c.hidden_size,
            c.num_channels,
            c.image_size.hw(),
            c.patch_size.hw(),
            false,
            std,
            emb.pp("patch_embedding"),
        )?;
        let n = patch.num_patches();
        let shape = ClipEncoderShape {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps,
            act: &c.hidden_act,
            std,
            attention_dropout: c.attention_dropout,
        };
        Ok(Self {
            class_embedding: param(c.hidden_size, "class_embedding", std, &emb)?,
            positions: param(
                (n + 1, c.hidden_size),
                "weight",
                std,
                &emb.pp("position_embedding"),
            )?,
            patch,
            pre_norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            encoder: ClipEncoder::new(&shape, vb.pp("encoder"))?,
            post_norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("post_layernorm"))?,
        })
    }

    pub fn pooled(&self, px: &Tensor) -> Result<Tensor> {
        let patches = self.patch.forward(px)?;
        let (b, _, h) = patches.dims3()?;
        let cls = self
            .class_embedding
            .reshape((1, 1, h))?
            .broadcast_as((b, 1, h))?;
        let xs = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.positions.unsqueeze(0)?)?;
        // Only the class token is pooled.
        let xs = self
            .encoder
            .forward_first(self.pre_norm.forward(&xs)?, 1, None)?;
        self.post_norm.forward(&xs.squeeze(1)?)
    }
}
