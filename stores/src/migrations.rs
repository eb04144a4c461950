//! The SQL migrations of both backends, compiled into the binary.
//!
//! `sqlx::migrate!` would do the same, but it lives in sqlx's `macros` feature, whose
//! proc-macro crate builds a second copy of sqlx, its drivers and the bundled SQLite for the
//! host: minutes of every cold build for one list of files. The list below is checked against
//! the folders by a test, so a new migration file cannot be forgotten.

use std::borrow::Cow;

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// One backend's migrations: `(file name, SQL)` in version order.
type Files = &'static [(&'static str, &'static str)];

/// Both backends' migrations, one list of names: each backend's folder holds a file of each
/// name, written in its dialect.
macro_rules! migrations {
    ($($name:literal),+ $(,)?) => {
        /// `migrations/sqlite`.
        pub(crate) const SQLITE: Files =
            &[$(($name, include_str!(concat!("../../migrations/sqlite/", $name)))),+];
        /// `migrations/postgres`.
        pub(crate) const POSTGRES: Files =
            &[$(($name, include_str!(concat!("../../migrations/postgres/", $name)))),+];
    };
}

migrations!(
    "0001_queue.sql",
    "0002_probe.sql",
    "0003_billing.sql",
    "0004_jobs.sql",
    "0005_uploads.sql",
    "0006_exports.sql",
    "0007_lifecycle.sql",
    "0008_schedules.sql",
    "0009_ledger_chain.sql",
    "0010_rate_limits.sql",
    "0011_usage_day_tokens.sql",
    "0012_ask_replays.sql",
    "0013_outbox.sql",
    "0014_job_lease.sql",
    "0015_voice_sessions.sql",
);

/// Embedded files as a migration source, read as sqlx reads a folder: `<VERSION>_<DESCRIPTION>.sql`,
/// underscores in the description read as spaces, `-- no-transaction` on the first line runs
/// the file outside a transaction. The checksum is sqlx's (SHA-384 of the SQL), so databases
/// migrated by `sqlx::migrate!` or `sqlx migrate run` validate unchanged.
#[derive(Debug, Clone, Copy)]
struct Embedded(Files);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move { parse(self.0) })
    }
}

fn parse(files: Files) -> Result<Vec<Migration>, BoxDynError> {
    let mut out = Vec::with_capacity(files.len());
    for (name, sql) in files {
        let stem = name
            .strip_suffix(".sql")
            .ok_or_else(|| format!("migration {name} does not end in .sql"))?;
        let (version, description) = stem
            .split_once('_')
            .ok_or_else(|| format!("migration {name} is not VERSION_DESCRIPTION.sql"))?;
        let version: i64 = version
            .parse()
            .map_err(|e| format!("migration {name}: version {version:?}: {e}"))?;
        out.push(Migration::new(
            version,
            Cow::Owned(description.replace('_', " ")),
            MigrationType::Simple,
            Cow::Borrowed(*sql),
            sql.starts_with("-- no-transaction"),
        ));
    }
    out.sort_by_key(|m| m.version);
    Ok(out)
}

/// The migrator of one backend's embedded files.
pub(crate) async fn migrator(files: Files) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Embedded(files)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(dir: &str) -> Vec<(String, String)> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../migrations")
            .join(dir);
        let mut files: Vec<(String, String)> = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .map(|n| {
                let sql = std::fs::read_to_string(path.join(&n)).unwrap_or_default();
                (n, sql)
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_migration_file_is_embedded() {
        for (dir, files) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let embedded: Vec<(String, String)> = files
                .iter()
                .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
                .collect();
            assert_eq!(
                embedded,
                folder(dir),
                "migrations/{dir} and stores/src/migrations.rs differ: list every file there"
            );
        }
    }

    #[test]
    fn parsed_as_sqlx_parses_a_folder() {
        for (dir, files) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../migrations")
                .join(dir);
            let mut from_folder: Vec<Migration> = sqlx::migrate::resolve_blocking(&path)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(|(m, _)| m)
                .collect();
            from_folder.sort_by_key(|m| m.version);
            let embedded = parse(files).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(embedded.len(), from_folder.len());
            for (a, b) in embedded.iter().zip(&from_folder) {
                assert_eq!(
                    (a.version, &a.description, &a.checksum, a.no_tx),
                    (b.version, &b.description, &b.checksum, b.no_tx),
                    "{dir}: migration {}",
                    a.version
                );
            }
        }
    }
}
