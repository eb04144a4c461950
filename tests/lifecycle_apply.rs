//! `cognomega lifecycle plan|apply` as a user runs them (the binary, in a temporary directory).
//!
//! `apply` is checked against a loopback HTTP server that speaks the one S3 call it makes
//! (`PUT /{bucket}?lifecycle`) and verifies it the way S3 does: the SigV4 signature recomputed
//! from the request with the secret key, `x-amz-content-sha256` and `Content-MD5` against the
//! body, and the XML. (R2's lifecycle API is a paid cloud API; this fake stands in for it.)
//! And against s3s-fs, the real S3-compatible test server, whose answer must be reported
//! clearly.

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::put;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cognomega");
const KEY_ID: &str = "AKIDLIFECYCLETEST";
const SECRET: &str = "lifecycle-test-secret";

async fn cognomega(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd).args(args).stdin(Stdio::null());
    for var in [
        "COGNOMEGA_S3_ACCESS_KEY_ID",
        "COGNOMEGA_S3_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "COGNOMEGA_LIFECYCLE_POLICY",
        "COGNOMEGA_OBJECTS_URL",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    Ok(cmd.output().await?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn plan_renders_the_policy_and_a_file_overrides_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = cognomega(dir.path(), &[], &["lifecycle", "plan"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let xml = text(&out.stdout);
    for part in [
        "<ID>artifacts</ID>",
        "<Filter><Prefix>artifacts/</Prefix></Filter>",
        "<Transition><Days>60</Days><StorageClass>STANDARD_IA</StorageClass></Transition>",
        "<Expiration><Days>90</Days></Expiration>",
        "<ID>quarantine</ID>",
        "sweeper-only",
    ] {
        assert!(xml.contains(part), "{part} missing:\n{xml}");
    }
    assert!(text(&out.stderr).contains("artifacts/: recompress text at zstd 19 after 30 days"));

    let file = dir.path().join("policy.toml");
    std::fs::write(
        &file,
        "[rules.exports]\nprefix = \"exports/\"\ndelete_after_days = 400\n",
    )?;
    let out = cognomega(
        dir.path(),
        &[(
            "COGNOMEGA_LIFECYCLE_POLICY",
            file.to_str().unwrap_or_default(),
        )],
        &["lifecycle", "plan"],
    )
    .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("<Expiration><Days>400</Days></Expiration>"));

    std::fs::write(
        &file,
        "[rules.exports]\nprefix = \"exports/\"\ndelete_after = 400\n",
    )?;
    let out = cognomega(
        dir.path(),
        &[],
        &[
            "--lifecycle-policy",
            file.to_str().unwrap_or_default(),
            "lifecycle",
            "plan",
        ],
    )
    .await?;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("policy.toml") && err.contains("delete_after"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn apply_on_the_local_folder_sends_nothing_and_says_why() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = cognomega(dir.path(), &[], &["lifecycle", "apply"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("local folder") && said.contains("sweep"),
        "{said}"
    );
    Ok(())
}

/// What the fake provider saw and decided.
#[derive(Debug, Default)]
struct Seen {
    requests: Vec<(String, Result<String, String>)>,
}

type Shared = Arc<Mutex<Seen>>;

/// The fake `PutBucketLifecycleConfiguration`: verifies like S3, answers like S3.
async fn put_lifecycle(
    State(seen): State<Shared>,
    UrlPath(bucket): UrlPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let verdict = verify(&bucket, query.as_deref(), &headers, &body);
    let answer = match &verdict {
        Ok(_) => (StatusCode::OK, String::new()),
        Err(code) => (
            StatusCode::FORBIDDEN,
            format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>verification failed</Message></Error>"),
        ),
    };
    if let Ok(mut s) = seen.lock() {
        s.requests.push((bucket, verdict));
    }
    answer
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|e| panic!("{e}"));
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Checks a request the way S3 does; `Ok(xml)` or `Err(S3 error code)`.
fn verify(
    bucket: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .ok_or_else(|| format!("Missing-{name}"))
    };
    if query != Some("lifecycle") {
        return Err("InvalidRequest".into());
    }
    if header("content-md5")? != B64.encode(Md5::digest(body)) {
        return Err("BadDigest".into());
    }
    let payload_hash = header("x-amz-content-sha256")?;
    if payload_hash != hex(&Sha256::digest(body)) {
        return Err("XAmzContentSHA256Mismatch".into());
    }
    let auth = header("authorization")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("AuthorizationHeaderMalformed")?;
    let field = |name: &str| {
        rest.split(", ")
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .ok_or_else(|| "AuthorizationHeaderMalformed".to_owned())
    };
    let credential = field("Credential")?;
    let signed_headers = field("SignedHeaders")?;
    let signature = field("Signature")?;
    let mut scope = credential.splitn(2, '/');
    let (key_id, scope) = (scope.next().unwrap_or(""), scope.next().unwrap_or(""));
    if key_id != KEY_ID {
        return Err("InvalidAccessKeyId".into());
    }
    let parts: Vec<&str> = scope.split('/').collect();
    let &[date, region, service, "aws4_request"] = parts.as_slice() else {
        return Err("AuthorizationHeaderMalformed".into());
    };
    for needed in ["host", "x-amz-date", "x-amz-content-sha256", "content-md5"] {
        if !signed_headers.split(';').any(|h| h == needed) {
            return Err(format!("UnsignedHeader-{needed}"));
        }
    }
    let canonical_headers: String = signed_headers
        .split(';')
        .map(|h| Ok(format!("{h}:{}\n", header(h)?)))
        .collect::<Result<_, String>>()?;
    let canonical_request = format!(
        "PUT\n/{bucket}\nlifecycle=\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
    );
    let amz_date = header("x-amz-date")?;
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{SECRET}").as_bytes(), date);
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part);
    }
    if hex(&hmac(&key, &string_to_sign)) != signature {
        return Err("SignatureDoesNotMatch".into());
    }
    String::from_utf8(body.to_vec()).map_err(|_| "MalformedXML".to_owned())
}

async fn fake_provider() -> anyhow::Result<(String, Shared)> {
    let seen = Shared::default();
    let app = axum::Router::new()
        .route("/{bucket}", put(put_lifecycle))
        .fallback(|method: Method| async move {
            (StatusCode::NOT_IMPLEMENTED, format!("unexpected {method}"))
        })
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}"), seen))
}

#[tokio::test]
async fn apply_sends_a_signed_configuration_the_provider_verifies() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (endpoint, seen) = fake_provider().await?;
    let url = format!("s3://media?endpoint={endpoint}&region=auto");
    let env = [
        ("COGNOMEGA_S3_ACCESS_KEY_ID", KEY_ID),
        ("COGNOMEGA_S3_SECRET_ACCESS_KEY", SECRET),
    ];
    let out = cognomega(
        dir.path(),
        &env,
        &["--objects-url", &url, "lifecycle", "apply"],
    )
    .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("HTTP 200") && said.contains("sweeper-only"),
        "{said}"
    );
    let (bucket, verdict) = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .requests
        .pop()
        .ok_or_else(|| anyhow::anyhow!("the provider got no request"))?;
    assert_eq!(bucket, "media");
    let xml = verdict.map_err(|code| anyhow::anyhow!("the provider refused it: {code}"))?;
    let plan = cognomega(dir.path(), &[], &["lifecycle", "plan"]).await?;
    assert_eq!(
        xml,
        text(&plan.stdout),
        "apply sends exactly what plan shows"
    );

    // A wrong secret: the provider's refusal reaches the user, code and all.
    let env = [
        ("COGNOMEGA_S3_ACCESS_KEY_ID", KEY_ID),
        ("COGNOMEGA_S3_SECRET_ACCESS_KEY", "not-the-secret"),
    ];
    let out = cognomega(
        dir.path(),
        &env,
        &["--objects-url", &url, "lifecycle", "apply"],
    )
    .await?;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("HTTP 403") && err.contains("SignatureDoesNotMatch"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn apply_against_s3s_fs_reports_the_providers_answer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = cognomega_testkit::s3();
    let (url, _) = server.bucket();
    let creds = server.credentials();
    let env = [
        ("COGNOMEGA_S3_ACCESS_KEY_ID", creds.access_key_id.as_str()),
        ("COGNOMEGA_S3_SECRET_ACCESS_KEY", creds.expose_secret()),
    ];
    let url = url.to_string();
    let out = cognomega(
        dir.path(),
        &env,
        &["--objects-url", &url, "lifecycle", "apply"],
    )
    .await?;
    let (said, err) = (text(&out.stdout), text(&out.stderr));
    // s3s-fs implements no bucket lifecycle: it must say so, and we must pass that on.
    assert!(!out.status.success(), "{said}");
    assert!(
        err.contains("refused the lifecycle configuration: HTTP 501 NotImplemented"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn sweep_from_the_command_line_reports_and_is_idempotent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let export = dir.path().join("cognomega-data/objects/exports/usage");
    std::fs::create_dir_all(&export)?;
    std::fs::write(export.join("part-0000.ndjson"), "{}\n")?;
    let as_of = (chrono::Utc::now() + chrono::Duration::days(40)).to_rfc3339();
    let sweep = |dry: bool| {
        let mut args = vec!["lifecycle", "sweep", "--json", "--as-of", as_of.as_str()];
        if dry {
            args.push("--dry-run");
        }
        let dir = dir.path().to_owned();
        async move {
            let out = cognomega(&dir, &[], &args).await?;
            anyhow::ensure!(out.status.success(), "{}", text(&out.stderr));
            Ok::<serde_json::Value, anyhow::Error>(serde_json::from_slice(&out.stdout)?)
        }
    };
    let dry = sweep(true).await?;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["report"]["to_infrequent_access"]["objects"], 1, "{dry}");
    let done = sweep(false).await?;
    assert_eq!(
        done["report"]["to_infrequent_access"]["objects"], 1,
        "{done}"
    );
    assert_eq!(
        done["report"]["census"]["infrequent_access"]["objects"], 1,
        "{done}"
    );
    let again = sweep(false).await?;
    assert_eq!(
        again["report"]["to_infrequent_access"]["objects"], 0,
        "{again}"
    );
    assert_eq!(again["report"]["examined"], 1, "{again}");
    // The text form names every tier and the bytes saved.
    let out = cognomega(dir.path(), &[], &["lifecycle", "sweep", "--dry-run"]).await?;
    let said = text(&out.stdout);
    assert!(
        said.contains("bytes saved: 0") && said.contains("infrequent_access"),
        "{said}"
    );
    Ok(())
}
