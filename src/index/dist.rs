//! The index's element type and distance: each unit vector is stored as one
//! signed byte per component ([`Q8`], 512 bytes for 512-d instead of 1 KB in
//! half precision or 2 KB in f32) and compared with [`DualsightDot`],
//! `max(0, 1 - cos)`, where `cos` is the cosine of the two byte vectors.
//!
//! Why 8 bits: the index only ranks candidates; the daemon rescores every
//! hit with the exact cosine of the store's f32 vectors, so the index needs
//! order, not digits. Each vector's largest component maps to ±127, and a
//! 512-d unit vector's cosines are off by ~4e-4 (one standard deviation),
//! well under the gaps between neighbours that matter for recall
//! (`tests::quantised_dot_is_close`; BENCHMARKS.md for recall).
//!
//! No scale is stored: the vectors are unit vectors, so the byte vector's
//! own norm gives it back, and the kernels sum `a·a` and `b·b` in the pass
//! that sums `a·b`. That keeps a stored vector at exactly `dim` bytes, an
//! allocator size class of its own at the usual dimensions (512, 768,
//! 1024): a 4-byte scale made a 512-d vector 516 bytes, which mimalloc
//! serves from its 640-byte class, 124 bytes lost per vector.
//!
//! The dot product picks its kernel once per process, by [`crate::simd`]'s
//! level: AVX-512 VNNI (64 products an instruction), AVX2 (32), or a portable
//! one; all integer, all exact, so they agree bit for bit.

use std::sync::LazyLock;

use hnsw_rs::prelude::Distance;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::simd::{self, Level};

/// One byte of a stored vector, under a name of ours: hnsw_rs needs serde on
/// its element type and writes the type's path into dumps, checking it at
/// reload, so renaming or moving it invalidates checkpoints (they are then
/// rebuilt from the store).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Q8(pub i8);

impl Serialize for Q8 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i8(self.0)
    }
}

impl<'de> Deserialize<'de> for Q8 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Q8, D::Error> {
        i8::deserialize(d).map(Q8)
    }
}

/// A stored vector's bytes, as written to disk.
pub fn as_bytes(v: &[Q8]) -> &[u8] {
    // SAFETY: Q8 is `repr(transparent)` over i8, which has u8's size and
    // alignment; the borrow is carried over.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len()) }
}

/// The inverse of [`as_bytes`].
pub fn from_bytes(b: &[u8]) -> &[Q8] {
    // SAFETY: as in `as_bytes`, the other way round.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<Q8>(), b.len()) }
}

/// `v` (finite, not all zero) as a stored vector: component `x` becomes
/// `round(x / scale)` with `scale = max|x| / 127`, so the largest maps to
/// ±127 and -128 is never used (the SIMD kernels rely on that: its absolute
/// value is no signed byte).
pub fn quantise(v: &[f32]) -> Vec<Q8> {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    v.iter()
        .map(|&x| Q8((x / scale).round().clamp(-127.0, 127.0) as i8))
        .collect()
}

/// The unit vector a stored vector stands for (zeros for all-zero bytes,
/// which [`quantise`] writes only for an all-zero input).
pub fn dequantise(v: &[Q8]) -> Vec<f32> {
    let [_, norm2, _] = (KERNEL.0)(v, v);
    let inv = if norm2 > 0 {
        1.0 / (norm2 as f64).sqrt()
    } else {
        0.0
    };
    v.iter().map(|q| (f64::from(q.0) * inv) as f32).collect()
}

/// `max(0, 1 - cos)`: the cosine distance without hnsw_rs's `DistDot`
/// assertion (rounding can give a cosine just above 1). hnsw_rs writes the
/// type's name into dumps and checks it at reload: renaming it invalidates
/// checkpoints (they are then rebuilt from the store).
#[derive(Clone, Copy, Debug, Default)]
pub struct DualsightDot;

impl Distance<Q8> for DualsightDot {
    fn eval(&self, a: &[Q8], b: &[Q8]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// A kernel's sums over two byte vectors: `[a·b, a·a, b·b]`.
type Kernel = fn(&[Q8], &[Q8]) -> [i32; 3];

/// The integer dot-product kernel this CPU runs, chosen on first use.
static KERNEL: LazyLock<(Kernel, &'static str)> = LazyLock::new(|| kernel_at(simd::level()));

/// The best kernel at or below `level` that this CPU runs.
fn kernel_at(level: Level) -> (Kernel, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if level >= Level::Avx512 && avx512::supported() {
            return (avx512::dot, "avx512-vnni (8-bit)");
        }
        if level >= Level::Avx2 {
            return (avx2::dot, "avx2 (8-bit)");
        }
    }
    let _ = level;
    (dot_portable, "portable (8-bit)")
}

/// The cosine of two stored vectors (of the same length; 0 when either is
/// all zeros). In f64, so that a vector's cosine with itself is exactly 1.
pub fn dot(a: &[Q8], b: &[Q8]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let [ab, aa, bb] = (KERNEL.0)(a, b);
    // A negative square sum comes only from a -128 byte, which quantisation
    // never writes: scored as orthogonal rather than NaN, which the clamp
    // in `DualsightDot` would turn into a perfect match.
    if aa <= 0 || bb <= 0 {
        return 0.0;
    }
    (f64::from(ab) / (f64::from(aa) * f64::from(bb)).sqrt()) as f32
}

/// Which kernel [`dot`] runs here (for logs and benchmark reports).
pub fn kernel_name() -> &'static str {
    KERNEL.1
}

/// Exact in i32: 127² · n stays below 2³¹ for n up to 133k components.
fn dot_portable(a: &[Q8], b: &[Q8]) -> [i32; 3] {
    a.iter().zip(b).fold([0; 3], |[ab, aa, bb], (x, y)| {
        let (x, y) = (i32::from(x.0), i32::from(y.0));
        [ab + x * y, aa + x * x, bb + y * y]
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Q8;

    pub fn dot(a: &[Q8], b: &[Q8]) -> [i32; 3] {
        // SAFETY: chosen only after `is_x86_feature_detected!("avx2")`.
        unsafe { dot_avx2(a, b) }
    }

    /// 32 components a step: `maddubs` multiplies unsigned by signed bytes,
    /// so `|a|` meets `b` with `a`'s sign moved onto it (`sign_epi8`), and
    /// `|a|` and `|b|` meet themselves; adjacent pairs are summed into i16 (at
    /// most 2·127² = 32258: no saturation, because quantisation never writes
    /// -128), and `madd` with ones widens to i32. Then a scalar tail.
    #[target_feature(enable = "avx2")]
    fn dot_avx2(a: &[Q8], b: &[Q8]) -> [i32; 3] {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr().cast::<__m256i>(), b.as_ptr().cast::<__m256i>());
        let ones = _mm256_set1_epi16(1);
        let (mut ab, mut aa, mut bb) = (
            _mm256_setzero_si256(),
            _mm256_setzero_si256(),
            _mm256_setzero_si256(),
        );
        let blocks = n / 32;
        for j in 0..blocks {
            // SAFETY: j < n / 32, so the 32 bytes are inside both slices.
            let (x, y) = unsafe { (_mm256_loadu_si256(pa.add(j)), _mm256_loadu_si256(pb.add(j))) };
            let (ax, ay) = (_mm256_abs_epi8(x), _mm256_abs_epi8(y));
            let xy = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, x));
            ab = _mm256_add_epi32(ab, _mm256_madd_epi16(xy, ones));
            aa = _mm256_add_epi32(aa, _mm256_madd_epi16(_mm256_maddubs_epi16(ax, ax), ones));
            bb = _mm256_add_epi32(bb, _mm256_madd_epi16(_mm256_maddubs_epi16(ay, ay), ones));
        }
        let mut sums = [sum(ab), sum(aa), sum(bb)];
        for i in blocks * 32..n {
            let (x, y) = (i32::from(a[i].0), i32::from(b[i].0));
            sums[0] += x * y;
            sums[1] += x * x;
            sums[2] += y * y;
        }
        sums
    }

    /// The eight i32 lanes' sum.
    #[target_feature(enable = "avx2")]
    fn sum(s: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Q8;

    /// VNNI's `vpdpbusd` on top of the AVX-512 level (Ice Lake, Sapphire
    /// Rapids, Zen 4 on; not Skylake-SP, which keeps the AVX2 kernel).
    pub fn supported() -> bool {
        crate::simd::Level::Avx512.supported() && is_x86_feature_detected!("avx512vnni")
    }

    pub fn dot(a: &[Q8], b: &[Q8]) -> [i32; 3] {
        // SAFETY: chosen only when `supported()`.
        unsafe { dot_avx512(a, b) }
    }

    /// 64 components a step: `dpbusd` multiplies unsigned by signed bytes and
    /// sums each 4 into an i32 lane (no saturation), so `|a|` meets `b`
    /// negated where `a` is negative (AVX-512 has no `sign_epi8`; `b` is never
    /// -128, so negating it is exact), and `|a|` and `|b|` meet themselves.
    /// The ragged tail is a masked load of zeros, not a scalar loop.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn dot_avx512(a: &[Q8], b: &[Q8]) -> [i32; 3] {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr().cast::<i8>(), b.as_ptr().cast::<i8>());
        let zero = _mm512_setzero_si512();
        let (mut ab, mut aa, mut bb) = (zero, zero, zero);
        let mut at = 0;
        while at < n {
            let take = (n - at).min(64);
            let mask: __mmask64 = if take == 64 { !0 } else { (1u64 << take) - 1 };
            // SAFETY: the mask enables only bytes at..at + take, inside both
            // slices; masked-off bytes are not read.
            let (x, y) = unsafe {
                (
                    _mm512_maskz_loadu_epi8(mask, pa.add(at)),
                    _mm512_maskz_loadu_epi8(mask, pb.add(at)),
                )
            };
            let (ax, ay) = (_mm512_abs_epi8(x), _mm512_abs_epi8(y));
            let signed = _mm512_mask_sub_epi8(y, _mm512_movepi8_mask(x), zero, y);
            ab = _mm512_dpbusd_epi32(ab, ax, signed);
            aa = _mm512_dpbusd_epi32(aa, ax, ax);
            bb = _mm512_dpbusd_epi32(bb, ay, ay);
            at += take;
        }
        [
            _mm512_reduce_add_epi32(ab),
            _mm512_reduce_add_epi32(aa),
            _mm512_reduce_add_epi32(bb),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn kernels_agree_exactly() {
        let kernels: Vec<(Kernel, &str)> = Level::available().into_iter().map(kernel_at).collect();
        let names: Vec<&str> = kernels.iter().map(|k| k.1).collect();
        println!("dot kernel: {}; tested: {names:?}", kernel_name());
        for n in [
            0, 1, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 511, 512, 768, 1023,
        ] {
            for seed in 0..4 {
                let (a, b) = (
                    quantise(&random(n, seed * 2 + 1)),
                    quantise(&random(n, seed * 2 + 2)),
                );
                let want = dot_portable(&a, &b);
                for (kernel, name) in &kernels {
                    assert_eq!(kernel(&a, &b), want, "{name} n={n}");
                }
            }
            // The extremes: every product at ±127², against itself and
            // against its negation.
            let hi: Vec<Q8> = (0..n)
                .map(|i| Q8(if i % 3 == 0 { -127 } else { 127 }))
                .collect();
            let lo: Vec<Q8> = hi.iter().map(|q| Q8(-q.0)).collect();
            let full = 127 * 127 * n as i32;
            for (kernel, name) in &kernels {
                assert_eq!(kernel(&hi, &hi), [full; 3], "{name} n={n}");
                assert_eq!(kernel(&hi, &lo), [-full, full, full], "{name} n={n}");
            }
        }
    }

    #[test]
    fn quantised_dot_is_close() {
        let mut worst = 0f32;
        for seed in 0..200 {
            let a = unit(random(512, seed * 2 + 1));
            let b = unit(random(512, seed * 2 + 2));
            let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            worst = worst.max((dot(&quantise(&a), &quantise(&b)) - exact).abs());
            assert_eq!(dot(&quantise(&a), &quantise(&a)), 1.0);
        }
        assert!(worst < 2e-3, "worst error {worst}");
    }

    #[test]
    fn quantise_stores_one_byte_a_component() {
        let v = [0.5f32, -0.25, 0.0, 1e-3, -0.5, 0.3];
        let q = quantise(&v);
        assert_eq!(q.len(), v.len());
        assert_eq!(q[0].0, 127);
        assert_eq!(q[4].0, -127);
        // The stored vector stands for the unit vector, whatever `v`'s norm:
        // within a step of the scale in each component.
        let u = unit(v.to_vec());
        let step = u[0] / 127.0;
        for (x, y) in u.iter().zip(dequantise(&q)) {
            assert!((x - y).abs() <= step, "{x} {y}");
        }
        let json = serde_json::to_string(&q[1]).unwrap();
        assert_eq!(json, "-64");
        assert_eq!(serde_json::from_str::<Q8>(&json).unwrap(), q[1]);
        assert_eq!(dequantise(&quantise(&[0.0; 4])), [0.0; 4]);
    }

    #[test]
    fn clamped_distance_never_goes_negative() {
        let v = unit(vec![0.1f32, 0.7, 0.3, 0.2, 0.9, 0.4, 0.5, 0.6, 0.05]);
        let q = quantise(&v);
        assert_eq!(DualsightDot.eval(&q, &q), 0.0);
        let neg = quantise(&v.iter().map(|x| -x).collect::<Vec<_>>());
        assert_eq!(DualsightDot.eval(&q, &neg), 2.0);
        let zero = quantise(&[0.0; 9]);
        assert_eq!(DualsightDot.eval(&q, &zero), 1.0);
    }
}
