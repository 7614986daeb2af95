//! Choosing where the model runs: `--device auto|cpu|cuda[:N]` and `--dtype`.
//! `auto` takes the first CUDA GPU when dualsight was built with the `cuda`
//! feature and one is present, else the CPU, and logs which.

use std::str::FromStr;

use candle_core::{DType, Device};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device `{0}`: expected auto, cpu, cuda or cuda:N")]
    Parse(String),
    #[error("dtype `{0}`: expected f32, f16 or bf16")]
    DType(String),
    #[error("text_weights `{0}`: expected dtype or int8")]
    TextWeights(String),
    #[error("device cuda:{ordinal}: {msg}")]
    Cuda { ordinal: usize, msg: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Parse(s.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    pub fn open(self) -> Result<Device, DeviceError> {
        let device = match self {
            Self::Cpu => Device::Cpu,
            Self::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|e| DeviceError::Cuda {
                ordinal,
                msg: if cfg!(feature = "cuda") { driver_error(e) } else { "this dualsight was built without the `cuda` feature (see scripts/build-cuda.sh)".into() },
            })?,
            Self::Auto => auto_device(),
        };
        // The CPU's vector level matters on the CPU, and for the index's
        // distance either way: operators see what DUALSIGHT_CPU left.
        tracing::info!(requested = %self, device = if device.is_cuda() { "cuda" } else { "cpu" }, cpu_level = crate::simd::level().name(), "model device");
        Ok(device)
    }

    /// What `auto` comes to on this machine, `cpu` or the first GPU, as
    /// [`DeviceSpec::open`] would choose: a harness passes this on, so that
    /// what it runs beside the model (the reference script) runs there too.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto if auto_device().is_cuda() => Self::Cuda(0),
            Self::Auto => Self::Cpu,
            chosen => chosen,
        }
    }
}

fn auto_device() -> Device {
    if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
        // `cuda_is_available` only says the feature is compiled in:
        // whether a GPU and driver are there shows when opening it.
        Device::new_cuda(0).unwrap_or_else(|e| {
            let error = driver_error(e);
            tracing::warn!(%error, "built with cuda but no usable GPU: using the CPU");
            Device::Cpu
        })
    } else {
        Device::Cpu
    }
}

/// The driver's message alone: candle wraps errors in a backtrace when
/// RUST_BACKTRACE is set, which buries a one-line "no GPU" under 20 frames.
fn driver_error(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => inner.to_string(),
        e => e.to_string(),
    }
}

/// Parses `--dtype`. Every device takes every type: on the CPU a half type
/// stores the dense weights (`model::layers::HalfWeights`; with AVX-512
/// BF16, bf16 also rounds a batch's dense-layer inputs), on CUDA every
/// tensor.
pub fn parse_dtype(s: &str) -> Result<DType, DeviceError> {
    let dtype = match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" | "half" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        _ => return Err(DeviceError::DType(s.to_string())),
    };
    Ok(dtype)
}

/// How the text tower's dense weights are held when a model serves queries
/// on the CPU (`--text-weights`): in the model's dtype, or as 8-bit
/// integers with a scale per column (`model::cpu::int8`), which halves a
/// bf16 query's weight reads at a measured cost in cosine (BENCHMARKS.md).
/// The image side, and so every stored vector, is not affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextWeights {
    #[default]
    Dtype,
    Int8,
}

/// The name [`FromStr`] reads back: what a harness passes on to a daemon.
impl std::fmt::Display for TextWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Dtype => "dtype",
            Self::Int8 => "int8",
        })
    }
}

impl FromStr for TextWeights {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dtype" | "" => Ok(Self::Dtype),
            "int8" => Ok(Self::Int8),
            _ => Err(DeviceError::TextWeights(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!(
            "tpu"
                .parse::<DeviceSpec>()
                .unwrap_err()
                .to_string()
                .contains("tpu")
        );
        assert_eq!(parse_dtype("f32").unwrap(), DType::F32);
        assert_eq!(parse_dtype("BF16").unwrap(), DType::BF16);
        assert_eq!(parse_dtype("half").unwrap(), DType::F16);
        assert!(parse_dtype("f8").unwrap_err().to_string().contains("f8"));
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
    }

    /// `auto` resolves to what `open` picks here; a named device stays named.
    #[test]
    fn auto_resolves_to_the_device_open_picks() {
        let picked = DeviceSpec::Auto.resolve();
        assert_ne!(picked, DeviceSpec::Auto);
        assert_eq!(
            picked == DeviceSpec::Cpu,
            DeviceSpec::Auto.open().unwrap().is_cpu()
        );
        for named in [DeviceSpec::Cpu, DeviceSpec::Cuda(3)] {
            assert_eq!(named.resolve(), named);
        }
    }

    /// Every spelling a flag accepts comes out in one name that reads back
    /// as the same value: what the bench hands its daemon and the reference
    /// script, which know only those names (`gpu` ran the reference on the
    /// CPU and `bfloat16` in f32 before).
    #[test]
    fn each_value_has_one_name_that_reads_back() {
        for (given, name) in [("GPU", "cuda:0"), ("cuda:2", "cuda:2"), (" Cpu", "cpu")] {
            let d: DeviceSpec = given.parse().unwrap();
            assert_eq!(d.to_string(), name);
            assert_eq!(name.parse::<DeviceSpec>().unwrap(), d);
        }
        for (given, name) in [("bfloat16", "bf16"), ("half", "f16"), ("FLOAT32", "f32")] {
            let t = parse_dtype(given).unwrap();
            assert_eq!(t.as_str(), name);
            assert_eq!(parse_dtype(name).unwrap(), t);
        }
        for (given, name) in [("INT8", "int8"), ("", "dtype")] {
            let w: TextWeights = given.parse().unwrap();
            assert_eq!(w.to_string(), name);
            assert_eq!(name.parse::<TextWeights>().unwrap(), w);
        }
    }
}
