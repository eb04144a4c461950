//! `cognomega fake-provider`: the loopback stand-in model provider the tests and `bench ask`
//! use, as a process of its own — for trying `/api/si/ask` without a provider account, and for
//! the OpenAPI fuzz run (`ops/schemathesis.sh`).

use cognomega_providers::fake::FakeProvider;

use super::shutdown_signal;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    let fake = FakeProvider::start().await?;
    // One line a script can parse, then serve until SIGINT/SIGTERM.
    println!(
        "fake provider listening: OPENAI_BASE_URL={} CF_AI_BASE_URL={}",
        fake.openai_base(),
        fake.cfai_base()
    );
    eprintln!(
        "answers any model at once (OpenAI chat completions and Workers AI REST, JSON or SSE); \
         set OPENAI_API_KEY to anything and OPENAI_BASE_URL as above for `cognomega serve`"
    );
    shutdown_signal().cancelled().await;
    Ok(())
}
