//! sled's bytes per file for a library of `n` photos, through the real store:
//! `Store::commit` in batches the size a busy daemon commits, paths shaped
//! like a photo library's, one vector per file. The figure the storage issue
//! sets a target for (sled on disk per file), measured in seconds instead of
//! a daemon's first indexing, so that layouts can be compared run by run.
//!
//! cargo run --release -p dualsight-bench --example store_bytes -- <dir> <files> [batch] [dim]
//!
//! `dir` must not exist; it is removed at the end.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use dualsight::store::{Commit, SledStore};
use dualsight_bench::assets::rss;
use dualsight_bench::restart::file_commit;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Opens `dir` again once sled's flusher thread, which may outlive the
/// handle just dropped for a moment, lets go of its lock.
fn reopen(dir: &std::path::Path) -> Result<SledStore> {
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match SledStore::open(dir) {
            Err(dualsight::store::StoreError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return Ok(r?),
        }
    }
}

fn main() -> Result<()> {
    dualsight::heap::set_trimmer(dualsight::heap::mimalloc_collect);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, n, batch, dim) = match &args[..] {
        [dir, n, rest @ ..] if rest.len() <= 2 => (
            std::path::PathBuf::from(dir),
            n.parse::<usize>().context("files")?,
            rest.first()
                .map_or(Ok(256), |b| b.parse())
                .context("batch")?,
            rest.get(1).map_or(Ok(64), |d| d.parse()).context("dim")?,
        ),
        _ => bail!("usage: store_bytes <dir> <files> [batch] [dim]"),
    };
    if dir.exists() {
        bail!("{}: exists; give a path to create", dir.display());
    }
    let store = SledStore::open(&dir)?;
    let space = store.space("store-bytes", dim)?;
    store.set_active("store-bytes")?;
    let rate: Option<f64> = std::env::var("RATE").ok().and_then(|r| r.parse().ok());
    let t = Instant::now();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for start in (0..n).step_by(batch) {
        let items: Vec<Commit> = (start..(start + batch).min(n))
            .map(|i| {
                let vector = (0..dim)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                    })
                    .collect();
                file_commit(
                    format!("/srv/photos/2024/{:04}/IMG_{i:07}.jpg", i / 1000),
                    i,
                    vector,
                )
            })
            .collect();
        store.commit(&space, &items)?;
        if let Some(rate) = rate {
            // A daemon commits at its embedding pace; sled's cleaner runs beside it.
            let due = std::time::Duration::from_secs_f64((start + items.len()) as f64 / rate);
            std::thread::sleep(due.saturating_sub(t.elapsed()));
        }
    }
    let fill = t.elapsed().as_secs_f64();
    let after_fill = allocated(&dir) - store.segment_bytes();
    // sled's flusher thread cleans segments in the background (up to half
    // of each 500 ms tick): wait for the size to settle, as it does while a
    // daemon embeds at its own pace or sits idle.
    let t = Instant::now();
    let mut settled = after_fill;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(10));
        let now = allocated(&dir) - store.segment_bytes();
        let done = now as f64 > settled as f64 * 0.99 || t.elapsed().as_secs() > 600;
        settled = now;
        if done {
            break;
        }
    }
    let settle_s = t.elapsed().as_secs_f64();
    drop(space);
    drop(store);
    // The records in memory, as a restarted daemon holds them: a fresh open
    // in this process, its resident growth and its time.
    dualsight::heap::trim();
    let (rss_before, _) = rss(None).context("VmRSS")?;
    let t = Instant::now();
    let store = reopen(&dir)?;
    let open_s = t.elapsed().as_secs_f64();
    dualsight::heap::trim();
    let (rss_after, _) = rss(None).context("VmRSS")?;
    anyhow::ensure!(
        store.file_count()? == n as u64,
        "the reopened store lost files"
    );
    drop(store);
    let per = |b: u64| b as f64 / n as f64;
    println!(
        "{n} files, commits of {batch}, {dim}-d: {:.0} files/s; sled {:.0} B/file after the fill, {:.0} once its cleaner settled ({settle_s:.0} s; allocated blocks); reopened in {open_s:.2} s, holding {:.0} B/file in memory",
        n as f64 / fill,
        per(after_fill),
        per(settled),
        per(rss_after.saturating_sub(rss_before)),
    );
    if std::env::var_os("KEEP").is_none() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("{}: removing", dir.display()))?;
    }
    Ok(())
}

/// Blocks allocated under `dir` (sled punches holes in the segments it
/// frees, so file lengths overstate what it holds).
fn allocated(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}
