//! The index's vectors as one flat table, written beside each checkpoint so
//! that a restarted daemon answers from the moment it starts.
//!
//! hnsw_rs reloads a graph one point at a time on one thread (about 2 s per
//! 100k vectors here, so tens of seconds at a million), and nothing in its API
//! builds a graph faster. Exact search needs no graph: while the graph loads
//! in the background, searches scan this table instead (every vector, on all
//! cores: exact results, at a few tens of milliseconds per million vectors),
//! and the table is dropped once the graph is in.
//!
//! File layout (little-endian): `DSQ8`, format u32 = 2, dim u32, reserved
//! u32, rows u64, then per row the store id u64 and the stored vector (`dim`
//! bytes of [`Q8`]; format 1 put a 4-byte scale before them). The
//! checkpoint's manifest holds its length and blake3, checked before it is
//! parsed.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use hnsw_rs::prelude::Distance;
use rayon::prelude::*;

use super::dist::{Q8, as_bytes, from_bytes};
use super::upgrade::SCALE;

const MAGIC: &[u8; 4] = b"DSQ8";
const FORMAT: u32 = 2;
/// Format 1: each vector's bytes came after its scale, [`SCALE`] bytes.
const SCALED_TABLE_FORMAT: u32 = 1;
const PREAMBLE: usize = 4 + 4 + 4 + 4 + 8;

/// Rows of (id, stored vector), kept as the file's bytes.
pub struct Flat {
    /// Bytes per row: the id, then the vector.
    row: usize,
    rows: usize,
    bytes: Vec<u8>,
}

impl Flat {
    /// Writes a table of `count` rows to `path`, not synced. `feed` passes
    /// each row to the writer it is given, and stops when it returns false
    /// (a failed write, whose error is then returned).
    pub fn write(
        path: &Path,
        dim: usize,
        count: usize,
        feed: impl FnOnce(&mut dyn FnMut(u64, &[Q8]) -> bool),
    ) -> io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
        w.write_all(MAGIC)?;
        w.write_all(&FORMAT.to_le_bytes())?;
        w.write_all(&(dim as u32).to_le_bytes())?;
        w.write_all(&0u32.to_le_bytes())?;
        w.write_all(&(count as u64).to_le_bytes())?;
        let mut written = 0usize;
        let mut failed = None;
        feed(&mut |id, v| {
            let r = if v.len() != dim {
                Err(io::Error::other(format!(
                    "vector {id} has {} elements, expected {dim}",
                    v.len()
                )))
            } else {
                w.write_all(&id.to_le_bytes())
                    .and_then(|()| w.write_all(as_bytes(v)))
            };
            match r {
                Ok(()) => written += 1,
                Err(e) => failed = Some(e),
            }
            failed.is_none()
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if written != count {
            return Err(io::Error::other(format!(
                "{written} rows written, {count} announced"
            )));
        }
        w.into_inner().map_err(|e| e.into_error())?.flush()
    }

    /// Parses a table of `dim`-dimensional vectors; the error says what does
    /// not match. `scaled`: the table is in format 1 (a 4-byte scale before
    /// each vector's bytes), and is converted to this format as it is read.
    pub fn parse(mut bytes: Vec<u8>, dim: usize, scaled: bool) -> Result<Flat, String> {
        if bytes.len() < PREAMBLE || &bytes[..4] != MAGIC {
            return Err("not a dualsight vector table".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let format = if scaled { SCALED_TABLE_FORMAT } else { FORMAT };
        if u32_at(4) != format {
            return Err(format!(
                "vector table format {} (expected {format})",
                u32_at(4)
            ));
        }
        if u32_at(8) as usize != dim {
            return Err(format!(
                "vector table of dim {} (expected {dim})",
                u32_at(8)
            ));
        }
        let rows = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        let row = 8 + dim;
        let stored = if scaled { row + SCALE } else { row };
        let want = usize::try_from(rows)
            .ok()
            .and_then(|r| r.checked_mul(stored))
            .and_then(|b| b.checked_add(PREAMBLE));
        if want != Some(bytes.len()) {
            return Err(format!(
                "vector table of {} bytes cannot hold {rows} rows of {stored}",
                bytes.len()
            ));
        }
        if scaled {
            // Rows only shrink, so each moves to where it belongs without
            // overwriting one not yet moved: in place, no second table.
            for i in 0..rows as usize {
                let from = PREAMBLE + i * stored;
                let to = PREAMBLE + i * row;
                bytes.copy_within(from..from + 8, to);
                bytes.copy_within(from + 8 + SCALE..from + stored, to + 8);
            }
            bytes.truncate(PREAMBLE + rows as usize * row);
            bytes[4..8].copy_from_slice(&FORMAT.to_le_bytes());
        }
        Ok(Flat {
            row,
            rows: rows as usize,
            bytes,
        })
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Row `i`'s id and stored vector.
    pub fn get(&self, i: usize) -> (u64, &[Q8]) {
        let at = PREAMBLE + i * self.row;
        let r = &self.bytes[at..at + self.row];
        let id = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
        (id, from_bytes(&r[8..]))
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &[Q8])> + '_ {
        (0..self.rows).map(|i| self.get(i))
    }

    /// The best `k` rows for `q` that `accept` takes, as (id, cosine), best
    /// first: exact over the stored vectors, one slice of rows per core.
    pub fn scan(
        &self,
        q: &[Q8],
        k: usize,
        accept: &(dyn Fn(u64) -> bool + Sync),
    ) -> Vec<(u64, f32)> {
        if k == 0 || self.is_empty() {
            return Vec::new();
        }
        const CHUNK: usize = 16_384;
        let mut all: Vec<(u64, f32)> = (0..self.rows.div_ceil(CHUNK))
            .into_par_iter()
            .flat_map_iter(|c| {
                let mut top = super::TopK::new(k);
                for i in c * CHUNK..((c + 1) * CHUNK).min(self.rows) {
                    let (id, v) = self.get(i);
                    if accept(id) {
                        top.offer(id, super::score_of(super::DualsightDot.eval(q, v)));
                    }
                }
                top.into_sorted()
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }
}

/// The table the graph is built from when it is rebuilt (`build.rs`).
impl super::build::Table for Flat {
    fn len(&self) -> usize {
        self.rows
    }

    fn dim(&self) -> usize {
        self.row - 8
    }

    /// The vector alone: the build reads one per distance, and has no use
    /// for the id `get` parses beside it.
    fn row(&self, p: usize) -> &[Q8] {
        let at = PREAMBLE + p * self.row;
        from_bytes(&self.bytes[at + 8..at + self.row])
    }

    fn id(&self, p: usize) -> u64 {
        self.get(p).0
    }
}

/// A table in this format written back in format 1, as the previous
/// dualsight wrote it (each vector behind a scale), for the tests of the
/// conversion.
#[cfg(test)]
pub(super) fn to_scaled_format(bytes: &[u8], dim: usize) -> Vec<u8> {
    let mut out = bytes[..PREAMBLE].to_vec();
    out[4..8].copy_from_slice(&SCALED_TABLE_FORMAT.to_le_bytes());
    for (i, r) in bytes[PREAMBLE..].chunks_exact(8 + dim).enumerate() {
        out.extend_from_slice(&r[..8]);
        // Any scale: the conversion drops it unread.
        out.extend_from_slice(&(i as f32 + 0.5).to_le_bytes()[..SCALE]);
        out.extend_from_slice(&r[8..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors(n: usize, dim: usize) -> Vec<(u64, Vec<Q8>)> {
        (0..n)
            .map(|i| {
                let v: Vec<f32> = (0..dim)
                    .map(|j| ((i * 31 + j * 7) % 13) as f32 - 6.0)
                    .collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-3);
                (
                    (i as u64) * 3 + 1,
                    super::super::dist::quantise(&v.iter().map(|x| x / norm).collect::<Vec<_>>()),
                )
            })
            .collect()
    }

    fn feed(rows: &[(u64, Vec<Q8>)], row: &mut dyn FnMut(u64, &[Q8]) -> bool) {
        for (id, v) in rows {
            if !row(*id, v) {
                return;
            }
        }
    }

    #[test]
    fn round_trips_and_scans_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let rows = vectors(40_000, 12);
        Flat::write(&path, 12, rows.len(), |row| feed(&rows, row)).unwrap();
        let flat = Flat::parse(std::fs::read(&path).unwrap(), 12, false).unwrap();
        assert_eq!(flat.len(), rows.len());
        assert!(
            flat.iter()
                .zip(&rows)
                .all(|((a, va), (b, vb))| a == *b && va == vb.as_slice())
        );
        // Against a brute force here: same ids, same order, odd ids refused.
        let q = &rows[123].1;
        let accept = |id: u64| id.is_multiple_of(2);
        let mut want: Vec<(u64, f32)> = rows
            .iter()
            .filter(|(id, _)| accept(*id))
            .map(|(id, v)| {
                (
                    *id,
                    super::super::score_of(super::super::DualsightDot.eval(q, v)),
                )
            })
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        want.truncate(25);
        assert_eq!(flat.scan(q, 25, &accept), want);
        assert!(flat.scan(q, 0, &accept).is_empty());
    }

    #[test]
    fn damaged_tables_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let rows = vectors(10, 4);
        Flat::write(&path, 4, 10, |row| feed(&rows, row)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let err = |b: Vec<u8>, dim| Flat::parse(b, dim, false).err().unwrap();
        assert!(err(bytes.clone(), 5).contains("dim 4 (expected 5)"));
        assert!(err(bytes[..bytes.len() - 1].to_vec(), 4).contains("cannot hold 10 rows"));
        assert!(err(b"JPEG".to_vec(), 4).contains("not a dualsight vector table"));
        let mut huge = bytes.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(huge, 4).contains("cannot hold"));
        // A table of the previous format is read only when announced, and
        // converted; its damage is refused the same way.
        let scaled = to_scaled_format(&bytes, 4);
        assert_eq!(scaled.len(), bytes.len() + 10 * SCALE);
        assert!(err(scaled.clone(), 4).contains("format 1 (expected 2)"));
        assert!(
            Flat::parse(bytes.clone(), 4, true)
                .err()
                .unwrap()
                .contains("format 2 (expected 1)")
        );
        assert!(
            Flat::parse(scaled[..scaled.len() - 4].to_vec(), 4, true)
                .err()
                .unwrap()
                .contains("cannot hold 10 rows of 16")
        );
        let converted = Flat::parse(scaled, 4, true).unwrap();
        assert_eq!(converted.bytes, bytes);
        assert_eq!(converted.len(), 10);
        assert!(
            converted
                .iter()
                .zip(&rows)
                .all(|((a, va), (b, vb))| a == *b && va == vb.as_slice())
        );
        // Announcing more rows than given is an error, not a short file.
        let short = Flat::write(&path, 4, 11, |row| feed(&rows, row));
        assert!(short.is_err());
    }
}
