//! The crash harness: the real daemon over a real folder, killed with
//! SIGKILL at a random moment after random changes to the folder, round
//! after round. After each kill the store must pass `dualsight fsck`; after
//! each restart, the files indexed before the round and untouched by it must
//! be searchable at once (nothing acknowledged was lost), and once the
//! daemon has caught up:
//! - every file on disk is searchable by its path, itself first, score ≈ 1;
//! - no search returns a deleted file or the same path twice;
//! - the counters equal a recount of the folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use dualsight::rng::SplitMix64;
use dualsight::server::proto::dual_sight_client::DualSightClient;
use dualsight::server::proto::{self, search_by_image_request};
use tonic::transport::Channel;

use crate::daemon::{Daemon, Launch};

/// What a run needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `dualsight` binary.
    pub dualsight: PathBuf,
    /// The checkpoint the daemon serves (a small one keeps rounds short).
    pub model: PathBuf,
    /// Distinct photos the harness copies in (two files on disk never share one).
    pub sources: Vec<PathBuf>,
    /// Scratch: the watched folder, the data dir, the log.
    pub work: PathBuf,
    pub rounds: usize,
    pub seed: u64,
    /// How long the daemon may take to catch up after a restart.
    pub settle: Duration,
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub rounds: usize,
    /// Rounds in which no invariant broke.
    pub survived: usize,
    /// Every broken invariant: `round N: what`.
    pub broken: Vec<String>,
    /// Files on disk at the end, and changes made over the run.
    pub files: usize,
    pub changes: usize,
    /// Times Status said idle (nothing pending) while changes were still
    /// settling: not an invariant, a limit of what Status reports.
    pub early_idle: usize,
}

/// Short timings so that rounds are quick; the defaults suit real folders.
const CONFIG: &str = "[watch]\ndebounce_ms = 100\nstable_ms = 300\nroot_poll_s = 1\n\
[ingest]\nbatch_size = 4\nbatch_timeout_ms = 50\nremove_grace_ms = 800\n\
[index]\ncheckpoint_interval_s = 1\n";

/// Longer than the debounce, stability check and removal grace above
/// together: after this long idle, no change can still be on its way.
const QUIET: Duration = Duration::from_millis(2000);

/// Subfolders the files live in; whole subfolders are renamed too.
const DIRS: usize = 4;

pub struct Harness {
    o: Options,
    photos: PathBuf,
    data: PathBuf,
    log: PathBuf,
    config: PathBuf,
    rng: SplitMix64,
    /// What the harness put on disk: path relative to `photos` → source index.
    disk: BTreeMap<PathBuf, usize>,
    next_name: usize,
    changes: usize,
}

impl Harness {
    pub fn new(o: Options) -> Result<Self> {
        if o.sources.len() < 8 {
            bail!("need at least 8 source photos, got {}", o.sources.len());
        }
        let photos = o.work.join("photos");
        let data = o.work.join("data");
        for d in 0..DIRS {
            std::fs::create_dir_all(photos.join(format!("dir{d}")))?;
        }
        let config = o.work.join("dualsight.toml");
        std::fs::write(&config, CONFIG)?;
        Ok(Self {
            rng: SplitMix64::new(o.seed),
            log: o.work.join("daemon.log"),
            photos,
            data,
            config,
            o,
            disk: BTreeMap::new(),
            next_name: 0,
            changes: 0,
        })
    }

    fn spawn(&self) -> Result<Daemon> {
        Daemon::spawn(&Launch {
            dualsight: self.o.dualsight.clone(),
            model: self.o.model.clone(),
            config: self.config.clone(),
            photos: self.photos.clone(),
            data: self.data.clone(),
            log: self.log.clone(),
            extra: Vec::new(),
        })
    }

    fn abs(&self, rel: &Path) -> String {
        self.photos.join(rel).to_string_lossy().into_owned()
    }

    fn unused_source(&mut self) -> usize {
        let used: BTreeSet<usize> = self.disk.values().copied().collect();
        loop {
            let s = self.rng.below(self.o.sources.len() as u64) as usize;
            if !used.contains(&s) {
                return s;
            }
        }
    }

    /// Random changes: add, modify, delete, rename files, rename a subfolder.
    fn mutate(&mut self) -> Result<()> {
        let n = 1 + self.rng.below(8);
        for _ in 0..n {
            let cap = self.o.sources.len() / 2;
            let kind = match self.rng.below(10) {
                _ if self.disk.len() < 4 => 0,
                _ if self.disk.len() >= cap => 2,
                k => k,
            };
            let pick = |h: &mut Self| -> PathBuf {
                let i = h.rng.below(h.disk.len() as u64) as usize;
                h.disk.keys().nth(i).expect("non-empty").clone()
            };
            match kind {
                0..=3 => {
                    let s = self.unused_source();
                    let d = self.rng.below(DIRS as u64);
                    let rel = PathBuf::from(format!("dir{d}/f{}.png", self.next_name));
                    self.next_name += 1;
                    std::fs::copy(&self.o.sources[s], self.photos.join(&rel))?;
                    self.disk.insert(rel, s);
                }
                4 => {
                    let rel = pick(self);
                    let s = self.unused_source();
                    std::fs::write(self.photos.join(&rel), std::fs::read(&self.o.sources[s])?)?;
                    self.disk.insert(rel, s);
                }
                5 | 6 => {
                    let rel = pick(self);
                    std::fs::remove_file(self.photos.join(&rel))?;
                    self.disk.remove(&rel);
                }
                7 | 8 => {
                    let rel = pick(self);
                    let d = self.rng.below(DIRS as u64);
                    let to = PathBuf::from(format!("dir{d}/f{}.png", self.next_name));
                    self.next_name += 1;
                    std::fs::rename(self.photos.join(&rel), self.photos.join(&to))?;
                    let s = self.disk.remove(&rel).expect("picked from disk");
                    self.disk.insert(to, s);
                }
                _ => {
                    // A whole subfolder moves away and back under a new name.
                    let d = self.rng.below(DIRS as u64);
                    let (from, tmp) = (format!("dir{d}"), format!("moving{d}"));
                    std::fs::rename(self.photos.join(&from), self.o.work.join(&tmp))?;
                    std::fs::rename(self.o.work.join(&tmp), self.photos.join(&from))?;
                }
            }
            self.changes += 1;
        }
        Ok(())
    }

    fn fsck(&self) -> Result<(), String> {
        let out = Command::new(&self.o.dualsight)
            .arg("fsck")
            .arg("--data-dir")
            .arg(&self.data)
            .output()
            .map_err(|e| format!("fsck did not run: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "fsck: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    async fn status(c: &mut DualSightClient<Channel>) -> Option<proto::StatusResponse> {
        c.status(proto::StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// SearchByImage on an indexed path: it must come first, score ≈ 1.
    async fn finds_itself(c: &mut DualSightClient<Channel>, path: &str) -> Result<(), String> {
        let req = proto::SearchByImageRequest {
            query: Some(search_by_image_request::Query::Path(path.to_string())),
            limit: 3,
            ..Default::default()
        };
        match c.search_by_image(req).await {
            Ok(r) => match r.into_inner().hits.first() {
                Some(h) if h.path == path && h.score > 0.999 => Ok(()),
                Some(h) => Err(format!("{path}: first hit {} (score {})", h.path, h.score)),
                None => Err(format!("{path}: no hits")),
            },
            Err(s) => Err(format!("{path}: {}", s.message())),
        }
    }

    /// Runs the rounds; the report lists every broken invariant.
    pub async fn run(&mut self) -> Result<Report> {
        let mut report = Report {
            rounds: self.o.rounds,
            ..Report::default()
        };
        // Round 0: a first folder, indexed in full before any kill.
        for _ in 0..3 {
            self.mutate()?;
        }
        let mut daemon = self.spawn()?;
        let mut client = daemon.client().await?;
        if let Err(e) = self.settle(&mut client, &mut report.early_idle).await {
            bail!(
                "the first indexing did not finish: {e} (log: {})",
                self.log.display()
            );
        }
        for round in 1..=self.o.rounds {
            let before = report.broken.len();
            let stable: BTreeMap<PathBuf, usize> = self.disk.clone();
            self.mutate()?;
            let touched: BTreeSet<PathBuf> = stable
                .iter()
                .filter(|(p, s)| self.disk.get(*p) != Some(*s))
                .map(|(p, _)| p.clone())
                .collect();
            tokio::time::sleep(Duration::from_millis(self.rng.below(1500))).await;
            drop(client);
            drop(daemon);
            let mut early = 0;
            let mut broken = |what: String| report.broken.push(format!("round {round}: {what}"));
            if let Err(e) = self.fsck() {
                broken(e);
            }
            daemon = self.spawn()?;
            client = daemon.client().await?;
            self.wait_ready(&mut client).await;
            // Durability: what was indexed before the round, and untouched by
            // it, is there as soon as the daemon answers (not re-indexed).
            for rel in stable.keys().filter(|p| !touched.contains(*p)) {
                if let Err(e) = Self::finds_itself(&mut client, &self.abs(rel)).await {
                    broken(format!("lost across the kill: {e}"));
                }
            }
            if let Err(e) = self.settle(&mut client, &mut early).await {
                broken(e);
            }
            for e in self.check(&mut client).await {
                broken(e);
            }
            report.early_idle += early;
            if report.broken.len() == before {
                report.survived += 1;
            }
        }
        report.files = self.disk.len();
        report.changes = self.changes;
        Ok(report)
    }

    async fn wait_ready(&self, c: &mut DualSightClient<Channel>) {
        let deadline = Instant::now() + self.o.settle;
        while Instant::now() < deadline {
            if Self::status(c).await.is_some_and(|s| s.ready) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until nothing is pending and the counters equal the folder, for
    /// [`QUIET`] on end: Status counts only files handed to the pipeline, not
    /// those waiting out the stability check or the removal grace, so one
    /// reading of "idle" can come early. Each such early reading is counted.
    async fn settle(
        &self,
        c: &mut DualSightClient<Channel>,
        early: &mut usize,
    ) -> Result<(), String> {
        let want = self.disk.len() as u64;
        let deadline = Instant::now() + self.o.settle;
        let mut last = None;
        let mut idle_since: Option<Instant> = None;
        while Instant::now() < deadline {
            if let Some(s) = Self::status(c).await {
                let idle = s.ready && s.pending_files == 0 && s.failed_files == 0;
                let matches = idle && s.indexed_files == want;
                match (idle, idle_since) {
                    (true, None) => idle_since = Some(Instant::now()),
                    (false, Some(_)) => {
                        *early += 1;
                        idle_since = None;
                    }
                    _ => {}
                }
                if matches && idle_since.is_some_and(|t| t.elapsed() >= QUIET) {
                    return Ok(());
                }
                last = Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(match last {
            Some(s) => format!(
                "counters never matched the folder's {want} files: indexed {}, pending {}, failed {}",
                s.indexed_files, s.pending_files, s.failed_files
            ),
            None => "no status".into(),
        })
    }

    async fn check(&self, c: &mut DualSightClient<Channel>) -> Vec<String> {
        let mut broken = Vec::new();
        for rel in self.disk.keys() {
            if let Err(e) = Self::finds_itself(c, &self.abs(rel)).await {
                broken.push(format!("not searchable: {e}"));
            }
        }
        let on_disk: BTreeSet<String> = self.disk.keys().map(|p| self.abs(p)).collect();
        let req = proto::SearchRequest {
            text: "a photo".into(),
            limit: (self.disk.len() as u32 + 10).min(1000),
            ..Default::default()
        };
        match c.search(req).await {
            Ok(r) => {
                let mut seen = BTreeSet::new();
                for h in r.into_inner().hits {
                    if !on_disk.contains(&h.path) {
                        broken.push(format!("search returned {}, not on disk", h.path));
                    }
                    if !seen.insert(h.path.clone()) {
                        broken.push(format!("search returned {} twice", h.path));
                    }
                }
            }
            Err(s) => broken.push(format!("search failed: {}", s.message())),
        }
        broken
    }
}
