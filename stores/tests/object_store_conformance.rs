//! The object store port (`cognomega_stores::objects::Objects`), checked the same way against
//! every backend: the local folder (in a temporary directory) and a real S3-compatible server
//! (`s3s-fs` on loopback, started by `common::s3`; install it with `ops/s3.sh --install`).
//!
//! Each check is an `async fn name(backend: Backend) -> anyhow::Result<()>`; the
//! `conformance!` macro at the bottom turns it into `local::name` and `s3::name` tests. Where
//! the backends legitimately differ (attributes, presigned URLs) the check says so explicitly.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{ensure, Context};
use bytes::Bytes;
use cognomega_stores::objects::{
    ObjectError, ObjectKey, ObjectStoreUrl, Objects, PutMeta, PARTS_IN_FLIGHT, PART_SIZE,
};
use futures::{stream, StreamExt, TryStreamExt};

/// Counts live heap bytes, so the streamed-upload check can measure its peak memory.
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Held by every check that allocates megabytes (streamed uploads), so the one that measures
/// the allocator's count sees only its own.
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Local,
    S3,
}

/// One test's store, and the folder where its objects sit on disk (the local folder itself, or
/// the bucket's folder inside s3s-fs), for planting objects behind the store's back.
struct Fixture {
    objects: Objects,
    on_disk: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    fn new(backend: Backend) -> anyhow::Result<Self> {
        match backend {
            Backend::Local => {
                let dir = tempfile::tempdir()?;
                // A folder that does not exist yet: opening creates it.
                let root = dir.path().join("objects");
                let url = ObjectStoreUrl::parse(&format!("file://{}", root.display()))?;
                Ok(Fixture {
                    objects: Objects::open(&url)?,
                    on_disk: root,
                    _dir: Some(dir),
                })
            }
            Backend::S3 => {
                let server = common::s3();
                let (url, on_disk) = server.bucket();
                Ok(Fixture {
                    objects: Objects::open_with_credentials(&url, &server.credentials())?,
                    on_disk,
                    _dir: None,
                })
            }
        }
    }

    async fn put(&self, key: &str, body: &'static [u8]) -> anyhow::Result<ObjectKey> {
        let key = k(key);
        self.objects
            .put(&key, Bytes::from_static(body), &PutMeta::default())
            .await?;
        Ok(key)
    }

    async fn keys(&self, prefix: Option<&str>) -> anyhow::Result<Vec<String>> {
        let prefix = prefix.map(k);
        let all = self.objects.list_all(prefix.as_ref()).await?;
        Ok(all.into_iter().map(|m| m.key.to_string()).collect())
    }
}

fn k(raw: &str) -> ObjectKey {
    ObjectKey::parse(raw).unwrap_or_else(|e| panic!("{e}"))
}

async fn put_then_get_round_trips(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    let key = f
        .put("jobs/1/artifacts/index.html", b"<h1>hello</h1>")
        .await?;
    let (meta, body) = f.objects.get_bytes(&key).await?;
    ensure!(body.as_ref() == b"<h1>hello</h1>", "body {body:?}");
    ensure!(meta.key == key && meta.size == 14, "{meta:?}");
    ensure!(meta.e_tag.is_some(), "no ETag: {meta:?}");
    let since_write = chrono::Utc::now() - meta.last_modified;
    ensure!(
        since_write.num_seconds().abs() < 120,
        "last_modified {meta:?}"
    );
    // Streaming read of the same object.
    let chunks: Vec<Bytes> = f.objects.get(&key).await?.stream.try_collect().await?;
    ensure!(chunks.concat() == b"<h1>hello</h1>");
    // Empty objects are objects too.
    let empty = f.put("jobs/1/empty", b"").await?;
    ensure!(f.objects.get_bytes(&empty).await?.1.is_empty());
    ensure!(f.objects.head(&empty).await?.map(|m| m.size) == Some(0));
    Ok(())
}

async fn head_reports_size_or_none(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    let key = f.put("a/b.txt", b"12345").await?;
    let meta = f
        .objects
        .head(&key)
        .await?
        .context("head of an existing object")?;
    ensure!(meta.size == 5 && meta.key == key, "{meta:?}");
    ensure!(f.objects.head(&k("a/missing.txt")).await?.is_none());
    if let Backend::Local = backend {
        // A folder on the way to an object is not an object. (S3 has no folders; s3s-fs,
        // which keeps objects as files, answers 500 for a key naming one of its folders.)
        ensure!(f.objects.head(&k("a")).await?.is_none());
    }
    Ok(())
}

async fn delete_removes_and_is_idempotent(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    let key = f.put("uploads/x/file.bin", b"bytes").await?;
    f.objects.delete(&key).await?;
    ensure!(f.objects.head(&key).await?.is_none());
    ensure!(f
        .objects
        .get(&key)
        .await
        .err()
        .is_some_and(|e| e.is_not_found()));
    f.objects.delete(&key).await?;
    f.objects.delete(&k("never/was")).await?;
    ensure!(f.keys(None).await?.is_empty());
    Ok(())
}

async fn list_filters_by_prefix_segment_wise(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    for key in [
        "jobs/1/a.html",
        "jobs/1/assets/b.css",
        "jobs/10/c.json",
        "uploads/d",
    ] {
        f.put(key, b"x").await?;
    }
    ensure!(f.keys(Some("jobs/1")).await? == ["jobs/1/a.html", "jobs/1/assets/b.css"]);
    ensure!(f.keys(Some("jobs")).await?.len() == 3);
    ensure!(f.keys(None).await?.len() == 4);
    ensure!(f.keys(Some("nothing/here")).await?.is_empty());
    let sizes: Vec<u64> = f
        .objects
        .list_all(Some(&k("jobs")))
        .await?
        .iter()
        .map(|m| m.size)
        .collect();
    ensure!(sizes == [1, 1, 1], "{sizes:?}");
    // The stream form yields the same objects.
    let streamed: Vec<_> = f.objects.list(Some(&k("jobs/1"))).try_collect().await?;
    ensure!(streamed.len() == 2);
    Ok(())
}

async fn list_skips_objects_that_are_not_valid_keys(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    f.put("ok/one", b"1").await?;
    // Written behind the store's back, with a name no ObjectKey can have.
    std::fs::create_dir_all(f.on_disk.join("ok"))?;
    std::fs::write(f.on_disk.join("ok").join("with space"), b"2")?;
    ensure!(f.keys(Some("ok")).await? == ["ok/one"]);
    Ok(())
}

async fn overwrite_replaces_the_object(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    let key = f.put("jobs/2/out.json", b"{\"v\":1}").await?;
    let first = f.objects.head(&key).await?.context("first version")?;
    f.objects
        .put(
            &key,
            Bytes::from_static(b"{\"v\":2,\"more\":true}"),
            &PutMeta::default(),
        )
        .await?;
    let (second, body) = f.objects.get_bytes(&key).await?;
    ensure!(body.as_ref() == b"{\"v\":2,\"more\":true}", "{body:?}");
    ensure!(second.size == 19, "{second:?}");
    ensure!(
        second.e_tag != first.e_tag,
        "ETag unchanged: {first:?} {second:?}"
    );
    ensure!(f.keys(None).await? == ["jobs/2/out.json"]);
    Ok(())
}

async fn missing_keys_are_not_found(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    let missing = k("jobs/404/nothing.txt");
    let err = f
        .objects
        .get(&missing)
        .await
        .err()
        .context("get of a missing key")?;
    ensure!(
        matches!(&err, ObjectError::NotFound { key } if *key == missing),
        "{err:?}"
    );
    ensure!(
        err.to_string() == "object jobs/404/nothing.txt not found",
        "{err}"
    );
    let err = f
        .objects
        .get_range(&missing, 0..1)
        .await
        .err()
        .context("range")?;
    ensure!(err.is_not_found(), "{err:?}");
    let err = f
        .objects
        .copy(&missing, &k("x"))
        .await
        .err()
        .context("copy")?;
    ensure!(err.is_not_found(), "{err:?}");
    let err = f
        .objects
        .rename(&missing, &k("x"))
        .await
        .err()
        .context("rename")?;
    ensure!(err.is_not_found(), "{err:?}");
    Ok(())
}

async fn invalid_keys_never_reach_the_store(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    for raw in [
        "../escape",
        "/abs",
        "a//b",
        "a/./b",
        "a\nb",
        "a b",
        "",
        "trailing/",
    ] {
        let err = ObjectKey::parse(raw)
            .err()
            .with_context(|| format!("{raw:?} was accepted"))?;
        let shown = ObjectError::from(err).to_string();
        ensure!(shown.starts_with("invalid object key"), "{shown}");
    }
    ensure!(ObjectKey::parse(&"k".repeat(1025)).is_err());
    ensure!(k("base").join("../../etc").is_err());
    // The longest valid key works end to end on the local folder (segments under the 255-byte
    // file-name limit). Not against s3s-fs: it names a metadata file after the whole key, which
    // no filesystem accepts at this length; real S3 and R2 take 1024-byte keys.
    if let Backend::Local = backend {
        let segments: Vec<String> = (0..6).map(|i| "s".repeat(170 - i / 5)).collect();
        let longest = k(&segments.join("/"));
        ensure!(longest.as_str().len() == ObjectKey::MAX_LEN);
        f.objects
            .put(&longest, Bytes::from_static(b"x"), &PutMeta::default())
            .await?;
        ensure!(f.objects.head(&longest).await?.is_some());
    }
    Ok(())
}

async fn get_range_reads_a_slice(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    let key = f.put("r/digits", b"0123456789").await?;
    ensure!(f.objects.get_range(&key, 2..5).await?.as_ref() == b"234");
    ensure!(f.objects.get_range(&key, 8..10).await?.as_ref() == b"89");
    Ok(())
}

async fn copy_and_rename_move_objects(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    let original = f.put("uploads/u1/report.pdf", b"%PDF-1.7").await?;
    let copy = k("exports/copy.pdf");
    f.objects.copy(&original, &copy).await?;
    ensure!(f.objects.get_bytes(&copy).await?.1.as_ref() == b"%PDF-1.7");
    ensure!(f.objects.head(&original).await?.is_some());
    let quarantined = k("_quarantine/uploads/u1/report.pdf");
    f.objects.rename(&original, &quarantined).await?;
    ensure!(f.objects.head(&original).await?.is_none());
    ensure!(f.objects.get_bytes(&quarantined).await?.1.as_ref() == b"%PDF-1.7");
    // Renaming onto an existing object replaces it, even one that shares the source's file
    // (the local folder copies by hard link).
    f.objects.rename(&copy, &quarantined).await?;
    let keys = f.keys(None).await?;
    ensure!(keys == ["_quarantine/uploads/u1/report.pdf"], "{keys:?}");
    // Onto itself, both are no-ops (not a delete, not an error), and still NotFound if missing.
    f.objects.copy(&quarantined, &quarantined).await?;
    f.objects.rename(&quarantined, &quarantined).await?;
    ensure!(f.objects.get_bytes(&quarantined).await?.1.as_ref() == b"%PDF-1.7");
    ensure!(f
        .objects
        .rename(&copy, &copy)
        .await
        .err()
        .is_some_and(|e| e.is_not_found()));
    Ok(())
}

async fn attributes_are_kept_where_the_backend_can(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    let key = k("jobs/3/artifacts/index.html");
    let meta = PutMeta::content_type("text/html; charset=utf-8")
        .with("compression", "zstd")
        .with(
            "sha256",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        );
    f.objects
        .put(&key, Bytes::from_static(b"<p>"), &meta)
        .await?;
    let head = f.objects.head(&key).await?.context("head")?;
    let got = f.objects.get(&key).await?.meta;
    let streamed = k("jobs/3/artifacts/app.css");
    let chunks = stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"p{}"))]);
    f.objects
        .put_stream(&streamed, chunks, &PutMeta::content_type("text/css"))
        .await?;
    let streamed_head = f
        .objects
        .head(&streamed)
        .await?
        .context("head of streamed")?;
    match backend {
        Backend::S3 => {
            ensure!(f.objects.keeps_attributes());
            for m in [&head, &got] {
                ensure!(
                    m.content_type.as_deref() == Some("text/html; charset=utf-8"),
                    "{m:?}"
                );
                ensure!(
                    m.metadata
                        == [
                            ("compression".to_owned(), "zstd".to_owned()),
                            ("sha256".to_owned(), meta.metadata[1].1.clone()),
                        ],
                    "{m:?}"
                );
            }
            ensure!(streamed_head.content_type.as_deref() == Some("text/css"));
        }
        Backend::Local => {
            // The folder has nowhere to keep them: the database row is the record.
            ensure!(!f.objects.keeps_attributes());
            ensure!(
                head.content_type.is_none() && head.metadata.is_empty(),
                "{head:?}"
            );
            ensure!(streamed_head.content_type.is_none());
        }
    }
    Ok(())
}

/// The `i`-th chunk of the streamed test object: 256 KiB of a pattern that differs per chunk,
/// so a reordered or dropped part shows up.
fn chunk(i: usize) -> Bytes {
    let mut data = vec![0u8; 256 * 1024];
    for (j, byte) in data.iter_mut().enumerate() {
        *byte = ((i * 31 + j * 7) % 251) as u8;
    }
    Bytes::from(data)
}

async fn put_stream_uploads_large_objects_in_bounded_memory(
    backend: Backend,
) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    let _alone = MEASURING.lock().await;
    const TOTAL: usize = 40 * MIB;
    let chunks = TOTAL / (256 * 1024);
    let key = k("exports/usage/dt=2024-05-01/part-0000.ndjson.zst");
    let baseline = ALLOCATOR.allocated();
    let peak = AtomicUsize::new(0);
    let source = stream::iter(0..chunks).map(|i| {
        peak.fetch_max(
            ALLOCATOR.allocated().saturating_sub(baseline),
            Ordering::Relaxed,
        );
        Ok::<_, std::io::Error>(chunk(i))
    });
    let written = f
        .objects
        .put_stream(&key, source, &PutMeta::content_type("application/zstd"))
        .await?;
    let peak = peak.load(Ordering::Relaxed);
    ensure!(written == TOTAL as u64);
    println!(
        "{backend:?}: streamed {} MiB with a heap peak of {:.1} MiB",
        TOTAL / MIB,
        peak as f64 / MIB as f64
    );
    // One part filling, PARTS_IN_FLIGHT uploading, one chunk of slack; far below the object.
    let bound = PART_SIZE * (PARTS_IN_FLIGHT + 2);
    ensure!(
        peak < bound,
        "streamed upload peaked at {} MiB of heap (bound {} MiB, object {} MiB)",
        peak / MIB,
        bound / MIB,
        TOTAL / MIB
    );
    let meta = f
        .objects
        .head(&key)
        .await?
        .context("head after put_stream")?;
    ensure!(meta.size == TOTAL as u64, "{meta:?}");
    // Read it back as a stream and compare chunk by chunk, without holding it all.
    let mut body = f.objects.get(&key).await?.stream;
    let mut expected = (0..chunks).map(chunk).flat_map(|c| c.to_vec());
    let mut seen = 0;
    while let Some(part) = body.try_next().await? {
        for byte in part.iter() {
            ensure!(Some(*byte) == expected.next(), "mismatch at byte {seen}");
            seen += 1;
        }
    }
    ensure!(
        seen == TOTAL && expected.next().is_none(),
        "read {seen} bytes"
    );
    Ok(())
}

async fn put_stream_failure_leaves_nothing_behind(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    let _alone = MEASURING.lock().await;
    let key = k("uploads/partial.bin");
    // Past the first part (so a multipart upload is under way), then the source fails.
    let source = stream::iter(0..30).map(|i| {
        if i < 28 {
            Ok(chunk(i))
        } else {
            Err(std::io::Error::other("client went away"))
        }
    });
    let err = f
        .objects
        .put_stream(&key, source, &PutMeta::default())
        .await
        .err()
        .context("a failing source must fail the upload")?;
    ensure!(matches!(err, ObjectError::Source(_)), "{err:?}");
    ensure!(err.to_string().contains("client went away"), "{err}");
    ensure!(f.objects.head(&key).await?.is_none());
    ensure!(f.keys(None).await?.is_empty());
    // A failure before the first part is complete never starts an upload at all.
    let early = stream::iter([Ok(chunk(0)), Err(std::io::Error::other("early"))]);
    ensure!(f
        .objects
        .put_stream(&key, early, &PutMeta::default())
        .await
        .is_err());
    ensure!(f.objects.head(&key).await?.is_none());
    Ok(())
}

async fn put_stream_small_and_empty_objects(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    let small = k("s/small");
    let parts = stream::iter(
        [b"ab".as_slice(), b"", b"cd"].map(|b| Ok::<_, std::io::Error>(Bytes::from_static(b))),
    );
    ensure!(
        f.objects
            .put_stream(&small, parts, &PutMeta::default())
            .await?
            == 4
    );
    ensure!(f.objects.get_bytes(&small).await?.1.as_ref() == b"abcd");
    let empty = k("s/empty");
    let none = stream::iter(Vec::<Result<Bytes, std::io::Error>>::new());
    ensure!(
        f.objects
            .put_stream(&empty, none, &PutMeta::default())
            .await?
            == 0
    );
    ensure!(f.objects.head(&empty).await?.map(|m| m.size) == Some(0));
    Ok(())
}

async fn presigned_get_urls(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    let key = f.put("jobs/9/artifacts/app.js", b"console.log(1)").await?;
    let url = f
        .objects
        .presign_get(&key, Duration::from_secs(300))
        .await?;
    let Backend::S3 = backend else {
        ensure!(url.is_none(), "the local folder has no URLs: {url:?}");
        return Ok(());
    };
    let url = url.context("S3 must presign")?;
    ensure!(
        url.query().is_some_and(|q| q.contains("X-Amz-Signature=")),
        "{url}"
    );
    cognomega_core::tls::install();
    let http = reqwest::Client::new();
    let ok = http.get(url.clone()).send().await?;
    ensure!(ok.status() == 200, "presigned GET: {}", ok.status());
    ensure!(ok.bytes().await?.as_ref() == b"console.log(1)");

    // The same signature for another key, and a flipped signature, are both refused.
    let other = f.put("jobs/9/artifacts/secret.txt", b"no").await?;
    let mut moved = url.clone();
    moved.set_path(&url.path().replace(key.as_str(), other.as_str()));
    let mut tampered = url.clone();
    let query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(n, v)| {
            let v = if n == "X-Amz-Signature" {
                v.chars().rev().collect()
            } else {
                v.into_owned()
            };
            (n.into_owned(), v)
        })
        .collect();
    tampered.query_pairs_mut().clear().extend_pairs(query);
    for bad in [moved, tampered] {
        let refused = http.get(bad.clone()).send().await?;
        ensure!(refused.status() == 403, "{bad}: {}", refused.status());
    }
    // A URL past its expiry is refused too.
    let short = f
        .objects
        .presign_get(&key, Duration::from_secs(1))
        .await?
        .context("presign")?;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let expired = http.get(short).send().await?;
    ensure!(expired.status() == 403, "expired URL: {}", expired.status());
    Ok(())
}

async fn debug_output_hides_credentials(backend: Backend) -> anyhow::Result<()> {
    let f = Fixture::new(backend)?;
    let shown = format!("{:?}", f.objects);
    ensure!(!shown.contains("cognomega-test-secret"), "{shown}");
    match backend {
        Backend::Local => ensure!(shown.starts_with("Objects(file:///"), "{shown}"),
        Backend::S3 => ensure!(shown.starts_with("Objects(s3://test-"), "{shown}"),
    }
    Ok(())
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Backend::Local).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Backend::S3).await
                }
            )*
        }
    };
}

conformance!(
    put_then_get_round_trips,
    head_reports_size_or_none,
    delete_removes_and_is_idempotent,
    list_filters_by_prefix_segment_wise,
    list_skips_objects_that_are_not_valid_keys,
    overwrite_replaces_the_object,
    missing_keys_are_not_found,
    invalid_keys_never_reach_the_store,
    get_range_reads_a_slice,
    copy_and_rename_move_objects,
    attributes_are_kept_where_the_backend_can,
    put_stream_uploads_large_objects_in_bounded_memory,
    put_stream_failure_leaves_nothing_behind,
    put_stream_small_and_empty_objects,
    presigned_get_urls,
    debug_output_hides_credentials,
);
