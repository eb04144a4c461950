//! Where data lives and how the platform is reached. Defaults → environment (`COGNOMEGA_*`) →
//! command-line flags (clap resolves the last two).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cognomega_stores::DatabaseUrl;

/// The default data directory of the embedded shape, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "cognomega-data";
/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// Resolved storage configuration.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Holds the SQLite file (embedded shape) and the objects folder.
    pub data_dir: PathBuf,
    /// The relational store.
    pub database_url: DatabaseUrl,
}

impl StorageConfig {
    /// Uses `database_url` when given, else the SQLite file inside `data_dir`, creating the
    /// directory and its `objects/` folder.
    pub fn resolve(data_dir: &Path, database_url: Option<&str>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir.join("objects")).with_context(|| {
            format!(
                "cannot create the data directory {}; pass --data-dir to put it elsewhere",
                data_dir.display()
            )
        })?;
        let database_url = match database_url {
            Some(url) => DatabaseUrl::parse(url)?,
            None => DatabaseUrl::sqlite_file(&data_dir.join("cognomega.db")),
        };
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            database_url,
        })
    }
}

/// Resolved server configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Storage.
    pub storage: StorageConfig,
    /// Where the HTTP API listens (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Run the consumers in this process too (the embedded default).
    pub consumers: bool,
}
