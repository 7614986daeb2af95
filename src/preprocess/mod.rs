//! Everything between a file and the model's input tensors: decoding photos to
//! upright RGB with limits ([`decode`]), Pillow-exact resizing and transformers'
//! centre crop ([`resize`]), the checkpoint's image processor driven by its
//! `processor_config.json` / `preprocessor_config.json` ([`processor`]), and
//! the tokenizer for queries ([`tokenizer`]). The reference throughout is
//! transformers' PIL backend fed by `load_image`, pinned to the Pillow and
//! transformers versions recorded in `tests/fixtures/preprocess/index.json`.

pub mod decode;
mod heif;
pub mod meta;
pub mod processor;
mod reduced;
pub mod resize;
pub mod tokenizer;

#[cfg(test)]
mod fixtures;

pub use decode::{
    DecodeError, DecodeLimits, Reduced, decode_bytes, decode_bytes_reduced, decode_path,
    decode_path_reduced,
};
pub use image::RgbImage;
pub use processor::{
    FAST_MARGIN, ImageProcessor, ImageProcessorConfig, Preprocessing, ProcessorError, Size, Source,
};
pub use resize::{Filter, ResizeError, center_crop, resize, resize_center_crop};
pub use tokenizer::{TextTokenizer, TokenBatch, TokenizerError, Truncation};
