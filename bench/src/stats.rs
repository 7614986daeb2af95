//! Pure helpers: percentiles, the repeat-until timing loop, recall.
//! Everything here is deterministic and unit-tested; no timing assertions.

use std::time::{Duration, Instant};

/// Percentile `p` (0..=100) with linear interpolation between closest ranks,
/// numpy's default (`np.percentile(x, p)`), so both sides of a comparison
/// compute it the same way. `None` for an empty sample.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let p = p.clamp(0.0, 100.0);
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(v[lo] + (v[hi] - v[lo]) * frac)
}

pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

/// When to stop repeating a measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Repeat {
    /// Keep going until at least this much time was spent measuring...
    pub min_time: Duration,
    /// ...and at least this many measured iterations ran...
    pub min_iters: usize,
    /// ...but never more than this many.
    pub max_iters: usize,
}

impl Repeat {
    /// Whether another iteration is needed after `iters` iterations took `spent`.
    pub fn more(&self, iters: usize, spent: Duration) -> bool {
        iters < self.max_iters.max(1) && (iters < self.min_iters.max(1) || spent < self.min_time)
    }
}

/// Runs `f` once as warm-up (not recorded), then repeats it per `repeat`;
/// returns each measured iteration's seconds. An error ends the measurement.
pub fn measure<E>(repeat: Repeat, mut f: impl FnMut() -> Result<(), E>) -> Result<Vec<f64>, E> {
    f()?;
    let mut out = Vec::new();
    let started = Instant::now();
    while repeat.more(out.len(), started.elapsed()) {
        let t = Instant::now();
        f()?;
        out.push(t.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// Fraction of the exact top-k ids that the approximate answer found
/// (|approx ∩ exact| / |exact|); 1.0 when the exact answer is empty.
pub fn recall(approx: &[u64], exact: &[u64]) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    let found = exact.iter().filter(|id| approx.contains(id)).count();
    found as f64 / exact.len() as f64
}

/// Mean of the per-query recalls.
pub fn mean_recall(pairs: &[(Vec<u64>, Vec<u64>)]) -> f64 {
    if pairs.is_empty() {
        return 1.0;
    }
    pairs.iter().map(|(a, e)| recall(a, e)).sum::<f64>() / pairs.len() as f64
}

/// Latency summary of a sample in seconds, reported in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub n: usize,
}

impl Latency {
    pub fn of(seconds: &[f64]) -> Option<Latency> {
        Some(Latency {
            p50_ms: percentile(seconds, 50.0)? * 1e3,
            p99_ms: percentile(seconds, 99.0)? * 1e3,
            mean_ms: seconds.iter().sum::<f64>() / seconds.len() as f64 * 1e3,
            n: seconds.len(),
        })
    }
}

/// Parses "1,8,32" (also "1000000", "10k", "1M"; spaces allowed).
pub fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (num, mult) = match t.chars().last() {
                Some('k' | 'K') => (&t[..t.len() - 1], 1_000),
                Some('m' | 'M') => (&t[..t.len() - 1], 1_000_000),
                _ => (t, 1),
            };
            num.replace('_', "")
                .parse::<usize>()
                .map(|n| n * mult)
                .map_err(|e| format!("`{t}`: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| {
            if v.is_empty() {
                Err(format!("`{s}`: empty list"))
            } else {
                Ok(v)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy_linear() {
        // np.percentile([1,2,3,4,5,6,7,8,9,10], [0, 50, 90, 99, 100])
        let x: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&x, 0.0), Some(1.0));
        assert_eq!(percentile(&x, 50.0), Some(5.5));
        assert!((percentile(&x, 90.0).unwrap() - 9.1).abs() < 1e-12);
        assert!((percentile(&x, 99.0).unwrap() - 9.91).abs() < 1e-12);
        assert_eq!(percentile(&x, 100.0), Some(10.0));
        // Order does not matter; one sample is every percentile.
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn latency_summary() {
        let l = Latency::of(&[0.001, 0.002, 0.003]).unwrap();
        assert!((l.p50_ms - 2.0).abs() < 1e-9);
        assert!((l.mean_ms - 2.0).abs() < 1e-9);
        assert_eq!(l.n, 3);
        assert!(Latency::of(&[]).is_none());
    }

    #[test]
    fn recall_counts_exact_hits_found() {
        assert_eq!(recall(&[1, 2, 3], &[1, 2, 3]), 1.0);
        assert_eq!(recall(&[3, 2, 1], &[1, 2, 3]), 1.0);
        assert!((recall(&[1, 9, 8], &[1, 2, 3]) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(recall(&[], &[1, 2]), 0.0);
        assert_eq!(recall(&[], &[]), 1.0);
        let pairs = vec![(vec![1, 2], vec![1, 2]), (vec![5, 6], vec![1, 2])];
        assert_eq!(mean_recall(&pairs), 0.5);
    }

    #[test]
    fn repeat_stops_on_time_and_iterations() {
        let r = Repeat {
            min_time: Duration::from_secs(1),
            min_iters: 3,
            max_iters: 10,
        };
        assert!(r.more(0, Duration::ZERO));
        assert!(r.more(2, Duration::from_secs(5)), "min_iters first");
        assert!(r.more(3, Duration::from_millis(10)), "then min_time");
        assert!(!r.more(3, Duration::from_secs(1)));
        assert!(!r.more(10, Duration::ZERO), "max_iters caps");
        let mut calls = 0;
        let quick = Repeat {
            min_time: Duration::ZERO,
            min_iters: 2,
            max_iters: 5,
        };
        let s = measure::<()>(quick, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((s.len(), calls), (2, 3), "one warm-up not recorded");
    }

    #[test]
    fn lists_parse() {
        assert_eq!(parse_list("1,8,32").unwrap(), vec![1, 8, 32]);
        assert_eq!(
            parse_list("10k, 100_000,1M").unwrap(),
            vec![10_000, 100_000, 1_000_000]
        );
        assert!(parse_list("").is_err());
        assert!(parse_list("1,x").is_err());
    }
}
