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
use serde_json::{Map, Value, json};

use super::decode::{self, DecodeError, DecodeLimits, Reduced};
use super::resize::{self, Filter, ResizeError};

/// transformers' `IMAGENET_STANDARD_MEAN` / `_STD` (ViT, DeiT, BEiT defaults).
const IMAGENET_STANDARD: [f64; 3] = [0.5, 0.5, 0.5];
/// transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`.
const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

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
/// is still decoded at 1/8 (375 rows ≥ 336). Measured in BENCHMARKS.md.
pub const FAST_MARGIN: f64 = 1.5;

/// The resize target, as transformers' size dictionaries express it.
#[derive(Clone, Debug, PartialEq)]
pub enum Size {
    /// `{"height": h, "width": w}` (or a legacy int with `default_to_square`).
    Exact { height: u32, width: u32 },
    /// `{"shortest_edge": s}` (plus an optional `"longest_edge"` cap).
    ShortestEdge { shortest: u32, longest: Option<u32> },
    /// `{"max_height": h, "max_width": w}`: fit inside, keeping the aspect ratio.
    MaxHeightWidth { max_height: u32, max_width: u32 },
}

impl Size {
    /// Output `(height, width)` for an input of `(height, width)`, with
    /// transformers' rounding (Python `int()` truncation, `round()` half to even).
    pub fn output_for(&self, height: u32, width: u32) -> (u32, u32) {
        let (h, w) = (f64::from(height), f64::from(width));
        match *self {
            Size::Exact { height, width } => (height, width),
            // `get_resize_output_image_size(default_to_square=False)`.
            Size::ShortestEdge {
                shortest,
                longest: None,
            } => {
                let (short, long) = if width <= height { (w, h) } else { (h, w) };
                let new_long = (f64::from(shortest) * long / short) as u32;
                if width <= height {
                    (new_long, shortest)
                } else {
                    (shortest, new_long)
                }
            }
            // `get_size_with_aspect_ratio(image_size, shortest_edge, longest_edge)`.
            Size::ShortestEdge {
                shortest,
                longest: Some(max_size),
            } => {
                let mut size = shortest;
                let mut raw_size = None;
                let (min_o, max_o) = (h.min(w), h.max(w));
                if max_o / min_o * f64::from(size) > f64::from(max_size) {
                    let raw = f64::from(max_size) * min_o / max_o;
                    raw_size = Some(raw);
                    size = raw.round_ties_even() as u32;
                }
                if (height <= width && height == size) || (width <= height && width == size) {
                    (height, width)
                } else if width < height {
                    let oh = match raw_size {
                        Some(raw) => raw * h / w,
                        None => f64::from(size) * h / w,
                    };
                    (oh as u32, size)
                } else {
                    let ow = match raw_size {
                        Some(raw) => raw * w / h,
                        None => f64::from(size) * w / h,
                    };
                    (size, ow as u32)
                }
            }
            // `get_image_size_for_max_height_width`.
            Size::MaxHeightWidth {
                max_height,
                max_width,
            } => {
                let scale = (f64::from(max_height) / h).min(f64::from(max_width) / w);
                ((h * scale) as u32, (w * scale) as u32)
            }
        }
    }

    fn to_json(&self) -> Value {
        match *self {
            Size::Exact { height, width } => json!({"height": height, "width": width}),
            Size::ShortestEdge {
                shortest,
                longest: None,
            } => json!({"shortest_edge": shortest}),
            Size::ShortestEdge {
                shortest,
                longest: Some(longest),
            } => json!({"shortest_edge": shortest, "longest_edge": longest}),
            Size::MaxHeightWidth {
                max_height,
                max_width,
            } => json!({"max_height": max_height, "max_width": max_width}),
        }
    }
}

/// The image processors whose class defaults we know (transformers 5.24,
/// `models/*/image_processing_pil_*.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Vit,
    Clip,
    Deit,
    Beit,
}

impl Family {
    /// `ViTImageProcessor`, `ViTImageProcessorPil`, `ViTImageProcessorFast`,
    /// `ViTFeatureExtractor`, ... to their family.
    fn from_type(name: &str) -> Option<Family> {
        let base = name
            .strip_suffix("Pil")
            .or_else(|| name.strip_suffix("Fast"))
            .unwrap_or(name);
        let model = base
            .strip_suffix("ImageProcessor")
            .or_else(|| base.strip_suffix("FeatureExtractor"))?;
        Some(match model {
            "ViT" => Family::Vit,
            "CLIP" => Family::Clip,
            "DeiT" => Family::Deit,
            "Beit" => Family::Beit,
            _ => return None,
        })
    }

    /// `default_to_square` decides what a bare int `size` means.
    fn default_to_square(self) -> bool {
        self != Family::Clip
    }

    fn defaults(self) -> Defaults {
        let square = |n| Size::Exact {
            height: n,
            width: n,
        };
        match self {
            Family::Vit => Defaults {
                size: square(224),
                resample: Filter::Bilinear,
                do_center_crop: false,
                crop_size: None,
                mean: IMAGENET_STANDARD,
                std: IMAGENET_STANDARD,
            },
            Family::Clip => Defaults {
                size: Size::ShortestEdge {
                    shortest: 224,
                    longest: None,
                },
                resample: Filter::Bicubic,
                do_center_crop: true,
                crop_size: Some((224, 224)),
                mean: CLIP_MEAN,
                std: CLIP_STD,
            },
            Family::Deit => Defaults {
                size: square(256),
                resample: Filter::Bicubic,
                do_center_crop: true,
                crop_size: Some((224, 224)),
                mean: IMAGENET_STANDARD,
                std: IMAGENET_STANDARD,
            },
            Family::Beit => Defaults {
                size: square(224),
                resample: Filter::Bicubic,
                do_center_crop: false,
                crop_size: Some((224, 224)),
                mean: IMAGENET_STANDARD,
                std: IMAGENET_STANDARD,
            },
        }
    }
}

/// Class defaults that differ between families; the rest (`do_resize`,
/// `do_rescale`, `do_normalize` true, `rescale_factor` 1/255) are shared.
struct Defaults {
    size: Size,
    resample: Filter,
    do_center_crop: bool,
    crop_size: Option<(u32, u32)>,
    mean: [f64; 3],
    std: [f64; 3],
}

/// An image processor's settings, with defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessorConfig {
    /// The file it was read from.
    pub source: PathBuf,
    /// `image_processor_type` (or legacy `feature_extractor_type`), if given.
    pub processor_type: Option<String>,
    pub do_resize: bool,
    /// `None` only when `do_resize` is false and no size was given.
    pub size: Option<Size>,
    pub resample: Filter,
    pub do_center_crop: bool,
    /// `(height, width)`; `None` only when `do_center_crop` is false and none given.
    pub crop_size: Option<(u32, u32)>,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    /// Kept for round trips; decoding always yields RGB.
    pub do_convert_rgb: Option<bool>,
}

impl ImageProcessorConfig {
    /// Finds and parses the image processor config in a model directory:
    /// `processor_config.json`'s `image_processor` entry first (as
    /// transformers does), else `preprocessor_config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let nested = dir.join("processor_config.json");
        if nested.is_file() {
            let value = read_json(&nested)?;
            if let Some(inner) = value.get("image_processor") {
                let Value::Object(map) = inner else {
                    return Err(field_err(
                        &nested,
                        "image_processor",
                        "expected an object",
                        inner,
                    ));
                };
                return Self::from_map(map, &nested);
            }
        }
        let legacy = dir.join("preprocessor_config.json");
        if legacy.is_file() {
            let value = read_json(&legacy)?;
            let Value::Object(map) = &value else {
                return Err(ProcessorError::Field {
                    path: legacy,
                    field: "(top level)",
                    message: "expected a JSON object".into(),
                });
            };
            return Self::from_map(map, &legacy);
        }
        Err(ProcessorError::Missing {
            dir: dir.to_path_buf(),
        })
    }

    /// Parses the image processor's keys; `path` is named in errors.
    pub fn from_map(map: &Map<String, Value>, path: &Path) -> Result<Self> {
        let f = Fields { map, path };
        let processor_type = match f.get("image_processor_type") {
            Some(_) => f.string("image_processor_type")?,
            None => f.string("feature_extractor_type")?,
        };
        let family = processor_type.as_deref().and_then(Family::from_type);
        let defaults = family.map(Family::defaults);
        let type_name = processor_type.as_deref().unwrap_or("(none)");
        let no_default = |field: &'static str| ProcessorError::Field {
            path: path.to_path_buf(),
            field,
            message: format!("missing, and processor type {type_name} has no default for it"),
        };
        let known = defaults.is_some();
        let flag = |name: &'static str, default: bool| -> Result<bool> {
            match f.bool(name)? {
                Some(v) => Ok(v),
                None if known => Ok(default),
                None => Err(no_default(name)),
            }
        };

        let do_resize = flag("do_resize", true)?;
        let default_to_square = f
            .bool("default_to_square")?
            .unwrap_or(family.is_none_or(Family::default_to_square));
        let size = match f.size("size", default_to_square)? {
            Some(size) => Some(size),
            None => defaults.as_ref().map(|d| d.size.clone()),
        };
        if do_resize && size.is_none() {
            return Err(no_default("size"));
        }
        let resample = match f.get("resample") {
            Some(v) => {
                let code = v.as_i64().ok_or_else(|| {
                    field_err(path, "resample", "expected a PIL resampling number 0-5", v)
                })?;
                Filter::from_pil(code).ok_or_else(|| {
                    field_err(
                        path,
                        "resample",
                        "unsupported resampling filter, expected 0 (NEAREST), 1 (LANCZOS), 2 (BILINEAR), 3 (BICUBIC), 4 (BOX) or 5 (HAMMING)",
                        v,
                    )
                })?
            }
            None => match &defaults {
                Some(d) => d.resample,
                // transformers' PIL backend resizes with BILINEAR when unset.
                None => Filter::Bilinear,
            },
        };
        let do_center_crop = match f.bool("do_center_crop")? {
            Some(v) => v,
            // An unset flag is falsy in transformers' `if do_center_crop:`.
            None => defaults.as_ref().is_some_and(|d| d.do_center_crop),
        };
        let crop_size = match f.size("crop_size", true)? {
            Some(Size::Exact { height, width }) => Some((height, width)),
            Some(_) => {
                return Err(ProcessorError::Field {
                    path: path.to_path_buf(),
                    field: "crop_size",
                    message: "expected {\"height\", \"width\"} or an int".into(),
                });
            }
            None => defaults.as_ref().and_then(|d| d.crop_size),
        };
        if do_center_crop && crop_size.is_none() {
            return Err(no_default("crop_size"));
        }
        let do_rescale = flag("do_rescale", true)?;
        let rescale_factor = f.number("rescale_factor")?.unwrap_or(1.0 / 255.0);
        let do_normalize = flag("do_normalize", true)?;
        let image_mean = match f.triple("image_mean")? {
            Some(v) => v,
            None => match &defaults {
                Some(d) => d.mean,
                None if !do_normalize => [0.0; 3],
                None => return Err(no_default("image_mean")),
            },
        };
        let image_std = match f.triple("image_std")? {
            Some(v) => v,
            None => match &defaults {
                Some(d) => d.std,
                None if !do_normalize => [1.0; 3],
                None => return Err(no_default("image_std")),
            },
        };
        if do_normalize && image_std.contains(&0.0) {
            return Err(ProcessorError::Field {
                path: path.to_path_buf(),
                field: "image_std",
                message: "contains 0, which would divide by zero".into(),
            });
        }
        let do_convert_rgb = f.bool("do_convert_rgb")?;
        Ok(Self {
            source: path.to_path_buf(),
            processor_type,
            do_resize,
            size,
            resample,
            do_center_crop,
            crop_size,
            do_rescale,
            rescale_factor,
            do_normalize,
            image_mean,
            image_std,
            do_convert_rgb,
        })
    }

    /// The pipeline's output `(height, width)` when it does not depend on the
    /// input: the crop size, or an exact resize. `None` otherwise.
    pub fn fixed_output_size(&self) -> Option<(u32, u32)> {
        if self.do_center_crop {
            return self.crop_size;
        }
        match (&self.size, self.do_resize) {
            (Some(Size::Exact { height, width }), true) => Some((*height, *width)),
            _ => None,
        }
    }

    /// The config as transformers would save it (`preprocessor_config.json`
    /// keys), defaults made explicit.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        if let Some(t) = &self.processor_type {
            map.insert("image_processor_type".into(), json!(t));
        }
        map.insert("do_resize".into(), json!(self.do_resize));
        if let Some(size) = &self.size {
            map.insert("size".into(), size.to_json());
        }
        map.insert("resample".into(), json!(self.resample.pil_code()));
        map.insert("do_center_crop".into(), json!(self.do_center_crop));
        if let Some((height, width)) = self.crop_size {
            map.insert(
                "crop_size".into(),
                json!({"height": height, "width": width}),
            );
        }
        map.insert("do_rescale".into(), json!(self.do_rescale));
        map.insert("rescale_factor".into(), json!(self.rescale_factor));
        map.insert("do_normalize".into(), json!(self.do_normalize));
        map.insert("image_mean".into(), json!(self.image_mean));
        map.insert("image_std".into(), json!(self.image_std));
        if let Some(v) = self.do_convert_rgb {
            map.insert("do_convert_rgb".into(), json!(v));
        }
        Value::Object(map)
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

    /// Decodes then preprocesses the file at `path`.
    pub fn preprocess_path(&self, path: &Path, limits: &DecodeLimits) -> Result<Vec<f32>> {
        let image = decode::decode_path(path, limits)?;
        self.preprocess_named(&image, &path.display().to_string())
    }

    /// Decodes then preprocesses an image in memory; `name` stands for its path.
    pub fn preprocess_bytes(
        &self,
        bytes: &[u8],
        name: &str,
        limits: &DecodeLimits,
    ) -> Result<Vec<f32>> {
        let image = decode::decode_bytes(bytes, name, limits)?;
        self.preprocess_named(&image, name)
    }

    /// [`Self::preprocess_path`] or its fast variant.
    pub fn preprocess_path_with(
        &self,
        path: &Path,
        limits: &DecodeLimits,
        mode: Preprocessing,
    ) -> Result<Vec<f32>> {
        match mode {
            Preprocessing::Exact => self.preprocess_path(path, limits),
            Preprocessing::Fast => {
                let reduced =
                    decode::decode_path_reduced(path, limits, |w, h| self.min_decode_size(w, h))?;
                self.preprocess_reduced(&reduced, &path.display().to_string())
            }
        }
    }

    /// [`Self::preprocess_bytes`] or its fast variant.
    pub fn preprocess_bytes_with(
        &self,
        bytes: &[u8],
        name: &str,
        limits: &DecodeLimits,
        mode: Preprocessing,
    ) -> Result<Vec<f32>> {
        match mode {
            Preprocessing::Exact => self.preprocess_bytes(bytes, name, limits),
            Preprocessing::Fast => {
                let reduced = self.decode_fast(bytes, name, limits)?;
                self.preprocess_reduced(&reduced, name)
            }
        }
    }

    /// The fast path's decode alone: the image it resizes and the scale it
    /// was decoded at (for benchmarks and tests).
    pub fn decode_fast(&self, bytes: &[u8], name: &str, limits: &DecodeLimits) -> Result<Reduced> {
        Ok(decode::decode_bytes_reduced(
            bytes,
            name,
            limits,
            |w, h| self.min_decode_size(w, h),
        )?)
    }

    /// [`Self::decode_fast`] of a file.
    pub fn decode_path_fast(&self, path: &Path, limits: &DecodeLimits) -> Result<Reduced> {
        Ok(decode::decode_path_reduced(path, limits, |w, h| {
            self.min_decode_size(w, h)
        })?)
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

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ProcessorError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ProcessorError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn field_err(path: &Path, field: &'static str, expected: &str, got: &Value) -> ProcessorError {
    ProcessorError::Field {
        path: path.to_path_buf(),
        field,
        message: format!("{expected}, got {got}"),
    }
}

/// Typed access to the config's keys; JSON `null` counts as absent, as
/// transformers replaces `None` by the class default.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn bool(&self, name: &'static str) -> Result<Option<bool>> {
        self.get(name)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| field_err(self.path, name, "expected true or false", v))
            })
            .transpose()
    }

    fn string(&self, name: &'static str) -> Result<Option<String>> {
        self.get(name)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| field_err(self.path, name, "expected a string", v))
            })
            .transpose()
    }

    fn number(&self, name: &'static str) -> Result<Option<f64>> {
        self.get(name)
            .map(|v| {
                v.as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| field_err(self.path, name, "expected a finite number", v))
            })
            .transpose()
    }

    /// A number (applied to all channels) or a list of three.
    fn triple(&self, name: &'static str) -> Result<Option<[f64; 3]>> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let bad = || {
            field_err(
                self.path,
                name,
                "expected a number or a list of 3 numbers",
                v,
            )
        };
        let finite = |x: &Value| x.as_f64().filter(|x| x.is_finite());
        match v {
            Value::Array(items) if items.len() == 3 => {
                let mut out = [0.0; 3];
                for (o, item) in out.iter_mut().zip(items) {
                    *o = finite(item).ok_or_else(bad)?;
                }
                Ok(Some(out))
            }
            Value::Number(_) => Ok(Some([finite(v).ok_or_else(bad)?; 3])),
            _ => Err(bad()),
        }
    }

    /// transformers' `get_size_dict`: a dict with one of the accepted key sets,
    /// an int (square, or shortest edge when `default_to_square` is false) or a
    /// `[height, width]` list.
    fn size(&self, name: &'static str, default_to_square: bool) -> Result<Option<Size>> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let bad = |why: &str| ProcessorError::Field {
            path: self.path.to_path_buf(),
            field: name,
            message: format!("{why}, got {v}"),
        };
        let dim = |x: &Value| -> Result<u32> {
            x.as_u64()
                .filter(|&n| n > 0)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("expected positive integer sizes"))
        };
        let size = match v {
            Value::Number(_) => {
                let n = dim(v)?;
                if default_to_square {
                    Size::Exact {
                        height: n,
                        width: n,
                    }
                } else {
                    Size::ShortestEdge {
                        shortest: n,
                        longest: None,
                    }
                }
            }
            Value::Array(items) if items.len() == 2 => Size::Exact {
                height: dim(&items[0])?,
                width: dim(&items[1])?,
            },
            Value::Object(map) => {
                let mut keys: Vec<&str> = map
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, _)| k.as_str())
                    .collect();
                keys.sort_unstable();
                let key = |k: &str| dim(&map[k]);
                match keys.as_slice() {
                    ["height", "width"] => Size::Exact {
                        height: key("height")?,
                        width: key("width")?,
                    },
                    ["shortest_edge"] => Size::ShortestEdge {
                        shortest: key("shortest_edge")?,
                        longest: None,
                    },
                    ["longest_edge", "shortest_edge"] => Size::ShortestEdge {
                        shortest: key("shortest_edge")?,
                        longest: Some(key("longest_edge")?),
                    },
                    ["max_height", "max_width"] => Size::MaxHeightWidth {
                        max_height: key("max_height")?,
                        max_width: key("max_width")?,
                    },
                    _ => {
                        return Err(bad(
                            "expected keys {height, width}, {shortest_edge}, {shortest_edge, longest_edge} or {max_height, max_width}",
                        ));
                    }
                }
            }
            _ => return Err(bad("expected a size dict, an int or [height, width]")),
        };
        Ok(Some(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::fixtures;

    /// transformers' PIL-backend `pixel_values` for every fixture processor
    /// (nested `processor_config.json`, legacy `preprocessor_config.json`, int
    /// sizes, longest-edge cap, padding crop, no rescale) on the photos: within
    /// 1e-6 where the decode is exact, and for JPEG within what the decode
    /// difference allows (a few grey levels over the std, in normalised units).
    #[test]
    fn matches_transformers_pil_backend() {
        let index = fixtures::index();
        let mut failures = Vec::new();
        let mut checked = 0;
        for (name, entry) in index["processors"].as_object().unwrap() {
            let dir = fixtures::root().join(entry["dir"].as_str().unwrap());
            let processor = ImageProcessor::from_model_dir(&dir);
            let keys = entry["keys"].as_array().unwrap();
            if keys.is_empty() {
                continue;
            }
            let processor = processor.unwrap_or_else(|e| panic!("{name}: {e}"));
            for key in keys {
                let key = key.as_str().unwrap();
                let photo = &index["decode"][key];
                let path = fixtures::root().join(photo["path"].as_str().unwrap());
                let ours = processor
                    .preprocess_path(&path, &DecodeLimits::default())
                    .unwrap();
                let theirs = fixtures::array(&format!("{name}/{key}"));
                let (h, w) = processor.output_size();
                assert_eq!(theirs.shape, [3, h as usize, w as usize], "{name}/{key}");
                assert_eq!(ours.len(), processor.output_len());
                let max = theirs
                    .f32()
                    .iter()
                    .zip(&ours)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                checked += 1;
                let c = processor.config();
                let grey_level = if c.do_rescale {
                    c.rescale_factor as f32
                } else {
                    1.0
                };
                let std = if c.do_normalize {
                    c.image_std.iter().cloned().fold(f64::MAX, f64::min) as f32
                } else {
                    1.0
                };
                let tolerance = if photo["format"] == "JPEG" {
                    f32::from(crate::preprocess::decode::tests::JPEG_MAX_DIFF) * grey_level / std
                        + 1e-6
                } else {
                    1e-6
                };
                eprintln!("{name}/{key}: max abs diff {max:e}");
                if max > tolerance {
                    failures.push(format!(
                        "{name}/{key}: max abs diff {max:e} > {tolerance:e}"
                    ));
                }
            }
        }
        assert!(checked >= 20, "only {checked} outputs checked");
        assert!(
            failures.is_empty(),
            "processor mismatches:\n{}",
            failures.join("\n")
        );
    }

    /// Config files holding only `image_processor_type` get transformers' class
    /// defaults (DeiT 256 + crop 224 bicubic 0.5/0.5, BEiT 224 bicubic no crop, ...).
    #[test]
    fn class_defaults_match_transformers() {
        for (name, entry) in fixtures::index()["processors"].as_object().unwrap() {
            let Some(effective) = entry.get("effective") else {
                continue;
            };
            let dir = fixtures::root().join(entry["dir"].as_str().unwrap());
            let c = ImageProcessorConfig::from_model_dir(&dir).unwrap();
            let ours = c.to_json();
            for field in [
                "do_resize",
                "size",
                "resample",
                "do_center_crop",
                "do_rescale",
                "rescale_factor",
                "do_normalize",
                "image_mean",
                "image_std",
            ] {
                assert_eq!(ours[field], effective[field], "{name}: {field}");
            }
            if c.do_center_crop || !effective["crop_size"].is_null() {
                assert_eq!(
                    ours["crop_size"], effective["crop_size"],
                    "{name}: crop_size"
                );
            }
        }
    }

    /// A 1x5000 strip through a CLIP-style shortest-edge resize would be
    /// 32x160000 before the crop; only the crop is computed.
    #[test]
    fn thin_strips_do_not_blow_up() {
        let dir = fixtures::root().join("tests/fixtures/preprocess/models/clip_bert");
        let p = ImageProcessor::from_model_dir(&dir).unwrap();
        let strip = RgbImage::from_fn(1, 5000, |_, y| image::Rgb([(y % 256) as u8, 0, 255]));
        let start = std::time::Instant::now();
        let out = p.preprocess(&strip).unwrap();
        assert_eq!(out.len(), 3 * 32 * 32);
        let wide = RgbImage::from_fn(5000, 1, |x, _| image::Rgb([(x % 256) as u8, 9, 0]));
        assert_eq!(p.preprocess(&wide).unwrap().len(), 3 * 32 * 32);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn missing_config_names_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = ImageProcessor::from_model_dir(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&dir.path().display().to_string()),
            "{err}"
        );
        std::fs::write(dir.path().join("preprocessor_config.json"), "{not json").unwrap();
        let err = ImageProcessor::from_model_dir(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("preprocessor_config.json: invalid JSON"),
            "{err}"
        );
        // A processor_config.json without an image processor falls back to the legacy file.
        std::fs::write(
            dir.path().join("processor_config.json"),
            r#"{"processor_class": "X"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("preprocessor_config.json"),
            r#"{"image_processor_type": "ViTImageProcessor"}"#,
        )
        .unwrap();
        let p = ImageProcessor::from_model_dir(dir.path()).unwrap();
        assert_eq!(p.output_size(), (224, 224));
    }

    #[test]
    fn decode_errors_pass_through_with_the_path() {
        let dir = fixtures::root().join("tests/fixtures/preprocess/models/clip_bert");
        let p = ImageProcessor::from_model_dir(&dir).unwrap();
        let bad = fixtures::root().join("tests/fixtures/images/bad/truncated.jpg");
        let err = p
            .preprocess_path(&bad, &DecodeLimits::default())
            .unwrap_err();
        assert!(
            err.to_string().starts_with(&bad.display().to_string()),
            "{err}"
        );
        let err = p
            .preprocess_bytes(b"", "upload.jpg", &DecodeLimits::default())
            .unwrap_err();
        assert!(err.to_string().starts_with("upload.jpg: "), "{err}");
        let err = p.preprocess(&RgbImage::new(0, 0)).unwrap_err();
        assert!(err.to_string().contains("at least one pixel"), "{err}");
    }

    /// Mean difference of fast and exact pixel values allowed on that photo,
    /// in grey levels (measured: 0.64 ViT, 0.88 CLIP).
    const FAST_MAX_MEAN_LEVELS: f32 = 1.5;

    /// The fast path on a 1200×900 phone photo (stored turned, EXIF 6) for
    /// 128-pixel processors: decoded at 1/4 (1/8 would keep under 1.5 × 128),
    /// upright, and its pixel values close to the exact path's. DeiT's
    /// default resizes to 256 first, which 1/4 would not cover with the
    /// margin; a crop-only processor needs the original pixels: neither is
    /// reduced.
    #[test]
    fn fast_path_reduces_a_photo_with_margin() {
        let photo = fixtures::root().join("tests/fixtures/images/coffee_phone_exif6.jpg");
        let limits = DecodeLimits::default();
        let configs = [
            (
                r#"{"image_processor_type": "ViTImageProcessor", "size": 128}"#,
                4,
            ),
            (
                r#"{"image_processor_type": "CLIPImageProcessor", "size": 128, "crop_size": 128}"#,
                4,
            ),
            (r#"{"image_processor_type": "DeiTImageProcessor"}"#, 1),
        ];
        for (json, scale) in configs {
            let p = ImageProcessor::new(parse(json).unwrap()).unwrap();
            let reduced = p.decode_path_fast(&photo, &limits).unwrap();
            assert_eq!(reduced.scale, scale, "{json}");
            assert_eq!(reduced.full, (1200, 900), "{json}");
            let (w, h) = (1200_u32.div_ceil(scale), 900_u32.div_ceil(scale));
            assert_eq!(reduced.image.dimensions(), (w, h), "{json}");
            let exact = p.preprocess_path(&photo, &limits).unwrap();
            let fast = p
                .preprocess_path_with(&photo, &limits, Preprocessing::Fast)
                .unwrap();
            let n = exact.len() as f32;
            let mean = exact
                .iter()
                .zip(&fast)
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / n;
            // In grey levels (the normalised range is 255 levels wide over ~2 units).
            let levels = mean * 255.0 * p.config().image_std[0] as f32;
            eprintln!("{json}: fast vs exact mean diff {levels:.3} grey levels");
            assert!(
                levels < FAST_MAX_MEAN_LEVELS,
                "{json}: mean diff {levels} grey levels"
            );
        }
        let crop_only =
            parse(r#"{"image_processor_type": "CLIPImageProcessor", "do_resize": false}"#).unwrap();
        let p = ImageProcessor::new(crop_only).unwrap();
        assert_eq!(p.decode_path_fast(&photo, &limits).unwrap().scale, 1);
    }

    fn parse(json: &str) -> Result<ImageProcessorConfig> {
        let Value::Object(map) = serde_json::from_str(json).unwrap() else {
            panic!("test json is not an object")
        };
        ImageProcessorConfig::from_map(&map, Path::new("/m/preprocessor_config.json"))
    }

    #[test]
    fn shortest_edge_truncates_like_python_int() {
        let s = Size::ShortestEdge {
            shortest: 224,
            longest: None,
        };
        // 224 * 451 / 300 = 336.74... -> 336.
        assert_eq!(s.output_for(300, 451), (224, 336));
        assert_eq!(s.output_for(451, 300), (336, 224));
        assert_eq!(s.output_for(224, 224), (224, 224));
        assert_eq!(s.output_for(10, 1000), (224, 22400));
    }

    #[test]
    fn longest_edge_cap_uses_bankers_rounding() {
        let s = Size::ShortestEdge {
            shortest: 32,
            longest: Some(40),
        };
        // 300x451: 451/300*32 = 48.1 > 40 -> raw = 40*300/451 = 26.607 -> size 27,
        // width = int(26.607 * 451 / 300) = 40.
        assert_eq!(s.output_for(300, 451), (27, 40));
        // Under the cap: plain shortest edge.
        assert_eq!(s.output_for(32, 35), (32, 35));
    }

    #[test]
    fn legacy_int_sizes_follow_default_to_square() {
        let clip = parse(
            r#"{"feature_extractor_type": "CLIPFeatureExtractor", "size": 32, "crop_size": 30}"#,
        )
        .unwrap();
        assert_eq!(
            clip.size,
            Some(Size::ShortestEdge {
                shortest: 32,
                longest: None
            })
        );
        assert_eq!(clip.crop_size, Some((30, 30)));
        let vit =
            parse(r#"{"feature_extractor_type": "ViTFeatureExtractor", "size": 32}"#).unwrap();
        assert_eq!(
            vit.size,
            Some(Size::Exact {
                height: 32,
                width: 32
            })
        );
    }

    #[test]
    fn errors_name_file_and_field() {
        let err = parse(r#"{"image_processor_type": "ViTImageProcessor", "do_resize": "yes"}"#)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("/m/preprocessor_config.json: field `do_resize`"),
            "{msg}"
        );
        let err =
            parse(r#"{"image_processor_type": "SomethingNew", "do_resize": true}"#).unwrap_err();
        assert!(err.to_string().contains("field `size`: missing"), "{err}");
        let err =
            parse(r#"{"image_processor_type": "ViTImageProcessor", "resample": 7}"#).unwrap_err();
        assert!(err.to_string().contains("field `resample`"), "{err}");
        let err =
            parse(r#"{"image_processor_type": "ViTImageProcessor", "size": {"longest_edge": 3}}"#)
                .unwrap_err();
        assert!(err.to_string().contains("field `size`"), "{err}");
        let err = parse(r#"{"image_processor_type": "ViTImageProcessor", "image_mean": [1, 2]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("field `image_mean`"), "{err}");
    }

    #[test]
    fn nulls_take_class_defaults() {
        let c = parse(r#"{"image_processor_type": "CLIPImageProcessor", "size": null, "image_mean": null, "do_center_crop": null}"#).unwrap();
        assert!(c.do_center_crop);
        assert_eq!(c.image_mean, CLIP_MEAN);
        assert_eq!(c.fixed_output_size(), Some((224, 224)));
    }

    #[test]
    fn variable_output_size_is_refused() {
        let c = parse(r#"{"image_processor_type": "CLIPImageProcessor", "do_center_crop": false}"#)
            .unwrap();
        let err = ImageProcessor::new(c).unwrap_err();
        assert!(
            err.to_string().contains("does not produce a fixed size"),
            "{err}"
        );
    }

    #[test]
    fn config_json_round_trips() {
        let c = parse(r#"{"image_processor_type": "DeiTImageProcessor"}"#).unwrap();
        let Value::Object(map) = c.to_json() else {
            unreachable!()
        };
        let again =
            ImageProcessorConfig::from_map(&map, Path::new("/m/preprocessor_config.json")).unwrap();
        assert_eq!(c, again);
    }
}
