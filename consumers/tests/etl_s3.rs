//! Exports into a real S3-compatible server (s3s-fs, the object-store suite's server: install it
//! with `ops/s3.sh --install`): the same keys, manifest and bytes as on the local folder, read
//! back by DuckDB from the server's bucket folder. Both database backends.

mod common;
#[path = "../../stores/tests/common/mod.rs"]
mod s3;

use cognomega_consumers::etl::{ExportOptions, Exporter, Silent};
use cognomega_core::etl::{Dataset, ExportFormat, Manifest};
use cognomega_stores::objects::{ObjectKey, Objects};
use cognomega_testkit::{both_backends, Backend, TestDb};
use sha2::{Digest, Sha256};

use common::{db_scalar, duckdb, insert_usage, DAY_MS, T0};

async fn exports_to_s3(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let server = s3::s3();
    let (url, bucket_dir) = server.bucket();
    let objects = Objects::open_with_credentials(&url, &server.credentials())?;
    for i in 0..150 {
        insert_usage(
            tdb.db(),
            "t1",
            &format!("k{i}"),
            i + 1,
            i % 4,
            T0 + (i % 3) * DAY_MS,
            None,
            None,
        )
        .await?;
    }
    let options = ExportOptions {
        max_rows_per_part: 60,
        ..ExportOptions::default()
    };
    let exporter = Exporter::with_options(tdb.db().clone(), objects.clone(), options);
    let report = exporter
        .export(Dataset::UsageEvents, ExportFormat::Parquet, None, &Silent)
        .await?;
    assert_eq!((report.parts, report.rows), (3, 150));

    let (_, manifest) = objects
        .get_bytes(&ObjectKey::parse(&Dataset::UsageEvents.manifest_key())?)
        .await?;
    let manifest: Manifest = serde_json::from_slice(&manifest)?;
    assert_eq!(manifest.parts.len(), 9, "3 parts × 3 dates");
    for part in &manifest.parts {
        let key = ObjectKey::parse(&part.key)?;
        let (meta, bytes) = objects.get_bytes(&key).await?;
        assert_eq!(
            meta.content_type.as_deref(),
            Some("application/vnd.apache.parquet")
        );
        let sha: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sha, part.sha256);
        let url = objects
            .presign_get(&key, std::time::Duration::from_secs(60))
            .await?;
        assert!(url.is_some_and(|u| u.query().is_some_and(|q| q.contains("X-Amz-Signature"))));
    }
    let glob = format!("{}/exports/usage_events/*/*.parquet", bucket_dir.display());
    let duck = duckdb(&format!(
        "SELECT count(*), sum(quantity), sum(credits) FROM read_parquet('{glob}', hive_partitioning=true)"
    ))?;
    let db = [
        db_scalar(tdb.db(), "SELECT COUNT(*) FROM usage_events").await?,
        db_scalar(
            tdb.db(),
            "SELECT CAST(SUM(quantity) AS BIGINT) FROM usage_events",
        )
        .await?,
        db_scalar(
            tdb.db(),
            "SELECT CAST(SUM(credits) AS BIGINT) FROM usage_events",
        )
        .await?,
    ];
    assert_eq!(duck, vec![serde_json::json!(db)]);
    Ok(())
}

both_backends!(exports_to_s3);
