//! The scale and soak run: the real daemon's first indexing of N generated
//! photos, a restart, then hours of continuous adds and deletes with
//! queries running. Every sample is one row: the daemon's resident and peak
//! memory, what the data dir takes on disk (sled, vector segments, index
//! checkpoint), and text-query latency since the previous row. The figures
//! go to BENCHMARKS.md; nothing here asserts a timing.

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
    launch: Launch,
    rng: SplitMix64,
    /// Generated files, oldest first (the churn deletes from the front).
    files: VecDeque<PathBuf>,
    next: usize,
    started: Instant,
    latencies: Arc<Mutex<Vec<f64>>>,
}

impl Soak {
    pub fn new(o: Options) -> Result<Self> {
        let photos = o.work.join("photos");
        std::fs::create_dir_all(&photos)?;
        let config = o.work.join("dualsight.toml");
        std::fs::write(&config, CONFIG)?;
        let launch = Launch {
            dualsight: o.dualsight.clone(),
            model: o.model.clone(),
            config,
            photos,
            data: o.work.join("data"),
            log: o.work.join("daemon.log"),
        };
        Ok(Self {
            rng: SplitMix64::new(o.seed),
            o,
            launch,
            files: VecDeque::new(),
            next: 0,
            started: Instant::now(),
            latencies: Arc::default(),
        })
    }

    /// A new photo of random 28×28 gray noise: every file a distinct content
    /// (its own vector), small enough that a million fit on any disk.
    fn add_photo(&mut self) -> Result<()> {
        let n = self.next;
        self.next += 1;
        let dir = self.launch.photos.join(format!("d{:05}", n / PER_DIR));
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
        self.files.push_back(path);
        Ok(())
    }

    fn header(&self) {
        println!(
            "| t (s) | phase | indexed | pending | RSS (MiB) | peak RSS (MiB) | sled (MiB) | segments (MiB) | index (MiB) | sled B/file | queries | p50 (ms) | p99 (ms) |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    }

    fn row(&self, phase: &str, d: &Daemon, s: &proto::StatusResponse) {
        let (rss, peak) = d.pid().and_then(memory).unwrap_or((0, 0));
        let store = self.launch.data.join("store");
        let segments = disk_use(&store.join("segments"));
        let sled = disk_use(&store).saturating_sub(segments);
        let index = disk_use(&self.launch.data.join("index"));
        let mut lat = std::mem::take(&mut *self.latencies.lock().expect("latencies"));
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if lat.is_empty() {
                f64::NAN
            } else {
                lat[((lat.len() - 1) as f64 * p).round() as usize]
            }
        };
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "| {:.0} | {phase} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {:.1} | {:.1} |",
            self.started.elapsed().as_secs_f64(),
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
    fn spawn_queries(&self, mut c: DualSightClient<Channel>) -> tokio::task::JoinHandle<()> {
        let lat = self.latencies.clone();
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

    pub async fn run(&mut self) -> Result<()> {
        eprintln!(
            "generating {} photos in {}",
            self.o.files,
            self.launch.photos.display()
        );
        for i in 0..self.o.files {
            self.add_photo()?;
            if (i + 1).is_multiple_of(100_000) {
                eprintln!("  {} generated", i + 1);
            }
        }
        self.started = Instant::now();
        self.header();
        let mut d = Daemon::spawn(&self.launch)?;
        let mut c = d.client().await?;
        let queries = self.spawn_queries(c.clone());
        let want = self.o.files as u64;
        let mut next_row = Instant::now();
        loop {
            let s = status(&mut c).await?;
            if Instant::now() >= next_row {
                self.row("first indexing", &d, &s);
                next_row += self.o.sample_every;
            }
            if s.ready && s.indexed_files == want && s.pending_files == 0 {
                self.row("indexed", &d, &s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        queries.abort();
        let stop = Instant::now();
        let exit = d.terminate()?;
        eprintln!(
            "SIGTERM → exit {exit} in {:.1} s",
            stop.elapsed().as_secs_f64()
        );
        let start = Instant::now();
        d = Daemon::spawn(&self.launch)?;
        c = d.client().await?;
        while !status(&mut c).await?.ready {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "restart: ready (answering) {:.2} s after the process started",
            start.elapsed().as_secs_f64()
        );
        let s = status(&mut c).await?;
        self.row("restarted", &d, &s);
        if self.o.churn.is_zero() {
            d.terminate()?;
            return Ok(());
        }
        let queries = self.spawn_queries(c.clone());
        let end = Instant::now() + self.o.churn;
        next_row = Instant::now() + self.o.sample_every;
        while Instant::now() < end {
            let tick = Instant::now();
            for _ in 0..self.o.churn_per_s {
                self.add_photo()?;
                if let Some(old) = self.files.pop_front() {
                    std::fs::remove_file(&old)?;
                }
            }
            if Instant::now() >= next_row {
                let s = status(&mut c).await?;
                self.row("churn", &d, &s);
                next_row += self.o.sample_every;
            }
            tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
        }
        // Let the last changes land, then one more row.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let s = status(&mut c).await?;
            if s.pending_files == 0 && s.indexed_files == self.files.len() as u64 {
                self.row("settled", &d, &s);
                break;
            }
            if Instant::now() > deadline {
                bail!("the churn did not settle in 10 min: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        queries.abort();
        d.terminate()?;
        Ok(())
    }
}

async fn status(c: &mut DualSightClient<Channel>) -> Result<proto::StatusResponse> {
    Ok(c.status(proto::StatusRequest {}).await?.into_inner())
}
