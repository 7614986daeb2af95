//! Per-file and per-content records (file records, failures, and each space's
//! vector of a content) as a journal: one sled value per write, holding that
//! write's operations, keyed by a sequence number, and replayed into memory
//! ([`State`]) when the store opens; lookups are answered from memory.
//!
//! Why not one sled key per record, as schema 2 did: right after a write,
//! sled 0.34 takes about 3.4 times a small key's bytes on disk, and 9 times
//! under random keys such as content hashes, while one write's operations in
//! one value take about 1.35 times theirs (BENCHMARKS.md, "sled's bytes per
//! file"). The journal keeps sled's transactions: an entry commits with the
//! space counters it moves, or not at all.
//!
//! Once the journal holds more than twice what is live plus a margin, it is
//! rewritten from memory ([`SledStore::compact_journal`]): the new entries go
//! after the old ones, and only then are the old ones removed, oldest first.
//! A crash anywhere in between replays to the same state: the old entries, or
//! a suffix of them, end where the rewrite starts, and the rewrite puts every
//! live record again.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock};

use super::codec::FILE_RECORD_LEN;
use super::entry::failure_json;
pub(super) use super::entry::{decode, encode};
use super::{ContentHash, FailureRecord, FileRecord, Result, StoreError};

/// An entry's bytes for one vector, about: tag, space, id, hash.
const VECTOR_OP_LEN: u64 = 1 + 1 + 3 + 32;
/// Operations per entry when the journal is rewritten or a store migrated.
pub(super) const OPS_PER_ENTRY: usize = 4096;
/// What the journal may hold beyond twice the live records before a rewrite.
pub(super) const REWRITE_SLACK: u64 = 64 << 20;

/// One change to the records. Replaying is idempotent per key: the last
/// operation on a path or a vector id is what holds.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Op {
    File(Arc<str>, FileRecord),
    Unfile(Arc<str>),
    Failure(Arc<str>, FailureRecord),
    Unfail(Arc<str>),
    Vector {
        space: u64,
        id: u64,
        hash: ContentHash,
    },
    Unvector {
        space: u64,
        id: u64,
    },
}

/// The paths of one content: nearly always one, held without a `Vec`'s
/// allocation.
#[derive(Debug)]
enum Links {
    One(Arc<str>),
    Many(Vec<Arc<str>>),
}

impl Links {
    fn as_slice(&self) -> &[Arc<str>] {
        match self {
            Links::One(p) => std::slice::from_ref(p),
            Links::Many(ps) => ps,
        }
    }

    fn push(&mut self, path: Arc<str>) {
        match self {
            Links::One(p) => *self = Links::Many(vec![p.clone(), path]),
            Links::Many(ps) => ps.push(path),
        }
    }

    /// Removes `path`; true when none is left.
    fn remove(&mut self, path: &str) -> bool {
        match self {
            Links::One(p) => &**p == path,
            Links::Many(ps) => {
                ps.retain(|p| &**p != path);
                let empty = ps.is_empty();
                if let [only] = &ps[..] {
                    *self = Links::One(only.clone());
                }
                empty
            }
        }
    }
}

/// One space's vectors by content, and the paths they index.
#[derive(Default, Debug, PartialEq)]
pub(super) struct SpaceState {
    pub(super) ids: HashMap<ContentHash, u64>,
    pub(super) hashes: BTreeMap<u64, ContentHash>,
    /// Paths whose content has a vector here.
    pub(super) paths: u64,
}

/// Everything the journal says, in memory.
#[derive(Default, Debug)]
pub(super) struct State {
    pub(super) files: BTreeMap<Arc<str>, FileRecord>,
    /// Every path of a content (order of arrival).
    links: HashMap<ContentHash, Links>,
    pub(super) failures: BTreeMap<Arc<str>, FailureRecord>,
    pub(super) spaces: HashMap<u64, SpaceState>,
    /// Bytes the journal's entries hold, and what rewriting it would write.
    pub(super) journal_bytes: u64,
    live_bytes: u64,
    /// The fraction of `live_bytes` (which counts paths whole) that shared
    /// path starts save in a rewrite: measured by the last rewrite, or
    /// guessed at open.
    shared: f64,
    /// The key of the next entry.
    pub(super) next_seq: u64,
    /// No rewrite is wanted below this many journal bytes: set when one
    /// failed, so that each write does not retry it.
    rewrite_after: u64,
}

pub(super) type Shared = Arc<RwLock<State>>;

pub(super) fn read(s: &Shared) -> std::sync::RwLockReadGuard<'_, State> {
    s.read().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn write(s: &Shared) -> std::sync::RwLockWriteGuard<'_, State> {
    s.write().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// Paths holding `hash`.
    pub(super) fn refs(&self, hash: &ContentHash) -> u64 {
        self.links
            .get(hash)
            .map_or(0, |p| p.as_slice().len() as u64)
    }

    /// Every path of `hash`, in byte order.
    pub(super) fn paths_of(&self, hash: &ContentHash) -> Vec<String> {
        let mut out: Vec<String> = self
            .links
            .get(hash)
            .map(|ps| ps.as_slice().iter().map(|p| p.to_string()).collect())
            .unwrap_or_default();
        out.sort_unstable();
        out
    }

    /// Whether the journal should be rewritten (module docs).
    pub(super) fn wants_rewrite(&self) -> bool {
        let live = self.live_bytes as f64 * (1.0 - self.shared);
        self.journal_bytes >= self.rewrite_after
            && self.journal_bytes as f64 > 2.0 * live + REWRITE_SLACK as f64
    }

    /// After a failed rewrite: the next waits until the journal has grown
    /// by a quarter of the slack.
    pub(super) fn defer_rewrite(&mut self) {
        self.rewrite_after = self.journal_bytes + REWRITE_SLACK / 4;
    }

    /// Applies one operation; ops on a space this state does not hold (one
    /// dropped since) are passed over.
    pub(super) fn apply(&mut self, op: Op) {
        match op {
            Op::File(path, rec) => {
                if let Some(old) = self.files.insert(path.clone(), rec) {
                    self.live_bytes = self.live_bytes.saturating_sub(file_op_len(&path));
                    self.unlink(&old.hash, &path);
                }
                self.live_bytes += file_op_len(&path);
                self.link(rec.hash, path);
            }
            Op::Unfile(path) => {
                if let Some(old) = self.files.remove(&path) {
                    self.live_bytes = self.live_bytes.saturating_sub(file_op_len(&path));
                    self.unlink(&old.hash, &path);
                }
            }
            Op::Failure(path, rec) => {
                if let Some(old) = self.failures.get(&path) {
                    self.live_bytes = self.live_bytes.saturating_sub(failure_op_len(&path, old));
                }
                self.live_bytes += failure_op_len(&path, &rec);
                self.failures.insert(path, rec);
            }
            Op::Unfail(path) => {
                if let Some(old) = self.failures.remove(&path) {
                    self.live_bytes = self.live_bytes.saturating_sub(failure_op_len(&path, &old));
                }
            }
            Op::Vector { space, id, hash } => {
                let refs = self.refs(&hash);
                let Some(s) = self.spaces.get_mut(&space) else {
                    return;
                };
                if let Some(old) = s.hashes.insert(id, hash) {
                    let gone = self.links.get(&old).map_or(0, |p| p.as_slice().len());
                    s.paths = s.paths.saturating_sub(gone as u64);
                    if s.ids.get(&old) == Some(&id) {
                        s.ids.remove(&old);
                    }
                } else {
                    self.live_bytes += VECTOR_OP_LEN;
                }
                s.ids.insert(hash, id);
                s.paths += refs;
            }
            Op::Unvector { space, id } => {
                let Some(s) = self.spaces.get_mut(&space) else {
                    return;
                };
                if let Some(hash) = s.hashes.remove(&id) {
                    self.live_bytes = self.live_bytes.saturating_sub(VECTOR_OP_LEN);
                    if s.ids.get(&hash) == Some(&id) {
                        s.ids.remove(&hash);
                    }
                    let gone = self.links.get(&hash).map_or(0, |p| p.as_slice().len());
                    s.paths = s.paths.saturating_sub(gone as u64);
                }
            }
        }
    }

    fn link(&mut self, hash: ContentHash, path: Arc<str>) {
        match self.links.entry(hash) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().push(path),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Links::One(path));
            }
        }
        for s in self.spaces.values_mut() {
            if s.ids.contains_key(&hash) {
                s.paths += 1;
            }
        }
    }

    fn unlink(&mut self, hash: &ContentHash, path: &str) {
        if let Some(ps) = self.links.get_mut(hash)
            && ps.remove(path)
        {
            self.links.remove(hash);
        }
        for s in self.spaces.values_mut() {
            if s.ids.contains_key(hash) {
                s.paths = s.paths.saturating_sub(1);
            }
        }
    }

    /// Forgets a dropped space's vectors (its journal entries stay until
    /// the next rewrite, which leaves them out).
    pub(super) fn drop_space(&mut self, no: u64) {
        if let Some(s) = self.spaces.remove(&no) {
            self.live_bytes = self
                .live_bytes
                .saturating_sub(VECTOR_OP_LEN * s.hashes.len() as u64);
        }
    }

    /// Every live record as operations: what a rewrite writes.
    pub(super) fn live_ops(&self) -> impl Iterator<Item = Op> + '_ {
        let files = self.files.iter().map(|(p, r)| Op::File(p.clone(), *r));
        let failures = self
            .failures
            .iter()
            .map(|(p, f)| Op::Failure(p.clone(), f.clone()));
        let vectors = self.spaces.iter().flat_map(|(&space, s)| {
            s.hashes
                .iter()
                .map(move |(&id, &hash)| Op::Vector { space, id, hash })
        });
        files.chain(failures).chain(vectors)
    }

    /// Up to `n` file records after `after` (from the start when `None`)
    /// that begin with `prefix`, in byte order: a page of an iteration
    /// that holds the lock only per page.
    pub(super) fn files_page(
        &self,
        after: Option<&str>,
        prefix: &str,
        n: usize,
    ) -> Vec<(String, FileRecord)> {
        let start = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Included(prefix),
        };
        self.files
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(prefix))
            .take(n)
            .map(|(p, r)| (p.to_string(), *r))
            .collect()
    }

    /// The same for failure records.
    pub(super) fn failures_page(
        &self,
        after: Option<&str>,
        n: usize,
    ) -> Vec<(String, FailureRecord)> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.failures
            .range::<str, _>((start, Bound::Unbounded))
            .take(n)
            .map(|(p, f)| (p.to_string(), f.clone()))
            .collect()
    }

    /// Whether two states hold the same records (fsck: memory against a
    /// fresh replay of the journal).
    pub(super) fn same_records(&self, other: &State) -> bool {
        self.files == other.files
            && self.failures == other.failures
            && self.spaces == other.spaces
            && self.links.len() == other.links.len()
    }

    /// Rebuilds the per-content links from the file records and says
    /// whether they match the ones kept (fsck).
    pub(super) fn links_match_files(&self) -> bool {
        let mut counted: HashMap<ContentHash, u64> = HashMap::new();
        for r in self.files.values() {
            *counted.entry(r.hash).or_default() += 1;
        }
        counted.len() == self.links.len()
            && counted.iter().all(|(h, &n)| {
                self.links.get(h).is_some_and(|ps| {
                    let ps = ps.as_slice();
                    ps.len() as u64 == n
                        && ps
                            .iter()
                            .all(|p| self.files.get(p).map(|r| r.hash) == Some(*h))
                })
            })
    }
}

impl super::SledStore {
    /// Rewrites the journal from memory (module docs); the store does this
    /// by itself once the journal holds more than twice what is live.
    pub fn compact_journal(&self) -> Result<()> {
        let writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.compact_journal_locked(&writer)
    }

    /// [`SledStore::compact_journal`](super::SledStore::compact_journal)
    /// for the holder of the writer lock.
    pub(super) fn compact_journal_locked(
        &self,
        _writer: &std::sync::MutexGuard<'_, ()>,
    ) -> Result<()> {
        let inner = &self.inner;
        let started = std::time::Instant::now();
        let (from, next, written, bytes) = {
            let state = read(&inner.state);
            let from = state.next_seq;
            let mut w = super::migrate::Writer::new(&inner.journal, from);
            for op in state.live_ops() {
                w.push(op)?;
            }
            let (next, written) = w.finish()?;
            (from, next, written, state.live_bytes)
        };
        inner.db.flush()?;
        // Only now, oldest first (module docs).
        let before = super::codec::u64_be(from);
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for k in inner.journal.range(..before.as_slice()).keys() {
            batch.remove(k?);
            n += 1;
            if n % OPS_PER_ENTRY == 0 {
                inner.journal.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        inner.journal.apply_batch(batch)?;
        inner.db.flush()?;
        let mut state = write(&inner.state);
        let was = state.journal_bytes;
        state.next_seq = next;
        // The writer lock is held, so the journal is what the rewrite wrote.
        state.journal_bytes = written;
        state.rewrite_after = 0;
        state.shared = shared(state.journal_bytes, state.live_bytes);
        tracing::info!(
            from_bytes = was,
            to_bytes = state.journal_bytes,
            live_bytes = bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "journal rewritten"
        );
        Ok(())
    }
}

/// What a `journal` of that many bytes saves on `live` (see `State::shared`).
fn shared(journal: u64, live: u64) -> f64 {
    if live == 0 {
        0.0
    } else {
        1.0 - (journal as f64 / live as f64).min(1.0)
    }
}

/// The keys of `map` that are `dir` or under it (`prefix`: `dir` and a
/// separator), in byte order.
pub(super) fn keys_under<'a, V>(
    map: &'a BTreeMap<Arc<str>, V>,
    dir: &'a str,
    prefix: &'a str,
) -> impl Iterator<Item = &'a Arc<str>> + 'a {
    map.get_key_value(dir).map(|(k, _)| k).into_iter().chain(
        map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(move |k| k.starts_with(prefix)),
    )
}

// What a record takes in a rewritten journal, about (as if its path shared
// nothing with the one before it: this errs on the large side).
fn file_op_len(path: &str) -> u64 {
    (1 + 2 + path.len() + FILE_RECORD_LEN) as u64
}

fn failure_op_len(path: &str, f: &FailureRecord) -> u64 {
    (1 + 2 + path.len() + 2 + failure_json(f).len()) as u64
}

/// Replays every entry of `journal` into a state holding the spaces `known`.
pub(super) fn replay(journal: &sled::Tree, known: impl Iterator<Item = u64>) -> Result<State> {
    let mut st = State {
        spaces: known.map(|no| (no, SpaceState::default())).collect(),
        next_seq: 1,
        ..State::default()
    };
    for kv in journal.iter() {
        let (k, v) = kv?;
        let seq = super::codec::read_u64_be(&k)
            .ok_or_else(|| StoreError::Corrupt("journal: bad key".into()))?;
        for op in decode(seq, &v)? {
            st.apply(op);
        }
        st.journal_bytes += v.len() as u64;
        st.next_seq = seq + 1;
    }
    // Maps grown one key at a time in key order leave their nodes about half
    // full; collected again, std builds them full (~40% less memory).
    st.files = std::mem::take(&mut st.files).into_iter().collect();
    // A journal smaller than its records counted whole has shared path
    // starts; one larger holds dead entries, and the guess stays none.
    st.shared = shared(st.journal_bytes, st.live_bytes);
    for s in st.spaces.values_mut() {
        s.hashes = std::mem::take(&mut s.hashes).into_iter().collect();
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::super::entry::tests::rec;
    use super::*;

    #[test]
    fn a_rewrite_is_wanted_past_twice_what_is_live() {
        let mb = 1 << 20;
        let st = |journal, live, shared| State {
            journal_bytes: journal,
            live_bytes: live,
            shared,
            ..State::default()
        };
        assert!(!st(200 * mb, 100 * mb, 0.0).wants_rewrite());
        assert!(st(300 * mb, 100 * mb, 0.0).wants_rewrite());
        // Shared path starts make a rewrite smaller, so it comes sooner.
        assert!(st(200 * mb, 100 * mb, 0.5).wants_rewrite());
        // Nor is a small journal ever rewritten for a few dead entries.
        assert!(!st(60 * mb, mb, 0.0).wants_rewrite());
        assert_eq!(shared(50, 100), 0.5);
        assert_eq!(shared(150, 100), 0.0);
        // A failed rewrite waits for a quarter of the slack more journal.
        let mut failed = st(300 * mb, 100 * mb, 0.0);
        failed.defer_rewrite();
        assert!(!failed.wants_rewrite());
        failed.journal_bytes += REWRITE_SLACK / 4;
        assert!(failed.wants_rewrite());
    }

    #[test]
    fn counts_follow_links_and_vectors() {
        let mut st = State::default();
        st.spaces.insert(1, SpaceState::default());
        st.apply(Op::File("/a".into(), rec(1)));
        st.apply(Op::File("/b".into(), rec(1)));
        st.apply(Op::Vector {
            space: 1,
            id: 1,
            hash: ContentHash([1; 32]),
        });
        assert_eq!(st.spaces[&1].paths, 2);
        // A path changing content leaves the old one with one path.
        st.apply(Op::File("/b".into(), rec(2)));
        assert_eq!(
            (st.spaces[&1].paths, st.refs(&ContentHash([1; 32]))),
            (1, 1)
        );
        st.apply(Op::Unvector { space: 1, id: 1 });
        assert_eq!(st.spaces[&1].paths, 0);
        // Ops on a space not held (dropped) are passed over.
        st.apply(Op::Vector {
            space: 9,
            id: 1,
            hash: ContentHash([2; 32]),
        });
        assert!(!st.spaces.contains_key(&9));
        assert!(st.links_match_files());
        // Replaying the live records into an empty state gives the same.
        let mut again = State::default();
        again.spaces.insert(1, SpaceState::default());
        for op in st.live_ops() {
            again.apply(op);
        }
        assert!(again.same_records(&st));
        assert_eq!(again.live_bytes, st.live_bytes);
    }
}
