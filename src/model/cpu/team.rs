//! A team of helper threads for a text query's dense layers, which spin a
//! short while between products instead of sleeping.
//!
//! A query's forward is ~100 products of a fraction of a millisecond each.
//! Through rayon, every one woke sleeping workers and put the calling
//! thread to sleep until they finished: a profile of the bf16 text tower
//! had ~29% of its time in the kernel's scheduler and futex paths. Here the
//! caller takes tasks beside the helpers, and a helper that finished one
//! product watches for the next for [`SPIN`] before it parks, so the
//! products of one query meet helpers already awake (as ONNX Runtime's
//! spinning pool does). One caller at a time: another one meanwhile (two
//! queries at once) goes through rayon.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a helper watches for the next product before it parks: longer
/// than the gaps between a query's products (attention, norms), far
/// shorter than what a core lent to spinning would cost an idle daemon.
const SPIN: Duration = Duration::from_micros(800);

/// `state`: the job's number in the high 32 bits, [`CLOSED`] once the
/// caller has taken the last task, and the helpers that joined it below.
const CLOSED: u64 = 1 << 16;
const JOINED: u64 = CLOSED - 1;

type Task<'a> = dyn Fn(usize) + Sync + 'a;

struct Team {
    /// One caller at a time.
    busy: AtomicBool,
    state: AtomicU64,
    /// The job: its tasks' count and the next one to take.
    tasks: AtomicUsize,
    next: AtomicUsize,
    /// Helpers of the current job that are done with it.
    left: AtomicUsize,
    /// A helper's panic in the current job, raised again by the caller.
    panicked: Mutex<Option<Box<dyn Any + Send>>>,
    /// The job's closure, lifetime erased: valid from the job's start until
    /// every helper that joined has left (the caller waits for that).
    func: Mutex<Option<&'static Task<'static>>>,
    sleeping: AtomicUsize,
    parked: Mutex<()>,
    wake: Condvar,
}

static TEAM: OnceLock<&'static Team> = OnceLock::new();

fn team() -> &'static Team {
    TEAM.get_or_init(|| {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        let team: &'static Team = Box::leak(Box::new(Team {
            busy: AtomicBool::new(false),
            state: AtomicU64::new(CLOSED),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            left: AtomicUsize::new(0),
            panicked: Mutex::new(None),
            func: Mutex::new(None),
            sleeping: AtomicUsize::new(0),
            parked: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for i in 0..helpers {
            let spawned = std::thread::Builder::new()
                .name(format!("dualsight-team-{i}"))
                .spawn(move || team.help());
            if spawned.is_err() {
                // Without its helpers the team still runs every task on
                // the caller: correct, only slower.
                tracing::warn!("could not start a helper thread for text queries");
            }
        }
        team
    })
}

/// Runs `task(i)` for every `i < tasks` on the team, the calling thread
/// included; `false` (nothing run) when another caller holds the team.
pub fn run(tasks: usize, task: &Task<'_>) -> bool {
    let team = team();
    if team
        .busy
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return false;
    }
    // SAFETY: the reference is only used until every helper that joined
    // this job has left it, which `run` waits for below before returning.
    let erased: &'static Task<'static> = unsafe { std::mem::transmute(task) };
    *team.func.lock().unwrap_or_else(|e| e.into_inner()) = Some(erased);
    team.tasks.store(tasks, Ordering::Relaxed);
    team.next.store(0, Ordering::Relaxed);
    team.left.store(0, Ordering::Relaxed);
    let job = (team.state.load(Ordering::Relaxed) >> 32).wrapping_add(1);
    team.state.store(job << 32, Ordering::SeqCst);
    if team.sleeping.load(Ordering::SeqCst) > 0 {
        let _lock = team.parked.lock().unwrap_or_else(|e| e.into_inner());
        team.wake.notify_all();
    }
    let mine = catch_unwind(AssertUnwindSafe(|| team.take(task)));
    let joined = (team.state.fetch_or(CLOSED, Ordering::AcqRel) & JOINED) as usize;
    while team.left.load(Ordering::Acquire) < joined {
        std::hint::spin_loop();
    }
    *team.func.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let helper_panic = team
        .panicked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    team.busy.store(false, Ordering::Release);
    // The task's own panic (its message and location) reaches the caller,
    // whichever thread ran it.
    if let Some(panic) = mine.err().or(helper_panic) {
        std::panic::resume_unwind(panic);
    }
    true
}

impl Team {
    /// Takes the job's tasks until none is left.
    fn take(&self, task: &Task<'_>) {
        let tasks = self.tasks.load(Ordering::Relaxed);
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= tasks {
                return;
            }
            task(i);
        }
    }

    /// A helper's life: wait for a job, join it unless it has closed, take
    /// tasks, leave.
    fn help(&self) {
        let mut seen = self.state.load(Ordering::Acquire) >> 32;
        loop {
            let mut state = self.wait_past(seen);
            seen = state >> 32;
            // Join unless the caller has closed the job (or a new one has
            // begun: the next wait returns it at once).
            let joined = loop {
                if state & CLOSED != 0 || state >> 32 != seen {
                    break false;
                }
                match self.state.compare_exchange_weak(
                    state,
                    state + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break true,
                    Err(now) => state = now,
                }
            };
            if !joined {
                continue;
            }
            let func = *self.func.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(func) = func
                && let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.take(func)))
            {
                *self.panicked.lock().unwrap_or_else(|e| e.into_inner()) = Some(panic);
            }
            self.left.fetch_add(1, Ordering::Release);
        }
    }

    /// The state once its job number differs from `seen`: spinning for
    /// [`SPIN`], then parked until a caller wakes the team.
    fn wait_past(&self, seen: u64) -> u64 {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let state = self.state.load(Ordering::Acquire);
            if state >> 32 != seen {
                return state;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                break;
            }
        }
        let mut lock = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        self.sleeping.fetch_add(1, Ordering::SeqCst);
        loop {
            let state = self.state.load(Ordering::SeqCst);
            if state >> 32 != seen {
                self.sleeping.fetch_sub(1, Ordering::SeqCst);
                return state;
            }
            lock = self.wake.wait(lock).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task runs exactly once, job after job, from several callers
    /// at once (those that find the team busy run theirs themselves), and
    /// after pauses long enough for the helpers to park.
    #[test]
    fn every_task_runs_once_whoever_calls() {
        let callers: Vec<_> = (0..3)
            .map(|c| {
                std::thread::spawn(move || {
                    for job in 0..300usize {
                        let tasks = 1 + (job * 7 + c) % 40;
                        let hits: Vec<AtomicUsize> =
                            (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                        let task = |i: usize| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        };
                        if !run(tasks, &task) {
                            (0..tasks).for_each(task);
                        }
                        assert!(
                            hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                            "job {job}"
                        );
                        if job % 100 == 99 {
                            std::thread::sleep(SPIN * 3);
                        }
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().expect("caller");
        }
        // Once free (another test may hold it a while), the team takes a job.
        let start = Instant::now();
        let hits: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
        let task = |i: usize| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        };
        while !run(64, &task) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the team stays busy"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    /// A task that panics reaches the caller as a panic, and the team
    /// serves the next job.
    #[test]
    fn a_panicking_task_reaches_the_caller() {
        let outcome = std::panic::catch_unwind(|| {
            let task = |i: usize| assert!(i != 5, "task five fails");
            while !run(16, &task) {}
        });
        let panic = outcome.expect_err("the task's panic reaches the caller");
        let message = (panic.downcast_ref::<&str>().copied())
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str));
        assert_eq!(message, Some("task five fails"), "the task's own message");
        let hits = AtomicUsize::new(0);
        let task = |_| {
            hits.fetch_add(1, Ordering::Relaxed);
        };
        while !run(16, &task) {}
        assert_eq!(hits.load(Ordering::Relaxed), 16);
    }
}
