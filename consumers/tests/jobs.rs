//! The job runner with job types made for the test: a job cancelled while running stops at its
//! next stage boundary; a job that keeps failing transiently ends `dead` with its message in the
//! dead-letter queue; a panicking job is retried, not lost; a message that is not a job message
//! is retried and then dead-lettered. Both backends.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cognomega_consumers::jobs::{self, JobMessage, JobRunner};
use cognomega_consumers::{Runtime, RuntimeOptions};
use cognomega_core::queue::OutgoingMessage;
use cognomega_pipelines::{Artifact, JobError, JobType, Progress};
use cognomega_r2_lifecycle::codec::CodecPolicy;
use cognomega_stores::jobs::NewJob;
use cognomega_stores::objects::{ObjectKey, ObjectStoreUrl, Objects, PutMeta};
use cognomega_testkit::{wait_for, Backend, TestDb};
use serde_json::Value;

#[derive(Debug)]
enum Behaviour {
    /// Reports stages forever until cancelled.
    Endless,
    /// Always fails transiently.
    Flaky,
    /// Panics on the first run, succeeds after.
    PanicsOnce(AtomicU32),
}

#[derive(Debug)]
struct TestJob(Behaviour);

#[async_trait::async_trait(?Send)]
impl JobType for TestJob {
    fn name(&self) -> &'static str {
        match self.0 {
            Behaviour::Endless => "endless",
            Behaviour::Flaky => "flaky",
            Behaviour::PanicsOnce(_) => "panicky",
        }
    }
    fn validate_params(&self, params: &Value) -> Result<Value, String> {
        Ok(params.clone())
    }
    fn validate_input(&self, _input: &[u8]) -> Result<(), String> {
        Ok(())
    }
    async fn run(
        &self,
        input: &[u8],
        _params: &Value,
        progress: &dyn Progress,
    ) -> Result<Vec<Artifact>, JobError> {
        match &self.0 {
            Behaviour::Endless => {
                for i in 0.. {
                    progress.stage(&format!("step-{i}"), 0.5).await?;
                    std::thread::sleep(Duration::from_millis(20));
                }
                unreachable!()
            }
            Behaviour::Flaky => Err(JobError::Transient("the backend is down".into())),
            Behaviour::PanicsOnce(runs) => {
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first run explodes");
                }
                progress.stage("copy", 0.5).await?;
                Ok(vec![Artifact {
                    name: "copy.txt".into(),
                    content_type: "text/plain".into(),
                    bytes: input.to_vec(),
                }])
            }
        }
    }
}

/// 2,000 bytes of text once repeated: big enough for zstd to pay off.
const INPUT: &str = "hello job ";

struct Fixture {
    tdb: TestDb,
    objects: Objects,
}

async fn fixture(backend: Backend) -> anyhow::Result<Fixture> {
    let tdb = TestDb::new(backend).await?;
    let objects = Objects::open(&ObjectStoreUrl::Local(tdb.data_dir().join("objects")))?;
    Ok(Fixture { tdb, objects })
}

async fn submit(f: &Fixture, job_type: &str, id: &str) -> anyhow::Result<()> {
    let key = ObjectKey::parse(&format!("inputs/t1/{id}"))?;
    f.objects
        .put(
            &key,
            bytes::Bytes::from(INPUT.repeat(200)),
            &PutMeta::content_type("text/plain"),
        )
        .await?;
    let mut tx = f.tdb.db().begin().await?;
    let new = NewJob {
        id,
        tenant_id: "t1",
        job_type,
        idempotency_key: None,
        params: "{}",
        input_key: key.as_str(),
        request_id: None,
    };
    cognomega_stores::jobs::insert(&mut tx, &new).await?;
    tx.send(
        &jobs::queue(job_type),
        OutgoingMessage::json(&JobMessage { job_id: id.into() })?,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn start(
    f: &Fixture,
    job: Arc<TestJob>,
) -> anyhow::Result<cognomega_consumers::RunningRuntime> {
    let name = job.name();
    let mut rt = Runtime::new(
        f.tdb.db().queue(),
        RuntimeOptions {
            poll_interval: Duration::from_millis(20),
            shutdown_grace: Duration::from_secs(5),
        },
    );
    let runner = JobRunner::new(
        f.tdb.db().clone(),
        f.objects.clone(),
        job,
        CodecPolicy::default(),
        Arc::new(cognomega_core::billing::PriceTable::default()),
    );
    let mut settings = jobs::settings(name);
    settings.retry_delay = Duration::from_millis(50);
    rt.consume(jobs::queue(name), settings, runner)?;
    Ok(rt.start().await?)
}

async fn status(f: &Fixture, id: &str) -> anyhow::Result<cognomega_stores::jobs::Job> {
    cognomega_stores::jobs::get(f.tdb.db(), id, None)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no job {id}"))
}

async fn cancel_while_running_stops_at_a_stage_boundary(backend: Backend) -> anyhow::Result<()> {
    let f = fixture(backend).await?;
    submit(&f, "endless", "job-endless").await?;
    let running = start(&f, Arc::new(TestJob(Behaviour::Endless))).await?;
    wait_for(Duration::from_secs(30), || async {
        let j = status(&f, "job-endless").await?;
        Ok((j.status == "running" && j.stage.is_some()).then_some(()))
    })
    .await?;
    let outcome = cognomega_stores::jobs::cancel(f.tdb.db(), "t1", "job-endless").await?;
    assert_eq!(outcome, cognomega_stores::jobs::CancelOutcome::Requested);
    let j = wait_for(Duration::from_secs(30), || async {
        let j = status(&f, "job-endless").await?;
        Ok((j.status == "cancelled").then_some(j))
    })
    .await?;
    assert!(j.finished_at_ms.is_some());
    assert!(
        running.wait_idle(Duration::from_secs(30)).await,
        "the message was acked, not retried"
    );
    running.stop().await;
    Ok(())
}

async fn transient_failures_end_dead_in_the_dlq(backend: Backend) -> anyhow::Result<()> {
    let f = fixture(backend).await?;
    submit(&f, "flaky", "job-flaky").await?;
    let running = start(&f, Arc::new(TestJob(Behaviour::Flaky))).await?;
    let j = wait_for(Duration::from_secs(60), || async {
        let j = status(&f, "job-flaky").await?;
        Ok((j.status == "dead").then_some(j))
    })
    .await?;
    assert!(running.wait_idle(Duration::from_secs(30)).await);
    running.stop().await;
    assert_eq!(j.error.as_deref(), Some("the backend is down"));
    assert_eq!(j.attempts, 4, "one delivery and max_retries (3) retries");
    let dead = f
        .tdb
        .db()
        .queue()
        .dead_letters(&jobs::dead_letter_queue("flaky"), 10)
        .await?;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].body_preview.contains("job-flaky"));
    Ok(())
}

async fn a_panicking_job_is_retried(backend: Backend) -> anyhow::Result<()> {
    let f = fixture(backend).await?;
    submit(&f, "panicky", "job-panicky").await?;
    let running = start(
        &f,
        Arc::new(TestJob(Behaviour::PanicsOnce(AtomicU32::new(0)))),
    )
    .await?;
    let j = wait_for(Duration::from_secs(60), || async {
        let j = status(&f, "job-panicky").await?;
        Ok((j.status == "succeeded").then_some(j))
    })
    .await?;
    running.stop().await;
    assert_eq!(j.attempts, 2);
    let artifacts = cognomega_stores::jobs::artifacts(f.tdb.db(), "job-panicky").await?;
    assert_eq!(artifacts.len(), 1);
    assert_eq!(artifacts[0].size, 2000);
    assert_eq!(
        artifacts[0].compression, "zstd",
        "text artifacts are compressed"
    );
    let stored = f
        .objects
        .get_bytes(&ObjectKey::parse(&artifacts[0].object_key)?)
        .await?
        .1;
    assert_eq!(zstd_decode(&stored)?, INPUT.repeat(200).into_bytes());
    Ok(())
}

async fn an_unreadable_message_is_retried_then_dead_lettered(
    backend: Backend,
) -> anyhow::Result<()> {
    let f = fixture(backend).await?;
    let queue = jobs::queue("flaky");
    let id = f
        .tdb
        .db()
        .queue()
        .send(
            &queue,
            OutgoingMessage::new(b"from a newer producer".to_vec()),
        )
        .await?
        .id;
    let running = start(&f, Arc::new(TestJob(Behaviour::Flaky))).await?;
    let dead = wait_for(Duration::from_secs(60), || async {
        let dead = f
            .tdb
            .db()
            .queue()
            .dead_letters(&jobs::dead_letter_queue("flaky"), 10)
            .await?;
        Ok(dead.into_iter().find(|m| m.id == id))
    })
    .await?;
    assert!(running.wait_idle(Duration::from_secs(30)).await);
    running.stop().await;
    assert_eq!(
        dead.attempts, 4,
        "one delivery and max_retries (3) retries, not dead-lettered at once"
    );
    assert_eq!(dead.original_queue.as_ref(), Some(&queue));
    assert_eq!(dead.body_preview, "from a newer producer");
    Ok(())
}

fn zstd_decode(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    Ok(cognomega_r2_lifecycle::codec::decode(
        bytes,
        cognomega_r2_lifecycle::codec::Compression::Zstd,
        1 << 20,
    )?)
}

/// A worker that dies on every delivery (a crash, an out-of-memory kill, a hang past the lease)
/// never settles the message; after the last allowed delivery a claim moves it to the
/// dead-letter queue without delivering it, and the job must not stay `running` for good.
async fn a_job_whose_worker_dies_every_time_ends_dead(backend: Backend) -> anyhow::Result<()> {
    let f = fixture(backend).await?;
    let job = Arc::new(TestJob(Behaviour::PanicsOnce(AtomicU32::new(0))));
    let name = job.name();
    submit(&f, name, "job-lost").await?;
    let driver = f.tdb.db().queue();
    let queue = jobs::queue(name);
    let mut dying = jobs::settings(name);
    dying.lease = Duration::from_secs(1);
    for delivery in 1..=dying.max_deliveries() {
        let claim = wait_for(Duration::from_secs(30), || async {
            let c = driver.claim(&queue, &dying, 1).await?;
            Ok((!c.messages.is_empty()).then_some(c))
        })
        .await?;
        assert_eq!(claim.messages[0].attempts, delivery);
        // The worker got as far as starting the job, then died.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let now = cognomega_core::time::UnixMillis(i64::try_from(now.as_millis())?);
        cognomega_core::jobs::start(
            &mut f.tdb.db().clone(),
            "job-lost",
            &claim.messages[0].id.0.to_string(),
            now.0,
            cognomega_core::jobs::NATIVE_LEASE_MS,
        )
        .await?;
        tokio::time::sleep(claim.lease_until.since(now) + Duration::from_millis(50)).await;
    }
    assert_eq!(status(&f, "job-lost").await?.status, "running");

    let running = start(&f, job.clone()).await?;
    let j = wait_for(Duration::from_secs(30), || async {
        let j = status(&f, "job-lost").await?;
        Ok((j.status != "running").then_some(j))
    })
    .await?;
    assert!(running.wait_idle(Duration::from_secs(30)).await);
    running.stop().await;
    assert_eq!(j.status, "dead", "{j:?}");
    let error = j.error.unwrap_or_default();
    assert!(
        error.contains("no delivery finished") && error.contains("4 deliveries"),
        "{error}"
    );
    let dead = driver
        .dead_letters(&jobs::dead_letter_queue(name), 10)
        .await?;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].body_preview.contains("job-lost"));
    // Marking it again (a repeated claim after a lost commit) changes nothing.
    let later = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    assert!(
        !cognomega_core::jobs::bury(&mut f.tdb.db().clone(), "job-lost", "again", later).await?
    );
    assert_eq!(
        status(&f, "job-lost").await?.error.as_deref(),
        Some(error.as_str())
    );
    Ok(())
}

cognomega_testkit::both_backends!(
    a_job_whose_worker_dies_every_time_ends_dead,
    cancel_while_running_stops_at_a_stage_boundary,
    transient_failures_end_dead_in_the_dlq,
    a_panicking_job_is_retried,
    an_unreadable_message_is_retried_then_dead_lettered,
);
