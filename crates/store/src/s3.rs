//! A read-only S3-compatible endpoint over the host cache, so an engine that reads weights
//! from S3 (vLLM's S3 loaders, boto3) reads them at local disk speed.
//!
//! Keys are `<model>/<revision>/<file path>` in one bucket (`revision` may be `latest`).
//! GetObject (with ranges), HeadObject and ListObjectsV2 are answered; a key of a model that is
//! not cached yet falls through to the origin store: the model is pulled into the cache (one
//! pull, shared with machines that start meanwhile) and the range is served as soon as the
//! file's verified prefix covers it.

use crate::{no_progress, HostCache, HydrateOptions, Store, StoreError};
use colo_model::{FileEntry, Manifest};
use s3s::dto::{
    Bucket, CommonPrefix, ETag, GetObjectInput, GetObjectOutput, HeadObjectInput, HeadObjectOutput, ListBucketsInput, ListBucketsOutput,
    ListObjectsV2Input, ListObjectsV2Output, Object, StreamingBlob, Timestamp,
};
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};
use std::collections::BTreeSet;
use std::time::{Duration, UNIX_EPOCH};

/// The S3 view of one host's cache.
pub struct CacheS3 {
    cache: HostCache,
    store: Store,
    bucket: String,
    opts: HydrateOptions,
}

/// What to serve and how clients sign their requests.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// The one bucket name the endpoint answers to.
    pub bucket: String,
    /// Credentials clients sign with (SigV4); the endpoint is read-only either way.
    pub access_key: String,
    pub secret_key: String,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: "colo".into(),
            access_key: "colo".into(),
            secret_key: "colo-secret".into(),
        }
    }
}

/// Serves the cache over S3 on `listener` until the task is dropped.
pub async fn serve_s3(
    listener: tokio::net::TcpListener,
    cache: HostCache,
    store: Store,
    opts: HydrateOptions,
    config: S3Config,
) -> std::io::Result<()> {
    let endpoint = CacheS3 {
        cache,
        store,
        bucket: config.bucket,
        opts,
    };
    let mut builder = s3s::service::S3ServiceBuilder::new(endpoint);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(config.access_key, config.secret_key));
    builder.set_access(ReadOnly);
    let service = builder.build();
    let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let conn = http
            .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "s3 connection ended");
            }
        });
    }
}

/// Lets signed reads through and refuses every write, saying why: the endpoint serves the host
/// cache, and models reach the store through `colo model push`.
struct ReadOnly;

#[async_trait::async_trait]
impl s3s::access::S3Access for ReadOnly {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_none() {
            return Err(s3_error!(AccessDenied, "a signed request is required"));
        }
        match cx.s3_op().name() {
            "GetObject" | "HeadObject" | "ListObjects" | "ListObjectsV2" | "ListBuckets" | "HeadBucket" | "GetBucketLocation" => Ok(()),
            op => Err(s3_error!(
                AccessDenied,
                "{op} is refused: this endpoint serves the host cache read-only (models go into the store with colo model push)"
            )),
        }
    }
}

/// Splits `<model>/<revision>/<path>`.
fn split_key(key: &str) -> Option<(&str, &str, &str)> {
    let mut parts = key.splitn(3, '/');
    let (model, revision, path) = (parts.next()?, parts.next()?, parts.next()?);
    (crate::cache::valid_component(model) && crate::cache::valid_component(revision) && !path.is_empty()).then_some((model, revision, path))
}

fn etag(entry: &FileEntry) -> ETag {
    let mut hasher = blake3::Hasher::new();
    for chunk in &entry.chunks {
        hasher.update(chunk.as_bytes());
    }
    ETag::Strong(hasher.finalize().to_hex()[..32].to_string())
}

fn pushed_at(manifest: &Manifest) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(manifest.pushed_at_ms))
}

/// An error of this endpoint's own (its log keeps it: s3s's logging is off, as it would log
/// every client's mistake too).
fn internal(e: impl std::fmt::Display) -> s3s::S3Error {
    tracing::warn!(error = %e, "the S3 endpoint failed a read");
    s3_error!(InternalError, "{e}")
}

// === impl CacheS3 ===

impl CacheS3 {
    fn check_bucket(&self, bucket: &str) -> S3Result<()> {
        if bucket == self.bucket {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket, "this endpoint serves only bucket {:?}", self.bucket))
        }
    }

    /// The manifest of a model revision: the cache's copy when complete, else the origin's.
    async fn manifest(&self, model: &str, revision: &str) -> S3Result<Option<Manifest>> {
        if revision != "latest" {
            if let Some(manifest) = self.cache.cached_manifest(model, revision) {
                return Ok(Some(manifest));
            }
        }
        let found = if revision == "latest" {
            self.store.manifest(model).await
        } else {
            self.store.manifest_at(model, revision).await
        };
        match found {
            Ok(manifest) => Ok(Some(manifest)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(internal(e)),
        }
    }

    async fn lookup(&self, key: &str) -> S3Result<(Manifest, FileEntry)> {
        let (model, revision, path) = split_key(key).ok_or_else(|| s3_error!(NoSuchKey))?;
        let manifest = self.manifest(model, revision).await?.ok_or_else(|| s3_error!(NoSuchKey))?;
        let entry = manifest.file(path).cloned().ok_or_else(|| s3_error!(NoSuchKey))?;
        Ok((manifest, entry))
    }

    /// Keys (with sizes) of one manifest's files under `<model>/<revision label>/`.
    fn keys_of(manifest: &Manifest, label: &str, out: &mut Vec<(String, u64, Manifest)>) {
        for file in &manifest.files {
            out.push((format!("{}/{label}/{}", manifest.name, file.path), file.size, manifest.clone()));
        }
    }
}

#[async_trait::async_trait]
impl S3 for CacheS3 {
    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let (manifest, entry) = self.lookup(&input.key).await?;
        let (start, end) = match &input.range {
            None => (0, entry.size),
            Some(range) => {
                let r = range.check(entry.size).map_err(|_| s3_error!(InvalidRange))?;
                (r.start, r.end)
            }
        };
        let file = match self.cache.complete_dir(&manifest) {
            Some(dir) => {
                self.cache.touch(&manifest.name, &manifest.revision);
                std::fs::File::open(dir.join(&entry.path)).map_err(internal)?
            }
            None => {
                let pull = self.cache.pull(&self.store, &manifest, &self.opts, no_progress());
                pull.open_prefix(&entry.path, end).await.map_err(internal)?
            }
        };
        let body = crate::peer::read_blocks(std::sync::Arc::new(file), start, end);
        let output = GetObjectOutput {
            body: Some(StreamingBlob::wrap(body)),
            content_length: Some((end - start) as i64),
            content_range: input.range.map(|_| format!("bytes {start}-{}/{}", end - 1, entry.size)),
            accept_ranges: Some("bytes".into()),
            e_tag: Some(etag(&entry)),
            last_modified: Some(pushed_at(&manifest)),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let (manifest, entry) = self.lookup(&input.key).await?;
        let output = HeadObjectOutput {
            content_length: Some(entry.size as i64),
            accept_ranges: Some("bytes".into()),
            e_tag: Some(etag(&entry)),
            last_modified: Some(pushed_at(&manifest)),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn list_buckets(&self, _req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let bucket = Bucket {
            name: Some(self.bucket.clone()),
            ..Default::default()
        };
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(vec![bucket]),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let mut keys = Vec::new();
        // Every complete cached revision...
        let cache = self.cache.clone();
        let entries = tokio::task::spawn_blocking(move || cache.entries())
            .await
            .map_err(internal)?
            .map_err(internal)?;
        for entry in entries.iter().filter(|e| e.complete) {
            if let Some(manifest) = self.cache.cached_manifest(&entry.name, &entry.revision) {
                Self::keys_of(&manifest, &entry.revision, &mut keys);
            }
        }
        // ...and, when the prefix names a model revision the cache lacks, the origin's files.
        let mut parts = prefix.splitn(3, '/');
        if let (Some(model), Some(revision), Some(_)) = (parts.next(), parts.next(), parts.next()) {
            if crate::cache::valid_component(model) && crate::cache::valid_component(revision) {
                if let Some(manifest) = self.manifest(model, revision).await? {
                    if revision == "latest" || self.cache.complete_dir(&manifest).is_none() {
                        Self::keys_of(&manifest, revision, &mut keys);
                    }
                }
            }
        }
        keys.retain(|(key, ..)| key.starts_with(&prefix));
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys.dedup_by(|a, b| a.0 == b.0);
        let after = input.continuation_token.clone().or(input.start_after.clone()).unwrap_or_default();
        let max_keys = input.max_keys.unwrap_or(1000).clamp(1, 1000) as usize;

        let mut contents = Vec::new();
        let mut prefixes = BTreeSet::new();
        let mut last = None;
        let mut truncated = false;
        for (key, size, manifest) in keys
            .into_iter()
            .filter(|(key, ..)| after.is_empty() || key.as_str() > after.as_str())
        {
            let rolled = input
                .delimiter
                .as_deref()
                .filter(|d| !d.is_empty())
                .and_then(|d| key[prefix.len()..].find(d).map(|at| key[..prefix.len() + at + d.len()].to_string()));
            let is_new = match &rolled {
                Some(common) => !prefixes.contains(common),
                None => true,
            };
            if !is_new {
                continue;
            }
            if contents.len() + prefixes.len() >= max_keys {
                truncated = true;
                break;
            }
            last = Some(key.clone());
            match rolled {
                Some(common) => {
                    prefixes.insert(common);
                }
                None => {
                    let entry = manifest.file(key[manifest.name.len() + 1..].split_once('/').map(|(_, p)| p).unwrap_or(""));
                    contents.push(Object {
                        key: Some(key),
                        size: Some(size as i64),
                        e_tag: entry.map(etag),
                        last_modified: Some(pushed_at(&manifest)),
                        ..Default::default()
                    });
                }
            }
        }
        let key_count = (contents.len() + prefixes.len()) as i32;
        let output = ListObjectsV2Output {
            name: Some(self.bucket.clone()),
            prefix: Some(prefix),
            delimiter: input.delimiter,
            max_keys: Some(max_keys as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            is_truncated: Some(truncated),
            next_continuation_token: if truncated { last } else { None },
            contents: Some(contents),
            common_prefixes: Some(prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect()),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }
}

#[cfg(test)]
mod tests {
    use super::split_key;

    #[test]
    fn keys() {
        assert_eq!(split_key("m/r/a/b.json"), Some(("m", "r", "a/b.json")));
        for bad in ["m/r/", "m/r", "../r/x", "m/.colo/x", "", "m//x"] {
            assert_eq!(split_key(bad), None, "{bad}");
        }
    }
}
