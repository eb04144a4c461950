//! The whole platform (HTTP API + consumers) on a loopback port 0, over a throwaway database.

use std::time::Duration;

use cognomega::app::Platform;
use cognomega::config::{ServeConfig, StorageConfig};
use cognomega_consumers::RuntimeOptions;

use cognomega_core::queue::QueueName;
use cognomega_producers::{ApiConfig, Secret};
use cognomega_stores::objects::ObjectStoreUrl;
use serde_json::Value;

use crate::db::{Backend, TestDb};

/// The admin key of every test app.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

/// A guest created through `POST /auth/guest`.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Bearer token.
    pub token: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its user.
    pub user_id: String,
}

/// A running test app: its database, its base URL and an HTTP client.
#[derive(Debug)]
pub struct TestApp {
    /// The database the app uses (dropped after the app stops).
    pub tdb: TestDb,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// A client with a short timeout.
    pub client: reqwest::Client,
    platform: Option<Platform>,
    clamd: Option<cognomega_stores::clamd::Clamd>,
    objects_url: ObjectStoreUrl,
}

impl TestApp {
    /// Starts the platform with consumers in-process (the embedded shape) on `backend`.
    pub async fn spawn(backend: Backend) -> anyhow::Result<Self> {
        Self::spawn_with(backend, true).await
    }

    /// Starts the platform, with or without in-process consumers.
    pub async fn spawn_with(backend: Backend, consumers: bool) -> anyhow::Result<Self> {
        Self::spawn_custom(backend, consumers, None, |_| {}).await
    }

    /// Starts the platform with a changed API configuration and, optionally, a clamd.
    pub async fn spawn_custom(
        backend: Backend,
        consumers: bool,
        clamd: Option<cognomega_stores::clamd::Clamd>,
        edit: impl FnOnce(&mut ApiConfig),
    ) -> anyhow::Result<Self> {
        Self::spawn_on(backend, None, consumers, clamd, edit).await
    }

    /// Starts the platform with its objects in `objects` (a bucket of [`crate::s3()`], say)
    /// instead of the data directory's folder.
    pub async fn spawn_on(
        backend: Backend,
        objects: Option<ObjectStoreUrl>,
        consumers: bool,
        clamd: Option<cognomega_stores::clamd::Clamd>,
        edit: impl FnOnce(&mut ApiConfig),
    ) -> anyhow::Result<Self> {
        let tdb = TestDb::new(backend).await?;
        let mut storage = StorageConfig::resolve(tdb.data_dir(), Some(tdb.url().expose()))?;
        if let Some(objects) = objects {
            storage.objects_url = objects;
        }
        let mut api = ApiConfig::with_admin_key(Secret::new(ADMIN_KEY));
        api.uploads.scanning = clamd.is_some();
        edit(&mut api);
        let config = ServeConfig {
            storage,
            listen: ([127, 0, 0, 1], 0).into(),
            consumers,
            api,
            clamd,
            schedules: None,
            lifecycle: std::sync::Arc::default(),
        };
        let options = RuntimeOptions {
            poll_interval: Duration::from_millis(50),
            shutdown_grace: Duration::from_secs(5),
        };
        let platform = Platform::start(&config, options).await?;
        let base_url = platform.base_url();
        cognomega_core::tls::install();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            tdb,
            base_url,
            client,
            platform: Some(platform),
            clamd: config.clamd.clone(),
            objects_url: config.storage.objects_url.clone(),
        })
    }

    /// The absolute URL of `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A handle to the app's object store.
    pub fn objects(&self) -> anyhow::Result<cognomega_stores::objects::Objects> {
        Ok(cognomega_stores::objects::Objects::open(&self.objects_url)?)
    }

    /// Creates a guest (and waits for nothing: the grant settles asynchronously).
    pub async fn guest(&self) -> anyhow::Result<Guest> {
        let resp = self.client.post(self.url("/auth/guest")).send().await?;
        anyhow::ensure!(resp.status() == 200, "POST /auth/guest: {}", resp.status());
        let body: Value = resp.json().await?;
        let field = |name: &str| {
            body[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("{name} missing in {body}"))
        };
        Ok(Guest {
            token: field("token")?,
            tenant_id: field("tenant_id")?,
            user_id: field("user_id")?,
        })
    }

    /// `GET /credits` for a guest: its balance.
    pub async fn balance(&self, guest: &Guest) -> anyhow::Result<i64> {
        let resp = self
            .client
            .get(self.url("/credits"))
            .bearer_auth(&guest.token)
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 200, "GET /credits: {}", resp.status());
        let body: Value = resp.json().await?;
        body["balance"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("no balance in {body}"))
    }

    /// The running platform.
    #[must_use]
    pub fn platform(&self) -> &Platform {
        self.platform
            .as_ref()
            .unwrap_or_else(|| unreachable!("platform is present until stop"))
    }

    /// Waits until every consumed queue is idle (nothing ready, in flight or delayed).
    pub async fn wait_idle(&self, timeout: Duration) -> anyhow::Result<()> {
        let Some(rt) = self.platform().consumers() else {
            anyhow::bail!("this app runs no consumers");
        };
        anyhow::ensure!(
            rt.wait_idle(timeout).await,
            "queues still busy after {timeout:?}"
        );
        Ok(())
    }

    /// Runs the consumers of `queues` (all of them when empty) in a runtime of their own until
    /// every one of those queues is idle, then stops it: for apps spawned without consumers,
    /// to move a pipeline forward one stage at a time.
    pub async fn drain(&self, queues: &[&str]) -> anyhow::Result<()> {
        let objects = self.objects()?;
        let options = RuntimeOptions {
            poll_interval: Duration::from_millis(20),
            shutdown_grace: Duration::from_secs(5),
        };
        let billing = cognomega_core::billing::BillingConfig::default();
        let mut rt = cognomega::wiring::runtime(
            self.tdb.db(),
            &self.platform().state().job_types,
            options,
            &billing,
            Some(self.platform().state().balances.clone()),
            &objects,
            self.clamd.as_ref(),
            &std::sync::Arc::default(),
        )?;
        if !queues.is_empty() {
            let names: Vec<QueueName> = queues.iter().map(|q| crate::q(q)).collect();
            rt.retain_queues(&names);
        }
        let running = rt.start().await?;
        let idle = running.wait_idle(Duration::from_secs(120)).await;
        running.stop().await;
        anyhow::ensure!(idle, "queues {queues:?} still busy after 120 s");
        Ok(())
    }

    /// Stops the platform gracefully.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(p) = self.platform.take() {
            p.stop(Duration::from_secs(5)).await?;
        }
        Ok(())
    }
}
