//! Where the engine computes, and in which number format.
//!
//! The agent tells an engine which card it leased through `CUDA_VISIBLE_DEVICES` (the card's
//! index, or empty on a CPU slot); `COLO_ENGINE_DEVICE` (`cpu`, `cuda`, `auto`) overrides it. A
//! build with CUDA runs on the leased card and fails rather than fall back when it cannot; a
//! build without (the default) computes on the CPU and says so in its log. On a GPU the weights
//! keep the format they were stored in (bf16, f16 or f32); on the CPU the engine computes in
//! f32, which its CPU kernels are fastest at.

use crate::EngineError;
use candle_core::{DType, Device};

/// Which device a process asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Cpu,
    /// A GPU is required (`COLO_ENGINE_DEVICE=cuda`).
    Gpu,
    /// The machine leased a card: a build with CUDA must use it; one without computes on the
    /// CPU (GPUs an operator declares on a host whose colo has no CUDA, as tests do).
    Leased,
    /// The GPU when this build has CUDA and one is present, else the CPU.
    Any,
}

/// Decides from `COLO_ENGINE_DEVICE` and `CUDA_VISIBLE_DEVICES` (pure: the values are
/// arguments).
pub fn want(device: Option<&str>, cuda_visible: Option<&str>) -> Result<Want, EngineError> {
    match device.map(str::trim) {
        Some("cpu") => return Ok(Want::Cpu),
        Some("cuda" | "gpu") => return Ok(Want::Gpu),
        None | Some("" | "auto") => {}
        Some(other) => {
            return Err(EngineError::Load {
                file: "COLO_ENGINE_DEVICE".into(),
                reason: format!("{other:?} is not a device (cpu, cuda, auto)"),
            })
        }
    }
    Ok(match cuda_visible.map(str::trim) {
        None => Want::Any,
        Some("" | "-1" | "none" | "NoDevFiles") => Want::Cpu,
        Some(_) => Want::Leased,
    })
}

/// The device this process computes on, from its environment.
pub fn open() -> Result<Device, EngineError> {
    let device = std::env::var("COLO_ENGINE_DEVICE").ok();
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    open_for(want(device.as_deref(), visible.as_deref())?, visible.as_deref())
}

/// Opens the device `want` names; `visible` is `CUDA_VISIBLE_DEVICES`, for the error.
pub fn open_for(want: Want, visible: Option<&str>) -> Result<Device, EngineError> {
    let cuda = || {
        // Ordinal 0 of the cards CUDA_VISIBLE_DEVICES leaves visible: the leased one.
        Device::new_cuda(0).map_err(|e| EngineError::Load {
            file: "GPU".into(),
            reason: if candle_core::utils::cuda_is_available() {
                format!("opening the GPU (CUDA_VISIBLE_DEVICES={}): {e}", visible.unwrap_or("unset"))
            } else {
                format!(
                    "this machine leases GPU {} but this colo was built without CUDA \
                     (build it with `--features cuda`: scripts/build-cuda)",
                    visible.unwrap_or("0")
                )
            },
        })
    };
    match want {
        Want::Cpu => Ok(Device::Cpu),
        Want::Gpu => cuda(),
        Want::Leased if candle_core::utils::cuda_is_available() => cuda(),
        Want::Leased => {
            tracing::warn!(
                gpu = visible.unwrap_or(""),
                "this colo was built without CUDA: the machine leases a GPU but computes on the CPU \
                 (build it with `--features cuda`: scripts/build-cuda)"
            );
            Ok(Device::Cpu)
        }
        Want::Any if candle_core::utils::cuda_is_available() => cuda().or_else(|e| {
            tracing::warn!(error = %e, "no usable GPU; computing on the CPU");
            Ok(Device::Cpu)
        }),
        Want::Any => Ok(Device::Cpu),
    }
}

/// The format a model's weights were stored in, from `config.json` (`torch_dtype`, or `dtype`
/// as transformers 5 writes it); f32 when it says nothing.
pub fn stored_dtype(config: &serde_json::Value) -> DType {
    let name = config
        .get("torch_dtype")
        .or_else(|| config.get("dtype"))
        .and_then(|v| v.as_str())
        .unwrap_or("float32");
    match name {
        "bfloat16" => DType::BF16,
        "float16" | "half" => DType::F16,
        _ => DType::F32,
    }
}

/// The format the engine computes in on `device` for weights stored as `stored`.
pub fn compute_dtype(device: &Device, stored: DType) -> DType {
    match (device, stored) {
        (Device::Cpu, _) => DType::F32,
        (_, DType::BF16 | DType::F16) => stored,
        _ => DType::F32,
    }
}

/// A short name of the device for logs and `/metrics`: `cpu` or `cuda`.
pub fn name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leased_card_requires_the_gpu_and_a_cpu_slot_forbids_it() {
        let cases = [
            (None, None, Want::Any),
            (None, Some("3"), Want::Leased),
            (None, Some("0,1"), Want::Leased),
            (None, Some(""), Want::Cpu),
            (None, Some("-1"), Want::Cpu),
            (Some("cpu"), Some("0"), Want::Cpu),
            (Some("cuda"), Some(""), Want::Gpu),
            (Some("auto"), Some("2"), Want::Leased),
            (Some(""), None, Want::Any),
        ];
        for (device, visible, expected) in cases {
            assert_eq!(want(device, visible).unwrap(), expected, "{device:?} {visible:?}");
        }
        let err = want(Some("tpu"), None).unwrap_err().to_string();
        assert!(err.contains("COLO_ENGINE_DEVICE") && err.contains("tpu"), "{err}");
    }

    #[test]
    fn the_cpu_computes_in_f32_and_a_gpu_in_the_stored_format() {
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(stored_dtype(&json(r#"{"torch_dtype":"bfloat16"}"#)), DType::BF16);
        assert_eq!(stored_dtype(&json(r#"{"dtype":"float16"}"#)), DType::F16);
        assert_eq!(stored_dtype(&json(r#"{}"#)), DType::F32);
        assert_eq!(compute_dtype(&Device::Cpu, DType::BF16), DType::F32);
        assert_eq!(compute_dtype(&Device::Cpu, DType::F32), DType::F32);
    }

    #[test]
    fn a_build_without_cuda_says_how_to_get_one_when_a_gpu_is_required() {
        if candle_core::utils::cuda_is_available() {
            return; // this build has CUDA; the message below is for one that has not
        }
        assert!(matches!(open_for(Want::Any, None), Ok(Device::Cpu)));
        assert!(matches!(open_for(Want::Leased, Some("0")), Ok(Device::Cpu)));
        assert!(matches!(open_for(Want::Cpu, Some("0")), Ok(Device::Cpu)));
        let err = open_for(Want::Gpu, Some("1")).unwrap_err().to_string();
        assert!(err.contains("without CUDA") && err.contains("--features cuda"), "{err}");
    }
}
