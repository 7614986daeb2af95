//! The index's element type and distance: vectors are stored as IEEE
//! half-precision ([`Half`], 2 bytes a component: 1 KB for 512-d instead of
//! 2 KB) and compared with [`DualsightDot`], `max(0, 1 - a·b)`, accumulated
//! in f32.
//!
//! The dot product picks its kernel once per process: AVX2 + FMA + F16C
//! (`vcvtph2ps` widens 8 halves per instruction) where the CPU has them, a
//! portable one elsewhere. The crate is built for the x86-64 baseline, so
//! without this runtime dispatch the compiler only emits SSE2; the AVX2 kernel
//! reads half the bytes of the old f32 one and does 8 multiply-adds per
//! instruction instead of 4 multiplies and 4 adds (`tests::kernels_agree` and
//! BENCHMARKS.md for the figures).

use std::sync::LazyLock;

use hnsw_rs::prelude::Distance;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One vector component as stored in the index: `half::f16` under a name of
/// ours, because hnsw_rs needs its element type to implement serde (for its
/// dumps, which write the raw bytes anyway) and `half`'s serde feature is
/// off. hnsw_rs writes this type's path into dumps and checks it at reload:
/// renaming or moving it invalidates checkpoints (they are then rebuilt from
/// the store).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(transparent)]
pub struct Half(pub half::f16);

impl Half {
    pub fn from_f32(x: f32) -> Half {
        Half(half::f16::from_f32(x))
    }

    pub fn to_f32(self) -> f32 {
        self.0.to_f32()
    }
}

impl Serialize for Half {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0.to_bits())
    }
}

impl<'de> Deserialize<'de> for Half {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Half, D::Error> {
        u16::deserialize(d).map(|b| Half(half::f16::from_bits(b)))
    }
}

/// `v` rounded to half precision (round to nearest even, as `vcvtps2ph`).
pub fn to_half(v: &[f32]) -> Vec<Half> {
    let mut out = vec![half::f16::ZERO; v.len()];
    half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut out[..], v);
    out.into_iter().map(Half).collect()
}

/// `max(0, 1 - a·b)` on unit vectors: the cosine distance without hnsw_rs's
/// `DistDot` assertion (rounding gives `a·a = 1.0000001`). hnsw_rs writes the
/// type's name into dumps and checks it at reload: renaming it invalidates
/// checkpoints (they are then rebuilt from the store).
#[derive(Clone, Copy, Debug, Default)]
pub struct DualsightDot;

impl Distance<Half> for DualsightDot {
    fn eval(&self, a: &[Half], b: &[Half]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

type Kernel = fn(&[Half], &[Half]) -> f32;

/// The dot-product kernel this CPU runs, chosen on first use.
static KERNEL: LazyLock<(Kernel, &'static str)> = LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return (avx2::dot, "avx2+fma+f16c");
        }
    }
    (dot_portable, "portable")
});

/// `a·b` accumulated in f32 (lengths must match).
pub fn dot(a: &[Half], b: &[Half]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    (KERNEL.0)(a, b)
}

/// Which kernel [`dot`] runs here (for logs and benchmark reports).
pub fn kernel_name() -> &'static str {
    KERNEL.1
}

fn as_f16(v: &[Half]) -> &[half::f16] {
    // SAFETY: `Half` is `repr(transparent)` over `half::f16`.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<half::f16>(), v.len()) }
}

/// Widens blocks of 64 halves (`half`'s slice conversion, itself vectorised
/// where it can be) and multiplies them with eight independent accumulators,
/// so the compiler can vectorise without reassociating floats.
fn dot_portable(a: &[Half], b: &[Half]) -> f32 {
    const BLOCK: usize = 64;
    let n = a.len().min(b.len());
    let (a, b) = (as_f16(&a[..n]), as_f16(&b[..n]));
    let mut acc = [0f32; 8];
    let (mut xa, mut xb) = ([0f32; BLOCK], [0f32; BLOCK]);
    for (ca, cb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let len = ca.len();
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(ca, &mut xa[..len]);
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(cb, &mut xb[..len]);
        xa[len..].fill(0.0);
        xb[len..].fill(0.0);
        for (x, y) in xa.chunks_exact(8).zip(xb.chunks_exact(8)) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Half;

    pub fn dot(a: &[Half], b: &[Half]) -> f32 {
        // SAFETY: chosen only after `is_x86_feature_detected!` found all three.
        unsafe { dot_avx2(a, b) }
    }

    /// Four independent 8-lane accumulators (32 components an iteration) to
    /// cover the multiply-add latency; the tail below 8 is scalar.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_avx2(a: &[Half], b: &[Half]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr().cast::<__m128i>(), b.as_ptr().cast::<__m128i>());
        // Eight halves from block `j` of `p`, widened.
        macro_rules! load {
            ($p:expr, $j:expr) => {
                // SAFETY: callers keep `$j < n / 8`: the 16 bytes are in the slice.
                _mm256_cvtph_ps(unsafe { _mm_loadu_si128($p.add($j)) })
            };
        }
        let mut acc = [_mm256_setzero_ps(); 4];
        let blocks = n / 8;
        let mut j = 0;
        while j + 4 <= blocks {
            for (k, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(load!(pa, j + k), load!(pb, j + k), *acc);
            }
            j += 4;
        }
        while j < blocks {
            acc[0] = _mm256_fmadd_ps(load!(pa, j), load!(pb, j), acc[0]);
            j += 1;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        let mut sum = _mm_cvtss_f32(s);
        for i in blocks * 8..n {
            sum += a[i].to_f32() * b[i].to_f32();
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(a: &[Half], b: &[Half]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(x.to_f32()) * f64::from(y.to_f32()))
            .sum()
    }

    /// splitmix64 in [-1, 1).
    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn kernels_agree_with_f64() {
        println!("dot kernel: {}", kernel_name());
        let mut kernels: Vec<(&str, Kernel)> = vec![("portable", dot_portable)];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            kernels.push(("avx2", avx2::dot));
        }
        for n in [
            0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 511, 512, 768, 1023,
        ] {
            for seed in 0..4 {
                let a = to_half(&random(n, seed * 2 + 1));
                let b = to_half(&random(n, seed * 2 + 2));
                let want = reference(&a, &b);
                // f32 accumulation of n products of magnitude ≤ 1.
                let tol = 1e-6 * (n as f64 + 1.0);
                for (name, k) in &kernels {
                    let got = f64::from(k(&a, &b));
                    assert!((got - want).abs() <= tol, "{name}, n={n}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn half_round_trips_and_serialises_as_bits() {
        let v = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-3, 65504.0, 2.71875];
        let h = to_half(&v);
        for (x, y) in v.iter().zip(&h) {
            assert!((x - y.to_f32()).abs() <= x.abs() / 2048.0, "{x} {y:?}");
            assert_eq!(*y, Half::from_f32(*x));
        }
        let json = serde_json::to_string(&h[2]).unwrap();
        assert_eq!(json, "15360");
        assert_eq!(serde_json::from_str::<Half>(&json).unwrap(), h[2]);
    }

    #[test]
    fn clamped_distance_never_goes_negative() {
        let v = [0.1f32, 0.7, 0.3, 0.2, 0.9, 0.4, 0.5, 0.6, 0.05];
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let v = to_half(&v.map(|x| x / n * 1.001));
        assert_eq!(DualsightDot.eval(&v, &v), 0.0);
        let neg: Vec<Half> = v.iter().map(|x| Half(-x.0)).collect();
        assert!((DualsightDot.eval(&v, &neg) - 2.0).abs() < 1e-2);
    }
}
