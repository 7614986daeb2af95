//! Schema 1 → 2: the vectors move out of sled into the segment files.
//!
//! Resumable: the first pass copies every vector sled still holds into its
//! segment (at its id's offset) and fsyncs; the second replaces each sled
//! value by its hash, in atomic batches. A crash in the second pass leaves
//! values of both kinds; the rerun copies only the long ones, whose records
//! may not be on disk yet, and the schema version changes last.
//!
//! Schema 2 → 3: the per-file records (one sled key each) move into the
//! journal (`journal.rs`). Resumable: the journal is emptied and written
//! again from the old trees, flushed, and only then does the schema say 3;
//! the old trees go after that, at this or any later open.

use super::journal::{self, Op};
use super::*;

/// Trees of schema 2 that the journal replaces.
const SCHEMA2_TREES: [&str; 4] = ["files", "hash_paths", "hash_refs", "failures"];
/// Per-space trees of schema 2 that the journal replaces.
const SCHEMA2_SPACE_TREES: [&str; 2] = ["hash_id", "vectors"];
/// Schema 2's counters in `meta` and in each space's meta tree, now kept in memory.
const SCHEMA2_COUNTERS: [&[u8]; 2] = [b"file_count", b"failure_count"];
const SCHEMA2_SPACE_COUNTERS: [&[u8]; 2] = [b"vectors", b"paths"];

/// Values rewritten per sled batch.
const BATCH: usize = 4096;
/// How often the log says how far the copy is.
const PROGRESS_EVERY: u64 = 100_000;

pub(super) fn vectors_out_of_sled<'a>(
    inner: &Inner,
    spaces: impl Iterator<Item = &'a SledSpace>,
) -> Result<()> {
    tracing::info!(dir = %inner.dir.display(), "store schema 1: moving vectors out of sled (once)");
    for s in spaces {
        let legacy = 32 + 4 * s.dim;
        let total = s.vector_count()?;
        let mut copied = 0u64;
        let vectors = inner.db.open_tree(space_tree_name(s.no, "vectors"))?;
        for kv in vectors.iter() {
            let (k, v) = kv?;
            if v.len() == 32 {
                continue;
            }
            let bad = || StoreError::Corrupt(format!("space {}: schema 1 vector", s.fingerprint()));
            let id = read_u64_be(&k).ok_or_else(bad)?;
            if v.len() != legacy || id == 0 {
                return Err(bad());
            }
            let hash = decode_hash(&v[..32]).ok_or_else(bad)?;
            let vector: Vec<f32> = v[32..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            s.segment.write(id, &[(hash, &vector)])?;
            copied += 1;
            if copied.is_multiple_of(PROGRESS_EVERY) {
                tracing::info!(space = s.fingerprint(), copied, total, "moving vectors");
            }
        }
        s.segment.sync()?;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for kv in vectors.iter() {
            let (k, v) = kv?;
            if v.len() > 32 {
                batch.insert(k, &v[..32]);
                in_batch += 1;
            }
            if in_batch == BATCH {
                vectors.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        vectors.apply_batch(batch)?;
        inner.db.flush()?;
        tracing::info!(
            space = s.fingerprint(),
            copied,
            "vectors moved to {}",
            s.segment_path().display()
        );
    }
    inner.meta.insert(META_SCHEMA, &2u32.to_be_bytes())?;
    inner.db.flush()?;
    Ok(())
}

/// Schema 2 → 3 (module docs): writes the journal from schema 2's trees.
pub(super) fn records_into_journal<'a>(
    inner: &Inner,
    spaces: impl Iterator<Item = &'a SledSpace>,
) -> Result<()> {
    tracing::info!(dir = %inner.dir.display(), "store schema 2: moving the file records into the journal (once)");
    inner.journal.clear()?;
    let mut w = Writer::new(&inner.journal, 1);
    let mut files = 0u64;
    for kv in inner.db.open_tree(TREE_FILES)?.iter() {
        let (k, v) = kv?;
        let path = key_path(&k)?;
        let rec = decode_file(&v)
            .ok_or_else(|| StoreError::Corrupt(format!("files {path}: bad record")))?;
        w.push(Op::File(path.into(), rec))?;
        files += 1;
        if files.is_multiple_of(PROGRESS_EVERY) {
            tracing::info!(files, "moving file records");
        }
    }
    for kv in inner.db.open_tree(TREE_FAILURES)?.iter() {
        let (k, v) = kv?;
        let path = key_path(&k)?;
        let rec = decode_failure(&path, &v)?;
        w.push(Op::Failure(path.into(), rec))?;
    }
    for s in spaces {
        for kv in inner.db.open_tree(space_tree_name(s.no, "vectors"))?.iter() {
            let (k, v) = kv?;
            let bad = || StoreError::Corrupt(format!("space {}: schema 2 vector", s.fingerprint()));
            let id = read_u64_be(&k).ok_or_else(bad)?;
            let hash = decode_hash(&v).ok_or_else(bad)?;
            w.push(Op::Vector {
                space: s.no,
                id,
                hash,
            })?;
        }
    }
    w.finish()?;
    inner.db.flush()?;
    inner
        .meta
        .insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
    inner.db.flush()?;
    tracing::info!(files, "file records moved into the journal");
    Ok(())
}

/// Removes what schema 2 kept that the journal replaced, if anything is left.
pub(super) fn drop_schema2_trees<'a>(
    inner: &Inner,
    spaces: impl Iterator<Item = &'a SledSpace>,
) -> Result<()> {
    let names = inner.db.tree_names();
    let has = |n: &str| names.iter().any(|t| &t[..] == n.as_bytes());
    let mut dropped = false;
    for name in SCHEMA2_TREES {
        if has(name) {
            dropped |= inner.db.drop_tree(name)?;
        }
    }
    for key in SCHEMA2_COUNTERS {
        dropped |= inner.meta.remove(key)?.is_some();
    }
    for s in spaces {
        for kind in SCHEMA2_SPACE_TREES {
            let name = space_tree_name(s.no, kind);
            if has(&name) {
                dropped |= inner.db.drop_tree(name)?;
            }
        }
        for key in SCHEMA2_SPACE_COUNTERS {
            dropped |= s.meta.remove(key)?.is_some();
        }
    }
    if dropped {
        inner.db.flush()?;
    }
    Ok(())
}

/// Writes operations into the journal an entry of
/// [`journal::OPS_PER_ENTRY`] at a time, from sequence number `seq`.
pub(super) struct Writer<'a> {
    journal: &'a Tree,
    seq: u64,
    ops: Vec<Op>,
    /// Bytes of the entries written so far.
    bytes: u64,
}

impl<'a> Writer<'a> {
    /// Entries from `seq` on.
    pub(super) fn new(journal: &'a Tree, seq: u64) -> Self {
        Writer {
            journal,
            seq,
            ops: Vec::new(),
            bytes: 0,
        }
    }

    pub(super) fn push(&mut self, op: Op) -> Result<()> {
        self.ops.push(op);
        if self.ops.len() == journal::OPS_PER_ENTRY {
            self.flush_entry()?;
        }
        Ok(())
    }

    fn flush_entry(&mut self) -> Result<()> {
        if !self.ops.is_empty() {
            let entry = journal::encode(&self.ops);
            self.bytes += entry.len() as u64;
            self.journal.insert(u64_be(self.seq), entry)?;
            self.seq += 1;
            self.ops.clear();
        }
        Ok(())
    }

    /// Writes what is left; returns the next sequence number and the bytes
    /// of every entry written.
    pub(super) fn finish(mut self) -> Result<(u64, u64)> {
        self.flush_entry()?;
        Ok((self.seq, self.bytes))
    }
}
