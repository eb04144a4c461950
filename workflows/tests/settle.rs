//! The money path's shared writes (`cognomega_workflows::settle`), run natively on SQLite and
//! PostgreSQL (each check as `sqlite::name` and `postgres::name`): the per-day token counter
//! the daily budget of `POST /api/si/ask` reads (`usage_day_tokens`) always equals the
//! `tokens_in` + `tokens_out` sum over the day's recorded events; recorded usage sends one
//! settlement per new priced event; a settled batch lands once, moves balances, flags and
//! unflags guests, and marks adjustments applied.

use chrono::{DateTime, Utc};
use cognomega_core::billing::{
    PriceTable, SettlementKind, SettlementMessage, UsageEvent, UsageKey, UsageKind,
};
use cognomega_stores::billing::{ledger_balance, stored_balance, tokens_on_day, usage_totals};
use cognomega_stores::Database;
use cognomega_testkit::{Backend, TestDb};
use cognomega_workflows::settle::{record_usage, settle, UsageItem};

const DAY: i64 = 86_400;
/// 2026-01-02T00:00:00Z.
const DAY_START: i64 = 1_767_312_000;

fn event(key: &str, kind: UsageKind, quantity: u64, at_secs: Option<i64>) -> UsageEvent {
    UsageEvent {
        idempotency_key: UsageKey::parse(key)
            .unwrap_or_else(|e| panic!("invalid test key {key:?}: {e}")),
        kind,
        quantity,
        occurred_at: at_secs.and_then(|s| DateTime::<Utc>::from_timestamp(s, 0)),
        meta: None,
    }
}

async fn record(
    db: &Database,
    tenant: &str,
    received_secs: i64,
    events: Vec<UsageEvent>,
) -> anyhow::Result<u64> {
    let mut tx = db.begin().await?;
    let item = UsageItem {
        tenant,
        events: &events,
        received_at_ms: received_secs * 1000,
        request_id: None,
    };
    let new = record_usage(&mut tx, &[item], &PriceTable::default()).await?;
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
    let mut tx = db.begin().await?;
    let events = [event("in-3", UsageKind::TokensIn, 50, Some(noon))];
    let item = UsageItem {
        tenant: "a",
        events: &events,
        received_at_ms: noon * 1000,
        request_id: None,
    };
    record_usage(&mut tx, &[item], &PriceTable::default()).await?;
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

/// The `settlement` messages recorded usage sent, oldest first.
async fn settlements(db: &Database) -> anyhow::Result<Vec<SettlementMessage>> {
    use cognomega_core::sql::{Dialects, Executor as _};
    const BODIES: Dialects = Dialects {
        sqlite: "SELECT CAST(body AS TEXT) FROM queue_messages WHERE queue = 'settlement' ORDER BY id",
        postgres: "SELECT convert_from(body, 'UTF8') FROM queue_messages WHERE queue = 'settlement' ORDER BY id",
    };
    let mut read = cognomega_stores::sql::Reader(db);
    let statement = BODIES.pick(read.dialect());
    let rows = read.query(statement, &[]).await?;
    rows.iter()
        .map(|r| Ok(serde_json::from_str(&r.text(0)?)?))
        .collect()
}

async fn recorded_usage_sends_one_settlement_per_new_priced_event(
    backend: Backend,
) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db();
    let noon = DAY_START + DAY / 2;
    let first = vec![
        event("job-1", UsageKind::Job, 3, None),
        event("in-1", UsageKind::TokensIn, 1000, Some(noon)),
        event("free-1", UsageKind::TokensOut, 0, None),
    ];
    assert_eq!(record(db, "t", noon, first).await?, 3);
    // The same key again, and a new one: only the new one counts.
    let again = vec![
        event("job-1", UsageKind::Job, 3, None),
        event("job-2", UsageKind::Job, 1, None),
    ];
    assert_eq!(record(db, "t", noon, again).await?, 1);
    let prices = PriceTable::default();
    let mut got: Vec<(String, i64)> = settlements(db)
        .await?
        .into_iter()
        .inspect(|s| assert!(s.id.starts_with("usage-") && s.tenant_id == "t"))
        .map(|s| (s.reference.unwrap_or_default(), s.delta))
        .collect();
    let mut want: Vec<(String, i64)> = [
        ("job-1", prices.charge(UsageKind::Job, 3)),
        ("in-1", prices.charge(UsageKind::TokensIn, 1000)),
        ("job-2", prices.charge(UsageKind::Job, 1)),
    ]
    .into_iter()
    .filter(|(_, c)| *c != 0)
    .map(|(k, c)| (k.to_owned(), -c))
    .collect();
    assert!(!want.is_empty(), "the default prices charge jobs");
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "one settlement per new priced event, none for a repeat"
    );
    Ok(())
}

fn entry(id: &str, tenant: &str, delta: i64, kind: SettlementKind) -> SettlementMessage {
    SettlementMessage {
        id: id.to_owned(),
        tenant_id: tenant.to_owned(),
        delta,
        kind,
        reference: None,
    }
}

async fn a_settled_batch_lands_once(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db();
    for (tenant, tier) in [("g", "guest"), ("m", "member")] {
        let mut tx = db.begin().await?;
        let user = format!("u-{tenant}");
        cognomega_stores::billing::create_tenant(&mut tx, tenant, &user, tier, None).await?;
        tx.commit().await?;
    }
    let batch = vec![
        entry("grant-g", "g", 100, SettlementKind::Grant),
        entry("use-g-1", "g", -30, SettlementKind::Usage),
        entry("grant-m", "m", 50, SettlementKind::Grant),
    ];
    let now = DAY_START * 1000;
    let mut tx = db.begin().await?;
    let settled = settle(&mut tx, &batch, 0, now).await?;
    tx.commit().await?;
    assert_eq!(settled.entries, 3);
    assert_eq!(settled.balances.get("g").map(|b| b.0), Some(70));
    assert_eq!(settled.balances.get("m").map(|b| b.0), Some(50));
    // Redelivered with one more: only the new entry moves a balance.
    let mut again = batch.clone();
    again.push(entry("use-g-2", "g", -80, SettlementKind::Usage));
    let mut tx = db.begin().await?;
    let settled = settle(&mut tx, &again, 0, now).await?;
    tx.commit().await?;
    assert_eq!(settled.entries, 1);
    assert_eq!(stored_balance(db, "g").await?, Some(-10));
    assert_eq!(ledger_balance(db, "g").await?, -10);
    assert_eq!(ledger_balance(db, "m").await?, 50);
    // A guest below the floor is flagged; back above it, unflagged.
    let flagged = |db| cognomega_stores::billing::tenant_status(db, "g");
    assert_eq!(flagged(db).await?, Some(true));
    let mut tx = db.begin().await?;
    let top_up = [entry("top-up-g", "g", 20, SettlementKind::Grant)];
    settle(&mut tx, &top_up, 0, now).await?;
    tx.commit().await?;
    assert_eq!(flagged(db).await?, Some(false));
    // An adjustment's entry marks it applied.
    let mut tx = db.begin().await?;
    let (id, _) =
        cognomega_stores::billing::create_adjustment(&mut tx, "k-1", "m", 5, "goodwill").await?;
    let adjust = SettlementMessage {
        reference: Some(id.clone()),
        ..entry(&format!("adjust-{id}"), "m", 5, SettlementKind::Adjustment)
    };
    settle(&mut tx, &[adjust], 0, now).await?;
    tx.commit().await?;
    let applied = cognomega_stores::billing::get_adjustment(db, &id).await?;
    assert_eq!(applied.map(|a| a.status).as_deref(), Some("applied"));
    assert_eq!(ledger_balance(db, "m").await?, 55);
    Ok(())
}

cognomega_testkit::both_backends!(
    day_tokens_count_new_token_events_once_per_utc_day,
    recorded_usage_sends_one_settlement_per_new_priced_event,
    a_settled_batch_lands_once,
);
