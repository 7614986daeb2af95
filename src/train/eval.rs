//! Evaluation on held-out image-caption pairs, on the inference path of a
//! snapshot of the model being trained. Pairs are grouped by image (an
//! image may have several captions, as in COCO) and by distinct caption
//! (a class, when captions come from class folders):
//! - zero-shot accuracy: an image is right when, of all distinct captions,
//!   one of its own scores highest;
//! - image→text recall@k: one of its captions is among its k best;
//! - text→image recall@k: among a caption's k best images is one it belongs to.
//!
//! Ties count against the model and a non-finite score is a miss, so a
//! collapsed or diverged model scores 0, not 1.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use super::data::Pair;
use crate::encoder::Encoder;
use crate::model::DualEncoder;
use crate::preprocess::Source;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Encoder(#[from] crate::encoder::EncoderError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("{}: no eval image could be decoded (first: {first})", path.display())]
    NoImages { path: PathBuf, first: String },
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalReport {
    pub images: usize,
    pub captions: usize,
    pub skipped: usize,
    pub zero_shot_accuracy: f64,
    pub image_to_text_recall_at_1: f64,
    pub image_to_text_recall_at_5: f64,
    pub text_to_image_recall_at_1: f64,
    pub text_to_image_recall_at_5: f64,
}

/// Rows per forward pass.
const CHUNK: usize = 64;

/// An eval set, checked once: its distinct images (those that decode) and
/// captions, and which captions each image has.
pub struct EvalSet {
    images: Vec<PathBuf>,
    captions: Vec<String>,
    /// For each image, the indices of its captions.
    labels: Vec<Vec<usize>>,
    skipped: usize,
}

impl EvalSet {
    /// Decodes each distinct image once; `report` hears of each that fails.
    /// `source` names the eval data in the error when none decodes.
    pub fn prepare(
        encoder: &Encoder,
        pairs: &[Pair],
        source: &std::path::Path,
        report: &mut dyn FnMut(&PathBuf, &str),
    ) -> Result<Self> {
        let mut captions = Vec::new();
        let mut caption_ids = HashMap::new();
        let mut images: Vec<PathBuf> = Vec::new();
        let mut image_ids: HashMap<&PathBuf, usize> = HashMap::new();
        let mut labels: Vec<Vec<usize>> = Vec::new();
        for p in pairs {
            let c = *caption_ids.entry(p.caption.as_str()).or_insert_with(|| {
                captions.push(p.caption.clone());
                captions.len() - 1
            });
            let i = *image_ids.entry(&p.image).or_insert_with(|| {
                images.push(p.image.clone());
                labels.push(Vec::new());
                images.len() - 1
            });
            if !labels[i].contains(&c) {
                labels[i].push(c);
            }
        }
        let verdicts: Vec<std::result::Result<(), String>> = images
            .par_iter()
            .map(|p| {
                encoder
                    .preprocess(Source::Path(p))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .collect();
        let mut kept = (Vec::new(), Vec::new());
        let mut first = None;
        let mut skipped = 0;
        for ((image, label), verdict) in images.into_iter().zip(labels).zip(verdicts) {
            match verdict {
                Ok(()) => {
                    kept.0.push(image);
                    kept.1.push(label);
                }
                Err(why) => {
                    skipped += 1;
                    report(&image, &why);
                    first.get_or_insert_with(|| format!("{}: {why}", image.display()));
                }
            }
        }
        if kept.0.is_empty() {
            return Err(EvalError::NoImages {
                path: source.to_path_buf(),
                first: first.unwrap_or_else(|| "no rows".into()),
            });
        }
        Ok(Self {
            images: kept.0,
            captions,
            labels: kept.1,
            skipped,
        })
    }

    /// Evaluates `model` (the tokenizer and image processor come from `encoder`).
    pub fn evaluate(&self, encoder: &Encoder, model: &DualEncoder) -> Result<EvalReport> {
        let mut texts = Vec::with_capacity(self.captions.len());
        for chunk in self.captions.chunks(CHUNK) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let input = encoder.tokenize(&chunk)?;
            texts.extend(model.embed_texts(&input)?.to_vec2::<f32>()?);
        }
        let (c, h, w) = model.image_shape();
        let mut images = Vec::with_capacity(self.images.len());
        for chunk in self.images.chunks(CHUNK) {
            let pixels = chunk
                .par_iter()
                .map(|p| encoder.preprocess(Source::Path(p)))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let flat: Vec<f32> = pixels.into_iter().flatten().collect();
            let px = Tensor::from_vec(flat, (chunk.len(), c, h, w), &Device::Cpu)?;
            images.extend(model.embed_images(&px)?.to_vec2::<f32>()?);
        }
        Ok(metrics(&images, &self.labels, &texts, self.skipped))
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Whether one of the entries `own` marks ranks within the first `k` of
/// `scores`: its best finite score is beaten or tied by fewer than `k`
/// others (ties count against the model).
fn within(scores: &[f32], own: impl Fn(usize) -> bool, k: usize) -> bool {
    let best = scores
        .iter()
        .enumerate()
        .filter(|&(j, x)| own(j) && x.is_finite())
        .map(|(_, &x)| x)
        .fold(f32::NEG_INFINITY, f32::max);
    if best == f32::NEG_INFINITY {
        return false;
    }
    scores
        .iter()
        .enumerate()
        .filter(|&(j, &x)| !own(j) && x >= best)
        .count()
        < k
}

/// The metrics from normalised embeddings: `labels[i]` are image `i`'s captions.
pub fn metrics(
    images: &[Vec<f32>],
    labels: &[Vec<usize>],
    texts: &[Vec<f32>],
    skipped: usize,
) -> EvalReport {
    let n = images.len() as f64;
    let (mut r1, mut r5) = (0usize, 0usize);
    for (img, own) in images.iter().zip(labels) {
        let scores: Vec<f32> = texts.iter().map(|t| dot(img, t)).collect();
        r1 += usize::from(within(&scores, |j| own.contains(&j), 1));
        r5 += usize::from(within(&scores, |j| own.contains(&j), 5));
    }
    let (mut t1, mut t5) = (0usize, 0usize);
    for (caption, t) in texts.iter().enumerate() {
        let scores: Vec<f32> = images.iter().map(|img| dot(img, t)).collect();
        let own = |i: usize| labels[i].contains(&caption);
        t1 += usize::from(within(&scores, own, 1));
        t5 += usize::from(within(&scores, own, 5));
    }
    let m = texts.len().max(1) as f64;
    EvalReport {
        images: images.len(),
        captions: texts.len(),
        skipped,
        zero_shot_accuracy: r1 as f64 / n,
        image_to_text_recall_at_1: r1 as f64 / n,
        image_to_text_recall_at_5: r5 as f64 / n,
        text_to_image_recall_at_1: t1 as f64 / m,
        text_to_image_recall_at_5: t5 as f64 / m,
    }
}

#[cfg(test)]
mod tests {
    use super::metrics;

    #[test]
    fn metrics_count_what_they_say() {
        let texts = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        // Three images of caption 0, one of caption 1; the third looks like 1.
        let images = vec![
            vec![1.0, 0.0],
            vec![0.9, 0.1],
            vec![0.2, 0.8],
            vec![0.0, 1.0],
        ];
        let labels = vec![vec![0], vec![0], vec![0], vec![1]];
        let r = metrics(&images, &labels, &texts, 0);
        assert_eq!(r.zero_shot_accuracy, 0.75);
        assert_eq!(r.image_to_text_recall_at_5, 1.0);
        // Caption 0's best image is of caption 0; caption 1's best is image 3.
        assert_eq!(r.text_to_image_recall_at_1, 1.0);
        assert_eq!(r.captions, 2);
    }

    #[test]
    fn an_image_with_two_captions_is_right_with_either() {
        let texts = vec![vec![1.0, 0.0], vec![0.8, 0.6], vec![0.0, 1.0]];
        let images = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        // Image 0 has captions 0 and 1; caption 1's best image is image 0.
        let labels = vec![vec![0, 1], vec![2]];
        let r = metrics(&images, &labels, &texts, 0);
        assert_eq!(r.zero_shot_accuracy, 1.0);
        assert_eq!(r.text_to_image_recall_at_1, 1.0);
    }

    #[test]
    fn a_collapsed_or_diverged_model_scores_nothing() {
        let texts = vec![vec![1.0, 0.0]; 3];
        let images = vec![vec![1.0, 0.0]; 3];
        let labels = vec![vec![0], vec![1], vec![2]];
        let r = metrics(&images, &labels, &texts, 0);
        assert_eq!(r.zero_shot_accuracy, 0.0, "ties must not count");
        assert_eq!(r.text_to_image_recall_at_1, 0.0);
        let nan = vec![vec![f32::NAN, 0.0]; 3];
        let r = metrics(&nan, &labels, &texts, 0);
        assert_eq!(r.zero_shot_accuracy, 0.0);
        assert_eq!(r.text_to_image_recall_at_5, 0.0);
    }
}
