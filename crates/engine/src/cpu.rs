//! What CPU the engine runs on and which of its kernel paths it takes there, for benchmarks to
//! record beside their numbers (`colo bench cpu`) and the engine's start-up log.
//!
//! Two kernel paths matter on the CPU: matrix products go through the `gemm` crate, which picks
//! its kernels at run time (on x86-64 its AVX-512 kernels where the CPU has AVX-512F, built in by
//! colo-engine's `x86-v4` feature, else its FMA/AVX2 kernels where it has FMA, else scalar), and
//! candle's own vector loops (dot products and sums in softmax, norms and quantized matmuls),
//! whose SIMD versions are chosen when the binary is compiled (`target_feature = "avx2"`), not at
//! run time. Products of many rows go to OpenBLAS instead where the system has it
//! ([`crate::blas`]), and a generating model's f32 weights take the engine's own panels and
//! kernels ([`crate::panels`]) where they were timed the faster
//! ([`crate::llama::decode_choice`]).

use serde::Serialize;

/// The CPU and the engine's kernel paths on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CpuReport {
    /// As the kernel names it (`/proc/cpuinfo`'s model name); `unknown` where it does not say.
    pub model: String,
    /// Threads the engine may use.
    pub threads: usize,
    /// The SIMD extensions the CPU has, of those that matter here, widest first.
    pub simd: Vec<&'static str>,
    /// The matrix-product kernels `gemm` picks on this CPU.
    pub matmul: &'static str,
    /// The BLAS that large products go to (see [`crate::blas`]), or `none`.
    pub blas: String,
    /// What multiplies a generating model's f32 weights (see [`crate::llama::decode_choice`]).
    pub decode: String,
    /// How candle's vector loops were compiled.
    pub vector_ops: &'static str,
}

/// The CPU this process runs on.
pub fn report() -> CpuReport {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    CpuReport {
        model: model_name(&cpuinfo).unwrap_or_else(|| "unknown".into()),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        simd: simd(),
        matmul: matmul_path(),
        blas: match crate::blas::blas() {
            Some(blas) => {
                let (m, k, n) = crate::blas::PROBE;
                let speed = format!("{:.2}x gemm's speed at {m}x{k}x{n}", blas.speedup);
                match blas.chosen {
                    true => format!("{} ({}+ rows; {speed})", blas.name.trim(), crate::blas::MIN_ROWS),
                    false => format!("{} (not used: {speed})", blas.name.trim()),
                }
            }
            None => "none".into(),
        },
        decode: {
            let choice = crate::llama::decode_choice();
            let (m, k, n) = crate::llama::split::PROBE;
            let mut speed = format!("{:.2}x gemm's speed at {m}x{k}x{n}", choice.speedup);
            if choice.forced {
                speed.push_str("; COLO_DECODE");
            }
            match choice.chosen {
                true => format!("panels {} ({speed})", crate::panels::isa().name()),
                false => format!("gemm (panels {} not used: {speed})", crate::panels::isa().name()),
            }
        },
        vector_ops: if cfg!(any(target_feature = "avx2", target_feature = "neon")) {
            "simd (compiled for avx2/neon)"
        } else {
            "scalar (compiled without avx2)"
        },
    }
}

/// The first `model name` of a `/proc/cpuinfo` text (pure).
pub fn model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()))
        .filter(|m| !m.is_empty())
}

#[cfg(target_arch = "x86_64")]
fn simd() -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! have {
        ($($name:tt),*) => {$(
            if std::arch::is_x86_feature_detected!($name) {
                out.push($name);
            }
        )*};
    }
    have!(
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512vnni",
        "avx2",
        "fma",
        "f16c",
        "avx",
        "sse4.2"
    );
    out
}

#[cfg(target_arch = "aarch64")]
fn simd() -> Vec<&'static str> {
    let mut out = Vec::new();
    if std::arch::is_aarch64_feature_detected!("neon") {
        out.push("neon");
    }
    if std::arch::is_aarch64_feature_detected!("sve") {
        out.push("sve");
    }
    out
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn simd() -> Vec<&'static str> {
    Vec::new()
}

/// What `gemm` chooses here, by the same tests it makes (gemm-common's `init_gemm_fn`).
fn matmul_path() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            "gemm avx-512 (512-bit)"
        } else if std::arch::is_x86_feature_detected!("fma") {
            "gemm fma (avx2, 256-bit)"
        } else {
            "gemm scalar"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        "gemm neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "gemm scalar"
    }
}

// === impl CpuReport ===

impl CpuReport {
    /// One line for a benchmark's output: `cpu model="..." threads=N simd=a,b matmul="..."
    /// blas="..." decode="..." vector_ops="..."`.
    pub fn line(&self) -> String {
        format!(
            "cpu model={:?} threads={} simd={} matmul={:?} blas={:?} decode={:?} vector_ops={:?}",
            self.model,
            self.threads,
            if self.simd.is_empty() {
                "none".to_string()
            } else {
                self.simd.join(",")
            },
            self.matmul,
            self.blas,
            self.decode,
            self.vector_ops
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_name_is_read_from_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t: fpu\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9R14\n";
        assert_eq!(model_name(text).as_deref(), Some("AMD EPYC 9R14"));
        assert_eq!(model_name("processor : 0\n"), None);
        assert_eq!(model_name("model name\t:\n"), None);
    }

    #[test]
    fn the_line_names_every_field() {
        let r = CpuReport {
            model: "Intel(R) Xeon(R) Platinum 8488C".into(),
            threads: 2,
            simd: vec!["avx512f", "avx2", "fma"],
            matmul: "gemm fma",
            blas: "none".into(),
            decode: "gemm".into(),
            vector_ops: "scalar",
        };
        assert_eq!(
            r.line(),
            "cpu model=\"Intel(R) Xeon(R) Platinum 8488C\" threads=2 simd=avx512f,avx2,fma matmul=\"gemm fma\" blas=\"none\" decode=\"gemm\" vector_ops=\"scalar\""
        );
        let here = report();
        assert!(here.threads >= 1 && !here.model.is_empty());
    }
}
