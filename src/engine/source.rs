//! The store's vector space as a [`VectorSource`]: a candidate's exact
//! vector is its f32 record in the space's segment, and its items are every
//! path holding that content.

use std::borrow::Cow;
use std::path::PathBuf;

use super::search::{Exact, Result, VectorSource};
use crate::store::{ContentHash, SegmentError, Space, StoreError};

impl VectorSource for Space {
    type Key = ContentHash;
    type Item = PathBuf;

    /// A damaged record is skipped with an error in the log, never scored:
    /// a missing hit beats a wrong one. The next start forgets it and embeds
    /// its files again (`Engine::open`), as `dualsight fsck --repair` does.
    fn vector(&self, id: u64) -> Result<Option<Exact<'_, ContentHash>>> {
        match self.candidate(id) {
            Ok(v) => Ok(v.map(|v| Exact {
                key: v.hash,
                vector: Cow::Owned(v.vector),
            })),
            Err(StoreError::Segment(e @ SegmentError::Damaged { .. })) => {
                tracing::error!(error = %e, "skipping a damaged vector");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn items(&self, key: &ContentHash) -> Result<Vec<PathBuf>> {
        Ok(self
            .paths_for_hash(key)?
            .into_iter()
            .map(PathBuf::from)
            .collect())
    }
}
