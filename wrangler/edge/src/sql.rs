//! The edge's [`Executor`]: statements written once in `cognomega-core` run by tokio-postgres
//! over Hyperdrive. Every argument goes out with its type (`query_typed`: no prepare round
//! trip, and PostgreSQL never guesses a parameter's type), every column comes back as a
//! [`Value`] by its declared type.

use cognomega_core::sql::{Dialect, Executor, Outbound, Row, SqlError, Transaction, Value};
use futures::TryStreamExt as _;
use tokio_postgres::types::{ToSql, Type};

/// A connection (or the transaction open on it) as an [`Executor`].
#[derive(Clone, Copy)]
pub struct Pg<'a>(pub &'a tokio_postgres::Client);

fn error(e: &tokio_postgres::Error) -> SqlError {
    let constraint = e.code().is_some_and(|c| c.code().starts_with("23"));
    SqlError {
        message: e.to_string(),
        constraint,
    }
}

fn typed(args: &[Value]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    args.iter()
        .map(|a| -> (&(dyn ToSql + Sync), Type) {
            match a {
                Value::Int(v) => (v, Type::INT8),
                Value::Text(v) => (v, Type::TEXT),
                Value::Real(v) => (v, Type::FLOAT8),
                Value::Bool(v) => (v, Type::BOOL),
                Value::Bytes(v) => (v, Type::BYTEA),
                Value::NullInt => (&None::<i64>, Type::INT8),
                Value::NullText => (&None::<String>, Type::TEXT),
            }
        })
        .collect()
}

fn row(r: &tokio_postgres::Row) -> Result<Row, SqlError> {
    let mut out = Vec::with_capacity(r.len());
    for (i, column) in r.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int))
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)
                .map(|v| v.map(|v| Value::Int(i64::from(v))))
        } else if *ty == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)
                .map(|v| v.map(|v| Value::Int(i64::from(v))))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i).map(|v| v.map(Value::Bool))
        } else if *ty == Type::FLOAT8 {
            r.try_get::<_, Option<f64>>(i).map(|v| v.map(Value::Real))
        } else if *ty == Type::FLOAT4 {
            r.try_get::<_, Option<f32>>(i)
                .map(|v| v.map(|v| Value::Real(f64::from(v))))
        } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty) {
            r.try_get::<_, Option<String>>(i)
                .map(|v| v.map(Value::Text))
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)
                .map(|v| v.map(Value::Bytes))
        } else {
            return Err(SqlError::decode(format!(
                "column {i} is {ty}, which shared statements do not use"
            )));
        };
        out.push(
            value
                .map_err(|e| SqlError::decode(e.to_string()))?
                .unwrap_or(Value::NullText),
        );
    }
    Ok(Row(out))
}

#[async_trait::async_trait(?Send)]
impl Executor for Pg<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, SqlError> {
        let stream = self
            .0
            .query_typed_raw(sql, typed(args))
            .await
            .map_err(|e| error(&e))?;
        futures::pin_mut!(stream);
        while stream.try_next().await.map_err(|e| error(&e))?.is_some() {}
        Ok(stream.rows_affected().unwrap_or(0))
    }

    async fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, SqlError> {
        let rows = self
            .0
            .query_typed(sql, &typed(args))
            .await
            .map_err(|e| error(&e))?;
        rows.iter().map(row).collect()
    }
}

/// A transaction open on a connection, as a [`Transaction`]: the messages it sends are staged in
/// the outbox under [`PgTx::batch`] and relayed after the commit (Cloudflare Queues cannot
/// join it). Dropped without a commit, the caller rolls back (`ROLLBACK` on the connection)
/// or drops the connection, which ends the transaction.
pub struct PgTx<'a> {
    db: Pg<'a>,
    /// The write's outbox batch: relay it right after the commit.
    pub batch: String,
}

impl<'a> PgTx<'a> {
    /// Opens a transaction on `client`.
    pub async fn begin(client: &'a tokio_postgres::Client) -> Result<Self, SqlError> {
        client.batch_execute("BEGIN").await.map_err(|e| error(&e))?;
        Ok(Self {
            db: Pg(client),
            batch: crate::outbox::batch_id(),
        })
    }
}

#[async_trait::async_trait(?Send)]
impl Executor for PgTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, SqlError> {
        self.db.execute(sql, args).await
    }

    async fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, SqlError> {
        self.db.query(sql, args).await
    }
}

#[async_trait::async_trait(?Send)]
impl Transaction for PgTx<'_> {
    async fn send(&mut self, out: Outbound<'_>) -> Result<(), SqlError> {
        let now = worker::Date::now().as_millis() as i64;
        let (batch, rid) = (self.batch.clone(), out.request_id);
        cognomega_core::outbox::stage(&mut self.db, &batch, out.queue, out.body, rid, now).await
    }

    async fn send_rows(&mut self, queue: &str, sql: &str, args: &[Value]) -> Result<u64, SqlError> {
        let now = worker::Date::now().as_millis() as i64;
        let batch = self.batch.clone();
        cognomega_core::outbox::stage_rows(&mut self.db, &batch, queue, sql, args, now).await
    }

    async fn commit(self: Box<Self>) -> Result<(), SqlError> {
        self.db
            .0
            .batch_execute("COMMIT")
            .await
            .map_err(|e| error(&e))
    }

    async fn rollback(self: Box<Self>) -> Result<(), SqlError> {
        self.db
            .0
            .batch_execute("ROLLBACK")
            .await
            .map_err(|e| error(&e))
    }
}
