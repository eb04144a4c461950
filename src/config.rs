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
    /// Object storage: `DATA_DIR/objects` unless configured.
    pub objects_url: cognomega_stores::objects::ObjectStoreUrl,
}

impl StorageConfig {
    /// Uses `database_url` when given, else the SQLite file inside `data_dir`, creating the
    /// directory and its `objects/` folder.
    pub fn resolve(data_dir: &Path, database_url: Option<&str>) -> anyhow::Result<Self> {
        Self::resolve_with_objects(data_dir, database_url, None)
    }

    /// Like [`StorageConfig::resolve`], with an object store URL (`file:///…`, a folder, or
    /// `s3://bucket?endpoint=…&region=auto`).
    pub fn resolve_with_objects(
        data_dir: &Path,
        database_url: Option<&str>,
        objects_url: Option<&str>,
    ) -> anyhow::Result<Self> {
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
        let objects_url = match objects_url {
            Some(url) => cognomega_stores::objects::ObjectStoreUrl::parse(url)?,
            None => {
                let dir = data_dir.join("objects");
                let dir = if dir.is_absolute() {
                    dir
                } else {
                    std::env::current_dir()?.join(dir)
                };
                cognomega_stores::objects::ObjectStoreUrl::Local(dir)
            }
        };
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            database_url,
            objects_url,
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
    /// Tokens, admin key, billing, CORS, uploads.
    pub api: cognomega_producers::ApiConfig,
    /// The virus scanner, if configured.
    pub clamd: Option<cognomega_stores::clamd::Clamd>,
    /// Periodic schedules this process may lead (with the consumers); `None` runs no scheduler.
    pub schedules: Option<Vec<cognomega_core::schedule::Schedule>>,
    /// The lifecycle policy the in-process sweeper enforces.
    pub lifecycle: std::sync::Arc<cognomega_r2_lifecycle::policy::Policy>,
}

/// The optional config file (TOML): `--config FILE`, else `DATA_DIR/cognomega.toml` when it
/// exists. Its model, with every table and default, is `cognomega_core::settings::ConfigFile`
/// (the edge reads the same file from `COGNOMEGA_CONFIG_TOML`).
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    /// What the file says.
    pub file: cognomega_core::settings::ConfigFile,
    /// The file this came from (none: the defaults).
    pub path: Option<PathBuf>,
}

impl FileConfig {
    /// Reads `explicit` (which must exist), else `data_dir/cognomega.toml` if present, else the
    /// defaults.
    pub fn load(explicit: Option<&Path>, data_dir: &Path) -> anyhow::Result<Self> {
        let implicit = data_dir.join("cognomega.toml");
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None if implicit.is_file() => implicit,
            None => return Ok(Self::default()),
        };
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read the config file {}; fix the path given to --config (COGNOMEGA_CONFIG)",
                path.display()
            )
        })?;
        let file = cognomega_core::settings::ConfigFile::parse(&text)
            .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?;
        Ok(Self {
            file,
            path: Some(path),
        })
    }

    /// The default rate limits with this file's entries, and its on/off switch unless
    /// `switch` (`--rate-limits`, `COGNOMEGA_RATE_LIMITS`) says otherwise.
    pub fn rate_limits(
        &self,
        switch: Option<bool>,
    ) -> anyhow::Result<cognomega_core::limits::RateLimits> {
        self.file
            .rate_limits(switch)
            .with_context(|| self.invalid("rate limit"))
    }

    /// The default cost guards with this file's tiers replacing theirs.
    #[must_use]
    pub fn cost_guards(&self) -> cognomega_core::limits::CostGuards {
        self.file.cost_guards()
    }

    fn invalid(&self, what: &str) -> String {
        match &self.path {
            Some(p) => format!("invalid {what} in the config file {}", p.display()),
            None => format!("invalid built-in {what}"),
        }
    }

    /// The built-in schedules with this file's overrides, checked.
    pub fn schedules(&self) -> anyhow::Result<Vec<cognomega_core::schedule::Schedule>> {
        cognomega_core::schedule::resolve(&self.file.schedules)
            .with_context(|| self.invalid("schedule"))
    }
}

/// The lifecycle policy: the defaults, with `file` (`--lifecycle-policy` /
/// `COGNOMEGA_LIFECYCLE_POLICY`, JSON or TOML) layered over them.
pub fn lifecycle_policy(
    file: Option<&Path>,
) -> anyhow::Result<cognomega_r2_lifecycle::policy::Policy> {
    Ok(match file {
        Some(path) => cognomega_r2_lifecycle::policy::Policy::from_file(path)?,
        None => cognomega_r2_lifecycle::policy::Policy::default(),
    })
}

/// The admin key: the configured one, else the one stored in `data_dir/admin-key`, else a new
/// random key written there (readable by the owner only) and logged once with where to find it.
pub fn resolve_admin_key(
    data_dir: &Path,
    configured: Option<&str>,
) -> anyhow::Result<cognomega_producers::Secret> {
    if let Some(key) = configured.map(str::trim).filter(|k| !k.is_empty()) {
        return Ok(cognomega_producers::Secret::new(key));
    }
    let path = data_dir.join("admin-key");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if !existing.is_empty() {
            return Ok(cognomega_producers::Secret::new(existing));
        }
    }
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    write_private(&path, &key)
        .with_context(|| format!("cannot write the admin key to {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated an admin key (X-Admin-Key); set COGNOMEGA_ADMIN_KEY to choose your own");
    Ok(cognomega_producers::Secret::new(key))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cognomega_core::auth::Tier;
    use cognomega_core::limits::RouteClass;

    fn file(text: &str) -> anyhow::Result<FileConfig> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cognomega.toml");
        std::fs::write(&path, text)?;
        FileConfig::load(Some(&path), dir.path())
    }

    #[test]
    fn rate_limits_and_cost_guards_come_from_the_file_and_the_switch_wins() -> anyhow::Result<()> {
        let config = file(
            "[rate_limits]\nenabled = false\n[rate_limits.pro.jobs]\nrate = 2.5\nburst = 9\n\
             [cost_guards.member]\njob_runs_per_hour = 7\n",
        )?;
        let limits = config.rate_limits(None)?;
        assert!(!limits.enabled);
        let jobs = limits.rate(Tier::Pro, RouteClass::Jobs);
        assert_eq!((jobs.rate, jobs.burst), (2.5, 9));
        assert!(
            config.rate_limits(Some(true))?.enabled,
            "--rate-limits on wins"
        );
        let guards = config.cost_guards();
        assert_eq!(guards.member.job_runs_per_hour, Some(7));
        assert_eq!(guards.member.tokens_per_day, None);
        assert_eq!(
            guards.guest,
            cognomega_core::limits::CostGuards::default().guest,
            "tiers the file leaves out keep their defaults"
        );
        Ok(())
    }

    #[test]
    fn bad_entries_name_the_file() -> anyhow::Result<()> {
        let bad = file("[rate_limits.member.admin]\nrate = 1.0\n")?;
        let err = format!("{:#}", bad.rate_limits(None).expect_err("refused"));
        assert!(
            err.contains("cognomega.toml") && err.contains("rate_limits.member.admin"),
            "{err}"
        );
        assert!(file("[rate_limits.guest.writes]\nrate = 1.0\n").is_err());
        assert!(file("[cost_guards.guest]\njobs_per_day = 1\n").is_err());
        Ok(())
    }
}
