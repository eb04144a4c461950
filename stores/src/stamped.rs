//! Statements that record the current time, where each backend keeps the clock it always used.

use cognomega_core::sql::{Dialect, Dialects, Value};

/// A statement whose SQLite text takes the time (epoch ms) as one more, last, parameter where
/// the PostgreSQL text reads the server's clock (`now()`, a column default): SQLite has no
/// clock type. The time is bound on SQLite only, so each text gets exactly its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamped(pub(crate) Dialects);

impl Stamped {
    /// The text for `dialect` and its arguments: `args`, then `now_ms` on SQLite.
    pub(crate) fn bind(
        self,
        dialect: Dialect,
        mut args: Vec<Value>,
        now_ms: i64,
    ) -> (&'static str, Vec<Value>) {
        if dialect == Dialect::Sqlite {
            args.push(Value::Int(now_ms));
        }
        (self.0.pick(dialect), args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sqlite_gets_the_time() {
        let s = Stamped(Dialects {
            sqlite: "s",
            postgres: "p",
        });
        assert_eq!(
            s.bind(Dialect::Sqlite, vec![Value::Int(1)], 9),
            ("s", vec![Value::Int(1), Value::Int(9)])
        );
        assert_eq!(
            s.bind(Dialect::Postgres, vec![Value::Int(1)], 9),
            ("p", vec![Value::Int(1)])
        );
    }
}
