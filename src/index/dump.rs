//! Writing a graph built here (`build.rs`) as hnsw_rs 0.3.5's dump, so that
//! hnsw_rs loads it as its own: from then on it holds it, inserts into it
//! and dumps it as any graph it has reloaded (sixteen layers, candidate
//! extension as `read_graph` sets it, and the level scale of a new graph:
//! see `upgrade::UNIT_LEVEL_SCALE`).
//!
//! The layout is the one hnsw_rs's `file_dump` writes in its full mode
//! (native byte order): the graph file is the description (see
//! `upgrade.rs`), the number of layers, each layer's magic, point count and
//! points (magic, id, layer, rank, then for every layer a link count and
//! each link's id, layer, rank and distance), and the entry point's id,
//! layer and rank; the data file is a magic and the vectors' length, then
//! per point, in the graph's order, a magic, the id, the byte length and the
//! bytes. A point is named by its layer (its top one) and its rank among
//! that layer's points.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::build::{Built, Shape, Table};
use super::dist::{self, DualsightDot, Q8};
use super::upgrade::{MAGIC_DATA, MAGIC_DESCRIPTION, UNIT_LEVEL_SCALE};

/// hnsw_rs's magic numbers in front of each layer and each point.
pub(super) const MAGIC_LAYER: u32 = 0x000a_676f;
const MAGIC_POINT: u32 = 0x000a_678f;
/// The full mode, where every link names its point's layer and rank.
const FULL: u8 = 1;
/// Layers in every dump: hnsw_rs's `NB_LAYER_MAX`, the only count its own
/// dump writes (and what its loader gives every graph it reads), whatever
/// the graph's `max_layer`.
const LAYERS: u8 = 16;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot be written as an hnsw_rs dump: {0}")]
    Shape(String),
}

/// Writes `<basename>.hnsw.graph` and `.hnsw.data` into `dir` for the
/// graph `built` over `table` with the settings `shape`. Not synced: the
/// files are read back at once and removed.
pub fn write<T: Table>(
    dir: &Path,
    basename: &str,
    built: &Built,
    table: &T,
    shape: &Shape,
) -> Result<(), DumpError> {
    let (n, dim) = (table.len(), table.dim());
    let m =
        u8::try_from(shape.m).map_err(|_| DumpError::Shape(format!("M {} above 255", shape.m)))?;
    if !(1..=usize::from(LAYERS)).contains(&shape.max_layer) {
        return Err(DumpError::Shape(format!("{} layers", shape.max_layer)));
    }
    let layers = LAYERS;
    if n == 0 || built.levels.len() != n || built.links.len() != n {
        return Err(DumpError::Shape(format!(
            "{n} points for {} levels",
            built.levels.len()
        )));
    }
    if built
        .levels
        .iter()
        .any(|&l| usize::from(l) >= shape.max_layer)
    {
        return Err(DumpError::Shape("a point above the top layer".into()));
    }
    // Each point's rank among the points of its top layer, and each layer's
    // points in table order.
    let mut by_layer: Vec<Vec<u32>> = vec![Vec::new(); usize::from(layers)];
    let mut rank = vec![0i32; n];
    for (p, &l) in built.levels.iter().enumerate() {
        let layer = &mut by_layer[usize::from(l)];
        rank[p] = layer.len() as i32;
        layer.push(p as u32);
    }
    let graph_path = dir.join(format!("{basename}.hnsw.graph"));
    let data_path = dir.join(format!("{basename}.hnsw.data"));
    let open = |path: &Path| {
        File::create(path)
            .map(|f| BufWriter::with_capacity(1 << 20, f))
            .map_err(io_at(path))
    };
    let mut g = open(&graph_path)?;
    let mut d = open(&data_path)?;
    let name = |p: u32| {
        let p = p as usize;
        let mut b = [0u8; 13];
        b[..8].copy_from_slice(&(table.id(p) as usize).to_ne_bytes());
        b[8] = built.levels[p];
        b[9..].copy_from_slice(&rank[p].to_ne_bytes());
        b
    };
    let graph = (|| -> io::Result<()> {
        g.write_all(&MAGIC_DESCRIPTION.to_ne_bytes())?;
        g.write_all(&[FULL, m])?;
        g.write_all(&UNIT_LEVEL_SCALE.to_ne_bytes())?;
        g.write_all(&[layers])?;
        for v in [shape.ef_construction, n, dim] {
            g.write_all(&v.to_ne_bytes())?;
        }
        for text in [
            std::any::type_name::<DualsightDot>(),
            std::any::type_name::<Q8>(),
        ] {
            g.write_all(&text.len().to_ne_bytes())?;
            g.write_all(text.as_bytes())?;
        }
        g.write_all(&[layers])?;
        for points in &by_layer {
            g.write_all(&MAGIC_LAYER.to_ne_bytes())?;
            g.write_all(&points.len().to_ne_bytes())?;
            for &p in points {
                g.write_all(&MAGIC_POINT.to_ne_bytes())?;
                g.write_all(&name(p))?;
                let links = &built.links[p as usize];
                for layer in 0..usize::from(layers) {
                    let list = links.get(layer).map_or(&[][..], Vec::as_slice);
                    g.write_all(&list.len().to_ne_bytes())?;
                    for link in list {
                        g.write_all(&name(link.to))?;
                        g.write_all(&link.dist.to_ne_bytes())?;
                    }
                }
            }
        }
        g.write_all(&name(built.entry))?;
        g.flush()
    })();
    graph.map_err(io_at(&graph_path))?;
    let data = (|| -> io::Result<()> {
        d.write_all(&MAGIC_DATA.to_ne_bytes())?;
        d.write_all(&dim.to_ne_bytes())?;
        for points in &by_layer {
            for &p in points {
                let p = p as usize;
                d.write_all(&MAGIC_DATA.to_ne_bytes())?;
                let row = table.row(p);
                if row.len() != dim {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("point {p} has {} bytes, not {dim}", row.len()),
                    ));
                }
                d.write_all(&table.id(p).to_ne_bytes())?;
                d.write_all(&(row.len() as u64).to_ne_bytes())?;
                d.write_all(dist::as_bytes(row))?;
            }
        }
        d.flush()
    })();
    data.map_err(io_at(&data_path))
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> DumpError + '_ {
    move |source| DumpError::Io {
        path: path.to_path_buf(),
        source,
    }
}
