//! Where a model's tensors come from, and what a save writes.
//!
//! Every tower asks for its weights by transformers' on-disk names through a
//! `VarBuilder`; the backend here answers from the checkpoint's tensors (after
//! renaming older or newer layouts to one canonical layout), or initialises a
//! tensor the policy allows to be fresh (compose: poolers, projections,
//! logit scale; init: everything). It records every tensor handed out, so
//! `save` writes exactly the keys the model uses, no more, no less.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;

use super::cpu::PanelWeight;
use super::{ModelError, Result};

/// Which missing tensors may be freshly initialised.
#[derive(Debug, Clone)]
pub enum FreshPolicy {
    /// Only the names listed (exact match or `prefix.` match); anything else missing is an error.
    Only(Vec<String>),
    /// Everything (a model built from configs alone).
    All,
}

impl FreshPolicy {
    fn allows(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names
                .iter()
                .any(|n| name == n || name.starts_with(&format!("{n}."))),
        }
    }
}

/// Tensors used by a built model, shared between the backend and its owner,
/// in the type and on the device the model holds them (what `save` writes).
pub type Recorded = Arc<Mutex<BTreeMap<String, Held>>>;

/// What a model holds under one checkpoint name: a tensor, or a dense
/// weight re-laid in panels for queries on the CPU
/// (`layers::PanelWeights`), whose rows a checkpoint writer gets back.
#[derive(Debug, Clone)]
pub enum Held {
    Tensor(Tensor),
    Panels(Arc<PanelWeight>),
}

impl Held {
    /// The tensor as the checkpoint lays it out.
    pub fn tensor(&self) -> candle_core::Result<Tensor> {
        match self {
            Held::Tensor(t) => Ok(t.clone()),
            Held::Panels(p) => p.to_tensor(),
        }
    }
}

/// The trainable parameters of a model built for training, by checkpoint name.
pub type Vars = Arc<Mutex<Vec<(String, Var)>>>;

/// Which tensors a training build makes gradient leaves (`Var`s): every
/// one not under a frozen prefix. Frozen ones stay plain tensors, which
/// also keeps them out of the backward graph.
#[derive(Debug, Clone, Default)]
pub struct Trainable {
    pub frozen: Vec<String>,
    pub vars: Vars,
}

impl Trainable {
    fn trains(&self, name: &str) -> bool {
        !self
            .frozen
            .iter()
            .any(|p| name == p || name.starts_with(&format!("{p}.")))
    }
}

pub struct WeightSource {
    /// By checkpoint name; an entry taken in another type or on another
    /// device is replaced by that copy, so the original is freed during the
    /// build rather than after it (a half-precision load would otherwise
    /// hold both).
    tensors: Mutex<HashMap<String, Tensor>>,
    /// The checkpoint's type of each entry replaced by a copy in another
    /// type: asked for again in a third type, it would be converted from
    /// that copy, not the checkpoint's values, so it is refused.
    narrowed: Mutex<HashMap<String, DType>>,
    policy: FreshPolicy,
    origin: PathBuf,
    used: Recorded,
    fresh: Arc<Mutex<Vec<String>>>,
    trainable: Option<Trainable>,
}

impl WeightSource {
    fn stored(&self, name: &str) -> Option<Tensor> {
        self.tensors
            .lock()
            .expect("weights lock")
            .get(name)
            .cloned()
    }

    /// Notes `t` as what the model holds under `name`; returns it.
    fn record(&self, name: &str, t: Tensor) -> Tensor {
        self.used
            .lock()
            .expect("weights lock")
            .insert(name.to_string(), Held::Tensor(t.clone()));
        t
    }

    /// `t` in `dtype` on `dev`; a copy replaces the stored original.
    fn converted(
        &self,
        name: &str,
        t: Tensor,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if t.dtype() == dtype && t.device().same_device(dev) {
            return Ok(t);
        }
        let mut narrowed = self.narrowed.lock().expect("weights lock");
        match narrowed.get(name) {
            Some(&original) if t.dtype() != dtype => candle_core::bail!(
                "{}: tensor `{name}` ({original:?} in the checkpoint) was already taken as {:?}; \
                 taking it again as {dtype:?} would convert that copy, not the checkpoint's values",
                self.origin.display(),
                t.dtype()
            ),
            Some(_) => {}
            None if t.dtype() != dtype => {
                narrowed.insert(name.to_string(), t.dtype());
            }
            None => {}
        }
        drop(narrowed);
        let t = t.to_dtype(dtype)?.to_device(dev)?;
        if let Some(entry) = self.tensors.lock().expect("weights lock").get_mut(name) {
            *entry = t.clone();
        }
        Ok(t)
    }

    pub fn new(tensors: HashMap<String, Tensor>, policy: FreshPolicy, origin: PathBuf) -> Self {
        Self {
            tensors: Mutex::new(tensors),
            narrowed: Mutex::default(),
            policy,
            origin,
            used: Arc::default(),
            fresh: Arc::default(),
            trainable: None,
        }
    }
    /// The same source, handing out a `Var` for every tensor `trainable` trains.
    pub fn with_trainable(mut self, trainable: Trainable) -> Self {
        self.trainable = Some(trainable);
        self
    }
    pub fn recorded(&self) -> Recorded {
        self.used.clone()
    }
    pub fn fresh_names(&self) -> Arc<Mutex<Vec<String>>> {
        self.fresh.clone()
    }
    /// Names in the checkpoint that the model did not use (transformers' "unexpected keys").
    pub fn unused(names: &[String], used: &Recorded) -> Vec<String> {
        let used = used.lock().expect("weights lock");
        let mut names: Vec<String> = names
            .iter()
            .filter(|k| !used.contains_key(*k))
            .cloned()
            .collect();
        names.sort();
        names
    }
}

impl SimpleBackend for WeightSource {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = match self.stored(name) {
            Some(t) if t.shape() == &s => t,
            Some(t) => candle_core::bail!(
                "{}: tensor `{name}` has shape {:?}, the config implies {:?}",
                self.origin.display(),
                t.dims(),
                s.dims()
            ),
            None if self.policy.allows(name) => {
                self.fresh
                    .lock()
                    .expect("weights lock")
                    .push(name.to_string());
                // Detached: `Init::var` makes a `Var`, and a model for
                // inference must hold plain tensors (see `layers::plain_f32`).
                h.var(s, DType::F32, &Device::Cpu)?.as_tensor().detach()
            }
            None => candle_core::bail!("{}: missing tensor `{name}`", self.origin.display()),
        };
        if let Some(trainable) = self.trainable.as_ref().filter(|t| t.trains(name)) {
            // A copy the optimizer updates in place; `save` writes its current values.
            let var = Var::from_tensor(&t.to_dtype(dtype)?.to_device(dev)?.detach())?;
            let t = self.record(name, var.as_tensor().clone());
            trainable
                .vars
                .lock()
                .expect("weights lock")
                .push((name.to_string(), var));
            return Ok(t);
        }
        // What the model holds is recorded, so a converted copy (a half
        // type, another device) does not keep the original alive beside it.
        let t = self.converted(name, t, dtype, dev)?;
        Ok(self.record(name, t))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.stored(name) {
            Some(t) => Ok(self.record(name, self.converted(name, t, dtype, dev)?)),
            None => candle_core::bail!("{}: missing tensor `{name}`", self.origin.display()),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors
            .lock()
            .expect("weights lock")
            .contains_key(name)
    }
}

/// Reads every tensor of a checkpoint directory: `model.safetensors`, a sharded
/// `model.safetensors.index.json`, or a PyTorch `pytorch_model.bin`. Returns
/// the tensors (on the CPU, in their stored dtype) and the file they came from.
pub fn read_dir_tensors(dir: &Path) -> Result<(HashMap<String, Tensor>, PathBuf)> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok((read_safetensors(&single)?, single));
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v = super::config::read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Config {
                file: index.clone(),
                field: "weight_map".into(),
                msg: "missing or not an object".into(),
            })?;
        let mut files: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
        files.sort_unstable();
        files.dedup();
        let mut all = HashMap::new();
        for f in files {
            if f.contains('/') || f.contains("..") {
                return Err(ModelError::Config {
                    file: index.clone(),
                    field: "weight_map".into(),
                    msg: format!("shard `{f}` is not a plain file name"),
                });
            }
            all.extend(read_safetensors(&dir.join(f))?);
        }
        return Ok((all, index));
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        let pairs = candle_core::pickle::read_all(&bin).map_err(|e| ModelError::Weights {
            path: bin.clone(),
            msg: e.to_string(),
        })?;
        return Ok((pairs.into_iter().collect(), bin));
    }
    Err(ModelError::Weights {
        path: dir.to_path_buf(),
        msg: "no model.safetensors, model.safetensors.index.json or pytorch_model.bin".into(),
    })
}

/// Maps the file and copies each tensor out of the page cache once, on every
/// core: reading the whole file into a buffer first (candle's `load`) would
/// hold the weights twice at peak and copy them twice.
pub(crate) fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    use rayon::prelude::*;
    let err = |e: candle_core::Error| ModelError::Weights {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    // SAFETY: the mapping lives only for this call; as with every mmap, a
    // file truncated underneath it meanwhile is undefined behaviour, which a
    // model directory being rewritten during load risks no more than torn reads.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(err)?;
    st.tensors()
        .into_par_iter()
        .map(|(name, view)| {
            let t = candle_core::safetensors::Load::load(&view, &Device::Cpu).map_err(err)?;
            Ok((name, t))
        })
        .collect()
}

/// Writes `tensors` as safetensors with the `format: pt` metadata that
/// transformers' loader expects, via a temporary file renamed into place.
pub fn write_safetensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let weights = |e: candle_core::Error| ModelError::Weights {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let mut views = Vec::with_capacity(tensors.len());
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t
            .to_device(&Device::Cpu)
            .map_err(weights)?
            .contiguous()
            .map_err(weights)?;
        let (dtype, bytes) = tensor_bytes(&t).map_err(weights)?;
        buffers.push((name.clone(), dtype, t.dims().to_vec(), bytes));
    }
    for (name, dtype, shape, bytes) in &buffers {
        let view =
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).map_err(|e| {
                ModelError::Weights {
                    path: path.to_path_buf(),
                    msg: e.to_string(),
                }
            })?;
        views.push((name.clone(), view));
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let data =
        safetensors::tensor::serialize(views, metadata).map_err(|e| ModelError::Weights {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    crate::durable::replace(path, &data).map_err(io)
}

fn tensor_bytes(t: &Tensor) -> candle_core::Result<(safetensors::Dtype, Vec<u8>)> {
    use safetensors::Dtype as S;
    fn le<T: Copy, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.into_iter().flat_map(f).collect()
    }
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => (S::F32, le(flat.to_vec1::<f32>()?, f32::to_le_bytes)),
        DType::F16 => (
            S::F16,
            le(flat.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
        ),
        DType::BF16 => (
            S::BF16,
            le(flat.to_vec1::<half::bf16>()?, half::bf16::to_le_bytes),
        ),
        DType::F64 => (S::F64, le(flat.to_vec1::<f64>()?, f64::to_le_bytes)),
        DType::I64 => (S::I64, le(flat.to_vec1::<i64>()?, i64::to_le_bytes)),
        DType::U32 => (S::U32, le(flat.to_vec1::<u32>()?, u32::to_le_bytes)),
        DType::U8 => (S::U8, flat.to_vec1::<u8>()?),
        other => candle_core::bail!("cannot save a tensor of dtype {other:?}"),
    })
}

/// Renames a checkpoint key to the canonical layout the towers ask for
/// (transformers 5's on-disk names), or `None` for buffers that are not
/// weights. Accepted variants: transformers 4.x CLIP towers nested twice
/// (`vision_model.vision_model.`), transformers 5's in-memory ViT/DeiT/BEiT
/// names (`layers.N.attention.q_proj`, `mlp.fc1`, ...), and TF-era LayerNorm
/// `gamma`/`beta`.
pub fn canonical_key(key: &str) -> Option<String> {
    if key.ends_with(".position_ids")
        || key.ends_with("relative_position_index")
        || key.ends_with(".token_type_ids")
    {
        return None;
    }
    let mut k = key.to_string();
    for tower in ["vision_model", "text_model"] {
        let doubled = format!("{tower}.{tower}.");
        if let Some(rest) = k.strip_prefix(&doubled) {
            k = format!("{tower}.{rest}");
        }
    }
    if let Some(rest) = k.strip_prefix("vision_model.layers.") {
        let (n, tail) = rest.split_once('.')?;
        let tail = match tail {
            t if t.starts_with("attention.q_proj.") => {
                t.replacen("attention.q_proj.", "attention.attention.query.", 1)
            }
            t if t.starts_with("attention.k_proj.") => {
                t.replacen("attention.k_proj.", "attention.attention.key.", 1)
            }
            t if t.starts_with("attention.v_proj.") => {
                t.replacen("attention.v_proj.", "attention.attention.value.", 1)
            }
            t if t.starts_with("attention.o_proj.") => {
                t.replacen("attention.o_proj.", "attention.output.dense.", 1)
            }
            t if t.starts_with("mlp.fc1.") => t.replacen("mlp.fc1.", "intermediate.dense.", 1),
            t if t.starts_with("mlp.fc2.") => t.replacen("mlp.fc2.", "output.dense.", 1),
            t if t.starts_with("relative_position_bias.") => format!("attention.attention.{t}"),
            t => t.to_string(),
        };
        k = format!("vision_model.encoder.layer.{n}.{tail}");
    }
    if let Some(rest) = k.strip_prefix("vision_model.shared_position_bias.") {
        k = format!("vision_model.encoder.relative_position_bias.{rest}");
    }
    if let Some(stem) = k.strip_suffix(".gamma") {
        k = format!("{stem}.weight");
    } else if let Some(stem) = k.strip_suffix(".beta") {
        k = format!("{stem}.bias");
    }
    Some(k)
}

#[cfg(test)]
mod tests {
    use super::canonical_key as c;
    use super::*;

    #[test]
    fn a_tensor_taken_in_one_type_is_refused_in_another() {
        let w = Tensor::new(&[1.0f32 + 1.0 / 512.0, 2.0], &Device::Cpu).unwrap();
        let source = WeightSource::new(
            HashMap::from([("w".to_string(), w)]),
            FreshPolicy::Only(Vec::new()),
            PathBuf::from("model.safetensors"),
        );
        let cpu = Device::Cpu;
        let half = source.get_unchecked("w", DType::BF16, &cpu).unwrap();
        assert_eq!(half.dtype(), DType::BF16);
        // The same type again (a tied weight) is the same copy.
        let again = source.get_unchecked("w", DType::BF16, &cpu).unwrap();
        assert_eq!(again.dtype(), DType::BF16);
        let err = source
            .get_unchecked("w", DType::F32, &cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "model.safetensors: tensor `w` (F32 in the checkpoint) was already taken as BF16"
            ),
            "{err}"
        );
    }

    #[test]
    fn layouts_meet_in_one_naming() {
        assert_eq!(
            c("vision_model.vision_model.pre_layrnorm.weight").unwrap(),
            "vision_model.pre_layrnorm.weight"
        );
        assert_eq!(
            c("text_model.text_model.final_layer_norm.bias").unwrap(),
            "text_model.final_layer_norm.bias"
        );
        assert_eq!(
            c("vision_model.layers.3.attention.q_proj.weight").unwrap(),
            "vision_model.encoder.layer.3.attention.attention.query.weight"
        );
        assert_eq!(
            c("vision_model.layers.0.mlp.fc2.bias").unwrap(),
            "vision_model.encoder.layer.0.output.dense.bias"
        );
        assert_eq!(
            c("vision_model.layers.1.relative_position_bias.relative_position_bias_table").unwrap(),
            "vision_model.encoder.layer.1.attention.attention.relative_position_bias.relative_position_bias_table"
        );
        assert_eq!(
            c("vision_model.layers.1.lambda_1").unwrap(),
            "vision_model.encoder.layer.1.lambda_1"
        );
        assert_eq!(
            c("text_model.embeddings.LayerNorm.gamma").unwrap(),
            "text_model.embeddings.LayerNorm.weight"
        );
        assert!(c("text_model.embeddings.position_ids").is_none());
        // CLIP's own names are already canonical.
        assert_eq!(
            c("vision_model.encoder.layers.0.mlp.fc1.weight").unwrap(),
            "vision_model.encoder.layers.0.mlp.fc1.weight"
        );
    }
}
