//! The store's vector space as a [`VectorSource`]: a candidate's exact
//! vector is its f32 copy in sled, and its items are every path holding
//! that content.

use std::borrow::Cow;
use std::path::PathBuf;

use super::search::{Exact, Result, VectorSource};
use crate::store::{ContentHash, Space};

impl VectorSource for Space {
    type Key = ContentHash;
    type Item = PathBuf;

    fn vector(&self, id: u64) -> Result<Option<Exact<'_, ContentHash>>> {
        Ok(Space::vector(self, id)?.map(|v| Exact {
            key: v.hash,
            vector: Cow::Owned(v.vector),
        }))
    }

    fn items(&self, key: &ContentHash) -> Result<Vec<PathBuf>> {
        Ok(self
            .paths_for_hash(key)?
            .into_iter()
            .map(PathBuf::from)
            .collect())
    }
}
