//! A checkpoint's image processor config: read from `processor_config.json`
//! (transformers 5, nested under `image_processor`) or
//! `preprocessor_config.json` (older saves), missing fields taking the class
//! defaults of the named processor type as transformers does. Every error
//! names the file and the field.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::{ProcessorError, Result};
use crate::preprocess::resize::Filter;

/// transformers' `IMAGENET_STANDARD_MEAN` / `_STD` (ViT, DeiT, BEiT defaults).
pub(super) const IMAGENET_STANDARD: [f64; 3] = [0.5, 0.5, 0.5];

/// transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`.
pub(super) const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];

pub(super) const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

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

    pub(super) fn to_json(&self) -> Value {
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
pub(super) enum Family {
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
pub(super) struct Defaults {
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

pub(super) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ProcessorError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ProcessorError::Json {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn field_err(
    path: &Path,
    field: &'static str,
    expected: &str,
    got: &Value,
) -> ProcessorError {
    ProcessorError::Field {
        path: path.to_path_buf(),
        field,
        message: format!("{expected}, got {got}"),
    }
}

/// Typed access to the config's keys; JSON `null` counts as absent, as
/// transformers replaces `None` by the class default.
pub(super) struct Fields<'a> {
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
