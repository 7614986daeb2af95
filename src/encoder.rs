//! A checkpoint ready to embed: the dual encoder plus the image processor and
//! tokenizer saved beside it. This is what the CLI and the daemon hold; it
//! turns files and strings into L2-normalised vectors, and says which model
//! made them (the fingerprint the store keys vectors by).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::device::TextWeights;
use crate::model::cpu::PanelWeight;
use crate::model::layers::Int8TextWeights;
use crate::model::{DualEncoder, ModelError, TokenInput};
use crate::preprocess::{
    DecodeLimits, ImageProcessor, Preprocessing, ProcessorError, Source, TextTokenizer,
    TokenizerError,
};

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{}: no tokenizer.json, so this checkpoint cannot embed text (copy a tokenizer into it)", dir.display())]
    NoTokenizer { dir: PathBuf },
    #[error("{}: the image processor makes {got_h}x{got_w} pixels but the vision tower takes {want_h}x{want_w}", dir.display())]
    SizeMismatch {
        dir: PathBuf,
        got_h: u32,
        got_w: u32,
        want_h: usize,
        want_w: usize,
    },
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = EncoderError> = std::result::Result<T, E>;

pub struct Encoder {
    model: DualEncoder,
    images: ImageProcessor,
    tokenizer: Option<TextTokenizer>,
    /// Changes while the daemon runs (a reload with new `[ingest]` limits).
    limits: std::sync::RwLock<DecodeLimits>,
    /// Exact unless the caller opts in to the fast path (the daemon does).
    preprocessing: Preprocessing,
    dir: PathBuf,
    fingerprint: String,
}

impl Encoder {
    /// Loads `dir` (config.json, weights, processor files).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::with_model(dir, DualEncoder::load(dir, device, dtype)?)
    }

    /// [`Self::load`], the text tower's dense weights held as `text` says
    /// (`--text-weights`). 8-bit weights need the CPU and an 8-bit vector
    /// kernel (AVX2 or AVX-512 VNNI); elsewhere the model keeps its
    /// dtype's, and says so.
    pub fn load_with(dir: &Path, device: &Device, dtype: DType, text: TextWeights) -> Result<Self> {
        let _int8 = match text {
            TextWeights::Dtype => None,
            TextWeights::Int8 if !device.is_cpu() => {
                tracing::warn!(
                    "text_weights = int8 applies to the CPU only: the text tower keeps {dtype:?} weights on {device:?} (set text_weights = \"dtype\" to say so)"
                );
                None
            }
            TextWeights::Int8 if !PanelWeight::int8_runs_fast() => {
                let level = crate::simd::level().name();
                tracing::warn!(
                    level,
                    "text_weights = int8 needs AVX2 or AVX-512 VNNI at the vector level in use, and that level is `{level}`: the text tower keeps {dtype:?} weights (on a CPU with AVX2, leave DUALSIGHT_CPU unset or at avx2 or above; elsewhere set text_weights = \"dtype\" to say so)"
                );
                None
            }
            TextWeights::Int8 => Some(Int8TextWeights::enter()),
        };
        Self::with_model(dir, DualEncoder::load(dir, device, dtype)?)
    }

    /// How the text tower holds its weights in fact: `Int8` only where
    /// [`Self::load_with`] could give it 8 bits.
    pub fn text_weights(&self) -> TextWeights {
        if self.model.text_quantized() {
            TextWeights::Int8
        } else {
            TextWeights::Dtype
        }
    }

    /// An encoder over `model` (already built, e.g. for training) with the
    /// processor files of `dir`.
    pub fn with_model(dir: &Path, model: DualEncoder) -> Result<Self> {
        let images = ImageProcessor::from_model_dir(dir)?;
        let (_, want_h, want_w) = model.image_shape();
        let (got_h, got_w) = images.output_size();
        if (got_h as usize, got_w as usize) != (want_h, want_w) {
            return Err(EncoderError::SizeMismatch {
                dir: dir.to_path_buf(),
                got_h,
                got_w,
                want_h,
                want_w,
            });
        }
        let tokenizer = if dir.join("tokenizer.json").is_file() {
            Some(TextTokenizer::from_model_dir(dir, model.max_tokens())?)
        } else {
            None
        };
        let fingerprint = fingerprint(dir)?;
        Ok(Self {
            model,
            images,
            tokenizer,
            limits: std::sync::RwLock::new(DecodeLimits::default()),
            preprocessing: Preprocessing::Exact,
            dir: dir.to_path_buf(),
            fingerprint,
        })
    }

    pub fn with_limits(self, limits: DecodeLimits) -> Self {
        self.set_limits(limits);
        self
    }
    /// New decode limits for the images preprocessed from now on.
    pub fn set_limits(&self, limits: DecodeLimits) {
        *self
            .limits
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }
    /// How files become pixels: [`Preprocessing::Exact`] (the default, what
    /// the transformers parity holds to) or [`Preprocessing::Fast`].
    pub fn with_preprocessing(mut self, preprocessing: Preprocessing) -> Self {
        self.preprocessing = preprocessing;
        self
    }
    pub fn preprocessing(&self) -> Preprocessing {
        self.preprocessing
    }
    pub fn image_processor(&self) -> &ImageProcessor {
        &self.images
    }
    pub fn model(&self) -> &DualEncoder {
        &self.model
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn limits(&self) -> DecodeLimits {
        self.limits
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
    /// Identifies the weights and processors: vectors from two fingerprints never mix.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    pub fn dim(&self) -> usize {
        self.model.projection_dim()
    }

    /// Tokenizes a batch (padded to the longest, truncated where transformers
    /// truncates: the tokenizer's `model_max_length`).
    pub fn tokenize(&self, texts: &[&str]) -> Result<TokenInput> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| EncoderError::NoTokenizer {
                dir: self.dir.clone(),
            })?;
        let b = tok.encode_batch(texts)?;
        Ok(TokenInput::new(
            &b.input_ids,
            &b.attention_mask,
            Some(&b.token_type_ids),
            b.batch,
            b.seq_len,
            self.model.device(),
        )?)
    }

    /// Normalised text embeddings, one per text.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let input = self.tokenize(texts)?;
        Ok(self
            .model
            .embed_texts(&input)?
            .to_vec2::<f32>()
            .map_err(ModelError::from)?)
    }

    /// Decodes and preprocesses one image (a file, or bytes in memory) to
    /// CHW floats within this encoder's limits, the way
    /// [`Self::preprocessing`] says (CPU only; safe to call from many threads).
    pub fn preprocess(&self, source: Source<'_>) -> Result<Vec<f32>> {
        Ok(self
            .images
            .run(source, &self.limits(), self.preprocessing)?)
    }

    /// [`Self::preprocess`], handing `keep` the decoded image (see
    /// [`ImageProcessor::run_keeping`]).
    pub fn preprocess_keeping(
        &self,
        source: Source<'_>,
        keep: &mut dyn FnMut(&image::RgbImage),
    ) -> Result<Vec<f32>> {
        Ok(self
            .images
            .run_keeping(source, &self.limits(), self.preprocessing, keep)?)
    }

    /// Normalised image embeddings for preprocessed images, one batch.
    pub fn embed_pixels(&self, pixels: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if pixels.is_empty() {
            return Ok(Vec::new());
        }
        let (c, h, w) = self.model.image_shape();
        let len = c * h * w;
        if let Some(bad) = pixels.iter().find(|p| p.len() != len) {
            return Err(EncoderError::Invalid(format!(
                "pixel buffer of {} values, expected {c}x{h}x{w} = {len}",
                bad.len()
            )));
        }
        let flat: Vec<f32> = pixels.iter().flatten().copied().collect();
        let px = Tensor::from_vec(flat, (pixels.len(), c, h, w), &Device::Cpu)
            .map_err(ModelError::from)?;
        Ok(self
            .model
            .embed_images(&px)?
            .to_vec2::<f32>()
            .map_err(ModelError::from)?)
    }

    /// Reads, decodes, preprocesses and embeds image files (errors name the file).
    pub fn embed_image_files(&self, paths: &[PathBuf]) -> Result<Vec<Vec<f32>>> {
        let pixels = paths
            .iter()
            .map(|p| self.preprocess(Source::Path(p)))
            .collect::<Result<Vec<_>>>()?;
        self.embed_pixels(&pixels)
    }
}

/// blake3 over the files that decide what a vector means: config, weights,
/// image processor. Weight files are hashed in full: two fine-tunes of one
/// architecture have the same size and must not share an index.
pub fn fingerprint(dir: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| EncoderError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n == "config.json"
                || n == "preprocessor_config.json"
                || n == "processor_config.json"
                || n.ends_with(".safetensors") && n.starts_with("model")
                || n == "pytorch_model.bin"
        })
        .collect();
    names.sort();
    for path in names {
        hasher.update(path.file_name().unwrap().to_string_lossy().as_bytes());
        // The weights were just mapped for loading, so this hashes the page
        // cache, in parallel.
        hasher
            .update_mmap_rayon(&path)
            .map_err(|source| EncoderError::Io {
                path: path.clone(),
                source,
            })?;
    }
    Ok(hasher.finalize().to_hex()[..16].to_string())
}
