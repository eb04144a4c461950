//! The native hosts' [`Executor`]: statements written once in `cognomega-core` (`$n`
//! placeholders, [`Value`] arguments) run by sqlx on SQLite or PostgreSQL, on a pool or inside
//! a [`Tx`]. The only place these statements branch on the backend.

use cognomega_core::sql::{Executor, Row, SqlError, Value};
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
            other => {
                return Err(SqlError::decode(format!(
                    "column {i} is {other}, which shared statements do not use"
                )))
            }
        });
    }
    Ok(Row(out))
}

#[async_trait::async_trait]
impl Executor for Database {
    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, SqlError> {
        match self {
            Self::Sqlite(db) => sqlite(sql, args)
                .execute(&db.write)
                .await
                .map(|r| r.rows_affected()),
            Self::Postgres(db) => postgres(sql, args)
                .execute(&db.pool)
                .await
                .map(|r| r.rows_affected()),
        }
        .map_err(error)
    }

    async fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, SqlError> {
        match self {
            Self::Sqlite(db) => sqlite(sql, args)
                .fetch_all(&db.write)
                .await
                .map_err(error)?
                .iter()
                .map(sqlite_row)
                .collect(),
            Self::Postgres(db) => postgres(sql, args)
                .fetch_all(&db.pool)
                .await
                .map_err(error)?
                .iter()
                .map(postgres_row)
                .collect(),
        }
    }
}

#[async_trait::async_trait]
impl Executor for Tx {
    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, SqlError> {
        match self {
            Self::Sqlite { tx, .. } => sqlite(sql, args)
                .execute(&mut **tx)
                .await
                .map(|r| r.rows_affected()),
            Self::Postgres { tx, .. } => postgres(sql, args)
                .execute(&mut **tx)
                .await
                .map(|r| r.rows_affected()),
        }
        .map_err(error)
    }

    async fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, SqlError> {
        match self {
            Self::Sqlite { tx, .. } => sqlite(sql, args)
                .fetch_all(&mut **tx)
                .await
                .map_err(error)?
                .iter()
                .map(sqlite_row)
                .collect(),
            Self::Postgres { tx, .. } => postgres(sql, args)
                .fetch_all(&mut **tx)
                .await
                .map_err(error)?
                .iter()
                .map(postgres_row)
                .collect(),
        }
    }
}
