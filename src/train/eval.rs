//! Evaluation on held-out image-caption pairs, on the inference path of a
//! snapshot of the model being trained:
//! - zero-shot accuracy: an image is right when, of the eval set's distinct
//!   captions (its classes), its own scores highest;
//! - image→text recall@k: its own caption is among the k best captions;
//! - text→image recall@k: among the k best images for a pair's caption is
//!   one with that caption (its own image, when captions are unique).

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
    #[error("no eval image could be decoded")]
    NoImages,
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

/// Evaluates `model` (the tokenizer and image processor come from `encoder`).
pub fn evaluate(encoder: &Encoder, model: &DualEncoder, pairs: &[Pair]) -> Result<EvalReport> {
    let mut captions: Vec<&str> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let mut labels = Vec::with_capacity(pairs.len());
    for p in pairs {
        let id = *index.entry(p.caption.as_str()).or_insert_with(|| {
            captions.push(&p.caption);
            captions.len() - 1
        });
        labels.push(id);
    }
    let mut texts = Vec::with_capacity(captions.len());
    for chunk in captions.chunks(CHUNK) {
        let input = encoder.tokenize(chunk)?;
        texts.extend(model.embed_texts(&input)?.to_vec2::<f32>()?);
    }
    let (c, h, w) = model.image_shape();
    let mut images = Vec::new();
    let mut kept_labels = Vec::new();
    let mut skipped = 0;
    for (chunk, chunk_labels) in pairs.chunks(CHUNK).zip(labels.chunks(CHUNK)) {
        let decoded: Vec<_> = chunk
            .par_iter()
            .map(|p| encoder.preprocess(Source::Path(&p.image)).ok())
            .collect();
        let mut flat = Vec::new();
        for (px, &label) in decoded.into_iter().zip(chunk_labels) {
            match px {
                Some(px) => {
                    flat.extend(px);
                    kept_labels.push(label);
                }
                None => skipped += 1,
            }
        }
        let n = flat.len() / (c * h * w);
        if n > 0 {
            let px = Tensor::from_vec(flat, (n, c, h, w), &Device::Cpu)?;
            images.extend(model.embed_images(&px)?.to_vec2::<f32>()?);
        }
    }
    if images.is_empty() {
        return Err(EvalError::NoImages);
    }
    Ok(metrics(&images, &kept_labels, &texts, skipped))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// How many of `scores` beat `scores[own]` (ties count for `own`), i.e. its rank from 0.
fn rank_of(scores: &[f32], own: usize) -> usize {
    scores.iter().filter(|&&s| s > scores[own]).count()
}

/// The metrics from normalised embeddings: `labels[i]` is image `i`'s caption.
pub fn metrics(
    images: &[Vec<f32>],
    labels: &[usize],
    texts: &[Vec<f32>],
    skipped: usize,
) -> EvalReport {
    let n = images.len() as f64;
    let (mut r1, mut r5) = (0usize, 0usize);
    for (img, &label) in images.iter().zip(labels) {
        let scores: Vec<f32> = texts.iter().map(|t| dot(img, t)).collect();
        let rank = rank_of(&scores, label);
        r1 += usize::from(rank < 1);
        r5 += usize::from(rank < 5);
    }
    // Text→image depends only on the caption: score it once per caption,
    // then count it for each pair that has it.
    let mut per_caption = vec![(false, false); texts.len()];
    for (caption, (t, hit)) in texts.iter().zip(per_caption.iter_mut()).enumerate() {
        let scores: Vec<f32> = images.iter().map(|img| dot(img, t)).collect();
        let mut top: Vec<usize> = (0..scores.len()).collect();
        let k = 5.min(top.len());
        top.select_nth_unstable_by(k - 1, |&a, &b| scores[b].total_cmp(&scores[a]));
        top.truncate(k);
        top.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        *hit = (
            labels[top[0]] == caption,
            top.iter().any(|&i| labels[i] == caption),
        );
    }
    let (mut t1, mut t5) = (0usize, 0usize);
    for &label in labels {
        t1 += usize::from(per_caption[label].0);
        t5 += usize::from(per_caption[label].1);
    }
    EvalReport {
        images: images.len(),
        captions: texts.len(),
        skipped,
        zero_shot_accuracy: r1 as f64 / n,
        image_to_text_recall_at_1: r1 as f64 / n,
        image_to_text_recall_at_5: r5 as f64 / n,
        text_to_image_recall_at_1: t1 as f64 / n,
        text_to_image_recall_at_5: t5 as f64 / n,
    }
}

#[cfg(test)]
mod tests {
    use super::metrics;

    #[test]
    fn metrics_count_what_they_say() {
        let texts = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        // Three images of caption 0, one of caption 1; the last image of 0 looks like 1.
        let images = vec![
            vec![1.0, 0.0],
            vec![0.9, 0.1],
            vec![0.2, 0.8],
            vec![0.0, 1.0],
        ];
        let labels = vec![0, 0, 0, 1];
        let r = metrics(&images, &labels, &texts, 0);
        assert_eq!(r.zero_shot_accuracy, 0.75);
        assert_eq!(r.image_to_text_recall_at_5, 1.0);
        // Caption 0's best image is of caption 0; caption 1's best is image 3.
        assert_eq!(r.text_to_image_recall_at_1, 1.0);
        assert_eq!(r.captions, 2);
    }
}
