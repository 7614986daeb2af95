//! The optimizer step of transformers' Trainer: PyTorch's `AdamW` (betas
//! 0.9/0.999, eps 1e-8, decoupled weight decay) over two parameter groups,
//! decay and no decay ([`decays`]), after clipping the gradients to a
//! global L2 norm (`clip_grad_norm_`). Ours rather than `candle_nn`'s AdamW,
//! which has neither groups nor a state that can be saved and resumed.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use crate::model::weights::{read_safetensors, write_safetensors};

#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("{}: {message}", path.display())]
    State {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T, E = OptimError> = std::result::Result<T, E>;

/// Whether the parameter `name` gets weight decay: the Trainer's
/// `get_decay_parameter_names` excludes names matching `bias`, `layernorm`,
/// `rmsnorm`, `norm` or `_norm` as a path component, and every parameter of
/// an `nn.LayerNorm` (in these towers, every module named with `norm`, as
/// CLIP's `layer_norm1` and `pre_layrnorm` are).
pub fn decays(name: &str) -> bool {
    let lower = name.to_lowercase();
    let parts: Vec<&str> = lower.split('.').collect();
    let named_norm = lower.contains("bias")
        || lower.contains("layernorm")
        || lower.contains("rmsnorm")
        || parts.contains(&"norm")
        || parts.iter().any(|p| p.ends_with("_norm"));
    let module = parts.len().checked_sub(2).map(|i| parts[i]).unwrap_or("");
    let in_layer_norm = module.contains("norm") || module.contains("layrnorm");
    !(named_norm || in_layer_norm)
}

/// AdamW's hyper-parameters (the Trainer's defaults except the learning rate).
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One parameter and its moments.
struct Slot {
    name: String,
    var: Var,
    decay: bool,
    /// Steps this parameter has taken (PyTorch keeps one per parameter: a
    /// parameter without a gradient takes none).
    step: u64,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
}

pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Self {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                Slot {
                    decay: decays(&name),
                    name,
                    var,
                    step: 0,
                    exp_avg: vec![0.0; n],
                    exp_avg_sq: vec![0.0; n],
                }
            })
            .collect();
        Self { config, slots }
    }

    /// The parameters, by checkpoint name, in the order given.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.var))
    }

    /// Each parameter's gradient as f32 values (`None` where none reached it).
    pub fn gradients(&self, grads: &GradStore) -> Result<Vec<Option<Vec<f32>>>> {
        self.slots
            .iter()
            .map(|s| {
                grads
                    .get(s.var.as_tensor())
                    .map(|g| Ok(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?))
                    .transpose()
            })
            .collect()
    }

    /// One step at learning rate `lr` with the (clipped) gradients of
    /// [`Self::gradients`]: PyTorch's `_single_tensor_adamw`, operation for
    /// operation (the scalars in f64, as Python computes them).
    pub fn step(&mut self, grads: &[Option<Vec<f32>>], lr: f64) -> Result<()> {
        let c = self.config;
        for (slot, grad) in self.slots.iter_mut().zip(grads) {
            let Some(grad) = grad else { continue };
            slot.step += 1;
            let t = slot.var.as_tensor();
            let mut p = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if slot.decay && c.weight_decay != 0.0 {
                let keep = (1.0 - lr * c.weight_decay) as f32;
                p.iter_mut().for_each(|x| *x *= keep);
            }
            let bias1 = 1.0 - c.beta1.powi(slot.step as i32);
            let bias2_sqrt = (1.0 - c.beta2.powi(slot.step as i32)).sqrt() as f32;
            let step_size = (lr / bias1) as f32;
            let (w1, b2, w2, eps) = (
                (1.0 - c.beta1) as f32,
                c.beta2 as f32,
                (1.0 - c.beta2) as f32,
                c.eps as f32,
            );
            for (((p, g), m), v) in p
                .iter_mut()
                .zip(grad)
                .zip(&mut slot.exp_avg)
                .zip(&mut slot.exp_avg_sq)
            {
                // torch.lerp(m, g, w) for w < 0.5.
                *m += w1 * (g - *m);
                *v = *v * b2 + w2 * g * g;
                let denom = v.sqrt() / bias2_sqrt + eps;
                *p -= step_size * (*m / denom);
            }
            let updated = Tensor::from_vec(p, t.shape(), &Device::Cpu)?
                .to_dtype(t.dtype())?
                .to_device(t.device())?;
            slot.var.set(&updated)?;
        }
        Ok(())
    }

    /// Writes the moments and step counts (`NAME.exp_avg`, `NAME.exp_avg_sq`,
    /// `NAME.step`) as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = BTreeMap::new();
        for s in &self.slots {
            let shape = s.var.shape();
            let moment = |v: &Vec<f32>| Tensor::from_slice(v, shape, &Device::Cpu);
            tensors.insert(format!("{}.exp_avg", s.name), moment(&s.exp_avg)?);
            tensors.insert(format!("{}.exp_avg_sq", s.name), moment(&s.exp_avg_sq)?);
            tensors.insert(
                format!("{}.step", s.name),
                Tensor::new(&[s.step as i64], &Device::Cpu)?,
            );
        }
        Ok(write_safetensors(&tensors, path)?)
    }

    /// Reads what [`Self::save`] wrote; every parameter must be there, with its shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let mut tensors = read_safetensors(path)?;
        let err = |message: String| OptimError::State {
            path: path.to_path_buf(),
            message,
        };
        for s in &mut self.slots {
            let mut take = |suffix: &str| {
                tensors
                    .remove(&format!("{}.{suffix}", s.name))
                    .ok_or_else(|| err(format!("no `{}.{suffix}`", s.name)))
            };
            let (m, v, step) = (take("exp_avg")?, take("exp_avg_sq")?, take("step")?);
            for (what, t) in [("exp_avg", &m), ("exp_avg_sq", &v)] {
                if t.shape() != s.var.shape() {
                    return Err(err(format!(
                        "`{}.{what}` has shape {:?}, the parameter {:?}",
                        s.name,
                        t.dims(),
                        s.var.dims()
                    )));
                }
            }
            s.exp_avg = m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            s.exp_avg_sq = v.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            s.step = step
                .flatten_all()?
                .to_vec1::<i64>()?
                .first()
                .copied()
                .unwrap_or(0) as u64;
        }
        Ok(())
    }
}

/// `torch.nn.utils.clip_grad_norm_`: the global L2 norm of all gradients
/// (returned), and every gradient scaled by `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_grad_norm(grads: &mut [Option<Vec<f32>>], max_norm: f64) -> f64 {
    // Per-tensor norms in f32 as PyTorch computes them, then the norm of those.
    let norms: Vec<f32> = grads
        .iter()
        .flatten()
        .map(|g| g.iter().map(|x| x * x).sum::<f32>().sqrt())
        .collect();
    let total = norms.iter().map(|n| n * n).sum::<f32>().sqrt() as f64;
    if max_norm > 0.0 {
        let coef = (max_norm / (total + 1e-6)).min(1.0) as f32;
        grads
            .iter_mut()
            .flatten()
            .for_each(|g| g.iter_mut().for_each(|x| *x *= coef));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_groups_follow_the_trainer() {
        for name in [
            "visual_projection.weight",
            "logit_scale",
            "vision_model.embeddings.cls_token",
            "text_model.encoder.layer.0.attention.self.query.weight",
            "vision_model.encoder.layer.1.lambda_1",
        ] {
            assert!(decays(name), "{name} should decay");
        }
        for name in [
            "text_model.encoder.layer.0.attention.self.query.bias",
            "text_model.embeddings.LayerNorm.weight",
            "vision_model.pre_layrnorm.weight",
            "vision_model.encoder.layers.0.layer_norm1.weight",
            "text_model.final_layer_norm.weight",
            "vision_model.encoder.layer.0.layernorm_before.weight",
            "vision_model.pooler.layernorm.weight",
        ] {
            assert!(!decays(name), "{name} should not decay");
        }
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let mut g = vec![Some(vec![3.0, 0.0]), None, Some(vec![4.0])];
        let norm = clip_grad_norm(&mut g, 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let after: f32 = g.iter().flatten().flatten().map(|x| x * x).sum();
        assert!((after.sqrt() - 1.0).abs() < 1e-5, "{after}");
        let mut small = vec![Some(vec![0.3])];
        clip_grad_norm(&mut small, 1.0);
        assert!((small[0].as_ref().unwrap()[0] - 0.3).abs() < 1e-6);
    }
}
