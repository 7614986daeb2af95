//! One journal entry's bytes (`journal.rs`): a version byte, then its
//! operations, each a tag and its fields. Integers are LEB128 varints, and a
//! path is written as the length it shares with the entry's previous path
//! plus the rest: a batch's photos mostly share their folder.

use std::sync::Arc;

use super::codec::{FILE_RECORD_LEN, decode_file, encode_file};
use super::journal::Op;
use super::{ContentHash, FailureRecord, Result, StoreError};

/// The first byte of every entry: its layout.
const ENTRY_VERSION: u8 = 1;
const OP_FILE: u8 = 1;
const OP_UNFILE: u8 = 2;
const OP_FAILURE: u8 = 3;
const OP_UNFAIL: u8 = 4;
const OP_VECTOR: u8 = 5;
const OP_UNVECTOR: u8 = 6;

pub(super) fn failure_json(f: &FailureRecord) -> Vec<u8> {
    serde_json::to_vec(f).expect("failure record serialises")
}

/// One entry's bytes (module docs).
pub(super) fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = vec![ENTRY_VERSION];
    let mut prev: &str = "";
    for op in ops {
        let path = match op {
            Op::File(p, _) | Op::Unfile(p) | Op::Failure(p, _) | Op::Unfail(p) => Some(p),
            _ => None,
        };
        match op {
            Op::File(p, r) => {
                out.push(OP_FILE);
                put_path(&mut out, prev, p);
                out.extend_from_slice(&encode_file(r));
            }
            Op::Unfile(p) => {
                out.push(OP_UNFILE);
                put_path(&mut out, prev, p);
            }
            Op::Failure(p, f) => {
                out.push(OP_FAILURE);
                put_path(&mut out, prev, p);
                let json = failure_json(f);
                put_varint(&mut out, json.len() as u64);
                out.extend_from_slice(&json);
            }
            Op::Unfail(p) => {
                out.push(OP_UNFAIL);
                put_path(&mut out, prev, p);
            }
            Op::Vector { space, id, hash } => {
                out.push(OP_VECTOR);
                put_varint(&mut out, *space);
                put_varint(&mut out, *id);
                out.extend_from_slice(&hash.0);
            }
            Op::Unvector { space, id } => {
                out.push(OP_UNVECTOR);
                put_varint(&mut out, *space);
                put_varint(&mut out, *id);
            }
        }
        if let Some(p) = path {
            prev = p;
        }
    }
    out
}

/// A path after `prev` (module docs).
fn put_path(out: &mut Vec<u8>, prev: &str, p: &str) {
    let shared = prev
        .bytes()
        .zip(p.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    // Only whole characters are shared, so each part is UTF-8 alone.
    let shared = (0..=shared)
        .rev()
        .find(|&i| p.is_char_boundary(i))
        .unwrap_or(0);
    put_varint(out, shared as u64);
    put_varint(out, (p.len() - shared) as u64);
    out.extend_from_slice(&p.as_bytes()[shared..]);
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads entry `seq` back, naming it and the offset of what is wrong.
pub(super) fn decode(seq: u64, b: &[u8]) -> Result<Vec<Op>> {
    let mut r = Reader {
        b,
        at: 0,
        seq,
        prev: Arc::from(""),
        buf: String::new(),
    };
    if r.u8()? != ENTRY_VERSION {
        return Err(r.bad("unknown entry version (written by a newer dualsight?)"));
    }
    let mut ops = Vec::new();
    while r.at < b.len() {
        let op = match r.u8()? {
            OP_FILE => {
                let p = r.str()?;
                let rec = decode_file(r.take(FILE_RECORD_LEN)?)
                    .ok_or_else(|| r.bad("bad file record"))?;
                Op::File(p, rec)
            }
            OP_UNFILE => Op::Unfile(r.str()?),
            OP_FAILURE => {
                let p = r.str()?;
                let n = r.len()?;
                let f =
                    serde_json::from_slice(r.take(n)?).map_err(|_| r.bad("bad failure record"))?;
                Op::Failure(p, f)
            }
            OP_UNFAIL => Op::Unfail(r.str()?),
            OP_VECTOR => Op::Vector {
                space: r.varint()?,
                id: r.varint()?,
                hash: ContentHash(r.take(32)?.try_into().expect("32 bytes")),
            },
            OP_UNVECTOR => Op::Unvector {
                space: r.varint()?,
                id: r.varint()?,
            },
            _ => return Err(r.bad("unknown operation")),
        };
        ops.push(op);
    }
    Ok(ops)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    seq: u64,
    /// The entry's previous path, which the next one may share a start with.
    prev: Arc<str>,
    buf: String,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: &str) -> StoreError {
        StoreError::Corrupt(format!(
            "journal entry {}: {what} at byte {}",
            self.seq, self.at
        ))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| self.bad("cut short"))?;
        let out = &self.b[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(self.bad("integer too long"))
    }

    /// A length, which cannot exceed what is left of the entry.
    fn len(&mut self) -> Result<usize> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.b.len() - self.at)
            .ok_or_else(|| self.bad("length past the end"))
    }

    fn str(&mut self) -> Result<Arc<str>> {
        let shared = self.varint()?;
        let shared = usize::try_from(shared)
            .ok()
            .filter(|&s| s <= self.prev.len() && self.prev.is_char_boundary(s))
            .ok_or_else(|| self.bad("path shares more than the previous one has"))?;
        let n = self.len()?;
        let rest = std::str::from_utf8(self.take(n)?).map_err(|_| self.bad("path is not UTF-8"))?;
        // Built in a buffer kept across paths: `Arc<str>` copies from it, so
        // the replay allocates once per path, not twice.
        self.buf.clear();
        self.buf.push_str(&self.prev[..shared]);
        self.buf.push_str(rest);
        let p: Arc<str> = Arc::from(self.buf.as_str());
        self.prev = p.clone();
        Ok(p)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::FileRecord;

    /// A file record with content hash `h` repeated (also the journal's
    /// tests').
    pub(in crate::store) fn rec(h: u8) -> FileRecord {
        FileRecord {
            size: 10,
            mtime_ns: 5,
            hash: ContentHash([h; 32]),
            ..FileRecord::default()
        }
    }

    #[test]
    fn entries_round_trip_and_damage_is_named() {
        let ops = vec![
            Op::File("/a/b.jpg".into(), rec(1)),
            Op::Unfile("/a/c.jpg".into()),
            Op::Failure(
                "/a/d.jpg".into(),
                FailureRecord {
                    error: "bad".into(),
                    size: 1,
                    mtime_ns: 2,
                    attempts: 3,
                    last_failed_ms: 4,
                },
            ),
            Op::Unfail("/a/d.jpg".into()),
            Op::Vector {
                space: 2,
                id: 7,
                hash: ContentHash([9; 32]),
            },
            Op::Unvector { space: 2, id: 7 },
            // Paths sharing a start, cut inside a character (é and è share
            // their first byte), and one sharing nothing.
            Op::File("/a/é1.jpg".into(), rec(2)),
            Op::Unfile("/a/è2.jpg".into()),
            Op::Unfile("x".into()),
            Op::Vector {
                space: 1,
                id: u64::MAX,
                hash: ContentHash([3; 32]),
            },
        ];
        let b = encode(&ops);
        assert_eq!(decode(3, &b).unwrap(), ops);
        // Shared starts make a batch of one folder's photos small.
        let folder: Vec<Op> = (0..100)
            .map(|i| Op::Unfile(format!("/photos/2024/summer/IMG_{i:04}.jpg").into()))
            .collect();
        assert!(
            encode(&folder).len() < 100 * 14,
            "{}",
            encode(&folder).len()
        );
        // A path claiming more of the previous one than there was.
        let lying = [ENTRY_VERSION, OP_UNFILE, 5, 1, b'x'];
        let e = decode(4, &lying).unwrap_err().to_string();
        assert!(
            e.contains("journal entry 4") && e.contains("shares more"),
            "{e}"
        );
        let cut = decode(3, &b[..b.len() - 1]).unwrap_err().to_string();
        assert!(
            cut.contains("journal entry 3") && cut.contains("cut short"),
            "{cut}"
        );
        let mut bad = b.clone();
        bad[1] = 99;
        assert!(
            decode(3, &bad)
                .unwrap_err()
                .to_string()
                .contains("unknown operation")
        );
    }
}
