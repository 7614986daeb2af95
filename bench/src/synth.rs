//! Deterministic synthetic data: clustered unit vectors standing in for photo
//! embeddings, and short text queries. No `rand` dependency: splitmix64, with
//! one generator per point so the data does not depend on how many threads
//! made it.

/// splitmix64.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    /// `out.len()` standard normal samples (Box–Muller, both outputs used).
    pub fn gaussians(&mut self, out: &mut [f32]) {
        let mut chunks = out.chunks_exact_mut(2);
        for pair in &mut chunks {
            let (u, v) = (self.uniform(), self.uniform());
            let r = (-2.0 * u.ln()).sqrt();
            let (s, c) = (2.0 * std::f32::consts::PI * v).sin_cos();
            pair[0] = r * c;
            pair[1] = r * s;
        }
        for x in chunks.into_remainder() {
            let (u, v) = (self.uniform(), self.uniform());
            *x = (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos();
        }
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// A generator seeded by (stream, index): the same point whatever the split.
fn point_rng(seed: u64, stream: u64, index: u64) -> Rng {
    let mut r = Rng(seed ^ stream.rotate_left(32) ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next_u64();
    r
}

pub fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// A Gaussian mixture on the sphere, like image embeddings: `clusters` random
/// centres, each with its own random `latent`-dimensional subspace; a point
/// is `normalise(centre + spread·(basis · z) + noise·g/√dim)` with z, g
/// standard normal (z scaled by 1/√latent).
///
/// Two kinds of queries, both held-out draws (never stored):
/// - image-like ([`QUERIES`]): draws of the mixture itself;
/// - text-like ([`TEXT_QUERIES`]): draws shifted by [`GAP`] along one fixed
///   random direction, then normalised, so cos(query, its own draw) ≈ 0.3,
///   like the modality gap between CLIP-style text and image embeddings.
///   These are the harder case for a graph index (every query lies off the
///   data), and the one a text search daemon serves.
#[derive(Clone, Debug)]
pub struct Mixture {
    pub dim: usize,
    pub clusters: usize,
    pub latent: usize,
    pub spread: f32,
    pub noise: f32,
    pub seed: u64,
    centres: Vec<f32>,
    bases: Vec<f32>,
    /// Unit direction of the text-like queries' shift.
    gap: Vec<f32>,
}

/// Stream ids: stored vectors and queries never share a draw.
pub const DATA: u64 = 1;
/// Image-like queries.
pub const QUERIES: u64 = 2;
/// Text-like queries (shifted by the modality gap).
pub const TEXT_QUERIES: u64 = 3;
/// Length of the modality-gap shift (cos to the unshifted draw 1/√(1+GAP²) ≈ 0.32).
pub const GAP: f32 = 3.0;

impl Mixture {
    /// The benchmark's mixture for `n` stored vectors: one cluster per ~1000
    /// vectors (10..=1000 clusters), 32-d latent, spread 0.8, noise 0.8
    /// (cos(point, centre) ≈ 0.66).
    pub fn for_size(n: usize, dim: usize, seed: u64) -> Mixture {
        Mixture::new(dim, (n / 1000).clamp(10, 1000), 32, 0.8, 0.8, seed)
    }

    pub fn new(
        dim: usize,
        clusters: usize,
        latent: usize,
        spread: f32,
        noise: f32,
        seed: u64,
    ) -> Mixture {
        let mut r = Rng(seed ^ 0x5EED_CAFE);
        let mut centres = vec![0f32; clusters * dim];
        for c in centres.chunks_exact_mut(dim) {
            r.gaussians(c);
            normalise(c);
        }
        let mut bases = vec![0f32; clusters * latent * dim];
        for b in bases.chunks_exact_mut(dim) {
            r.gaussians(b);
            normalise(b);
        }
        let mut gap = vec![0f32; dim];
        r.gaussians(&mut gap);
        normalise(&mut gap);
        Mixture {
            dim,
            clusters,
            latent,
            spread,
            noise,
            seed,
            centres,
            bases,
            gap,
        }
    }

    /// Writes point `index` of `stream` into `out` (len `dim`), unit norm.
    pub fn point(&self, stream: u64, index: u64, out: &mut [f32]) {
        let d = self.dim;
        let mut r = point_rng(self.seed, stream, index);
        let c = r.below(self.clusters);
        let mut z = vec![0f32; self.latent];
        r.gaussians(&mut z);
        r.gaussians(out);
        let k = self.noise / (d as f32).sqrt();
        for (o, x) in out.iter_mut().zip(&self.centres[c * d..(c + 1) * d]) {
            *o = x + k * *o;
        }
        let s = self.spread / (self.latent as f32).sqrt();
        let basis = &self.bases[c * self.latent * d..(c + 1) * self.latent * d];
        for (zi, b) in z.iter().zip(basis.chunks_exact(d)) {
            let w = s * zi;
            for (o, y) in out.iter_mut().zip(b) {
                *o += w * y;
            }
        }
        normalise(out);
        if stream == TEXT_QUERIES {
            for (o, x) in out.iter_mut().zip(&self.gap) {
                *o += GAP * x;
            }
            normalise(out);
        }
    }

    /// Points `start..start+n` of `stream`, flat row-major, made on `threads` threads.
    pub fn points(&self, stream: u64, start: u64, n: usize, threads: usize) -> Vec<f32> {
        let d = self.dim;
        let mut flat = vec![0f32; n * d];
        let per = n.div_ceil(threads.max(1)).max(1);
        std::thread::scope(|s| {
            for (t, chunk) in flat.chunks_mut(per * d).enumerate() {
                s.spawn(move || {
                    for (i, row) in chunk.chunks_exact_mut(d).enumerate() {
                        self.point(stream, start + (t * per + i) as u64, row);
                    }
                });
            }
        });
        flat
    }
}

/// Words that are single tokens in the bundled test tokenizer
/// (tests/fixtures/models/vit-bert), so every query is exactly
/// `QUERY_WORDS + 2` tokens with [CLS] and [SEP].
const WORDS: &[&str] = &[
    "a", "photo", "of", "cat", "dog", "sitting", "on", "red", "sofa", "blue", "sky", "over",
    "mountain", "lake", "man", "holding", "cup", "near", "beach", "at", "night", "child",
    "playing", "in", "park", "green", "field", "small", "boat", "river", "old", "house", "city",
    "road", "black", "horse", "running", "snowy", "bird", "branch", "morning", "flower",
];

/// Words per query: with [CLS] and [SEP], 10 tokens.
pub const QUERY_WORDS: usize = 8;

/// `n` deterministic 8-word queries ("a dog sitting near the lake ...").
pub fn query_texts(n: usize, seed: u64) -> Vec<String> {
    let mut r = Rng(seed ^ 0x7E57);
    (0..n)
        .map(|_| {
            (0..QUERY_WORDS)
                .map(|_| WORDS[r.below(WORDS.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_unit_deterministic_and_thread_independent() {
        let m = Mixture::new(64, 5, 4, 0.8, 0.25, 7);
        let a = m.points(DATA, 0, 37, 1);
        let b = m.points(DATA, 0, 37, 3);
        assert_eq!(a, b);
        for row in a.chunks_exact(64) {
            let n: f32 = row.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-4);
        }
        let q = m.points(QUERIES, 0, 1, 1);
        assert_ne!(&q[..], &a[..64], "queries are their own draws");
        // Text-like queries lean on the gap direction; image-like ones do not.
        let lean = |stream| {
            let p = m.points(stream, 0, 20, 1);
            p.chunks_exact(64)
                .map(|r| r.iter().zip(&m.gap).map(|(a, b)| a * b).sum::<f32>())
                .sum::<f32>()
                / 20.0
        };
        assert!(lean(TEXT_QUERIES) > 0.9, "{}", lean(TEXT_QUERIES));
        assert!(lean(QUERIES).abs() < 0.3, "{}", lean(QUERIES));
        let tail = m.points(DATA, 30, 7, 2);
        assert_eq!(&tail[..], &a[30 * 64..], "offsets address the same points");
    }

    #[test]
    fn points_cluster() {
        // Same-cluster points are far closer than random unit vectors (cos ~0).
        let m = Mixture::new(128, 1, 16, 0.8, 0.25, 1);
        let p = m.points(DATA, 0, 2, 1);
        let cos: f32 = p[..128].iter().zip(&p[128..]).map(|(a, b)| a * b).sum();
        assert!(cos > 0.3, "{cos}");
    }

    #[test]
    fn queries_are_fixed_length() {
        let q = query_texts(5, 1);
        assert_eq!(q.len(), 5);
        assert!(q.iter().all(|t| t.split(' ').count() == QUERY_WORDS));
        assert_eq!(q, query_texts(5, 1));
    }
}
