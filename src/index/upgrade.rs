//! Reading a checkpoint of the previous format (4), whose 8-bit vectors
//! carried a 4-byte scale in front: its vector table is converted as it is
//! parsed (`flat.rs`), and its graph's dump is rewritten here without the
//! scales, so that hnsw_rs loads the same graph in seconds instead of the
//! index being rebuilt (tens of minutes at 1M, with indexing waiting).
//!
//! The links are kept as they were. The distances hnsw_rs stored beside
//! them were computed with the scales (`1 - a·b·sa·sb`) where new ones are
//! cosines of the bytes (`1 - cos`); both are the same cosine within the
//! 8-bit rounding (~1e-3), and hnsw_rs uses them only to rank a point's
//! links when a later insert adds one.
//!
//! hnsw_rs 0.3.5's dump layout (native byte order, which is how it writes):
//! the graph file opens with its description, the vectors' length after a
//! u32, two u8, an f64, a u8 and two usize; the data file is a u32 magic and
//! the vectors' length (usize), then per point a u32 magic, the id (u64),
//! the vector's byte length (u64) and its bytes. Every one of those is
//! checked before anything is written, and any mismatch leaves the caller
//! to rebuild the graph from the table instead.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// hnsw_rs's magic numbers for a description (format 4), and a data file
/// and each point in it.
pub(super) const MAGIC_DESCRIPTION: u32 = 0x002a_6779;
pub(super) const MAGIC_DATA: u32 = 0xa67f_0000;
/// Where the description holds the vectors' length.
pub(super) const DIMENSION_AT: usize = 4 + 1 + 1 + 8 + 1 + 8 + 8;
/// Where the description holds the level scale (an f64, after the magic,
/// the dump mode and M).
pub(super) const LEVEL_SCALE_AT: usize = 4 + 1 + 1;
/// The level scale a dump should carry: hnsw_rs's loader multiplies its
/// default scale (`1 / ln M`) by the stored value, while its dump stores
/// the scale itself, so a graph dumped and reloaded drew its later levels
/// from `(1 / ln M)²`, and each further cycle shrank it again: at M = 24 a
/// new point reached layer 1 about once in 25,000 instead of once in 24.
pub(super) const UNIT_LEVEL_SCALE: f64 = 1.0;
/// Bytes of the scale in front of each vector of the previous format, in
/// the dump and in the vector table (`flat.rs`) alike.
pub(super) const SCALE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {what}", path.display())]
    Layout { path: PathBuf, what: String },
}

/// A copy of a generation's graph dump without the scales, in a directory
/// beside the generation's that is removed when this is dropped (a crash
/// leaves it to the next checkpoint, which removes every `.tmp-` entry).
pub struct Unscaled {
    pub dir: PathBuf,
}

impl Unscaled {
    /// The copy of `gen_dir`'s dump `basename`, or `None` (with a warning
    /// that says why) when it cannot be made.
    pub fn make(gen_dir: &Path, basename: &str, dim: usize) -> Option<Unscaled> {
        let name = gen_dir.file_name()?.to_string_lossy();
        let dir = gen_dir.with_file_name(format!(".tmp-upgrade-{name}"));
        let made = Unscaled { dir };
        let _ = fs::remove_dir_all(&made.dir);
        let copied = fs::create_dir(&made.dir)
            .map_err(io_at(&made.dir))
            .and_then(|()| unscale_dump(gen_dir, &made.dir, basename, dim));
        match copied {
            Ok(()) => Some(made),
            Err(e) => {
                tracing::warn!(error = %e, "cannot rewrite the index graph without its scales: rebuilding it from the vector table");
                None
            }
        }
    }
}

impl Drop for Unscaled {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot delete the rewritten index graph");
        }
    }
}

/// Writes `basename`'s graph and data files from `from` into `to` (an
/// existing, empty directory) with every vector's scale dropped: vectors of
/// `dim` bytes where the dump holds `dim + 4`.
pub fn unscale_dump(
    from: &Path,
    to: &Path,
    basename: &str,
    dim: usize,
) -> Result<(), UpgradeError> {
    let graph = format!("{basename}.hnsw.graph");
    let data = format!("{basename}.hnsw.data");
    unscale_graph(&from.join(&graph), &to.join(&graph), dim)?;
    unscale_data(&from.join(&data), &to.join(&data), dim)
}

/// The graph file with its description's vector length set to `dim`, and
/// its level scale to [`UNIT_LEVEL_SCALE`] (hnsw_rs's own dump wrote it
/// wrong): the only changes in it.
fn unscale_graph(from: &Path, to: &Path, dim: usize) -> Result<(), UpgradeError> {
    let layout = |what: String| UpgradeError::Layout {
        path: from.to_path_buf(),
        what,
    };
    let mut bytes = fs::read(from).map_err(io_at(from))?;
    if bytes.len() < DIMENSION_AT + 8 || bytes[..4] != MAGIC_DESCRIPTION.to_ne_bytes() {
        return Err(layout("not an hnsw_rs 0.3.5 graph description".into()));
    }
    let old = u64::from_ne_bytes(
        bytes[DIMENSION_AT..DIMENSION_AT + 8]
            .try_into()
            .expect("8 bytes"),
    );
    if old != (dim + SCALE) as u64 {
        return Err(layout(format!(
            "vectors of {old} bytes, expected {}",
            dim + SCALE
        )));
    }
    bytes[DIMENSION_AT..DIMENSION_AT + 8].copy_from_slice(&(dim as u64).to_ne_bytes());
    bytes[LEVEL_SCALE_AT..LEVEL_SCALE_AT + 8].copy_from_slice(&UNIT_LEVEL_SCALE.to_ne_bytes());
    fs::write(to, bytes).map_err(io_at(to))
}

/// The data file, each point's vector without its first four bytes.
fn unscale_data(from: &Path, to: &Path, dim: usize) -> Result<(), UpgradeError> {
    let layout = |what: String| UpgradeError::Layout {
        path: from.to_path_buf(),
        what,
    };
    let old_len = (dim + SCALE) as u64;
    let mut r = BufReader::with_capacity(1 << 20, File::open(from).map_err(io_at(from))?);
    let mut w = BufWriter::with_capacity(1 << 20, File::create(to).map_err(io_at(to))?);
    let mut head = [0u8; 12];
    r.read_exact(&mut head).map_err(io_at(from))?;
    if head[..4] != MAGIC_DATA.to_ne_bytes() {
        return Err(layout("not an hnsw_rs 0.3.5 data file".into()));
    }
    if u64::from_ne_bytes(head[4..].try_into().expect("8 bytes")) != old_len {
        return Err(layout(format!(
            "its header does not announce vectors of {old_len} bytes"
        )));
    }
    w.write_all(&head[..4]).map_err(io_at(to))?;
    w.write_all(&(dim as u64).to_ne_bytes())
        .map_err(io_at(to))?;
    let mut point = [0u8; 20];
    let mut vector = vec![0u8; old_len as usize];
    for n in 0u64.. {
        // A clean end of file falls exactly between two points.
        match read_or_end(&mut r, &mut point).map_err(io_at(from))? {
            0 => break,
            20 => {}
            _ => return Err(layout(format!("point {n} is cut off"))),
        }
        let len = u64::from_ne_bytes(point[12..].try_into().expect("8 bytes"));
        if point[..4] != MAGIC_DATA.to_ne_bytes() || len != old_len {
            return Err(layout(format!(
                "point {n} is not a vector of {old_len} bytes"
            )));
        }
        if read_or_end(&mut r, &mut vector).map_err(io_at(from))? != vector.len() {
            return Err(layout(format!("point {n} is cut off")));
        }
        point[12..].copy_from_slice(&(dim as u64).to_ne_bytes());
        w.write_all(&point).map_err(io_at(to))?;
        w.write_all(&vector[SCALE..]).map_err(io_at(to))?;
    }
    // Not synced: the copy lives only until hnsw_rs has read it.
    w.flush().map_err(io_at(to))
}

/// Fills `buf` as far as the reader goes: its length, or fewer at the end.
fn read_or_end(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Sets the level scale in the description of the graph file at `path`
/// (just written by hnsw_rs) to [`UNIT_LEVEL_SCALE`], so that the graph
/// loaded from it draws its later levels as a new one does.
pub fn unit_level_scale(path: &Path) -> Result<(), UpgradeError> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_at(path))?;
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic).map_err(io_at(path))?;
    if magic != MAGIC_DESCRIPTION.to_ne_bytes() {
        return Err(UpgradeError::Layout {
            path: path.to_path_buf(),
            what: "not an hnsw_rs 0.3.5 graph description".into(),
        });
    }
    f.seek(SeekFrom::Start(LEVEL_SCALE_AT as u64))
        .and_then(|_| f.write_all(&UNIT_LEVEL_SCALE.to_ne_bytes()))
        .map_err(io_at(path))
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> UpgradeError + '_ {
    move |source| UpgradeError::Io {
        path: path.to_path_buf(),
        source,
    }
}
