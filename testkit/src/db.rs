//! Throwaway databases: a fresh SQLite file in a temp dir, or a fresh PostgreSQL database that
//! is dropped again when the test ends.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use cognomega_stores::{Database, DatabaseUrl};
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

/// Where the PostgreSQL admin URL comes from: a role allowed to create and drop databases.
pub const PG_URL_ENV: &str = "COGNOMEGA_TEST_PG_URL";

/// The server `ops/services.sh` starts.
const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Prefix of every database the harness creates, so a leftover one is recognisable.
const PG_DB_PREFIX: &str = "cognomega_t_";

/// How long teardown waits for the pool to close gracefully. A connection still checked out
/// (a listener task the test left running) would hold it forever; the database is dropped
/// `WITH (FORCE)` afterwards anyway, so waiting longer buys nothing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A relational backend that tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// Every backend, for suites that loop over them.
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        })
    }
}

/// A migrated database that belongs to one test; dropping it removes everything it created.
#[derive(Debug)]
pub struct TestDb {
    backend: Backend,
    db: Database,
    url: DatabaseUrl,
    dir: TempDir,
    /// Declared after `db` so the pool is dropped before the scratch database goes away.
    _scratch: Option<PgScratch>,
}

impl TestDb {
    /// Creates and migrates a fresh database on `backend`.
    ///
    /// # Panics
    /// When PostgreSQL is requested and its admin server cannot be reached: such a test means
    /// nothing without it, and the message says how to fix the setup.
    pub async fn new(backend: Backend) -> anyhow::Result<TestDb> {
        crate::init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("cognomega-test-")
            .tempdir()?;
        match backend {
            Backend::Sqlite => {
                let url = DatabaseUrl::sqlite_file(&dir.path().join("cognomega.db"));
                let db = Database::open(&url).await?;
                Ok(TestDb {
                    backend,
                    db,
                    url,
                    dir,
                    _scratch: None,
                })
            }
            Backend::Postgres => {
                let mut scratch = PgScratch::create().await?;
                let url = scratch.url()?;
                let db = Database::open(&url).await?;
                if let Database::Postgres(pg) = &db {
                    scratch.pool = Some(pg.pool.clone());
                }
                Ok(TestDb {
                    backend,
                    db,
                    url,
                    dir,
                    _scratch: Some(scratch),
                })
            }
        }
    }

    /// The backend this database runs on.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The open, migrated database.
    #[must_use]
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Its URL, e.g. to start a second process or a second `Database` on the same data.
    #[must_use]
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// A private directory for the test (holds `cognomega.db` on SQLite; on every backend a
    /// place for object storage and other files). Removed with the `TestDb`.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A database created on the admin server for one test, dropped on `Drop`.
#[derive(Debug)]
struct PgScratch {
    admin: DatabaseUrl,
    name: String,
    /// The test's pool, closed before the database is dropped. Only the pool: holding the
    /// whole `Database` would keep the queue's LISTEN task (and its connection) alive, so the
    /// close would wait for a connection that never comes back.
    pool: Option<PgPool>,
}

impl PgScratch {
    async fn create() -> anyhow::Result<PgScratch> {
        let raw = std::env::var(PG_URL_ENV).unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
        let admin = DatabaseUrl::parse(&raw)?;
        let name = format!("{PG_DB_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin_connection(&admin).await;
        // The name is ours (prefix + hex), so splicing it into the statement is safe; DDL
        // takes no bind parameters.
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(PgScratch {
            admin,
            name,
            pool: None,
        })
    }

    fn url(&self) -> anyhow::Result<DatabaseUrl> {
        Ok(DatabaseUrl::parse(&with_database(
            self.admin.expose(),
            &self.name,
        ))?)
    }
}

impl Drop for PgScratch {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = std::mem::take(&mut self.name);
        let pool = self.pool.take();
        // Drop cannot await, and blocking the test's runtime from inside it would deadlock a
        // current-thread runtime: tear down on a thread with a runtime of its own.
        let teardown = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("testkit: cannot build a runtime to drop database {name}: {e}");
                    return;
                }
            };
            rt.block_on(async {
                if let Some(pool) = pool {
                    let _ = tokio::time::timeout(CLOSE_GRACE, pool.close()).await;
                }
                if let Err(e) = drop_database(&admin, &name).await {
                    eprintln!("testkit: could not drop test database {name}: {e}");
                }
            });
        });
        let _ = teardown.join();
    }
}

async fn drop_database(admin: &DatabaseUrl, name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(admin.expose()).await?;
    // FORCE ends sessions the test left behind (a listener, a leaked transaction).
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

async fn admin_connection(admin: &DatabaseUrl) -> PgConnection {
    match PgConnection::connect(admin.expose()).await {
        Ok(conn) => conn,
        Err(e) => panic!(
            "PostgreSQL is unreachable at {admin} ({e}): start it with ops/services.sh \
             or set {PG_URL_ENV} to a server where this role may create databases"
        ),
    }
}

/// `url` with its database (the path) replaced by `name`, keeping credentials and query.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
        assert_eq!(
            with_database("postgresql://h/?a=b", "x"),
            "postgresql://h/x?a=b"
        );
    }

    #[test]
    fn backends_display_their_names() {
        let names: Vec<String> = Backend::ALL.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["sqlite", "postgres"]);
    }
}
