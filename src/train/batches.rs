//! What each training step sees: the order of the rows in an epoch (file
//! order, or a seeded shuffle), and a batch's images, decoded through the
//! checkpoint's own image processor. A row whose image does not decode is
//! reported once and left out of every batch after. With the vision tower
//! frozen (LiT), each image's pooled output is computed once, on the
//! inference path, and reused in every later epoch.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::data::Pair;
use crate::encoder::Encoder;
use crate::preprocess::Source;

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

/// splitmix64: a tiny, fixed generator, so that an order depends on the seed
/// alone, in every build and version (a resumed run must see the same batches).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rows of epoch `epoch` in the order they are batched: `0..n`, or a
/// Fisher-Yates shuffle seeded by `(seed, epoch)`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut state = seed ^ (epoch as u64).wrapping_mul(0xa076_1d64_78bd_642f);
        for i in (1..n).rev() {
            let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// A batch ready for the model: the rows kept, and their images as pixels
/// or (vision tower frozen) pooled outputs.
pub struct Batch {
    pub rows: Vec<usize>,
    pub images: Tensor,
    pub pooled: bool,
}

/// Decodes a data set's images batch by batch, remembering the rows that fail.
pub struct Images<'a> {
    pairs: &'a [Pair],
    /// Rows whose image could not be used, with the reason (reported once).
    bad: BTreeMap<usize, String>,
    /// Pooled vision outputs by row, when the vision tower is frozen.
    cache: Option<HashMap<usize, Vec<f32>>>,
}

impl<'a> Images<'a> {
    pub fn new(pairs: &'a [Pair], cache_pooled: bool) -> Self {
        Self {
            pairs,
            bad: BTreeMap::new(),
            cache: cache_pooled.then(HashMap::new),
        }
    }

    /// Rows skipped so far: image path and reason.
    pub fn skipped(&self) -> Vec<(PathBuf, String)> {
        self.bad
            .iter()
            .map(|(&r, why)| (self.pairs[r].image.clone(), why.clone()))
            .collect()
    }

    /// The batch of `rows`, minus rows that fail; `report` hears of each new
    /// failure once.
    pub fn batch(
        &mut self,
        encoder: &Encoder,
        rows: &[usize],
        report: &mut dyn FnMut(&PathBuf, &str),
    ) -> Result<Batch> {
        let cached = |r: &usize| self.cache.as_ref().is_some_and(|c| c.contains_key(r));
        let todo: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|r| !self.bad.contains_key(r) && !cached(r))
            .collect();
        let decoded: Vec<(usize, std::result::Result<Vec<f32>, String>)> = todo
            .par_iter()
            .map(|&r| {
                let px = encoder
                    .preprocess(Source::Path(&self.pairs[r].image))
                    .map_err(|e| e.to_string());
                (r, px)
            })
            .collect();
        let mut pixels = HashMap::new();
        for (r, px) in decoded {
            match px {
                Ok(px) => {
                    pixels.insert(r, px);
                }
                Err(why) => {
                    report(&self.pairs[r].image, &why);
                    self.bad.insert(r, why);
                }
            }
        }
        let kept: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|r| !self.bad.contains_key(r))
            .collect();
        let (c, h, w) = encoder.model().image_shape();
        let stack = |rows: &[usize], get: &dyn Fn(usize) -> Vec<f32>, width: usize| {
            let flat: Vec<f32> = rows.iter().flat_map(|&r| get(r)).collect();
            Tensor::from_vec(flat, (rows.len(), width), &Device::Cpu)
        };
        let Some(cache) = self.cache.as_mut() else {
            let images =
                stack(&kept, &|r| pixels[&r].clone(), c * h * w)?.reshape((kept.len(), c, h, w))?;
            return Ok(Batch {
                rows: kept,
                images,
                pooled: false,
            });
        };
        let fresh: Vec<usize> = kept
            .iter()
            .copied()
            .filter(|r| pixels.contains_key(r))
            .collect();
        if !fresh.is_empty() {
            let px = stack(&fresh, &|r| pixels[&r].clone(), c * h * w)?.reshape((
                fresh.len(),
                c,
                h,
                w,
            ))?;
            // Outside training mode: the frozen tower runs on the inference
            // path, once per image (LiT).
            let pooled = encoder.model().vision_pooled(&px)?.to_vec2::<f32>()?;
            cache.extend(fresh.into_iter().zip(pooled));
        }
        let width = cache.values().next().map_or(0, Vec::len);
        let images = stack(&kept, &|r| cache[&r].clone(), width)?;
        Ok(Batch {
            rows: kept,
            images,
            pooled: true,
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
