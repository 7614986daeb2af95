//! Recently embedded query texts: the same words typed again (a client
//! paging through results, a dashboard refreshing, classify labels asked for
//! image after image) skip the text tower, which is most of a query's time.
//!
//! Entries carry the fingerprint of the model that made them, so a vector from
//! a model that has since been switched out is never served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Query texts kept (~2 KiB each for a 512-d vector plus the text).
pub const DEFAULT_CAPACITY: usize = 4096;

/// Longer texts are embedded but not kept, so a full cache stays a few
/// megabytes however long the queries the server accepts.
pub const MAX_CACHED_TEXT_BYTES: usize = 1024;

pub struct TextCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// text → (model fingerprint, vector, last use).
    entries: HashMap<String, (String, Arc<Vec<f32>>, u64)>,
    clock: u64,
}

impl TextCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The vector `model` made for `text`, if still held.
    pub fn get(&self, model: &str, text: &str) -> Option<Arc<Vec<f32>>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let (fp, v, used) = inner.entries.get_mut(text)?;
        if fp != model {
            return None;
        }
        *used = now;
        Some(v.clone())
    }

    /// Keeps `vector` for `text`, dropping the least recently used entry when full.
    pub fn put(&self, model: &str, text: &str, vector: Arc<Vec<f32>>) {
        if self.capacity == 0 || text.len() > MAX_CACHED_TEXT_BYTES {
            return;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        if !inner.entries.contains_key(text) && inner.entries.len() >= self.capacity {
            // A scan over a few thousand entries costs microseconds, against
            // the tens of milliseconds of the text tower it saves.
            if let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| k.clone())
            {
                inner.entries.remove(&oldest);
            }
        }
        inner
            .entries
            .insert(text.to_string(), (model.to_string(), vector, now));
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: f32) -> Arc<Vec<f32>> {
        Arc::new(vec![x; 4])
    }

    #[test]
    fn hit_miss_and_model_switch() {
        let c = TextCache::new(8);
        assert!(c.get("m1", "a dog").is_none());
        c.put("m1", "a dog", v(1.0));
        assert_eq!(c.get("m1", "a dog").unwrap()[0], 1.0);
        // Another model's vector for the same words is not this model's.
        assert!(c.get("m2", "a dog").is_none());
        c.put("m2", "a dog", v(2.0));
        assert_eq!(c.get("m2", "a dog").unwrap()[0], 2.0);
        assert!(c.get("m1", "a dog").is_none());
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let c = TextCache::new(2);
        c.put("m", "a", v(1.0));
        c.put("m", "b", v(2.0));
        assert!(c.get("m", "a").is_some()); // "b" is now the oldest
        c.put("m", "c", v(3.0));
        assert_eq!(c.len(), 2);
        assert!(c.get("m", "b").is_none());
        assert!(c.get("m", "a").is_some() && c.get("m", "c").is_some());
        // Replacing an entry does not evict another.
        c.put("m", "c", v(4.0));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("m", "c").unwrap()[0], 4.0);
    }

    #[test]
    fn long_texts_are_not_kept() {
        let cache = TextCache::new(4);
        let long = "x".repeat(MAX_CACHED_TEXT_BYTES + 1);
        cache.put("m", &long, Arc::new(vec![1.0]));
        assert!(cache.get("m", &long).is_none());
        let edge = "x".repeat(MAX_CACHED_TEXT_BYTES);
        cache.put("m", &edge, Arc::new(vec![1.0]));
        assert!(cache.get("m", &edge).is_some());
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let c = TextCache::new(0);
        c.put("m", "a", v(1.0));
        assert!(c.is_empty());
    }
}
