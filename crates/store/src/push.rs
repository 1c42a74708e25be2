//! `colo model push`: validate a model directory, digest it chunk by chunk, upload the files,
//! then write the manifest last so that readers never see a partial model.

use crate::{Progress, Store, StoreError};
use colo_model::manifest::chunk_digest;
use colo_model::{safetensors, FileEntry, Manifest};
use futures::{StreamExt, TryStreamExt};
use object_store::{PutPayload, WriteMultipart};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Bytes per digest chunk (and per ranged read when pulling).
    pub chunk_size: u64,
    /// Files uploaded at once.
    pub concurrency: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            chunk_size: colo_model::DEFAULT_CHUNK_SIZE,
            concurrency: 4,
        }
    }
}

#[derive(Clone, Debug)]
pub struct PushReport {
    pub manifest: Manifest,
    /// Bytes sent to the store (files already there with the same size are skipped).
    pub bytes_uploaded: u64,
    pub seconds: f64,
}

/// Pushes the model directory `dir` into `store` under `name`. Hidden files are skipped.
/// Every `.safetensors` file is validated before any byte is uploaded.
pub async fn push_dir(store: &Store, dir: &Path, name: &str, opts: &PushOptions, progress: Progress) -> Result<PushReport, StoreError> {
    let started = Instant::now();
    let files = list_files(dir)?;
    // A model is a config.json with its weights, or a GGUF file, which carries its own config.
    if !files.iter().any(|(rel, _)| rel == "config.json" || rel.ends_with(".gguf")) {
        return Err(StoreError::BadDir {
            dir: dir.display().to_string(),
            reason: "no config.json and no .gguf file".into(),
        });
    }
    let chunk_size = opts.chunk_size;
    let entries = {
        let files = files.clone();
        tokio::task::spawn_blocking(move || {
            files
                .iter()
                .map(|(rel, abs)| describe_file(rel, abs, chunk_size))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| StoreError::Internal(format!("hashing the model's files: {e}")))??
    };
    check_config(dir, &files)?;
    let manifest = Manifest::new(name, chunk_size, entries, now_ms());

    let uploaded: Vec<u64> = futures::stream::iter(files.iter().map(|(rel, abs)| {
        let target = Store::file_path(name, &manifest.revision, rel);
        let progress = progress.clone();
        async move { upload_file(store, abs, &target, progress).await }
    }))
    .buffer_unordered(opts.concurrency.max(1))
    .try_collect()
    .await?;

    // The revision's own copy first, the pointer to the latest revision last.
    for path in [Store::revision_manifest_path(name, &manifest.revision), Store::manifest_path(name)] {
        store
            .objects()
            .put(&path, PutPayload::from(manifest.to_json()))
            .await
            .map_err(|e| StoreError::object(&path, e))?;
    }
    Ok(PushReport {
        manifest,
        bytes_uploaded: uploaded.iter().sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub(crate) use colo_core::unix_ms as now_ms;

/// Regular files under `dir`, as (relative path with `/`, absolute path), sorted.
fn list_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let bad = |reason: String| StoreError::BadDir {
        dir: dir.display().to_string(),
        reason,
    };
    if !dir.is_dir() {
        return Err(bad("not a directory".into()));
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| StoreError::io(current.display(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(current.display(), e))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                return Err(bad(format!("{:?} is not valid UTF-8", entry.path())));
            };
            if file_name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| StoreError::io(path.display(), e))?;
            if kind.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                let rel = path.strip_prefix(dir).map_err(|e| bad(e.to_string()))?;
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Digests one file chunk by chunk; for safetensors and GGUF files, validates the header too.
fn describe_file(rel: &str, abs: &Path, chunk_size: u64) -> Result<FileEntry, StoreError> {
    let io = |e| StoreError::io(abs.display(), e);
    let mut file = std::fs::File::open(abs).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let summary = if rel.ends_with(".safetensors") {
        Some(check_safetensors(abs, &mut file, size)?)
    } else {
        None
    };
    let gguf = if rel.ends_with(".gguf") {
        Some(check_gguf(abs, &mut file, size)?)
    } else {
        None
    };

    let mut file = std::fs::File::open(abs).map_err(io)?;
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; chunk_size as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..]).map_err(io)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        chunks.push(chunk_digest(&buf[..filled]));
        if filled < buf.len() {
            break;
        }
    }
    Ok(FileEntry {
        path: rel.to_string(),
        size,
        chunks,
        safetensors: summary,
        gguf,
    })
}

/// Refuses a config.json whose sizes contradict the safetensors weights beside it, naming each
/// tensor that disagrees. A config colo cannot read (another architecture) is not judged.
fn check_config(dir: &Path, files: &[(String, PathBuf)]) -> Result<(), StoreError> {
    let Some((_, config)) = files.iter().find(|(rel, _)| rel == "config.json") else {
        return Ok(());
    };
    let bytes = std::fs::read(config).map_err(|e| StoreError::io(config.display(), e))?;
    let Ok(facts) = colo_model::ModelFacts::from_config(&bytes) else {
        return Ok(());
    };
    let mut shapes = std::collections::BTreeMap::new();
    for (_, abs) in files.iter().filter(|(rel, _)| rel.ends_with(".safetensors")) {
        let mut file = std::fs::File::open(abs).map_err(|e| StoreError::io(abs.display(), e))?;
        let size = file.metadata().map_err(|e| StoreError::io(abs.display(), e))?.len();
        let fail = |source| StoreError::Safetensors {
            path: abs.display().to_string(),
            source,
        };
        let mut prefix = [0u8; 8];
        let n = file.read(&mut prefix).map_err(|e| StoreError::io(abs.display(), e))?;
        let mut header = vec![0u8; safetensors::header_len(&prefix[..n], size).map_err(fail)? as usize];
        file.read_exact(&mut header).map_err(|e| StoreError::io(abs.display(), e))?;
        shapes.extend(safetensors::tensor_shapes(&header).map_err(fail)?);
    }
    let wrong = facts.contradictions(&shapes);
    if wrong.is_empty() {
        return Ok(());
    }
    Err(StoreError::BadDir {
        dir: dir.display().to_string(),
        reason: format!("config.json contradicts the weights: {}", wrong.join("; ")),
    })
}

fn check_safetensors(abs: &Path, file: &mut std::fs::File, size: u64) -> Result<safetensors::HeaderSummary, StoreError> {
    let fail = |source| StoreError::Safetensors {
        path: abs.display().to_string(),
        source,
    };
    let mut prefix = [0u8; 8];
    let n = file.read(&mut prefix).map_err(|e| StoreError::io(abs.display(), e))?;
    let header_len = safetensors::header_len(&prefix[..n], size).map_err(fail)?;
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| StoreError::io(abs.display(), e))?;
    safetensors::parse_header(&header, size).map_err(fail)
}

/// Reads the GGUF file at `path`'s header and validates it (`colo plan` on a local file).
pub fn gguf_header(path: &Path) -> Result<colo_model::GgufSummary, StoreError> {
    let mut file = std::fs::File::open(path).map_err(|e| StoreError::io(path.display(), e))?;
    let size = file.metadata().map_err(|e| StoreError::io(path.display(), e))?.len();
    check_gguf(path, &mut file, size)
}

/// Reads a GGUF file's header, more of the file each time the parser asks for more (headers
/// carry the tokenizer, a few MB), and validates it.
fn check_gguf(abs: &Path, file: &mut std::fs::File, size: u64) -> Result<colo_model::GgufSummary, StoreError> {
    let fail = |source| StoreError::Gguf {
        path: abs.display().to_string(),
        source,
    };
    let mut prefix = Vec::new();
    let mut want = size.min(1 << 20);
    loop {
        let have = prefix.len() as u64;
        (&mut *file)
            .take(want - have)
            .read_to_end(&mut prefix)
            .map_err(|e| StoreError::io(abs.display(), e))?;
        match colo_model::gguf::parse(&prefix, size) {
            Ok(parsed) => return Ok(parsed.summary),
            // The parser asks only for bytes inside the file and its header limit, so this grows.
            Err(colo_model::GgufError::NeedBytes { at_least, .. }) if at_least > prefix.len() as u64 => {
                want = at_least.max(want.saturating_mul(2)).min(size);
            }
            Err(e) => return Err(fail(e)),
        }
    }
}

/// Uploads one file, skipping it when an object of the same size is already there (the
/// revision in the path pins the content, so same path and size means same bytes).
async fn upload_file(store: &Store, abs: &Path, target: &object_store::path::Path, progress: Progress) -> Result<u64, StoreError> {
    let size = std::fs::metadata(abs).map_err(|e| StoreError::io(abs.display(), e))?.len();
    if let Ok(meta) = store.objects().head(target).await {
        if meta.size == size {
            progress(size);
            return Ok(0);
        }
    }
    let upload = store
        .objects()
        .put_multipart(target)
        .await
        .map_err(|e| StoreError::object(target, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024);
    let mut file = std::fs::File::open(abs).map_err(|e| StoreError::io(abs.display(), e))?;
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| StoreError::io(abs.display(), e))?;
        if n == 0 {
            break;
        }
        writer.wait_for_capacity(4).await.map_err(|e| StoreError::object(target, e))?;
        writer.write(&buf[..n]);
        progress(n as u64);
    }
    writer.finish().await.map_err(|e| StoreError::object(target, e))?;
    Ok(size)
}
