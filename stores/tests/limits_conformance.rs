//! The rate-limit port (`cognomega_core::limits::RateLimiter`) and the cost-guard counters,
//! checked the same way against both adapters: the in-process buckets the SQLite shape uses and
//! the `rate_limit_buckets` table of the PostgreSQL shape. Each check runs as
//! `sqlite::name` and `postgres::name`.

use std::sync::Arc;
use std::time::Duration;

use cognomega_core::limits::{CostMetric, Rate, RateLimiter};
use cognomega_stores::billing::tokens_on_day;
use cognomega_stores::limits::{charge, limiter, prune_counters, OverCap};
use cognomega_stores::Tx;
use cognomega_testkit::{Backend, TestDb};

fn rate(per_sec: f64, burst: u32) -> Rate {
    Rate::new(per_sec, burst).unwrap_or_else(|| panic!("invalid test rate {per_sec}/{burst}"))
}

async fn fixture(backend: Backend) -> anyhow::Result<(Arc<dyn RateLimiter>, TestDb)> {
    let tdb = TestDb::new(backend).await?;
    Ok((limiter(tdb.db()), tdb))
}

async fn a_burst_passes_then_the_bucket_refuses(backend: Backend) -> anyhow::Result<()> {
    let (limiter, _tdb) = fixture(backend).await?;
    let r = rate(1.0, 3);
    for expected in [2, 1, 0] {
        let d = limiter.check("t1", r).await?;
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (3, expected));
    }
    let refused = limiter.check("t1", r).await?;
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    assert_eq!(refused.retry_after_secs, 1, "one token at 1/s");
    assert_eq!(refused.reset_secs, 3, "three tokens at 1/s");
    // Keys are independent.
    assert_eq!(limiter.check("t2", r).await?.remaining, 2);
    Ok(())
}

async fn tokens_come_back_with_time_but_never_above_the_burst(
    backend: Backend,
) -> anyhow::Result<()> {
    let (limiter, _tdb) = fixture(backend).await?;
    let r = rate(20.0, 2);
    assert!(limiter.check("k", r).await?.allowed);
    assert!(limiter.check("k", r).await?.allowed);
    assert!(!limiter.check("k", r).await?.allowed);
    // 20 tokens per second: one is back after 50 ms.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(limiter.check("k", r).await?.allowed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d = limiter.check("k", r).await?;
    assert!(d.allowed);
    assert_eq!(d.remaining, 1, "refilled to the burst of 2, not 10 tokens");
    // A smaller burst applies at once.
    let d = limiter.check("k", rate(20.0, 1)).await?;
    assert_eq!(d.limit, 1);
    assert_eq!(d.remaining, 0);
    Ok(())
}

async fn concurrent_checks_take_exactly_the_burst(backend: Backend) -> anyhow::Result<()> {
    let (limiter, _tdb) = fixture(backend).await?;
    // Practically no refill during the test.
    let r = rate(0.001, 10);
    let checks: Vec<_> = (0..60)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.check("hot", r).await })
        })
        .collect();
    let mut allowed = 0;
    for c in checks {
        if c.await??.allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10, "every token taken once, none twice");
    Ok(())
}

async fn cost_counters_stop_at_the_cap_and_roll_back(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db();
    let now = 1_767_323_045; // 2026-01-02T03:04:05Z
    let metric = CostMetric::JobRunsPerHour;
    let end = metric.window(now).1;
    let mut tx = db.begin().await?;
    assert_eq!(charge(&mut tx, "a", metric, 3, 5, now).await?, Ok(3));
    assert_eq!(
        charge(&mut tx, "a", metric, 3, 5, now).await?,
        Err(OverCap {
            used: 3,
            cap: 5,
            window_end: end
        })
    );
    assert_eq!(charge(&mut tx, "a", metric, 2, 5, now).await?, Ok(5));
    // A first charge above the cap is refused too.
    assert_eq!(
        charge(&mut tx, "b", metric, 6, 5, now).await?,
        Err(OverCap {
            used: 0,
            cap: 5,
            window_end: end
        })
    );
    tx.commit().await?;
    // A rolled-back charge counts nothing.
    let mut tx = db.begin().await?;
    assert_eq!(charge(&mut tx, "b", metric, 4, 5, now).await?, Ok(4));
    drop(tx);
    let mut tx = db.begin().await?;
    assert_eq!(charge(&mut tx, "b", metric, 5, 5, now).await?, Ok(5));
    // The next window starts from zero; another metric has its own counter.
    assert_eq!(charge(&mut tx, "a", metric, 5, 5, end).await?, Ok(5));
    assert_eq!(
        charge(&mut tx, "a", CostMetric::TokensPerDay, 5, 5, now).await?,
        Ok(5)
    );
    tx.commit().await?;
    Ok(())
}

async fn spent_counter_windows_are_pruned(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db();
    let day = 86_400;
    let old = 1_767_323_045; // 2026-01-02T03:04:05Z
    let now = old + 3 * day;
    let mut tx = db.begin().await?;
    for at in [old, now - day, now] {
        assert!(charge(&mut tx, "t", CostMetric::TokensPerDay, 7, 100, at)
            .await?
            .is_ok());
        assert!(charge(&mut tx, "t", CostMetric::JobRunsPerHour, 1, 100, at)
            .await?
            .is_ok());
        let start = at - at.rem_euclid(day);
        match &mut tx {
            Tx::Sqlite { tx, .. } => {
                sqlx::query("INSERT INTO usage_day_tokens (tenant_id, day_start, tokens) VALUES ('t', ?1, 9)")
                    .bind(start)
                    .execute(&mut **tx)
                    .await?;
            }
            Tx::Postgres { tx, .. } => {
                sqlx::query("INSERT INTO usage_day_tokens (tenant_id, day_start, tokens) VALUES ('t', $1, 9)")
                    .bind(start)
                    .execute(&mut **tx)
                    .await?;
            }
        }
    }
    tx.commit().await?;
    // Only the windows that started more than two days before `now` go: two counters and one
    // day of tokens from `old`.
    assert_eq!(prune_counters(db, now).await?, 3);
    assert_eq!(tokens_on_day(db, "t", old).await?, 0, "the old day is gone");
    assert_eq!(
        tokens_on_day(db, "t", now - day).await?,
        9,
        "yesterday is kept"
    );
    assert_eq!(tokens_on_day(db, "t", now).await?, 9, "today is kept");
    // Today's counters kept counting from where they were.
    let mut tx = db.begin().await?;
    assert_eq!(
        charge(&mut tx, "t", CostMetric::TokensPerDay, 1, 100, now).await?,
        Ok(8)
    );
    tx.commit().await?;
    assert_eq!(prune_counters(db, now).await?, 0, "nothing left to prune");
    Ok(())
}

cognomega_testkit::both_backends!(
    a_burst_passes_then_the_bucket_refuses,
    tokens_come_back_with_time_but_never_above_the_burst,
    concurrent_checks_take_exactly_the_burst,
    cost_counters_stop_at_the_cap_and_roll_back,
    spent_counter_windows_are_pruned,
);
