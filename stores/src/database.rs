//! Connecting to the configured relational store and migrating it.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::queue::{PgQueue, PgShared, SendGroup, SqliteQueue, Tx, Wakers};

/// Errors opening or migrating a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not one we understand.
    #[error("unsupported database URL {0}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    /// Could not connect.
    #[error("cannot connect to {url}: {source}. Check that the database is running and the URL is right")]
    Connect {
        /// Redacted URL.
        url: String,
        /// Driver error.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other driver error.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// A queue operation inside a store transaction failed.
    #[error(transparent)]
    Queue(#[from] cognomega_core::queue::QueueError),
    /// A statement shared with the edge (run through the `core::sql` port) failed.
    #[error(transparent)]
    Sql(#[from] cognomega_core::sql::SqlError),
}

/// A pooled PostgreSQL connection idle at least this long is pinged before it is handed out.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Opens a SQLite write transaction that commits without an fsync; see
/// [`Database::begin_in_consumer`]. Use it through [`SqliteDb::begin_relaxed`], which has the
/// write pool reset `synchronous = FULL` when the connection comes back. `IMMEDIATE`, as every
/// transaction on the writer: it takes the write lock at once (waiting out another process's
/// write within the busy timeout), so a transaction that reads before it writes cannot fail
/// to upgrade because another process wrote in between.
pub(crate) const RELAXED_BEGIN: &str = "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE";

/// Opens a SQLite write transaction (see [`RELAXED_BEGIN`] on `IMMEDIATE`).
const BEGIN: &str = "BEGIN IMMEDIATE";

/// Opens a PostgreSQL transaction whose commit does not wait for the WAL flush
/// (`synchronous_commit = off` for this transaction only, so it holds behind a connection
/// pooler too). See [`Database::begin_in_consumer`].
pub(crate) const PG_RELAXED_BEGIN: &str = "BEGIN; SET LOCAL synchronous_commit TO off";

/// A database URL whose `Debug`/`Display` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL after checking its scheme.
    pub fn parse(raw: &str) -> Result<Self, StoreError> {
        if raw.starts_with("sqlite:")
            || raw.starts_with("postgres://")
            || raw.starts_with("postgresql://")
        {
            Ok(Self(raw.to_owned()))
        } else {
            Err(StoreError::UnsupportedUrl(redact(raw)))
        }
    }

    /// A SQLite file URL.
    #[must_use]
    pub fn sqlite_file(path: &std::path::Path) -> Self {
        Self(format!("sqlite://{}", path.display()))
    }

    /// The raw URL, secrets included: only for handing to the driver.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True for PostgreSQL.
    #[must_use]
    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres")
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`.
#[must_use]
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// The relational store: an embedded SQLite file or a PostgreSQL server.
#[derive(Debug, Clone)]
pub enum Database {
    /// Embedded default.
    Sqlite(SqliteDb),
    /// Scale-out shape.
    Postgres(PgDb),
}

/// PostgreSQL: a connection pool, plus the queue wake-up state shared by every driver handed out
/// by [`Database::queue`] (so they share one LISTEN connection).
#[derive(Debug, Clone)]
pub struct PgDb {
    /// The connection pool.
    pub pool: PgPool,
    pub(crate) queue: Arc<PgShared>,
}

impl PgDb {
    /// A queue driver sharing this database's wake-up listener and notifier.
    fn queue_driver(&self) -> PgQueue {
        PgQueue::with_shared(self.pool.clone(), self.queue.clone())
    }

    /// `tx` as a [`Tx`] whose sends wake consumers after it commits.
    fn tx(&self, tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Tx {
        Tx::Postgres {
            tx,
            wake: Vec::new(),
            queues: self.queue_driver(),
        }
    }
}

/// SQLite with one writer connection (SQLite serializes writers anyway; queueing them in the
/// pool is fairer and faster than its busy-retry loop) and a pool of readers (WAL lets readers
/// run beside the writer).
#[derive(Debug, Clone)]
pub struct SqliteDb {
    /// The single write connection.
    pub write: SqlitePool,
    /// Read-only connections.
    pub read: SqlitePool,
    pub(crate) wakers: Arc<Wakers>,
    /// Concurrent plain sends waiting to share one commit.
    pub(crate) sends: Arc<SendGroup>,
    /// Set while the write connection's holder runs with `synchronous = NORMAL`; the pool
    /// resets it to `FULL` on release only then (one trip to the connection's thread saved on
    /// every durable write).
    relaxed: Arc<AtomicBool>,
}

impl SqliteDb {
    /// `tx` as a [`Tx`] whose sends wake consumers after it commits.
    fn tx(&self, tx: sqlx::Transaction<'static, sqlx::Sqlite>) -> Tx {
        Tx::Sqlite {
            tx,
            wake: Vec::new(),
            wakers: self.wakers.clone(),
        }
    }

    /// Begins a write transaction with `begin` (one of the relaxed statements, which set
    /// `synchronous = NORMAL`), marking the connection to be made durable again on release.
    ///
    /// The mark is set once the connection is held, before the statement runs: the release
    /// of this holder, and only it, resets the connection, also when the statement fails.
    pub(crate) async fn begin_relaxed(
        &self,
        begin: &'static str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        let conn = self.write.acquire().await?;
        self.relaxed.store(true, Ordering::Release);
        sqlx::Transaction::begin(conn, Some(begin.into())).await
    }
}

impl Database {
    /// Connects (creating a SQLite file if missing). Does not migrate.
    pub async fn connect(url: &DatabaseUrl) -> Result<Self, StoreError> {
        let connect_err = |source| StoreError::Connect {
            url: url.to_string(),
            source,
        };
        if url.is_postgres() {
            let opts = PgConnectOptions::from_str(url.expose()).map_err(connect_err)?;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                // sqlx pings every connection it hands out, a whole round trip before each
                // query. A connection is already pinged when it goes back to the pool, so only
                // one that sat idle long enough for the server or the network to drop it
                // (a restart, a suspended Neon compute, an idle cut-off) is checked again.
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= PING_IF_IDLE_FOR {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_with(opts)
                .await
                .map_err(connect_err)?;
            return Ok(Self::Postgres(PgDb {
                pool,
                queue: Arc::new(PgShared::default()),
            }));
        }
        let opts = SqliteConnectOptions::from_str(url.expose())
            .map_err(connect_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Durable: a message is acked only after its commit is on disk.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-32768");
        let relaxed = Arc::new(AtomicBool::new(false));
        let reset = relaxed.clone();
        let write = SqlitePoolOptions::new()
            // Every writer goes back to the pool durable, whatever the last holder relaxed.
            .after_release(move |conn, _| {
                let was_relaxed = reset.swap(false, Ordering::AcqRel);
                Box::pin(async move {
                    if was_relaxed {
                        sqlx::Executor::execute(&mut *conn, "PRAGMA synchronous = FULL").await?;
                    }
                    Ok(true)
                })
            })
            .max_connections(1)
            .min_connections(1)
            // A local file cannot hang up: the ping sqlx sends before handing out a connection
            // would only be one more trip to the connection's thread on every write.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(60))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts.clone())
            .await
            .map_err(connect_err)?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(60))
            // Large scans (the exports) hand rows over from SQLite's thread in bigger batches:
            // the default of 50 makes the two threads wake each other every few rows.
            .connect_with(opts.read_only(true).row_buffer_size(1024))
            .await
            .map_err(connect_err)?;
        Ok(Self::Sqlite(SqliteDb {
            write,
            read,
            wakers: Arc::new(Wakers::default()),
            sends: Arc::new(SendGroup::default()),
            relaxed,
        }))
    }

    /// Connects and applies pending migrations.
    pub async fn open(url: &DatabaseUrl) -> Result<Self, StoreError> {
        let db = Self::connect(url).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Applies the migrations for this backend (`migrations/sqlite` or `migrations/postgres`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(db) => {
                crate::migrations::migrator(crate::migrations::SQLITE)
                    .await?
                    .run(&db.write)
                    .await?
            }
            Self::Postgres(db) => {
                crate::migrations::migrator(crate::migrations::POSTGRES)
                    .await?
                    .run(&db.pool)
                    .await?
            }
        }
        Ok(())
    }

    /// The queue driver over this store.
    #[must_use]
    pub fn queue(&self) -> Arc<dyn cognomega_core::queue::QueueDriver> {
        match self {
            Self::Sqlite(db) => Arc::new(SqliteQueue::new(db.clone())),
            Self::Postgres(db) => Arc::new(db.queue_driver()),
        }
    }

    /// Begins a transaction for a consumer: work done on behalf of a queue message, which a
    /// machine crash that loses it simply redoes, because the message is then redelivered.
    ///
    /// On SQLite it commits without waiting for the disk (`synchronous = NORMAL`). That is safe
    /// because the write-ahead log keeps commit order: a power loss can only drop a suffix of
    /// commits, so a lost consumer commit takes every later commit (its ack included) with it
    /// and the message comes back; and the next durable commit (every producer's: whatever
    /// answered a client) makes all earlier ones durable too.
    ///
    /// On PostgreSQL the same holds with `synchronous_commit = off` for the transaction: the
    /// write-ahead log is one sequence, so a server crash can only lose the newest asynchronous
    /// commits, and every synchronous commit flushes all the log before it. It matters beyond
    /// the consumer: on a busy server every flush a consumer waits for is one a producer's
    /// commit queues behind.
    pub async fn begin_in_consumer(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Self::Sqlite(db) => db.tx(db.begin_relaxed(RELAXED_BEGIN).await?),
            Self::Postgres(db) => db.tx(db.pool.begin_with(PG_RELAXED_BEGIN).await?),
        })
    }

    /// Begins a transaction in which business writes and queue sends commit together.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Self::Sqlite(db) => {
                let conn = db.write.acquire().await?;
                db.tx(sqlx::Transaction::begin(conn, Some(BEGIN.into())).await?)
            }
            Self::Postgres(db) => db.tx(db.pool.begin().await?),
        })
    }

    /// Backend name for display.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(db) => {
                db.read.close().await;
                db.write.close().await;
            }
            Self::Postgres(db) => db.pool.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let url = DatabaseUrl::parse("postgres://app:s3cret@db:5432/x").expect("valid");
        assert_eq!(format!("{url:?}"), "postgres://app:***@db:5432/x");
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/x");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert!(DatabaseUrl::parse("mysql://x").is_err());
    }
}
