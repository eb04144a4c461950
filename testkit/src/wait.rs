//! Polling for conditions that become true asynchronously.

use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep, Instant};

/// First pause between polls; doubled up to [`MAX_POLL`] so a quick condition is seen quickly
/// and a slow one does not hammer the database.
const FIRST_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(200);

/// Polls `check` until it returns true; fails once `timeout` has passed.
///
/// The condition is checked once more at the deadline, so a loaded machine that gets to poll
/// only late still passes when the condition holds by then.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, || {
        let fut = check();
        async move { Ok(fut.await.then_some(())) }
    })
    .await
}

/// Polls `probe` until it yields `Some(value)` and returns the value; an error from the probe
/// ends the wait at once (a broken query should fail the test, not time it out), and so does
/// `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_POLL;
    let mut polls = 0u32;
    loop {
        polls += 1;
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            anyhow::bail!("condition still not met after {timeout:?} ({polls} checks)");
        }
        sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_once_true() {
        let calls = AtomicU32::new(0);
        let res = wait_until(Duration::from_secs(5), || async {
            calls.fetch_add(1, Ordering::SeqCst) >= 2
        })
        .await;
        assert!(res.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn times_out_with_a_message() {
        let err = wait_until(Duration::from_millis(50), || async { false })
            .await
            .expect_err("never true");
        assert!(err.to_string().contains("not met after"), "{err}");
    }

    #[tokio::test]
    async fn probe_errors_end_the_wait() {
        let err = wait_for::<(), _, _>(Duration::from_secs(30), || async {
            Err(anyhow::anyhow!("query failed"))
        })
        .await
        .expect_err("probe fails");
        assert_eq!(err.to_string(), "query failed");
    }

    #[tokio::test]
    async fn yields_the_value() {
        let calls = AtomicU32::new(0);
        let got = wait_for(Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Ok((n == 1).then_some(n))
        })
        .await
        .expect("found");
        assert_eq!(got, 1);
    }
}
