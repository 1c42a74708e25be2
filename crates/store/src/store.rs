//! Opening the object store that holds models: a local directory or any S3-compatible URL,
//! both through the `object_store` crate so every other part treats them alike.

use crate::StoreError;
use colo_model::Manifest;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::ClientConfigKey;
use object_store::ObjectStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The model store. Layout under its root:
/// `models/<name>/manifest.json` (written last, so a model is visible only when whole) and
/// `models/<name>/rev/<revision>/<file path>` for the files.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    url: String,
    /// Bytes that pulls read from this store (ranged reads of model files): the egress an
    /// operator pays for when the store is remote.
    bytes_read: Arc<AtomicU64>,
    /// How long a ranged read may go without a byte (its answer's head included) before it
    /// fails as stalled, to be read again.
    stall_timeout: std::time::Duration,
}

/// `frames`, ended by the error `stalled()` when no frame comes for `timeout`: a body that went
/// quiet fails instead of waiting out a request timeout. Nothing is read after a stall.
pub(crate) fn until_stalled<T: Send + 'static, E: Send + 'static>(
    frames: futures::stream::BoxStream<'static, Result<T, E>>,
    timeout: std::time::Duration,
    stalled: impl Fn() -> E + Send + Sync + 'static,
) -> futures::stream::BoxStream<'static, Result<T, E>> {
    use futures::StreamExt;
    let stalled = Arc::new(stalled);
    futures::stream::unfold(Some(frames), move |frames| {
        let stalled = stalled.clone();
        async move {
            let mut frames = frames?;
            match tokio::time::timeout(timeout, frames.next()).await {
                Ok(Some(frame)) => Some((frame, Some(frames))),
                Ok(None) => None,
                Err(_) => Some((Err(stalled()), None)),
            }
        }
    })
    .boxed()
}

/// A ranged read that brings no byte for this long has stalled (a link that went quiet, a
/// server stuck): it fails and is read again, rather than waiting out the request timeout.
pub const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

// === impl Store ===

impl Store {
    /// Opens `s3://bucket[/prefix]` (endpoint, region and credentials from the usual AWS
    /// environment variables: `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`) or a local directory (a path or `file://` URL), creating it.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::Url {
            url: url.to_string(),
            reason,
        };
        let inner: Arc<dyn ObjectStore> = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name after s3://".into()));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if std::env::var_os("AWS_TIMEOUT").is_none() {
                // One request is one ranged read of up to 64 MiB (see hydrate/tune.rs), streamed;
                // the client's default of 30 s would cut long reads on a slow link.
                builder = builder.with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "120s");
            }
            if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT_URL_S3")) {
                builder = builder
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_endpoint(endpoint)
                    .with_virtual_hosted_style_request(false);
            }
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
                builder = builder.with_region("us-east-1");
            }
            let s3 = builder.build().map_err(|e| bad(e.to_string()))?;
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix))
            }
        } else if url.contains("://") && !url.starts_with("file://") {
            return Err(bad("use s3://bucket/prefix, file:///path or a plain directory path".into()));
        } else {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
            // Deleting a model's last file takes its empty directories with it.
            let local = LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| bad(e.to_string()))?
                .with_automatic_cleanup(true);
            Arc::new(local)
        };
        Ok(Self {
            inner,
            url: url.to_string(),
            bytes_read: Arc::default(),
            stall_timeout: STALL_TIMEOUT,
        })
    }

    /// A store over any `object_store` implementation (an in-memory one, or one wrapped to slow
    /// or fail its reads in tests). `url` names it in messages; only `s3://` URLs stream their
    /// ranged reads.
    pub fn from_objects(inner: Arc<dyn ObjectStore>, url: &str) -> Self {
        Self {
            inner,
            url: url.to_string(),
            bytes_read: Arc::default(),
            stall_timeout: STALL_TIMEOUT,
        }
    }

    /// Bytes that pulls have read from this store through this handle and its clones.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Reads `range` of a model file, counting the bytes as egress.
    pub(crate) async fn read_range(&self, path: &ObjectPath, range: std::ops::Range<u64>) -> Result<bytes::Bytes, StoreError> {
        let bytes = self.inner.get_range(path, range).await.map_err(|e| StoreError::object(path, e))?;
        self.bytes_read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    /// This store with ranged reads failing as stalled after `timeout` without a byte.
    pub fn with_stall_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Reads `range` of a model file as its bytes arrive, counting them as egress. A local
    /// directory answers in one piece (its stream would read the file in small blocks). Each
    /// frame must come within the stall timeout; after a stall the stream ends.
    pub(crate) async fn read_range_stream(
        &self,
        path: &ObjectPath,
        range: std::ops::Range<u64>,
    ) -> Result<futures::stream::BoxStream<'static, Result<bytes::Bytes, StoreError>>, StoreError> {
        use futures::StreamExt;
        if !self.url.starts_with("s3://") {
            let bytes = self.read_range(path, range).await?;
            return Ok(futures::stream::once(async move { Ok(bytes) }).boxed());
        }
        let options = object_store::GetOptions {
            range: Some(range.into()),
            ..Default::default()
        };
        let stall = self.stall_timeout;
        let stalled = move |path: &ObjectPath| StoreError::Stalled {
            path: path.to_string(),
            secs: stall.as_secs_f64(),
        };
        let answer = tokio::time::timeout(stall, self.inner.get_opts(path, options))
            .await
            .map_err(|_| stalled(path))?
            .map_err(|e| StoreError::object(path, e))?;
        let (counter, path) = (self.bytes_read.clone(), path.clone());
        let frames = {
            let path = path.clone();
            answer
                .into_stream()
                .map(move |frame| {
                    frame.map_err(|e| StoreError::object(&path, e)).inspect(|bytes| {
                        counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    })
                })
                .boxed()
        };
        Ok(until_stalled(frames, stall, move || stalled(&path)))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    pub fn manifest_path(name: &str) -> ObjectPath {
        ObjectPath::from(format!("models/{name}/manifest.json"))
    }

    /// Every revision's manifest is kept, so machines pinned to an older push still hydrate.
    pub fn revision_manifest_path(name: &str, revision: &str) -> ObjectPath {
        ObjectPath::from(format!("models/{name}/revs/{revision}.json"))
    }

    pub fn file_path(name: &str, revision: &str, file: &str) -> ObjectPath {
        ObjectPath::from(format!("models/{name}/rev/{revision}/{file}"))
    }

    /// Reads and validates a model's latest manifest.
    pub async fn manifest(&self, name: &str) -> Result<Manifest, StoreError> {
        self.read_manifest(name, Self::manifest_path(name)).await
    }

    /// Reads the manifest of one revision of a model.
    pub async fn manifest_at(&self, name: &str, revision: &str) -> Result<Manifest, StoreError> {
        self.read_manifest(name, Self::revision_manifest_path(name, revision)).await
    }

    /// The planner's facts of a pushed model: its GGUF file's header (the largest GGUF file,
    /// for a model in several), or its config.json with the manifest's exact tensor sizes.
    pub async fn model_facts(&self, manifest: &Manifest) -> Result<colo_model::ModelFacts, StoreError> {
        let facts_error = |source| StoreError::Facts {
            model: manifest.name.clone(),
            source,
        };
        let gguf = manifest.files.iter().filter(|f| f.gguf.is_some()).max_by_key(|f| f.size);
        if let Some(summary) = gguf.and_then(|f| f.gguf.as_ref()) {
            return colo_model::ModelFacts::from_gguf(summary).map_err(facts_error);
        }
        if manifest.file("config.json").is_none() {
            return Err(StoreError::BadDir {
                dir: manifest.name.clone(),
                reason: "no config.json and no GGUF file to plan from".into(),
            });
        }
        let path = Self::file_path(&manifest.name, &manifest.revision, "config.json");
        let read = |e: object_store::Error| StoreError::Internal(format!("reading {path}: {e}"));
        let config = self.objects().get(&path).await.map_err(read)?.bytes().await.map_err(read)?;
        let headers: Vec<_> = manifest.files.iter().filter_map(|f| f.safetensors.clone()).collect();
        let facts = colo_model::ModelFacts::from_config(&config).map_err(facts_error)?;
        if headers.is_empty() {
            return Ok(facts);
        }
        facts.with_tensors(&headers, colo_model::FactsSource::Manifest).map_err(facts_error)
    }

    async fn read_manifest(&self, name: &str, path: ObjectPath) -> Result<Manifest, StoreError> {
        let bytes = match self.inner.get(&path).await {
            Ok(result) => result.bytes().await.map_err(|e| StoreError::object(&path, e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::NotFound {
                    name: name.to_string(),
                    path: path.to_string(),
                })
            }
            Err(e) => return Err(StoreError::object(&path, e)),
        };
        Manifest::from_json(&bytes).map_err(|source| StoreError::Manifest {
            name: name.to_string(),
            source,
        })
    }

    /// Every revision of model `name` the store keeps, oldest push first.
    pub async fn revisions(&self, name: &str) -> Result<Vec<Manifest>, StoreError> {
        use futures::TryStreamExt;
        let prefix = ObjectPath::from(format!("models/{name}/revs"));
        let listed: Vec<object_store::ObjectMeta> = self
            .inner
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| StoreError::object(&prefix, e))?;
        let mut manifests = Vec::new();
        for meta in listed {
            if let Some(revision) = meta.location.filename().and_then(|f| f.strip_suffix(".json")) {
                manifests.push(self.manifest_at(name, revision).await?);
            }
        }
        manifests.sort_by_key(|m| (m.pushed_at_ms, m.revision.clone()));
        Ok(manifests)
    }

    /// Deletes one revision of model `name`, or every one (`revision` absent). When the latest
    /// goes and others stay, the newest of them becomes the latest first, so a reader never
    /// finds the latest naming a revision that is going. Returns the revisions deleted with
    /// their bytes, and the latest revision left (`None`: the model is gone).
    pub async fn remove(&self, name: &str, revision: Option<&str>) -> Result<(Vec<Manifest>, Option<String>), StoreError> {
        use futures::TryStreamExt;
        let all = self.revisions(name).await?;
        let latest = self.manifest(name).await.ok().map(|m| m.revision);
        let (going, staying): (Vec<Manifest>, Vec<Manifest>) = all
            .into_iter()
            .partition(|m| revision.is_none_or(|r| m.revision == r || m.revision.starts_with(r)));
        if revision.is_some() && going.len() > 1 {
            return Err(StoreError::AmbiguousRevision {
                name: name.to_string(),
                prefix: revision.unwrap_or_default().to_string(),
                matches: going.iter().map(|m| m.revision.clone()).collect(),
            });
        }
        if going.is_empty() {
            return Err(StoreError::NotFound {
                name: name.to_string(),
                path: match revision {
                    Some(r) => Self::revision_manifest_path(name, r).to_string(),
                    None => Self::manifest_path(name).to_string(),
                },
            });
        }
        let put = |path: ObjectPath, manifest: &Manifest| {
            let payload = object_store::PutPayload::from(manifest.to_json());
            async move { self.inner.put(&path, payload).await.map_err(|e| StoreError::object(&path, e)) }
        };
        let delete = |path: ObjectPath| async move {
            match self.inner.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(StoreError::object(&path, e)),
            }
        };
        let left = match staying.last() {
            Some(newest) if latest.as_ref().is_none_or(|l| going.iter().any(|g| &g.revision == l)) => {
                put(Self::manifest_path(name), newest).await?;
                Some(newest.revision.clone())
            }
            Some(_) => latest,
            None => {
                delete(Self::manifest_path(name)).await?;
                None
            }
        };
        for manifest in &going {
            delete(Self::revision_manifest_path(name, &manifest.revision)).await?;
            let files = ObjectPath::from(format!("models/{name}/rev/{}", manifest.revision));
            let listed: Vec<object_store::ObjectMeta> = self
                .inner
                .list(Some(&files))
                .try_collect()
                .await
                .map_err(|e| StoreError::object(&files, e))?;
            for meta in listed {
                delete(meta.location).await?;
            }
        }
        Ok((going, left))
    }

    /// Names of the models whose manifest is present.
    pub async fn models(&self) -> Result<Vec<String>, StoreError> {
        let prefix = ObjectPath::from("models");
        let listing = self
            .inner
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| StoreError::object(&prefix, e))?;
        let mut names = Vec::new();
        for dir in listing.common_prefixes {
            let Some(name) = dir.parts().last().map(|p| p.as_ref().to_string()) else {
                continue;
            };
            if self.inner.head(&Self::manifest_path(&name)).await.is_ok() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}
