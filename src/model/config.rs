//! Hugging Face `config.json` for dual encoders: `vision-text-dual-encoder`
//! (nested `vision_config` / `text_config`, each with its own `model_type`) and
//! plain `clip` checkpoints, and the dispatch to each tower's config. Those
//! live beside their towers (`vision/vit.rs`, `text/bert.rs`, ...), each a
//! serde struct mirroring its transformers class with that class's defaults,
//! because transformers writes only the values that differ from them. The raw
//! JSON is kept so that a save writes back every field we do not interpret.

use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use super::text::bert::BertConfig;
pub use super::text::clip::ClipTextConfig;
pub use super::vision::beit::BeitConfig;
pub use super::vision::clip::ClipVisionConfig;
pub use super::vision::vit::VitConfig;
use super::{ModelError, Result};

/// Which top-level architecture a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// `model_type: "vision-text-dual-encoder"` (`VisionTextDualEncoderModel`).
    DualEncoder,
    /// `model_type: "clip"` (`CLIPModel`): same weight layout, its own config.
    Clip,
}

#[derive(Debug, Clone)]
pub struct DualEncoderConfig {
    pub kind: CheckpointKind,
    pub projection_dim: usize,
    pub logit_scale_init_value: f64,
    pub vision: VisionConfig,
    pub text: TextConfig,
    /// The whole config.json as read (or as composed), written back on save.
    pub raw: Value,
}

#[derive(Debug, Clone)]
pub enum VisionConfig {
    Vit(VitConfig),
    Deit(VitConfig),
    Beit(BeitConfig),
    Clip(ClipVisionConfig),
}

#[derive(Debug, Clone)]
pub enum TextConfig {
    Bert(BertConfig),
    Roberta(BertConfig),
    XlmRoberta(BertConfig),
    Clip(ClipTextConfig),
}

/// `image_size` / `patch_size` may be an int or a pair in HF configs.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Size2 {
    One(usize),
    Two([usize; 2]),
}

impl Size2 {
    pub fn hw(self) -> (usize, usize) {
        match self {
            Size2::One(s) => (s, s),
            Size2::Two([h, w]) => (h, w),
        }
    }
}

impl VisionConfig {
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Vit(c) | Self::Deit(c) => c.hidden_size,
            Self::Beit(c) => c.hidden_size,
            Self::Clip(c) => c.hidden_size,
        }
    }
    pub fn image_size(&self) -> (usize, usize) {
        match self {
            Self::Vit(c) | Self::Deit(c) => c.image_size.hw(),
            Self::Beit(c) => c.image_size.hw(),
            Self::Clip(c) => c.image_size.hw(),
        }
    }
    pub fn num_channels(&self) -> usize {
        match self {
            Self::Vit(c) | Self::Deit(c) => c.num_channels,
            Self::Beit(c) => c.num_channels,
            Self::Clip(c) => c.num_channels,
        }
    }
    /// Tokens per image: the patches and the class token (DeiT adds a
    /// distillation token, counted as one more).
    pub fn tokens(&self) -> usize {
        let ((h, w), (ph, pw)) = match self {
            Self::Vit(c) | Self::Deit(c) => (c.image_size.hw(), c.patch_size.hw()),
            Self::Beit(c) => (c.image_size.hw(), c.patch_size.hw()),
            Self::Clip(c) => (c.image_size.hw(), c.patch_size.hw()),
        };
        (h / ph.max(1)) * (w / pw.max(1)) + if matches!(self, Self::Deit(_)) { 2 } else { 1 }
    }
    pub fn num_heads(&self) -> usize {
        match self {
            Self::Vit(c) | Self::Deit(c) => c.num_attention_heads,
            Self::Beit(c) => c.num_attention_heads,
            Self::Clip(c) => c.num_attention_heads,
        }
    }
    pub fn intermediate_size(&self) -> usize {
        match self {
            Self::Vit(c) | Self::Deit(c) => c.intermediate_size,
            Self::Beit(c) => c.intermediate_size,
            Self::Clip(c) => c.intermediate_size,
        }
    }
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Vit(_) => "vit",
            Self::Deit(_) => "deit",
            Self::Beit(_) => "beit",
            Self::Clip(_) => "clip_vision_model",
        }
    }
    pub fn initializer_range(&self) -> f64 {
        match self {
            Self::Vit(c) | Self::Deit(c) => c.initializer_range,
            Self::Beit(c) => c.initializer_range,
            Self::Clip(c) => c.initializer_range,
        }
    }
    /// The largest dropout (or drop-path) rate a training forward applies:
    /// 0 means the tower is deterministic, in training mode as in inference.
    pub fn max_dropout(&self) -> f32 {
        match self {
            Self::Vit(c) | Self::Deit(c) => {
                c.hidden_dropout_prob.max(c.attention_probs_dropout_prob)
            }
            Self::Beit(c) => c
                .hidden_dropout_prob
                .max(c.attention_probs_dropout_prob)
                .max(c.drop_path_rate),
            Self::Clip(c) => c.attention_dropout,
        }
    }
}

impl TextConfig {
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Bert(c) | Self::Roberta(c) | Self::XlmRoberta(c) => c.hidden_size,
            Self::Clip(c) => c.hidden_size,
        }
    }
    /// The longest token sequence the tower accepts (RoBERTa positions start after `pad_token_id`).
    pub fn max_tokens(&self) -> usize {
        match self {
            Self::Bert(c) => c.max_position_embeddings,
            Self::Roberta(c) | Self::XlmRoberta(c) => c
                .max_position_embeddings
                .saturating_sub(c.pad_token_id.unwrap_or(1) as usize + 1),
            Self::Clip(c) => c.max_position_embeddings,
        }
    }
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Bert(_) => "bert",
            Self::Roberta(_) => "roberta",
            Self::XlmRoberta(_) => "xlm-roberta",
            Self::Clip(_) => "clip_text_model",
        }
    }
    pub fn initializer_range(&self) -> f64 {
        match self {
            Self::Bert(c) | Self::Roberta(c) | Self::XlmRoberta(c) => c.initializer_range,
            Self::Clip(c) => c.initializer_range,
        }
    }
}

/// Reads a JSON file, naming the file in every error.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        file: path.to_path_buf(),
        field: String::new(),
        msg: format!("not valid JSON: {e}"),
    })
}

/// `field.name`, or `name` at the top level.
fn join(field: &str, name: &str) -> String {
    if field.is_empty() {
        name.to_string()
    } else {
        format!("{field}.{name}")
    }
}

fn config_err(file: &Path, field: &str, msg: impl Into<String>) -> ModelError {
    ModelError::Config {
        file: file.to_path_buf(),
        field: field.to_string(),
        msg: msg.into(),
    }
}

/// Deserialises `value` (found at `field` of `file`) into `T`, naming the exact field on error.
fn typed<T: DeserializeOwned>(value: &Value, file: &Path, field: &str) -> Result<T> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let inner = e.path().to_string();
        let full = match (field.is_empty(), inner.as_str()) {
            (true, p) => p.to_string(),
            (false, ".") => field.to_string(),
            (false, p) => format!("{field}.{p}"),
        };
        config_err(file, &full, e.into_inner().to_string())
    })
}

fn model_type<'a>(value: &'a Value, file: &Path, field: &str) -> Result<&'a str> {
    let name = join(field, "model_type");
    match value.get("model_type") {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(config_err(file, &name, "expected a string")),
        None => Err(config_err(file, &name, "missing")),
    }
}

/// One tower of a whole CLIP config (`vision_config` / `text_config`; absent = all defaults).
fn clip_part<T: DeserializeOwned>(
    value: &Value,
    file: &Path,
    field: &str,
    part: &str,
) -> Result<T> {
    let sub = value
        .get(part)
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    typed(&sub, file, &join(field, part))
}

/// Fills RoBERTa-family class defaults that differ from BERT's before parsing.
fn with_defaults(value: &Value, defaults: &[(&str, Value)]) -> Value {
    let mut v = value.clone();
    if let Value::Object(map) = &mut v {
        for (k, d) in defaults {
            map.entry(k.to_string()).or_insert_with(|| d.clone());
        }
    }
    v
}

/// Parses a vision tower config (`vit`, `deit`, `beit`, `clip_vision_model`, or a whole `clip`).
pub fn parse_vision(value: &Value, file: &Path, field: &str) -> Result<VisionConfig> {
    let mt = model_type(value, file, field)?;
    let config = match mt {
        "vit" => VisionConfig::Vit(typed(value, file, field)?),
        "deit" => VisionConfig::Deit(typed(value, file, field)?),
        "beit" => VisionConfig::Beit(typed(value, file, field)?),
        "clip_vision_model" => VisionConfig::Clip(typed(value, file, field)?),
        "clip" => VisionConfig::Clip(clip_part(value, file, field, "vision_config")?),
        other => {
            return Err(config_err(
                file,
                &join(field, "model_type"),
                format!(
                    "unsupported vision tower `{other}` (expected vit, deit, beit, clip_vision_model or clip)"
                ),
            ));
        }
    };
    validate_vision(&config, file, field)?;
    Ok(config)
}

/// Parses a text tower config (`bert`, `roberta`, `xlm-roberta`, `clip_text_model`, or a whole `clip`).
pub fn parse_text(value: &Value, file: &Path, field: &str) -> Result<TextConfig> {
    let mt = model_type(value, file, field)?;
    let roberta_defaults = |vocab: u64| {
        vec![
            ("vocab_size", Value::from(vocab)),
            ("pad_token_id", Value::from(1)),
        ]
    };
    let config = match mt {
        "bert" => TextConfig::Bert(typed(
            &with_defaults(value, &[("pad_token_id", Value::from(0))]),
            file,
            field,
        )?),
        "roberta" => TextConfig::Roberta(typed(
            &with_defaults(value, &roberta_defaults(50265)),
            file,
            field,
        )?),
        "xlm-roberta" => TextConfig::XlmRoberta(typed(
            &with_defaults(value, &roberta_defaults(30522)),
            file,
            field,
        )?),
        "clip_text_model" => TextConfig::Clip(typed(value, file, field)?),
        "clip" => TextConfig::Clip(clip_part(value, file, field, "text_config")?),
        other => {
            return Err(config_err(
                file,
                &join(field, "model_type"),
                format!(
                    "unsupported text tower `{other}` (expected bert, roberta, xlm-roberta, clip_text_model or clip)"
                ),
            ));
        }
    };
    validate_text(&config, file, field)?;
    Ok(config)
}

fn check_heads(hidden: usize, heads: usize, file: &Path, field: &str) -> Result<()> {
    if heads == 0 || hidden == 0 || !hidden.is_multiple_of(heads) {
        let f = join(field, "num_attention_heads");
        return Err(config_err(
            file,
            &f,
            format!(
                "hidden_size {hidden} must be a positive multiple of num_attention_heads {heads}"
            ),
        ));
    }
    Ok(())
}

fn check_act(act: &str, file: &Path, field: &str, name: &str) -> Result<()> {
    if super::layers::Activation::from_hf(act).is_none() {
        return Err(config_err(
            file,
            &join(field, name),
            format!("unsupported activation `{act}`"),
        ));
    }
    Ok(())
}

fn check_patches(image: Size2, patch: Size2, file: &Path, field: &str) -> Result<()> {
    let ((ih, iw), (ph, pw)) = (image.hw(), patch.hw());
    if ph == 0 || pw == 0 || ih < ph || iw < pw {
        let f = join(field, "patch_size");
        return Err(config_err(
            file,
            &f,
            format!("patch {ph}x{pw} does not fit image {ih}x{iw}"),
        ));
    }
    Ok(())
}

fn validate_vision(c: &VisionConfig, file: &Path, field: &str) -> Result<()> {
    match c {
        VisionConfig::Vit(v) | VisionConfig::Deit(v) => {
            check_heads(v.hidden_size, v.num_attention_heads, file, field)?;
            check_act(&v.hidden_act, file, field, "hidden_act")?;
            check_act(&v.pooler_act, file, field, "pooler_act")?;
            check_patches(v.image_size, v.patch_size, file, field)
        }
        VisionConfig::Beit(v) => {
            check_heads(v.hidden_size, v.num_attention_heads, file, field)?;
            check_act(&v.hidden_act, file, field, "hidden_act")?;
            check_patches(v.image_size, v.patch_size, file, field)
        }
        VisionConfig::Clip(v) => {
            check_heads(v.hidden_size, v.num_attention_heads, file, field)?;
            check_act(&v.hidden_act, file, field, "hidden_act")?;
            check_patches(v.image_size, v.patch_size, file, field)
        }
    }
}

fn validate_text(c: &TextConfig, file: &Path, field: &str) -> Result<()> {
    match c {
        TextConfig::Bert(t) | TextConfig::Roberta(t) | TextConfig::XlmRoberta(t) => {
            check_heads(t.hidden_size, t.num_attention_heads, file, field)?;
            check_act(&t.hidden_act, file, field, "hidden_act")?;
            if t.position_embedding_type != "absolute" {
                let f = join(field, "position_embedding_type");
                return Err(config_err(
                    file,
                    &f,
                    format!(
                        "unsupported `{}` (only absolute)",
                        t.position_embedding_type
                    ),
                ));
            }
            Ok(())
        }
        TextConfig::Clip(t) => {
            check_heads(t.hidden_size, t.num_attention_heads, file, field)?;
            check_act(&t.hidden_act, file, field, "hidden_act")
        }
    }
}

fn number(value: &Value, key: &str, default: f64, file: &Path) -> Result<f64> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| config_err(file, key, "expected a number")),
    }
}

impl DualEncoderConfig {
    /// Parses a dual-encoder or CLIP `config.json` value read from `file`.
    pub fn from_value(raw: Value, file: &Path) -> Result<Self> {
        if !raw.is_object() {
            return Err(config_err(file, "", "expected a JSON object"));
        }
        let mt = model_type(&raw, file, "")?;
        let kind = match mt {
            "vision-text-dual-encoder" => CheckpointKind::DualEncoder,
            "clip" => CheckpointKind::Clip,
            other => {
                return Err(config_err(
                    file,
                    "model_type",
                    format!(
                        "`{other}` is not a dual encoder (expected vision-text-dual-encoder or clip)"
                    ),
                ));
            }
        };
        let (vision, text) = match kind {
            CheckpointKind::DualEncoder => {
                let v = raw
                    .get("vision_config")
                    .ok_or_else(|| config_err(file, "vision_config", "missing"))?;
                let t = raw
                    .get("text_config")
                    .ok_or_else(|| config_err(file, "text_config", "missing"))?;
                (
                    parse_vision(v, file, "vision_config")?,
                    parse_text(t, file, "text_config")?,
                )
            }
            CheckpointKind::Clip => (parse_vision(&raw, file, "")?, parse_text(&raw, file, "")?),
        };
        let projection_dim = number(&raw, "projection_dim", 512.0, file)?;
        if projection_dim < 1.0 || projection_dim.fract() != 0.0 {
            return Err(config_err(
                file,
                "projection_dim",
                "expected a positive integer",
            ));
        }
        let logit_scale_init_value = number(&raw, "logit_scale_init_value", 2.6592, file)?;
        Ok(Self {
            kind,
            projection_dim: projection_dim as usize,
            logit_scale_init_value,
            vision,
            text,
            raw,
        })
    }

    pub fn from_file(file: &Path) -> Result<Self> {
        Self::from_value(read_json(file)?, file)
    }

    /// A `vision-text-dual-encoder` config from two tower configs, as
    /// `VisionTextDualEncoderConfig.from_vision_text_configs` writes it. A full
    /// CLIP config given as the vision tower is reduced to its `vision_config`.
    pub fn from_tower_values(
        vision: &Value,
        vision_file: &Path,
        text: &Value,
        text_file: &Path,
        projection_dim: usize,
    ) -> Result<Self> {
        let vision_value = tower_value(vision, "vision_config", "clip_vision_model");
        let text_value = tower_value(text, "text_config", "clip_text_model");
        let raw = serde_json::json!({
            "architectures": ["VisionTextDualEncoderModel"],
            "model_type": "vision-text-dual-encoder",
            "projection_dim": projection_dim,
            "logit_scale_init_value": 2.6592,
            "vision_config": vision_value,
            "text_config": text_value,
            "dtype": "float32",
        });
        // Parse the towers against their own files so errors name the file the user gave.
        parse_vision(vision, vision_file, "")?;
        parse_text(text, text_file, "")?;
        let file = Path::new("<composed config>");
        Self::from_value(raw, file)
    }

    /// The JSON to write as `config.json`, with `projection_dim` kept in sync.
    pub fn to_json(&self) -> Value {
        let mut raw = self.raw.clone();
        if let Value::Object(map) = &mut raw {
            map.insert("projection_dim".into(), Value::from(self.projection_dim));
            map.entry("architectures").or_insert_with(|| {
                Value::from(vec![match self.kind {
                    CheckpointKind::DualEncoder => "VisionTextDualEncoderModel",
                    CheckpointKind::Clip => "CLIPModel",
                }])
            });
        }
        raw
    }
}

/// A tower's own config.json as it nests inside a dual encoder config: a whole
/// CLIP config contributes only its `sub` part (with the tower's model_type);
/// `architectures` and `_name_or_path` describe the source, not the tower.
fn tower_value(v: &Value, sub: &str, sub_type: &str) -> Value {
    let mut out = if v.get("model_type").and_then(Value::as_str) == Some("clip") {
        let mut s = v.get(sub).cloned().unwrap_or(Value::Object(Map::new()));
        if let Value::Object(m) = &mut s {
            m.insert("model_type".into(), Value::from(sub_type));
        }
        s
    } else {
        v.clone()
    };
    if let Value::Object(m) = &mut out {
        m.remove("architectures");
        m.remove("_name_or_path");
        m.remove("transformers_version");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<DualEncoderConfig> {
        DualEncoderConfig::from_value(v, Path::new("/m/config.json"))
    }

    #[test]
    fn defaults_follow_the_transformers_classes() {
        let c = parse(json!({"model_type": "vision-text-dual-encoder",
            "vision_config": {"model_type": "vit"}, "text_config": {"model_type": "roberta"}}))
        .unwrap();
        assert_eq!(c.projection_dim, 512);
        assert!((c.logit_scale_init_value - 2.6592).abs() < 1e-9);
        let VisionConfig::Vit(v) = &c.vision else {
            panic!("vit expected")
        };
        assert_eq!(
            (v.hidden_size, v.image_size.hw(), v.patch_size.hw()),
            (768, (224, 224), (16, 16))
        );
        let TextConfig::Roberta(t) = &c.text else {
            panic!("roberta expected")
        };
        assert_eq!((t.vocab_size, t.pad_token_id), (50265, Some(1)));
        assert_eq!(c.text.max_tokens(), 510);
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let e = parse(json!({"model_type": "vision-text-dual-encoder",
            "vision_config": {"model_type": "swin"}, "text_config": {"model_type": "bert"}}))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/m/config.json")
                && e.contains("vision_config.model_type")
                && e.contains("swin"),
            "{e}"
        );
        let e = parse(json!({"model_type": "vision-text-dual-encoder", "vision_config": {"model_type": "vit"}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("text_config") && e.contains("missing"), "{e}");
        let e = parse(json!({"model_type": "vision-text-dual-encoder",
            "vision_config": {"model_type": "vit", "hidden_size": "big"}, "text_config": {"model_type": "bert"}}))
        .unwrap_err()
        .to_string();
        assert!(e.contains("vision_config.hidden_size"), "{e}");
        let e = parse(json!({"model_type": "vision-text-dual-encoder",
            "vision_config": {"model_type": "vit"}, "text_config": {"model_type": "bert", "hidden_act": "mystery"}}))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("text_config.hidden_act") && e.contains("mystery"),
            "{e}"
        );
    }

    #[test]
    fn clip_is_a_dual_encoder_too() {
        let c = parse(json!({"model_type": "clip", "projection_dim": 16,
            "text_config": {"eos_token_id": 2, "hidden_size": 32, "num_attention_heads": 4},
            "vision_config": {"hidden_size": 32, "num_attention_heads": 4, "image_size": 32, "patch_size": 8}}))
        .unwrap();
        assert_eq!(c.kind, CheckpointKind::Clip);
        let TextConfig::Clip(t) = &c.text else {
            panic!()
        };
        assert_eq!(t.eos_token_id, 2);
        assert_eq!(c.vision.image_size(), (32, 32));
    }
}
