//! Checkpoints on disk, in the exact Hugging Face layout: load a dual encoder
//! (or CLIP) directory, compose one from two tower directories with fresh
//! projections (`from_vision_text_pretrained`), build one with random weights
//! from two tower configs (`from_vision_text_configs`), and save any of them
//! (`save_pretrained`: config.json + model.safetensors + processor files).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use super::config::{DualEncoderConfig, read_json};
use super::dual::DualEncoder;
use super::weights::{
    FreshPolicy, Trainable, Vars, WeightSource, canonical_key, read_dir_tensors, write_safetensors,
};
use super::{ModelError, Result};

/// Tokenizer files transformers may save next to a model (any that exist are copied).
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "chat_template.jinja",
];

fn canonical(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .filter_map(|(k, t)| canonical_key(&k).map(|k| (k, t)))
        .collect()
}

impl DualEncoder {
    /// Loads a `vision-text-dual-encoder` or `clip` checkpoint directory.
    /// Every weight must be present, except `logit_scale`, which falls back to
    /// the config's `logit_scale_init_value` as transformers does.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with(dir, device, dtype, !device.is_cpu(), None)
    }

    /// [`Self::load`] with every tensor in `dtype` whatever the device: what
    /// CUDA runs in half precision, for checking that path on the CPU (where
    /// candle's half ops are slow; `load` keeps only the dense weights half
    /// there).
    pub fn load_uniform(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with(dir, device, dtype, true, None)
    }

    /// [`Self::load`] for training: every tensor not under a `frozen` prefix
    /// (`vision_model`, `text_model`) becomes a gradient leaf, returned with
    /// its checkpoint name. f32 on `device`.
    pub fn load_trainable(
        dir: &Path,
        device: &Device,
        frozen: &[&str],
    ) -> Result<(Self, Vec<(String, Var)>)> {
        let trainable = Trainable {
            frozen: frozen.iter().map(|s| s.to_string()).collect(),
            vars: Vars::default(),
        };
        let model = Self::load_with(dir, device, DType::F32, true, Some(trainable.clone()))?;
        let vars = std::mem::take(&mut *trainable.vars.lock().expect("weights lock"));
        Ok((model, vars))
    }

    fn load_with(
        dir: &Path,
        device: &Device,
        dtype: DType,
        uniform: bool,
        trainable: Option<Trainable>,
    ) -> Result<Self> {
        let config = DualEncoderConfig::from_file(&dir.join("config.json"))?;
        let (raw, origin) = read_dir_tensors(dir)?;
        let tensors = canonical(raw);
        // Names only: the source alone holds the tensors, so it can free
        // each original it converts.
        let names: Vec<String> = tensors.keys().cloned().collect();
        let mut source = WeightSource::new(
            tensors,
            FreshPolicy::Only(vec!["logit_scale".into()]),
            origin,
        );
        if let Some(trainable) = trainable {
            source = source.with_trainable(trainable);
        }
        let used = source.recorded();
        let model = Self::build_as(config, source, device, dtype, uniform)?;
        let unused = WeightSource::unused(&names, &used);
        if !unused.is_empty() {
            tracing::warn!(dir = %dir.display(), count = unused.len(), first = %unused[0], "checkpoint has tensors the model does not use");
        }
        Ok(model)
    }

    /// `from_vision_text_pretrained`: a vision tower directory (a `ViTModel`,
    /// `DeiTModel`, `BeitModel`, `CLIPVisionModel`, a whole `CLIPModel`, or any
    /// of their `For...` heads) and a text tower directory (`BertModel`,
    /// `RobertaModel`, `XLMRobertaModel`, `CLIPTextModel`, ...). Projections and
    /// `logit_scale` are new; so is a pooler the source lacks, as in transformers.
    pub fn compose(
        vision_dir: &Path,
        text_dir: &Path,
        projection_dim: usize,
        device: &Device,
    ) -> Result<Self> {
        let vision_file = vision_dir.join("config.json");
        let text_file = text_dir.join("config.json");
        let config = DualEncoderConfig::from_tower_values(
            &read_json(&vision_file)?,
            &vision_file,
            &read_json(&text_file)?,
            &text_file,
            projection_dim,
        )?;
        let mut tensors = HashMap::new();
        let (v, v_origin) = read_dir_tensors(vision_dir)?;
        tensors.extend(tower_tensors(v, "vision_model", config.vision.model_type()));
        let (t, _) = read_dir_tensors(text_dir)?;
        tensors.extend(tower_tensors(t, "text_model", config.text.model_type()));
        let fresh = [
            "vision_model.pooler",
            "text_model.pooler",
            "visual_projection",
            "text_projection",
            "logit_scale",
        ];
        let source = WeightSource::new(
            canonical(tensors),
            FreshPolicy::Only(fresh.iter().map(|s| s.to_string()).collect()),
            v_origin,
        );
        let fresh_names = source.fresh_names();
        let model = Self::build(config, source, device, DType::F32)?;
        let fresh_names = fresh_names.lock().expect("weights lock");
        tracing::info!(fresh = ?*fresh_names, "newly initialised weights");
        Ok(model)
    }

    /// `from_vision_text_configs`: random weights from two tower config files.
    pub fn init(
        vision_config: &Path,
        text_config: &Path,
        projection_dim: usize,
        device: &Device,
    ) -> Result<Self> {
        let config = DualEncoderConfig::from_tower_values(
            &read_json(vision_config)?,
            vision_config,
            &read_json(text_config)?,
            text_config,
            projection_dim,
        )?;
        let source = WeightSource::new(
            HashMap::new(),
            FreshPolicy::All,
            vision_config.to_path_buf(),
        );
        Self::build(config, source, device, DType::F32)
    }

    /// What `dualsight init` writes: [`Self::init`] on the CPU, saved into
    /// `out` with the default image processor for its vision tower and, when
    /// given, the tokenizer files of `tokenizer`.
    pub fn init_dir(
        vision_config: &Path,
        text_config: &Path,
        projection_dim: usize,
        tokenizer: Option<&Path>,
        out: &Path,
    ) -> Result<Self> {
        let model = Self::init(vision_config, text_config, projection_dim, &Device::Cpu)?;
        model.save(out)?;
        let path = out.join("preprocessor_config.json");
        let json = serde_json::to_string_pretty(&default_image_processor(model.config()))
            .expect("json value serialises");
        crate::durable::replace(&path, (json + "\n").as_bytes())
            .map_err(|source| ModelError::Io { path, source })?;
        if let Some(tok) = tokenizer {
            copy_tokenizer_files(tok, out)?;
        }
        Ok(model)
    }

    /// `save_pretrained`: `config.json` and `model.safetensors` (transformers'
    /// key names, exactly the tensors the model uses) into `out` (created).
    pub fn save(&self, out: &Path) -> Result<()> {
        // First, so that a model that cannot be written leaves nothing.
        let weights = self.weights()?;
        std::fs::create_dir_all(out).map_err(|source| ModelError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        let config =
            serde_json::to_string_pretty(&self.config().to_json()).expect("json value serialises");
        let path = out.join("config.json");
        crate::durable::replace(&path, (config + "\n").as_bytes())
            .map_err(|source| ModelError::Io { path, source })?;
        write_safetensors(&weights, &out.join("model.safetensors"))
    }
}

/// A tower checkpoint's tensors renamed to where they live in a dual encoder
/// (`vision_model.` / `text_model.`): the task-head prefix (`vit.`, `bert.`, ...)
/// is dropped, and of a whole CLIP model only the requested tower is kept.
fn tower_tensors(
    tensors: HashMap<String, Tensor>,
    tower: &str,
    model_type: &str,
) -> HashMap<String, Tensor> {
    let head_prefixes: &[&str] = match model_type {
        "vit" => &["vit."],
        "deit" => &["deit."],
        "beit" => &["beit."],
        "bert" => &["bert."],
        "roberta" | "xlm-roberta" => &["roberta."],
        _ => &[],
    };
    let clip = matches!(model_type, "clip_vision_model" | "clip_text_model");
    let own = format!("{tower}.");
    let has_own_prefix = tensors.keys().any(|k| k.starts_with(&own));
    tensors
        .into_iter()
        .filter_map(|(k, t)| {
            if clip && has_own_prefix {
                // A CLIPModel / CLIPVisionModel / CLIPTextModel: keep this tower's part only.
                return k.starts_with(&own).then_some((k, t));
            }
            let stripped = head_prefixes
                .iter()
                .find_map(|p| k.strip_prefix(p))
                .unwrap_or(&k);
            Some((format!("{tower}.{stripped}"), t))
        })
        .collect()
}

/// Copies the tokenizer files of `src` (any that exist) into `out`.
pub fn copy_tokenizer_files(src: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for name in TOKENIZER_FILES {
        let from = src.join(name);
        if from.is_file() {
            let to = out.join(name);
            std::fs::copy(&from, &to).map_err(|source| ModelError::Io {
                path: from.clone(),
                source,
            })?;
            written.push(to);
        }
    }
    Ok(written)
}

/// Copies the image processor of `src` into `out` as `preprocessor_config.json`
/// (a transformers 5 `processor_config.json` contributes its nested
/// `image_processor`). Returns whether `src` had one.
pub fn copy_image_processor(src: &Path, out: &Path) -> Result<bool> {
    let legacy = src.join("preprocessor_config.json");
    let nested = src.join("processor_config.json");
    let to = out.join("preprocessor_config.json");
    if legacy.is_file() {
        std::fs::copy(&legacy, &to).map_err(|source| ModelError::Io {
            path: legacy.clone(),
            source,
        })?;
        return Ok(true);
    }
    if nested.is_file()
        && let Some(ip) = read_json(&nested)?
            .get("image_processor")
            .filter(|ip| ip.is_object())
    {
        let text = serde_json::to_string_pretty(ip).expect("json value serialises");
        std::fs::write(&to, text + "\n").map_err(|source| ModelError::Io {
            path: to.clone(),
            source,
        })?;
        return Ok(true);
    }
    Ok(false)
}

/// A default image processor for a model made from configs alone, as the
/// tower's transformers image processor class would default it, sized to the
/// tower's `image_size` (ViT/DeiT/BEiT: exact resize; CLIP: shortest edge + crop).
pub fn default_image_processor(config: &DualEncoderConfig) -> Value {
    let (h, w) = config.vision.image_size();
    match config.vision.model_type() {
        "clip_vision_model" => serde_json::json!({
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": true, "size": {"shortest_edge": h.min(w)}, "resample": 3,
            "do_center_crop": true, "crop_size": {"height": h, "width": w},
            "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "do_convert_rgb": true
        }),
        _ => serde_json::json!({
            "image_processor_type": "ViTImageProcessor",
            "do_resize": true, "size": {"height": h, "width": w}, "resample": 2,
            "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]
        }),
    }
}
