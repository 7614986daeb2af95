//! The text side of preprocessing: a checkpoint's `tokenizer.json` run the way
//! transformers' `VisionTextDualEncoderProcessor(text=..., padding=True,
//! truncation=True)` runs it: special tokens added, each text truncated at the
//! tokenizer's `model_max_length` (special tokens included, from the side
//! `truncation_side` names), the batch right-padded (or left, per
//! `padding_side`) to its longest member with the pad token named in
//! `tokenizer_config.json` / `special_tokens_map.json`, or else in the
//! tokenizer's own padding block. Settings are read from `tokenizer_config.json`
//! first, then from a `tokenizer` block of `processor_config.json`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// Why a tokenizer could not be loaded or a batch not encoded. Messages start
/// with the file or directory concerned.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{dir}: no tokenizer.json, expected a fast (tokenizers) tokenizer file")]
    Missing { dir: PathBuf },
    #[error("{path}: cannot load tokenizer: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: pad_token: {message}")]
    PadToken { path: PathBuf, message: String },
    #[error("{path}: {key}: expected {expected}, got {got}")]
    Setting {
        path: PathBuf,
        key: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error(
        "{dir}: max_length {max_length} leaves no room for text, the tokenizer adds {special} special tokens: set model_max_length in tokenizer_config.json above {special}"
    )]
    MaxLength {
        dir: PathBuf,
        max_length: usize,
        special: usize,
    },
    #[error("{dir}: texts of different lengths need padding, but the tokenizer has no pad token")]
    NoPadToken { dir: PathBuf },
    #[error("{dir}: cannot tokenize: {message}")]
    Encode { dir: PathBuf, message: String },
}

/// Result alias for this module.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// A padded batch, row-major `[batch, seq_len]` like transformers' tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBatch {
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub batch: usize,
    pub seq_len: usize,
}

impl TokenBatch {
    /// Token ids of row `i`, padding included.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.input_ids[i * self.seq_len..(i + 1) * self.seq_len]
    }
}

/// transformers' `LARGE_INTEGER`: a `model_max_length` above it is the
/// "no limit" sentinel (`VERY_LARGE_INTEGER`, 1e30) a tokenizer saved without
/// one carries.
const UNSET_ABOVE: f64 = 1e20;

/// Where a tokenizer's truncation length comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncation {
    /// The tokenizer's `model_max_length`, exactly where transformers cuts.
    ModelMaxLength,
    /// No `model_max_length` was saved: the text tower's position table.
    PositionTable,
    /// `model_max_length` is beyond the position table, where transformers
    /// would fail on an overlong text: cut at the table instead.
    CappedAtPositionTable { model_max_length: usize },
}

/// A checkpoint's tokenizer, with truncation and batch padding configured.
pub struct TextTokenizer {
    dir: PathBuf,
    tokenizer: Tokenizer,
    pad_token_id: Option<u32>,
    max_length: usize,
    truncation: Truncation,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("dir", &self.dir)
            .field("pad_token_id", &self.pad_token_id)
            .field("max_length", &self.max_length)
            .field("truncation", &self.truncation)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` and the pad token, sides and
    /// `model_max_length` from `dir/tokenizer_config.json` (or the `tokenizer`
    /// block of `dir/processor_config.json`) and `dir/special_tokens_map.json`.
    /// `positions` is the longest sequence the text tower takes: texts are cut
    /// at `model_max_length`, or at `positions` when that is smaller or unset.
    pub fn from_model_dir(dir: &Path, positions: usize) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            return Err(TokenizerError::Missing {
                dir: dir.to_path_buf(),
            });
        }
        let mut tokenizer = Tokenizer::from_file(&file).map_err(|e| TokenizerError::Load {
            path: file.clone(),
            message: e.to_string(),
        })?;
        let config = match read_optional_json(&dir.join("tokenizer_config.json"))? {
            Some(found) => Some(found),
            None => processor_tokenizer_block(dir)?,
        };
        let special_map = read_optional_json(&dir.join("special_tokens_map.json"))?;
        let (max_length, truncation) = match model_max_length(&config)? {
            Some(m) if m <= positions => (m, Truncation::ModelMaxLength),
            Some(m) => {
                tracing::warn!(
                    dir = %dir.display(),
                    model_max_length = m,
                    positions,
                    "tokenizer model_max_length exceeds the text tower's positions: texts are cut at the positions"
                );
                (
                    positions,
                    Truncation::CappedAtPositionTable {
                        model_max_length: m,
                    },
                )
            }
            // The one place we differ from transformers: with no limit saved it
            // does not truncate and the tower fails on an overlong text; a
            // daemon must answer any query, so we cut at the position table.
            None => (positions, Truncation::PositionTable),
        };

        let pad_token = pad_token(&config, &special_map)?
            .or_else(|| tokenizer.get_padding().map(|p| p.pad_token.clone()));
        let pad_token_id = match &pad_token {
            Some(token) => {
                Some(
                    tokenizer
                        .token_to_id(token)
                        .ok_or_else(|| TokenizerError::PadToken {
                            path: dir.to_path_buf(),
                            message: format!(
                                "{token:?} is not in the vocabulary of {}",
                                file.display()
                            ),
                        })?,
                )
            }
            None => None,
        };
        // As transformers' fast tokenizers: a side the config does not name
        // comes from tokenizer.json's own padding / truncation block.
        let side = |key: &str, saved: Option<bool>| match config
            .as_ref()
            .and_then(|(_, v)| v.get(key))
            .and_then(Value::as_str)
        {
            Some(s) => s == "left",
            None => saved.unwrap_or(false),
        };
        let pad_left = side(
            "padding_side",
            tokenizer
                .get_padding()
                .map(|p| matches!(p.direction, PaddingDirection::Left)),
        );
        let truncate_left = side(
            "truncation_side",
            tokenizer
                .get_truncation()
                .map(|t| matches!(t.direction, TruncationDirection::Left)),
        );

        // The tokenizer's own truncation subtracts the special tokens from
        // max_length in unsigned arithmetic: check first.
        tokenizer
            .with_truncation(None)
            .map_err(|e| encode_err(dir, e))?;
        tokenizer.with_padding(None);
        let special = tokenizer
            .encode("", true)
            .map_err(|e| encode_err(dir, e))?
            .len();
        if max_length == 0 || max_length < special {
            return Err(TokenizerError::MaxLength {
                dir: dir.to_path_buf(),
                max_length,
                special,
            });
        }
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: if truncate_left {
                    TruncationDirection::Left
                } else {
                    TruncationDirection::Right
                },
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| encode_err(dir, e))?;
        if let (Some(id), Some(token)) = (pad_token_id, pad_token) {
            tokenizer.with_padding(Some(PaddingParams {
                strategy: PaddingStrategy::BatchLongest,
                direction: if pad_left {
                    PaddingDirection::Left
                } else {
                    PaddingDirection::Right
                },
                pad_to_multiple_of: None,
                pad_id: id,
                pad_type_id: 0,
                pad_token: token,
            }));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            pad_token_id,
            max_length,
            truncation,
        })
    }

    /// The pad token's id, if the tokenizer has one.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }

    /// The truncation length this tokenizer was built with (special tokens included).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Where [`Self::max_length`] came from.
    pub fn truncation(&self) -> Truncation {
        self.truncation
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Encodes a batch (an empty text gives just the special tokens). An empty
    /// batch gives an empty `TokenBatch`.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<TokenBatch> {
        // One text (a query) is encoded on this thread: `encode_batch` hands
        // even one to rayon's pool, and waking a sleeping worker costs more
        // than the encoding. Padding and truncation apply to both alike.
        let encodings = match texts {
            [text] => self.tokenizer.encode(*text, true).map(|e| vec![e]),
            _ => self.tokenizer.encode_batch(texts.to_vec(), true),
        }
        .map_err(|e| encode_err(&self.dir, e))?;
        let seq_len = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        if encodings.iter().any(|e| e.len() != seq_len) {
            return Err(TokenizerError::NoPadToken {
                dir: self.dir.clone(),
            });
        }
        let mut batch = TokenBatch {
            input_ids: Vec::with_capacity(texts.len() * seq_len),
            attention_mask: Vec::with_capacity(texts.len() * seq_len),
            token_type_ids: Vec::with_capacity(texts.len() * seq_len),
            batch: texts.len(),
            seq_len,
        };
        for e in &encodings {
            batch.input_ids.extend_from_slice(e.get_ids());
            batch
                .attention_mask
                .extend_from_slice(e.get_attention_mask());
            batch.token_type_ids.extend_from_slice(e.get_type_ids());
        }
        Ok(batch)
    }
}

fn encode_err(dir: &Path, e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Encode {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    }
}

fn read_optional_json(path: &Path) -> Result<Option<(PathBuf, Value)>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let value = serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Some((path.to_path_buf(), value)))
}

/// transformers 5 may keep the tokenizer's settings in `processor_config.json`
/// under `tokenizer`; read there only when no `tokenizer_config.json` exists.
fn processor_tokenizer_block(dir: &Path) -> Result<Option<(PathBuf, Value)>> {
    Ok(
        read_optional_json(&dir.join("processor_config.json"))?.and_then(|(path, value)| {
            value
                .get("tokenizer")
                .filter(|v| v.is_object())
                .map(|block| (path, block.clone()))
        }),
    )
}

/// `model_max_length` (or the legacy `max_len`) as a whole number; `None`
/// when unset, `null`, or transformers' "no limit" sentinel.
fn model_max_length(config: &Option<(PathBuf, Value)>) -> Result<Option<usize>> {
    let Some((path, value)) = config else {
        return Ok(None);
    };
    // transformers: `pop("model_max_length", pop("max_len", None))`, so a
    // `model_max_length` key, even `null`, hides `max_len`.
    let Some((key, v)) = ["model_max_length", "max_len"]
        .into_iter()
        .find_map(|k| value.get(k).map(|v| (k, v)))
    else {
        return Ok(None);
    };
    if v.is_null() {
        return Ok(None);
    }
    let bad = || TokenizerError::Setting {
        path: path.clone(),
        key,
        expected: "a positive whole number",
        got: v.to_string(),
    };
    if let Some(n) = v.as_u64() {
        return usize::try_from(n).map(Some).map_err(|_| bad());
    }
    match v.as_f64() {
        Some(f) if f > UNSET_ABOVE => Ok(None),
        Some(f) if f >= 0.0 && f.fract() == 0.0 => Ok(Some(f as usize)),
        _ => Err(bad()),
    }
}

/// `pad_token` from the first file that sets it: a string, or an `AddedToken`
/// dict with a `content` string. `null` means unset.
fn pad_token(
    config: &Option<(PathBuf, Value)>,
    special_map: &Option<(PathBuf, Value)>,
) -> Result<Option<String>> {
    for (path, value) in [config, special_map].into_iter().flatten() {
        match value.get("pad_token") {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => return Ok(Some(s.clone())),
            Some(Value::Object(map)) => match map.get("content") {
                Some(Value::String(s)) => return Ok(Some(s.clone())),
                _ => {
                    return Err(TokenizerError::PadToken {
                        path: path.clone(),
                        message: "expected a string or an object with a \"content\" string".into(),
                    });
                }
            },
            Some(other) => {
                return Err(TokenizerError::PadToken {
                    path: path.clone(),
                    message: format!("expected a string or an AddedToken object, got {other}"),
                });
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::fixtures;

    fn rows(v: &Value) -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
            })
            .collect()
    }

    /// transformers' `tokenizer(texts, padding=True, truncation=True,
    /// max_length=N)` for a WordPiece (BERT) and a byte-level BPE (RoBERTa,
    /// pad id 1) tokenizer: empty text, truncation, casing, unknown words.
    #[test]
    fn matches_transformers_batches() {
        for (name, entry) in fixtures::index()["tokenizer_batches"].as_object().unwrap() {
            let dir = fixtures::root().join(entry["dir"].as_str().unwrap());
            let max_length = entry["max_length"].as_u64().unwrap() as usize;
            let tok = TextTokenizer::from_model_dir(&dir, max_length).unwrap();
            assert_eq!(
                tok.pad_token_id().map(u64::from),
                entry["pad_token_id"].as_u64(),
                "{name}"
            );
            let texts: Vec<&str> = entry["texts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            let batch = tok.encode_batch(&texts).unwrap();
            assert_eq!(batch.batch, texts.len());
            assert_eq!(batch.input_ids, rows(&entry["input_ids"]), "{name}");
            assert_eq!(
                batch.attention_mask,
                rows(&entry["attention_mask"]),
                "{name}"
            );
            assert_eq!(
                batch.token_type_ids,
                rows(&entry["token_type_ids"]),
                "{name}"
            );
            assert_eq!(batch.input_ids.len(), batch.batch * batch.seq_len);
            assert!(batch.seq_len <= max_length);
            let single = tok.encode_batch(&texts[..1]).unwrap();
            let expected: Vec<u32> = entry["single_input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(single.input_ids, expected, "{name}");
            assert_eq!(single.row(0), &expected[..]);
            // Each text alone (a query's path, not the batch's) is its row
            // of the batch less the padding.
            for (i, text) in texts.iter().enumerate() {
                let alone = tok.encode_batch(&[text]).unwrap();
                let row = i * batch.seq_len..(i + 1) * batch.seq_len;
                let kept: Vec<u32> = batch.input_ids[row.clone()]
                    .iter()
                    .zip(&batch.attention_mask[row])
                    .filter(|&(_, &m)| m == 1)
                    .map(|(&id, _)| id)
                    .collect();
                assert_eq!(alone.input_ids, kept, "{name}: text {i} alone");
                assert!(alone.attention_mask.iter().all(|&m| m == 1), "{name}");
            }
            let empty = tok.encode_batch(&[]).unwrap();
            assert_eq!((empty.batch, empty.seq_len), (0, 0));
        }
    }

    fn copy_bert(to: &Path) {
        let from = fixtures::dir().join("models/clip_bert");
        std::fs::copy(from.join("tokenizer.json"), to.join("tokenizer.json")).unwrap();
    }

    #[test]
    fn pad_token_as_added_token_dict_or_special_tokens_map() {
        let dir = tempfile::tempdir().unwrap();
        copy_bert(dir.path());
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"pad_token": {"__type": "AddedToken", "content": "[MASK]", "lstrip": false}}"#,
        )
        .unwrap();
        let tok = TextTokenizer::from_model_dir(dir.path(), 16).unwrap();
        assert_eq!(tok.pad_token_id(), Some(4));
        let batch = tok.encode_batch(&["a cat", ""]).unwrap();
        assert_eq!(batch.row(1), &[2, 3, 4, 4]);

        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"pad_token": null, "padding_side": "left"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("special_tokens_map.json"),
            r#"{"pad_token": "[UNK]"}"#,
        )
        .unwrap();
        let tok = TextTokenizer::from_model_dir(dir.path(), 16).unwrap();
        assert_eq!(tok.pad_token_id(), Some(1));
        let batch = tok.encode_batch(&["a cat", ""]).unwrap();
        assert_eq!(batch.row(1), &[1, 1, 2, 3]);
        assert_eq!(&batch.attention_mask[4..], &[0, 0, 1, 1]);
    }

    #[test]
    fn no_pad_token_fails_only_when_padding_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        copy_bert(dir.path());
        let tok = TextTokenizer::from_model_dir(dir.path(), 16).unwrap();
        assert_eq!(tok.pad_token_id(), None);
        assert!(tok.encode_batch(&["a cat"]).is_ok());
        let err = tok.encode_batch(&["a cat", ""]).unwrap_err();
        assert!(err.to_string().contains("no pad token"), "{err}");
    }

    /// Writes `tokenizer_config.json` and returns the tokenizer for a
    /// 64-position tower.
    fn with_config(dir: &Path, config: &str) -> Result<TextTokenizer> {
        std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
        TextTokenizer::from_model_dir(dir, 64)
    }

    #[test]
    fn truncates_at_model_max_length_below_the_position_table() {
        let dir = tempfile::tempdir().unwrap();
        copy_bert(dir.path());
        let long = "a photo of a cat ".repeat(50);
        let tok = with_config(
            dir.path(),
            r#"{"model_max_length": 24, "pad_token": "[PAD]"}"#,
        )
        .unwrap();
        assert_eq!(tok.max_length(), 24);
        assert_eq!(tok.truncation(), Truncation::ModelMaxLength);
        let b = tok.encode_batch(&[&long, "a cat"]).unwrap();
        assert_eq!(b.seq_len, 24);
        // Cut on the right: [CLS] first, [SEP] last, the text's start kept.
        let full = tok.inner().encode("a photo of a cat", false).unwrap();
        assert_eq!(b.row(0)[0], 2);
        assert_eq!(b.row(0)[23], 3);
        assert_eq!(&b.row(0)[1..1 + full.len()], full.get_ids());

        let tok = with_config(
            dir.path(),
            r#"{"model_max_length": 24, "truncation_side": "left"}"#,
        )
        .unwrap();
        let text = format!("{long} rocket");
        let b = tok.encode_batch(&[&text]).unwrap();
        let tail = tok.inner().encode("rocket", false).unwrap();
        assert_eq!(b.seq_len, 24);
        assert_eq!(&b.row(0)[23 - tail.len()..23], tail.get_ids());
    }

    /// A side the config does not name comes from tokenizer.json's own
    /// truncation and padding blocks, as transformers' fast tokenizers do.
    #[test]
    fn sides_fall_back_to_the_tokenizer_json_blocks() {
        let dir = tempfile::tempdir().unwrap();
        copy_bert(dir.path());
        let path = dir.path().join("tokenizer.json");
        let mut json: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json["truncation"] = serde_json::json!({
            "direction": "Left", "max_length": 512, "strategy": "LongestFirst", "stride": 0
        });
        json["padding"] = serde_json::json!({
            "strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": null,
            "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"
        });
        std::fs::write(&path, json.to_string()).unwrap();
        let tok = with_config(dir.path(), r#"{"model_max_length": 8}"#).unwrap();
        let text = format!("{} rocket", "a cat ".repeat(20));
        let b = tok.encode_batch(&[&text, "a"]).unwrap();
        let tail = tok.inner().encode("rocket", false).unwrap();
        assert_eq!(
            &b.row(0)[7 - tail.len()..7],
            tail.get_ids(),
            "cut on the left"
        );
        assert_eq!(b.row(1)[0], 0, "padded on the left");
        // The config, where it names a side, wins.
        let tok = with_config(
            dir.path(),
            r#"{"model_max_length": 8, "truncation_side": "right", "padding_side": "right"}"#,
        )
        .unwrap();
        let b = tok.encode_batch(&[&text, "a"]).unwrap();
        assert_eq!(b.row(0)[1], tok.inner().token_to_id("a").unwrap());
        assert_eq!(b.row(1)[7], 0);
    }

    #[test]
    fn without_model_max_length_a_long_text_is_cut_at_the_positions() {
        let dir = tempfile::tempdir().unwrap();
        copy_bert(dir.path());
        let words = "cat ".repeat(2000);
        // Unset, null, and transformers' "no limit" sentinel (1e30).
        for config in [
            "{}",
            r#"{"model_max_length": null}"#,
            r#"{"model_max_length": 1000000000000000019884624838656}"#,
        ] {
            let tok = with_config(dir.path(), config).unwrap();
            assert_eq!(tok.truncation(), Truncation::PositionTable, "{config}");
            assert_eq!(tok.encode_batch(&[&words]).unwrap().seq_len, 64, "{config}");
        }
        std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
        let tok = TextTokenizer::from_model_dir(dir.path(), 64).unwrap();
        assert_eq!(tok.truncation(), Truncation::PositionTable);
        assert_eq!(tok.encode_batch(&[&words]).unwrap().seq_len, 64);
    }

    #[test]
    fn model_max_length_beyond_the_positions_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        copy_bert(dir.path());
        let tok = with_config(dir.path(), r#"{"model_max_length": 512}"#).unwrap();
        assert_eq!(tok.max_length(), 64);
        assert_eq!(
            tok.truncation(),
            Truncation::CappedAtPositionTable {
                model_max_length: 512
            }
        );
        let words = "cat ".repeat(2000);
        assert_eq!(tok.encode_batch(&[&words]).unwrap().seq_len, 64);
        // Equal to the table is transformers' own cut, not a cap.
        let tok = with_config(dir.path(), r#"{"model_max_length": 64}"#).unwrap();
        assert_eq!(tok.truncation(), Truncation::ModelMaxLength);
        // The legacy key is read too, unless model_max_length is there, even null.
        let tok = with_config(dir.path(), r#"{"max_len": 10}"#).unwrap();
        assert_eq!(tok.max_length(), 10);
        let tok = with_config(dir.path(), r#"{"model_max_length": null, "max_len": 10}"#).unwrap();
        assert_eq!(tok.truncation(), Truncation::PositionTable);
    }

    #[test]
    fn processor_config_tokenizer_block_is_read_without_tokenizer_config() {
        let dir = tempfile::tempdir().unwrap();
        copy_bert(dir.path());
        std::fs::write(
            dir.path().join("processor_config.json"),
            r#"{"image_processor": {}, "tokenizer": {"model_max_length": 12, "truncation_side": "left", "pad_token": "[PAD]"}}"#,
        )
        .unwrap();
        let tok = TextTokenizer::from_model_dir(dir.path(), 64).unwrap();
        assert_eq!(tok.max_length(), 12);
        assert_eq!(tok.pad_token_id(), Some(0));
        let b = tok.encode_batch(&[&"cat ".repeat(40), "a"]).unwrap();
        assert_eq!(b.seq_len, 12);
        // tokenizer_config.json, where present, is the one transformers reads.
        let tok = with_config(dir.path(), r#"{"model_max_length": 20}"#).unwrap();
        assert_eq!(tok.max_length(), 20);
    }

    #[test]
    fn a_malformed_model_max_length_names_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        copy_bert(dir.path());
        for bad in [r#""long""#, "-3", "12.5", "[24]"] {
            let err = with_config(dir.path(), &format!(r#"{{"model_max_length": {bad}}}"#))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(
                    "tokenizer_config.json: model_max_length: expected a positive whole number"
                ),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn errors_name_the_directory_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = TextTokenizer::from_model_dir(dir.path(), 16).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&dir.path().display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("no tokenizer.json"), "{err}");

        copy_bert(dir.path());
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"pad_token": "<nope>"}"#,
        )
        .unwrap();
        let err = TextTokenizer::from_model_dir(dir.path(), 16).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"<nope>\" is not in the vocabulary"),
            "{err}"
        );

        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"pad_token": 7}"#,
        )
        .unwrap();
        let err = TextTokenizer::from_model_dir(dir.path(), 16).unwrap_err();
        assert!(
            err.to_string().contains("tokenizer_config.json: pad_token"),
            "{err}"
        );

        std::fs::write(dir.path().join("tokenizer_config.json"), "{}").unwrap();
        let err = TextTokenizer::from_model_dir(dir.path(), 1).unwrap_err();
        assert!(
            err.to_string().contains("max_length 1 leaves no room"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("set model_max_length in tokenizer_config.json above 2"),
            "{err}"
        );
        assert!(TextTokenizer::from_model_dir(dir.path(), 2).is_ok());

        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        let err = TextTokenizer::from_model_dir(dir.path(), 16).unwrap_err();
        assert!(
            err.to_string()
                .contains("tokenizer.json: cannot load tokenizer"),
            "{err}"
        );
    }
}
