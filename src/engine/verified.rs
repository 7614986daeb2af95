//! Which vector ids this process has read back intact. The startup scan asks
//! [`Engine::have_intact_vectors`](super::Engine::have_intact_vectors) of every
//! indexed file; later scans (the periodic reconcile, an inotify overflow)
//! need not read every vector again. One bit per id ever assigned: 125 KB
//! at a million.

use std::sync::{Mutex, PoisonError};

#[derive(Default)]
pub(super) struct Verified {
    words: Mutex<Vec<u64>>,
}

impl Verified {
    pub(super) fn contains(&self, id: u64) -> bool {
        let words = self.words.lock().unwrap_or_else(PoisonError::into_inner);
        let (w, bit) = Self::at(id);
        words.get(w).is_some_and(|x| x & bit != 0)
    }

    pub(super) fn insert(&self, id: u64) {
        let mut words = self.words.lock().unwrap_or_else(PoisonError::into_inner);
        let (w, bit) = Self::at(id);
        if words.len() <= w {
            words.resize(w + 1, 0);
        }
        words[w] |= bit;
    }

    fn at(id: u64) -> (usize, u64) {
        ((id / 64) as usize, 1 << (id % 64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_exactly_the_ids_inserted() {
        let v = Verified::default();
        for id in [0, 1, 63, 64, 1000, 1_000_001] {
            assert!(!v.contains(id));
            v.insert(id);
            assert!(v.contains(id));
        }
        assert!(!v.contains(2));
        assert!(!v.contains(65));
        assert!(!v.contains(999));
        assert!(!v.contains(5_000_000));
    }
}
