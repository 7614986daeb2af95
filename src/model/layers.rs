//! Building blocks shared by the towers: activations named as in HF configs,
//! linear / layer-norm loaders that carry transformers' init rules (used when a
//! weight is freshly initialised by `compose` or `init`), and multi-head
//! self-attention with an additive bias (padding mask, causal mask or BEiT's
//! relative position bias).

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Init, LayerNorm, Linear, VarBuilder};

/// The activations the supported towers use, spelled as `hidden_act` in HF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact erf form (PyTorch's default `nn.GELU`).
    GeluErf,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`, OpenAI CLIP's.
    QuickGelu,
    Relu,
    Silu,
    Tanh,
}

impl Activation {
    /// Parses an HF `hidden_act` / `pooler_act` value; `None` if unsupported.
    pub fn from_hf(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => Self::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "quick_gelu" => Self::QuickGelu,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            "tanh" => Self::Tanh,
            _ => return None,
        })
    }
}

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::GeluErf => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Self::Relu => xs.relu(),
            Self::Silu => xs.silu(),
            Self::Tanh => xs.tanh(),
        }
    }
}

/// `nn.Linear(in, out, bias)` under `vb`, initialised N(0, std) / zeros when fresh.
pub fn linear(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    std: f64,
    vb: VarBuilder,
) -> Result<Linear> {
    let w = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        Init::Randn {
            mean: 0.,
            stdev: std,
        },
    )?;
    let b = if bias {
        Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.))?)
    } else {
        None
    };
    Ok(Linear::new(w, b))
}

/// `nn.LayerNorm(size, eps)` under `vb` (weight 1, bias 0 when fresh).
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    let w = vb.get_with_hints(size, "weight", Init::Const(1.))?;
    let b = vb.get_with_hints(size, "bias", Init::Const(0.))?;
    Ok(LayerNorm::new(w, b, eps))
}

/// A parameter tensor of any shape, N(0, std) when fresh.
pub fn param<S: Into<candle_core::Shape>>(
    shape: S,
    name: &str,
    std: f64,
    vb: &VarBuilder,
) -> Result<Tensor> {
    vb.get_with_hints(
        shape,
        name,
        Init::Randn {
            mean: 0.,
            stdev: std,
        },
    )
}

/// Multi-head self-attention: `softmax(q kᵀ / sqrt(d) + bias) v`, then the output projection.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub heads: usize,
}

impl SelfAttention {
    /// `xs`: `[B, L, H]`; `bias`: anything broadcastable to `[B, heads, L, L]`, added to the scores.
    pub fn forward(&self, xs: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, h) = xs.dims3()?;
        let hd = h / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(xs)?)?;
        let k = split(self.k.forward(xs)?)?;
        let v = split(self.v.forward(xs)?)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        // Softmax in f32 whatever the model dtype, as transformers does (`dtype=torch.float32`).
        let dtype = scores.dtype();
        let probs =
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h))?;
        self.o.forward(&ctx)
    }
}

/// Additive padding mask `[B, 1, 1, L]` from a 0/1 attention mask `[B, L]`: 0 where
/// attended, the dtype's most negative finite value where masked (transformers'
/// `finfo.min`; finite so a fully masked row never turns into NaN).
pub fn padding_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, l) = mask.dims2()?;
    let keep = mask.to_dtype(DType::F32)?;
    let min = min_value(dtype);
    let bias = ((keep.ones_like()? - keep)? * min)?;
    bias.reshape((b, 1, 1, l))?.to_dtype(dtype)
}

/// Most negative finite value of a float dtype.
pub fn min_value(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.3895313892515355e38,
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// L2 normalisation over the last dimension (transformers: `x / x.norm(dim=-1, keepdim=True)`).
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    xs.broadcast_div(&norm)
}

/// The transformer feed-forward block with HF's BERT-family names
/// (`intermediate.dense` → activation → `output.dense`), shared by ViT, DeiT,
/// BEiT and BERT-style layers; `vb` points at the layer.
#[derive(Debug, Clone)]
pub struct FeedForward {
    intermediate: Linear,
    output: Linear,
    act: Activation,
}

impl FeedForward {
    pub fn new(hidden: usize, inner: usize, act: &str, std: f64, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            intermediate: linear(hidden, inner, true, std, vb.pp("intermediate").pp("dense"))?,
            output: linear(inner, hidden, true, std, vb.pp("output").pp("dense"))?,
            act: Activation::from_hf(act).expect("validated by config"),
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.output
            .forward(&self.act.forward(&self.intermediate.forward(xs)?)?)
    }
}
