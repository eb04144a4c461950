//! Analytics exports checked by a real analytics engine: DuckDB (from PyPI) reads the exported
//! Parquet and NDJSON.zst files with a Hive-partition glob, and every count, sum, timestamp and
//! column type must equal the database exactly: after the first export, after late events, after
//! a re-run (byte-identical files, no duplicate parts), after a crash between writing a part and
//! completing it, and with two runs at once. Both backends.
//!
//! DuckDB is required: without it the tests fail with the install command, never skip.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use cognomega_consumers::etl::{ExportError, ExportOptions, Exporter, Silent};
use cognomega_core::etl::{Dataset, ExportFormat, Manifest};
use cognomega_stores::objects::{ObjectStoreUrl, Objects};
use cognomega_testkit::{both_backends, Backend, TestDb};
use serde_json::Value;

use common::{
    db_scalar, duckdb, exec, files_on_disk, insert_job, insert_ledger, insert_upload, insert_usage,
    DAY_MS, T0,
};

struct Fixture {
    tdb: TestDb,
    root: std::path::PathBuf,
    objects: Objects,
}

fn fixture_objects(tdb: &TestDb) -> anyhow::Result<(std::path::PathBuf, Objects)> {
    let root = tdb.data_dir().join("objects");
    let objects = Objects::open(&ObjectStoreUrl::Local(root.clone()))?;
    Ok((root, objects))
}

async fn fixture(backend: Backend) -> anyhow::Result<Fixture> {
    let tdb = TestDb::new(backend).await?;
    let (root, objects) = fixture_objects(&tdb)?;
    Ok(Fixture { tdb, root, objects })
}

impl Fixture {
    fn exporter(&self, options: ExportOptions) -> Exporter {
        Exporter::with_options(self.tdb.db().clone(), self.objects.clone(), options)
    }

    fn glob(&self, dataset: Dataset, format: ExportFormat) -> String {
        format!(
            "{}/exports/{}/*/*.{}",
            self.root.display(),
            dataset.name(),
            format.extension()
        )
    }

    async fn manifest(&self, dataset: Dataset) -> anyhow::Result<Manifest> {
        let bytes = std::fs::read(self.root.join(dataset.manifest_key()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// Small part cap, so a few hundred rows make several parts.
fn small_parts() -> ExportOptions {
    ExportOptions {
        max_rows_per_part: 70,
        batch_rows: 16,
        ..ExportOptions::default()
    }
}

/// 300 usage events over five days, one in ten with meta, some without a request id.
async fn seed_usage(db: &cognomega_stores::Database, from: i64, n: i64) -> anyhow::Result<()> {
    for i in from..from + n {
        let meta = (i % 10 == 0).then(|| format!("{{\"i\":{i}}}"));
        let request = (i % 7 != 0).then(|| format!("req-{i}"));
        insert_usage(
            db,
            &format!("t{}", i % 3),
            &format!("k{i}"),
            i * 13 % 1000 + 1,
            i % 17,
            T0 + (i % 5) * DAY_MS + i * 1_001,
            meta.as_deref(),
            request.as_deref(),
        )
        .await?;
    }
    Ok(())
}

/// DuckDB's view of the usage export: rows, sums, timestamps, distinct parts.
async fn duck_usage(f: &Fixture, format: ExportFormat) -> anyhow::Result<Value> {
    let source = match format {
        ExportFormat::Parquet => format!(
            "read_parquet('{}', hive_partitioning=true)",
            f.glob(Dataset::UsageEvents, format)
        ),
        ExportFormat::Ndjson => format!(
            "read_json('{}', format='newline_delimited', hive_partitioning=true, \
             columns={{seq:'BIGINT', tenant_id:'VARCHAR', idempotency_key:'VARCHAR', \
             kind:'VARCHAR', quantity:'BIGINT', credits:'BIGINT', \
             occurred_at:'TIMESTAMPTZ', received_at:'TIMESTAMPTZ', meta:'VARCHAR', \
             request_id:'VARCHAR'}})",
            f.glob(Dataset::UsageEvents, format)
        ),
    };
    let rows = duckdb(&format!(
        "SELECT count(*), count(DISTINCT seq), sum(quantity), sum(credits), count(meta), \
         count(request_id), sum(epoch_us(occurred_at)), sum(epoch_us(received_at)), \
         count(*) FILTER (WHERE CAST(dt AS VARCHAR) <> strftime(occurred_at AT TIME ZONE 'UTC', '%Y-%m-%d')) \
         FROM {source}"
    ))?;
    Ok(rows[0].clone())
}

/// The database's view of the same.
async fn db_usage(db: &cognomega_stores::Database) -> anyhow::Result<Value> {
    let (ts_occ, ts_rec) = match db {
        cognomega_stores::Database::Sqlite(_) => (
            "occurred_at * 1000".to_owned(),
            "received_at * 1000".to_owned(),
        ),
        cognomega_stores::Database::Postgres(_) => (
            "(extract(epoch FROM occurred_at) * 1000000)::bigint".to_owned(),
            "(extract(epoch FROM received_at) * 1000000)::bigint".to_owned(),
        ),
    };
    let mut out = Vec::new();
    for expr in [
        "count(*)".to_owned(),
        "count(DISTINCT seq)".to_owned(),
        "sum(quantity)".to_owned(),
        "sum(credits)".to_owned(),
        "count(meta)".to_owned(),
        "count(request_id)".to_owned(),
        format!("sum({ts_occ})"),
        format!("sum({ts_rec})"),
    ] {
        let v = db_scalar(
            db,
            &format!("SELECT CAST({expr} AS BIGINT) FROM usage_events"),
        )
        .await?;
        out.push(Value::from(v));
    }
    out.push(Value::from(0));
    Ok(Value::Array(out))
}

async fn assert_usage_matches(f: &Fixture, format: ExportFormat) -> anyhow::Result<()> {
    let duck = duck_usage(f, format).await?;
    let db = db_usage(f.tdb.db()).await?;
    assert_eq!(
        duck, db,
        "DuckDB [rows, distinct seq, Σquantity, Σcredits, #meta, #request_id, Σoccurred_at µs, \
         Σreceived_at µs, rows in the wrong dt] vs the database"
    );
    Ok(())
}

fn shas(root: &std::path::Path) -> anyhow::Result<BTreeMap<String, String>> {
    files_on_disk(root)
}

async fn exports_equal_the_database(backend: Backend) -> anyhow::Result<()> {
    let f = fixture(backend).await?;
    let db = f.tdb.db();
    seed_usage(db, 0, 300).await?;
    let exporter = f.exporter(small_parts());

    let report = exporter
        .export(Dataset::UsageEvents, ExportFormat::Parquet, None, &Silent)
        .await?;
    assert_eq!(report.rows, 300);
    assert_eq!(report.parts, 5, "300 rows in parts of at most 70");
    assert_usage_matches(&f, ExportFormat::Parquet).await?;

    // Typed columns, as an analyst sees them.
    let types = duckdb(&format!(
        "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('{}', \
         hive_partitioning=true)) ORDER BY column_name",
        f.glob(Dataset::UsageEvents, ExportFormat::Parquet)
    ))?;
    let types: BTreeMap<String, String> = types
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or("").to_owned(),
                r[1].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for (column, ty) in [
        ("seq", "BIGINT"),
        ("quantity", "BIGINT"),
        ("credits", "BIGINT"),
        ("tenant_id", "VARCHAR"),
        ("meta", "VARCHAR"),
        ("occurred_at", "TIMESTAMP WITH TIME ZONE"),
        ("received_at", "TIMESTAMP WITH TIME ZONE"),
        ("dt", "DATE"),
    ] {
        assert_eq!(
            types.get(column).map(String::as_str),
            Some(ty),
            "{column}: {types:?}"
        );
    }
    // zstd pages.
    let codecs = duckdb(&format!(
        "SELECT DISTINCT compression FROM parquet_metadata('{}')",
        f.glob(Dataset::UsageEvents, ExportFormat::Parquet)
    ))?;
    assert_eq!(codecs, vec![serde_json::json!(["ZSTD"])]);

    // The manifest lists every file with its true size and hash.
    let manifest = f.manifest(Dataset::UsageEvents).await?;
    let on_disk = shas(&f.root)?;
    let parquet_files: Vec<&String> = on_disk.keys().filter(|k| k.ends_with(".parquet")).collect();
    assert_eq!(manifest.parts.len(), parquet_files.len());
    for part in &manifest.parts {
        assert_eq!(on_disk.get(&part.key), Some(&part.sha256), "{}", part.key);
        let len = std::fs::metadata(f.root.join(&part.key))?.len();
        assert_eq!(i64::try_from(len)?, part.bytes);
        assert!(part.key.contains(&format!("/dt={}/", part.dt)));
    }
    assert_eq!(manifest.parts.iter().map(|p| p.rows).sum::<i64>(), 300);

    // Late events: inserted now, with an event time days before the first export's.
    for i in 0..5 {
        insert_usage(
            db,
            "t9",
            &format!("late{i}"),
            7,
            3,
            T0 - DAY_MS + i,
            None,
            None,
        )
        .await?;
    }
    seed_usage(db, 300, 40).await?;
    let report = exporter
        .export(Dataset::UsageEvents, ExportFormat::Parquet, None, &Silent)
        .await?;
    assert_eq!(report.rows, 45);
    assert_usage_matches(&f, ExportFormat::Parquet).await?;
    let late = duckdb(&format!(
        "SELECT CAST(dt AS VARCHAR), count(*) FROM read_parquet('{}', hive_partitioning=true) \
         WHERE tenant_id = 't9' GROUP BY dt",
        f.glob(Dataset::UsageEvents, ExportFormat::Parquet)
    ))?;
    assert_eq!(late, vec![serde_json::json!(["2025-12-31", 5])]);

    // A run with nothing new writes nothing new.
    let before = shas(&f.root)?;
    let manifest_before = std::fs::read(f.root.join(Dataset::UsageEvents.manifest_key()))?;
    let report = exporter
        .export(Dataset::UsageEvents, ExportFormat::Parquet, None, &Silent)
        .await?;
    assert_eq!((report.parts, report.rows), (0, 0));
    assert_eq!(shas(&f.root)?, before);

    // Re-running the same ranges (completion records lost) rewrites byte-identical files.
    exec(db, "DELETE FROM export_files").await?;
    exec(db, "UPDATE export_parts SET state = 'planned'").await?;
    let report = exporter
        .export(Dataset::UsageEvents, ExportFormat::Parquet, None, &Silent)
        .await?;
    assert_eq!(report.rows, 345);
    assert_eq!(
        shas(&f.root)?,
        before,
        "same keys, same sha256, no extra part"
    );
    assert_eq!(
        std::fs::read(f.root.join(Dataset::UsageEvents.manifest_key()))?,
        manifest_before
    );
    assert_usage_matches(&f, ExportFormat::Parquet).await?;
    Ok(())
}

async fn ndjson_equals_the_database(backend: Backend) -> anyhow::Result<()> {
    let f = fixture(backend).await?;
    seed_usage(f.tdb.db(), 0, 150).await?;
    let exporter = f.exporter(small_parts());
    let report = exporter
        .export(Dataset::UsageEvents, ExportFormat::Ndjson, None, &Silent)
        .await?;
    assert_eq!(report.rows, 150);
    assert_usage_matches(&f, ExportFormat::Ndjson).await?;
    // Each format keeps its own watermark: Parquet starts from scratch.
    let report = exporter
        .export(Dataset::UsageEvents, ExportFormat::Parquet, None, &Silent)
        .await?;
    assert_eq!(report.rows, 150);
    let manifest = f.manifest(Dataset::UsageEvents).await?;
    let formats: std::collections::BTreeSet<ExportFormat> =
        manifest.parts.iter().map(|p| p.format).collect();
    assert_eq!(formats.len(), 2);
    Ok(())
}

async fn a_crash_leaves_no_manifest_entry(backend: Backend) -> anyhow::Result<()> {
    let f = fixture(backend).await?;
    let db = f.tdb.db();
    seed_usage(db, 0, 200).await?;
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let crashing = ExportOptions {
        // The second part's files are written, then its run dies before completing it.
        after_write: Some(Arc::new(move |part| {
            counter.fetch_add(1, Ordering::SeqCst);
            part.from != 71
        })),
        ..small_parts()
    };
    let err = f
        .exporter(crashing)
        .export(Dataset::UsageEvents, ExportFormat::Parquet, None, &Silent)
        .await
        .err()
        .context("the injected failure must stop the run")?;
    assert!(
        matches!(
            err,
            ExportError::Interrupted {
                from: 71,
                to: 140,
                ..
            }
        ),
        "{err}"
    );

    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the other parts still completed"
    );

    // No manifest was written by the failed run, and no record names the partial part.
    assert!(!f.root.join(Dataset::UsageEvents.manifest_key()).exists());
    let recorded = db_scalar(db, "SELECT COUNT(*) FROM export_files WHERE from_seq = 71").await?;
    assert_eq!(recorded, 0);
    let states = common::part_states(db).await?;
    assert_eq!(
        states,
        vec![
            (1, 70, "complete".to_owned()),
            (71, 140, "planned".to_owned()),
            (141, 200, "complete".to_owned()),
        ]
    );
    // The written files sit under the planned range: the analyst glob sees each row once.
    let crashed = shas(&f.root)?;
    let seen = duckdb(&format!(
        "SELECT count(*), count(DISTINCT seq), max(seq) FROM read_parquet('{}')",
        f.glob(Dataset::UsageEvents, ExportFormat::Parquet)
    ))?;
    assert_eq!(seen, vec![serde_json::json!([200, 200, 200])]);

    // Recovery: the next run finishes the planned parts with the same bytes, then the rest.
    seed_usage(db, 200, 10).await?;
    let report = f
        .exporter(small_parts())
        .export(Dataset::UsageEvents, ExportFormat::Parquet, None, &Silent)
        .await?;
    assert_eq!(report.rows, 80, "part 71..=140, then 201..=210");
    let after = shas(&f.root)?;
    for (key, sha) in &crashed {
        if key.ends_with(".parquet") {
            assert_eq!(
                after.get(key),
                Some(sha),
                "{key} rewritten with other bytes"
            );
        }
    }
    let manifest = f.manifest(Dataset::UsageEvents).await?;
    assert_eq!(manifest.parts.iter().map(|p| p.rows).sum::<i64>(), 210);
    assert_eq!(
        manifest.parts.len(),
        after.keys().filter(|k| k.ends_with(".parquet")).count()
    );
    assert!(common::part_states(db)
        .await?
        .iter()
        .all(|(_, _, s)| s == "complete"));
    assert_usage_matches(&f, ExportFormat::Parquet).await?;
    Ok(())
}

async fn concurrent_runs_never_overlap(backend: Backend) -> anyhow::Result<()> {
    let f = fixture(backend).await?;
    seed_usage(f.tdb.db(), 0, 400).await?;
    let a = f.exporter(small_parts());
    let b = f.exporter(small_parts());
    let (ra, rb) = tokio::join!(
        a.export(Dataset::UsageEvents, ExportFormat::Parquet, None, &Silent),
        b.export(Dataset::UsageEvents, ExportFormat::Parquet, None, &Silent),
    );
    let (ra, rb) = (ra?, rb?);
    assert!(ra.rows + rb.rows >= 400, "{ra:?} {rb:?}");
    let states = common::part_states(f.tdb.db()).await?;
    for w in states.windows(2) {
        assert_eq!(
            w[0].1 + 1,
            w[1].0,
            "parts must tile the seq range: {states:?}"
        );
    }
    assert_usage_matches(&f, ExportFormat::Parquet).await?;
    let manifest = f.manifest(Dataset::UsageEvents).await?;
    assert_eq!(manifest.parts.iter().map(|p| p.rows).sum::<i64>(), 400);
    Ok(())
}

async fn every_dataset_exports(backend: Backend) -> anyhow::Result<()> {
    let f = fixture(backend).await?;
    let db = f.tdb.db();
    seed_usage(db, 0, 20).await?;
    for i in 0..30 {
        insert_ledger(db, &format!("s{i}"), "t1", -(i * 3), T0 + i * DAY_MS / 3).await?;
    }
    insert_job(db, "j1", "succeeded", T0, Some(T0 + 5_000)).await?;
    insert_job(db, "j2", "failed", T0 + DAY_MS, Some(T0 + DAY_MS + 7)).await?;
    insert_job(db, "j3", "queued", T0 + DAY_MS, None).await?;
    insert_job(
        db,
        "j4",
        "succeeded",
        T0 + 2 * DAY_MS,
        Some(T0 + 2 * DAY_MS + 9),
    )
    .await?;
    insert_upload(db, "uploads/t1/a", "clean", T0).await?;
    insert_upload(db, "uploads/t1/b", "pending", T0 + 1).await?;
    let exporter = f.exporter(ExportOptions::default());
    for dataset in Dataset::ALL {
        exporter
            .export(dataset, ExportFormat::Parquet, None, &Silent)
            .await?;
    }
    let count = |d: Dataset| {
        duckdb(&format!(
            "SELECT count(*) FROM read_parquet('{}', hive_partitioning=true)",
            f.glob(d, ExportFormat::Parquet)
        ))
    };
    assert_eq!(
        count(Dataset::LedgerEntries)?,
        vec![serde_json::json!([30])]
    );
    let ledger = duckdb(&format!(
        "SELECT sum(delta), count(ref) FROM read_parquet('{}')",
        f.glob(Dataset::LedgerEntries, ExportFormat::Parquet)
    ))?;
    let db_sum = db_scalar(db, "SELECT CAST(SUM(delta) AS BIGINT) FROM ledger_entries").await?;
    assert_eq!(ledger, vec![serde_json::json!([db_sum, 0])]);
    // Jobs stop before the first job not yet final (j3 is queued): j1, j2 only.
    let jobs = duckdb(&format!(
        "SELECT id, status, cancel_requested, typeof(progress), epoch_us(finished_at) \
         FROM read_parquet('{}') ORDER BY seq",
        f.glob(Dataset::Jobs, ExportFormat::Parquet)
    ))?;
    assert_eq!(
        jobs,
        vec![
            serde_json::json!(["j1", "succeeded", false, "DOUBLE", (T0 + 5_000) * 1000]),
            serde_json::json!(["j2", "failed", false, "DOUBLE", (T0 + DAY_MS + 7) * 1000]),
        ]
    );
    assert_eq!(count(Dataset::Uploads)?, vec![serde_json::json!([1])]);
    // Once j3 and the upload settle, the rest follows.
    exec(db, "UPDATE jobs SET status = 'cancelled'").await?;
    exec(db, "UPDATE uploads SET scan = 'clean'").await?;
    for dataset in [Dataset::Jobs, Dataset::Uploads] {
        exporter
            .export(dataset, ExportFormat::Parquet, None, &Silent)
            .await?;
    }
    assert_eq!(count(Dataset::Jobs)?, vec![serde_json::json!([4])]);
    assert_eq!(count(Dataset::Uploads)?, vec![serde_json::json!([2])]);
    Ok(())
}

async fn since_starts_a_new_dataset_only(backend: Backend) -> anyhow::Result<()> {
    let f = fixture(backend).await?;
    seed_usage(f.tdb.db(), 0, 50).await?;
    let exporter = f.exporter(small_parts());
    let report = exporter
        .export(
            Dataset::UsageEvents,
            ExportFormat::Parquet,
            Some(40),
            &Silent,
        )
        .await?;
    assert_eq!(report.rows, 10, "rows with seq > 40");
    let err = exporter
        .export(
            Dataset::UsageEvents,
            ExportFormat::Parquet,
            Some(0),
            &Silent,
        )
        .await
        .err()
        .context("--since on an exported dataset must be refused")?;
    let text = err.to_string();
    if !text.contains("already exported through seq 50") {
        bail!("unexpected error: {text}");
    }
    Ok(())
}

/// Every text value comes out exactly as stored (non-ASCII, quotes, newlines, empty strings,
/// nulls), row by row, through parts that span several batches and event dates.
async fn text_values_are_exact(backend: Backend) -> anyhow::Result<()> {
    let f = fixture(backend).await?;
    let db = f.tdb.db();
    let odd = [
        "",
        "ü-ß",
        "quote \" and \\",
        "line\nbreak",
        "emoji 🚀",
        "tab\tend",
    ];
    for i in 0..150_i64 {
        let text = odd[usize::try_from(i).unwrap_or(0) % odd.len()];
        let meta = (i % 4 != 0).then(|| format!("{{\"v\":{}}}", serde_json::json!(text)));
        let request = (i % 3 != 0).then(|| format!("{text}#{i}"));
        insert_usage(
            db,
            &format!("tenant {text}"),
            &format!("k{i}-{text}"),
            i + 1,
            i % 5,
            T0 + (i % 4) * DAY_MS + i,
            meta.as_deref(),
            request.as_deref(),
        )
        .await?;
    }
    f.exporter(small_parts())
        .export(Dataset::UsageEvents, ExportFormat::Parquet, None, &Silent)
        .await?;
    let exported = duckdb(&format!(
        "SELECT seq, tenant_id, idempotency_key, meta, request_id FROM read_parquet('{}') \
         ORDER BY seq",
        f.glob(Dataset::UsageEvents, ExportFormat::Parquet)
    ))?;
    const SQL: &str =
        "SELECT seq, tenant_id, idempotency_key, meta, request_id FROM usage_events ORDER BY seq";
    type Text = (i64, String, String, Option<String>, Option<String>);
    let stored: Vec<Text> = match db {
        cognomega_stores::Database::Sqlite(s) => sqlx::query_as(SQL).fetch_all(&s.write).await?,
        cognomega_stores::Database::Postgres(p) => sqlx::query_as(SQL).fetch_all(&p.pool).await?,
    };
    let stored: Vec<Value> = stored
        .into_iter()
        .map(|(seq, tenant, key, meta, request)| {
            serde_json::json!([seq, tenant, key, meta, request])
        })
        .collect();
    assert_eq!(stored.len(), 150);
    assert_eq!(exported, stored);
    Ok(())
}

both_backends!(
    exports_equal_the_database,
    ndjson_equals_the_database,
    a_crash_leaves_no_manifest_entry,
    concurrent_runs_never_overlap,
    every_dataset_exports,
    since_starts_a_new_dataset_only,
    text_values_are_exact,
);
