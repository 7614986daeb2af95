//! A space's vectors on disk: one append-only file of fixed-size, checksummed
//! records, addressed by vector id, read through a memory map.
//!
//! sled keeps which ids are live (`space/{no}/vectors`: id → hash); this file
//! keeps their f32 payload, which is ~95% of a record's bytes and what made
//! sled's writer grow with everything it wrote (BENCHMARKS.md, "Storage").
//!
//! # Layout
//! A 64-byte header (magic, format version, dimension, space number, CRC),
//! then record `id` at `HEADER + (id - 1) * record_len`:
//! `id u64 LE ++ content hash (32) ++ f32 LE × dim ++ crc32 of the rest (4) ++
//! zero pad (4)`. Ids are dense because the store assigns them in order
//! while holding its write lock, so the offset needs no lookup.
//!
//! # Durability
//! [`Segment::append`] writes and fsyncs before the sled batch that names the
//! ids commits, so a committed id always has its bytes. A crash between the two
//! leaves records past sled's `last_id`: [`Segment::open`] truncates them. The
//! file never shrinks while open, so the map can never point past its end
//! (which would be SIGBUS, not an error).
//!
//! # Space
//! A vector deleted from the space leaves a dead record. [`Segment::release`]
//! punches the file-system blocks that only dead records cover, so a live
//! record pins at most the two blocks it spans: disk use is bounded by the
//! live vectors whatever the churn, though the file's apparent length is not.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use memmap2::Mmap;

use super::ContentHash;

const MAGIC: &[u8; 8] = b"DSVECSEG";
const FORMAT: u32 = 1;
pub(super) const HEADER: u64 = 64;
/// Block size assumed for hole punching (ext4, xfs and tmpfs all use 4 KiB
/// pages or blocks; a larger real block only makes fewer punches succeed).
const BLOCK: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error(
        "{}: not a vector segment of space {no} with {dim} dimensions: {why}; move the file away and start the daemon: it embeds those photos again",
        path.display()
    )]
    Header {
        path: PathBuf,
        no: u64,
        dim: usize,
        why: String,
    },
    #[error("{}: vector {id} is damaged ({why})", path.display())]
    Damaged {
        path: PathBuf,
        id: u64,
        why: &'static str,
    },
}

type Result<T, E = SegmentError> = std::result::Result<T, E>;

/// One space's vector file.
pub(super) struct Segment {
    path: PathBuf,
    dim: usize,
    record_len: u64,
    /// Appends are serialised by the store's write lock; this lock only keeps
    /// the `File` from being used by two threads at once.
    file: Mutex<File>,
    map: RwLock<Option<Arc<Mmap>>>,
}

/// What [`Segment::open`] found and fixed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct OpenReport {
    /// Bytes past the last committed id, cut off (a crash between the vector
    /// write and the sled commit, or a torn record).
    pub torn_bytes: u64,
    /// Committed ids the file was too short to hold (lost or cut by hand):
    /// they read as damaged.
    pub missing: u64,
    /// The file did not exist and was created.
    pub created: bool,
}

impl Segment {
    pub(super) fn record_len(dim: usize) -> u64 {
        8 + 32 + 4 * dim as u64 + 8
    }

    /// Opens (creating when absent) the segment of space `no`, cutting it to
    /// the `last_id` sled committed.
    pub(super) fn open(
        path: &Path,
        no: u64,
        dim: usize,
        last_id: u64,
    ) -> Result<(Segment, OpenReport)> {
        let io = |what| {
            let path = path.to_path_buf();
            move |source| SegmentError::Io { path, what, source }
        };
        let mut report = OpenReport::default();
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                report.created = true;
                create(path, no, dim).map_err(io("creating"))?
            }
            Err(e) => return Err(io("opening")(e)),
        };
        let len = file.metadata().map_err(io("reading metadata"))?.len();
        check_header(&file, path, no, dim, len)?;
        let record_len = Self::record_len(dim);
        let want = HEADER + last_id * record_len;
        if len > want {
            report.torn_bytes = len - want;
            file.set_len(want).map_err(io("truncating the torn tail"))?;
            file.sync_all().map_err(io("syncing"))?;
        } else if len < want {
            report.missing = (want - len).div_ceil(record_len);
            file.set_len(want).map_err(io("extending"))?;
            file.sync_all().map_err(io("syncing"))?;
        }
        let seg = Segment {
            path: path.to_path_buf(),
            dim,
            record_len,
            file: Mutex::new(file),
            map: RwLock::new(None),
        };
        Ok((seg, report))
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn offset(&self, id: u64) -> u64 {
        HEADER + (id - 1) * self.record_len
    }

    /// Writes vectors with consecutive ids from `first` and fsyncs them. On
    /// error nothing refers to them yet: the next append overwrites them and
    /// the next open cuts them off.
    pub(super) fn append(&self, first: u64, items: &[(ContentHash, &[f32])]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        self.write(first, items)?;
        self.sync()
    }

    /// Writes records without syncing (the migration syncs once at the end).
    pub(super) fn write(&self, first: u64, items: &[(ContentHash, &[f32])]) -> Result<()> {
        let mut buf = Vec::with_capacity(items.len() * self.record_len as usize);
        for (i, (hash, v)) in items.iter().enumerate() {
            debug_assert_eq!(v.len(), self.dim);
            encode(&mut buf, first + i as u64, hash, v);
        }
        let file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let io = |what| {
            let path = self.path.clone();
            move |source| SegmentError::Io { path, what, source }
        };
        write_all_at(&file, &buf, self.offset(first)).map_err(io("writing vectors"))
    }

    pub(super) fn sync(&self) -> Result<()> {
        let file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        file.sync_data().map_err(|source| SegmentError::Io {
            path: self.path.clone(),
            what: "syncing vectors",
            source,
        })
    }

    /// The vector `id` and its hash, checked against its checksum and the
    /// id and hash sled holds for it.
    pub(super) fn read(&self, id: u64, hash: &ContentHash) -> Result<Vec<f32>> {
        let (held, vector) = self.record(id)?;
        if held != *hash {
            return Err(self.damaged(id, "record holds another content"));
        }
        Ok(vector)
    }

    /// The record `id` as written: its content hash and vector, checked
    /// against its checksum and id only. A search reads candidates this way
    /// without asking sled for each id's hash (the index only holds ids that
    /// were committed); whether the content is still held is the paths' to
    /// say. `id` must be one the store assigned (≥ 1).
    pub(super) fn record(&self, id: u64) -> Result<(ContentHash, Vec<f32>)> {
        if id == 0 {
            return Err(self.damaged(id, "ids start at 1"));
        }
        let map = self.map_covering(self.offset(id) + self.record_len)?;
        let start = self.offset(id) as usize;
        let rec = &map[start..start + self.record_len as usize];
        let body = rec.len() - 8;
        let crc = u32::from_le_bytes(rec[body..body + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(&rec[..body]) != crc {
            return Err(self.damaged(id, "checksum mismatch"));
        }
        if u64::from_le_bytes(rec[..8].try_into().expect("8 bytes")) != id {
            return Err(self.damaged(id, "record holds another id"));
        }
        let hash = ContentHash(rec[8..40].try_into().expect("32 bytes"));
        let vector = rec[40..body]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((hash, vector))
    }

    fn damaged(&self, id: u64, why: &'static str) -> SegmentError {
        SegmentError::Damaged {
            path: self.path.clone(),
            id,
            why,
        }
    }

    /// Gives back the disk blocks only dead records cover, around the records
    /// of `ids`; `live` says whether an id is still in the space. Best effort:
    /// a file system without hole punching keeps the bytes.
    pub(super) fn release(&self, ids: &[u64], last_id: u64, live: impl Fn(u64) -> bool) {
        // Dead neighbours to look at on each side: enough to span a block.
        let reach = BLOCK.div_ceil(self.record_len) + 1;
        let file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        for &id in ids {
            if id == 0 || id > last_id || live(id) {
                continue;
            }
            let mut lo = id;
            while lo > 1 && id - lo < reach && !live(lo - 1) {
                lo -= 1;
            }
            let mut hi = id;
            while hi < last_id && hi - id < reach && !live(hi + 1) {
                hi += 1;
            }
            // The blocks wholly inside the dead run [lo, hi]; a live
            // neighbour's record ends or starts where the run does.
            let start = self.offset(lo).div_ceil(BLOCK) * BLOCK;
            let end = (self.offset(hi) + self.record_len) / BLOCK * BLOCK;
            if end > start
                && let Err(e) = punch_hole(&file, start, end - start)
            {
                tracing::debug!(path = %self.path.display(), error = %e, "cannot punch a hole");
                return;
            }
        }
    }

    /// Bytes the file takes on disk (holes excluded).
    pub(super) fn allocated_bytes(&self) -> u64 {
        let file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        file.metadata().map_or(0, |m| allocated(&m))
    }

    /// A map that covers at least `end` bytes, remapping when the file grew.
    fn map_covering(&self, end: u64) -> Result<Arc<Mmap>> {
        if let Some(m) = &*self.map.read().unwrap_or_else(PoisonError::into_inner)
            && m.len() as u64 >= end
        {
            return Ok(m.clone());
        }
        let mut slot = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = &*slot
            && m.len() as u64 >= end
        {
            return Ok(m.clone());
        }
        let file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        // Safety: the file is only ever extended while open (module docs),
        // so every mapped byte stays backed; bytes other processes might
        // change are checked by each record's checksum before use.
        let map = unsafe { Mmap::map(&*file) }.map_err(|source| SegmentError::Io {
            path: self.path.clone(),
            what: "mapping",
            source,
        })?;
        drop(file);
        if (map.len() as u64) < end {
            return Err(SegmentError::Damaged {
                path: self.path.clone(),
                id: (end - HEADER) / self.record_len,
                why: "past the end of the file",
            });
        }
        let map = Arc::new(map);
        *slot = Some(map.clone());
        Ok(map)
    }
}

fn encode(buf: &mut Vec<u8>, id: u64, hash: &ContentHash, v: &[f32]) {
    let start = buf.len();
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&hash.0);
    for x in v {
        buf.extend_from_slice(&x.to_le_bytes());
    }
    let crc = crc32fast::hash(&buf[start..]);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
}

fn header(no: u64, dim: usize) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[12..16].copy_from_slice(&(dim as u32).to_le_bytes());
    h[16..24].copy_from_slice(&no.to_le_bytes());
    let crc = crc32fast::hash(&h[..60]);
    h[60..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Creates the file with its header through a temporary name, so a crash
/// never leaves a headerless segment.
fn create(path: &Path, no: u64, dim: usize) -> io::Result<File> {
    let tmp = path.with_extension("tmp");
    {
        let f = File::create(&tmp)?;
        write_all_at(&f, &header(no, dim), 0)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().read(true).write(true).open(path)
}

fn check_header(file: &File, path: &Path, no: u64, dim: usize, len: u64) -> Result<()> {
    let bad = |why: String| SegmentError::Header {
        path: path.to_path_buf(),
        no,
        dim,
        why,
    };
    if len < HEADER {
        return Err(bad(format!("{len} bytes, shorter than its header")));
    }
    let mut h = [0u8; HEADER as usize];
    read_exact_at(file, &mut h, 0).map_err(|source| SegmentError::Io {
        path: path.to_path_buf(),
        what: "reading the header",
        source,
    })?;
    if h != header(no, dim) {
        let found_dim = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
        let found_no = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
        return Err(bad(if &h[..8] != MAGIC {
            "bad magic".into()
        } else {
            format!("header says space {found_no}, {found_dim} dimensions, or its checksum fails")
        }));
    }
    Ok(())
}

#[cfg(unix)]
fn write_all_at(f: &File, buf: &[u8], off: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, off)
}

#[cfg(unix)]
fn read_exact_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, off)
}

#[cfg(unix)]
fn allocated(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(m) * 512
}

#[cfg(target_os = "linux")]
fn punch_hole(f: &File, off: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // Safety: a plain syscall on a file descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn punch_hole(_: &File, _: u64, _: u64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(dim: usize, n: u64) -> Vec<f32> {
        (0..dim).map(|i| (i as f32 + 1.0) * n as f32).collect()
    }

    fn h(n: u64) -> ContentHash {
        ContentHash::of(&n.to_le_bytes())
    }

    fn fill(seg: &Segment, dim: usize, ids: std::ops::RangeInclusive<u64>) {
        let vs: Vec<Vec<f32>> = ids.clone().map(|i| v(dim, i)).collect();
        let items: Vec<(ContentHash, &[f32])> =
            ids.clone().zip(&vs).map(|(i, v)| (h(i), &v[..])).collect();
        seg.append(*ids.start(), &items).unwrap();
    }

    #[test]
    fn records_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.vec");
        let (seg, rep) = Segment::open(&p, 1, 3, 0).unwrap();
        assert!(rep.created);
        fill(&seg, 3, 1..=5);
        assert_eq!(seg.read(4, &h(4)).unwrap(), v(3, 4));
        drop(seg);
        let (seg, rep) = Segment::open(&p, 1, 3, 5).unwrap();
        assert_eq!(rep, OpenReport::default());
        for i in 1..=5 {
            assert_eq!(seg.read(i, &h(i)).unwrap(), v(3, i));
        }
        // A hash that is not the record's is refused, not returned.
        assert!(matches!(
            seg.read(2, &h(3)),
            Err(SegmentError::Damaged { id: 2, .. })
        ));
    }

    #[test]
    fn the_tail_past_the_committed_id_is_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.vec");
        let (seg, _) = Segment::open(&p, 1, 4, 0).unwrap();
        fill(&seg, 4, 1..=6);
        drop(seg);
        // sled committed 4; a torn half record follows the sixth.
        let f = OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(&mut &f, &[7; 13]).unwrap();
        drop(f);
        let (seg, rep) = Segment::open(&p, 1, 4, 4).unwrap();
        assert_eq!(rep.torn_bytes, 2 * Segment::record_len(4) + 13);
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            HEADER + 4 * Segment::record_len(4)
        );
        assert_eq!(seg.read(4, &h(4)).unwrap(), v(4, 4));
        // The next ids are written where the cut ones were.
        fill(&seg, 4, 5..=5);
        assert_eq!(seg.read(5, &h(5)).unwrap(), v(4, 5));
    }

    #[test]
    fn damage_is_detected_never_returned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.vec");
        let (seg, _) = Segment::open(&p, 1, 8, 0).unwrap();
        fill(&seg, 8, 1..=3);
        drop(seg);
        let mut bytes = std::fs::read(&p).unwrap();
        let off = (HEADER + Segment::record_len(8) + 50) as usize;
        bytes[off] ^= 0x10;
        std::fs::write(&p, &bytes).unwrap();
        // Cut short by hand: id 3 is gone.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(HEADER + 2 * Segment::record_len(8) + 5)
            .unwrap();
        let (seg, rep) = Segment::open(&p, 1, 8, 3).unwrap();
        assert_eq!(rep.missing, 1);
        assert_eq!(seg.read(1, &h(1)).unwrap(), v(8, 1));
        let e = seg.read(2, &h(2)).unwrap_err().to_string();
        assert!(e.contains("vector 2 is damaged (checksum mismatch)"), "{e}");
        assert!(e.contains("1.vec"), "{e}");
        assert!(matches!(
            seg.read(3, &h(3)),
            Err(SegmentError::Damaged { id: 3, .. })
        ));
    }

    #[test]
    fn a_foreign_file_is_refused_by_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.vec");
        drop(Segment::open(&p, 1, 8, 0).unwrap());
        let e = Segment::open(&p, 1, 16, 0).err().unwrap().to_string();
        assert!(
            e.contains("not a vector segment of space 1 with 16 dimensions"),
            "{e}"
        );
        std::fs::write(&p, [0u8; 100]).unwrap();
        let e = Segment::open(&p, 1, 8, 0).err().unwrap().to_string();
        assert!(e.contains("bad magic"), "{e}");
    }

    #[test]
    fn dead_runs_give_their_blocks_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.vec");
        let dim = 512;
        let (seg, _) = Segment::open(&p, 1, dim, 0).unwrap();
        fill(&seg, dim, 1..=400);
        let before = seg.allocated_bytes();
        let live = |id: u64| id > 300 || id.is_multiple_of(100);
        let dead: Vec<u64> = (1..=400).filter(|&i| !live(i)).collect();
        seg.release(&dead, 400, live);
        let after = seg.allocated_bytes();
        // Needs a file system that punches holes (ext4, xfs, btrfs, tmpfs).
        // 297 of 400 records are dead: most of their blocks are back.
        assert!(after < before * 2 / 5, "{before} → {after}");
        for id in (100..=300).step_by(100).chain(301..=400) {
            assert_eq!(seg.read(id, &h(id)).unwrap(), v(dim, id));
        }
    }
}
