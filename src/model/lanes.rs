//! Data-parallel lanes: a batch of independent items split across small
//! rayon pools of their own, each lane running the whole forward pass on its
//! share with its own threads.
//!
//! Why: a CPU forward on every thread synchronises all of them at each
//! matrix product (a few hundred barriers per ViT-B/16 pass), shares one
//! packed input between cores, and each core's caches hold slices of every
//! image. Two batch-4 forwards side by side, one thread each, ran ViT-B/16 at
//! 3.2–3.3 images/s on two cores where one batch-8 forward on both threads
//! ran 2.8–2.9 (measured by hand-made one-thread pools in `examples/towers.rs`
//! before this module; `dualsight bench --only vision` then gave 3.48
//! against 2.91 at batch 8, alternating builds with and without lanes).
//! A small batch still gets every thread: splitting it buys no cache and
//! costs each image its second core.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// Fewest items a lane takes. With fewer the split measured no gain worth
/// the latency (ViT-B/16, two cores: batch 2 split one image a lane ran 3.0
/// images/s, against 2.7–3.4 on both threads; batch 4 split two a lane 3.2
/// against 3.1), while each image would take twice as long.
pub const MIN_ITEMS: usize = 4;

/// How many lanes `items` items on `threads` threads go into: at most one
/// per thread, each with at least [`MIN_ITEMS`] items.
pub fn count(items: usize, threads: usize) -> usize {
    (items / MIN_ITEMS).min(threads).max(1)
}

/// The items of lane `lane` of `lanes`: contiguous, in order, sizes within one.
pub fn share(items: usize, lanes: usize, lane: usize) -> Range<usize> {
    let start = |i: usize| i * items / lanes;
    start(lane)..start(lane + 1)
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
            tracing::warn!("could not start {lanes} lanes of {threads} threads: {e}");
            None
        }
    }
}

/// Runs `f` on `0..items` split into lanes (see [`count`]) of the calling
/// pool's threads, side by side, and returns each lane's result in order.
/// With one lane, `f(0..items)` runs here on the calling pool.
pub fn run<T: Send>(items: usize, f: impl Fn(Range<usize>) -> T + Sync) -> Vec<T> {
    let threads = rayon::current_num_threads();
    let lanes = count(items, threads);
    let Some(pools) = (lanes > 1).then(|| pools(lanes, threads / lanes)).flatten() else {
        return vec![f(0..items)];
    };
    let f = &f;
    std::thread::scope(|s| {
        let others: Vec<_> = pools.pools[1..]
            .iter()
            .enumerate()
            .map(|(i, pool)| s.spawn(move || pool.install(|| f(share(items, lanes, i + 1)))))
            .collect();
        let mut out = vec![pools.pools[0].install(|| f(share(items, lanes, 0)))];
        for h in others {
            match h.join() {
                Ok(v) => out.push(v),
                // A panic in a lane is the caller's panic, as it would be in one lane.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_cover_every_item_once_in_order() {
        for (items, threads, want) in [(0, 2, 1), (7, 2, 1), (8, 2, 2), (19, 2, 2), (16, 16, 4)] {
            assert_eq!(
                count(items, threads),
                want,
                "{items} items, {threads} threads"
            );
            let lanes = count(items, threads);
            let all: Vec<usize> = (0..lanes).flat_map(|l| share(items, lanes, l)).collect();
            assert_eq!(all, (0..items).collect::<Vec<_>>());
            assert!((0..lanes).all(|l| share(items, lanes, l).len() >= items / lanes));
        }
    }

    #[test]
    fn each_lane_runs_on_its_own_share_of_the_threads() {
        let pool = ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let got = pool.install(|| {
            run(17, |r| {
                let name = std::thread::current().name().map(str::to_owned);
                (r, rayon::current_num_threads(), name)
            })
        });
        let ranges: Vec<_> = got.iter().map(|(r, ..)| r.clone()).collect();
        assert_eq!(ranges, vec![0..4, 4..8, 8..12, 12..17]);
        assert!(got.iter().all(|(_, threads, _)| *threads == 1));
        for (lane, (.., name)) in got.iter().enumerate() {
            assert_eq!(
                name.as_deref(),
                Some(format!("dualsight-lane-{lane}.0").as_str())
            );
        }
        // Too few items for two lanes: the calling pool runs them whole.
        let whole = pool.install(|| run(5, |r| (r, rayon::current_num_threads())));
        assert_eq!(whole, vec![(0..5, 4)]);
    }
}
