//! The artifact codec on artifacts shaped like a generated app scaffold: ~50 KB of HTML, ~10 KB
//! of CSS and a ~100 KB JSON layout tree, repetitive the way generated output is, with varied
//! names, numbers and text so the compressors cannot cheat on exact repeats.
//!
//! `cargo bench -p cognomega-r2-lifecycle` first prints a table (stored size vs raw, ratio,
//! compress and decompress MB/s for zstd 3/9/19 and gzip 6/9), then hands over to criterion for
//! the precise throughput figures.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use cognomega_r2_lifecycle::codec::{compress, decode, Compression};
use criterion::{BenchmarkId, Criterion, Throughput};

/// The codecs compared: (label, compression, level).
const CODECS: &[(&str, Compression, i32)] = &[
    ("zstd-3", Compression::Zstd, 3),
    ("zstd-9", Compression::Zstd, 9),
    ("zstd-19", Compression::Zstd, 19),
    ("gzip-6", Compression::Gzip, 6),
    ("gzip-9", Compression::Gzip, 9),
];

/// A small deterministic generator (xorshift), so every run measures the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "account",
    "analytics",
    "billing",
    "dashboard",
    "invoice",
    "project",
    "report",
    "settings",
    "team",
    "usage",
    "export",
    "upload",
    "history",
    "profile",
    "search",
    "filter",
    "status",
    "pending",
    "complete",
    "archive",
    "overview",
    "monthly",
    "weekly",
    "customer",
    "order",
];
const TAGS: &[&str] = &["div", "section", "article", "aside", "li", "span", "p"];
const COMPONENTS: &[&str] = &[
    "Stack", "Grid", "Card", "Button", "Text", "Image", "Input", "Select", "Table", "Badge",
];

fn sentence(rng: &mut Rng, words: u64) -> String {
    (0..words)
        .map(|_| rng.pick(WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

fn html(rng: &mut Rng, target: usize) -> Vec<u8> {
    let mut out = String::from(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n  <meta charset=\"utf-8\">\n  \
         <title>Generated app</title>\n  <link rel=\"stylesheet\" href=\"app.css\">\n</head>\n\
         <body>\n<main id=\"app\" class=\"layout layout--dashboard\">\n",
    );
    let mut section = 0;
    while out.len() < target {
        section += 1;
        let _ = writeln!(
            out,
            "  <section id=\"section-{section}\" class=\"panel panel--{}\" data-testid=\"{}-{section}\">\n    <h2 class=\"panel__title\">{}</h2>",
            rng.pick(WORDS),
            rng.pick(WORDS),
            sentence(rng, 3)
        );
        for item in 0..(3 + rng.below(6)) {
            let tag = rng.pick(TAGS);
            let _ = writeln!(
                out,
                "    <{tag} class=\"card card--{} mt-{} px-{}\" data-id=\"{}\">\n      <span class=\"card__label\">{}</span>\n      <a href=\"/{}/{}\" class=\"btn btn-{}\">{}</a>\n    </{tag}>",
                rng.pick(WORDS),
                rng.below(6),
                rng.below(8),
                rng.next() % 100_000,
                sentence(rng, 2 + item % 4),
                rng.pick(WORDS),
                rng.below(10_000),
                rng.pick(&["primary", "secondary", "ghost"]),
                rng.pick(WORDS),
            );
        }
        out.push_str("  </section>\n");
    }
    out.push_str("</main>\n<script type=\"module\" src=\"app.js\"></script>\n</body>\n</html>\n");
    out.into_bytes()
}

fn css(rng: &mut Rng, target: usize) -> Vec<u8> {
    let mut out = String::from(":root {\n  --brand: #4f46e5;\n  --radius: 8px;\n}\n");
    while out.len() < target {
        let _ = writeln!(
            out,
            ".{}--{} {{\n  display: {};\n  margin: {}px {}px;\n  padding: {}rem;\n  color: #{:06x};\n  border-radius: var(--radius);\n}}",
            rng.pick(&["card", "panel", "btn", "layout", "nav"]),
            rng.pick(WORDS),
            rng.pick(&["flex", "grid", "block", "inline-flex"]),
            rng.below(32),
            rng.below(32),
            rng.below(4),
            rng.next() & 0xff_ffff,
        );
    }
    out.into_bytes()
}

fn json(rng: &mut Rng, target: usize) -> Vec<u8> {
    fn node(rng: &mut Rng, out: &mut String, depth: u32) {
        let label_words = 1 + rng.below(3);
        let _ = write!(
            out,
            "{{\"id\":\"n{}\",\"type\":\"{}\",\"props\":{{\"gap\":{},\"padding\":[{},{}],\"label\":\"{}\",\"visible\":{}}}",
            rng.next() % 1_000_000,
            rng.pick(COMPONENTS),
            rng.below(24),
            rng.below(16),
            rng.below(16),
            sentence(rng, label_words),
            rng.below(5) != 0,
        );
        if depth < 4 {
            out.push_str(",\"children\":[");
            for i in 0..(1 + rng.below(4)) {
                if i > 0 {
                    out.push(',');
                }
                node(rng, out, depth + 1);
            }
            out.push(']');
        }
        out.push('}');
    }
    let mut out = String::from("{\"version\":3,\"screens\":[");
    let mut first = true;
    while out.len() < target {
        if !first {
            out.push(',');
        }
        first = false;
        node(rng, &mut out, 0);
    }
    out.push_str("]}");
    out.into_bytes()
}

fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = Rng(0x5EED_CAFE_F00D_BEEF);
    vec![
        ("html", html(&mut rng, 50_000)),
        ("css", css(&mut rng, 10_000)),
        ("json", json(&mut rng, 100_000)),
    ]
}

/// Runs `f` repeatedly for about `budget` and returns MB/s over `bytes` per run.
fn throughput(bytes: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut runs = 0u32;
    while runs < 3 || start.elapsed() < budget {
        f();
        runs += 1;
    }
    (bytes as f64 * f64::from(runs)) / start.elapsed().as_secs_f64() / 1e6
}

fn print_table(samples: &[(&'static str, Vec<u8>)]) {
    let budget = Duration::from_millis(300);
    println!(
        "\nartifact codec: stored size vs raw, and throughput (MB/s of raw bytes, one core)\n"
    );
    println!(
        "{:<6} {:>8} {:<8} {:>8} {:>7} {:>12} {:>12}",
        "file", "raw B", "codec", "stored B", "ratio", "compress", "decompress"
    );
    for (name, raw) in samples {
        for &(label, compression, level) in CODECS {
            let Ok(stored) = compress(raw, compression, level) else {
                println!("{name:<6} {:>8} {label:<8} compression failed", raw.len());
                continue;
            };
            let max = raw.len() as u64;
            let up = throughput(raw.len(), budget, || {
                black_box(compress(black_box(raw), compression, level).ok());
            });
            let down = throughput(raw.len(), budget, || {
                black_box(decode(black_box(&stored), compression, max).ok());
            });
            println!(
                "{name:<6} {:>8} {label:<8} {:>8} {:>6.2}x {:>12.1} {:>12.1}",
                raw.len(),
                stored.len(),
                raw.len() as f64 / stored.len() as f64,
                up,
                down
            );
        }
    }
    println!();
}

fn benches(c: &mut Criterion, samples: &[(&'static str, Vec<u8>)]) {
    for (name, raw) in samples {
        let mut group = c.benchmark_group(format!("compress/{name}"));
        group.throughput(Throughput::Bytes(raw.len() as u64));
        for &(label, compression, level) in CODECS {
            group.bench_function(BenchmarkId::from_parameter(label), |b| {
                b.iter(|| compress(black_box(raw), compression, level))
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("decompress/{name}"));
        group.throughput(Throughput::Bytes(raw.len() as u64));
        for &(label, compression, level) in CODECS {
            let Ok(stored) = compress(raw, compression, level) else {
                continue;
            };
            group.bench_function(BenchmarkId::from_parameter(label), |b| {
                b.iter(|| decode(black_box(&stored), compression, raw.len() as u64))
            });
        }
        group.finish();
    }
}

fn main() {
    let samples = samples();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and then criterion runs
    // each benchmark once as a smoke test, which needs no table.
    if std::env::args().any(|arg| arg == "--bench") {
        print_table(&samples);
    }
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    benches(&mut criterion, &samples);
    criterion.final_summary();
}
