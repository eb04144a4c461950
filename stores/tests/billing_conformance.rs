//! The per-day token counter the daily budget of `POST /api/si/ask` reads
//! (`usage_day_tokens`), checked the same way on both backends: it must always equal the
//! `tokens_in` + `tokens_out` sum over the day's recorded events. Each check runs as
//! `sqlite::name` and `postgres::name`.

use chrono::{DateTime, Utc};
use cognomega_core::billing::{UsageEvent, UsageKey, UsageKind};
use cognomega_core::queue::QueueName;
use cognomega_stores::billing::{record_usage, tokens_on_day, usage_totals, UsageInsert};
use cognomega_stores::Database;
use cognomega_testkit::{Backend, TestDb};

const DAY: i64 = 86_400;
/// 2026-01-02T00:00:00Z.
const DAY_START: i64 = 1_767_312_000;

fn event(key: &str, kind: UsageKind, quantity: u64, at_secs: Option<i64>) -> (UsageEvent, i64) {
    let event = UsageEvent {
        idempotency_key: UsageKey::parse(key)
            .unwrap_or_else(|e| panic!("invalid test key {key:?}: {e}")),
        kind,
        quantity,
        occurred_at: at_secs.and_then(|s| DateTime::<Utc>::from_timestamp(s, 0)),
        meta: None,
    };
    (event, 1)
}

async fn record(
    db: &Database,
    tenant: &str,
    received_secs: i64,
    events: Vec<(UsageEvent, i64)>,
) -> anyhow::Result<u64> {
    let settlement = QueueName::parse("settlement")?;
    let mut tx = db.begin().await?;
    let new = record_usage(
        &mut tx,
        &[UsageInsert {
            tenant_id: tenant,
            events,
            received_at_ms: received_secs * 1000,
            request_id: None,
        }],
        &settlement,
    )
    .await?;
    tx.commit().await?;
    Ok(new)
}

/// The day's `tokens_in` + `tokens_out` as the old per-ask aggregate computed it.
async fn summed(db: &Database, tenant: &str, day_start: i64) -> anyhow::Result<u64> {
    let totals = usage_totals(db, tenant, day_start * 1000, (day_start + DAY) * 1000).await?;
    Ok(totals
        .iter()
        .filter(|(k, _)| matches!(k, UsageKind::TokensIn | UsageKind::TokensOut))
        .map(|(_, t)| u64::try_from(t.quantity).unwrap_or(0))
        .sum())
}

async fn day_tokens_count_new_token_events_once_per_utc_day(
    backend: Backend,
) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db();
    let noon = DAY_START + DAY / 2;
    assert_eq!(
        tokens_on_day(db, "a", noon).await?,
        0,
        "nothing recorded yet"
    );
    let new = record(
        db,
        "a",
        noon,
        vec![
            event("in-1", UsageKind::TokensIn, 100, None),
            event("out-1", UsageKind::TokensOut, 20, Some(noon)),
            // Not tokens: not counted.
            event("job-1", UsageKind::Job, 7, None),
            // A key repeated inside the batch is recorded once, with its first quantity.
            event("in-1", UsageKind::TokensIn, 5_000, None),
            // The day before and the day after have their own counters.
            event("late", UsageKind::TokensIn, 3, Some(DAY_START - 1)),
            event("early", UsageKind::TokensOut, 4, Some(DAY_START + DAY)),
        ],
    )
    .await?;
    assert_eq!(new, 5);
    // Any second of the day reads the same counter.
    for at in [DAY_START, noon, DAY_START + DAY - 1] {
        assert_eq!(tokens_on_day(db, "a", at).await?, 120);
    }
    assert_eq!(tokens_on_day(db, "a", DAY_START - 1).await?, 3);
    assert_eq!(tokens_on_day(db, "a", DAY_START + DAY).await?, 4);
    // A retried batch adds nothing; new keys add; other tenants are apart.
    let again = record(
        db,
        "a",
        noon + 60,
        vec![
            event("out-1", UsageKind::TokensOut, 20, Some(noon)),
            event("in-2", UsageKind::TokensIn, 1, Some(noon + 60)),
        ],
    )
    .await?;
    assert_eq!(again, 1);
    record(
        db,
        "b",
        noon,
        vec![event("in-1", UsageKind::TokensIn, 9, None)],
    )
    .await?;
    assert_eq!(tokens_on_day(db, "a", noon).await?, 121);
    assert_eq!(tokens_on_day(db, "b", noon).await?, 9);
    for (tenant, day) in [
        ("a", DAY_START),
        ("a", DAY_START - DAY),
        ("a", DAY_START + DAY),
        ("b", DAY_START),
    ] {
        assert_eq!(
            tokens_on_day(db, tenant, day).await?,
            summed(db, tenant, day).await?,
            "the counter equals the sum over the events ({tenant}, {day})"
        );
    }
    // A rolled-back recording counts nothing.
    let settlement = QueueName::parse("settlement")?;
    let mut tx = db.begin().await?;
    record_usage(
        &mut tx,
        &[UsageInsert {
            tenant_id: "a",
            events: vec![event("in-3", UsageKind::TokensIn, 50, Some(noon))],
            received_at_ms: noon * 1000,
            request_id: None,
        }],
        &settlement,
    )
    .await?;
    drop(tx);
    assert_eq!(tokens_on_day(db, "a", noon).await?, 121);
    // Saturates instead of overflowing.
    let max = u64::try_from(i64::MAX)?;
    record(
        db,
        "c",
        noon,
        vec![
            event("huge-1", UsageKind::TokensIn, max, None),
            event("huge-2", UsageKind::TokensOut, max, None),
        ],
    )
    .await?;
    record(
        db,
        "c",
        noon,
        vec![event("huge-3", UsageKind::TokensIn, max, None)],
    )
    .await?;
    assert_eq!(tokens_on_day(db, "c", noon).await?, max);
    Ok(())
}

cognomega_testkit::both_backends!(day_tokens_count_new_token_events_once_per_utc_day);
