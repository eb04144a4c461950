//! Runs `sketch_to_app` on a file (or a generated sketch) and writes the artifacts to a folder,
//! to look at them by eye.
//!
//! ```sh
//! cargo run -p cognomega-pipelines --example sketch_to_app --features synth -- sketch.png out/
//! cargo run -p cognomega-pipelines --example sketch_to_app --features synth -- synth:7:1600x1200 out/
//! ```

use futures::executor::block_on;
use std::path::PathBuf;

use cognomega_pipelines::sketch::SketchToApp;
use cognomega_pipelines::synth::Sketch;
use cognomega_pipelines::{JobError, JobType, Progress};

#[derive(Debug)]
struct Print;

#[async_trait::async_trait(?Send)]
impl Progress for Print {
    async fn stage(&self, stage: &str, fraction: f32) -> Result<(), JobError> {
        eprintln!("{:>3.0}% {stage}", fraction * 100.0);
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, out] = args.as_slice() else {
        return Err("usage: sketch_to_app <image | synth:SEED:WxH> <output folder>".into());
    };
    let input = match source.strip_prefix("synth:") {
        Some(spec) => {
            let (seed, size) = spec.split_once(':').ok_or("synth:SEED:WxH")?;
            let (w, h) = size.split_once('x').ok_or("synth:SEED:WxH")?;
            let (png, truth) = Sketch::generate(seed.parse()?, w.parse()?, h.parse()?);
            eprintln!("ground truth: {} elements", truth.len());
            for (i, t) in truth.iter().enumerate() {
                eprintln!("  {i:>2} {:?} {:?} parent {:?}", t.kind, t.rect, t.parent);
            }
            png
        }
        None => std::fs::read(source)?,
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    if source.starts_with("synth:") {
        std::fs::write(out.join("input.png"), &input)?;
    }
    let artifacts = block_on(SketchToApp.run(&input, &serde_json::json!({}), &Print))?;
    for a in artifacts {
        std::fs::write(out.join(&a.name), &a.bytes)?;
        eprintln!(
            "wrote {} ({} bytes, {})",
            a.name,
            a.bytes.len(),
            a.content_type
        );
    }
    Ok(())
}
