//! The Cloudflare edge shape's queues are configured in wrangler/workers/*.toml; they must be
//! the queue catalog's (`cognomega_core::queue::catalog::all`, the queues and settings the
//! native consumers run), so a message gets the same batch size, retries, retry delay and
//! dead-letter queue on both hosts, and every registered job type has its consumer Worker.

use std::path::Path;

use cognomega_core::queue::catalog::{self, cloudflare};
use cognomega_core::queue::QueueSettings;

/// The job types the edge runs: the pipelines' own and `tts_render` (as natively).
fn job_types() -> Vec<&'static str> {
    let mut names = cognomega_pipelines::registry().names();
    names.push(cognomega_workflows::tts_render::NAME);
    names
}

/// The Worker consuming a catalog queue: `usage-writer`, `settlement`, `av-scan`,
/// `jobs-<type>`, `etl`.
fn consumer_worker(queue: &str) -> String {
    match queue {
        "usage" => "usage-writer".to_owned(),
        other => other.replace(['.', '_'], "-"),
    }
}

/// (wrangler config, Cloudflare queue name, the catalog's settings)
fn consumers() -> Vec<(String, String, QueueSettings)> {
    catalog::all(&job_types())
        .into_iter()
        .map(|(q, settings)| {
            (
                consumer_worker(q.as_str()),
                cloudflare::queue_name(q.as_str()),
                settings,
            )
        })
        .collect()
}

/// The Worker's Cron Triggers.
fn crons(worker: &toml::Value) -> Vec<&str> {
    worker["triggers"]["crons"]
        .as_array()
        .map(|a| a.iter().filter_map(toml::Value::as_str).collect())
        .unwrap_or_default()
}

fn config(name: &str) -> anyhow::Result<toml::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("wrangler/workers/{name}.toml"));
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(toml::from_str(&text)?)
}

#[test]
fn edge_consumers_match_the_native_queue_settings() -> anyhow::Result<()> {
    for (worker, queue, native) in consumers() {
        let queue = queue.as_str();
        let cfg = config(&worker)?;
        let consumers = cfg["queues"]["consumers"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("{worker}: no [[queues.consumers]]"))?;
        let c = consumers
            .iter()
            .find(|c| c["queue"].as_str() == Some(queue))
            .ok_or_else(|| anyhow::anyhow!("{worker} does not consume {queue}"))?;
        let int = |k: &str| c.get(k).and_then(toml::Value::as_integer);
        assert_eq!(
            int("max_batch_size"),
            Some(i64::from(native.max_batch_size)),
            "{worker}: max_batch_size"
        );
        assert_eq!(
            int("max_retries"),
            Some(i64::from(native.max_retries)),
            "{worker}: max_retries"
        );
        let delay = i64::try_from(native.retry_delay.as_secs())?;
        assert_eq!(int("retry_delay"), Some(delay), "{worker}: retry_delay");
        assert_eq!(
            c.get("dead_letter_queue").and_then(toml::Value::as_str),
            native
                .dead_letter_queue
                .as_ref()
                .map(|_| format!("{queue}-dlq"))
                .as_deref(),
            "{worker}: dead_letter_queue"
        );
        // Every dead-letter queue is drained by the dlq Worker, which records the messages
        // where GET /admin/queues/{queue}/dlq reads them.
        let dlq = config("dlq")?;
        let drained = dlq["queues"]["consumers"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["queue"].as_str() == Some(&format!("{queue}-dlq")))
        });
        assert!(drained, "the dlq Worker does not consume {queue}-dlq");
    }
    Ok(())
}

#[test]
fn every_worker_runs_the_one_module_with_a_role() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("wrangler/workers");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let cfg: toml::Value = toml::from_str(&std::fs::read_to_string(&path)?)?;
        assert_eq!(
            cfg["main"].as_str(),
            Some("../edge/build/index.js"),
            "{}",
            path.display()
        );
        let role = cfg["vars"]["COGNOMEGA_ROLE"].as_str().unwrap_or_default();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        assert_eq!(role, stem, "{}: COGNOMEGA_ROLE", path.display());
        seen += 1;
    }
    let consumers = catalog::all(&job_types()).len();
    assert_eq!(
        seen,
        8 + consumers + 1,
        "the gateway, seven services, a consumer per catalog queue and the dlq Worker"
    );
    Ok(())
}

/// The gateway's Cron Trigger of the periodic export is the native `etl-export` schedule
/// (Cloudflare's cron has no seconds field) and sends what it sends (every dataset).
#[test]
fn the_export_cron_is_the_native_schedule() -> anyhow::Result<()> {
    let native = cognomega_core::schedule::defaults()
        .remove("etl-export")
        .ok_or_else(|| anyhow::anyhow!("no native etl-export schedule"))?;
    assert_eq!(native.queue, "etl");
    assert_eq!(native.body, serde_json::json!({}));
    let (seconds, cloudflare) = native
        .cron
        .split_once(' ')
        .ok_or_else(|| anyhow::anyhow!("cron {:?} has no seconds field", native.cron))?;
    assert_eq!(seconds, "0", "Cloudflare fires on the minute");
    let gateway = config("gateway")?;
    let crons = crons(&gateway);
    assert!(
        crons.contains(&cloudflare),
        "gateway crons {crons:?} lack the export's {cloudflare:?}"
    );
    let producers = gateway["queues"]["producers"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("gateway: no [[queues.producers]]"))?;
    assert!(
        producers
            .iter()
            .any(|p| p["binding"].as_str() == Some("ETL")
                && p["queue"].as_str() == Some("cognomega-etl")),
        "the gateway cannot send to cognomega-etl"
    );
    Ok(())
}

/// `POST /api/si/ask` is the `ai` Worker's: the gateway binds it, and its deploy config
/// declares the Workers AI binding the edge's `cfai` provider uses.
#[test]
fn the_ai_worker_is_bound_and_has_workers_ai() -> anyhow::Result<()> {
    let ai = config("ai")?;
    assert_eq!(ai["ai"]["binding"].as_str(), Some("AI"), "[ai] binding");
    let gateway = config("gateway")?;
    let services = gateway["services"].as_array().cloned().unwrap_or_default();
    assert!(
        services.iter().any(|s| s["binding"].as_str() == Some("ASK")
            && s["service"].as_str() == ai["name"].as_str()),
        "the gateway's ASK service binding names the ai Worker: {services:?}"
    );
    let producers = ai["queues"]["producers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        producers
            .iter()
            .any(|p| p["binding"].as_str() == Some("USAGE")
                && p["queue"].as_str() == Some("cognomega-usage")),
        "the ai Worker bills through the usage queue: {producers:?}"
    );
    Ok(())
}

/// Every Worker that writes (and drains the outbox after its write requests) can send to every
/// queue a write stages in the outbox; the admin Worker, which the relay cron calls, too.
#[test]
fn every_writer_has_a_producer_for_every_outbox_queue() -> anyhow::Result<()> {
    for worker in ["auth", "usage", "jobs", "files", "billing", "admin"] {
        let cfg = config(worker)?;
        let producers = cfg["queues"]["producers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for q in catalog::outbox_queues(&job_types()) {
            let (binding, queue) = (
                cloudflare::binding(q.as_str()),
                cloudflare::queue_name(q.as_str()),
            );
            assert!(
                producers
                    .iter()
                    .any(|p| p["binding"].as_str() == Some(binding.as_str())
                        && p["queue"].as_str() == Some(queue.as_str())),
                "{worker}: no producer {binding} for {queue}"
            );
        }
    }
    let gateway = config("gateway")?;
    let crons = crons(&gateway);
    assert!(
        crons.contains(&"* * * * *"),
        "the outbox relay runs every minute: {crons:?}"
    );
    Ok(())
}
