//! The planner: what each change needs. A file the store already has
//! unchanged is skipped; removals wait out their grace so a rename's new
//! path claims the vector before the old path lets it go.
//!
//! A full scan sends every file it walks, mostly unchanged ones. The planner
//! takes the upserts waiting in the feed together (up to [`LOOKUP_BATCH`])
//! and asks the store about them at once: on PostgreSQL that is two
//! statements per batch (three with new files) instead of two round trips
//! per file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::mpsc as tmpsc;

use super::{Counters, Job, Op, PipelineConfig};
use crate::engine::Engine;
use crate::ingest::Change;
use crate::ingest::feed::{ChangeRx, Ticket};
use crate::preprocess::meta::TakenFrom;
use crate::store::{FileRecord, path_str};

/// Upserts looked up together at most; bounds one statement's parameters.
const LOOKUP_BATCH: usize = 512;

/// A file the watcher saw, to be checked against the store.
struct Seen {
    path: PathBuf,
    size: u64,
    mtime_ns: i64,
}

/// Decides what each change needs; owns the delayed removals.
pub(super) async fn planner(
    engine: Arc<Engine>,
    counters: Arc<Counters>,
    cfg: PipelineConfig,
    mut changes: ChangeRx,
    jobs: tmpsc::Sender<Job>,
    ops: mpsc::SyncSender<Op>,
) {
    let mut removals: Vec<(Instant, Op)> = Vec::new();
    // A file seen again while its earlier version is still in the pipeline
    // waits here (the newest sighting) until that job lets it go: dropped,
    // the new version would wait for the next full scan, since the earlier
    // job, finding the file changed, leaves it to a later event.
    let mut later: HashMap<PathBuf, Seen> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        // The changes taken this turn stay counted in the feed until they are
        // counted where they went (pending files, held or applying removals).
        let mut taken: Vec<Ticket> = Vec::new();
        let mut upserts: Vec<Seen> = Vec::new();
        let mut other = None;
        tokio::select! {
            change = changes.recv() => {
                let Some((mut change, ticket)) = change else { break };
                taken.push(ticket);
                // Upserts waiting right behind this one join its lookup; the
                // first other change ends the run and is handled after it.
                loop {
                    match change {
                        Change::Upsert { path, size, mtime_ns } => upserts.push(Seen { path, size, mtime_ns }),
                        c => {
                            other = Some(c);
                            break;
                        }
                    }
                    if upserts.len() >= LOOKUP_BATCH {
                        break;
                    }
                    let Some((next, ticket)) = changes.try_recv() else { break };
                    taken.push(ticket);
                    change = next;
                }
            }
            _ = tick.tick() => {}
        }
        if !upserts.is_empty() {
            // A path that came back cancels its pending removal.
            let back: HashSet<&Path> = upserts.iter().map(|u| u.path.as_path()).collect();
            removals.retain(|(_, op)| !matches!(op, Op::Remove(p) if back.contains(p.as_path())));
            if start_jobs(&engine, &counters, &jobs, upserts, &mut later)
                .await
                .is_err()
            {
                return;
            }
        }
        // Files whose earlier version has left the pipeline go in now.
        let free: Vec<PathBuf> = later
            .keys()
            .filter(|p| !counters.in_flight(p))
            .cloned()
            .collect();
        if !free.is_empty() {
            let seen = free.iter().filter_map(|p| later.remove(p)).collect();
            if start_jobs(&engine, &counters, &jobs, seen, &mut later)
                .await
                .is_err()
            {
                return;
            }
        }
        counters.waiting.store(later.len() as u64, Ordering::SeqCst);
        match other {
            None | Some(Change::Upsert { .. }) => {}
            Some(Change::Remove { path }) => {
                removals.push((Instant::now() + cfg.remove_grace, Op::Remove(path)))
            }
            Some(Change::Scanned { root, seen }) => removals.push((
                Instant::now() + cfg.remove_grace,
                Op::Reconcile { root, seen },
            )),
            Some(Change::RootOffline { root }) => set_offline(&engine, &root, true),
            Some(Change::RootOnline { root }) => {
                // Watched again before its grace ran out: keep its files.
                removals.retain(|(_, op)| !matches!(op, Op::Forget { path, .. } if *path == root));
                set_offline(&engine, &root, false);
            }
            Some(Change::Unwatched { path, keep }) => {
                removals.push((Instant::now() + cfg.remove_grace, Op::Forget { path, keep }))
            }
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = removals.into_iter().partition(|(at, _)| *at <= now);
        removals = later;
        counters
            .applying
            .fetch_add(due.len() as u64, Ordering::SeqCst);
        counters.held.store(removals.len() as u64, Ordering::SeqCst);
        drop(taken);
        for (_, op) in due {
            if send_op(&ops, op).await.is_err() {
                return;
            }
        }
    }
    // The feed closed (shutdown): removals still waiting are applied by the next
    // start's full scan, so nothing is lost by dropping them here.
    counters.closing.store(true, Ordering::SeqCst);
}

/// Sends a job for each file that needs one; a file whose earlier version
/// is still in the pipeline goes to `later` instead (replacing an older
/// sighting), and one the store already has leaves `later`.
async fn start_jobs(
    engine: &Engine,
    counters: &Counters,
    jobs: &tmpsc::Sender<Job>,
    seen: Vec<Seen>,
    later: &mut HashMap<PathBuf, Seen>,
) -> Result<(), ()> {
    let work = needs_work(engine, &seen);
    for (u, needed) in seen.into_iter().zip(work) {
        if !needed {
            later.remove(&u.path);
        } else if counters.start(&u.path) {
            later.remove(&u.path);
            let job = Job {
                path: u.path,
                size: u.size,
                mtime_ns: u.mtime_ns,
            };
            jobs.send(job).await.map_err(|_| ())?;
        } else {
            later.insert(u.path.clone(), u);
        }
    }
    Ok(())
}

/// `SyncSender::send` blocks when the committer is behind: do it off the async threads.
async fn send_op(ops: &mpsc::SyncSender<Op>, op: Op) -> Result<(), ()> {
    let ops = ops.clone();
    tokio::task::spawn_blocking(move || ops.send(op).map_err(|_| ()))
        .await
        .map_err(|_| ())?
}

fn set_offline(engine: &Engine, root: &Path, offline: bool) {
    if let Ok(r) = path_str(root)
        && let Err(e) = engine.store.set_root_offline(r, offline)
    {
        tracing::error!(root = %root.display(), error = %e, "cannot record root state");
    }
    tracing::info!(root = %root.display(), offline, "root state");
}

/// For each file, false when the store already has it exactly (same size
/// and mtime) with an intact vector in our space, or it failed before and
/// has not changed. A store that cannot answer means work: the file is
/// looked at again rather than missed.
fn needs_work(engine: &Engine, seen: &[Seen]) -> Vec<bool> {
    let paths: Vec<Option<&str>> = seen
        .iter()
        .map(|s| match path_str(&s.path) {
            Ok(p) => Some(p),
            Err(_) => {
                tracing::warn!(path = %s.path.display(), "skipping a path that is not UTF-8");
                None
            }
        })
        .collect();
    let asked: Vec<&str> = paths.iter().flatten().copied().collect();
    let mut records = engine
        .store
        .files(&asked)
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, files = asked.len(), "cannot read file records: looking at the files again");
            vec![None; asked.len()]
        })
        .into_iter();
    let records: Vec<Option<FileRecord>> = paths
        .iter()
        .map(|p| p.and_then(|_| records.next().flatten()))
        .collect();
    // A record from before capture times were kept is read once more (its
    // vector is reused): the file's date and size go into the record.
    // Each lookup below asks of (index, key) pairs, so its answers line up
    // with the files they are about.
    let (unchanged, hashes): (Vec<usize>, Vec<_>) = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let r = r.as_ref()?;
            (r.size == seen[i].size
                && r.mtime_ns == seen[i].mtime_ns
                && r.meta.taken_from != TakenFrom::Unknown)
                .then_some((i, r.hash))
        })
        .unzip();
    let intact = engine.have_intact_vectors(&hashes).unwrap_or_else(|e| {
        tracing::warn!(error = %e, files = hashes.len(), "cannot look up vectors: looking at the files again");
        vec![false; hashes.len()]
    });
    let mut work: Vec<bool> = paths.iter().map(Option::is_some).collect();
    for (&i, ok) in unchanged.iter().zip(intact) {
        work[i] = !ok;
    }
    // What failed before and has not changed is not tried again.
    let (open, open_paths): (Vec<usize>, Vec<&str>) = paths
        .iter()
        .enumerate()
        .filter(|&(i, _)| work[i])
        .filter_map(|(i, p)| Some((i, (*p)?)))
        .unzip();
    let failures = engine.store.failures(&open_paths).unwrap_or_else(|e| {
        tracing::warn!(error = %e, files = open_paths.len(), "cannot read failure records: trying the files again");
        vec![None; open_paths.len()]
    });
    for (&i, failure) in open.iter().zip(failures) {
        if let Some(f) = failure
            && f.size == seen[i].size
            && f.mtime_ns == seen[i].mtime_ns
        {
            work[i] = false;
        }
    }
    work
}
