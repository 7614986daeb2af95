//! BERT (`BertModel`): word + position + token-type embeddings, post-norm
//! layers, and the pooler `tanh(dense(h[:, 0]))` = transformers'
//! `pooler_output`. RoBERTa and XLM-R have the same weights and differ only
//! in how position ids are derived (see `roberta.rs`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use crate::model::layers::{
    Dense, FeedForward, Norm, SelfAttention, dropout, layer_norm, linear, padding_bias, param,
};

/// `BertConfig`, with the class defaults; RoBERTa and XLM-R reuse it with
/// their own defaults filled in first.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<u32>,
    pub position_embedding_type: String,
    pub hidden_dropout_prob: f32,
    pub attention_probs_dropout_prob: f32,
}

impl Default for BertConfig {
    /// `BertConfig()`: BERT-base. `pad_token_id` is left unset, as the
    /// positions of RoBERTa-style towers depend on whether it was given.
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: None,
            position_embedding_type: "absolute".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
        }
    }
}

/// How position ids are made from input ids.
#[derive(Debug, Clone, Copy)]
pub enum Positions {
    /// `0..L` (BERT).
    Absolute,
    /// `cumsum(id != pad) * (id != pad) + pad` (RoBERTa, XLM-R).
    AfterPadding(u32),
}

#[derive(Debug, Clone)]
struct BertLayer {
    attention: SelfAttention,
    attention_norm: Norm,
    ffn: FeedForward,
    output_norm: Norm,
}

impl BertLayer {
    fn new(c: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let (h, std) = (c.hidden_size, c.initializer_range);
        let att = vb.pp("attention");
        Ok(Self {
            attention: SelfAttention {
                q: linear(h, h, true, std, att.pp("self").pp("query"))?,
                k: linear(h, h, true, std, att.pp("self").pp("key"))?,
                v: linear(h, h, true, std, att.pp("self").pp("value"))?,
                o: linear(h, h, true, std, att.pp("output").pp("dense"))?
                    .with_dropout(c.hidden_dropout_prob),
                heads: c.num_attention_heads,
                dropout: c.attention_probs_dropout_prob,
            },
            attention_norm: layer_norm(h, c.layer_norm_eps, att.pp("output").pp("LayerNorm"))?,
            ffn: FeedForward::new(h, c.intermediate_size, &c.hidden_act, std, &vb)?
                .with_dropout(c.hidden_dropout_prob),
            output_norm: layer_norm(h, c.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
        })
    }

    fn forward(&self, xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        self.forward_first(xs, xs.dim(1)?, bias)
    }

    /// The layer's output for the first `keep` tokens (all `L` for the whole
    /// layer; see [`SelfAttention::forward_first`]): `[B, keep, H]`.
    fn forward_first(&self, xs: &Tensor, keep: usize, bias: &Tensor) -> Result<Tensor> {
        let first = xs.narrow(1, 0, keep)?;
        let xs = self.attention_norm.forward(&self.attention.forward_first(
            xs,
            keep,
            Some(bias),
            &first,
        )?)?;
        self.output_norm
            .forward(&self.ffn.forward_residual(&xs, &xs)?)
    }
}

#[derive(Debug, Clone)]
pub struct Bert {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    norm: Norm,
    dropout: f32,
    layers: Vec<BertLayer>,
    pooler: Dense,
    position_rule: Positions,
    max_positions: usize,
}

impl Bert {
    pub fn new(c: &BertConfig, position_rule: Positions, vb: VarBuilder) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let (h, std) = (c.hidden_size, c.initializer_range);
        let table = |n: usize, name: &str| -> Result<Embedding> {
            Ok(Embedding::new(
                param((n, h), "weight", std, &emb.pp(name))?,
                h,
            ))
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| BertLayer::new(c, vb.pp("encoder").pp("layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            words: table(c.vocab_size, "word_embeddings")?,
            positions: table(c.max_position_embeddings, "position_embeddings")?,
            token_types: table(c.type_vocab_size, "token_type_embeddings")?,
            norm: layer_norm(h, c.layer_norm_eps, emb.pp("LayerNorm"))?,
            dropout: c.hidden_dropout_prob,
            layers,
            pooler: linear(h, h, true, std, vb.pp("pooler").pp("dense"))?,
            position_rule,
            max_positions: c.max_position_embeddings,
        })
    }

    fn position_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let rows: Vec<Vec<u32>> = match self.position_rule {
            Positions::Absolute => (0..b).map(|_| (0..l as u32).collect()).collect(),
            Positions::AfterPadding(pad) => ids
                .to_vec2::<u32>()?
                .into_iter()
                .map(|row| {
                    let mut count = 0u32;
                    row.into_iter()
                        .map(|id| {
                            if id == pad {
                                pad
                            } else {
                                count += 1;
                                count + pad
                            }
                        })
                        .collect()
                })
                .collect(),
        };
        let flat: Vec<u32> = rows.into_iter().flatten().collect();
        if let Some(&max) = flat.iter().max()
            && max as usize >= self.max_positions
        {
            candle_core::bail!(
                "input_ids: {l} tokens need position {max}, but the text tower has {} positions",
                self.max_positions
            );
        }
        Tensor::from_vec(flat, (b, l), ids.device())
    }

    /// `ids`, `mask`: `[B, L]` u32; `type_ids`: zeros when `None`. → `[B, hidden]`.
    pub fn pooled(&self, ids: &Tensor, mask: &Tensor, type_ids: Option<&Tensor>) -> Result<Tensor> {
        let dtype = self.words.embeddings().dtype();
        let positions = self.position_ids(ids)?;
        let zeros;
        let type_ids = match type_ids {
            Some(t) => t,
            None => {
                zeros = ids.zeros_like()?;
                &zeros
            }
        };
        let xs = (self.words.forward(ids)? + self.positions.forward(&positions)?)?;
        let xs = (xs + self.token_types.forward(type_ids)?)?;
        let mut xs = dropout(&self.norm.forward(&xs)?, self.dropout)?;
        let bias = padding_bias(mask, dtype)?;
        // Only token 0 reaches the pooler: the last layer computes keys and
        // values for every token and the rest for token 0 alone.
        if let Some((last, rest)) = self.layers.split_last() {
            for layer in rest {
                xs = layer.forward(&xs, &bias)?;
            }
            xs = last.forward_first(&xs, 1, &bias)?;
        }
        let cls = xs.narrow(1, 0, 1)?.squeeze(1)?;
        self.pooler.forward(&cls)?.tanh()
    }
}
