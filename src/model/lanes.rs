//! Data-parallel lanes: a batch of independent items split across small
//! rayon pools of their own, each lane running the whole forward pass on its
//! share with its own threads.
//!
//! Why: a CPU forward on every thread synchronises all of them at each
//! matrix product (a few hundred barriers per ViT-B/16 pass), shares one
//! packed input between cores, and each core's caches hold slices of every
//! image; forwards side by side, one pool each, avoid all three (BENCHMARKS.md
//! history, the night run of 2026-11-27, has the A/B figures). A small batch
//! still gets every thread: splitting it buys no cache and costs each image
//! its second core.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// Fewest items a lane takes: below it, splitting measured no gain on
/// ViT-B/16 (BENCHMARKS.md history).
pub const MIN_ITEMS: usize = 4;

/// How many lanes `items` items on `threads` threads go into: the largest
/// divisor of `threads` (so every thread has a lane) that leaves each lane at
/// least [`MIN_ITEMS`] items; 1 when none does.
pub fn count(items: usize, threads: usize) -> usize {
    let most = items / MIN_ITEMS;
    (1..=threads.min(most))
        .rev()
        .find(|d| threads.is_multiple_of(*d))
        .unwrap_or(1)
}

/// The parts `items` items run in: `lanes` equal lanes side by side, and
/// the rest, what does not divide evenly (fewer than `lanes` items, maybe
/// none), after them on every thread, so no lane waits on another's extra
/// item. Contiguous and in order.
pub fn parts(items: usize, lanes: usize) -> (Vec<Range<usize>>, Range<usize>) {
    let each = items / lanes.max(1);
    let lanes_of = (0..lanes).map(|i| i * each..(i + 1) * each).collect();
    (lanes_of, lanes * each..items)
}

/// `lanes` pools of `threads` threads each, built once and kept: a pool's
/// threads cost nothing while idle, and building one per batch would spawn
/// threads per forward.
struct Pools {
    lanes: usize,
    threads: usize,
    pools: Vec<ThreadPool>,
}

static POOLS: Mutex<Vec<Arc<Pools>>> = Mutex::new(Vec::new());
static WARNED: AtomicBool = AtomicBool::new(false);

fn pools(lanes: usize, threads: usize) -> Option<Arc<Pools>> {
    let mut cache = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache
        .iter()
        .find(|p| p.lanes == lanes && p.threads == threads)
    {
        return Some(p.clone());
    }
    let pools = (0..lanes)
        .map(|lane| {
            ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |i| format!("dualsight-lane-{lane}.{i}"))
                .build()
        })
        .collect::<Result<Vec<_>, _>>();
    match pools {
        Ok(pools) => {
            let p = Arc::new(Pools {
                lanes,
                threads,
                pools,
            });
            cache.push(p.clone());
            Some(p)
        }
        Err(e) => {
            // Out of threads or memory: the batch still runs, in one lane.
            // Later batches try again (the limit may lift) but say it once:
            // a daemon would otherwise log this for every batch.
            if WARNED.swap(true, Ordering::Relaxed) {
                return None;
            }
            tracing::warn!(
                "could not start {lanes} lanes of {threads} thread(s) each ({e}); running the \
                 batch on the shared pool instead, slower. If the process is near its thread \
                 limit (ulimit -u, systemd TasksMax), raise it or set RAYON_NUM_THREADS lower"
            );
            None
        }
    }
}

/// Runs `f` on `0..items` split into [`parts`]: the lanes side by side, each
/// on its own pool of the calling pool's threads, then any remainder on the
/// calling pool. Returns each part's result in order. With one lane,
/// `f(0..items)` runs here on the calling pool.
pub fn run<T: Send>(items: usize, f: impl Fn(Range<usize>) -> T + Sync) -> Vec<T> {
    let threads = rayon::current_num_threads();
    let lanes = count(items, threads);
    let Some(pools) = (lanes > 1).then(|| pools(lanes, threads / lanes)).flatten() else {
        return vec![f(0..items)];
    };
    let (parts, rest) = parts(items, lanes);
    let f = &f;
    let mut out = std::thread::scope(|s| {
        let mut lane = pools.pools.iter().zip(parts);
        let (first_pool, first) = lane.next().expect("two lanes or more");
        let others: Vec<_> = lane
            .map(|(pool, r)| s.spawn(move || pool.install(|| f(r))))
            .collect();
        let mut out = vec![first_pool.install(|| f(first))];
        for h in others {
            match h.join() {
                Ok(v) => out.push(v),
                // A panic in a lane is the caller's panic, as it would be in one lane.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    });
    if !rest.is_empty() {
        out.push(f(rest));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_use_every_thread_and_cover_every_item_once_in_order() {
        for (items, threads, want) in [
            (0, 2, 1),
            (7, 2, 1),
            (8, 2, 2),
            (19, 2, 2),
            (16, 16, 4),
            (12, 6, 3),
            (40, 16, 8),
            (35, 7, 7),
            (27, 7, 1),
        ] {
            let lanes = count(items, threads);
            assert_eq!(lanes, want, "{items} items, {threads} threads");
            assert!(threads.is_multiple_of(lanes));
            let (parts, rest) = parts(items, lanes);
            assert_eq!(parts.len(), lanes);
            let all: Vec<usize> = parts.iter().chain([&rest]).cloned().flatten().collect();
            assert_eq!(all, (0..items).collect::<Vec<_>>());
            // Equal lanes, then a remainder smaller than a lane count.
            assert!(parts.iter().all(|p| p.len() == items / lanes));
            assert!(rest.len() < lanes);
        }
    }

    #[test]
    fn each_lane_runs_on_its_own_share_of_the_threads() {
        let pool = ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let got = pool.install(|| {
            run(19, |r| {
                let name = std::thread::current().name().map(str::to_owned);
                (r, rayon::current_num_threads(), name)
            })
        });
        let ranges: Vec<_> = got.iter().map(|(r, ..)| r.clone()).collect();
        assert_eq!(ranges, vec![0..4, 4..8, 8..12, 12..16, 16..19]);
        for (lane, (_, threads, name)) in got[..4].iter().enumerate() {
            assert_eq!(*threads, 1);
            assert_eq!(
                name.as_deref(),
                Some(format!("dualsight-lane-{lane}.0").as_str())
            );
        }
        // The remainder runs on the calling pool, all four threads.
        assert_eq!(got[4].1, 4);
        // Too few items for two lanes: the calling pool runs them whole.
        let whole = pool.install(|| run(3, |r| (r, rayon::current_num_threads())));
        assert_eq!(whole, vec![(0..3, 4)]);
    }
}
