//! The object-storage port: what a workflow reads and writes, implemented by the native
//! stores (a local folder, S3/R2) and by the edge's R2 binding.

use crate::queue::MaybeSendSync;

/// What reading an object found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The object's bytes (decompressed when stored compressed).
    Found(Vec<u8>),
    /// No object under that key.
    Missing,
    /// The key is not one this store accepts (a row written by a bug or by hand).
    BadKey(String),
}

/// An object to write: its bytes, content type and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewObject<'a> {
    /// Where.
    pub key: &'a str,
    /// What.
    pub bytes: Vec<u8>,
    /// Its content type (what downloads answer with).
    pub content_type: &'a str,
    /// Custom metadata (a sha256, the compression, the tier).
    pub meta: &'a [(&'static str, String)],
}

/// Object storage: the local folder or S3/R2 natively, the R2 binding on the edge.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait ObjectStore: MaybeSendSync {
    /// Reads the object at `key`; `Err` when the store could not answer (retry).
    async fn get(&self, key: &str) -> Result<Fetched, String>;

    /// Writes `object`; `Err` to retry.
    async fn put(&self, object: NewObject<'_>) -> Result<(), String>;

    /// Deletes the object at `key` (nothing there is not an error); `Err` to retry.
    async fn delete(&self, key: &str) -> Result<(), String>;
}
