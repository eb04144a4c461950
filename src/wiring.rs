//! Which consumers a process runs. Every queue's handler is registered here, so `serve` and
//! `worker` consume exactly the same set.

use std::sync::Arc;

use cognomega_consumers::av_scan::{self, Scanner};
use cognomega_consumers::etl::{self, EtlHandler, Exporter};
use cognomega_consumers::jobs::{self, JobRunner};
use cognomega_consumers::lifecycle::{self, SweepConsumer, Sweeper};
use cognomega_consumers::settlement::SettlementWriter;
use cognomega_consumers::usage_writer::UsageWriter;
use cognomega_consumers::{maintenance, probe, settlement, usage_writer, Runtime, RuntimeOptions};
use cognomega_core::billing::BillingConfig;
use cognomega_pipelines::Registry;
use cognomega_r2_lifecycle::codec::CodecPolicy;
use cognomega_r2_lifecycle::policy::Policy;
use cognomega_stores::clamd::Clamd;
use cognomega_stores::kv::BalanceCache;
use cognomega_stores::objects::Objects;
use cognomega_stores::Database;

/// A runtime with every queue's consumer registered. `cache` is the balance cache of an
/// in-process API, invalidated as settlements land; `lifecycle` is the policy the `lifecycle`
/// queue's sweeps enforce; `job_types` the job types run here
/// ([`cognomega_producers::job_types`]).
#[allow(clippy::too_many_arguments)]
pub fn runtime(
    db: &Database,
    job_types: &Registry,
    options: RuntimeOptions,
    billing: &BillingConfig,
    cache: Option<BalanceCache>,
    objects: &Objects,
    clamd: Option<&Clamd>,
    lifecycle: &Arc<Policy>,
) -> anyhow::Result<Runtime> {
    let mut rt = Runtime::new(db.queue(), options);
    rt.consume(
        probe::queue(),
        probe::settings(),
        probe::ProbeHandler::new(db.clone()),
    )?;
    rt.consume(
        maintenance::queue(),
        maintenance::settings(),
        maintenance::Maintenance::new(db.clone()),
    )?;
    rt.consume(
        usage_writer::queue(),
        usage_writer::settings(),
        UsageWriter::new(db.clone(), billing.prices.clone()),
    )?;
    rt.consume(
        settlement::queue(),
        settlement::settings(),
        SettlementWriter::new(db.clone(), billing.guest_floor, cache),
    )?;
    let prices = Arc::new(billing.prices.clone());
    for job_type in job_types.iter() {
        let runner = JobRunner::new(
            db.clone(),
            objects.clone(),
            job_type.clone(),
            CodecPolicy::default(),
            prices.clone(),
        );
        rt.consume(
            jobs::queue(job_type.name()),
            jobs::settings(job_type.name()),
            runner,
        )?;
    }
    rt.consume(
        lifecycle::queue(),
        lifecycle::settings(),
        SweepConsumer::new(Sweeper::new(db.clone(), objects.clone(), lifecycle.clone())),
    )?;
    rt.consume(
        etl::queue(),
        etl::settings(),
        EtlHandler::new(Exporter::new(db.clone(), objects.clone())),
    )?;
    if let Some(clamd) = clamd {
        rt.consume(
            av_scan::queue(),
            av_scan::settings(),
            Scanner::new(db.clone(), objects.clone(), clamd.clone()),
        )?;
    }
    Ok(rt)
}
