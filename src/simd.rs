//! Which x86-64 vector instruction set our own kernels run at: the dense
//! layers (`model::cpu`) and the HNSW distance (`index::dist`). Chosen once
//! per process from what the CPU has, and lowered, never raised, by
//! `DUALSIGHT_CPU` (`portable`, `avx2`, `avx512`), so that one machine can
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
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
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
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The highest level this CPU supports.
    pub fn detected() -> Level {
        Level::ALL
            .into_iter()
            .rev()
            .find(|l| l.supported())
            .unwrap_or(Level::Portable)
    }

    /// Every level this CPU supports, lowest first (for tests that check
    /// each kernel against the portable one).
    pub fn available() -> Vec<Level> {
        Level::ALL.into_iter().filter(|l| l.supported()).collect()
    }
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
            "unknown level `{v}` (expected portable, avx2 or avx512)"
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
        assert_eq!(avail.last(), Some(&Level::detected()));
        assert!(level() <= Level::detected());
    }
}
