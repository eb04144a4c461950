//! `sketch_to_app` on a generated 1600×1200 sketch (target: p50 ≤ 150 ms per job, one core,
//! release). Also times each stage's share by running the job with a progress sink that
//! timestamps stage boundaries, and `image_thumbnail` on the same image.
//!
//! ```sh
//! cargo bench -p cognomega-pipelines
//! ```

use futures::executor::block_on;
use std::cell::RefCell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use cognomega_pipelines::sketch::SketchToApp;
use cognomega_pipelines::synth::Sketch;
use cognomega_pipelines::thumbnail::ImageThumbnail;
use cognomega_pipelines::{JobError, JobType, Progress};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

#[derive(Debug)]
struct Quiet;

#[async_trait::async_trait(?Send)]
impl Progress for Quiet {
    async fn stage(&self, _stage: &str, _fraction: f32) -> Result<(), JobError> {
        Ok(())
    }
}

/// Remembers when each stage began.
#[derive(Debug, Default)]
struct StageClock {
    marks: RefCell<Vec<(String, Instant)>>,
}

#[async_trait::async_trait(?Send)]
impl Progress for StageClock {
    async fn stage(&self, stage: &str, _fraction: f32) -> Result<(), JobError> {
        self.marks
            .borrow_mut()
            .push((stage.to_owned(), Instant::now()));
        Ok(())
    }
}

fn sketch() -> Vec<u8> {
    Sketch::generate(7, 1600, 1200).0
}

/// Percentiles over plain repeated runs, and the median time of each stage: figures that
/// criterion's summary does not print.
fn percentiles(input: &[u8]) {
    const RUNS: usize = 40;
    let mut totals = Vec::with_capacity(RUNS);
    let mut stages: Vec<(String, Vec<Duration>)> = Vec::new();
    for _ in 0..RUNS {
        let clock = StageClock::default();
        let start = Instant::now();
        let artifacts = block_on(SketchToApp.run(input, &json!({}), &clock));
        let end = Instant::now();
        black_box(artifacts.ok());
        totals.push(end - start);
        let marks = clock.marks.into_inner();
        for (i, (name, at)) in marks.iter().enumerate() {
            let until = marks.get(i + 1).map_or(end, |m| m.1);
            match stages.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(until - *at),
                None => stages.push((name.clone(), vec![until - *at])),
            }
        }
    }
    let pct = |v: &mut Vec<Duration>, p: usize| {
        v.sort();
        v[(v.len() - 1) * p / 100]
    };
    println!(
        "sketch_to_app 1600x1200: p50 {:.1} ms, p90 {:.1} ms, min {:.1} ms over {RUNS} runs",
        ms(pct(&mut totals, 50)),
        ms(pct(&mut totals, 90)),
        ms(pct(&mut totals, 0)),
    );
    for (name, mut v) in stages {
        println!("  {name:<10} p50 {:.1} ms", ms(pct(&mut v, 50)));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bench(c: &mut Criterion) {
    let input = sketch();
    percentiles(&input);
    c.bench_function("sketch_to_app 1600x1200", |b| {
        b.iter(|| block_on(SketchToApp.run(black_box(&input), &json!({}), &Quiet)))
    });
    let params = json!({"sizes": [64, 256], "format": "webp"});
    c.bench_function("image_thumbnail 1600x1200 -> 64,256 webp", |b| {
        b.iter(|| block_on(ImageThumbnail.run(black_box(&input), &params, &Quiet)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(8));
    targets = bench
}
criterion_main!(benches);
