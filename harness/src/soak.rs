//! The scale and soak run: the real daemon's first indexing of N generated
//! photos, a restart, then hours of continuous adds and deletes with
//! queries running. Every sample is one row: the daemon's resident and peak
//! memory, what the data dir takes on disk (sled, vector segments, index
//! checkpoint), and text-query latency since the previous row. The figures
//! go to BENCHMARKS.md; nothing here asserts a timing.
//!
//! With a database URL it soaks the scale-out instead: `nodes` daemons, each
//! on its own folder (`node1`, `node2`, ...), all on one PostgreSQL, each
//! churned and queried at once; rows are per node, plus the database's size.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use dualsight::rng::SplitMix64;
use dualsight::server::proto::{self, dual_sight_client::DualSightClient};
use tonic::transport::Channel;

use crate::daemon::{Daemon, Launch, disk_use, memory};

#[derive(Debug, Clone)]
pub struct Options {
    pub dualsight: PathBuf,
    pub model: PathBuf,
    /// Scratch: the generated photos, the data dir, the log.
    pub work: PathBuf,
    /// Photos generated and indexed first.
    pub files: usize,
    /// Adds and deletes after the first indexing; zero: none.
    pub churn: Duration,
    /// Files added, and as many of the oldest deleted, per second of churn.
    pub churn_per_s: usize,
    /// One row this often.
    pub sample_every: Duration,
    pub seed: u64,
    /// The PostgreSQL store every node shares; `None`: the embedded store.
    pub database_url: Option<String>,
    /// Daemons, each on its own folder (more than one needs a database).
    pub nodes: usize,
    /// The daemons' full rescan interval; `None`: the daemon's default.
    pub reconcile: Option<Duration>,
}

const CONFIG: &str = "[watch]\ndebounce_ms = 200\nstable_ms = 500\n\
[ingest]\nremove_grace_ms = 1000\n[index]\ncheckpoint_interval_s = 300\n";

const QUERIES: &[&str] = &[
    "a photo of a bag",
    "a photo of an ankle boot",
    "a photo of a sneaker",
    "a photo of a dress",
    "a photo of a coat",
    "a photo of a shirt",
    "a photo of a pullover",
    "a photo of a sandal",
];

/// Photos per generated folder.
const PER_DIR: usize = 1000;

pub struct Soak {
    o: Options,
    nodes: Vec<Node>,
    rng: SplitMix64,
    started: Instant,
}

/// One daemon of the run, its folder and what it has answered.
struct Node {
    /// The node name on a shared database; "-" on the embedded store.
    name: String,
    launch: Launch,
    /// Generated files, oldest first (the churn deletes from the front).
    files: VecDeque<PathBuf>,
    next: usize,
    latencies: Arc<Mutex<Vec<f64>>>,
}

impl Soak {
    pub fn new(o: Options) -> Result<Self> {
        if o.nodes == 0 || (o.nodes > 1 && o.database_url.is_none()) {
            bail!(
                "--nodes {}: one node on the embedded store, or any number on a --database-url",
                o.nodes
            );
        }
        let mut config = CONFIG.to_owned();
        if let Some(every) = o.reconcile {
            // `[watch]` opens CONFIG, so the key lands in that table.
            config = config.replacen(
                "[watch]\n",
                &format!("[watch]\nreconcile_interval_s = {}\n", every.as_secs()),
                1,
            );
        }
        if let Some(url) = &o.database_url {
            config.push_str(&format!(
                "[store]\nbackend = \"postgres\"\ndatabase_url = {}\n",
                toml_string(url)
            ));
        }
        let config_path = o.work.join("dualsight.toml");
        std::fs::write(&config_path, config)?;
        let mut nodes = Vec::new();
        for i in 1..=o.nodes {
            // One node keeps the embedded store's layout of earlier runs.
            let (dir, name) = match o.database_url {
                None => (o.work.clone(), "-".to_owned()),
                Some(_) => (o.work.join(format!("node{i}")), format!("node{i}")),
            };
            let photos = dir.join("photos");
            std::fs::create_dir_all(&photos)?;
            let extra = match o.database_url {
                None => Vec::new(),
                Some(_) => vec!["--node".to_owned(), name.clone()],
            };
            nodes.push(Node {
                name,
                launch: Launch {
                    dualsight: o.dualsight.clone(),
                    model: o.model.clone(),
                    config: config_path.clone(),
                    photos,
                    data: dir.join("data"),
                    log: dir.join("daemon.log"),
                    extra,
                },
                files: VecDeque::new(),
                next: 0,
                latencies: Arc::default(),
            });
        }
        Ok(Self {
            rng: SplitMix64::new(o.seed),
            o,
            nodes,
            started: Instant::now(),
        })
    }

    /// A new photo of random 28×28 gray noise in node `k`'s folder: every
    /// file a distinct content (its own vector), small enough that a
    /// million fit on any disk.
    fn add_photo(&mut self, k: usize) -> Result<()> {
        let node = &mut self.nodes[k];
        let n = node.next;
        node.next += 1;
        let dir = node.launch.photos.join(format!("d{:05}", n / PER_DIR));
        if n.is_multiple_of(PER_DIR) {
            std::fs::create_dir_all(&dir)?;
        }
        let mut px = vec![0u8; 28 * 28];
        for chunk in px.chunks_mut(8) {
            let r = self.rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        let path = dir.join(format!("p{n:07}.png"));
        // Written under another name and renamed: the daemon never sees half a file.
        let tmp = dir.join(format!(".p{n:07}.tmp"));
        image::save_buffer_with_format(
            &tmp,
            &px,
            28,
            28,
            image::ExtendedColorType::L8,
            image::ImageFormat::Png,
        )?;
        std::fs::rename(&tmp, &path)?;
        node.files.push_back(path);
        Ok(())
    }

    fn header(&self) {
        println!(
            "| t (s) | node | phase | indexed | pending | RSS (MiB) | peak RSS (MiB) | sled (MiB) | segments (MiB) | index (MiB) | sled B/file | database (MiB) | queries | p50 (ms) | p99 (ms) |"
        );
        println!(
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
    }

    /// One row for node `k`; `database`: the shared database's bytes, if any.
    fn row(
        &self,
        k: usize,
        phase: &str,
        d: &Daemon,
        s: &proto::StatusResponse,
        database: Option<u64>,
    ) {
        let node = &self.nodes[k];
        let (rss, peak) = d.pid().and_then(memory).unwrap_or((0, 0));
        let store = node.launch.data.join("store");
        let segments = disk_use(&store.join("segments"));
        let sled = disk_use(&store).saturating_sub(segments);
        let index = disk_use(&node.launch.data.join("index"));
        let mut lat = std::mem::take(&mut *node.latencies.lock().expect("latencies"));
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if lat.is_empty() {
                f64::NAN
            } else {
                lat[((lat.len() - 1) as f64 * p).round() as usize]
            }
        };
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let database = database.map_or("-".to_owned(), |b| format!("{:.1}", mib(b)));
        println!(
            "| {:.0} | {} | {phase} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {database} | {} | {:.1} | {:.1} |",
            self.started.elapsed().as_secs_f64(),
            node.name,
            s.indexed_files,
            s.pending_files,
            mib(rss),
            mib(peak),
            mib(sled),
            mib(segments),
            mib(index),
            sled as f64 / s.indexed_files.max(1) as f64,
            lat.len(),
            pct(0.5),
            pct(0.99),
        );
        let _ = std::io::stdout().flush();
    }

    /// Text queries, one after another, until aborted; a refused one (the
    /// daemon still loading) is retried, not counted.
    fn spawn_queries(
        &self,
        k: usize,
        mut c: DualSightClient<Channel>,
    ) -> tokio::task::JoinHandle<()> {
        let lat = self.nodes[k].latencies.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let t = Instant::now();
                let req = proto::SearchRequest {
                    text: QUERIES[i % QUERIES.len()].into(),
                    limit: 10,
                    ..Default::default()
                };
                if c.search(req).await.is_ok() {
                    lat.lock()
                        .expect("latencies")
                        .push(t.elapsed().as_secs_f64() * 1e3);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    /// Text queries on every node at once.
    fn spawn_all_queries(
        &self,
        clients: &[DualSightClient<Channel>],
    ) -> Vec<tokio::task::JoinHandle<()>> {
        clients
            .iter()
            .enumerate()
            .map(|(k, c)| self.spawn_queries(k, c.clone()))
            .collect()
    }

    /// The shared database's size on disk; `None` on the embedded store (or
    /// when it cannot be read: the row says "-").
    async fn database_bytes(&self) -> Option<u64> {
        let url = self.o.database_url.clone()?;
        tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).ok()?;
            let row = c
                .query_one("SELECT pg_database_size(current_database())", &[])
                .ok()?;
            u64::try_from(row.get::<_, i64>(0)).ok()
        })
        .await
        .ok()
        .flatten()
    }

    /// Rows for the nodes in `which` (with their Status), one database read for all.
    async fn rows(
        &self,
        phase: &str,
        which: &[(usize, proto::StatusResponse)],
        daemons: &[Daemon],
    ) {
        if which.is_empty() {
            return;
        }
        let database = self.database_bytes().await;
        for (k, s) in which {
            self.row(*k, phase, &daemons[*k], s, database);
        }
    }

    pub async fn run(&mut self) -> Result<()> {
        let count = self.nodes.len();
        eprintln!(
            "generating {} photos per node in {}",
            self.o.files,
            self.o.work.display()
        );
        for k in 0..count {
            for i in 0..self.o.files {
                self.add_photo(k)?;
                if (i + 1).is_multiple_of(100_000) {
                    eprintln!("  {} generated", i + 1);
                }
            }
        }
        self.started = Instant::now();
        self.header();
        let mut daemons = Vec::new();
        let mut clients = Vec::new();
        for node in &self.nodes {
            let d = Daemon::spawn(&node.launch)?;
            clients.push(d.client().await?);
            daemons.push(d);
        }
        let queries = self.spawn_all_queries(&clients);
        let want = self.o.files as u64;
        let mut next_row = Instant::now();
        let mut indexed = vec![false; count];
        loop {
            let sample = Instant::now() >= next_row;
            let (mut sampled, mut done) = (Vec::new(), Vec::new());
            for (k, c) in clients.iter_mut().enumerate() {
                let s = status(c).await?;
                if !indexed[k] && s.ready && s.indexed_files == want && s.pending_files == 0 {
                    indexed[k] = true;
                    done.push((k, s.clone()));
                }
                if sample {
                    sampled.push((k, s));
                }
            }
            if sample {
                self.rows("first indexing", &sampled, &daemons).await;
                next_row += self.o.sample_every;
            }
            self.rows("indexed", &done, &daemons).await;
            if indexed.iter().all(|i| *i) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        queries.iter().for_each(|q| q.abort());
        // Each node restarted in turn: the others keep serving meanwhile.
        for k in 0..count {
            let stop = Instant::now();
            let exit = daemons[k].terminate()?;
            let name = &self.nodes[k].name;
            eprintln!(
                "{name}: SIGTERM → exit {exit} in {:.1} s",
                stop.elapsed().as_secs_f64()
            );
            let start = Instant::now();
            daemons[k] = Daemon::spawn(&self.nodes[k].launch)?;
            clients[k] = daemons[k].client().await?;
            while !status(&mut clients[k]).await?.ready {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            eprintln!(
                "{name}: restart: ready (answering) {:.2} s after the process started",
                start.elapsed().as_secs_f64()
            );
        }
        let restarted = statuses(&mut clients).await?;
        self.rows("restarted", &restarted, &daemons).await;
        if self.o.churn.is_zero() {
            for d in &mut daemons {
                d.terminate()?;
            }
            return Ok(());
        }
        let queries = self.spawn_all_queries(&clients);
        let end = Instant::now() + self.o.churn;
        next_row = Instant::now() + self.o.sample_every;
        while Instant::now() < end {
            let tick = Instant::now();
            for k in 0..count {
                for _ in 0..self.o.churn_per_s {
                    self.add_photo(k)?;
                    if let Some(old) = self.nodes[k].files.pop_front() {
                        std::fs::remove_file(&old)?;
                    }
                }
            }
            if Instant::now() >= next_row {
                let sampled = statuses(&mut clients).await?;
                self.rows("churn", &sampled, &daemons).await;
                next_row += self.o.sample_every;
            }
            tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
        }
        // Let the last changes land, then one more row per node.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let last = statuses(&mut clients).await?;
            let settled = last.iter().all(|(k, s)| {
                s.pending_files == 0 && s.indexed_files == self.nodes[*k].files.len() as u64
            });
            if settled {
                self.rows("settled", &last, &daemons).await;
                break;
            }
            if Instant::now() > deadline {
                bail!("the churn did not settle in 10 min: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        queries.iter().for_each(|q| q.abort());
        for d in &mut daemons {
            d.terminate()?;
        }
        Ok(())
    }
}

/// `s` as a TOML basic string (JSON's escapes are TOML's).
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Every node's Status, by node index.
async fn statuses(
    clients: &mut [DualSightClient<Channel>],
) -> Result<Vec<(usize, proto::StatusResponse)>> {
    let mut out = Vec::new();
    for (k, c) in clients.iter_mut().enumerate() {
        out.push((k, status(c).await?));
    }
    Ok(out)
}

async fn status(c: &mut DualSightClient<Channel>) -> Result<proto::StatusResponse> {
    Ok(c.status(proto::StatusRequest {}).await?.into_inner())
}
