//! Loading weights while they land. The agent may start colo's engine before the pull of its
//! model has finished (`colo engine serve --landing`) and tell it on stdin how far each weight
//! file is verified; the engine reads each tensor as soon as its bytes are there, so loading
//! runs alongside the pull instead of after it. Nothing is read before the agent has verified
//! it against the manifest's chunk digests.
//!
//! The feed is one message per line, fields separated by tabs:
//!
//! - `landing <file> <size> <partial path>`: a weight file still being pulled, its size and
//!   where its bytes are written until it is complete;
//! - `listed`: every file still landing has been named (the feed starts with the `landing`
//!   lines and this one; the engine reads them before it loads anything);
//! - `bytes <file> <verified>`: its first `<verified>` bytes are written and verified;
//! - `done`: every file is complete under its own name;
//! - `failed <reason>`: the pull failed, and loading gives up with the reason.
//!
//! A file the feed never names is complete on disk. If the feed ends without `done` (the agent
//! died), waiting for bytes that have not landed fails rather than hanging.

use crate::EngineError;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use colo_model::safetensors::{Dtype, TensorSpan};
use std::collections::HashMap;
use std::io::BufRead;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// How far each weight file still being pulled has landed, as the agent's feed says.
#[derive(Debug, Default)]
pub struct Landing {
    state: Mutex<Feed>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Feed {
    files: HashMap<String, LandingFile>,
    done: bool,
    failed: Option<String>,
    closed: bool,
}

#[derive(Debug)]
struct LandingFile {
    size: u64,
    partial: PathBuf,
    verified: u64,
}

// === impl Landing ===

impl Landing {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Follows the feed on `reader` (the engine's stdin): reads its list of landing files
    /// here, then the rest on a thread of its own until it ends.
    pub fn follow(self: &Arc<Self>, reader: impl BufRead + Send + 'static) {
        let mut lines = reader.lines();
        if self.apply_lines(&mut lines, true) {
            let landing = self.clone();
            std::thread::spawn(move || landing.apply_lines(&mut lines, false));
        }
    }

    /// Applies `lines` until the feed ends or breaks (then it is closed, and false), or, when
    /// `until_listed`, until its `listed` line (true).
    fn apply_lines(&self, lines: &mut impl Iterator<Item = std::io::Result<String>>, until_listed: bool) -> bool {
        for line in lines {
            let Ok(line) = line else { break };
            if until_listed && line == "listed" {
                return true;
            }
            if let Err(reason) = self.apply(&line) {
                self.update(|feed| feed.failed = Some(reason));
                break;
            }
        }
        self.update(|feed| feed.closed = true);
        false
    }

    /// Takes one line of the feed; a line that is not a message of the feed is an error.
    pub fn apply(&self, line: &str) -> Result<(), String> {
        let fields: Vec<&str> = line.split('\t').collect();
        let number = |s: &str, what: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("feed line {line:?}: {what} {s:?} is not a byte count"))
        };
        match fields.as_slice() {
            ["landing", file, size, partial] => {
                let size = number(size, "size")?;
                self.update(|feed| {
                    feed.files.insert(
                        file.to_string(),
                        LandingFile {
                            size,
                            partial: PathBuf::from(partial),
                            verified: 0,
                        },
                    );
                });
                Ok(())
            }
            ["bytes", file, verified] => {
                let verified = number(verified, "verified")?;
                let mut unknown = false;
                self.update(|feed| match feed.files.get_mut(*file) {
                    Some(f) => f.verified = f.verified.max(verified.min(f.size)),
                    None => unknown = true,
                });
                if unknown {
                    return Err(format!("feed line {line:?}: {file:?} was never announced as landing"));
                }
                Ok(())
            }
            ["listed"] => Ok(()),
            ["done"] => {
                self.update(|feed| feed.done = true);
                Ok(())
            }
            ["failed", reason @ ..] => {
                let reason = reason.join("\t");
                self.update(|feed| feed.failed = Some(format!("the pull failed: {reason}")));
                Ok(())
            }
            _ => Err(format!("feed line {line:?} is not landing, listed, bytes, done or failed")),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Feed)) {
        let mut feed = self.state.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut feed);
        drop(feed);
        self.changed.notify_all();
    }

    /// Whether `file` is still landing (named by the feed, and the pull not done).
    pub fn is_landing(&self, file: &str) -> bool {
        let feed = self.state.lock().unwrap_or_else(|p| p.into_inner());
        !feed.done && feed.files.contains_key(file)
    }

    /// The size and partial path of `file` when the feed named it.
    fn announced(&self, file: &str) -> Option<(u64, PathBuf)> {
        let feed = self.state.lock().unwrap_or_else(|p| p.into_inner());
        feed.files.get(file).map(|f| (f.size, f.partial.clone()))
    }

    /// Waits until the first `bytes` of `file` are verified (at once for a file the feed never
    /// named); fails when the pull failed or the feed ended first.
    pub fn wait(&self, file: &str, bytes: u64) -> Result<(), String> {
        let mut feed = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(reason) = &feed.failed {
                return Err(reason.clone());
            }
            match feed.files.get(file) {
                None => return Ok(()),
                Some(_) if feed.done => return Ok(()),
                Some(f) if f.verified >= bytes.min(f.size) => return Ok(()),
                Some(f) if feed.closed => {
                    return Err(format!(
                        "the agent's feed ended with {} of {file}'s {} bytes landed",
                        f.verified, f.size
                    ))
                }
                Some(_) => feed = self.changed.wait(feed).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}

/// Weights read tensor by tensor from safetensors files as their bytes land.
struct LandingWeights {
    landing: Arc<Landing>,
    files: Vec<WeightFile>,
    tensors: HashMap<String, (usize, TensorSpan)>,
}

struct WeightFile {
    /// The name the feed knows it by: its path relative to the model directory.
    name: String,
    file: std::fs::File,
    /// Where the data section starts: after the 8-byte length and the JSON header.
    data_start: u64,
}

/// A `VarBuilder` over the safetensors `files` (in `dir`): through the feed when any of them
/// is still landing, else memory-mapped as usual.
pub(crate) fn var_builder(
    dir: &Path,
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
    landing: Option<&Arc<Landing>>,
) -> Result<VarBuilder<'static>, EngineError> {
    let load_err = |file: &Path, reason: String| EngineError::Load {
        file: file.display().to_string(),
        reason,
    };
    let name_of = |path: &Path| path.strip_prefix(dir).unwrap_or(path).to_string_lossy().into_owned();
    let landing = landing.filter(|l| files.iter().any(|f| l.is_landing(&name_of(f))));
    let Some(landing) = landing else {
        // SAFETY: read-only mmap of files the host cache publishes atomically and never rewrites.
        return unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }.map_err(|e| load_err(dir, e.to_string()));
    };
    let mut weights = LandingWeights {
        landing: landing.clone(),
        files: Vec::new(),
        tensors: HashMap::new(),
    };
    for path in files {
        let name = name_of(path);
        let (file, size) = open_landing(landing, path, &name).map_err(|e| load_err(path, e))?;
        let header = |bytes: u64| -> Result<Vec<u8>, String> {
            landing.wait(&name, bytes)?;
            let mut buf = vec![0u8; bytes as usize];
            file.read_exact_at(&mut buf, 0).map_err(|e| e.to_string())?;
            Ok(buf)
        };
        let prefix = header(8.min(size)).map_err(|e| load_err(path, e))?;
        let len = colo_model::safetensors::header_len(&prefix, size).map_err(|e| load_err(path, e.to_string()))?;
        let head = header(8 + len).map_err(|e| load_err(path, e))?;
        let spans = colo_model::safetensors::tensor_spans(&head[8..], size).map_err(|e| load_err(path, e.to_string()))?;
        let index = weights.files.len();
        for (tensor, span) in spans {
            if weights.tensors.insert(tensor.clone(), (index, span)).is_some() {
                return Err(load_err(path, format!("tensor {tensor:?} is in more than one weight file")));
            }
        }
        weights.files.push(WeightFile {
            name,
            file,
            data_start: 8 + len,
        });
    }
    tracing::info!(files = files.len(), tensors = weights.tensors.len(), "loading weights as they land");
    Ok(VarBuilder::from_backend(Box::new(weights), dtype, device.clone()))
}

/// Opens a weight file that may still be landing: under its own name, else its partial one,
/// else its own name again (it may be renamed between the two); returns it with its size.
fn open_landing(landing: &Landing, path: &Path, name: &str) -> Result<(std::fs::File, u64), String> {
    let announced = landing.announced(name);
    let opened = std::fs::File::open(path)
        .or_else(|e| match &announced {
            Some((_, partial)) => std::fs::File::open(partial),
            None => Err(e),
        })
        .or_else(|_| std::fs::File::open(path))
        .map_err(|e| e.to_string())?;
    let size = match announced {
        Some((size, _)) => size,
        None => opened.metadata().map_err(|e| e.to_string())?.len(),
    };
    Ok((opened, size))
}

/// candle's element type for a safetensors dtype, where candle has one.
fn candle_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I64 => DType::I64,
        _ => return None,
    })
}

// === impl LandingWeights ===

impl LandingWeights {
    /// Reads tensor `name` once its bytes have landed, in its stored dtype, onto `device`.
    fn read(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        let (index, span) = self
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() })?;
        let file = &self.files[*index];
        self.landing
            .wait(&file.name, file.data_start + span.end)
            .map_err(candle_core::Error::Msg)?;
        let (offset, len) = (file.data_start + span.begin, (span.end - span.begin) as usize);
        let dtype = candle_dtype(span.dtype)
            .ok_or_else(|| candle_core::Error::Msg(format!("tensor {name:?}: dtype {} is not supported", span.dtype)))?;
        let shape: Vec<usize> = span.shape.iter().map(|&d| d as usize).collect();
        // The common formats are read straight into the tensor's own storage; the rest through
        // a byte buffer that candle copies.
        match dtype {
            DType::F32 => read_values::<f32>(&file.file, offset, len, &shape, device),
            DType::BF16 => read_values::<half::bf16>(&file.file, offset, len, &shape, device),
            DType::F16 => read_values::<half::f16>(&file.file, offset, len, &shape, device),
            _ => {
                let mut bytes = vec![0u8; len];
                file.file.read_exact_at(&mut bytes, offset)?;
                Tensor::from_raw_buffer(&bytes, dtype, &shape, device)
            }
        }
    }
}

/// `len` bytes at `offset` of `file` (little-endian values of `T`, as safetensors stores
/// them, on a little-endian CPU) as a tensor of `shape`, read into the values' vector itself.
fn read_values<T: bytemuck::Pod + candle_core::WithDType>(
    file: &std::fs::File,
    offset: u64,
    len: usize,
    shape: &[usize],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut values = vec![T::zeroed(); len / std::mem::size_of::<T>()];
    file.read_exact_at(bytemuck::cast_slice_mut(&mut values), offset)?;
    Tensor::from_vec(values, shape, device)
}

impl candle_nn::var_builder::SimpleBackend for LandingWeights {
    fn get(&self, shape: Shape, name: &str, _: candle_nn::Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.read(name, device)?.to_dtype(dtype)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            });
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.read(name, device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests;
