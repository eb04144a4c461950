//! The native hosts' [`Executor`]: statements written once in `cognomega-core` (`$n`
//! placeholders, [`Value`] arguments) run by sqlx on SQLite or PostgreSQL, on a pool or inside
//! a [`Tx`]. The only place these statements branch on the backend.

use cognomega_core::queue::{OutgoingMessage, QueueName};
use cognomega_core::sql::{Dialect, Executor, Outbound, Row, SqlError, Transaction, Value};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Postgres, Row as _, Sqlite, TypeInfo as _, ValueRef as _};

use crate::{Database, Tx};

fn error(e: sqlx::Error) -> SqlError {
    let constraint = matches!(&e, sqlx::Error::Database(d) if matches!(d.kind(),
        sqlx::error::ErrorKind::UniqueViolation
            | sqlx::error::ErrorKind::ForeignKeyViolation
            | sqlx::error::ErrorKind::NotNullViolation
            | sqlx::error::ErrorKind::CheckViolation));
    SqlError {
        message: e.to_string(),
        constraint,
    }
}

/// Binds `args` in order to a query of either backend (the same Rust types bind on both).
macro_rules! bind_all {
    ($sql:expr, $args:expr) => {{
        let mut q = sqlx::query($sql);
        for a in $args {
            q = match a {
                Value::Int(v) => q.bind(*v),
                Value::Text(v) => q.bind(v.as_str()),
                Value::Real(v) => q.bind(*v),
                Value::Bool(v) => q.bind(*v),
                Value::Bytes(v) => q.bind(v.as_slice()),
                Value::NullInt => q.bind(None::<i64>),
                Value::NullText => q.bind(None::<&str>),
            };
        }
        q
    }};
}

fn sqlite<'q>(sql: &'q str, args: &'q [Value]) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    bind_all!(sql, args)
}

fn postgres<'q>(sql: &'q str, args: &'q [Value]) -> Query<'q, Postgres, PgArguments> {
    bind_all!(sql, args)
}

/// A SQLite row: each value by its storage class (SQLite types values, not columns).
fn sqlite_row(r: &SqliteRow) -> Result<Row, SqlError> {
    let mut out = Vec::with_capacity(r.len());
    for i in 0..r.len() {
        let raw = r.try_get_raw(i).map_err(error)?;
        if raw.is_null() {
            out.push(Value::NullText);
            continue;
        }
        let class = raw.type_info().name().to_owned();
        out.push(match class.as_str() {
            "INTEGER" | "BOOLEAN" | "INT8" => Value::Int(r.try_get::<i64, _>(i).map_err(error)?),
            "REAL" => Value::Real(r.try_get::<f64, _>(i).map_err(error)?),
            "TEXT" => Value::Text(r.try_get::<String, _>(i).map_err(error)?),
            "BLOB" => Value::Bytes(r.try_get::<Vec<u8>, _>(i).map_err(error)?),
            other => {
                return Err(SqlError::decode(format!(
                    "column {i} holds {other}, which shared statements do not use"
                )))
            }
        });
    }
    Ok(Row(out))
}

/// A PostgreSQL row: each column by its declared type.
fn postgres_row(r: &PgRow) -> Result<Row, SqlError> {
    let mut out = Vec::with_capacity(r.len());
    for i in 0..r.len() {
        let raw = r.try_get_raw(i).map_err(error)?;
        if raw.is_null() {
            out.push(Value::NullText);
            continue;
        }
        let ty = raw.type_info().name().to_owned();
        out.push(match ty.as_str() {
            "INT8" => Value::Int(r.try_get::<i64, _>(i).map_err(error)?),
            "INT4" => Value::Int(i64::from(r.try_get::<i32, _>(i).map_err(error)?)),
            "INT2" => Value::Int(i64::from(r.try_get::<i16, _>(i).map_err(error)?)),
            "BOOL" => Value::Bool(r.try_get::<bool, _>(i).map_err(error)?),
            "FLOAT8" => Value::Real(r.try_get::<f64, _>(i).map_err(error)?),
            "FLOAT4" => Value::Real(f64::from(r.try_get::<f32, _>(i).map_err(error)?)),
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => {
                Value::Text(r.try_get::<String, _>(i).map_err(error)?)
            }
            "BYTEA" => Value::Bytes(r.try_get::<Vec<u8>, _>(i).map_err(error)?),
            other => {
                return Err(SqlError::decode(format!(
                    "column {i} is {other}, which shared statements do not use"
                )))
            }
        });
    }
    Ok(Row(out))
}

pub(crate) async fn sqlite_execute<'c, E>(on: E, sql: &str, args: &[Value]) -> Result<u64, SqlError>
where
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    sqlite(sql, args)
        .execute(on)
        .await
        .map(|r| r.rows_affected())
        .map_err(error)
}

async fn sqlite_query<'c, E>(on: E, sql: &str, args: &[Value]) -> Result<Vec<Row>, SqlError>
where
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    let rows = sqlite(sql, args).fetch_all(on).await.map_err(error)?;
    rows.iter().map(sqlite_row).collect()
}

pub(crate) async fn postgres_execute<'c, E>(
    on: E,
    sql: &str,
    args: &[Value],
) -> Result<u64, SqlError>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    postgres(sql, args)
        .execute(on)
        .await
        .map(|r| r.rows_affected())
        .map_err(error)
}

async fn postgres_query<'c, E>(on: E, sql: &str, args: &[Value]) -> Result<Vec<Row>, SqlError>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let rows = postgres(sql, args).fetch_all(on).await.map_err(error)?;
    rows.iter().map(postgres_row).collect()
}

impl Database {
    /// A transaction on the writer, as the workflows' [`Transaction`] port.
    pub async fn transaction(&self) -> Result<Box<dyn Transaction>, SqlError> {
        let tx = self
            .begin()
            .await
            .map_err(|e| SqlError::new(e.to_string()))?;
        Ok(Box::new(tx))
    }
}

/// Writes, and reads that must see the last commit: SQLite's writer, PostgreSQL's pool.
#[async_trait::async_trait]
impl Executor for Database {
    fn dialect(&self) -> Dialect {
        match self {
            Self::Sqlite(_) => Dialect::Sqlite,
            Self::Postgres(_) => Dialect::Postgres,
        }
    }

    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, SqlError> {
        match self {
            Self::Sqlite(db) => sqlite_execute(&db.write, sql, args).await,
            Self::Postgres(db) => postgres_execute(&db.pool, sql, args).await,
        }
    }

    async fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, SqlError> {
        match self {
            Self::Sqlite(db) => sqlite_query(&db.write, sql, args).await,
            Self::Postgres(db) => postgres_query(&db.pool, sql, args).await,
        }
    }
}

/// Reads on SQLite's reader pool (beside the writer, under WAL); PostgreSQL's one pool.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a>(pub &'a Database);

#[async_trait::async_trait]
impl Executor for Reader<'_> {
    fn dialect(&self) -> Dialect {
        self.0.dialect()
    }

    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, SqlError> {
        match self.0 {
            Database::Sqlite(db) => sqlite_execute(&db.read, sql, args).await,
            Database::Postgres(db) => postgres_execute(&db.pool, sql, args).await,
        }
    }

    async fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, SqlError> {
        match self.0 {
            Database::Sqlite(db) => sqlite_query(&db.read, sql, args).await,
            Database::Postgres(db) => postgres_query(&db.pool, sql, args).await,
        }
    }
}

/// Statements inside the transaction (business writes and queue sends commit together).
#[async_trait::async_trait]
impl Executor for Tx {
    fn dialect(&self) -> Dialect {
        match self {
            Self::Sqlite { .. } => Dialect::Sqlite,
            Self::Postgres { .. } => Dialect::Postgres,
        }
    }

    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, SqlError> {
        match self {
            Self::Sqlite { tx, .. } => sqlite_execute(&mut **tx, sql, args).await,
            Self::Postgres { tx, .. } => postgres_execute(&mut **tx, sql, args).await,
        }
    }

    async fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, SqlError> {
        match self {
            Self::Sqlite { tx, .. } => sqlite_query(&mut **tx, sql, args).await,
            Self::Postgres { tx, .. } => postgres_query(&mut **tx, sql, args).await,
        }
    }
}

/// Messages go on the database-backed queue inside the transaction (the queue driver's send).
#[async_trait::async_trait]
impl Transaction for Tx {
    async fn send(&mut self, out: Outbound<'_>) -> Result<(), SqlError> {
        let queue = QueueName::parse(out.queue).map_err(|e| SqlError::new(e.to_string()))?;
        Tx::send(self, &queue, OutgoingMessage::outbound(out))
            .await
            .map(drop)
            .map_err(|e| SqlError::new(e.to_string()))
    }

    /// One `INSERT … SELECT` into the queue.
    async fn send_rows(&mut self, queue: &str, sql: &str, args: &[Value]) -> Result<u64, SqlError> {
        let queue = QueueName::parse(queue).map_err(|e| SqlError::new(e.to_string()))?;
        Tx::send_rows(self, &queue, sql, args)
            .await
            .map_err(|e| SqlError::new(e.to_string()))
    }

    /// One multi-row write of the queue.
    async fn send_all(&mut self, messages: Vec<Outbound<'_>>) -> Result<(), SqlError> {
        let Some(first) = messages.first() else {
            return Ok(());
        };
        let queue = QueueName::parse(first.queue).map_err(|e| SqlError::new(e.to_string()))?;
        let out = messages
            .into_iter()
            .map(OutgoingMessage::outbound)
            .collect();
        Tx::send_batch(self, &queue, out)
            .await
            .map(drop)
            .map_err(|e| SqlError::new(e.to_string()))
    }

    async fn commit(self: Box<Self>) -> Result<(), SqlError> {
        Tx::commit(*self)
            .await
            .map_err(|e| SqlError::new(e.to_string()))
    }

    async fn rollback(self: Box<Self>) -> Result<(), SqlError> {
        Tx::rollback(*self)
            .await
            .map_err(|e| SqlError::new(e.to_string()))
    }
}
