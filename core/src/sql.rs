//! The SQL executor port: how a workflow written once in this crate runs its statements on
//! either host.
//!
//! Statements are written once, with PostgreSQL-style `$n` placeholders (SQLite reads them too)
//! and times as epoch milliseconds (`BIGINT`), so the same text runs on SQLite and PostgreSQL
//! through sqlx natively (`cognomega-stores`) and on PostgreSQL through tokio-postgres on the
//! edge (`wrangler/edge`). Arguments and columns travel as [`Value`]s: the few SQL types these
//! statements use (integers, text, reals, booleans), each argument typed even when it is null,
//! so PostgreSQL never has to guess a parameter's type.
//!
//! An [`Executor`] is a connection, a pool or an open transaction; a workflow that must commit
//! several statements together takes the caller's transaction.

use std::fmt;

/// One argument or column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A 64-bit integer (`BIGINT`; narrower integer columns read as this too).
    Int(i64),
    /// Text.
    Text(String),
    /// A double-precision float.
    Real(f64),
    /// A boolean (SQLite stores it as 0/1 and reads back as [`Value::Int`]).
    Bool(bool),
    /// Bytes (`BLOB` / `BYTEA`).
    Bytes(Vec<u8>),
    /// A null integer argument.
    NullInt,
    /// A null text argument (and any null column read back).
    NullText,
}

impl Value {
    /// The value is SQL `NULL`.
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self, Self::NullInt | Self::NullText)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Self::Bytes(v.to_vec())
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Self {
        v.map_or(Self::NullText, Self::from)
    }
}

impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        v.map_or(Self::NullText, Self::Text)
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Self::NullInt, Self::Int)
    }
}

/// A row a query returned: its columns in `SELECT`/`RETURNING` order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value, SqlError> {
        self.0
            .get(i)
            .ok_or_else(|| SqlError::decode(format!("no column {i} in a row of {}", self.0.len())))
    }

    /// Column `i` as an integer.
    pub fn int(&self, i: usize) -> Result<i64, SqlError> {
        self.opt_int(i)?
            .ok_or_else(|| SqlError::decode(format!("column {i} is null")))
    }

    /// Column `i` as an integer or null.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, SqlError> {
        match self.at(i)? {
            Value::Int(v) => Ok(Some(*v)),
            Value::Bool(b) => Ok(Some(i64::from(*b))),
            v if v.is_null() => Ok(None),
            other => Err(SqlError::decode(format!(
                "column {i} is {other:?}, not an integer"
            ))),
        }
    }

    /// Column `i` as text.
    pub fn text(&self, i: usize) -> Result<String, SqlError> {
        self.opt_text(i)?
            .ok_or_else(|| SqlError::decode(format!("column {i} is null")))
    }

    /// Column `i` as text or null.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, SqlError> {
        match self.at(i)? {
            Value::Text(v) => Ok(Some(v.clone())),
            v if v.is_null() => Ok(None),
            other => Err(SqlError::decode(format!(
                "column {i} is {other:?}, not text"
            ))),
        }
    }

    /// Column `i` as bytes or null.
    pub fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, SqlError> {
        match self.at(i)? {
            Value::Bytes(v) => Ok(Some(v.clone())),
            v if v.is_null() => Ok(None),
            other => Err(SqlError::decode(format!(
                "column {i} is {other:?}, not bytes"
            ))),
        }
    }

    /// Column `i` as a boolean (SQLite's 0/1 included).
    pub fn bool(&self, i: usize) -> Result<bool, SqlError> {
        match self.at(i)? {
            Value::Bool(b) => Ok(*b),
            Value::Int(v) => Ok(*v != 0),
            other => Err(SqlError::decode(format!(
                "column {i} is {other:?}, not a boolean"
            ))),
        }
    }

    /// Column `i` as a float (integers widen).
    pub fn real(&self, i: usize) -> Result<f64, SqlError> {
        match self.at(i)? {
            Value::Real(v) => Ok(*v),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(v) => Ok(*v as f64),
            other => Err(SqlError::decode(format!(
                "column {i} is {other:?}, not a number"
            ))),
        }
    }
}

/// A statement failed: the database's message, and whether it was a constraint violation (a
/// unique key met a duplicate) rather than an outage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// What went wrong, as the driver said it.
    pub message: String,
    /// A constraint (unique, foreign key, check) refused the write.
    pub constraint: bool,
}

impl SqlError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            constraint: false,
        }
    }

    /// A column that is not what the statement's reader expected.
    pub fn decode(message: impl Into<String>) -> Self {
        Self::new(format!("reading a row: {}", message.into()))
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqlError {}

/// `Send` on the native hosts (their workflows run on a multi-threaded runtime), nothing on the
/// edge (a Worker is one thread, and its database client is not `Send`).
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + ?Sized> MaybeSend for T {}
/// `Send` on the native hosts, nothing on the edge.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSend for T {}

/// The SQL dialect an [`Executor`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (the embedded default): times as epoch-millisecond integers, booleans as 0/1.
    Sqlite,
    /// PostgreSQL (scale-out and the edge): times as `timestamptz`, real booleans.
    Postgres,
}

/// A statement whose dialects really differ (times: SQLite stores epoch milliseconds where
/// PostgreSQL has `timestamptz` and `now()`), kept side by side; every other statement is one
/// `&str` for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialects {
    /// The SQLite text.
    pub sqlite: &'static str,
    /// The PostgreSQL text.
    pub postgres: &'static str,
}

impl Dialects {
    /// The text for `dialect`.
    #[must_use]
    pub const fn pick(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Sqlite => self.sqlite,
            Dialect::Postgres => self.postgres,
        }
    }

    /// The text for `dialect` and its arguments, for a statement that records the time: its
    /// SQLite text takes it (epoch ms) as one more, last, parameter where the PostgreSQL text
    /// reads the server's clock (`now()`, a column default), since SQLite has no clock type.
    #[must_use]
    pub fn stamped(
        &self,
        dialect: Dialect,
        mut args: Vec<Value>,
        now_ms: i64,
    ) -> (&'static str, Vec<Value>) {
        if dialect == Dialect::Sqlite {
            args.push(Value::Int(now_ms));
        }
        (self.pick(dialect), args)
    }
}

/// Runs statements: a pool, a connection or an open transaction of either host.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait Executor: MaybeSend {
    /// The dialect it speaks (for the few [`Dialects`] statements).
    fn dialect(&self) -> Dialect;

    /// Runs `sql` with `args` (`$1`, `$2`, …); the number of rows it changed.
    async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, SqlError>;

    /// Runs `sql` with `args`; the rows it returned.
    async fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, SqlError>;

    /// Runs `sql` with `args`; the first row it returned, if any.
    async fn query_opt(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, SqlError> {
        Ok(self.query(sql, args).await?.into_iter().next())
    }
}

/// A message a write produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound<'a> {
    /// The queue's catalog name.
    pub queue: &'a str,
    /// The queue's message type as JSON text.
    pub body: String,
    /// The request that produced it, for the consumer's logs.
    pub request_id: Option<&'a str>,
}

/// An open transaction of either host: statements, the messages the write produces (natively
/// sent on the database-backed queue inside the transaction, on the edge staged in the outbox
/// and relayed after the commit), and the commit.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait Transaction: Executor {
    /// Sends `message` when the transaction commits.
    async fn send(&mut self, message: Outbound<'_>) -> Result<(), SqlError>;

    /// Sends `messages` (all to one queue) when the transaction commits; a host whose queue
    /// writes many at once overrides it.
    async fn send_all(&mut self, messages: Vec<Outbound<'_>>) -> Result<(), SqlError> {
        for message in messages {
            self.send(message).await?;
        }
        Ok(())
    }

    /// Sends one message to `queue` per row of the query `sql`, when the transaction commits: its
    /// columns `body` (the message as JSON text) and `request_id` (text or NULL), its
    /// parameters `args`. A set-based send: the rows never travel to the process where the
    /// host's queue lives in the same database (natively the queue drivers, on the edge the
    /// outbox). Returns how many were sent.
    async fn send_rows(&mut self, queue: &str, sql: &str, args: &[Value]) -> Result<u64, SqlError> {
        let rows = self.query(sql, args).await?;
        let mut messages = Vec::with_capacity(rows.len());
        for r in &rows {
            messages.push((r.text(0)?, r.opt_text(1)?));
        }
        let sent = messages.len() as u64;
        let outbound = messages
            .iter()
            .map(|(body, request_id)| Outbound {
                queue,
                body: body.clone(),
                request_id: request_id.as_deref(),
            })
            .collect();
        self.send_all(outbound).await?;
        Ok(sent)
    }

    /// Commits the statements and the messages together.
    async fn commit(self: Box<Self>) -> Result<(), SqlError>;

    /// Leaves no trace of either.
    async fn rollback(self: Box<Self>) -> Result<(), SqlError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sqlite_gets_the_time() {
        let s = Dialects {
            sqlite: "s",
            postgres: "p",
        };
        assert_eq!(
            s.stamped(Dialect::Sqlite, vec![Value::Int(1)], 9),
            ("s", vec![Value::Int(1), Value::Int(9)])
        );
        assert_eq!(
            s.stamped(Dialect::Postgres, vec![Value::Int(1)], 9),
            ("p", vec![Value::Int(1)])
        );
    }

    #[test]
    fn rows_read_what_each_backend_returns() {
        let row = Row(vec![
            Value::Int(7),
            Value::Text("a".into()),
            Value::NullText,
            Value::Int(1),
            Value::Bool(false),
            Value::Real(0.5),
        ]);
        assert_eq!(row.int(0), Ok(7));
        assert_eq!(row.text(1).as_deref(), Ok("a"));
        assert_eq!(row.opt_text(2), Ok(None));
        assert_eq!(row.opt_int(2), Ok(None));
        assert_eq!(row.bool(3), Ok(true));
        assert_eq!(row.bool(4), Ok(false));
        assert_eq!(row.real(5), Ok(0.5));
        assert_eq!(row.real(0), Ok(7.0));
        assert!(row.text(0).is_err());
        assert!(row.int(2).is_err());
        assert!(row.int(9).is_err());
    }

    #[test]
    fn options_become_typed_nulls() {
        assert_eq!(Value::from(None::<&str>), Value::NullText);
        assert_eq!(Value::from(None::<i64>), Value::NullInt);
        assert_eq!(Value::from(Some("x")), Value::Text("x".into()));
        assert!(Value::NullInt.is_null());
        assert!(!Value::Int(0).is_null());
    }
}
