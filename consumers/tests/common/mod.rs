//! Helpers of the export tests: rows inserted straight into the tables (both dialects), DuckDB
//! queries through `python3`, and the files an export left on disk.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};
use cognomega_stores::Database;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// 2026-01-01T00:00:00Z in epoch milliseconds.
pub const T0: i64 = 1_767_225_600_000;
/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// The DuckDB version the suite is written against.
pub const DUCKDB_INSTALL: &str = "pip install duckdb==2.0.0";

const DUCKDB_SCRIPT: &str = r#"
import decimal, json, sys
try:
    import duckdb
except ImportError:
    sys.exit(3)
def conv(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return str(v)
rows = duckdb.sql(sys.argv[1]).fetchall()
print(json.dumps([[conv(x) for x in row] for row in rows]))
"#;

/// Runs `sql` in an in-memory DuckDB and returns its rows as JSON arrays. Panics (failing the
/// test, never skipping it) when `python3` or the `duckdb` module is missing.
pub fn duckdb(sql: &str) -> anyhow::Result<Vec<Value>> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(DUCKDB_SCRIPT)
        .arg(sql)
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 is needed to verify exports with DuckDB ({e}); install python3, then `{DUCKDB_INSTALL}`")
        });
    if out.status.code() == Some(3) {
        panic!("the DuckDB Python module is missing: run `{DUCKDB_INSTALL}` (ops/test.sh does)");
    }
    if !out.status.success() {
        bail!(
            "DuckDB failed on {sql}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("DuckDB output: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok(rows)
}

/// Executes a statement that is the same in both dialects.
pub async fn exec(db: &Database, sql: &str) -> anyhow::Result<()> {
    match db {
        Database::Sqlite(s) => {
            sqlx::query(sql).execute(&s.write).await?;
        }
        Database::Postgres(p) => {
            sqlx::query(sql).execute(&p.pool).await?;
        }
    }
    Ok(())
}

/// One BIGINT value.
pub async fn db_scalar(db: &Database, sql: &str) -> anyhow::Result<i64> {
    Ok(match db {
        Database::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(&s.write).await?,
        Database::Postgres(p) => sqlx::query_scalar(sql).fetch_one(&p.pool).await?,
    })
}

/// Every part of the intent log: (from, to, state), by dataset, format and from.
pub async fn part_states(db: &Database) -> anyhow::Result<Vec<(i64, i64, String)>> {
    const SQL: &str =
        "SELECT from_seq, to_seq, state FROM export_parts ORDER BY dataset, format, from_seq";
    Ok(match db {
        Database::Sqlite(s) => sqlx::query_as(SQL).fetch_all(&s.write).await?,
        Database::Postgres(p) => sqlx::query_as(SQL).fetch_all(&p.pool).await?,
    })
}

/// A timestamp parameter `$n` given in epoch ms, as each dialect stores it.
fn ts(db: &Database, n: u8) -> String {
    match db {
        Database::Sqlite(_) => format!("${n}"),
        Database::Postgres(_) => {
            format!("(timestamptz 'epoch' + ${n}::float8 * interval '1 millisecond')")
        }
    }
}

macro_rules! run {
    ($db:expr, $sql:expr, $($bind:expr),* $(,)?) => {
        match $db {
            Database::Sqlite(s) => {
                sqlx::query(&$sql)$(.bind($bind))*.execute(&s.write).await?;
            }
            Database::Postgres(p) => {
                sqlx::query(&$sql)$(.bind($bind))*.execute(&p.pool).await?;
            }
        }
    };
}

/// Inserts a usage event (`received_at` = `occurred_at` + 1 s).
#[allow(clippy::too_many_arguments)]
pub async fn insert_usage(
    db: &Database,
    tenant: &str,
    key: &str,
    quantity: i64,
    credits: i64,
    occurred_ms: i64,
    meta: Option<&str>,
    request_id: Option<&str>,
) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO usage_events (tenant_id, idempotency_key, kind, quantity, credits, \
         occurred_at, received_at, meta, request_id) VALUES ($1, $2, 'tokens_in', $3, $4, {}, {}, $7, $8)",
        ts(db, 5),
        ts(db, 6)
    );
    run!(
        db,
        sql,
        tenant,
        key,
        quantity,
        credits,
        occurred_ms,
        occurred_ms + 1_000,
        meta,
        request_id
    );
    Ok(())
}

/// Inserts a ledger entry.
pub async fn insert_ledger(
    db: &Database,
    id: &str,
    tenant: &str,
    delta: i64,
    created_ms: i64,
) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO ledger_entries (id, tenant_id, delta, kind, created_at) \
         VALUES ($1, $2, $3, 'usage', {})",
        ts(db, 4)
    );
    run!(db, sql, id, tenant, delta, created_ms);
    Ok(())
}

/// Inserts a job row.
pub async fn insert_job(
    db: &Database,
    id: &str,
    status: &str,
    created_ms: i64,
    finished_ms: Option<i64>,
) -> anyhow::Result<()> {
    // SQLite has no sequences; the test is the only writer.
    let seq = match db {
        Database::Sqlite(_) => "(SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs)",
        Database::Postgres(_) => "nextval('jobs_seq')",
    };
    let sql = format!(
        "INSERT INTO jobs (id, seq, tenant_id, type, status, params, input_key, created_at, \
         finished_at) VALUES ($1, {seq}, 't1', 'image_thumbnail', $2, '{{}}', 'inputs/t1/x', {}, {})",
        ts(db, 3),
        ts(db, 4)
    );
    run!(db, sql, id, status, created_ms, finished_ms);
    Ok(())
}

/// Inserts an upload row.
pub async fn insert_upload(
    db: &Database,
    key: &str,
    scan: &str,
    created_ms: i64,
) -> anyhow::Result<()> {
    let seq = match db {
        Database::Sqlite(_) => "(SELECT COALESCE(MAX(seq), 0) + 1 FROM uploads)",
        Database::Postgres(_) => "nextval('uploads_seq')",
    };
    let sql = format!(
        "INSERT INTO uploads (key, seq, tenant_id, filename, content_type, size, sha256, scan, \
         object_key, created_at) VALUES ($1, {seq}, 't1', 'a.png', 'image/png', 10, 'ab', $2, $1, {})",
        ts(db, 3)
    );
    run!(db, sql, key, scan, created_ms);
    Ok(())
}

/// Every file under `root`: its path relative to `root` (with `/`) and its SHA-256.
pub fn files_on_disk(root: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)?
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let sha: String = Sha256::digest(std::fs::read(&path)?)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                out.insert(rel, sha);
            }
        }
    }
    Ok(out)
}
