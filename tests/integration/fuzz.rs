//! Hostile image bytes: the real fixture photos (and the hostile files),
//! mutated by a seeded generator (bits flipped, cut short, bytes inserted,
//! header bytes overwritten, chunks repeated), through decode and both
//! preprocessing paths with the daemon's limits. Every input must come back
//! as an image or an error: no panic, no allocation past the limits.
//!
//! The tests run a few iterations per file; a long run is
//! `DUALSIGHT_FUZZ_ITERS=20000 DUALSIGHT_FUZZ_SEED=N cargo test --release --test integration fuzz`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use dualsight::preprocess::{DecodeLimits, ImageProcessor, Preprocessing, Source};
use dualsight::rng::SplitMix64;

use crate::util::{fixtures, model_dir};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One mutation of `bytes`, chosen and placed by `g`.
fn mutate(bytes: &[u8], g: &mut SplitMix64) -> Vec<u8> {
    let mut b = bytes.to_vec();
    if b.is_empty() {
        return b;
    }
    let at = |g: &mut SplitMix64, len: usize| g.below(len.max(1) as u64) as usize;
    match g.below(5) {
        0 => {
            for _ in 0..1 + g.below(16) {
                let i = at(g, b.len());
                b[i] ^= 1 << g.below(8);
            }
        }
        1 => b.truncate(at(g, b.len())),
        2 => {
            let i = at(g, b.len());
            let junk: Vec<u8> = (0..1 + g.below(64)).map(|_| g.next_u64() as u8).collect();
            b.splice(i..i, junk);
        }
        3 => {
            // The header: dimensions, chunk lengths, markers.
            for _ in 0..1 + g.below(4) {
                let i = at(g, b.len().min(64));
                b[i] = g.next_u64() as u8;
            }
        }
        _ => {
            let i = at(g, b.len());
            let n = (1 + g.below(4096) as usize).min(b.len() - i);
            let chunk = b[i..i + n].to_vec();
            let j = at(g, b.len());
            b.splice(j..j, chunk);
        }
    }
    b
}

#[test]
fn mutated_photos_decode_or_fail_cleanly() {
    let processor = ImageProcessor::from_model_dir(&model_dir("vit-bert")).unwrap();
    // The daemon's limits, smaller: a mutated header declaring a huge image
    // must be refused before its buffer is allocated.
    let limits = DecodeLimits {
        max_bytes: 8 << 20,
        max_pixels: 4_000_000,
    };
    let iters = env_u64("DUALSIGHT_FUZZ_ITERS", 12);
    let seed = env_u64("DUALSIGHT_FUZZ_SEED", 1);
    let mut files = Vec::new();
    for dir in [fixtures().join("images"), fixtures().join("images/bad")] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() && p.extension().is_some_and(|x| x != "md") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() > 10);
    let (mut ok, mut refused) = (0usize, 0usize);
    for (f, path) in files.iter().enumerate() {
        let original = std::fs::read(path).unwrap();
        let mut g = SplitMix64::keyed(seed, 3, f as u64);
        for i in 0..iters {
            let bytes = mutate(&original, &mut g);
            for mode in [Preprocessing::Exact, Preprocessing::Fast] {
                let name = format!("{} #{i} ({mode:?})", path.display());
                let source = Source::Bytes {
                    bytes: &bytes,
                    name: &name,
                };
                match catch_unwind(AssertUnwindSafe(|| processor.run(source, &limits, mode))) {
                    Ok(Ok(px)) => {
                        assert_eq!(px.len(), 3 * 32 * 32, "{name}");
                        assert!(px.iter().all(|v| v.is_finite()), "{name}: non-finite pixel");
                        ok += 1;
                    }
                    Ok(Err(e)) => {
                        assert!(
                            e.to_string().contains(&name),
                            "{name}: error {e} does not name it"
                        );
                        refused += 1;
                    }
                    Err(_) => panic!("{name} (seed {seed}): panicked"),
                }
            }
        }
    }
    // Both outcomes must occur, or the mutations are not reaching the decoders.
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
}
