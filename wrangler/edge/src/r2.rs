//! Writes to R2: every object the edge stores carries its content type (what `/files/…` and the
//! artifact routes answer with) and, for some, custom metadata (a file's SHA-256, a tier).

use std::collections::HashMap;

use cognomega_core::objects::{Fetched, NewObject, ObjectStore};
use worker::{Bucket, Data, Env, HttpMetadata};

/// Puts `value` under `key` with `content_type` and optional custom metadata.
pub async fn put(
    bucket: &Bucket,
    key: &str,
    value: impl Into<Data>,
    content_type: &str,
    meta: Option<HashMap<String, String>>,
) -> worker::Result<()> {
    let mut put = bucket.put(key, value).http_metadata(HttpMetadata {
        content_type: Some(content_type.to_owned()),
        ..HttpMetadata::default()
    });
    if let Some(meta) = meta {
        put = put.custom_metadata(meta);
    }
    put.execute().await.map(drop)
}

/// The bytes of the object under `key`; `None` when there is none.
pub async fn get_bytes(bucket: &Bucket, key: &str) -> worker::Result<Option<Vec<u8>>> {
    let Some(object) = bucket.get(key).execute().await? else {
        return Ok(None);
    };
    let body = object
        .body()
        .ok_or_else(|| worker::Error::RustError(format!("R2 object {key} has no body")))?;
    Ok(Some(body.bytes().await?))
}

/// The `OBJECTS` bucket as the shared workflows' object store (bound when first used: a
/// Worker without the binding fails only where it touches objects).
pub struct Objects(Env);

impl Objects {
    /// The Worker's `OBJECTS` binding.
    pub fn of(env: &Env) -> Self {
        Self(env.clone())
    }

    fn bucket(&self) -> Result<Bucket, String> {
        self.0.bucket("OBJECTS").map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait(?Send)]
impl ObjectStore for Objects {
    async fn get(&self, key: &str) -> Result<Fetched, String> {
        let bytes = get_bytes(&self.bucket()?, key).await;
        Ok(bytes
            .map_err(|e| e.to_string())?
            .map_or(Fetched::Missing, Fetched::Found))
    }

    async fn put(&self, object: NewObject<'_>) -> Result<(), String> {
        let meta = (object.meta.iter())
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let (key, ct) = (object.key, object.content_type);
        put(&self.bucket()?, key, object.bytes, ct, Some(meta))
            .await
            .map_err(|e| e.to_string())
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        self.bucket()?.delete(key).await.map_err(|e| e.to_string())
    }
}
