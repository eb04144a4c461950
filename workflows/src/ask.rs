//! `POST /api/si/ask`, written once: the body and the tier's levers, the `Idempotency-Key`
//! (a repeated key replays the first answer, billed once), the standing check (flag, floor,
//! today's tokens), the provider call through the host's router, the usage sent to the `usage`
//! queue under the request's billing id, and the answer — JSON, or Server-Sent Events read
//! from the provider by a future the host keeps alive after the response, which bills exactly
//! once when the stream ends (normally, on a provider failure, or when the client hangs up).
//!
//! The host brings the provider transport ([`AskHost::complete`], [`AskHost::open`]: reqwest
//! natively, `fetch` and the Workers AI binding on the edge), the queue sender (natively the
//! queue driver, on the edge the outbox), the balance cache and the clocks.

use cognomega_core::ai::replay::{self, Existing, Recorded};
use cognomega_core::ai::{ask_charge, check_budget, parse_ask, AskPolicy, Message, ProviderId};
use cognomega_core::ai::{Failure, Verdict};
use cognomega_core::api::Refusal;
use cognomega_core::auth::Tier;
use cognomega_core::billing::PriceTable;
use cognomega_core::queue::MaybeSendSync;
use cognomega_core::sql::{Executor, Outbound};
use cognomega_providers::answer::{self, Billable};
use cognomega_providers::{AskFailure, Chunk, Completion, Usage};
use futures::channel::{mpsc, oneshot};
use futures::future::Either;
use futures::{SinkExt as _, StreamExt as _};

/// The largest body: the longest prompt, JSON-escaped, and headroom.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// A provider's chunks, as the host reads them (`Send` natively).
#[cfg(not(target_arch = "wasm32"))]
pub type Chunks = futures::stream::BoxStream<'static, Result<Chunk, Failure>>;
/// A provider's chunks, as the host reads them.
#[cfg(target_arch = "wasm32")]
pub type Chunks = futures::stream::LocalBoxStream<'static, Result<Chunk, Failure>>;

/// The future that reads a stream, bills it and records it (`Send` natively).
#[cfg(not(target_arch = "wasm32"))]
pub type Driver = futures::future::BoxFuture<'static, ()>;
/// The future that reads a stream, bills it and records it.
#[cfg(target_arch = "wasm32")]
pub type Driver = futures::future::LocalBoxFuture<'static, ()>;

/// An answer routed to a provider.
#[derive(Debug)]
pub struct Routed<T> {
    /// The provider that answered.
    pub provider: ProviderId,
    /// The model it runs.
    pub model: String,
    /// The answer (a completion, or the chunks of a stream).
    pub value: T,
}

/// What an ask needs from its host.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait AskHost: MaybeSendSync + Clone + 'static {
    /// Statements that must see the last commit (the key claims).
    fn db(&self) -> Box<dyn Executor + '_>;

    /// Reads that may lag a little (the standing check); the writer by default.
    fn reader(&self) -> Box<dyn Executor + '_> {
        self.db()
    }

    /// The tenant's cached balance (the ledger's settled balance when nothing is cached).
    async fn balance(&self, tenant: &str) -> Result<i64, String>;

    /// Sends `message` durably (natively the queue driver, on the edge the outbox).
    async fn send(&self, message: Outbound<'_>) -> Result<(), String>;

    /// Whether any provider is configured.
    fn any_provider(&self) -> bool;

    /// A whole answer, routed with fallback.
    async fn complete(
        &self,
        messages: &[Message],
        model: Option<&str>,
        max_tokens: u32,
    ) -> Result<Routed<Completion>, AskFailure>;

    /// A streamed answer, routed with fallback until its first byte.
    async fn open(
        &self,
        messages: &[Message],
        model: Option<&str>,
        max_tokens: u32,
    ) -> Result<Routed<Chunks>, AskFailure>;

    /// Records an answered ask in the host's metrics.
    fn answered(&self, _provider: ProviderId, _model: &str, _usage: Usage, _credits: i64) {}

    /// Logs what the client is not told (a replay that could not be stored, …).
    fn warn(&self, message: &str);

    /// Now, epoch milliseconds.
    fn now_ms(&self) -> i64;

    /// A monotonic clock in milliseconds, for `Server-Timing`.
    fn clock_ms(&self) -> f64;

    /// A fresh id (UUIDv7) for an ask without a key.
    fn fresh_id(&self) -> String;
}

/// The settings an ask reads: the same names on both hosts.
#[derive(Debug, Clone, Copy)]
pub struct AskSettings<'a> {
    /// Each tier's levers.
    pub policy: &'a AskPolicy,
    /// Credits per token.
    pub prices: &'a PriceTable,
    /// The balance at or below which billable work is refused.
    pub floor: i64,
}

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct AskRequest<'a> {
    /// The caller's tenant.
    pub tenant: &'a str,
    /// The caller's tier.
    pub tier: Tier,
    /// The `Idempotency-Key` header, as sent.
    pub key: Option<&'a [u8]>,
    /// The body.
    pub body: &'a [u8],
    /// The request id (answers and logs).
    pub request_id: &'a str,
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `token`, `error` or `done`.
    pub event: &'static str,
    /// Its JSON data.
    pub data: String,
}

impl Frame {
    /// The event on the wire.
    #[must_use]
    pub fn wire(&self) -> String {
        answer::sse_frame(self.event, &self.data)
    }
}

/// The events of a streamed answer. Dropping it (the client hung up) stops the provider read,
/// and what was produced is billed, estimated.
#[derive(Debug)]
pub struct Events {
    frames: mpsc::Receiver<Frame>,
    _alive: oneshot::Sender<()>,
}

impl futures::Stream for Events {
    type Item = Frame;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Frame>> {
        self.frames.poll_next_unpin(cx)
    }
}

/// What the host answers.
pub enum Reply {
    /// A JSON answer (200): its headers (lower-case names) and body.
    Json {
        /// `x-provider`, `x-credits-used`, …, `server-timing`.
        headers: Vec<(&'static str, String)>,
        /// The answer.
        body: serde_json::Value,
    },
    /// The first answer to this key, sent again (`Idempotent-Replayed: true` among its headers).
    Replayed(Recorded),
    /// Server-Sent Events: the host answers with `events` and keeps `driver` running after the
    /// response (a spawned task natively, `waitUntil` on the edge).
    Stream {
        /// The provider streaming.
        provider: ProviderId,
        /// Its model.
        model: String,
        /// The events, as they come.
        events: Events,
        /// Reads the provider, bills, records.
        driver: Driver,
    },
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Json { headers, body } => f
                .debug_struct("Json")
                .field("headers", headers)
                .field("body", body)
                .finish(),
            Self::Replayed(r) => f.debug_tuple("Replayed").field(r).finish(),
            Self::Stream {
                provider, model, ..
            } => f
                .debug_struct("Stream")
                .field("provider", provider)
                .field("model", model)
                .finish_non_exhaustive(),
        }
    }
}

impl Reply {
    /// The headers of a replayed answer: its recorded ones, its content type, the replay mark.
    #[must_use]
    pub fn replay_headers(recorded: &Recorded) -> Vec<(&str, &str)> {
        recorded
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain([
                ("content-type", recorded.content_type.as_str()),
                (replay::REPLAYED_HEADER, "true"),
            ])
            .collect()
    }
}

fn refusal(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::new(status, code, message)
}

fn routing(e: &AskFailure) -> Refusal {
    let (status, code, message) = e.refusal();
    refusal(status, code, message)
}

/// Answers one ask.
pub async fn ask<H: AskHost>(
    host: &H,
    settings: AskSettings<'_>,
    req: AskRequest<'_>,
) -> Result<Reply, Refusal> {
    let admitted = admit(&settings, &req)?;
    run(host, settings, req, admitted).await
}

/// An ask that passed the checks needing neither the database nor a provider: its
/// `Idempotency-Key`, its size, its body and its tier's levers.
#[derive(Debug)]
pub struct Admitted {
    key: Option<String>,
    parsed: cognomega_core::ai::AskRequest,
    max_tokens: u32,
    daily_tokens: Option<u64>,
}

/// The checks of [`ask`] that need no I/O: a host whose database connection is costly (the
/// edge) runs them before it connects, then [`run`]s what they admitted.
pub fn admit(settings: &AskSettings<'_>, req: &AskRequest<'_>) -> Result<Admitted, Refusal> {
    let key = replay::parse_key(req.key).map_err(|m| refusal(400, "invalid_idempotency_key", m))?;
    if req.body.len() > BODY_LIMIT {
        return Err(refusal(
            413,
            "body_too_large",
            format!("the body is larger than {BODY_LIMIT} bytes"),
        ));
    }
    let parsed = parse_ask(req.body).map_err(|e| refusal(400, "invalid_body", e.to_string()))?;
    let tier = settings.policy.tier(req.tier);
    let verdict = tier.judge(&parsed);
    if let Some((status, code, message)) = verdict.refusal() {
        return Err(refusal(status, code, message));
    }
    let Verdict::Allow { max_tokens } = verdict else {
        return Err(Refusal::internal("a refused verdict has a refusal"));
    };
    Ok(Admitted {
        key,
        parsed,
        max_tokens,
        daily_tokens: tier.daily_tokens,
    })
}

/// Runs an admitted ask (see [`ask`]).
pub async fn run<H: AskHost>(
    host: &H,
    settings: AskSettings<'_>,
    req: AskRequest<'_>,
    admitted: Admitted,
) -> Result<Reply, Refusal> {
    let Admitted {
        key,
        parsed,
        max_tokens,
        daily_tokens,
    } = admitted;
    if !host.any_provider() {
        let (status, code, message) = cognomega_providers::no_provider();
        return Err(refusal(status, code, message));
    }
    // A repeated key is answered here, before the credit check: its answer was paid for.
    let held = match &key {
        None => None,
        Some(k) => match claim(host, req.tenant, k, req.body).await? {
            Claimed::Held(held) => Some(held),
            Claimed::Replay(recorded) => return Ok(Reply::Replayed(recorded)),
        },
    };
    let billing_id = replay::billing_id(req.tenant, key.as_deref(), || host.fresh_id());
    let asked = Asked {
        tenant: req.tenant.to_owned(),
        billing_id,
        request_id: req.request_id.to_owned(),
        messages: parsed.messages,
        balance: 0,
        prices: settings.prices.clone(),
        held,
    };
    let answered = answer_ask(
        host,
        asked,
        parsed.model.as_deref(),
        parsed.stream,
        max_tokens,
        daily_tokens,
        settings.floor,
    )
    .await;
    match answered {
        Ok((reply, Some((held, recorded)))) => {
            held.finish(host, &recorded).await;
            Ok(reply)
        }
        Ok((reply, None)) => Ok(reply),
        Err((e, held)) => {
            // Nothing was billed: a retry with the key asks afresh.
            if let Some(held) = held {
                held.release(host).await;
            }
            Err(e)
        }
    }
}

/// One request's context, kept for billing after the answer (a stream outlives the handler).
#[derive(Debug)]
struct Asked {
    tenant: String,
    /// The id the request is billed under (`replay::billing_id`).
    billing_id: String,
    request_id: String,
    messages: Vec<Message>,
    /// The balance before this request.
    balance: i64,
    prices: PriceTable,
    /// The `Idempotency-Key` this request holds.
    held: Option<Held>,
}

/// A claimed `Idempotency-Key`: finished with the answer, or released when nothing was billed.
#[derive(Debug, Clone)]
pub struct Held {
    tenant: String,
    key: String,
    claimed_at: i64,
}

impl Held {
    async fn finish<H: AskHost>(&self, host: &H, recorded: &Recorded) {
        let args = [
            self.tenant.as_str().into(),
            self.key.as_str().into(),
            self.claimed_at.into(),
            recorded.to_json().into(),
        ];
        if let Err(e) = host.db().execute(replay::FINISH, &args).await {
            // The answer still goes out; a retry meets a pending key until it is abandoned,
            // then asks again, billed under the same id (once).
            host.warn(&format!(
                "could not store the answer of Idempotency-Key {} for replays: {e}",
                self.key
            ));
        }
    }

    async fn release<H: AskHost>(&self, host: &H) {
        let args = [
            self.tenant.as_str().into(),
            self.key.as_str().into(),
            self.claimed_at.into(),
        ];
        if let Err(e) = host.db().execute(replay::RELEASE, &args).await {
            host.warn(&format!(
                "could not release Idempotency-Key {}: {e}",
                self.key
            ));
        }
    }
}

/// What claiming a key found.
#[derive(Debug)]
pub enum Claimed {
    /// This request holds the key: ask, then finish or release it.
    Held(Held),
    /// The key's first answer.
    Replay(Recorded),
}

/// Claims `key` for `tenant` and this body: held, the first answer to replay, or a 409 (the key
/// with another body, or its first request still being answered).
pub async fn claim<H: AskHost>(
    host: &H,
    tenant: &str,
    key: &str,
    body: &[u8],
) -> Result<Claimed, Refusal> {
    let hash = replay::request_hash(body);
    let (now, expired, abandoned) = replay::claim_times(host.now_ms());
    let mut db = host.db();
    let mut existing = None;
    // A live row can vanish between the claim and the look-up (released by its claimant):
    // then claim again.
    for _ in 0..3 {
        let args = [
            tenant.into(),
            key.into(),
            hash.as_str().into(),
            now.into(),
            expired.into(),
            abandoned.into(),
        ];
        let claimed = db
            .query_opt(replay::CLAIM, &args)
            .await
            .map_err(Refusal::internal)?;
        if let Some(row) = claimed {
            return Ok(Claimed::Held(Held {
                tenant: tenant.to_owned(),
                key: key.to_owned(),
                claimed_at: row.int(0).map_err(Refusal::internal)?,
            }));
        }
        let live = db
            .query_opt(replay::LOOKUP, &[tenant.into(), key.into()])
            .await
            .map_err(Refusal::internal)?;
        if let Some(r) = live {
            let read = || -> Result<Existing, cognomega_core::sql::SqlError> {
                Ok(Existing {
                    request_hash: r.text(0)?,
                    state: r.text(1)?,
                    claimed_at: r.int(2)?,
                    response: r.opt_text(3)?,
                })
            };
            existing = Some(read().map_err(Refusal::internal)?);
            break;
        }
    }
    let existing = existing.ok_or_else(|| {
        Refusal::unavailable("the Idempotency-Key changed hands during the claim; retry")
    })?;
    let decision = replay::decide(&existing, &hash);
    if let Some((status, code, message)) = replay::refusal(&decision) {
        let mut e = refusal(status, code, message);
        if let replay::Decision::InFlight { retry_after_secs } = decision {
            e.retry_after = Some(retry_after_secs);
        }
        return Err(e);
    }
    match decision {
        replay::Decision::Replay(recorded) => Ok(Claimed::Replay(recorded)),
        _ => Err(Refusal::internal("a decision that refuses nothing replays")),
    }
}

/// Held key and the answer to record under it.
type ToRecord = Option<(Held, Recorded)>;

/// Asks: the standing check, the provider, billing. A JSON answer comes back with its
/// recording for a held key (a stream records itself and finishes the key when it ends); an
/// error comes back with the key to release (nothing was billed).
async fn answer_ask<H: AskHost>(
    host: &H,
    mut asked: Asked,
    model: Option<&str>,
    stream: bool,
    max_tokens: u32,
    daily_tokens: Option<u64>,
    floor: i64,
) -> Result<(Reply, ToRecord), (Refusal, Option<Held>)> {
    let started = host.clock_ms();
    asked.balance = match standing(host, &asked.tenant, daily_tokens, floor).await {
        Ok(b) => b,
        Err(e) => return Err((e, asked.held)),
    };
    let standing_done = host.clock_ms();
    if stream {
        let opened = match host.open(&asked.messages, model, max_tokens).await {
            Ok(o) => o,
            Err(e) => return Err((routing(&e), asked.held)),
        };
        let (tx, frames) = mpsc::channel::<Frame>(64);
        // Dropped with the events: tells the driver the client is gone.
        let (alive, gone) = oneshot::channel::<()>();
        let provider = opened.provider;
        let model = opened.model.clone();
        let driver: Driver = Box::pin(drive(host.clone(), asked, opened, tx, gone));
        let events = Events {
            frames,
            _alive: alive,
        };
        return Ok((
            Reply::Stream {
                provider,
                model,
                events,
                driver,
            },
            None,
        ));
    }
    let answered = match host.complete(&asked.messages, model, max_tokens).await {
        Ok(a) => a,
        Err(e) => return Err((routing(&e), asked.held)),
    };
    let completion = answered.value;
    let provider_done = host.clock_ms();
    let billable = answer::billable(completion.usage, true, &asked.messages, &completion.output);
    let credits = match bill(host, &asked, billable.usage).await {
        Ok(c) => c,
        Err(e) => return Err((e, asked.held)),
    };
    let billed = host.clock_ms();
    host.answered(
        answered.provider,
        &completion.model,
        billable.usage,
        credits,
    );
    let timing = cognomega_core::ai::server_timing(&[
        ("standing", standing_done - started),
        ("provider", provider_done - standing_done),
        ("bill", billed - provider_done),
    ]);
    let body = answer::body(
        &asked.request_id,
        answered.provider,
        &completion.model,
        &completion.output,
        billable,
        credits,
    );
    let answer_headers = answer::headers(
        answered.provider,
        &completion.model,
        billable,
        credits,
        asked.balance - credits,
    );
    let recorded = asked.held.map(|held| {
        (
            held,
            Recorded::json_answer(&answer_headers, body.to_string()),
        )
    });
    let mut headers = answer_headers.to_vec();
    headers.push(("server-timing", timing));
    Ok((Reply::Json { headers, body }, recorded))
}

/// The checks before any provider is called, on one read of the tenant's flag, stored
/// balance and tokens recorded today (a counter the usage-writer keeps with the events, so the
/// check costs the same however much was used): 402 when it is flagged or at the floor, then
/// 429 `token_budget_exceeded` (with `Retry-After`) when its tokens today (UTC) reached its
/// tier's budget. Returns the balance.
pub async fn standing<H: AskHost>(
    host: &H,
    tenant: &str,
    budget: Option<u64>,
    floor: i64,
) -> Result<i64, Refusal> {
    let now_secs = host.now_ms().div_euclid(1000);
    let (balance, used) = crate::billing::funded(
        &mut *host.reader(),
        tenant,
        now_secs,
        floor,
        host.balance(tenant),
    )
    .await?;
    if let Err(over) = check_budget(used, budget, now_secs) {
        let e = refusal(429, "token_budget_exceeded", over.message);
        return Err(match u64::try_from(over.retry_after_secs) {
            Ok(secs) => e.retry_after(secs),
            Err(_) => e,
        });
    }
    Ok(balance)
}

/// Sends the request's usage events to the `usage` queue (settled by the usage-writer and the
/// ledger, keyed by the request's billing id); returns the charge.
async fn bill<H: AskHost>(host: &H, asked: &Asked, usage: Usage) -> Result<i64, Refusal> {
    let now = chrono::DateTime::from_timestamp_millis(host.now_ms()).unwrap_or_default();
    let charge = ask_charge(
        &asked.tenant,
        &asked.billing_id,
        usage.tokens_in,
        usage.tokens_out,
        &asked.prices,
        now,
    )
    .map_err(Refusal::internal)?;
    if let Some(msg) = &charge.message {
        let body = serde_json::to_string(msg).map_err(Refusal::internal)?;
        host.send(Outbound {
            queue: cognomega_core::queue::catalog::usage::QUEUE,
            body,
            request_id: Some(&asked.request_id),
        })
        .await
        .map_err(|e| {
            Refusal::unavailable(format!(
                "the answer could not be billed ({e}); retry (an Idempotency-Key makes a retry billed once)"
            ))
        })?;
    }
    Ok(charge.credits)
}

/// Reads a stream to its end, sends its events, bills what was produced once, and finishes
/// (or releases) the key it holds.
async fn drive<H: AskHost>(
    host: H,
    asked: Asked,
    opened: Routed<Chunks>,
    mut tx: mpsc::Sender<Frame>,
    mut gone: oneshot::Receiver<()>,
) {
    let provider = opened.provider;
    let model = opened.model;
    let mut chunks = opened.value;
    // The frames as sent, for a held key's replays.
    let mut recording = asked.held.as_ref().map(|_| String::new());
    let mut record = |event: &'static str, data: String| {
        let frame = Frame { event, data };
        if let Some(r) = &mut recording {
            r.push_str(&frame.wire());
        }
        frame
    };
    let mut output = String::new();
    let mut reported: Option<Usage> = None;
    let mut failure: Option<Failure> = None;
    let mut client_gone = false;
    loop {
        let next = chunks.next();
        let read = match futures::future::select(next, &mut gone).await {
            Either::Right(_) => {
                client_gone = true;
                break;
            }
            Either::Left((read, _)) => read,
        };
        match read {
            None => break,
            Some(Ok(Chunk::Usage(u))) => reported = Some(u),
            Some(Ok(Chunk::Text(text))) => {
                let frame = record("token", answer::token_event(&text));
                output.push_str(&text);
                if tx.send(frame).await.is_err() {
                    client_gone = true;
                    break;
                }
            }
            Some(Err(f)) => {
                failure = Some(f);
                break;
            }
        }
    }
    // Stop reading the provider at once (it stops generating too).
    drop(chunks);
    let complete = !client_gone && failure.is_none();
    let billable: Billable = answer::billable(reported, complete, &asked.messages, &output);
    let billed = bill(&host, &asked, billable.usage)
        .await
        .map(|credits| (credits, asked.balance - credits));
    let finish = answer::finish_label(client_gone, failure.is_some());
    match &billed {
        Ok((credits, _)) => host.answered(provider, &model, billable.usage, *credits),
        Err(e) => host.warn(&format!(
            "ask {}: the stream could not be billed: {}",
            asked.request_id, e.message
        )),
    }
    if let Some(f) = &failure {
        let frame = record("error", answer::error_event(provider, f));
        let _ = tx.send(frame).await;
    }
    let done = answer::done_event(
        &asked.request_id,
        provider,
        &model,
        billable,
        billed
            .as_ref()
            .copied()
            .map_err(|e| (e.code, e.message.as_str())),
        finish,
    );
    let _ = tx.send(record("done", done)).await;
    if let (Some(held), Some(body)) = (&asked.held, recording) {
        if billed.is_ok() {
            let recorded = Recorded::event_stream(provider.as_str(), &model, body);
            held.finish(&host, &recorded).await;
        } else {
            held.release(&host).await;
        }
    }
}
