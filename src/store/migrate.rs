//! Schema 1 → 2: the vectors move out of sled into the segment files.
//!
//! Resumable: the first pass copies every vector sled still holds into its
//! segment (at its id's offset) and fsyncs; the second replaces each sled
//! value by its hash, in atomic batches. A crash in the second pass leaves
//! values of both kinds; the rerun copies only the long ones, whose records
//! may not be on disk yet, and the schema version changes last.

use super::*;

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
        for kv in s.vectors.iter() {
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
        for kv in s.vectors.iter() {
            let (k, v) = kv?;
            if v.len() > 32 {
                batch.insert(k, &v[..32]);
                in_batch += 1;
            }
            if in_batch == BATCH {
                s.vectors.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        s.vectors.apply_batch(batch)?;
        inner.db.flush()?;
        tracing::info!(
            space = s.fingerprint(),
            copied,
            "vectors moved to {}",
            s.segment_path().display()
        );
    }
    inner
        .meta
        .insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
    inner.db.flush()?;
    Ok(())
}
