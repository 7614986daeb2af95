//! The transaction view: every write is one sled transaction over the
//! journal and every space's meta tree, through [`SledStore::write`]; [`Tx`]
//! holds the steps writes are made of. They read the records in memory
//! (`journal::State`) through this write's own changes, and record
//! operations, which become one journal entry with the transaction and are
//! applied to memory once it is flushed.

use std::cell::RefCell;
use std::collections::HashMap;

use super::journal::{self, Op, State};
use super::*;

impl SledStore {
    /// Runs `f` as one transaction (the journal and every space's meta
    /// tree), then flushes and applies its operations to memory. `f` may run
    /// more than once (sled retries on conflict): it must only touch the
    /// transaction and its own locals.
    pub(super) fn write<A>(&self, f: impl Fn(&Tx<'_>) -> TxResult<A>) -> Result<A> {
        let writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.write_locked(&writer, f)
    }

    /// [`SledStore::write`] for a caller that already holds the writer lock.
    pub(super) fn write_locked<A>(
        &self,
        writer: &std::sync::MutexGuard<'_, ()>,
        f: impl Fn(&Tx<'_>) -> TxResult<A>,
    ) -> Result<A> {
        let inner = &self.inner;
        let guard = inner.read_spaces();
        let spaces: Vec<SledSpace> = guard.values().cloned().collect();
        let mut trees: Vec<&Tree> = vec![&inner.journal];
        for s in &spaces {
            trees.push(&s.meta);
        }
        let (out, ops, bytes) = {
            let state = journal::read(&inner.state);
            let seq = state.next_seq;
            trees[..]
                .transaction(|t| {
                    let tx = Tx {
                        t,
                        spaces: &spaces,
                        state: &state,
                        ov: RefCell::default(),
                    };
                    let out = f(&tx)?;
                    let ops = tx.ov.into_inner().ops;
                    let mut bytes = 0;
                    if !ops.is_empty() {
                        let entry = journal::encode(&ops);
                        bytes = entry.len() as u64;
                        t[0].insert(&u64_be(seq)[..], entry)?;
                    }
                    Ok((out, ops, bytes))
                })
                .map_err(tx_error)?
        };
        drop(guard);
        inner.db.flush()?;
        if !ops.is_empty() {
            let mut state = journal::write(&inner.state);
            for op in ops {
                state.apply(op);
            }
            state.next_seq += 1;
            state.journal_bytes += bytes;
            let rewrite = state.wants_rewrite();
            drop(state);
            // The write is durable and applied: a rewrite that fails (a full
            // disk) is logged, not reported as the write's failure, and is
            // tried again once the journal has grown by its slack.
            if rewrite && let Err(e) = self.compact_journal_locked(writer) {
                tracing::warn!(error = %e, "journal rewrite failed; the write stands");
                journal::write(&inner.state).defer_rewrite();
            }
        }
        Ok(out)
    }
}

pub(super) type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

/// What a write changed so far, over the state it started from.
#[derive(Default)]
pub(super) struct Overlay {
    ops: Vec<Op>,
    files: HashMap<Arc<str>, Option<FileRecord>>,
    refs: HashMap<ContentHash, i64>,
    failures: HashMap<Arc<str>, Option<FailureRecord>>,
    ids: HashMap<(u64, ContentHash), Option<u64>>,
    hashes: HashMap<(u64, u64), Option<ContentHash>>,
}

/// The store's write primitives inside one transaction; each keeps links
/// and counts consistent.
pub(super) struct Tx<'a> {
    t: &'a [TransactionalTree],
    spaces: &'a [SledSpace],
    state: &'a State,
    ov: RefCell<Overlay>,
}

pub(super) fn corrupt<T>(msg: String) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(StoreError::Corrupt(
        msg,
    )))
}

impl Tx<'_> {
    pub(super) fn space_index(&self, space: &SledSpace) -> TxResult<usize> {
        match self.spaces.iter().position(|s| s.no == space.no) {
            Some(i) => Ok(i),
            None => Err(ConflictableTransactionError::Abort(StoreError::StaleSpace(
                space.fingerprint().into(),
            ))),
        }
    }

    pub(super) fn file(&self, path: &str) -> TxResult<Option<FileRecord>> {
        if let Some(r) = self.ov.borrow().files.get(path) {
            return Ok(*r);
        }
        Ok(self.state.files.get(path).copied())
    }

    /// Paths holding `hash` now.
    fn refs(&self, hash: &ContentHash) -> u64 {
        let delta = self.ov.borrow().refs.get(hash).copied().unwrap_or(0);
        self.state.refs(hash).saturating_add_signed(delta)
    }

    pub(super) fn vector_id(&self, i: usize, hash: &ContentHash) -> TxResult<Option<u64>> {
        let no = self.spaces[i].no;
        if let Some(id) = self.ov.borrow().ids.get(&(no, *hash)) {
            return Ok(*id);
        }
        Ok(self
            .state
            .spaces
            .get(&no)
            .and_then(|s| s.ids.get(hash).copied()))
    }

    /// Overwrites a record whose content (hash) is unchanged.
    pub(super) fn put_record(&self, path: &str, rec: &FileRecord) -> TxResult<()> {
        let p: Arc<str> = path.into();
        let mut ov = self.ov.borrow_mut();
        ov.files.insert(p.clone(), Some(*rec));
        ov.ops.push(Op::File(p, *rec));
        Ok(())
    }

    /// Adds a record for a path that has none.
    pub(super) fn link(&self, path: &str, rec: &FileRecord) -> TxResult<()> {
        self.put_record(path, rec)?;
        *self.ov.borrow_mut().refs.entry(rec.hash).or_default() += 1;
        Ok(())
    }

    /// Removes a path's record. A content left with no path goes into
    /// `pending`; [`Tx::finalize_orphans`] deletes its vectors at the end, so
    /// a content that another item of the same transaction links again (a
    /// rename, a swap) keeps its vector.
    pub(super) fn unlink(
        &self,
        path: &str,
        pending: &mut BTreeSet<ContentHash>,
    ) -> TxResult<Option<FileRecord>> {
        let Some(rec) = self.file(path)? else {
            return Ok(None);
        };
        {
            let p: Arc<str> = path.into();
            let mut ov = self.ov.borrow_mut();
            ov.files.insert(p.clone(), None);
            ov.ops.push(Op::Unfile(p));
            *ov.refs.entry(rec.hash).or_default() -= 1;
        }
        if self.refs(&rec.hash) == 0 {
            pending.insert(rec.hash);
        }
        Ok(Some(rec))
    }

    /// Records the highest id a batch wrote to space `i`'s segment.
    pub(super) fn set_last_id(&self, i: usize, last: u64) -> TxResult<()> {
        self.t[1 + i].insert(SPACE_LAST_ID, &u64_be(last)[..])?;
        Ok(())
    }

    /// The vector for `hash` in space `i`: the existing one, or the one the
    /// batch wrote to the segment under `written`: (id, created).
    pub(super) fn add_vector(
        &self,
        i: usize,
        hash: &ContentHash,
        written: Option<&u64>,
    ) -> TxResult<(u64, bool)> {
        if let Some(id) = self.vector_id(i, hash)? {
            return Ok((id, false));
        }
        let Some(&id) = written else {
            return corrupt(format!(
                "content {hash}: no vector written for it (a write outside the writer lock?)"
            ));
        };
        let space = self.spaces[i].no;
        let mut ov = self.ov.borrow_mut();
        ov.ids.insert((space, *hash), Some(id));
        ov.hashes.insert((space, id), Some(*hash));
        ov.ops.push(Op::Vector {
            space,
            id,
            hash: *hash,
        });
        Ok((id, true))
    }

    /// Deletes, in every space, the vectors of contents that ended the
    /// transaction with no path.
    pub(super) fn finalize_orphans(
        &self,
        pending: &BTreeSet<ContentHash>,
        out: &mut Vec<Orphan>,
    ) -> TxResult<()> {
        for hash in pending {
            if self.refs(hash) != 0 {
                continue;
            }
            for (i, s) in self.spaces.iter().enumerate() {
                if let Some(id) = self.vector_id(i, hash)? {
                    self.remove_vector(i, id, hash)?;
                    out.push(Orphan {
                        fingerprint: s.fingerprint().to_owned(),
                        id,
                    });
                }
            }
        }
        Ok(())
    }

    /// Deletes vector `id` (of content `hash`) from space `i`; the paths
    /// holding that content stop counting as indexed there.
    pub(super) fn remove_vector(&self, i: usize, id: u64, hash: &ContentHash) -> TxResult<()> {
        let space = self.spaces[i].no;
        let mut ov = self.ov.borrow_mut();
        ov.ids.insert((space, *hash), None);
        ov.hashes.insert((space, id), None);
        ov.ops.push(Op::Unvector { space, id });
        Ok(())
    }

    /// The content hash of live vector `id` in space `i`.
    pub(super) fn vector_hash(&self, i: usize, id: u64) -> TxResult<Option<ContentHash>> {
        let no = self.spaces[i].no;
        if let Some(h) = self.ov.borrow().hashes.get(&(no, id)) {
            return Ok(*h);
        }
        Ok(self
            .state
            .spaces
            .get(&no)
            .and_then(|s| s.hashes.get(&id).copied()))
    }

    pub(super) fn rename(
        &self,
        old: &str,
        new: &str,
        pending: &mut BTreeSet<ContentHash>,
    ) -> TxResult<bool> {
        if old == new {
            return Ok(self.file(old)?.is_some());
        }
        if let Some(f) = self.failure(old)? {
            self.clear_failure(old)?;
            self.put_failure(new, &f)?;
        }
        let Some(rec) = self.file(old)? else {
            return Ok(false);
        };
        self.unlink(new, pending)?;
        self.clear_failure(new)?;
        self.unlink(old, pending)?;
        self.link(new, &rec)?;
        Ok(true)
    }

    pub(super) fn failure(&self, path: &str) -> TxResult<Option<FailureRecord>> {
        if let Some(f) = self.ov.borrow().failures.get(path) {
            return Ok(f.clone());
        }
        Ok(self.state.failures.get(path).cloned())
    }

    pub(super) fn put_failure(&self, path: &str, rec: &FailureRecord) -> TxResult<()> {
        let p: Arc<str> = path.into();
        let mut ov = self.ov.borrow_mut();
        ov.failures.insert(p.clone(), Some(rec.clone()));
        ov.ops.push(Op::Failure(p, rec.clone()));
        Ok(())
    }

    pub(super) fn clear_failure(&self, path: &str) -> TxResult<bool> {
        if self.failure(path)?.is_none() {
            return Ok(false);
        }
        let p: Arc<str> = path.into();
        let mut ov = self.ov.borrow_mut();
        ov.failures.insert(p.clone(), None);
        ov.ops.push(Op::Unfail(p));
        Ok(true)
    }
}

pub(super) fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Db(e),
    }
}
