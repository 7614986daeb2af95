//! Which x86-64 vector instruction set our own kernels run at: the dense
//! layers (`model::cpu`) and the HNSW distance (`index::dist`). Chosen once
//! per process from what the CPU has, and lowered, never raised, by
//! `DUALSIGHT_CPU` (`portable`, `avx2`, `avx512`, `avx512bf16`), so that one machine can
//! test and benchmark every path. gemm (attention's products, and dense
//! layers off x86-64) dispatches on its own.

use std::sync::OnceLock;

/// The variable that lowers the level.
pub const ENV: &str = "DUALSIGHT_CPU";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Plain Rust, whatever the CPU (the compiler's baseline SSE2 on x86-64).
    Portable,
    /// AVX2 + FMA, and F16C for half-precision weights (Haswell and Zen
    /// on: every CPU with AVX2 has F16C).
    Avx2,
    /// AVX-512 F, BW, VL, DQ on top of AVX2 + FMA (Skylake-SP, Ice Lake,
    /// Sapphire Rapids, Zen 4 on).
    Avx512,
    /// AVX-512 plus BF16 (`vdpbf16ps`: Cooper Lake, Sapphire Rapids, Zen 4
    /// on). Changes only what bf16 weights (`--dtype bf16`) do in dense
    /// layers (a photo batch's, and the text tower's): their inputs are
    /// rounded to bf16 too, and each instruction takes two depths.
    Avx512Bf16,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::Portable,
        Level::Avx2,
        Level::Avx512,
        Level::Avx512Bf16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Avx512Bf16 => "avx512bf16",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run code of this level.
    pub fn supported(self) -> bool {
        match self {
            Level::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Level::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Bf16 => {
                Level::Avx512.supported() && is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The highest level this CPU supports and gains from. `Avx512Bf16`
    /// is passed over on CPUs with AMX (Sapphire Rapids on), whose cores
    /// run `vdpbf16ps` at half the FMA rate (121.6 against 244.7 GFLOP/s
    /// measured there), so it would round the input for no speed; Zen 4
    /// runs it at the FMA rate (BENCHMARKS.md). Tests still run it there.
    pub fn detected() -> Level {
        Level::ALL
            .into_iter()
            .rev()
            .find(|&l| l.supported() && (l != Level::Avx512Bf16 || !has_amx()))
            .unwrap_or(Level::Portable)
    }

    /// Every level this CPU supports, lowest first (for tests that check
    /// each kernel against the portable one).
    pub fn available() -> Vec<Level> {
        Level::ALL.into_iter().filter(|l| l.supported()).collect()
    }
}

/// Whether the CPU has AMX-BF16 (CPUID leaf 7, EDX bit 22): only as a sign
/// of the cores that have it, not to use it.
fn has_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // Leaf 7 exists on every CPU with AVX-512, the only ones asked.
        let leaf = std::arch::x86_64::__cpuid_count(7, 0);
        leaf.edx & (1 << 22) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The level in force for this process.
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let detected = Level::detected();
        let chosen = resolve(std::env::var(ENV).ok().as_deref(), detected);
        match chosen {
            Ok(l) => l,
            Err(why) => {
                tracing::warn!("{ENV}: {why}; using {}", detected.name());
                detected
            }
        }
    })
}

/// What `DUALSIGHT_CPU=value` means on a CPU whose best is `detected`.
fn resolve(value: Option<&str>, detected: Level) -> Result<Level, String> {
    let Some(v) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(detected);
    };
    let Some(asked) = Level::parse(v) else {
        return Err(format!(
            "unknown level `{v}` (expected portable, avx2, avx512 or avx512bf16)"
        ));
    };
    if asked > detected {
        return Err(format!(
            "`{v}` is above what this CPU has ({})",
            detected.name()
        ));
    }
    Ok(asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_lowers_but_never_raises() {
        assert_eq!(resolve(None, Level::Avx2), Ok(Level::Avx2));
        assert_eq!(resolve(Some(""), Level::Avx512), Ok(Level::Avx512));
        assert_eq!(resolve(Some("AVX2"), Level::Avx512), Ok(Level::Avx2));
        assert_eq!(resolve(Some("portable"), Level::Avx2), Ok(Level::Portable));
        let up = resolve(Some("avx512"), Level::Avx2).unwrap_err();
        assert!(up.contains("above what this CPU has (avx2)"), "{up}");
        let bad = resolve(Some("sse9"), Level::Avx2).unwrap_err();
        assert!(bad.contains("unknown level `sse9`"), "{bad}");
    }

    #[test]
    fn levels_are_ordered_and_detection_is_consistent() {
        let avail = Level::available();
        println!("levels this CPU runs: {avail:?}");
        assert_eq!(avail.first(), Some(&Level::Portable));
        let best = Level::detected();
        if has_amx() && avail.contains(&Level::Avx512Bf16) {
            assert_eq!(best, Level::Avx512);
        } else {
            assert_eq!(avail.last(), Some(&best));
        }
        assert!(level() <= Level::detected());
    }
}
