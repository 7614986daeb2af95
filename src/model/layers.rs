//! Building blocks shared by the towers: activations named as in HF configs,
//! linear / layer-norm loaders that carry transformers' init rules (used when a
//! weight is freshly initialised by `compose` or `init`), and multi-head
//! self-attention with an additive bias (padding mask, causal mask or BEiT's
//! relative position bias).

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Init, LayerNorm, VarBuilder};

use super::cpu::PanelWeight;
use super::weights::{Held, Recorded};
use super::{autograd, cpu};
use crate::rng::SplitMix64;

thread_local! {
    /// Inside a training forward on this thread: the generator its dropout
    /// masks come from (`None`: inference, dropout off).
    static TRAINING: Cell<Option<SplitMix64>> = const { Cell::new(None) };
}

/// transformers' `model.train()` for the forwards this thread runs while the
/// guard lives: dropout applies, with masks drawn from a generator seeded by
/// `seed` (so a step is reproducible and a resumed run equals an unbroken
/// one), and every layer takes candle's recorded ops. Scoped to a thread so
/// that a daemon serving on other threads is never affected.
#[derive(Debug)]
pub struct TrainingMode {
    previous: Option<SplitMix64>,
}

impl TrainingMode {
    pub fn enter(seed: u64) -> Self {
        Self {
            previous: TRAINING.replace(Some(SplitMix64::new(seed))),
        }
    }
}

impl Drop for TrainingMode {
    fn drop(&mut self) {
        TRAINING.set(self.previous);
    }
}

/// True inside a [`TrainingMode`] on this thread.
pub fn training() -> bool {
    TRAINING.get().is_some()
}

thread_local! {
    /// While a model is built for the CPU in half precision on this thread:
    /// the type its dense weights are stored in.
    static HALF_WEIGHTS: Cell<Option<DType>> = const { Cell::new(None) };
}

/// `--dtype bf16|f16` on the CPU, for the models built on this thread while
/// the guard lives: every dense layer's weight is stored in `dtype` and
/// everything else stays f32 (activations, norms, embeddings), so the
/// CPU's f32 kernels run with weights widened as they are read and
/// accumulate in f32. candle's own half-precision CPU ops would round
/// every activation and run several times slower.
#[derive(Debug)]
pub struct HalfWeights {
    previous: Option<DType>,
}

impl HalfWeights {
    pub fn enter(dtype: DType) -> Self {
        Self {
            previous: HALF_WEIGHTS.replace(Some(dtype)),
        }
    }
}

impl Drop for HalfWeights {
    fn drop(&mut self) {
        HALF_WEIGHTS.set(self.previous);
    }
}

thread_local! {
    /// While a model's query side is built for inference on the CPU on this
    /// thread: where the model records what it holds.
    static PANELS: RefCell<Option<Recorded>> = const { RefCell::new(None) };
}

/// The dense layers built on this thread while the guard lives store their
/// weights in panels (`cpu::PanelWeight`), the layout a few-rows product
/// streams fastest, instead of `[n, k]` rows: what the text tower of a
/// model loaded for queries on the CPU does. `recorded` gets the panels
/// in place of the rows, so the model holds each weight once.
#[derive(Debug)]
pub struct PanelWeights {
    previous: Option<Recorded>,
}

impl PanelWeights {
    pub fn enter(recorded: Recorded) -> Self {
        Self {
            previous: PANELS.replace(Some(recorded)),
        }
    }
}

impl Drop for PanelWeights {
    fn drop(&mut self) {
        PANELS.set(self.previous.take());
    }
}

thread_local! {
    /// While a model's text tower is built with 8-bit weights on this thread
    /// (`--text-weights int8`).
    static INT8_TEXT: Cell<bool> = const { Cell::new(false) };
}

/// The panels built on this thread while the guard lives (see
/// [`PanelWeights`]) hold 8-bit weights with a scale per column
/// (`cpu::int8`) instead of the dtype's.
#[derive(Debug)]
pub struct Int8TextWeights {
    previous: bool,
}

impl Int8TextWeights {
    pub fn enter() -> Self {
        Self {
            previous: INT8_TEXT.replace(true),
        }
    }
}

impl Drop for Int8TextWeights {
    fn drop(&mut self) {
        INT8_TEXT.set(self.previous);
    }
}

/// A keep-mask of `n` values: `1 / (1 - p)` with probability `1 - p`, else
/// 0 (PyTorch's dropout scaling); `None` outside training mode.
fn keep_mask(n: usize, p: f32) -> Option<Vec<f32>> {
    let mut g = TRAINING.get()?;
    let scale = 1.0 / (1.0 - p);
    let mask = (0..n)
        .map(|_| if g.next_f32() < p { 0.0 } else { scale })
        .collect();
    TRAINING.set(Some(g));
    Some(mask)
}

/// `nn.Dropout(p)`: identity outside training mode.
pub fn dropout(xs: &Tensor, p: f32) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(xs.clone());
    }
    match keep_mask(xs.elem_count(), p) {
        Some(mask) => {
            let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
            xs.mul(&mask)
        }
        None => Ok(xs.clone()),
    }
}

/// True when a dense weight can take the CPU fast path: f32, bf16 or f16 on
/// the CPU, outside any gradient graph (see [`plain_f32`]).
fn plain_weight(t: &Tensor) -> bool {
    cpu::is_cpu_weight(t) && !t.track_op()
}

/// True when a tensor can take a CPU f32 fast path: on the CPU, f32, and
/// outside any gradient graph. The fast paths build their outputs with
/// `Tensor::from_vec`, which records no backward op, so a tensor that is a
/// trainable `Var` (or computed from one) must take candle's ops, or its
/// gradient would silently vanish.
pub fn plain_f32(t: &Tensor) -> bool {
    cpu::is_cpu_f32(t) && !t.track_op()
}

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

impl Activation {
    /// Applies the activation to every value in place (the CPU f32 path).
    /// One monomorphised loop per activation, so the compiler can vectorise
    /// the branch-free ones (GELU's erf is a rational polynomial, `cpu::erf`).
    fn apply_in_place(self, xs: &mut [f32]) {
        match self {
            Self::GeluErf => cpu::map_in_place(xs, |v| {
                (cpu::erf(v * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * v
            }),
            Self::GeluTanh => cpu::map_in_place(xs, |v| {
                let c = (2.0f32 / std::f32::consts::PI).sqrt();
                0.5 * v * (1.0 + (c * v * (1.0 + 0.044715 * v * v)).tanh())
            }),
            Self::QuickGelu => cpu::map_in_place(xs, |v| v / (1.0 + (-1.702 * v).exp())),
            Self::Relu => cpu::map_in_place(xs, |v| v.max(0.0)),
            Self::Silu => cpu::map_in_place(xs, |v| v / (1.0 + (-v).exp())),
            Self::Tanh => cpu::map_in_place(xs, f32::tanh),
        }
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

/// `nn.Linear`: `x wᵀ + b`, with a CPU f32 path that is one matrix product
/// accumulating onto the bias and residual (see `cpu/`), and candle's ops
/// everywhere else.
#[derive(Debug, Clone)]
pub struct Dense {
    /// `[n, k]` rows (a tensor, on any device), or panels for the
    /// few-rows product on the CPU ([`PanelWeights`]): the same value the
    /// model's record holds under the weight's name.
    weight: Held,
    bias: Option<Tensor>,
    /// Dropout on the output in training mode (`hidden_dropout_prob` on the
    /// layers that have it in transformers, 0 elsewhere).
    dropout: f32,
}

impl Dense {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: Held::Tensor(weight),
            bias,
            dropout: 0.0,
        }
    }

    fn with_panels(weight: Arc<PanelWeight>, bias: Option<Tensor>) -> Self {
        Self {
            weight: Held::Panels(weight),
            bias,
            dropout: 0.0,
        }
    }

    /// The same layer with dropout `p` on its output while training.
    pub fn with_dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self
    }

    /// candle's path: `dropout(x wᵀ + b)`, as one 2-D product (a batched
    /// product against a broadcast weight would differentiate into a
    /// strided sum over the batch) and [`autograd::bias_add`].
    fn forward_slow(&self, xs: &Tensor) -> Result<Tensor> {
        let mut shape = xs.dims().to_vec();
        let k = shape.pop().unwrap_or(1);
        shape.push(self.out_dim());
        // A half-precision weight beside f32 activations (`HalfWeights`)
        // meets them in their type here, off the fast path.
        let w = self.weight()?.to_dtype(xs.dtype())?;
        let mut out = xs.reshape(((), k))?.matmul(&w.t()?)?;
        if let Some(b) = &self.bias {
            out = autograd::bias_add(&out, b)?;
        }
        dropout(&out.reshape(shape)?, self.dropout)
    }

    /// The weight as `[n, k]` rows (a copy out of panels: off the fast
    /// path only).
    pub fn weight(&self) -> Result<Tensor> {
        self.weight.tensor()
    }

    fn out_dim(&self) -> usize {
        match &self.weight {
            Held::Tensor(w) => w.dims()[0],
            Held::Panels(p) => p.dims().0,
        }
    }

    /// True when this layer and `xs` can take the CPU f32 path.
    fn fast(&self, xs: &Tensor) -> bool {
        !training()
            && plain_f32(xs)
            && match &self.weight {
                Held::Tensor(w) => plain_weight(w),
                Held::Panels(_) => true,
            }
            && self.bias.as_ref().is_none_or(plain_f32)
    }

    /// This layer's bias as a plain row (fast path only).
    fn bias_row(&self) -> Option<Vec<f32>> {
        self.bias
            .as_ref()
            .and_then(|b| cpu::with_f32(b, |b| b.to_vec()))
    }

    /// `dst += x wᵀ` for `x: [m, in]`, `dst` rows `dst_rs` apart: the
    /// product alone, onto the bias (and residual) the caller placed in
    /// `dst` ([`cpu::start_rows`]). Fast path only.
    fn product(&self, x: &[f32], m: usize, dst: &mut [f32], dst_rs: usize) {
        match &self.weight {
            Held::Tensor(w) => {
                cpu::matmul_weight(x, m, w, dst, dst_rs, true).expect("checked by Dense::fast")
            }
            Held::Panels(p) => p.matmul(x, m, dst, dst_rs, true),
        }
    }

    /// The fast path: `act(x wᵀ + b) + residual` in one output buffer.
    fn forward_fast(
        &self,
        xs: &Tensor,
        act: Option<Activation>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let xs = xs.contiguous()?;
        let mut shape = xs.dims().to_vec();
        let k = shape.pop().unwrap_or(1);
        let m = xs.elem_count() / k.max(1);
        let n = self.out_dim();
        shape.push(n);
        // Residual and bias go into the output in one pass, and the product
        // accumulates onto them (a copy, then a bias pass, then the product
        // cost two extra passes over the widest activations).
        let bias = self.bias_row();
        let mut out = match residual {
            Some(r) => {
                let r = r.contiguous()?;
                if r.dims() != shape.as_slice() {
                    candle_core::bail!("residual {:?} does not match output {shape:?}", r.dims());
                }
                cpu::with_f32(&r, |r| cpu::start_rows(m, n, Some(r), bias.as_deref()))
                    .expect("f32 checked by caller")
            }
            None => cpu::start_rows(m, n, None, bias.as_deref()),
        };
        cpu::with_f32(&xs, |x| self.product(x, m, &mut out, n)).expect("checked by Dense::fast");
        if let Some(act) = act {
            act.apply_in_place(&mut out);
        }
        Tensor::from_vec(out, shape, xs.device())
    }

    /// `act(self(xs))`.
    pub fn forward_act(&self, xs: &Tensor, act: Activation) -> Result<Tensor> {
        if self.fast(xs) {
            return self.forward_fast(xs, Some(act), None);
        }
        act.forward(&self.forward_slow(xs)?)
    }

    /// `self(xs) + residual`.
    pub fn forward_residual(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if self.fast(xs) && plain_f32(residual) {
            return self.forward_fast(xs, None, Some(residual));
        }
        self.forward_slow(xs)? + residual
    }
}

impl Module for Dense {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.fast(xs) {
            return self.forward_fast(xs, None, None);
        }
        self.forward_slow(xs)
    }
}

/// `nn.Linear(in, out, bias)` under `vb`, initialised N(0, std) / zeros when fresh.
pub fn linear(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    std: f64,
    vb: VarBuilder,
) -> Result<Dense> {
    let init = Init::Randn {
        mean: 0.,
        stdev: std,
    };
    let w = match HALF_WEIGHTS.get() {
        Some(dtype) => vb.get_with_hints_dtype((out_dim, in_dim), "weight", init, dtype)?,
        None => vb.get_with_hints((out_dim, in_dim), "weight", init)?,
    };
    let b = if bias {
        Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.))?)
    } else {
        None
    };
    let laid = |w: &Tensor| match INT8_TEXT.get() {
        true => PanelWeight::from_tensor_int8(w),
        false => PanelWeight::from_tensor(w),
    };
    if let Some(recorded) = PANELS.with_borrow(Clone::clone)
        && !w.track_op()
        && let Some(panels) = laid(&w)
    {
        // The record takes the panels in place of the rows just read, so
        // the rows are freed once the build ends.
        let panels = Arc::new(panels);
        let name = match vb.prefix() {
            p if p.is_empty() => "weight".to_string(),
            p => format!("{p}.weight"),
        };
        recorded
            .lock()
            .expect("weights lock")
            .insert(name, Held::Panels(panels.clone()));
        return Ok(Dense::with_panels(panels, b));
    }
    Ok(Dense::new(w, b))
}

/// `nn.LayerNorm(size, eps)` under `vb` (weight 1, bias 0 when fresh).
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<Norm> {
    let w = vb.get_with_hints(size, "weight", Init::Const(1.))?;
    let b = vb.get_with_hints(size, "bias", Init::Const(0.))?;
    Ok(Norm(LayerNorm::new(w, b, eps)))
}

/// `nn.LayerNorm`: candle's fused kernel for inference, and the same
/// arithmetic in recorded ops when a gradient must flow (the fused op has
/// no backward pass, so through it the weights would silently not move).
#[derive(Debug, Clone)]
pub struct Norm(LayerNorm);

impl Module for Norm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (w, b) = (self.0.weight(), self.0.bias().expect("built with a bias"));
        if !(xs.track_op() || w.track_op() || b.track_op()) {
            return self.0.forward(xs);
        }
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?;
        autograd::layer_norm(&x, w, b, self.0.eps())?.to_dtype(dtype)
    }
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
    pub q: Dense,
    pub k: Dense,
    pub v: Dense,
    pub o: Dense,
    pub heads: usize,
    /// Dropout on the attention probabilities while training.
    pub dropout: f32,
}

impl SelfAttention {
    /// `xs`: `[B, L, H]`; `bias`: anything broadcastable to `[B, heads, L, L]`, added to the scores.
    pub fn forward(&self, xs: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        if let Some(ctx) = self.context_fast(xs, xs.dim(1)?, bias)? {
            return self.o.forward(&ctx);
        }
        self.o.forward(&self.context(xs, xs.dim(1)?, bias)?)
    }

    /// `self(xs, bias) + residual`.
    pub fn forward_residual(
        &self,
        xs: &Tensor,
        bias: Option<&Tensor>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        self.forward_first(xs, xs.dim(1)?, bias, residual)
    }

    /// `self(xs, bias) + residual` for the first `keep` tokens (all `L` for
    /// a whole layer): keys and values come from every token, queries and
    /// everything after them from the first `keep`. A tower whose pooler
    /// reads token 0 needs no more from its last layer, and skips ~5/6 of
    /// that layer's products. `bias` must broadcast to `[B, heads, keep, L]`
    /// (a padding mask does); `residual` is `[B, keep, H]`.
    pub fn forward_first(
        &self,
        xs: &Tensor,
        keep: usize,
        bias: Option<&Tensor>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        // candle's path (the device, other dtypes) pays a thread-count
        // lookup per matmul that costs more than a text query's last layer.
        if let Some(ctx) = self.context_fast(xs, keep, bias)? {
            return self.o.forward_residual(&ctx, residual);
        }
        self.o
            .forward_residual(&self.context(xs, keep, bias)?, residual)
    }

    /// A pre-norm block (ViT, CLIP): `xs + self(norm(xs), bias)` for the
    /// first `keep` tokens, `[B, L, H]` → `[B, keep, H]`.
    pub fn pre_norm_first(
        &self,
        norm: &Norm,
        xs: &Tensor,
        keep: usize,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_first(&norm.forward(xs)?, keep, bias, &xs.narrow(1, 0, keep)?)
    }

    /// The CPU f32 path: q, k and v written side by side into one `[B, L, 3H]`
    /// buffer, then one attention task per (item, head). `None` when any input
    /// is elsewhere (device, dtype), for candle's path to handle.
    /// Only the first `keep` tokens' queries are made and attend.
    fn context_fast(
        &self,
        xs: &Tensor,
        keep: usize,
        bias: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let fast =
            [&self.q, &self.k, &self.v].iter().all(|d| d.fast(xs)) && bias.is_none_or(plain_f32);
        if !fast {
            return Ok(None);
        }
        let xs = xs.contiguous()?;
        let (b, l, h) = xs.dims3()?;
        let m = b * l;
        // Each row starts as the three biases side by side (zeros where a
        // layer has none), and each product accumulates onto its third.
        let mut biases = Vec::with_capacity(3 * h);
        for d in [&self.q, &self.k, &self.v] {
            match d.bias_row() {
                Some(b) => biases.extend_from_slice(&b),
                None => biases.resize(biases.len() + h, 0.0),
            }
        }
        let mut qkv = cpu::start_rows(m, 3 * h, None, Some(&biases));
        cpu::with_f32(&xs, |x| {
            if keep == l || b == 1 {
                self.q.product(x, b * keep, &mut qkv, 3 * h);
            } else {
                // The attending rows of every item gathered, so their
                // product reads the weights once, not once per item.
                let rows = |i: usize| (0..keep).map(move |t| (i * l + t) * 3 * h);
                let xq: Vec<f32> = (0..b)
                    .flat_map(|i| &x[i * l * h..(i * l + keep) * h])
                    .copied()
                    .collect();
                let mut q: Vec<f32> = (0..b)
                    .flat_map(rows)
                    .flat_map(|r| &qkv[r..r + h])
                    .copied()
                    .collect();
                self.q.product(&xq, b * keep, &mut q, h);
                for (r, q) in (0..b).flat_map(rows).zip(q.chunks_exact(h)) {
                    qkv[r..r + h].copy_from_slice(q);
                }
            }
            self.k.product(x, m, &mut qkv[h..], 3 * h);
            self.v.product(x, m, &mut qkv[2 * h..], 3 * h);
        })
        .expect("checked above");
        let shape = cpu::AttentionShape {
            batch: b,
            len: l,
            queries: keep,
            hidden: h,
            heads: self.heads,
        };
        let scale = 1.0 / ((h / self.heads) as f32).sqrt();
        let ctx = cpu::attention(&qkv, shape, scale, bias)?;
        Ok(Some(Tensor::from_vec(ctx, (b, keep, h), xs.device())?))
    }

    /// candle's path: the context `[B, keep, H]` of the first `keep` tokens
    /// (all `L` for a whole layer) before the output projection.
    fn context(&self, xs: &Tensor, keep: usize, bias: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, h) = xs.dims3()?;
        let hd = h / self.heads;
        let split = |t: Tensor, n: usize| -> Result<Tensor> {
            t.reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(&xs.narrow(1, 0, keep)?)?, keep)?;
        let k = split(self.k.forward(xs)?, l)?;
        let v = split(self.v.forward(xs)?, l)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        // Softmax in f32 whatever the model dtype, as transformers does
        // (`dtype=torch.float32`); the fused kernel has no backward pass.
        let dtype = scores.dtype();
        let scores = scores.to_dtype(DType::F32)?;
        let probs = if scores.track_op() {
            autograd::softmax(&scores)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let probs = dropout(&probs.to_dtype(dtype)?, self.dropout)?;
        probs.matmul(&v)?.transpose(1, 2)?.reshape((b, keep, h))
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

/// Stochastic depth (timm's `drop_path`, BEiT's `drop_path_rate`): while
/// training, each item of the batch keeps `xs` with probability `1 - p`
/// (scaled by `1 / (1 - p)`) or drops the whole branch.
pub fn drop_path(xs: &Tensor, p: f32) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(xs.clone());
    }
    let b = xs.dim(0)?;
    match keep_mask(b, p) {
        Some(mask) => {
            let mut shape = vec![1; xs.rank()];
            shape[0] = b;
            let mask = Tensor::from_vec(mask, shape, xs.device())?.to_dtype(xs.dtype())?;
            xs.broadcast_mul(&mask)
        }
        None => Ok(xs.clone()),
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
    intermediate: Dense,
    output: Dense,
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

impl FeedForward {
    /// The same block with dropout `p` on its output while training
    /// (`hidden_dropout_prob`).
    pub fn with_dropout(mut self, p: f32) -> Self {
        self.output = self.output.with_dropout(p);
        self
    }

    /// `self(xs) + residual`.
    pub fn forward_residual(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.output
            .forward_residual(&self.intermediate.forward_act(xs, self.act)?, residual)
    }
}

impl Module for FeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.output
            .forward(&self.intermediate.forward_act(xs, self.act)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// A layer built under `PanelWeights` holds panels, records them in
    /// place of the rows (so the model holds the weight once), and gives
    /// the rows layer's outputs on the fast path, off it (training mode)
    /// and through every shape of input a tower passes.
    #[test]
    fn a_panel_layer_matches_the_rows_layer_and_is_held_once() -> Result<()> {
        let dev = Device::Cpu;
        let (n, k) = (70, 48);
        let w = Tensor::randn(0f32, 0.3, (n, k), &dev)?;
        let b = Tensor::randn(0f32, 0.3, n, &dev)?;
        let tensors = std::collections::HashMap::from([
            ("l.weight".to_string(), w.clone()),
            ("l.bias".to_string(), b.clone()),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let recorded = Recorded::default();
        let panels = {
            let _guard = PanelWeights::enter(recorded.clone());
            linear(k, n, true, 0.02, vb.pp("l"))?
        };
        let Held::Panels(held) = &panels.weight else {
            panic!("built under PanelWeights, the layer holds rows");
        };
        match recorded.lock().expect("weights lock").get("l.weight") {
            Some(Held::Panels(p)) => assert!(Arc::ptr_eq(p, held)),
            other => panic!("the record holds {other:?}, not the layer's panels"),
        }
        // Outside the guard, rows again.
        assert!(matches!(
            linear(k, n, true, 0.02, vb.pp("l"))?.weight,
            Held::Tensor(_)
        ));
        assert_eq!(panels.weight()?.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        let rows = Dense::new(w, Some(b));
        for m in [1, 10, 23, 60] {
            let xs = Tensor::randn(0f32, 1., (2, m, k), &dev)?;
            let residual = Tensor::randn(0f32, 1., (2, m, n), &dev)?;
            assert!(
                max_diff(&panels.forward(&xs)?, &rows.forward(&xs)?)? < 1e-4,
                "m {m}"
            );
            let (p, r) = (
                panels.forward_residual(&xs, &residual)?,
                rows.forward_residual(&xs, &residual)?,
            );
            assert!(max_diff(&p, &r)? < 1e-4, "m {m} with a residual");
            let (p, r) = (
                panels.forward_act(&xs, Activation::GeluErf)?,
                rows.forward_act(&xs, Activation::GeluErf)?,
            );
            assert!(max_diff(&p, &r)? < 1e-4, "m {m} with an activation");
            let _training = TrainingMode::enter(7);
            assert!(
                max_diff(&panels.forward(&xs)?, &rows.forward(&xs)?)? < 1e-4,
                "m {m}, slow path"
            );
        }
        Ok(())
    }

    fn dense(n: usize, k: usize, dev: &Device) -> Result<Dense> {
        Ok(Dense::new(
            Tensor::randn(0f32, 0.3, (n, k), dev)?,
            Some(Tensor::randn(0f32, 0.3, n, dev)?),
        ))
    }

    /// The last-layer shortcut must give exactly the whole layer's first rows,
    /// with and without a padding mask (what BERT passes).
    #[test]
    fn forward_first_is_the_whole_layers_first_rows() -> Result<()> {
        let dev = Device::Cpu;
        let (b, l, h) = (3, 9, 16);
        let att = SelfAttention {
            q: dense(h, h, &dev)?,
            k: dense(h, h, &dev)?,
            v: dense(h, h, &dev)?,
            o: dense(h, h, &dev)?,
            heads: 4,
            dropout: 0.0,
        };
        let xs = Tensor::randn(0f32, 1., (b, l, h), &dev)?;
        let residual = Tensor::randn(0f32, 1., (b, l, h), &dev)?;
        let mask = Tensor::from_vec(
            (0..b * l)
                .map(|i| u32::from(i % l < l - i / l))
                .collect::<Vec<_>>(),
            (b, l),
            &dev,
        )?;
        let padding = padding_bias(&mask, DType::F32)?;
        let max_diff = |a: Tensor, b: Tensor| -> Result<f32> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
        };
        for bias in [None, Some(&padding)] {
            // The fast path serves every `keep` here; candle's ops (the
            // device, other dtypes) must agree with it on all L rows too.
            let whole = att.forward_residual(&xs, bias, &residual)?;
            let candle = att
                .o
                .forward_residual(&att.context(&xs, l, bias)?, &residual)?;
            let diff = max_diff(candle, whole.clone())?;
            assert!(
                diff < 1e-5,
                "candle's path differs from the fast one by {diff}"
            );
            for keep in [1, 2, l] {
                let first = att.forward_first(&xs, keep, bias, &residual.narrow(1, 0, keep)?)?;
                assert_eq!(first.dims(), &[b, keep, h]);
                let diff = max_diff(first, whole.narrow(1, 0, keep)?)?;
                assert!(diff < 1e-5, "keep {keep}: differs by {diff}");
                let candle = att.o.forward_residual(
                    &att.context(&xs, keep, bias)?,
                    &residual.narrow(1, 0, keep)?,
                )?;
                let diff = max_diff(candle, whole.narrow(1, 0, keep)?)?;
                assert!(diff < 1e-5, "keep {keep}, candle's path: differs by {diff}");
            }
        }
        Ok(())
    }
}
