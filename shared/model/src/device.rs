//! Which device the models run on, named by the `FC_DEVICE` setting: `cpu` (the
//! default), `cuda` (the first GPU) or `cuda:N`.
//!
//! Every path in this crate works on any candle device: the CPU has its own kernels
//! (packed f32 and Q8_0 matmuls, fused row steps, decode attention) and everything else
//! goes through candle's ops, which the `cuda` feature builds for GPUs. A name is parsed
//! apart from opening the device, so a service rejects a misspelt `FC_DEVICE` with its
//! other configuration errors, and a binary built without the `cuda` feature says so
//! instead of failing somewhere inside the first forward.

use crate::error::{ModelError, Result};
use candle_core::Device;
use std::fmt;
use std::str::FromStr;

/// The setting's name, for services and tools that read it from the environment.
pub const DEVICE_ENV: &str = "FC_DEVICE";

/// A device as configured, before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    /// `cpu`, `cuda` (or `gpu`), `cuda:N`; case and surrounding spaces are ignored.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => match t.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!("unknown device `{s}`: expected cpu, cuda or cuda:N")),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. A CUDA name fails with a config error that says why: this
    /// binary has no CUDA support, or the GPU could not be opened (no driver, no such
    /// ordinal).
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(ModelError::Config(format!(
                        "{DEVICE_ENV}={self}: this binary was built without CUDA support (rebuild with `--features cuda`)"
                    )));
                }
                Device::new_cuda(n).map_err(|e| ModelError::Config(format!("{DEVICE_ENV}={self}: cannot open the GPU: {e}")))
            }
        }
    }

    /// `FC_DEVICE` from the environment (unset or empty: the CPU).
    pub fn from_env() -> Result<DeviceSpec> {
        match std::env::var(DEVICE_ENV) {
            Ok(v) if !v.trim().is_empty() => v.parse().map_err(|e: String| ModelError::Config(format!("{DEVICE_ENV}: {e}"))),
            _ => Ok(DeviceSpec::Cpu),
        }
    }
}

/// The device `FC_DEVICE` names, opened.
pub fn from_env() -> Result<Device> {
    DeviceSpec::from_env()?.open()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (s, want) in [("cpu", DeviceSpec::Cpu), (" CPU ", DeviceSpec::Cpu), ("cuda", DeviceSpec::Cuda(0)), ("gpu", DeviceSpec::Cuda(0)), ("cuda:3", DeviceSpec::Cuda(3))] {
            let got: DeviceSpec = s.parse().expect(s);
            assert_eq!(got, want, "{s}");
            assert_eq!(got.to_string().parse::<DeviceSpec>(), Ok(want));
        }
        for bad in ["", "tpu", "cuda:", "cuda:x", "cuda:-1", "metal"] {
            let e = bad.parse::<DeviceSpec>().expect_err(bad);
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{e}");
        }
    }

    #[test]
    fn the_cpu_opens_and_a_cuda_name_fails_clearly_without_a_gpu() {
        assert!(matches!(DeviceSpec::Cpu.open(), Ok(Device::Cpu)));
        // Without the feature the message names it; with it (and no GPU here) the
        // driver's error comes through. A machine with a GPU skips the second half.
        match DeviceSpec::Cuda(0).open() {
            Ok(d) => assert!(d.is_cuda()),
            Err(e) => {
                let msg = e.to_string();
                if cfg!(feature = "cuda") {
                    assert!(msg.contains("cannot open the GPU"), "{msg}");
                } else {
                    assert!(msg.contains("built without CUDA support"), "{msg}");
                }
            }
        }
    }
}
