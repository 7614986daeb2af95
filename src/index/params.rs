//! HNSW construction and search parameters, checked before hnsw_rs sees them
//! (its `Hnsw::new` exits the process on some bad values).

use serde::{Deserialize, Serialize};

use super::{IndexError, Result};

/// HNSW construction and search parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    /// M: links per node and layer (layer 0 keeps 2·M). 2..=256: hnsw_rs
    /// calls `exit(1)` above 256, so [`IndexParams::validate`] runs first.
    pub max_nb_connection: usize,
    /// Candidate list size while inserting; hnsw_rs warns at ≤ 2·M.
    pub ef_construction: usize,
    /// Candidate list size while searching (raised to k when k is larger).
    pub ef_search: usize,
    /// Layers, 1..=16 (hnsw_rs's maximum).
    pub max_layer: usize,
}

impl Default for IndexParams {
    /// The smallest settings that keep recall@10 at or above 0.95 for
    /// text-like queries at a million vectors, with a margin (BENCHMARKS.md,
    /// "Today's figures"; `dualsight-bench --m .. --ef-construction ..
    /// --ef-sweep ..` measures others). Larger M buys little recall for its
    /// memory.
    fn default() -> Self {
        IndexParams {
            max_nb_connection: 24,
            ef_construction: 200,
            ef_search: 384,
            max_layer: 16,
        }
    }
}

impl IndexParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(IndexError::InvalidParams(m));
        if !(2..=256).contains(&self.max_nb_connection) {
            return bad(format!(
                "max_nb_connection {} not in 2..=256",
                self.max_nb_connection
            ));
        }
        if !(1..=100_000).contains(&self.ef_construction) {
            return bad(format!(
                "ef_construction {} not in 1..=100000",
                self.ef_construction
            ));
        }
        if !(1..=100_000).contains(&self.ef_search) {
            return bad(format!("ef_search {} not in 1..=100000", self.ef_search));
        }
        if !(1..=16).contains(&self.max_layer) {
            return bad(format!("max_layer {} not in 1..=16", self.max_layer));
        }
        Ok(())
    }
}
