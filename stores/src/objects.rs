//! Object storage (artifacts, uploads, exports) over the `object_store` crate: a local folder in
//! the embedded shape, any S3 API (Cloudflare R2, MinIO, AWS) in the scale-out shape, chosen by
//! [`ObjectStoreUrl`].
//!
//! # Where metadata lives
//!
//! The database is the source of truth for what an object *is*: content type, original size,
//! SHA-256, compression, tier and creation time belong to the row that owns the object (a job
//! artifact, an upload, an export partition), written in the same transaction as the rest of
//! that business record. The object store only holds bytes. Reasons:
//!
//! - the local folder cannot store attributes at all (object_store's `LocalFileSystem` refuses
//!   them), and a sidecar object per blob would double every write and could drift from its blob
//!   with no transaction to tie them;
//! - queries over metadata (the lifecycle sweeper's "artifacts older than 30 days", usage totals)
//!   need an index, which a bucket does not have;
//! - the row exists before the upload finishes, so a crash leaves a findable orphan, never an
//!   unowned object.
//!
//! Where the backend supports it (S3/R2), [`PutMeta`]'s content type and user metadata are also
//! set on the object, so presigned downloads carry the right `Content-Type` and an operator
//! browsing the bucket can see what a blob is. [`ObjectMeta`] reports them back when present;
//! nothing in the platform may depend on them.

mod bucket_lifecycle;
mod key;
mod location;

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, Stream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::signer::{Method, Signer};
use object_store::{
    Attribute, Attributes, GetOptions, GetResult, ObjectStore, ObjectStoreExt, PutMultipartOptions,
    PutOptions, PutPayload, WriteMultipart,
};
use url::Url;

pub use bucket_lifecycle::{BucketLifecycleError, LifecycleApplied};
pub use key::{InvalidObjectKey, ObjectKey};
pub use location::{ObjectStoreUrl, S3Credentials};

/// Size of each part of a streamed upload. S3 needs at least 5 MiB for every part but the last,
/// and R2 additionally needs all of them equal, which fixed-size chunking gives.
pub const PART_SIZE: usize = 5 * 1024 * 1024;

/// Parts of one streamed upload in flight at once. With one part filling, a streamed upload
/// holds at most `PART_SIZE * (PARTS_IN_FLIGHT + 1)` bytes (15 MiB) plus the caller's chunk.
pub const PARTS_IN_FLIGHT: usize = 2;

/// Object storage failures.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// No object under that key.
    #[error("object {key} not found")]
    NotFound {
        /// The key that was asked for.
        key: ObjectKey,
    },
    /// A key failed validation.
    #[error(transparent)]
    InvalidKey(#[from] InvalidObjectKey),
    /// The store URL cannot be used.
    #[error("invalid object store URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, credentials removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An S3 store was configured but no credentials were found.
    #[error(
        "no S3 credentials: set COGNOMEGA_S3_ACCESS_KEY_ID and COGNOMEGA_S3_SECRET_ACCESS_KEY \
         (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    )]
    MissingCredentials,
    /// The local folder could not be created.
    #[error("cannot create the object folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The stream given to [`Objects::put_stream`] failed; the upload was aborted.
    #[error("upload source failed: {0}")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend failed (I/O, network, refused request).
    #[error("object store: {0}")]
    Backend(#[source] object_store::Error),
}

impl ObjectError {
    /// True for [`ObjectError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, ObjectError::NotFound { .. })
    }

    fn from_backend(key: &ObjectKey, error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { .. } => ObjectError::NotFound { key: key.clone() },
            other => ObjectError::Backend(other),
        }
    }
}

/// What to record on the object itself when the backend can (S3/R2); ignored by the local folder.
/// The database row stays the source of truth (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutMeta {
    /// Served as `Content-Type` on downloads (presigned URLs included).
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-NAME`): names in lower-case ASCII, values in printable ASCII.
    pub metadata: Vec<(String, String)>,
}

impl PutMeta {
    /// Metadata with just a content type.
    pub fn content_type(content_type: impl Into<String>) -> Self {
        PutMeta {
            content_type: Some(content_type.into()),
            metadata: Vec::new(),
        }
    }

    /// Adds one user metadata entry.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((name.into(), value.into()));
        self
    }

    fn attributes(&self) -> Attributes {
        let mut attributes = Attributes::new();
        if let Some(content_type) = &self.content_type {
            attributes.insert(Attribute::ContentType, content_type.clone().into());
        }
        for (name, value) in &self.metadata {
            attributes.insert(
                Attribute::Metadata(name.clone().into()),
                value.clone().into(),
            );
        }
        attributes
    }
}

/// What the store knows about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its key.
    pub key: ObjectKey,
    /// Stored size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: DateTime<Utc>,
    /// The backend's entity tag (changes on every write), when it has one.
    pub e_tag: Option<String>,
    /// `Content-Type` recorded on the object: S3 only, and not from [`Objects::list`].
    pub content_type: Option<String>,
    /// User metadata recorded on the object, sorted by name: S3 only, not from `list`.
    pub metadata: Vec<(String, String)>,
}

impl ObjectMeta {
    fn new(key: ObjectKey, meta: object_store::ObjectMeta, attributes: &Attributes) -> Self {
        let mut metadata: Vec<(String, String)> = attributes
            .iter()
            .filter_map(|(attribute, value)| match attribute {
                Attribute::Metadata(name) => Some((name.to_string(), value.to_string())),
                _ => None,
            })
            .collect();
        metadata.sort();
        ObjectMeta {
            key,
            size: meta.size,
            last_modified: meta.last_modified,
            e_tag: meta.e_tag,
            content_type: attributes
                .get(&Attribute::ContentType)
                .map(|v| v.to_string()),
            metadata,
        }
    }
}

/// An object being read: its metadata, and its bytes as a stream.
pub struct GetObject {
    /// The object's metadata.
    pub meta: ObjectMeta,
    /// The bytes, in order.
    pub stream: BoxStream<'static, Result<Bytes, ObjectError>>,
}

impl GetObject {
    /// Collects the whole object into memory.
    pub async fn bytes(self) -> Result<Bytes, ObjectError> {
        let chunks: Vec<Bytes> = self.stream.try_collect().await?;
        match chunks.len() {
            1 => Ok(chunks.into_iter().next().unwrap_or_default()),
            _ => Ok(chunks.concat().into()),
        }
    }
}

impl fmt::Debug for GetObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetObject")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

enum Backend {
    Local {
        root: PathBuf,
    },
    S3 {
        s3: Arc<AmazonS3>,
        url: ObjectStoreUrl,
        /// For the bucket-level calls object_store does not make (the lifecycle configuration).
        credentials: S3Credentials,
    },
}

/// A handle to the configured object store; cheap to clone, shared by every task.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    backend: Arc<Backend>,
}

impl fmt::Debug for Objects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the location: the S3 client's configuration holds the credentials.
        match &*self.backend {
            Backend::Local { root } => write!(f, "Objects(file://{})", root.display()),
            Backend::S3 { url, .. } => write!(f, "Objects({url})"),
        }
    }
}

impl Objects {
    /// Opens the store at `url`, taking S3 credentials from the environment
    /// ([`S3Credentials::from_env`]).
    pub fn open(url: &ObjectStoreUrl) -> Result<Self, ObjectError> {
        match url {
            ObjectStoreUrl::Local(root) => Self::local(root.clone()),
            ObjectStoreUrl::S3 { .. } => Self::s3(url, &S3Credentials::from_env()?),
        }
    }

    /// Opens the store at `url` with explicit S3 credentials (ignored for a local folder).
    pub fn open_with_credentials(
        url: &ObjectStoreUrl,
        credentials: &S3Credentials,
    ) -> Result<Self, ObjectError> {
        match url {
            ObjectStoreUrl::Local(root) => Self::local(root.clone()),
            ObjectStoreUrl::S3 { .. } => Self::s3(url, credentials),
        }
    }

    fn local(root: PathBuf) -> Result<Self, ObjectError> {
        std::fs::create_dir_all(&root).map_err(|source| ObjectError::Folder {
            path: root.clone(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(&root)
            .map_err(ObjectError::Backend)?
            // Deleting the last object under a prefix removes the emptied folders too, so the
            // tree does not fill with empty job directories.
            .with_automatic_cleanup(true);
        Ok(Objects {
            store: Arc::new(store),
            backend: Arc::new(Backend::Local { root }),
        })
    }

    fn s3(url: &ObjectStoreUrl, credentials: &S3Credentials) -> Result<Self, ObjectError> {
        let ObjectStoreUrl::S3 {
            bucket,
            endpoint,
            region,
        } = url
        else {
            return Err(ObjectError::InvalidUrl {
                url: url.to_string(),
                reason: "not an s3:// URL".into(),
            });
        };
        // `new()`, not `from_env()`: every setting comes from the URL and the credentials given,
        // so a stray AWS_* variable cannot redirect the store.
        cognomega_core::tls::install();
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(region)
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(credentials.expose_secret());
        if let Some(endpoint) = endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let s3 = Arc::new(builder.build().map_err(ObjectError::Backend)?);
        Ok(Objects {
            store: s3.clone(),
            backend: Arc::new(Backend::S3 {
                s3,
                url: url.clone(),
                credentials: credentials.clone(),
            }),
        })
    }

    /// True if the backend records [`PutMeta`] on objects (S3), false for the local folder.
    pub fn keeps_attributes(&self) -> bool {
        matches!(*self.backend, Backend::S3 { .. })
    }

    fn attributes(&self, meta: &PutMeta) -> Attributes {
        if self.keeps_attributes() {
            meta.attributes()
        } else {
            Attributes::new()
        }
    }

    /// Writes `bytes` under `key` in one request, replacing any object already there (readers
    /// see the old or the new object, never a mix).
    pub async fn put(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        meta: &PutMeta,
    ) -> Result<(), ObjectError> {
        let options = PutOptions {
            attributes: self.attributes(meta),
            ..PutOptions::default()
        };
        self.store
            .put_opts(&key.to_path(), PutPayload::from(bytes), options)
            .await
            .map_err(|e| ObjectError::from_backend(key, e))?;
        Ok(())
    }

    /// Writes the bytes of `stream` under `key` without holding the object in memory: a stream
    /// shorter than [`PART_SIZE`] becomes one put, a longer one a multipart upload of fixed-size
    /// parts with at most [`PARTS_IN_FLIGHT`] uploading at once. If the stream or the upload
    /// fails, the upload is aborted and nothing appears under `key`. Returns the bytes written.
    pub async fn put_stream<S, E>(
        &self,
        key: &ObjectKey,
        stream: S,
        meta: &PutMeta,
    ) -> Result<u64, ObjectError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut stream = std::pin::pin!(stream);
        let mut first = Vec::new();
        let mut buffered = 0;
        while buffered < PART_SIZE {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    buffered += chunk.len();
                    first.push(chunk);
                }
                Some(Err(e)) => return Err(ObjectError::Source(e.into())),
                None => {
                    let payload = PutPayload::from_iter(first);
                    let options = PutOptions {
                        attributes: self.attributes(meta),
                        ..PutOptions::default()
                    };
                    self.store
                        .put_opts(&key.to_path(), payload, options)
                        .await
                        .map_err(|e| ObjectError::from_backend(key, e))?;
                    return Ok(buffered as u64);
                }
            }
        }
        let options = PutMultipartOptions {
            attributes: self.attributes(meta),
            ..PutMultipartOptions::default()
        };
        let upload = self
            .store
            .put_multipart_opts(&key.to_path(), options)
            .await
            .map_err(|e| ObjectError::from_backend(key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut written = buffered as u64;
        for chunk in first {
            writer.put(chunk);
        }
        loop {
            let next = match writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                Ok(()) => stream.next().await,
                Err(e) => return Err(abort(writer, ObjectError::from_backend(key, e)).await),
            };
            match next {
                Some(Ok(chunk)) => {
                    written += chunk.len() as u64;
                    writer.put(chunk);
                }
                Some(Err(e)) => return Err(abort(writer, ObjectError::Source(e.into())).await),
                // `finish` aborts the upload itself if completing it fails.
                None => break,
            }
        }
        writer
            .finish()
            .await
            .map_err(|e| ObjectError::from_backend(key, e))?;
        Ok(written)
    }

    /// Reads the object under `key` as a stream.
    pub async fn get(&self, key: &ObjectKey) -> Result<GetObject, ObjectError> {
        let result = self
            .store
            .get_opts(&key.to_path(), GetOptions::default())
            .await
            .map_err(|e| ObjectError::from_backend(key, e))?;
        Ok(into_get_object(key, result))
    }

    /// Reads the whole object under `key` into memory.
    pub async fn get_bytes(&self, key: &ObjectKey) -> Result<(ObjectMeta, Bytes), ObjectError> {
        let object = self.get(key).await?;
        let meta = object.meta.clone();
        Ok((meta, object.bytes().await?))
    }

    /// Reads bytes `range` of the object under `key` (the end is clamped to the object's size).
    pub async fn get_range(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<Bytes, ObjectError> {
        self.store
            .get_range(&key.to_path(), range)
            .await
            .map_err(|e| ObjectError::from_backend(key, e))
    }

    /// The object's metadata, or `None` if there is no object under `key`.
    pub async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, ObjectError> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.store.get_opts(&key.to_path(), options).await {
            Ok(result) => Ok(Some(ObjectMeta::new(
                key.clone(),
                result.meta,
                &result.attributes,
            ))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(ObjectError::Backend(e)),
        }
    }

    /// Deletes the object under `key`. Deleting a missing object succeeds (S3 semantics on every
    /// backend), so a retried cleanup is harmless.
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), ObjectError> {
        match self.store.delete(&key.to_path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(ObjectError::Backend(e)),
        }
    }

    /// Every object at or under `prefix` (segment-wise: `jobs/1` lists `jobs/1/…`, not
    /// `jobs/10/…`), or in the whole store for `None`, in no particular order. Objects whose
    /// names are not valid [`ObjectKey`]s (written by something else) are skipped with a warning.
    pub fn list(
        &self,
        prefix: Option<&ObjectKey>,
    ) -> BoxStream<'static, Result<ObjectMeta, ObjectError>> {
        let prefix = prefix.map(ObjectKey::to_path);
        self.store
            .list(prefix.as_ref())
            .filter_map(|item| async move {
                let meta = match item {
                    Ok(meta) => meta,
                    Err(e) => return Some(Err(ObjectError::Backend(e))),
                };
                match ObjectKey::parse(meta.location.as_ref()) {
                    Ok(key) => Some(Ok(ObjectMeta::new(key, meta, &Attributes::new()))),
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping an object that is not a valid key");
                        None
                    }
                }
            })
            .boxed()
    }

    /// [`Objects::list`] collected and sorted by key.
    pub async fn list_all(
        &self,
        prefix: Option<&ObjectKey>,
    ) -> Result<Vec<ObjectMeta>, ObjectError> {
        let mut all: Vec<ObjectMeta> = self.list(prefix).try_collect().await?;
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all)
    }

    /// Copies the object under `from` to `to`, replacing any object there. On S3 the copy keeps
    /// the source's content type and metadata.
    pub async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<(), ObjectError> {
        if from == to {
            // S3 refuses a copy onto itself; the result would be the object as it is.
            return self.must_exist(from).await;
        }
        self.store
            .copy(&from.to_path(), &to.to_path())
            .await
            .map_err(|e| ObjectError::from_backend(from, e))
    }

    /// Moves the object under `from` to `to` (e.g. into quarantine), replacing any object there.
    /// Atomic on the local folder; on S3 a copy then a delete, so a crash in between leaves both.
    pub async fn rename(&self, from: &ObjectKey, to: &ObjectKey) -> Result<(), ObjectError> {
        if from == to {
            // A copy-then-delete onto itself would delete the object.
            return self.must_exist(from).await;
        }
        self.store
            .rename(&from.to_path(), &to.to_path())
            .await
            .map_err(|e| ObjectError::from_backend(from, e))?;
        if let Backend::Local { .. } = *self.backend {
            // The local folder copies by hard link, and rename(2) between two links to one
            // file succeeds without removing the source, so after a copy a rename would leave
            // `from` behind. Removing it (a no-op after an ordinary rename) completes the move.
            self.delete(from).await?;
        }
        Ok(())
    }

    async fn must_exist(&self, key: &ObjectKey) -> Result<(), ObjectError> {
        match self.head(key).await? {
            Some(_) => Ok(()),
            None => Err(ObjectError::NotFound { key: key.clone() }),
        }
    }

    /// A URL that lets anyone holding it GET the object under `key` until `expires_in` passes
    /// (S3 SigV4 query signing, up to 7 days). `None` for the local folder, which has no URL of
    /// its own: the API serves those bytes itself. Signing is local: it does not check that the
    /// object exists.
    pub async fn presign_get(
        &self,
        key: &ObjectKey,
        expires_in: Duration,
    ) -> Result<Option<Url>, ObjectError> {
        match &*self.backend {
            Backend::Local { .. } => Ok(None),
            Backend::S3 { s3, .. } => s3
                .signed_url(Method::GET, &key.to_path(), expires_in)
                .await
                .map(Some)
                .map_err(ObjectError::Backend),
        }
    }
}

fn into_get_object(key: &ObjectKey, result: GetResult) -> GetObject {
    let meta = ObjectMeta::new(key.clone(), result.meta.clone(), &result.attributes);
    let stream = result.into_stream().map_err(ObjectError::Backend).boxed();
    GetObject { meta, stream }
}

/// Aborts a multipart upload after `error`, returning `error` (an abort failure only leaves an
/// incomplete upload behind, which the bucket's lifecycle rule expires).
async fn abort(writer: WriteMultipart, error: ObjectError) -> ObjectError {
    if let Err(abort_error) = writer.abort().await {
        tracing::warn!(error = %abort_error, "could not abort a failed multipart upload");
    }
    error
}

/// The object-storage port of the shared workflows.
#[async_trait::async_trait]
impl cognomega_core::objects::ObjectStore for Objects {
    async fn get(&self, key: &str) -> Result<cognomega_core::objects::Fetched, String> {
        let key = match ObjectKey::parse(key) {
            Ok(key) => key,
            Err(e) => return Ok(cognomega_core::objects::Fetched::BadKey(e.to_string())),
        };
        match Objects::get_bytes(self, &key).await {
            Ok((_, bytes)) => Ok(cognomega_core::objects::Fetched::Found(bytes.to_vec())),
            Err(e) if e.is_not_found() => Ok(cognomega_core::objects::Fetched::Missing),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn put(&self, object: cognomega_core::objects::NewObject<'_>) -> Result<(), String> {
        let key = ObjectKey::parse(object.key).map_err(|e| e.to_string())?;
        let meta = (object.meta.iter())
            .fold(PutMeta::content_type(object.content_type), |m, (k, v)| {
                m.with(*k, v.clone())
            });
        Objects::put(self, &key, object.bytes.into(), &meta)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        let key = ObjectKey::parse(key).map_err(|e| e.to_string())?;
        match Objects::delete(self, &key).await {
            Err(e) if !e.is_not_found() => Err(e.to_string()),
            _ => Ok(()),
        }
    }
}
