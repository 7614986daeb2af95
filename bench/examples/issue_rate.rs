//! How many of the vector instructions our dense kernels are built from
//! one core issues per second, alone and mixed: what bounds the 8-bit
//! product (`--text-weights int8`) on an AVX2 CPU, where the VM exposes no
//! cycle counter. A block of one instruction is ten of it with no
//! dependency between them (FMAs into ten accumulators, which hides their
//! latency), so its rate is the issue rate; the ratios between lines are
//! what matter, as the clock of a shared machine varies.
//!
//! cargo run --release -p dualsight-bench --example issue_rate -- [millions of blocks]
//!
//! On the project's Zen 3 (BENCHMARKS.md, session 35) `vpmaddwd` issued
//! at half FMA's rate (one pipe against two), and the 8-bit kernel's body
//! (broadcast, `vpmaddwd`, `vpaddd` per input row) ran no faster with a
//! third of its rows moved to FMA.

use std::time::Instant;

use anyhow::{Context, Result};

/// Rounds through the lines; each line's best is printed.
const ROUNDS: usize = 5;

/// A timed loop: `n` blocks, reading at most the 256 bytes given; returns
/// the instructions in a block.
#[cfg(target_arch = "x86_64")]
type Block = unsafe fn(u64, &[u8; 256]) -> usize;

fn main() -> Result<()> {
    let millions: u64 = match std::env::args().nth(1) {
        Some(a) => a.parse().context("millions of blocks: a count")?,
        None => 20,
    };
    #[cfg(target_arch = "x86_64")]
    {
        anyhow::ensure!(
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            "this CPU has no AVX2 + FMA"
        );
        // A count of 0 would run the `dec`/`jnz` loop 2^64 times.
        anyhow::ensure!(millions > 0, "millions of blocks: at least 1");
        let n = millions
            .checked_mul(1_000_000)
            .context("millions of blocks: too many")?;
        // SAFETY (all): AVX2 and FMA are present (checked above); the
        // blocks read only `data`, which is 256 bytes long.
        let data = [1u8; 256];
        let lines: [(&str, Block); 6] = [
            ("vfmadd231ps ymm", x86::fma),
            ("vmulps ymm", x86::mul),
            ("vpmaddwd ymm", x86::madd),
            ("vpmaddubsw ymm", x86::maddubs),
            ("7 vpmaddwd + 10 vfmadd231ps", x86::mixed),
            ("8-bit kernel body, 8 rows", x86::kernel_body),
        ];
        // Rounds through all the lines, the best of each kept: a shared
        // machine's slow moments fall on different lines each round.
        let mut best = [0f64; 6];
        for _ in 0..ROUNDS {
            for ((_, f), best) in lines.iter().zip(&mut best) {
                let t = Instant::now();
                let per_block = unsafe { f(n, &data) };
                let rate = (n * per_block as u64) as f64 / t.elapsed().as_secs_f64() / 1e9;
                *best = best.max(rate);
            }
        }
        for ((name, _), rate) in lines.iter().zip(best) {
            println!("{name:>30}: {rate:.2} G instructions/s");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = millions;
        anyhow::bail!("x86-64 only");
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::{__m256, _mm256_set1_ps};

    /// Sources of normal floats (garbage in the registers could be
    /// subnormal, which some cores multiply in microcode).
    #[target_feature(enable = "avx2,fma")]
    fn ones() -> __m256 {
        _mm256_set1_ps(1.0)
    }

    /// `n` blocks of the given instructions in a loop; ymm0 and ymm1 hold
    /// ones, ymm2..ymm15 start at zero (sums that stay normal floats) and
    /// rsi points at the caller's 256 bytes. Evaluates to the count of
    /// instructions in a block.
    macro_rules! blocks {
        ($n:expr, $data:expr, $($line:expr),+ $(,)?) => {{
            asm!(
                "vxorps ymm2, ymm2, ymm2",
                "vmovaps ymm3, ymm2", "vmovaps ymm4, ymm2", "vmovaps ymm5, ymm2",
                "vmovaps ymm6, ymm2", "vmovaps ymm7, ymm2", "vmovaps ymm8, ymm2",
                "vmovaps ymm9, ymm2", "vmovaps ymm10, ymm2", "vmovaps ymm11, ymm2",
                "vmovaps ymm12, ymm2", "vmovaps ymm13, ymm2", "vmovaps ymm14, ymm2",
                "vmovaps ymm15, ymm2",
                "2:",
                $($line,)+
                "dec rcx",
                "jnz 2b",
                inout("rcx") $n => _,
                in("rsi") $data.as_ptr(),
                in("ymm0") ones(),
                in("ymm1") ones(),
                clobber_abi("sysv64"),
                options(nostack, readonly),
            );
            [$($line),+].len()
        }};
    }

    /// Ten of `$op` per block from ymm0/ymm1 into ymm2..ymm11.
    macro_rules! ten {
        ($name:ident, $op:literal) => {
            #[target_feature(enable = "avx2,fma")]
            pub unsafe fn $name(n: u64, data: &[u8; 256]) -> usize {
                // SAFETY: register-only instructions the CPU has.
                unsafe {
                    blocks!(
                        n,
                        data,
                        concat!($op, " ymm2, ymm0, ymm1"),
                        concat!($op, " ymm3, ymm0, ymm1"),
                        concat!($op, " ymm4, ymm0, ymm1"),
                        concat!($op, " ymm5, ymm0, ymm1"),
                        concat!($op, " ymm6, ymm0, ymm1"),
                        concat!($op, " ymm7, ymm0, ymm1"),
                        concat!($op, " ymm8, ymm0, ymm1"),
                        concat!($op, " ymm9, ymm0, ymm1"),
                        concat!($op, " ymm10, ymm0, ymm1"),
                        concat!($op, " ymm11, ymm0, ymm1"),
                    )
                }
            }
        };
    }

    ten!(fma, "vfmadd231ps");
    ten!(mul, "vmulps");
    ten!(madd, "vpmaddwd");
    ten!(maddubs, "vpmaddubsw");

    /// Seven `vpmaddwd` (which do not read their destination, so reusing
    /// one is no dependency) and ten FMAs into ten sums a block: whether
    /// the two kinds issue side by side.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn mixed(n: u64, data: &[u8; 256]) -> usize {
        // SAFETY: register-only instructions the CPU has.
        unsafe {
            blocks!(
                n,
                data,
                "vpmaddwd ymm2, ymm0, ymm1",
                "vpmaddwd ymm3, ymm0, ymm1",
                "vpmaddwd ymm4, ymm0, ymm1",
                "vpmaddwd ymm5, ymm0, ymm1",
                "vpmaddwd ymm2, ymm0, ymm1",
                "vpmaddwd ymm3, ymm0, ymm1",
                "vpmaddwd ymm4, ymm0, ymm1",
                "vfmadd231ps ymm6, ymm0, ymm1",
                "vfmadd231ps ymm7, ymm0, ymm1",
                "vfmadd231ps ymm8, ymm0, ymm1",
                "vfmadd231ps ymm9, ymm0, ymm1",
                "vfmadd231ps ymm10, ymm0, ymm1",
                "vfmadd231ps ymm11, ymm0, ymm1",
                "vfmadd231ps ymm12, ymm0, ymm1",
                "vfmadd231ps ymm13, ymm0, ymm1",
                "vfmadd231ps ymm14, ymm0, ymm1",
                "vfmadd231ps ymm15, ymm0, ymm1",
            )
        }
    }

    /// The 8-bit AVX2 kernel's inner loop for 8 rows (`int8.rs`,
    /// `pass_avx2`): per row a broadcast of its depth pair, a `vpmaddwd`
    /// against the widened weights and a `vpaddd` into its sum.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_body(n: u64, data: &[u8; 256]) -> usize {
        // SAFETY: the loads stay within `data`'s 256 bytes.
        unsafe {
            blocks!(
                n,
                data,
                "vpmovsxbw ymm13, xmmword ptr [rsi]",
                "vpbroadcastd ymm14, dword ptr [rsi + 128]",
                "vpmaddwd ymm14, ymm14, ymm13",
                "vpaddd ymm2, ymm2, ymm14",
                "vpbroadcastd ymm14, dword ptr [rsi + 132]",
                "vpmaddwd ymm14, ymm14, ymm13",
                "vpaddd ymm3, ymm3, ymm14",
                "vpbroadcastd ymm14, dword ptr [rsi + 136]",
                "vpmaddwd ymm14, ymm14, ymm13",
                "vpaddd ymm4, ymm4, ymm14",
                "vpbroadcastd ymm14, dword ptr [rsi + 140]",
                "vpmaddwd ymm14, ymm14, ymm13",
                "vpaddd ymm5, ymm5, ymm14",
                "vpbroadcastd ymm14, dword ptr [rsi + 144]",
                "vpmaddwd ymm14, ymm14, ymm13",
                "vpaddd ymm6, ymm6, ymm14",
                "vpbroadcastd ymm14, dword ptr [rsi + 148]",
                "vpmaddwd ymm14, ymm14, ymm13",
                "vpaddd ymm7, ymm7, ymm14",
                "vpbroadcastd ymm14, dword ptr [rsi + 152]",
                "vpmaddwd ymm14, ymm14, ymm13",
                "vpaddd ymm8, ymm8, ymm14",
                "vpbroadcastd ymm14, dword ptr [rsi + 156]",
                "vpmaddwd ymm14, ymm14, ymm13",
                "vpaddd ymm9, ymm9, ymm14",
            )
        }
    }
}
