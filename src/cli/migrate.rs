//! `dualsight migrate --from DATA_DIR --to URL`: copies a stopped daemon's
//! sled store (records, vectors, failures, the active model) into the
//! PostgreSQL store under a node name, without re-embedding. Every write is
//! an upsert, so an interrupted copy is resumed by running it again; it ends
//! by comparing the counts on both sides.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::store::pg::{PgOptions, PgStore, redact};
use crate::store::{ContentHash, SledStore};

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The sled daemon's --data-dir (the daemon must be stopped).
    #[arg(long, value_name = "DATA_DIR")]
    pub from: PathBuf,
    /// The PostgreSQL primary (a URL or key=value string).
    #[arg(
        long,
        value_name = "URL",
        env = "DUALSIGHT_DATABASE_URL",
        hide_env_values = true
    )]
    pub to: String,
    /// The node the files go under: the --node of the daemon that will serve
    /// them (default: --config's `node`, else this host's name, as the daemon's).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// The daemon's config file: its `[store] vector_index` picks the index
    /// each space gets (IVFFlat lists sized to the rows copied), its
    /// `[index]` m and ef_construction shape an HNSW one (default: the
    /// built-in values, as a daemon without them uses).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Rows per statement.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// Memory for building a space's HNSW index after the copy (a
    /// PostgreSQL size, e.g. 4GB). Default: what the space's graph needs,
    /// so that it is built in memory.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub build_memory: Option<String>,
    /// Parallel workers for that build (default: the server's
    /// max_parallel_maintenance_workers).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=64))]
    pub build_workers: Option<u16>,
}

/// A PostgreSQL memory size: digits, then kB, MB, GB or TB.
fn parse_memory(s: &str) -> Result<String, String> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !["kB", "MB", "GB", "TB"].contains(&unit)
    {
        return Err(format!("{s:?}: expected a size such as 512MB or 4GB"));
    }
    Ok(s.to_owned())
}

/// What pgvector's graph of `n` vectors of `dim` takes in memory, with room
/// to spare: the vector, its neighbour lists (2m at the base layer) and
/// tuple overhead (about 2.7 KB per 512-d vector, BENCHMARKS.md), clamped
/// to what a build may reasonably ask for.
fn graph_memory(n: u64, dim: usize) -> String {
    let per_vector = dim as u64 * 4 + 2 * 48 * 8 + 256;
    let mb = (n * per_vector * 11 / 10) >> 20;
    format!("{}MB", mb.clamp(64, 64 * 1024))
}

pub fn run(args: &MigrateArgs) -> Result<()> {
    let dir = args.from.join("store");
    if !dir.is_dir() {
        bail!(
            "{}: no store (is --from the daemon's --data-dir?)",
            dir.display()
        );
    }
    let sled = SledStore::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let settings = match &args.config {
        Some(path) => {
            let s = crate::config::Settings::from_file(path)?;
            // Read here, not dropped as unset: a typo would build another index.
            if let Some(kind) = &s.store.vector_index {
                kind.parse::<crate::store::pg::IndexKind>().map_err(|msg| {
                    anyhow::anyhow!("{}: store.vector_index: {msg}", path.display())
                })?;
            }
            s
        }
        None => crate::config::Settings::default(),
    };
    // The node the daemon will run as: --node, else the config's, else the host's.
    let node = args.node.clone().unwrap_or_else(|| settings.node_name());
    let pg = PgStore::open(&PgOptions {
        url: args.to.clone(),
        read_urls: Vec::new(),
        node: node.clone(),
        max_lag: std::time::Duration::ZERO,
        data_dir: args.from.clone(),
        hnsw: settings.index_params(),
        exact_below: crate::store::pg::EXACT_BELOW,
        vector_index: settings.vector_index(),
        ivfflat_probes: None,
        ivf_first: crate::store::pg::IVF_FIRST,
    })
    .with_context(|| format!("opening {}", redact(&args.to)))?;
    let batch = args.batch as usize;
    eprintln!(
        "migrating {} into {} as node {node:?}",
        dir.display(),
        pg.target()
    );

    let active = sled.active_space()?.map(|s| s.fingerprint().to_owned());
    for info in sled.spaces()? {
        let from = sled.space(&info.fingerprint, info.dim)?;
        let to = pg.space(&info.fingerprint, info.dim)?;
        // Loading an empty space without its index and building the graph
        // once is many times faster than inserting into it; a space left
        // without one by an interrupted run goes on the same way.
        let bulk = to.vector_count()? == 0 || !pg.has_search_index(&to)?;
        if bulk {
            pg.drop_search_index(&to)?;
        }
        let mut bar = Bar::new(format!("vectors of {}", info.fingerprint), info.vectors);
        let mut chunk: Vec<(ContentHash, Vec<f32>)> = Vec::with_capacity(batch);
        for v in from.iter_vectors_from(0) {
            let v = v.with_context(|| format!("reading the vectors of {}", info.fingerprint))?;
            chunk.push((v.hash, v.vector));
            if chunk.len() == batch {
                pg.import_vectors(&to, &chunk)?;
                bar.add(chunk.len());
                chunk.clear();
            }
        }
        pg.import_vectors(&to, &chunk)?;
        bar.add(chunk.len());
        bar.done();
        if bulk {
            let memory = args
                .build_memory
                .clone()
                .unwrap_or_else(|| graph_memory(to.vector_count().unwrap_or(0), info.dim));
            let kind = settings.vector_index().unwrap_or_default();
            eprintln!(
                "building the {kind} index of {} (maintenance_work_mem {memory})",
                info.fingerprint
            );
            let mut bar = Bar::new(format!("index of {} (table pages)", info.fingerprint), 0);
            let built = pg.build_search_index(
                &to,
                &memory,
                args.build_workers.map(usize::from),
                &mut |done, total| bar.set(done, total),
            )?;
            bar.done();
            if built {
                eprintln!("built the {kind} index of {}", info.fingerprint);
            } else {
                eprintln!(
                    "no {kind} index for {} yet: too few vectors to place its lists; the daemon builds it once the space holds {}",
                    info.fingerprint,
                    crate::store::pg::IVF_FIRST
                );
            }
        }
    }

    let mut bar = Bar::new("files".into(), sled.file_count()?);
    let mut chunk = Vec::with_capacity(batch);
    for f in sled.iter_files() {
        chunk.push(f?);
        if chunk.len() == batch {
            pg.import_files(&chunk)?;
            bar.add(chunk.len());
            chunk.clear();
        }
    }
    pg.import_files(&chunk)?;
    bar.add(chunk.len());
    bar.done();

    let failures: Vec<_> = sled.iter_failures().collect::<Result<_, _>>()?;
    for c in failures.chunks(batch) {
        pg.import_failures(c)?;
    }
    for root in sled.offline_roots()? {
        pg.set_root_offline(&root, true)?;
    }
    if let Some(fp) = &active {
        pg.set_active(fp)?;
    }

    // The copy is complete when every count of this node matches.
    let mut mismatches = Vec::new();
    let mut check = |what: &str, from: u64, to: u64| {
        eprintln!("{what:<28} sled {from:>10}   postgres {to:>10}");
        if from != to {
            mismatches.push(format!("{what}: {from} in sled, {to} in PostgreSQL"));
        }
    };
    check("files", sled.file_count()?, pg.file_count()?);
    check("failures", sled.failure_count()?, pg.failure_count()?);
    for info in sled.spaces()? {
        let to = pg.space(&info.fingerprint, info.dim)?;
        check(
            &format!("indexed files of {}", info.fingerprint),
            info.indexed_paths,
            to.indexed_path_count()?,
        );
    }
    if !mismatches.is_empty() {
        bail!(
            "the copy is incomplete ({}); is a daemon writing as node {node:?}? run the same command again",
            mismatches.join("; ")
        );
    }
    eprintln!("done: start the daemon with --store postgres --database-url ... --node {node}");
    Ok(())
}

/// Progress on stderr: one line redrawn on a terminal, a line per tenth
/// otherwise (logs).
struct Bar {
    what: String,
    total: u64,
    done: u64,
    shown_tenth: u64,
    tty: bool,
}

impl Bar {
    fn new(what: String, total: u64) -> Self {
        Self {
            what,
            total,
            done: 0,
            shown_tenth: 0,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn add(&mut self, n: usize) {
        self.done += n as u64;
        let tenth = (self.done * 10).checked_div(self.total).unwrap_or(10);
        if self.tty {
            eprint!("\r{}: {}/{}", self.what, self.done, self.total);
            let _ = std::io::stderr().flush();
        } else if tenth > self.shown_tenth {
            self.shown_tenth = tenth;
            eprintln!("{}: {}/{}", self.what, self.done, self.total);
        }
    }

    /// Progress whose total is learnt on the way (an index build's pages).
    fn set(&mut self, done: u64, total: u64) {
        self.total = total;
        let step = done.saturating_sub(self.done);
        self.add(step as usize);
    }

    fn done(&mut self) {
        if self.total == 0 && self.done == 0 {
            return; // nothing to report (the counts follow at the end)
        }
        if self.tty {
            eprintln!();
        } else if self.shown_tenth < 10 {
            eprintln!("{}: {}/{}", self.what, self.done, self.total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_are_postgres_sizes() {
        assert_eq!(parse_memory("4GB").unwrap(), "4GB");
        assert_eq!(parse_memory("512MB").unwrap(), "512MB");
        for bad in ["", "GB", "4", "4gb", "4 GB", "-1GB", "4GB'; DROP"] {
            assert!(parse_memory(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_build_gets_room_for_the_whole_graph() {
        // A million 512-d vectors: pgvector's graph measured 2.7 GB.
        let mb: u64 = graph_memory(1_000_000, 512)
            .trim_end_matches("MB")
            .parse()
            .unwrap();
        assert!((2800..4000).contains(&mb), "{mb} MB");
        assert_eq!(graph_memory(10, 512), "64MB");
        assert_eq!(graph_memory(u32::MAX as u64, 4096), "65536MB");
    }
}
