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
    /// them (default: this host's name, as the daemon's).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Rows per statement.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
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
    let node = args.node.clone().unwrap_or_else(crate::config::host_name);
    let pg = PgStore::open(&PgOptions {
        url: args.to.clone(),
        read_urls: Vec::new(),
        node: node.clone(),
        max_lag: std::time::Duration::ZERO,
        data_dir: args.from.clone(),
        hnsw: crate::index::IndexParams::default(),
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

    fn done(&mut self) {
        if self.tty {
            eprintln!();
        } else if self.shown_tenth < 10 {
            eprintln!("{}: {}/{}", self.what, self.done, self.total);
        }
    }
}
