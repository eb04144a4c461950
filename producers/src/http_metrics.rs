//! Per-route request latency and status counts for `/metrics`.
//!
//! Two small layers: the outermost one times every request and records it; a route layer
//! (which only matched routes pass through) hands it the matched route template through a
//! task-local slot, so unmatched requests are recorded as `unmatched` and the template needs no
//! allocation. Series live in a fixed open-addressing table of `OnceLock` slots: a lookup is
//! atomic loads and a string compare, a new (method, route) pair initializes its slot once,
//! and no lock is taken on the request path.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::Method;

/// Upper bounds (µs) of the latency buckets: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Slots of the series table: far more than routes × methods, so probes stay short.
const SLOTS: usize = 512;

/// Status codes 100..=599, one counter each.
const STATUSES: usize = 500;

/// The route label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Methods with a label of their own; anything else is `other`, which bounds the label set.
const METHODS: [Method; 7] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
    Method::OPTIONS,
];

fn method_index(m: &Method) -> usize {
    METHODS.iter().position(|k| k == m).unwrap_or(METHODS.len())
}

fn method_label(i: usize) -> &'static str {
    METHODS.get(i).map_or("other", Method::as_str)
}

#[derive(Debug)]
struct Series {
    method: usize,
    route: Box<str>,
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    statuses: Box<[AtomicU64]>,
}

impl Series {
    fn new(method: usize, route: &str) -> Self {
        Self {
            method,
            route: route.into(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            statuses: (0..STATUSES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, micros: u64, status: u16) {
        let bucket = LATENCY_BUCKETS_US.partition_point(|&b| b < micros);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(micros, Relaxed);
        if let Some(c) = usize::from(status)
            .checked_sub(100)
            .and_then(|i| self.statuses.get(i))
        {
            c.fetch_add(1, Relaxed);
        }
    }
}

/// The request counters of one process.
#[derive(Debug)]
pub struct HttpMetrics {
    slots: Box<[OnceLock<Series>]>,
    /// Requests whose (method, route) found no free slot (never expected: routes are few).
    overflow: AtomicU64,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
            overflow: AtomicU64::new(0),
        }
    }
}

/// FNV-1a: tiny and good enough to spread a few dozen route templates.
fn hash(method: usize, route: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in route
        .bytes()
        .chain([u8::try_from(method).unwrap_or(u8::MAX)])
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(h % SLOTS as u64).unwrap_or(0)
}

impl HttpMetrics {
    fn series(&self, method: usize, route: &str) -> Option<&Series> {
        let start = hash(method, route);
        for i in 0..SLOTS {
            let slot = &self.slots[(start + i) % SLOTS];
            let s = slot.get_or_init(|| Series::new(method, route));
            if s.method == method && &*s.route == route {
                return Some(s);
            }
        }
        None
    }

    /// Records one request.
    pub fn record(&self, method: &Method, route: &str, status: u16, micros: u64) {
        match self.series(method_index(method), route) {
            Some(s) => s.record(micros, status),
            None => {
                self.overflow.fetch_add(1, Relaxed);
            }
        }
    }

    /// Prometheus text of every series seen so far, sorted by route and method.
    #[must_use]
    pub fn render(&self) -> String {
        let mut series: Vec<&Series> = self.slots.iter().filter_map(OnceLock::get).collect();
        series.sort_by(|a, b| (&a.route, a.method).cmp(&(&b.route, b.method)));
        let mut out = String::new();
        let name = "cognomega_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from request to response head, by method and route template."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for s in &series {
            let labels = format!(
                "method=\"{}\",route=\"{}\"",
                method_label(s.method),
                s.route
            );
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
                cumulative += s.buckets[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
                    seconds(*bound)
                );
            }
            cumulative += s.buckets[LATENCY_BUCKETS_US.len()].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {}",
                seconds(s.sum_us.load(Relaxed))
            );
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
        let name = "cognomega_http_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests answered, by method, route template and status."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for s in &series {
            for (i, c) in s.statuses.iter().enumerate() {
                let n = c.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "{name}{{method=\"{}\",route=\"{}\",status=\"{}\"}} {n}",
                        method_label(s.method),
                        s.route,
                        i + 100
                    );
                }
            }
        }
        out
    }
}

#[allow(clippy::cast_precision_loss)]
fn seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

tokio::task_local! {
    static ROUTE: RefCell<Option<MatchedPath>>;
}

/// The outermost layer: times the request and records it under the route the inner layer saw.
pub(crate) async fn layer(
    State(metrics): State<Arc<HttpMetrics>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let (response, route) = ROUTE
        .scope(RefCell::new(None), async move {
            let response = next.run(req).await;
            (response, ROUTE.with(|r| r.borrow_mut().take()))
        })
        .await;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let route = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    metrics.record(&method, route, response.status().as_u16(), micros);
    response
}

/// The route layer: only matched routes pass through it; it names the template.
pub(crate) async fn matched(req: Request, next: Next) -> Response {
    if let Some(path) = req.extensions().get::<MatchedPath>() {
        let path = path.clone();
        let _ = ROUTE.try_with(|r| *r.borrow_mut() = Some(path));
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_statuses_counted() {
        let m = HttpMetrics::default();
        m.record(&Method::GET, "/jobs/{id}", 200, 700);
        m.record(&Method::GET, "/jobs/{id}", 404, 30_000);
        m.record(&Method::POST, "/jobs/{id}", 200, 20_000_000);
        m.record(
            &Method::from_bytes(b"BREW").expect("method"),
            UNMATCHED,
            404,
            10,
        );
        let text = m.render();
        let get = "method=\"GET\",route=\"/jobs/{id}\"";
        for (le, n) in [
            ("0.0005", 0),
            ("0.001", 1),
            ("0.025", 1),
            ("0.05", 2),
            ("+Inf", 2),
        ] {
            let line = format!(
                "cognomega_http_request_duration_seconds_bucket{{{get},le=\"{le}\"}} {n}\n"
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(text.contains(&format!(
            "cognomega_http_request_duration_seconds_sum{{{get}}} 0.0307\n"
        )));
        assert!(text.contains(
            "cognomega_http_request_duration_seconds_bucket{method=\"POST\",route=\"/jobs/{id}\",le=\"10\"} 0\n"
        ));
        assert!(text.contains(&format!(
            "cognomega_http_requests_total{{{get},status=\"404\"}} 1\n"
        )));
        assert!(text.contains(
            "cognomega_http_requests_total{method=\"other\",route=\"unmatched\",status=\"404\"} 1\n"
        ));
    }

    #[test]
    fn many_routes_each_get_their_own_series() {
        let m = HttpMetrics::default();
        for i in 0..300 {
            m.record(&Method::GET, &format!("/r{i}"), 200, 1);
            m.record(&Method::GET, &format!("/r{i}"), 200, 1);
        }
        let text = m.render();
        for i in [0, 150, 299] {
            assert!(text.contains(&format!(
                "cognomega_http_requests_total{{method=\"GET\",route=\"/r{i}\",status=\"200\"}} 2\n"
            )));
        }
        assert_eq!(m.overflow.load(Relaxed), 0);
    }
}
