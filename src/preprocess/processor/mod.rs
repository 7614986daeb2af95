//! The image processor of a checkpoint: its configuration, read from
//! `processor_config.json` (transformers 5, image processor nested under
//! `image_processor`) or `preprocessor_config.json` (top-level keys, older
//! saves), and the pipeline it describes, matching transformers' PIL backend
//! (`ViTImageProcessorPil`, `CLIPImageProcessorPil`, ...) value for value.
//!
//! Pipeline, as `PilBackend._preprocess` runs it on the RGB image `load_image`
//! returns: resize with Pillow (exact size, or shortest edge with `int()`
//! truncation of the long side), numpy centre crop (zero padding when the crop
//! is larger), rescale (`uint8 → float64 × factor → float32`), normalise
//! (`(x - mean) / std` in float32), channels first. Missing fields take the
//! class defaults of the named processor type, as transformers does; a type we
//! do not know gets no defaults, so every field it needs must be in the file.

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde_json::Value;

mod config;

pub use config::{ImageProcessorConfig, Size};

use super::decode::{self, DecodeError, DecodeLimits, Reduced};
use super::resize::{self, ResizeError};

/// Why a processor could not be built or an image not processed. Messages start
/// with the file (or directory) concerned.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{dir}: no image processor config, expected processor_config.json with an \"image_processor\" entry or preprocessor_config.json"
    )]
    Missing { dir: PathBuf },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
    #[error(
        "{path}: the image processor does not produce a fixed size ({what}); the vision tower needs one"
    )]
    NotFixedSize { path: PathBuf, what: String },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{path}: {source}")]
    Resize {
        path: String,
        #[source]
        source: ResizeError,
    },
}

/// Result alias for this module.
pub type Result<T, E = ProcessorError> = std::result::Result<T, E>;

/// How a file becomes pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preprocessing {
    /// Pillow's pipeline, as transformers runs it: full-size decode, one
    /// resize. What the parity tests hold to transformers.
    #[default]
    Exact,
    /// Large baseline JPEGs decoded at 1/4 or 1/8 scale in the DCT
    /// domain (keeping at least [`FAST_MARGIN`] times the resize target), then
    /// the same resize; everything else as `Exact`. Embeddings stay within
    /// cosine 0.995 of the exact ones (see BENCHMARKS.md).
    Fast,
}

/// The fast path keeps the reduced image at least this many times the resize
/// target on each side, so the resize after it still spans more than one
/// source pixel per output pixel. At 1.0, a 451×300 photo for a 32-pixel
/// model differed by 4.4 grey levels on average (the 8×8 block means then
/// dominate the filter); at 1.5, by 0.7. A 12 MP photo for a 224-pixel model
/// is still decoded at 1/8 (375 rows ≥ 336). Measured in
/// `benches/results/HISTORY.md`, "Decode and preprocess".
pub const FAST_MARGIN: f64 = 1.5;

/// Where an image to preprocess comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// A file, read and decoded.
    Path(&'a Path),
    /// Encoded bytes already in memory; `name` stands for their path in errors.
    Bytes { bytes: &'a [u8], name: &'a str },
}

impl Source<'_> {
    /// What errors call the image.
    pub fn name(&self) -> String {
        match self {
            Source::Path(p) => p.display().to_string(),
            Source::Bytes { name, .. } => (*name).to_string(),
        }
    }
}

/// A ready-to-run image processor with a fixed output size.
#[derive(Clone, Debug)]
pub struct ImageProcessor {
    config: ImageProcessorConfig,
    output: (u32, u32),
}

impl ImageProcessor {
    /// Reads the model directory's image processor config (see
    /// [`ImageProcessorConfig::from_model_dir`]).
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        Self::new(ImageProcessorConfig::from_model_dir(dir)?)
    }

    /// Checks that the pipeline has a fixed output size, as a vision tower needs.
    pub fn new(config: ImageProcessorConfig) -> Result<Self> {
        let Some(output) = config.fixed_output_size() else {
            let what = match (&config.size, config.do_resize) {
                (_, false) => "no resize and no centre crop".to_string(),
                (Some(size), true) => format!("resize to {} without a centre crop", size.to_json()),
                (None, true) => "no size".to_string(),
            };
            return Err(ProcessorError::NotFixedSize {
                path: config.source.clone(),
                what,
            });
        };
        if output.0 == 0 || output.1 == 0 {
            return Err(ProcessorError::NotFixedSize {
                path: config.source.clone(),
                what: format!("output size {}x{}", output.1, output.0),
            });
        }
        Ok(Self { config, output })
    }

    pub fn config(&self) -> &ImageProcessorConfig {
        &self.config
    }

    /// `(height, width)` of every output.
    pub fn output_size(&self) -> (u32, u32) {
        self.output
    }

    /// Number of floats [`ImageProcessor::preprocess`] returns: `3 * H * W`.
    pub fn output_len(&self) -> usize {
        3 * self.output.0 as usize * self.output.1 as usize
    }

    /// The effective config as JSON (see [`ImageProcessorConfig::to_json`]).
    pub fn config_json(&self) -> Value {
        self.config.to_json()
    }

    /// `pixel_values` for one image: `3 * H * W` floats, channels first.
    /// Fails only on an empty image.
    pub fn preprocess(&self, image: &RgbImage) -> Result<Vec<f32>> {
        self.preprocess_named(image, "image")
    }

    /// `pixel_values` for one image file or buffer, decoded within `limits`
    /// and preprocessed the way `mode` says: the one entry point from encoded
    /// bytes to a model's input.
    pub fn run(
        &self,
        source: Source<'_>,
        limits: &DecodeLimits,
        mode: Preprocessing,
    ) -> Result<Vec<f32>> {
        self.run_keeping(source, limits, mode, &mut |_| {})
    }

    /// [`Self::run`], handing `keep` the decoded image (orientation applied;
    /// at reduced scale on the fast path) before it is resized: the daemon
    /// makes its thumbnail from it instead of decoding the file twice.
    pub fn run_keeping(
        &self,
        source: Source<'_>,
        limits: &DecodeLimits,
        mode: Preprocessing,
        keep: &mut dyn FnMut(&RgbImage),
    ) -> Result<Vec<f32>> {
        match mode {
            Preprocessing::Exact => {
                let image = match source {
                    Source::Path(path) => decode::decode_path(path, limits)?,
                    Source::Bytes { bytes, name } => decode::decode_bytes(bytes, name, limits)?,
                };
                keep(&image);
                self.preprocess_named(&image, &source.name())
            }
            Preprocessing::Fast => {
                let reduced = self.decode_reduced(source, limits)?;
                keep(&reduced.image);
                self.preprocess_reduced(&reduced, &source.name())
            }
        }
    }

    /// The fast path's decode alone: the image it resizes and the scale it
    /// was decoded at (for benchmarks and tests).
    pub fn decode_reduced(&self, source: Source<'_>, limits: &DecodeLimits) -> Result<Reduced> {
        let min = |w, h| self.min_decode_size(w, h);
        Ok(match source {
            Source::Path(path) => decode::decode_path_reduced(path, limits, min)?,
            Source::Bytes { bytes, name } => {
                decode::decode_bytes_reduced(bytes, name, limits, min)?
            }
        })
    }

    /// The fast path's resize, rescale and normalise of a [`Reduced`] image:
    /// to the size the exact path would resize the full image to, so the
    /// crop (if any) takes the same part of the picture.
    pub fn preprocess_reduced(&self, reduced: &Reduced, name: &str) -> Result<Vec<f32>> {
        self.preprocess_sized(&reduced.image, reduced.full, name)
    }

    /// The smallest `(width, height)` a reduced decode of a `width × height`
    /// image may have: [`FAST_MARGIN`] times the resize target. `None` when
    /// the pipeline does not resize: a crop alone needs the original pixels.
    fn min_decode_size(&self, width: u32, height: u32) -> Option<(u32, u32)> {
        let c = &self.config;
        let size = c.size.as_ref().filter(|_| c.do_resize)?;
        let (h, w) = size.output_for(height, width);
        let keep = |v: u32| (f64::from(v) * FAST_MARGIN).ceil() as u32;
        Some((keep(w), keep(h)))
    }

    fn preprocess_named(&self, image: &RgbImage, name: &str) -> Result<Vec<f32>> {
        self.preprocess_sized(image, image.dimensions(), name)
    }

    /// The pipeline on `image`, with resize targets computed for an image of
    /// `full` = `(width, height)` (the image itself, or the full-size
    /// original of a reduced decode).
    fn preprocess_sized(&self, image: &RgbImage, full: (u32, u32), name: &str) -> Result<Vec<f32>> {
        let c = &self.config;
        let wrap = |source| ProcessorError::Resize {
            path: name.to_string(),
            source,
        };
        let resize_to = match (&c.size, c.do_resize) {
            (Some(size), true) => Some(size.output_for(full.1, full.0)),
            _ => None,
        };
        let crop = c.crop_size.filter(|_| c.do_center_crop);
        let current = match (resize_to, crop) {
            // Resize only what the crop keeps: same pixels, bounded work even
            // when a shortest-edge resize of a thin strip would be enormous.
            (Some((h, w)), Some((ch, cw))) => {
                resize::resize_center_crop(image, w, h, c.resample, cw, ch)
            }
            (Some((h, w)), None) => resize::resize(image, w, h, c.resample),
            (None, Some((ch, cw))) => resize::center_crop(image, cw, ch),
            (None, None) => Ok(image.clone()),
        }
        .map_err(wrap)?;
        if current.dimensions() != (self.output.1, self.output.0) {
            // Only reachable through an exact resize that `new` accepted.
            return Err(wrap(ResizeError::Empty {
                from_w: current.width(),
                from_h: current.height(),
                to_w: self.output.1,
                to_h: self.output.0,
            }));
        }
        Ok(self.to_chw(&current))
    }

    /// Rescale and normalise exactly as numpy does it in transformers:
    /// `(u8 as f64 * factor) as f32`, then `(x - mean_f32) / std_f32` in f32.
    fn to_chw(&self, image: &RgbImage) -> Vec<f32> {
        let c = &self.config;
        let plane = image.width() as usize * image.height() as usize;
        let mut out = vec![0f32; 3 * plane];
        // A lookup per channel: 256 inputs cover every pixel value.
        let tables: [[f32; 256]; 3] = std::array::from_fn(|ch| {
            let (mean, std) = (c.image_mean[ch] as f32, c.image_std[ch] as f32);
            std::array::from_fn(|v| {
                let x = if c.do_rescale {
                    (v as f64 * c.rescale_factor) as f32
                } else {
                    v as f32
                };
                if c.do_normalize { (x - mean) / std } else { x }
            })
        });
        for (i, px) in image.pixels().enumerate() {
            for ch in 0..3 {
                out[ch * plane + i] = tables[ch][usize::from(px.0[ch])];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
