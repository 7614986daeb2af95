//! What each training step sees. Before training, every image is decoded
//! once through the checkpoint's own image processor and the rows whose
//! image fails are reported and dropped, as `run_clip.py` filters corrupt
//! images before it batches (so the step count is that of the rows kept).
//! Then each epoch has an order (file order, or a seeded shuffle) and each
//! batch its images: decoded again as it comes, or, with the vision tower
//! frozen and free of dropout (LiT), the pooled output computed in that
//! first pass, once per distinct image, and reused in every epoch.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::data::Pair;
use crate::encoder::Encoder;
use crate::preprocess::Source;
use crate::rng::SplitMix64;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Encoder(#[from] crate::encoder::EncoderError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T, E = BatchError> = std::result::Result<T, E>;

/// The rows of epoch `epoch` in the order they are batched: `0..n`, or a
/// Fisher-Yates shuffle seeded by `(seed, epoch)`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut g = SplitMix64::keyed(seed, 1, epoch as u64);
        for i in (1..n).rev() {
            let j = g.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// Images decoded per chunk of the first pass (bounds its memory).
const CHUNK: usize = 256;

/// Pooled vision outputs, one row per distinct image, in one buffer.
struct PooledCache {
    width: usize,
    rows: Vec<f32>,
    slot: HashMap<PathBuf, usize>,
}

/// A data set checked and ready to batch.
pub struct Images {
    pairs: Vec<Pair>,
    skipped: Vec<(PathBuf, String)>,
    cache: Option<PooledCache>,
}

/// A batch ready for the model: its images as pixels or pooled outputs.
pub struct Batch {
    pub captions: Vec<String>,
    pub images: Tensor,
    pub pooled: bool,
}

impl Images {
    /// Decodes every distinct image of `pairs` once; `report` hears of each
    /// that fails. With `cache_pooled`, keeps each image's pooled vision
    /// output (the frozen tower on its inference path).
    pub fn prepare(
        encoder: &Encoder,
        pairs: Vec<Pair>,
        cache_pooled: bool,
        report: &mut dyn FnMut(&PathBuf, &str),
    ) -> Result<Self> {
        let mut verdict: HashMap<PathBuf, bool> = HashMap::new();
        let mut cache = cache_pooled.then(|| PooledCache {
            width: 0,
            rows: Vec::new(),
            slot: HashMap::new(),
        });
        let mut skipped = Vec::new();
        let mut distinct: Vec<&PathBuf> = Vec::new();
        for p in &pairs {
            if !verdict.contains_key(&p.image) {
                verdict.insert(p.image.clone(), false);
                distinct.push(&p.image);
            }
        }
        let (c, h, w) = encoder.model().image_shape();
        for chunk in distinct.chunks(CHUNK) {
            let decoded: Vec<_> = chunk
                .par_iter()
                .map(|path| (*path, encoder.preprocess(Source::Path(path))))
                .collect();
            let mut good = Vec::new();
            let mut flat = Vec::new();
            for (path, px) in decoded {
                match px {
                    Ok(px) => {
                        verdict.insert(path.clone(), true);
                        if cache.is_some() {
                            flat.extend(px);
                            good.push(path.clone());
                        }
                    }
                    Err(e) => {
                        let why = e.to_string();
                        report(path, &why);
                        skipped.push((path.clone(), why));
                    }
                }
            }
            if let Some(cache) = cache.as_mut()
                && !good.is_empty()
            {
                let px = Tensor::from_vec(flat, (good.len(), c, h, w), &Device::Cpu)?;
                let pooled = encoder.model().vision_pooled(&px)?;
                cache.width = pooled.dim(1)?;
                for path in good {
                    cache.slot.insert(path, cache.slot.len());
                }
                cache.rows.extend(pooled.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        let pairs = pairs.into_iter().filter(|p| verdict[&p.image]).collect();
        Ok(Self {
            pairs,
            skipped,
            cache,
        })
    }

    /// The rows kept.
    pub fn pairs(&self) -> &[Pair] {
        &self.pairs
    }

    /// The images left out, with the reason.
    pub fn skipped(&self) -> &[(PathBuf, String)] {
        &self.skipped
    }

    /// The batch of `rows` (indices into [`Self::pairs`]).
    pub fn batch(&self, encoder: &Encoder, rows: &[usize]) -> Result<Batch> {
        let captions = rows
            .iter()
            .map(|&r| self.pairs[r].caption.clone())
            .collect();
        if let Some(cache) = &self.cache {
            let mut flat = Vec::with_capacity(rows.len() * cache.width);
            for &r in rows {
                let at = cache.slot[&self.pairs[r].image] * cache.width;
                flat.extend_from_slice(&cache.rows[at..at + cache.width]);
            }
            return Ok(Batch {
                captions,
                images: Tensor::from_vec(flat, (rows.len(), cache.width), &Device::Cpu)?,
                pooled: true,
            });
        }
        let (c, h, w) = encoder.model().image_shape();
        let pixels = rows
            .par_iter()
            .map(|&r| encoder.preprocess(Source::Path(&self.pairs[r].image)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let flat: Vec<f32> = pixels.into_iter().flatten().collect();
        Ok(Batch {
            captions,
            images: Tensor::from_vec(flat, (rows.len(), c, h, w), &Device::Cpu)?,
            pooled: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::epoch_order;

    #[test]
    fn orders_are_permutations_fixed_by_seed_and_epoch() {
        assert_eq!(epoch_order(5, 42, 0, false), vec![0, 1, 2, 3, 4]);
        let a = epoch_order(100, 42, 0, true);
        assert_eq!(a, epoch_order(100, 42, 0, true));
        assert_ne!(a, epoch_order(100, 42, 1, true));
        assert_ne!(a, epoch_order(100, 7, 0, true));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }
}
