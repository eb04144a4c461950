//! The edge as the host of the shared write workflows (`cognomega_workflows::submit`,
//! `cognomega_workflows::accept`, `cognomega_workflows::billing`) and of the job workflow
//! (`cognomega_workflows::jobs`): the invocation's connection (a transaction stages its
//! messages in the outbox), R2, the balance in KV; a job's pipeline runs inside the invocation,
//! its progress written stage by stage.

use cognomega_core::objects::ObjectStore;
use cognomega_core::sql::{Executor, Outbound, SqlError, Transaction};
use cognomega_pipelines::{Artifact, JobError};
use cognomega_workflows::ports::{JobHost, PipelineRun, WriteHost};
use worker::Env;

use crate::sql::{Pg, PgTx};

/// One write request's (or one job delivery's) host.
pub struct Writes<'a> {
    env: &'a Env,
    db: &'a tokio_postgres::Client,
    objects: crate::r2::Objects,
    /// The outbox batch of the write's transaction.
    batch: std::cell::RefCell<Option<String>>,
}

impl<'a> Writes<'a> {
    pub fn new(env: &'a Env, db: &'a tokio_postgres::Client) -> Self {
        Self {
            env,
            db,
            objects: crate::r2::Objects::of(env),
            batch: std::cell::RefCell::new(None),
        }
    }

    /// The invocation's connection.
    pub fn client(&self) -> &'a tokio_postgres::Client {
        self.db
    }

    /// The Worker's environment.
    pub fn env(&self) -> &'a Env {
        self.env
    }

    /// Sends what the write's transaction staged, right after its commit (the drain); a failed
    /// send is the relay cron's.
    pub async fn relay(&self, what: &str) {
        let batch = self.batch.borrow_mut().take();
        if let Some(batch) = batch {
            if let Err(e) = crate::outbox::relay_on(self.db, self.env, Some(&batch)).await {
                worker::console_warn!("{what}: relay: {e}; the relay cron sends it");
            }
        }
    }
}

#[async_trait::async_trait(?Send)]
impl WriteHost for Writes<'_> {
    fn objects(&self) -> &dyn ObjectStore {
        &self.objects
    }

    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(Pg(self.db))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError> {
        let tx = PgTx::begin(self.db).await?;
        *self.batch.borrow_mut() = Some(tx.batch.clone());
        Ok(Box::new(tx))
    }

    async fn send(&self, messages: Vec<Outbound<'_>>) -> Result<(), String> {
        crate::outbox::send_now(self.env, &messages).await
    }

    /// Cloudflare Queues carry at most 128 KB per message.
    fn message_budget(&self) -> Option<usize> {
        Some(96 * 1024)
    }

    async fn balance(&self, tenant: &str) -> Result<i64, String> {
        crate::billing::balance(self.env, tenant)
            .await
            .map(|b| b.balance)
            .map_err(|e| e.message)
    }

    fn now_ms(&self) -> i64 {
        worker::Date::now().as_millis() as i64
    }

    fn fresh_id(&self) -> String {
        uuid::Uuid::now_v7().to_string()
    }
}

#[async_trait::async_trait(?Send)]
impl JobHost for Writes<'_> {
    fn objects(&self) -> &dyn ObjectStore {
        WriteHost::objects(self)
    }

    fn db(&self) -> Box<dyn Executor + '_> {
        WriteHost::db(self)
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError> {
        WriteHost::begin(self).await
    }

    fn now_ms(&self) -> i64 {
        WriteHost::now_ms(self)
    }

    async fn run(&self, run: PipelineRun) -> Result<Vec<Artifact>, JobError> {
        run.execute(Pg(self.db), || worker::Date::now().as_millis() as i64)
            .await
    }
}
