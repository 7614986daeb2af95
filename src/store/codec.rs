//! Byte layouts of every key and value the store writes. Fixed-width binary
//! where records are many (files, vectors, links: one per photo), JSON where
//! they are few and benefit from being extensible (spaces, failures).
//!
//! Integers in keys are big-endian so sled's byte order is numeric order
//! (vector ids iterate ascending); integers in values are little-endian like
//! the f32 vector payload.

use super::{ContentHash, FileRecord};

/// Tree names. Space trees are named by a small number, not the fingerprint,
/// so fingerprints may hold any characters and a dropped space's number is
/// never reused (a stale `SledSpace` handle cannot alias a new space).
pub(super) const TREE_META: &str = "meta";
pub(super) const TREE_JOURNAL: &str = "journal";
/// Schema 2's per-file trees, read once by its migration.
pub(super) const TREE_FILES: &str = "files";
pub(super) const TREE_FAILURES: &str = "failures";
pub(super) const TREE_ROOTS: &str = "roots";
pub(super) const TREE_SPACES: &str = "spaces";
pub(super) const SPACE_TREE_PREFIX: &str = "space/";

/// Keys in the `meta` tree.
pub(super) const META_SCHEMA: &[u8] = b"schema_version";
pub(super) const META_ACTIVE: &[u8] = b"active_space";
pub(super) const META_NEXT_SPACE: &[u8] = b"next_space_no";

/// Key in a space's own meta tree.
pub(super) const SPACE_LAST_ID: &[u8] = b"last_id";

pub(super) fn space_tree_name(no: u64, kind: &str) -> String {
    format!("{SPACE_TREE_PREFIX}{no}/{kind}")
}

/// The space number of a `space/{no}/...` tree name, for garbage collection
/// of trees left behind by a crash inside `drop_space` / `space`.
pub(super) fn space_no_of_tree(name: &[u8]) -> Option<u64> {
    let rest = name.strip_prefix(SPACE_TREE_PREFIX.as_bytes())?;
    let end = rest.iter().position(|&b| b == b'/')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

pub(super) fn u64_be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(super) fn read_u64_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// A file record before capture times were kept (still read: its metadata
/// is unknown until the file is read again).
pub(super) const FILE_RECORD_V1_LEN: usize = 8 + 8 + 32 + 8;
/// Plus capture time (i64), width and height (u32 each), where the time comes from (u8).
pub(super) const FILE_RECORD_LEN: usize = FILE_RECORD_V1_LEN + 8 + 4 + 4 + 1;

pub(super) fn encode_file(r: &FileRecord) -> [u8; FILE_RECORD_LEN] {
    let mut out = [0u8; FILE_RECORD_LEN];
    out[0..8].copy_from_slice(&r.size.to_le_bytes());
    out[8..16].copy_from_slice(&r.mtime_ns.to_le_bytes());
    out[16..48].copy_from_slice(&r.hash.0);
    out[48..56].copy_from_slice(&r.indexed_at_ms.to_le_bytes());
    out[56..64].copy_from_slice(&r.meta.taken_at.to_le_bytes());
    out[64..68].copy_from_slice(&r.meta.width.to_le_bytes());
    out[68..72].copy_from_slice(&r.meta.height.to_le_bytes());
    out[72] = r.meta.taken_from as u8;
    out
}

pub(super) fn decode_file(b: &[u8]) -> Option<FileRecord> {
    use crate::preprocess::meta::{PhotoMeta, TakenFrom};
    if b.len() != FILE_RECORD_LEN && b.len() != FILE_RECORD_V1_LEN {
        return None;
    }
    let meta = match b.get(56..FILE_RECORD_LEN) {
        Some(m) => PhotoMeta {
            taken_at: i64::from_le_bytes(m[0..8].try_into().ok()?),
            width: u32::from_le_bytes(m[8..12].try_into().ok()?),
            height: u32::from_le_bytes(m[12..16].try_into().ok()?),
            taken_from: TakenFrom::from_u8(m[16]),
        },
        None => PhotoMeta::default(),
    };
    Some(FileRecord {
        size: u64::from_le_bytes(b[0..8].try_into().ok()?),
        mtime_ns: i64::from_le_bytes(b[8..16].try_into().ok()?),
        hash: ContentHash(b[16..48].try_into().ok()?),
        indexed_at_ms: u64::from_le_bytes(b[48..56].try_into().ok()?),
        meta,
    })
}

pub(super) fn decode_hash(b: &[u8]) -> Option<ContentHash> {
    Some(ContentHash(b.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_record_round_trips() {
        let r = FileRecord {
            size: u64::MAX - 3,
            mtime_ns: -5,
            hash: ContentHash([7; 32]),
            indexed_at_ms: 1_700_000_000_000,
            meta: crate::preprocess::meta::PhotoMeta {
                taken_at: -7,
                taken_from: crate::preprocess::meta::TakenFrom::Exif,
                width: 4032,
                height: 3024,
            },
        };
        assert_eq!(decode_file(&encode_file(&r)), Some(r));
        // A record from before capture times: read, metadata unknown.
        let old = decode_file(&encode_file(&r)[..FILE_RECORD_V1_LEN]).unwrap();
        assert_eq!(old.meta, Default::default());
        assert_eq!((old.size, old.hash), (r.size, r.hash));
        assert_eq!(decode_file(&[0; 10]), None);
    }

    #[test]
    fn space_tree_names_parse_back() {
        assert_eq!(
            space_no_of_tree(space_tree_name(42, "vectors").as_bytes()),
            Some(42)
        );
        assert_eq!(space_no_of_tree(b"files"), None);
        assert_eq!(space_no_of_tree(b"space/x/vectors"), None);
    }
}
