//! Observability: per-route request metrics, money and scan totals on `/metrics` (both
//! backends); the dashboard and alert rules only name metrics a live server serves; and the
//! request id of an HTTP call shows up in the consumers' JSON log lines with the queue and
//! message id, through the real `cognomega serve` binary.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cognomega_pipelines::synth::Sketch;
use cognomega_testkit::{both_backends, wait_for, Backend, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

both_backends!(requests_money_and_scans_are_counted);

/// The value of the sample `series` (name and labels exactly as served), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

fn must(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("{series} is not served:\n{text}"))
}

async fn metrics(app: &TestApp) -> anyhow::Result<String> {
    let resp = app.client.get(app.url("/metrics")).send().await?;
    anyhow::ensure!(resp.status() == 200, "GET /metrics: {}", resp.status());
    Ok(resp.text().await?)
}

async fn requests_money_and_scans_are_counted(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let g = app.guest().await?;
    wait_for(Duration::from_secs(30), || async {
        Ok((app.balance(&g).await? == 1000).then_some(()))
    })
    .await?;

    // Requests of known routes, statuses and methods.
    for _ in 0..3 {
        let resp = app.client.get(app.url("/healthz")).send().await?;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    for _ in 0..2 {
        let resp = app
            .client
            .get(app.url("/jobs/0190aaaa-0000-7000-8000-00000000dead"))
            .bearer_auth(&g.token)
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    let resp = app.client.get(app.url("/no/such/route")).send().await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = app.client.delete(app.url("/healthz")).send().await?;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

    // Money: 2,500 input tokens cost 3 credits (1 per 1,000, rounded up).
    let resp = app
        .client
        .post(app.url("/usage"))
        .bearer_auth(&g.token)
        .json(&json!({"idempotency_key": "m1", "kind": "tokens_in", "quantity": 2500}))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    wait_for(Duration::from_secs(30), || async {
        Ok((app.balance(&g).await? == 997).then_some(()))
    })
    .await?;

    // Scans: four uploads (no scanner: `skipped`), three then decided as the scanner would.
    let mut keys = Vec::new();
    for i in 0..4 {
        let resp = app
            .client
            .post(app.url("/upload/direct"))
            .bearer_auth(&g.token)
            .header("Content-Type", "text/plain")
            .header("X-Filename", format!("f{i}.txt"))
            .body(format!("file {i}"))
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::CREATED);
        keys.push(
            resp.json::<Value>().await?["key"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    app.wait_idle(Duration::from_secs(30)).await?;
    let db = app.tdb.db();
    cognomega_stores::uploads::set_scan(db, &keys[0], "clean", None, None, None).await?;
    cognomega_stores::uploads::set_scan(db, &keys[1], "infected", Some("Test.Sig"), None, None)
        .await?;
    cognomega_stores::uploads::set_scan(db, &keys[2], "scan_failed", None, Some("down"), None)
        .await?;

    let first = metrics(&app).await?;
    let text = metrics(&app).await?;

    // Status counts per route template; unmatched paths share one label.
    for (series, n) in [
        (
            r#"cognomega_http_requests_total{method="GET",route="/healthz",status="200"}"#,
            3.0,
        ),
        (
            r#"cognomega_http_requests_total{method="GET",route="/jobs/{id}",status="404"}"#,
            2.0,
        ),
        (
            r#"cognomega_http_requests_total{method="GET",route="unmatched",status="404"}"#,
            1.0,
        ),
        // A method the route does not have matches no route either.
        (
            r#"cognomega_http_requests_total{method="DELETE",route="unmatched",status="405"}"#,
            1.0,
        ),
        (
            r#"cognomega_http_requests_total{method="POST",route="/usage",status="202"}"#,
            1.0,
        ),
        (
            r#"cognomega_http_requests_total{method="POST",route="/auth/guest",status="200"}"#,
            1.0,
        ),
        (
            r#"cognomega_http_requests_total{method="POST",route="/upload/direct",status="201"}"#,
            4.0,
        ),
        // The first scrape is counted once its response is written: the second sees it.
        (
            r#"cognomega_http_requests_total{method="GET",route="/metrics",status="200"}"#,
            1.0,
        ),
    ] {
        assert_eq!(must(&text, series), n, "{series}");
    }
    assert_eq!(
        sample(
            &first,
            r#"cognomega_http_requests_total{method="GET",route="/metrics",status="200"}"#
        ),
        None,
        "a scrape is not in its own output"
    );
    // The latency histogram of /healthz: three observations, cumulative buckets.
    let labels = r#"method="GET",route="/healthz""#;
    assert_eq!(
        must(
            &text,
            &format!("cognomega_http_request_duration_seconds_count{{{labels}}}")
        ),
        3.0
    );
    let mut last = 0.0;
    for le in cognomega_producers::http_metrics::LATENCY_BUCKETS_US
        .iter()
        .map(|us| format!("{}", *us as f64 / 1e6))
        .chain(["+Inf".to_owned()])
    {
        let v = must(
            &text,
            &format!("cognomega_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}}"),
        );
        assert!(v >= last, "buckets are cumulative: le={le} {v} < {last}");
        last = v;
    }
    assert_eq!(last, 3.0);
    assert!(
        must(
            &text,
            &format!("cognomega_http_request_duration_seconds_sum{{{labels}}}")
        ) > 0.0
    );

    // Money from the ledger; scans from the uploads' recorded results.
    // 3 for the tokens and 1 per upload (`storage_bytes`: 1 credit per MiB, rounded up), as
    // the balance says.
    assert_eq!(app.balance(&g).await?, 1000 - 3 - 4);
    assert_eq!(must(&text, "cognomega_credits_charged_total"), 7.0);
    assert_eq!(must(&text, "cognomega_credits_granted_total"), 1000.0);
    for (result, n) in [
        ("clean", 1.0),
        ("infected", 1.0),
        ("error", 1.0),
        ("skipped", 1.0),
    ] {
        assert_eq!(
            must(
                &text,
                &format!("cognomega_uploads_scanned_total{{result=\"{result}\"}}")
            ),
            n,
            "{result}"
        );
    }
    app.stop().await
}

/// Every `cognomega_*` metric name in `expr`.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(at) = rest.find("cognomega_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        into.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
}

fn exprs_in_json(v: &Value, into: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(s)) => metric_names(s, into),
                    _ => exprs_in_json(v, into),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs_in_json(v, into)),
        _ => {}
    }
}

/// A served metric: `# TYPE name …`, or a histogram's `_bucket`/`_sum`/`_count` series.
fn served(text: &str, name: &str) -> bool {
    let declared = |n: &str| text.lines().any(|l| l.starts_with(&format!("# TYPE {n} ")));
    declared(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|base| {
                text.lines()
                    .any(|l| l == format!("# TYPE {base} histogram"))
            })
        })
}

/// The anchor of a Markdown heading: lowercase, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_only_name_served_metrics() -> anyhow::Result<()> {
    cognomega_testkit::init_tracing();
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(format!(
        "{root}/ops/dashboards/cognomega.json"
    ))?)?;
    let rules: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(format!(
        "{root}/ops/alerts/cognomega.rules.yml"
    ))?)?;
    let runbook = std::fs::read_to_string(format!("{root}/docs/runbook.md"))?;

    // The dashboard: a current schema and a Prometheus data source variable.
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 39));
    let vars = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "no Prometheus data source variable"
    );
    let mut dashboard_names = BTreeSet::new();
    exprs_in_json(&dashboard, &mut dashboard_names);

    // The rules: every alert has an expression and a runbook section that exists.
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let mut rule_names = BTreeSet::new();
    let mut alerts = Vec::new();
    for group in rules["groups"].as_sequence().cloned().unwrap_or_default() {
        for rule in group["rules"].as_sequence().cloned().unwrap_or_default() {
            let name = rule["alert"].as_str().unwrap_or_default().to_owned();
            let expr = rule["expr"].as_str().unwrap_or_default();
            assert!(!expr.is_empty(), "{name} has no expr");
            metric_names(expr, &mut rule_names);
            let link = rule["annotations"]["runbook"].as_str().unwrap_or_default();
            let section = link.strip_prefix("docs/runbook.md#").unwrap_or_default();
            assert!(
                anchors.contains(section),
                "{name}: runbook link {link:?} leads nowhere"
            );
            alerts.push(name);
        }
    }
    for needed in [
        "CognomegaQueueBacklogGrowing",
        "CognomegaDeadLetterQueueNotEmpty",
        "CognomegaMoneyDrainLatencyOverSLO",
    ] {
        assert!(alerts.iter().any(|a| a == needed), "{needed} missing");
    }

    // Every name is served by a live server that has seen a little traffic.
    let app = TestApp::spawn(Backend::Sqlite).await?;
    let _ = app.client.get(app.url("/healthz")).send().await?;
    let text = metrics(&app).await?;
    for name in dashboard_names.iter().chain(&rule_names) {
        assert!(
            served(&text, name),
            "{name} is referenced but not served by /metrics"
        );
    }
    assert!(dashboard_names.len() >= 15, "{dashboard_names:?}");
    app.stop().await
}

/// Lines of a child's stderr, collected as they come.
#[derive(Debug, Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn json(&self) -> Vec<Value> {
        self.0
            .lock()
            .map(|l| {
                l.iter()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A `message delivered` line for `request_id` on `queue`, with its message id.
fn delivered(lines: &[Value], queue: &str, request_id: &str) -> Option<i64> {
    lines.iter().find_map(|l| {
        let f = &l["fields"];
        (f["message"] == "message delivered"
            && f["request_id"] == request_id
            && f["queue"] == queue
            && l["span"]["queue"] == queue)
            .then(|| f["message_id"].as_i64())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)]
async fn request_ids_reach_the_consumer_json_logs() -> anyhow::Result<()> {
    cognomega_testkit::init_tracing();
    let dir = tempfile::tempdir()?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cognomega"))
        .current_dir(dir.path())
        .args([
            "--log-format",
            "json",
            "--log",
            "info,cognomega_consumers=debug",
        ])
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-key",
            "obs-admin-key-0123456789",
        ])
        .env_remove("COGNOMEGA_DATABASE_URL")
        .env_remove("COGNOMEGA_DATA_DIR")
        .env_remove("COGNOMEGA_OBJECTS_URL")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let lines = Lines::default();
    let (url_tx, url_rx) = tokio::sync::oneshot::channel();
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut url_tx = Some(url_tx);
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if let Some(rest) = line.strip_prefix("cognomega listening on ") {
                if let Some(tx) = url_tx.take() {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
            }
            if let Ok(mut l) = sink.0.lock() {
                l.push(line);
            }
        }
    });
    let base = tokio::time::timeout(Duration::from_secs(60), url_rx).await??;
    cognomega_core::tls::install();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    let guest: Value = client
        .post(format!("{base}/auth/guest"))
        .send()
        .await?
        .json()
        .await?;
    let token = guest["token"].as_str().unwrap_or_default().to_owned();
    let usage_rid = "obs-usage-5d1e";
    let resp = client
        .post(format!("{base}/usage"))
        .bearer_auth(&token)
        .header("X-Request-Id", usage_rid)
        .json(&json!({"idempotency_key": "log-1", "kind": "tokens_in", "quantity": 1000}))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.headers()["x-request-id"], usage_rid);

    let job_rid = "obs-job-9c2b";
    let (png, _) = Sketch::generate(5, 320, 240);
    let resp = client
        .post(format!("{base}/jobs"))
        .bearer_auth(&token)
        .header("X-Request-Id", job_rid)
        .json(
            &json!({"type": "image_thumbnail", "input": {"image_base64": B64.encode(png)},
            "params": {"sizes": [32], "format": "png"}}),
        )
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let job_id = resp.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // The usage post: its usage message and the settlement it produced both carry its id.
    let (usage_msg, settlement_msg) = wait_for(Duration::from_secs(60), || async {
        let l = lines.json();
        Ok(delivered(&l, "usage", usage_rid).zip(delivered(&l, "settlement", usage_rid)))
    })
    .await?;
    assert!(usage_msg > 0 && settlement_msg > 0);

    // The job: delivered on its queue, its run logged with job id, tenant, message and request
    // id, and the usage event it produced carries the same request id.
    let (job_msg, succeeded) = wait_for(Duration::from_secs(120), || async {
        let l = lines.json();
        let msg = delivered(&l, "jobs.image_thumbnail", job_rid);
        let done = l.iter().find(|l| {
            l["fields"]["message"] == "job succeeded" && l["fields"]["job_id"] == job_id.as_str()
        });
        let usage = delivered(&l, "usage", job_rid);
        Ok(msg.zip(done.cloned()).filter(|_| usage.is_some()))
    })
    .await?;
    let job_span = succeeded["spans"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "job"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(job_span["job_id"], job_id.as_str(), "{succeeded}");
    assert_eq!(job_span["request_id"], job_rid, "{succeeded}");
    assert_eq!(job_span["message_id"], job_msg, "{succeeded}");
    assert_eq!(job_span["tenant"], guest["tenant_id"], "{succeeded}");
    assert_eq!(succeeded["span"]["name"], "job");
    let batch = succeeded["spans"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "batch"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(batch["queue"], "jobs.image_thumbnail", "{succeeded}");

    cognomega_testkit::terminate(&child)?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(status.success(), "serve exited with {status}");
    Ok(())
}
