//! Per provider and model: call latency histogram, errors by kind, fallbacks, tokens and
//! credits, rendered as Prometheus text for `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use cognomega_core::ai::ProviderId;

/// Upper bounds of the latency buckets, in milliseconds.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000,
];

#[derive(Debug, Default, Clone)]
struct Series {
    buckets: [u64; LATENCY_BUCKETS_MS.len() + 1],
    latency_sum_ms: u64,
    errors: BTreeMap<&'static str, u64>,
    tokens_in: u64,
    tokens_out: u64,
    credits: i64,
    answers: u64,
}

/// The counters.
#[derive(Debug, Default)]
pub struct AiMetrics {
    series: Mutex<BTreeMap<(ProviderId, String), Series>>,
    fallbacks: Mutex<BTreeMap<ProviderId, u64>>,
}

impl AiMetrics {
    fn with(&self, id: ProviderId, model: &str, f: impl FnOnce(&mut Series)) {
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(series.entry((id, model.to_owned())).or_default());
    }

    pub(crate) fn latency(&self, id: ProviderId, model: &str, took: Duration) {
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.with(id, model, |s| {
            s.buckets[i] += 1;
            s.latency_sum_ms = s.latency_sum_ms.saturating_add(ms);
        });
    }

    pub(crate) fn error(&self, id: ProviderId, model: &str, kind: &'static str) {
        self.with(id, model, |s| *s.errors.entry(kind).or_default() += 1);
    }

    pub(crate) fn fallbacks(&self, answered_by: ProviderId, skipped: usize) {
        if skipped > 0 {
            let mut f = self
                .fallbacks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *f.entry(answered_by).or_default() += skipped as u64;
        }
    }

    /// An answered request: its tokens and credits.
    pub fn answered(
        &self,
        id: ProviderId,
        model: &str,
        tokens_in: u64,
        tokens_out: u64,
        credits: i64,
    ) {
        self.with(id, model, |s| {
            s.answers += 1;
            s.tokens_in += tokens_in;
            s.tokens_out += tokens_out;
            s.credits += credits;
        });
    }

    /// Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let fallbacks = self
            .fallbacks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let name = "cognomega_ai_call_duration_seconds";
        head(
            &mut out,
            name,
            "histogram",
            "Provider call latency (whole answer, or until a stream opens).",
        );
        for ((id, model), s) in &series {
            let labels = format!("provider=\"{id}\",model=\"{}\"", escape(model));
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
                cumulative += s.buckets[i];
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
                    *bound as f64 / 1000.0
                );
            }
            cumulative += s.buckets[LATENCY_BUCKETS_MS.len()];
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {}",
                s.latency_sum_ms as f64 / 1000.0
            );
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
        let name = "cognomega_ai_errors_total";
        head(
            &mut out,
            name,
            "counter",
            "Provider calls that failed, by kind.",
        );
        for ((id, model), s) in &series {
            for (kind, n) in &s.errors {
                let _ = writeln!(
                    out,
                    "{name}{{provider=\"{id}\",model=\"{}\",kind=\"{kind}\"}} {n}",
                    escape(model)
                );
            }
        }
        let name = "cognomega_ai_fallbacks_total";
        head(
            &mut out,
            name,
            "counter",
            "Providers skipped or failed before the one that answered.",
        );
        for (id, n) in &fallbacks {
            let _ = writeln!(out, "{name}{{provider=\"{id}\"}} {n}");
        }
        for (name, help, value) in [
            (
                "cognomega_ai_answers_total",
                "Answered asks.",
                (|s: &Series| s.answers as i64) as fn(&Series) -> i64,
            ),
            (
                "cognomega_ai_tokens_in_total",
                "Prompt tokens billed.",
                |s| s.tokens_in as i64,
            ),
            (
                "cognomega_ai_tokens_out_total",
                "Output tokens billed.",
                |s| s.tokens_out as i64,
            ),
            (
                "cognomega_ai_credits_total",
                "Credits charged for asks.",
                |s| s.credits,
            ),
        ] {
            head(&mut out, name, "counter", help);
            for ((id, model), s) in &series {
                let _ = writeln!(
                    out,
                    "{name}{{provider=\"{id}\",model=\"{}\"}} {}",
                    escape(model),
                    value(s)
                );
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
