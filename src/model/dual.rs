//! The dual encoder itself: two towers, two bias-free projections into the
//! shared space, L2 normalisation, and `logit_scale` (stored as a log, used as
//! `exp`). Mirrors `VisionTextDualEncoderModel`'s forward, feature getters and
//! contrastive loss; batches in, tensors out, on the caller's device.

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Init, VarBuilder};

use super::config::DualEncoderConfig;
use super::lanes;
use super::layers::{Dense, HalfWeights, PanelWeights, TrainingMode, l2_normalize, linear};
use super::text::TextTower;
use super::vision::VisionTower;
use super::weights::{Held, Recorded, WeightSource};
use super::{ModelError, Result};

/// A padded batch of token ids for the text tower, already on the model's device.
#[derive(Debug, Clone)]
pub struct TokenInput {
    pub ids: Tensor,
    pub mask: Tensor,
    pub type_ids: Option<Tensor>,
}

impl TokenInput {
    /// Row-major `[batch, len]` ids / mask (/ token types).
    pub fn new(
        ids: &[u32],
        mask: &[u32],
        type_ids: Option<&[u32]>,
        batch: usize,
        len: usize,
        device: &Device,
    ) -> Result<Self> {
        let t = |v: &[u32]| Tensor::from_slice(v, (batch, len), device);
        Ok(Self {
            ids: t(ids)?,
            mask: t(mask)?,
            type_ids: type_ids.map(t).transpose()?,
        })
    }
}

/// What `forward` returns (transformers' `CLIPOutput`, embeddings normalised).
#[derive(Debug, Clone)]
pub struct DualOutput {
    pub text_embeds: Tensor,
    pub image_embeds: Tensor,
    pub logits_per_text: Tensor,
    pub logits_per_image: Tensor,
    pub loss: Option<Tensor>,
}

/// Images per vision forward pass on the CPU (within a lane, see `lanes`):
/// small forwards keep each image's activations in cache, and forwards of 4
/// beat forwards of 8 on ViT-B/16 (BENCHMARKS.md history, the night run of
/// 2026-11-27).
pub const CPU_VISION_CHUNK: usize = 4;

pub struct DualEncoder {
    config: DualEncoderConfig,
    vision: VisionTower,
    text: TextTower,
    visual_projection: Dense,
    text_projection: Dense,
    /// `logit_scale` as stored (a log); `exp` of it multiplies cosine similarities.
    logit_scale: f32,
    /// The same as a tensor: a gradient leaf in a model built for training.
    logit_scale_param: Tensor,
    /// Every tensor the model holds, under its checkpoint name: what `save` writes.
    weights: Recorded,
    device: Device,
    dtype: DType,
    /// What the towers compute in: `dtype`, or f32 with half weights.
    activations: DType,
}

impl std::fmt::Debug for DualEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DualEncoder")
            .field("vision", &self.config.vision.model_type())
            .field("text", &self.config.text.model_type())
            .field("projection_dim", &self.config.projection_dim)
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl DualEncoder {
    /// Builds the model from `source`, asking for every weight by its checkpoint name.
    pub fn build(
        config: DualEncoderConfig,
        source: WeightSource,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        // On the CPU a half type applies to the dense weights only; the
        // activations stay f32 (`HalfWeights`), except that on CPUs with
        // AVX-512 BF16 bf16 dense layers round their input too, to multiply
        // bf16 pairs (`model::cpu::packed` for a batch, `panels` for the
        // text tower).
        Self::build_as(config, source, device, dtype, !device.is_cpu())
    }

    /// [`Self::build`], with every tensor in `dtype` when `uniform` (what
    /// CUDA runs), else the dense weights only.
    pub(super) fn build_as(
        config: DualEncoderConfig,
        source: WeightSource,
        device: &Device,
        dtype: DType,
        uniform: bool,
    ) -> Result<Self> {
        let weights = source.recorded();
        let _half = (!uniform && dtype != DType::F32).then(|| HalfWeights::enter(dtype));
        let activations = if uniform { dtype } else { DType::F32 };
        let vb = VarBuilder::from_backend(Box::new(source), activations, device.clone());
        let vision = VisionTower::new(&config.vision, vb.pp("vision_model"))?;
        let p = config.projection_dim;
        let visual_projection = linear(
            config.vision.hidden_size(),
            p,
            false,
            config.vision.initializer_range(),
            vb.pp("visual_projection"),
        )?;
        // The text tower serves queries of a few tokens: on the CPU its
        // dense weights (and its projection's) are laid out for that
        // product (`PanelWeights`). The image side's batches keep rows for
        // the packed kernel.
        let panels = (!uniform && device.is_cpu()).then(|| PanelWeights::enter(weights.clone()));
        let text = TextTower::new(&config.text, vb.pp("text_model"))?;
        let text_projection = linear(
            config.text.hidden_size(),
            p,
            false,
            config.text.initializer_range(),
            vb.pp("text_projection"),
        )?;
        drop(panels);
        let scale = vb.get_with_hints_dtype(
            (),
            "logit_scale",
            Init::Const(config.logit_scale_init_value),
            DType::F32,
        )?;
        let logit_scale = scale.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !logit_scale.is_finite() {
            return Err(ModelError::Invalid(format!(
                "logit_scale is {logit_scale}, expected a finite number"
            )));
        }
        Ok(Self {
            config,
            vision,
            text,
            visual_projection,
            text_projection,
            logit_scale,
            logit_scale_param: scale,
            weights,
            device: device.clone(),
            dtype,
            activations,
        })
    }

    pub fn config(&self) -> &DualEncoderConfig {
        &self.config
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The type asked for: of every tensor on CUDA, of the dense weights
    /// on the CPU.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn projection_dim(&self) -> usize {
        self.config.projection_dim
    }
    /// The stored (log) logit scale (for a model in training, its current value).
    pub fn logit_scale(&self) -> f32 {
        if self.logit_scale_param.track_op() {
            return self
                .logit_scale_param
                .to_dtype(DType::F32)
                .and_then(|t| t.to_scalar::<f32>())
                .unwrap_or(self.logit_scale);
        }
        self.logit_scale
    }
    /// `exp(logit_scale)`: what cosine similarities are multiplied by.
    pub fn logit_scale_exp(&self) -> f32 {
        self.logit_scale().exp()
    }
    /// `(channels, height, width)` the vision tower takes.
    pub fn image_shape(&self) -> (usize, usize, usize) {
        let (h, w) = self.config.vision.image_size();
        (self.config.vision.num_channels(), h, w)
    }
    /// Longest token sequence the text tower accepts.
    pub fn max_tokens(&self) -> usize {
        self.config.text.max_tokens()
    }
    /// True when the text tower holds 8-bit weights (`--text-weights int8`
    /// took effect on this CPU).
    pub fn text_quantized(&self) -> bool {
        quantized(&self.weights.lock().expect("weights lock")).is_some()
    }

    /// Every tensor the model holds, as the checkpoint lays it out.
    pub(crate) fn weights(&self) -> Result<BTreeMap<String, Tensor>> {
        let held = self.weights.lock().expect("weights lock").clone();
        // 8-bit weights are not the checkpoint's: a model written from them
        // would silently be another model.
        if let Some(name) = quantized(&held) {
            return Err(ModelError::Invalid(format!(
                "{name}: this model holds its text weights as 8 bits (text_weights = int8), not the checkpoint's; load it with text_weights = \"dtype\" to write it"
            )));
        }
        held.into_iter()
            .map(|(name, h)| Ok((name, h.tensor()?)))
            .collect()
    }

    /// The vision tower's `pooler_output` for `[B, C, H, W]` pixels (f32 out).
    pub fn vision_pooled(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let px = pixel_values
            .to_device(&self.device)?
            .to_dtype(self.activations)?;
        Ok(self.vision_forward(&px)?.to_dtype(DType::F32)?)
    }

    /// The vision tower over a batch. A GPU takes the batch whole. On the
    /// CPU, a batch large enough is split into [`lanes`] that run side by
    /// side on their own threads, and each lane runs its images in slices of
    /// [`CPU_VISION_CHUNK`]: every image is independent, and past a few
    /// images the activations (a 32-image batch holds 77 MB in one ViT-B/16
    /// MLP activation) only fall out of cache.
    fn vision_forward(&self, px: &Tensor) -> candle_core::Result<Tensor> {
        let b = px.dim(0)?;
        if !self.device.is_cpu() || b == 0 {
            return self.vision.pooled(px);
        }
        let parts = lanes::run(b, |r| {
            r.clone()
                .step_by(CPU_VISION_CHUNK)
                .map(|i| {
                    let n = CPU_VISION_CHUNK.min(r.end - i);
                    self.vision.pooled(&px.narrow(0, i, n)?)
                })
                .collect::<candle_core::Result<Vec<_>>>()
        });
        let parts = parts
            .into_iter()
            .collect::<candle_core::Result<Vec<_>>>()?
            .concat();
        // One part comes back as it is (candle's `cat` of one tensor).
        Tensor::cat(&parts, 0)
    }

    /// The text tower's `pooler_output` (f32 out).
    pub fn text_pooled(&self, input: &TokenInput) -> Result<Tensor> {
        Ok(self
            .text
            .pooled(&input.ids, &input.mask, input.type_ids.as_ref())?
            .to_dtype(DType::F32)?)
    }

    /// `get_image_features`: projected, not normalised, `[B, projection_dim]`.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let px = pixel_values
            .to_device(&self.device)?
            .to_dtype(self.activations)?;
        let pooled = self.vision_forward(&px)?;
        Ok(self
            .visual_projection
            .forward(&pooled)?
            .to_dtype(DType::F32)?)
    }

    /// `get_text_features`: projected, not normalised, `[B, projection_dim]`.
    pub fn text_features(&self, input: &TokenInput) -> Result<Tensor> {
        let pooled = self
            .text
            .pooled(&input.ids, &input.mask, input.type_ids.as_ref())?;
        Ok(self
            .text_projection
            .forward(&pooled)?
            .to_dtype(DType::F32)?)
    }

    /// L2-normalised image embeddings `[B, projection_dim]` (f32).
    pub fn embed_images(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(l2_normalize(&self.image_features(pixel_values)?)?)
    }

    /// L2-normalised text embeddings `[B, projection_dim]` (f32).
    pub fn embed_texts(&self, input: &TokenInput) -> Result<Tensor> {
        Ok(l2_normalize(&self.text_features(input)?)?)
    }

    /// `logits_per_text = text @ imageᵀ · exp(logit_scale)` for normalised embeddings.
    pub fn logits(&self, text_embeds: &Tensor, image_embeds: &Tensor) -> Result<Tensor> {
        Ok((text_embeds.matmul(&image_embeds.t()?)? * self.logit_scale_exp() as f64)?)
    }

    /// The model's forward: embeddings, both logit matrices and, on request, the loss.
    pub fn forward(
        &self,
        input: &TokenInput,
        pixel_values: &Tensor,
        return_loss: bool,
    ) -> Result<DualOutput> {
        let text_embeds = self.embed_texts(input)?;
        let image_embeds = self.embed_images(pixel_values)?;
        let logits_per_text = self.logits(&text_embeds, &image_embeds)?;
        let logits_per_image = logits_per_text.t()?.contiguous()?;
        let loss = if return_loss {
            Some(clip_loss(&logits_per_text)?)
        } else {
            None
        };
        Ok(DualOutput {
            text_embeds,
            image_embeds,
            logits_per_text,
            logits_per_image,
            loss,
        })
    }
}

/// What the vision side of a training step starts from.
#[derive(Debug, Clone, Copy)]
pub enum ImageInput<'a> {
    /// `[B, C, H, W]` pixels, through the vision tower.
    Pixels(&'a Tensor),
    /// `[B, hidden]` pooled outputs of a frozen vision tower, computed once
    /// (LiT): only the projection sees them.
    Pooled(&'a Tensor),
}

impl DualEncoder {
    /// The training forward: `VisionTextDualEncoderModel(..., return_loss=True).loss`
    /// through recorded ops only, so that `loss.backward()` reaches every
    /// trainable `Var`, `logit_scale` included. Runs in [`TrainingMode`]
    /// (dropout as the config says, masks drawn from `dropout_seed`) on the
    /// calling thread.
    pub fn contrastive_loss(
        &self,
        input: &TokenInput,
        images: ImageInput<'_>,
        dropout_seed: u64,
    ) -> Result<Tensor> {
        let _mode = TrainingMode::enter(dropout_seed);
        let text = self
            .text
            .pooled(&input.ids, &input.mask, input.type_ids.as_ref())?;
        let text = l2_normalize(&self.text_projection.forward(&text)?.to_dtype(DType::F32)?)?;
        let pooled = match images {
            ImageInput::Pixels(px) => self
                .vision
                .pooled(&px.to_device(&self.device)?.to_dtype(self.activations)?)?,
            ImageInput::Pooled(p) => p.to_device(&self.device)?.to_dtype(self.activations)?,
        };
        let image = l2_normalize(
            &self
                .visual_projection
                .forward(&pooled)?
                .to_dtype(DType::F32)?,
        )?;
        let scale = self.logit_scale_param.to_dtype(DType::F32)?.exp()?;
        let logits = text.matmul(&image.t()?)?.broadcast_mul(&scale)?;
        clip_loss(&logits)
    }

    /// A copy of this model with plain tensors (no gradient leaves), on the
    /// inference fast paths: what evaluation during training runs.
    pub fn snapshot(&self) -> Result<Self> {
        let tensors = self
            .weights()?
            .into_iter()
            .map(|(name, t)| Ok((name, t.detach().copy()?)))
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        let source = WeightSource::new(
            tensors,
            super::weights::FreshPolicy::Only(Vec::new()),
            "(training snapshot)".into(),
        );
        Self::build(self.config.clone(), source, &self.device, self.dtype)
    }
}

/// Symmetric contrastive loss: the mean of the cross-entropy of each text
/// against its image (rows) and of each image against its text (columns),
/// with the i-th text matching the i-th image.
pub fn clip_loss(logits_per_text: &Tensor) -> Result<Tensor> {
    let (n, m) = logits_per_text.dims2()?;
    if n != m {
        return Err(ModelError::Invalid(format!(
            "contrastive loss needs as many texts as images, got {n} texts and {m} images"
        )));
    }
    let targets = Tensor::arange(0u32, n as u32, logits_per_text.device())?;
    let logits = logits_per_text.to_dtype(DType::F32)?;
    let caption = candle_nn::loss::cross_entropy(&logits, &targets)?;
    let image = candle_nn::loss::cross_entropy(&logits.t()?.contiguous()?, &targets)?;
    Ok(((caption + image)? / 2.0)?)
}

/// Softmax over the last dimension in f32 (zero-shot probabilities).
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(
        &logits.to_dtype(DType::F32)?,
        D::Minus1,
    )?)
}

/// The name of a weight held in 8 bits, if any.
fn quantized(held: &BTreeMap<String, Held>) -> Option<String> {
    held.iter()
        .find(|(_, h)| matches!(h, Held::Panels(p) if p.is_quantized()))
        .map(|(name, _)| name.clone())
}
