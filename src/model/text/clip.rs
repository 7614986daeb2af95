//! CLIP text tower (`CLIPTextModel`): token + position embeddings, CLIP's
//! encoder under a causal mask (plus padding), `final_layer_norm`, pooled at
//! the end-of-text token: the first `eos_token_id` in each row, or, for
//! configs that still say `eos_token_id: 2` (before transformers PR #24773),
//! the position of the highest token id (`argmax(input_ids)`), as transformers
//! keeps doing for those checkpoints.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use crate::model::layers::{Norm, layer_norm, min_value, param};
use crate::model::vision::clip::{ClipEncoder, ClipEncoderShape};

/// `CLIPTextConfig`, with the class defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub initializer_range: f64,
    pub pad_token_id: Option<u32>,
    pub eos_token_id: u32,
    pub attention_dropout: f32,
}

impl Default for ClipTextConfig {
    /// `CLIPTextConfig()`.
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            initializer_range: 0.02,
            pad_token_id: Some(1),
            eos_token_id: 49407,
            attention_dropout: 0.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClipText {
    tokens: Embedding,
    positions: Tensor,
    encoder: ClipEncoder,
    final_norm: Norm,
    eos_token_id: u32,
}

impl ClipText {
    pub fn new(c: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let (h, std) = (c.hidden_size, c.initializer_range);
        let shape = ClipEncoderShape {
            hidden: h,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps,
            act: &c.hidden_act,
            std,
            attention_dropout: c.attention_dropout,
        };
        Ok(Self {
            tokens: Embedding::new(
                param((c.vocab_size, h), "weight", std, &emb.pp("token_embedding"))?,
                h,
            ),
            positions: param(
                (c.max_position_embeddings, h),
                "weight",
                std,
                &emb.pp("position_embedding"),
            )?,
            encoder: ClipEncoder::new(&shape, vb.pp("encoder"))?,
            final_norm: layer_norm(h, c.layer_norm_eps, vb.pp("final_layer_norm"))?,
            eos_token_id: c.eos_token_id,
        })
    }

    /// Where each row is pooled (see the module docs).
    fn pool_positions(&self, ids: &[Vec<u32>]) -> Vec<u32> {
        ids.iter()
            .map(|row| {
                let pos = if self.eos_token_id == 2 {
                    // torch.argmax returns the first of equal maxima.
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&t| t == max)
                } else {
                    row.iter().position(|&t| t == self.eos_token_id)
                };
                pos.unwrap_or(0) as u32
            })
            .collect()
    }

    pub fn pooled(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let max = self.positions.dim(0)?;
        if l > max {
            candle_core::bail!(
                "input_ids: {l} tokens, but the CLIP text tower has {max} positions"
            );
        }
        let dtype = self.positions.dtype();
        let xs = self
            .tokens
            .forward(ids)?
            .broadcast_add(&self.positions.narrow(0, 0, l)?)?;
        // Causal and padding masks combined on the host into one additive bias.
        let keep = mask.to_vec2::<u32>()?;
        let min = min_value(dtype) as f32;
        let mut bias = vec![0f32; b * l * l];
        for (r, row) in keep.iter().enumerate() {
            for i in 0..l {
                for j in 0..l {
                    if j > i || row[j] == 0 {
                        bias[(r * l + i) * l + j] = min;
                    }
                }
            }
        }
        let bias = Tensor::from_vec(bias, (b, 1, l, l), ids.device())?.to_dtype(dtype)?;
        let xs = self
            .final_norm
            .forward(&self.encoder.forward(xs, Some(&bias))?)?;
        let rows = ids.to_vec2::<u32>()?;
        let at = Tensor::from_vec(self.pool_positions(&rows), b, ids.device())?;
        // Gather one token per row: flatten to [B*L, H] and pick row*L + position.
        let offsets = Tensor::arange(0u32, b as u32, ids.device())?.affine(l as f64, 0.)?;
        let index = (at + offsets)?;
        xs.reshape((b * l, ()))?.index_select(&index, 0)
    }
}
