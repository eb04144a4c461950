//! The attempt fence of a running job (`cognomega_core::jobs`), on both backends: a second
//! delivery of a job that is running under a live lease does not run it, a redelivery of the
//! owner's own message takes it over at once, anyone takes it over once the lease expired, and
//! a run that lost its lease can write neither progress nor a verdict nor a success. Each check
//! runs as `sqlite::name` and `postgres::name`. The statements are core's, run through the
//! native executor, as both hosts' job workflow runs them.

use cognomega_core::jobs::{self as fence, Claimed, Verdict};
use cognomega_stores::jobs::{self, NewJob};
use cognomega_stores::{Database, Tx};
use cognomega_testkit::{Backend, TestDb};

fn now() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

async fn start_run(
    db: &Database,
    id: &str,
    owner: &str,
    lease: i64,
) -> anyhow::Result<Option<Claimed>> {
    Ok(fence::start(&mut db.clone(), id, owner, now(), lease).await?)
}

async fn progress(
    db: &Database,
    id: &str,
    owner: &str,
    stage: &str,
    fraction: f64,
    lease: i64,
) -> anyhow::Result<bool> {
    Ok(fence::progress(&mut db.clone(), id, owner, stage, fraction, now() + lease).await?)
}

async fn renew(db: &Database, id: &str, owner: &str, lease: i64) -> anyhow::Result<bool> {
    Ok(fence::renew(&mut db.clone(), id, owner, now() + lease).await?)
}

async fn finish(
    db: &Database,
    id: &str,
    owner: Option<&str>,
    status: &str,
    error: Option<&str>,
) -> anyhow::Result<bool> {
    Ok(fence::finish(&mut db.clone(), id, owner, status, error, now()).await?)
}

async fn succeed(
    tx: &mut Tx,
    id: &str,
    owner: Option<&str>,
    credits: i64,
) -> anyhow::Result<Verdict> {
    Ok(fence::succeed(tx, id, owner, &[], credits, now()).await?)
}

async fn queued(db: &Database, id: &str) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    jobs::insert(
        &mut tx,
        &NewJob {
            id,
            tenant_id: "t",
            job_type: "sketch_to_app",
            idempotency_key: None,
            params: "{}",
            input_key: "inputs/t/x",
            request_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn status(db: &Database, id: &str) -> anyhow::Result<(String, i64)> {
    let job = jobs::get(db, id, None)
        .await?
        .ok_or_else(|| anyhow::anyhow!("job {id} is gone"))?;
    Ok((job.status, job.attempts))
}

const LEASE: i64 = 60_000;

async fn a_second_delivery_of_a_running_job_does_not_run_it(
    backend: Backend,
) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db();
    queued(db, "j1").await?;
    assert!(start_run(db, "j1", "m1", LEASE).await?.is_some());
    // The same job's message delivered again while m1 runs it.
    assert!(
        start_run(db, "j1", "m2", LEASE).await?.is_none(),
        "a live lease keeps the job to its owner"
    );
    assert_eq!(status(db, "j1").await?, ("running".into(), 1), "one run");
    // The owner's own message redelivered (its run died): taken over at once.
    assert!(start_run(db, "j1", "m1", LEASE).await?.is_some());
    assert_eq!(status(db, "j1").await?, ("running".into(), 2));
    let mut tx = db.begin().await?;
    assert_eq!(
        succeed(&mut tx, "j1", Some("m1"), 5).await?,
        Verdict::Succeeded
    );
    tx.commit().await?;
    // A delivery after the success runs nothing.
    assert!(start_run(db, "j1", "m2", LEASE).await?.is_none());
    assert!(start_run(db, "j1", "m1", LEASE).await?.is_none());
    assert_eq!(status(db, "j1").await?, ("succeeded".into(), 2));
    Ok(())
}

async fn an_expired_lease_is_taken_over_and_the_old_run_is_fenced_off(
    backend: Backend,
) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db();
    queued(db, "j2").await?;
    // m1 claims with a lease that has already run out (its worker hung past it).
    assert!(start_run(db, "j2", "m1", -1).await?.is_some());
    assert!(start_run(db, "j2", "m2", LEASE).await?.is_some());
    assert_eq!(status(db, "j2").await?, ("running".into(), 2));
    // The old run wakes up: it must stop, and none of its writes land.
    assert!(
        progress(db, "j2", "m1", "render", 0.5, LEASE).await?,
        "progress tells the old run to stop"
    );
    assert!(!renew(db, "j2", "m1", LEASE).await?);
    assert!(!finish(db, "j2", Some("m1"), "failed", Some("stale")).await?);
    let mut tx = db.begin().await?;
    assert_eq!(succeed(&mut tx, "j2", Some("m1"), 5).await?, Verdict::Lost);
    tx.rollback().await?;
    assert_eq!(status(db, "j2").await?, ("running".into(), 2));
    // The run that took over goes on and finishes.
    assert!(!progress(db, "j2", "m2", "render", 0.5, LEASE).await?);
    assert!(renew(db, "j2", "m2", LEASE).await?);
    assert!(finish(db, "j2", Some("m2"), "failed", Some("bad input")).await?);
    assert_eq!(status(db, "j2").await?, ("failed".into(), 2));
    Ok(())
}

async fn concurrent_deliveries_claim_a_job_once(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db().clone();
    queued(&db, "j3").await?;
    let claims: Vec<_> = (0..16)
        .map(|n| {
            let db = db.clone();
            tokio::spawn(async move { start_run(&db, "j3", &format!("m{n}"), LEASE).await })
        })
        .collect();
    let mut won = 0;
    for c in claims {
        if c.await??.is_some() {
            won += 1;
        }
    }
    assert_eq!(won, 1, "one delivery runs the job");
    assert_eq!(status(&db, "j3").await?, ("running".into(), 1));
    Ok(())
}

async fn a_cancel_request_reaches_the_owner_through_progress(
    backend: Backend,
) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db();
    queued(db, "j4").await?;
    assert!(start_run(db, "j4", "m1", LEASE).await?.is_some());
    assert!(!progress(db, "j4", "m1", "decode", 0.1, LEASE).await?);
    assert_eq!(
        jobs::cancel(db, "t", "j4").await?,
        jobs::CancelOutcome::Requested
    );
    assert!(progress(db, "j4", "m1", "render", 0.6, LEASE).await?);
    // A run that finishes anyway (the cancel came after its last stage) ends cancelled, its
    // artifacts listed, nothing charged.
    let mut tx = db.begin().await?;
    assert_eq!(
        succeed(&mut tx, "j4", Some("m1"), 5).await?,
        Verdict::Cancelled
    );
    tx.commit().await?;
    let job = jobs::get(db, "j4", None)
        .await?
        .ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert_eq!((job.status.as_str(), job.credits_charged), ("cancelled", 0));
    Ok(())
}

cognomega_testkit::both_backends!(
    a_second_delivery_of_a_running_job_does_not_run_it,
    an_expired_lease_is_taken_over_and_the_old_run_is_fenced_off,
    concurrent_deliveries_claim_a_job_once,
    a_cancel_request_reaches_the_owner_through_progress,
);
