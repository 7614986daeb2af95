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
    /// Measured by `tests::parameter_sweep` (5k unit vectors, 200 queries,
    /// recall@10 against exact search): with these defaults, 512-d
    /// low-rank clusters (like real embeddings) 0.999, 512-d isotropic
    /// clusters 0.976, uniform random 512-d (no structure at all: the worst
    /// case) 0.93; random 64-d 0.99+. ef_search 64 gave only 0.91 on the
    /// isotropic clusters (0.75 on uniform random). M=32 buys little except
    /// on uniform random data (0.965) for more memory. ef_search 384: at 1M
    /// vectors, `dualsight-bench`'s text-like queries got recall@10 0.9475,
    /// 0.951 and 0.958 at ef 256 over three builds, 0.962 at 384 and
    /// 0.965–0.966 at 512; 384 costs ~2.5 ms more a search there than 256.
    /// At 100k, 256 already gave 0.992.
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
