//! ViT (`ViTModel`): patch embedding + CLS token + learned positions, a pre-norm
//! encoder, the final `layernorm`, and the pooler `tanh(dense(h[:, 0]))` whose
//! output is transformers' `pooler_output`. The encoder layer here is shared
//! with DeiT, which has the same weights plus a distillation token.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::model::autograd;
use crate::model::config::Size2;
use crate::model::layers::{
    Activation, Dense, FeedForward, Norm, SelfAttention, dropout, layer_norm, linear, param,
};

/// `ViTConfig` / `DeiTConfig` (identical fields and defaults). Missing
/// fields take the transformers class defaults, as transformers saves only
/// what differs from them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VitConfig {
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
    pub qkv_bias: bool,
    pub pooler_output_size: Option<usize>,
    pub pooler_act: String,
    pub hidden_dropout_prob: f32,
    pub attention_probs_dropout_prob: f32,
}

impl Default for VitConfig {
    /// `ViTConfig()`: ViT-B/16 at 224 pixels.
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
            qkv_bias: true,
            pooler_output_size: None,
            pooler_act: "tanh".into(),
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
        }
    }
}

/// Splits `[B, C, H, W]` into non-overlapping patches and projects them: the
/// same arithmetic as the `Conv2d(kernel = stride = patch)` in transformers,
/// done as one matmul (works for non-square patches too).
#[derive(Debug, Clone)]
pub struct PatchEmbedding {
    /// `[hidden, C * ph * pw]`, the conv kernel flattened in (C, ph, pw) order.
    weight: Tensor,
    bias: Option<Tensor>,
    patch: (usize, usize),
    image: (usize, usize),
    channels: usize,
}

impl PatchEmbedding {
    pub fn new(
        hidden: usize,
        channels: usize,
        image: (usize, usize),
        patch: (usize, usize),
        bias: bool,
        std: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let w = param((hidden, channels, patch.0, patch.1), "weight", std, &vb)?;
        let weight = w.reshape((hidden, channels * patch.0 * patch.1))?;
        let bias = if bias {
            Some(vb.get_with_hints(hidden, "bias", candle_nn::Init::Const(0.))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            patch,
            image,
            channels,
        })
    }

    pub fn num_patches(&self) -> usize {
        (self.image.0 / self.patch.0) * (self.image.1 / self.patch.1)
    }

    /// `[B, C, H, W]` → `[B, num_patches, hidden]`.
    pub fn forward(&self, px: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = px.dims4()?;
        if (c, h, w) != (self.channels, self.image.0, self.image.1) {
            candle_core::bail!(
                "pixel_values: expected [batch, {}, {}, {}], got [{b}, {c}, {h}, {w}]",
                self.channels,
                self.image.0,
                self.image.1
            );
        }
        let (ph, pw) = self.patch;
        let (gh, gw) = (h / ph, w / pw);
        // Crop any remainder, as a strided convolution does.
        let px = px.narrow(2, 0, gh * ph)?.narrow(3, 0, gw * pw)?;
        let patches = px
            .reshape((b, c, gh, ph, gw, pw))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, c * ph * pw))?;
        let mut out = patches.matmul(&self.weight.t()?)?;
        if let Some(bias) = &self.bias {
            out = autograd::bias_add(&out, bias)?;
        }
        out.reshape((b, gh * gw, ()))
    }
}

/// One pre-norm encoder layer with transformers' ViT/DeiT weight names.
#[derive(Debug, Clone)]
pub struct VitLayer {
    attention: SelfAttention,
    ffn: FeedForward,
    before: Norm,
    after: Norm,
}

impl VitLayer {
    /// `vb` points at `encoder.layer.N`.
    pub fn new(c: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let (h, std) = (c.hidden_size, c.initializer_range);
        let att = vb.pp("attention");
        let attention = SelfAttention {
            q: linear(h, h, c.qkv_bias, std, att.pp("attention").pp("query"))?,
            k: linear(h, h, c.qkv_bias, std, att.pp("attention").pp("key"))?,
            v: linear(h, h, c.qkv_bias, std, att.pp("attention").pp("value"))?,
            o: linear(h, h, true, std, att.pp("output").pp("dense"))?
                .with_dropout(c.hidden_dropout_prob),
            heads: c.num_attention_heads,
            dropout: c.attention_probs_dropout_prob,
        };
        Ok(Self {
            attention,
            ffn: FeedForward::new(h, c.intermediate_size, &c.hidden_act, std, &vb)?
                .with_dropout(c.hidden_dropout_prob),
            before: layer_norm(h, c.layer_norm_eps, vb.pp("layernorm_before"))?,
            after: layer_norm(h, c.layer_norm_eps, vb.pp("layernorm_after"))?,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_first(xs, xs.dim(1)?)
    }

    /// The layer's output for the first `keep` tokens (see
    /// [`SelfAttention::forward_first`]): `[B, L, H]` → `[B, keep, H]`.
    pub fn forward_first(&self, xs: &Tensor, keep: usize) -> Result<Tensor> {
        let xs = self
            .attention
            .pre_norm_first(&self.before, xs, keep, None)?;
        self.ffn.forward_residual(&self.after.forward(&xs)?, &xs)
    }
}

/// The parts ViT and DeiT share after the embeddings: layers, final norm, pooler.
#[derive(Debug, Clone)]
pub struct VitTrunk {
    layers: Vec<VitLayer>,
    layernorm: Norm,
    pooler: Dense,
    pooler_act: Activation,
}

impl VitTrunk {
    /// `vb` points at the tower root (`vision_model`).
    pub fn new(c: &VitConfig, vb: &VarBuilder) -> Result<Self> {
        let layers = (0..c.num_hidden_layers)
            .map(|i| VitLayer::new(c, vb.pp("encoder").pp("layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let out = c.pooler_output_size.unwrap_or(c.hidden_size);
        Ok(Self {
            layers,
            layernorm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("layernorm"))?,
            pooler: linear(
                c.hidden_size,
                out,
                true,
                c.initializer_range,
                vb.pp("pooler").pp("dense"),
            )?,
            pooler_act: Activation::from_hf(&c.pooler_act).expect("validated by config"),
        })
    }

    /// Embedded tokens `[B, L, H]` → `pooler_output` `[B, H]` (from token 0).
    pub fn pooled(&self, mut xs: Tensor) -> Result<Tensor> {
        // Only token 0 reaches the pooler, so the last layer computes keys
        // and values for every token and the rest for token 0 alone
        // (the final norm and the pooler work per token).
        if let Some((last, rest)) = self.layers.split_last() {
            for layer in rest {
                xs = layer.forward(&xs)?;
            }
            xs = last.forward_first(&xs, 1)?;
        }
        let xs = self.layernorm.forward(&xs.narrow(1, 0, 1)?)?;
        let cls = xs.squeeze(1)?;
        self.pooler_act.forward(&self.pooler.forward(&cls)?)
    }
}

/// `ViTModel` with its pooler; also DeiT's, whose embeddings add a
/// distillation token after CLS (see `deit.rs`).
#[derive(Debug, Clone)]
pub struct Vit {
    patch: PatchEmbedding,
    /// Prepended tokens in sequence order: `[cls_token]`, or `[cls_token, distillation_token]`.
    tokens: Vec<Tensor>,
    positions: Tensor,
    trunk: VitTrunk,
    dropout: f32,
}

impl Vit {
    pub fn new(c: &VitConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_tokens(c, &["cls_token"], vb)
    }

    /// A ViT whose sequence starts with the named learned tokens (under `embeddings.`).
    pub fn with_tokens(c: &VitConfig, names: &[&str], vb: VarBuilder) -> Result<Self> {
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
        let n = patch.num_patches() + names.len();
        let tokens = names
            .iter()
            .map(|name| param((1, 1, c.hidden_size), name, std, &emb))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tokens,
            positions: param((1, n, c.hidden_size), "position_embeddings", std, &emb)?,
            patch,
            trunk: VitTrunk::new(c, &vb)?,
            dropout: c.hidden_dropout_prob,
        })
    }

    pub fn pooled(&self, px: &Tensor) -> Result<Tensor> {
        let patches = self.patch.forward(px)?;
        let (b, _, h) = patches.dims3()?;
        let mut parts = self
            .tokens
            .iter()
            .map(|t| t.broadcast_as((b, 1, h)))
            .collect::<Result<Vec<_>>>()?;
        parts.push(patches);
        // The positions as a bias over each item's flattened tokens: one
        // pass to differentiate, not a strided sum over the batch.
        let xs = Tensor::cat(&parts, 1)?;
        let (n, h) = (xs.dim(1)?, xs.dim(2)?);
        let xs = autograd::bias_add(&xs.reshape((b, n * h))?, &self.positions.reshape(n * h)?)?
            .reshape((b, n, h))?;
        self.trunk.pooled(dropout(&xs, self.dropout)?)
    }
}
