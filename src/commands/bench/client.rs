//! The load generator's HTTP side: bare hyper HTTP/1 connections (keep-alive, no pool, no
//! middleware), one task per connection, so the client costs a few microseconds per request.
//! Plus the few API calls the benchmarks make around their load (guests, balances, health).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// Longest any single request may take before the benchmark calls it a failure.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the API is: a resolved loopback (or other) address and its `Host` header.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) base_url: String,
    addr: SocketAddr,
    host: HeaderValue,
}

impl Target {
    /// Parses `http://HOST:PORT` (a trailing `/` is fine; https and paths are not).
    pub(super) async fn parse(url: &str) -> anyhow::Result<Self> {
        let trimmed = url.trim().trim_end_matches('/');
        let Some(authority) = trimmed.strip_prefix("http://") else {
            bail!("--url {url:?}: use http://HOST:PORT (plain HTTP; https is not supported)");
        };
        if authority.is_empty() || authority.contains('/') {
            bail!("--url {url:?}: use http://HOST:PORT without a path");
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(with_port.as_str())
            .await
            .with_context(|| format!("--url {url:?}: cannot resolve {with_port}"))?
            .next()
            .with_context(|| format!("--url {url:?}: {with_port} resolves to no address"))?;
        let host = HeaderValue::from_str(authority)
            .with_context(|| format!("--url {url:?}: not a valid host"))?;
        Ok(Self {
            base_url: format!("http://{authority}"),
            addr,
            host,
        })
    }

    /// Opens one keep-alive connection.
    pub(super) async fn connect(&self) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to {}; is the server running?",
                    self.base_url
                )
            })?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {} failed", self.base_url))?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes the connection; a request
            // in flight then reports the error itself.
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            host: self.host.clone(),
        })
    }

    /// Opens `n` connections.
    pub(super) async fn connect_many(&self, n: usize) -> anyhow::Result<Vec<Conn>> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(self.connect().await?);
        }
        Ok(conns)
    }
}

/// One keep-alive HTTP/1 connection; requests on it go one after the other.
#[derive(Debug)]
pub(super) struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

/// A response: status and the whole body.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) body: Bytes,
    /// The `Server-Timing` header, when the server sent one.
    pub(super) server_timing: Option<String>,
}

impl Reply {
    /// The body for an error message: at most 300 characters.
    pub(super) fn snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(300).collect()
    }
}

impl Conn {
    /// Sends a request and reads the whole response.
    pub(super) async fn send(
        &mut self,
        method: Method,
        path: &str,
        auth: Option<&HeaderValue>,
        body: Option<Bytes>,
    ) -> anyhow::Result<Reply> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        if let Some(auth) = auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let request = builder.body(Full::new(body.unwrap_or_default()))?;
        let exchange = async {
            self.sender
                .ready()
                .await
                .context("the server closed the connection")?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let server_timing = response
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(Reply {
                status,
                body,
                server_timing,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{path}: no response within {REQUEST_TIMEOUT:?}"))?
    }

    /// `GET path`.
    pub(super) async fn get(
        &mut self,
        path: &str,
        auth: Option<&HeaderValue>,
    ) -> anyhow::Result<Reply> {
        self.send(Method::GET, path, auth, None).await
    }
}

/// A guest created through `POST /auth/guest`.
#[derive(Debug, Clone)]
pub(super) struct Guest {
    pub(super) tenant_id: String,
    /// `Bearer <token>`, ready to send.
    pub(super) auth: HeaderValue,
}

#[derive(Deserialize)]
struct GuestReply {
    token: String,
    tenant_id: String,
}

#[derive(Deserialize)]
pub(super) struct CreditsReply {
    pub(super) balance: i64,
}

#[derive(Deserialize)]
struct HealthReply {
    backend: String,
}

/// Creates a guest.
pub(super) async fn create_guest(conn: &mut Conn) -> anyhow::Result<Guest> {
    guest_from(conn, Bytes::new()).await
}

/// Creates a guest with an email: guest issuance is rate-limited per email, or per client
/// address without one, so a benchmark that needs many guests gives each its own.
pub(super) async fn create_guest_with_email(conn: &mut Conn, email: &str) -> anyhow::Result<Guest> {
    let body = serde_json::to_vec(&serde_json::json!({ "email": email }))?;
    guest_from(conn, Bytes::from(body)).await
}

async fn guest_from(conn: &mut Conn, body: Bytes) -> anyhow::Result<Guest> {
    let reply = conn
        .send(Method::POST, "/auth/guest", None, Some(body))
        .await?;
    if reply.status != StatusCode::OK {
        bail!(
            "POST /auth/guest answered {}: {}",
            reply.status,
            reply.snippet()
        );
    }
    let guest: GuestReply = serde_json::from_slice(&reply.body)
        .with_context(|| format!("POST /auth/guest: unexpected body {}", reply.snippet()))?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", guest.token))
        .context("POST /auth/guest returned a token that is not a valid header value")?;
    Ok(Guest {
        tenant_id: guest.tenant_id,
        auth,
    })
}

/// `GET /credits`: the guest's balance.
pub(super) async fn balance(conn: &mut Conn, guest: &Guest) -> anyhow::Result<i64> {
    let reply = conn.get("/credits", Some(&guest.auth)).await?;
    if reply.status != StatusCode::OK {
        bail!(
            "GET /credits for tenant {} answered {}: {}",
            guest.tenant_id,
            reply.status,
            reply.snippet()
        );
    }
    let credits: CreditsReply = serde_json::from_slice(&reply.body)
        .with_context(|| format!("GET /credits: unexpected body {}", reply.snippet()))?;
    Ok(credits.balance)
}

/// Waits until every guest's balance is `expected` (the grant has settled).
pub(super) async fn wait_for_balances(
    conn: &mut Conn,
    guests: &[Guest],
    expected: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for guest in guests {
        loop {
            let b = balance(conn, guest).await?;
            if b == expected {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "tenant {}'s balance is {b}, not the expected guest grant of {expected}, after \
                     {timeout:?}: are the server's consumers running (not --no-consumers, or \
                     `cognomega worker` processes)? Against a server with another \
                     --guest-grant, pass the same --guest-grant here",
                    guest.tenant_id
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// `GET /healthz`: the server's backend name.
pub(super) async fn health(conn: &mut Conn) -> anyhow::Result<String> {
    let reply = conn.get("/healthz", None).await?;
    if reply.status != StatusCode::OK {
        bail!(
            "GET /healthz answered {}: {}; is the database reachable?",
            reply.status,
            reply.snippet()
        );
    }
    let health: HealthReply = serde_json::from_slice(&reply.body)
        .with_context(|| format!("GET /healthz: unexpected body {}", reply.snippet()))?;
    Ok(health.backend)
}

/// Latency of sequential idle `GET /healthz` requests on one connection, in ms: `(p50, p99)`.
/// The floor under every figure the benchmarks print: loopback, HTTP, the router and a
/// `SELECT 1`.
pub(super) async fn loopback_floor(conn: &mut Conn, samples: usize) -> anyhow::Result<(f64, f64)> {
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let reply = conn.get("/healthz", None).await?;
        lat.push(started.elapsed().as_secs_f64() * 1e3);
        if reply.status != StatusCode::OK {
            bail!(
                "GET /healthz answered {}: {}",
                reply.status,
                reply.snippet()
            );
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok((super::percentile(&lat, 0.50), super::percentile(&lat, 0.99)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls() {
        let t = Target::parse("http://127.0.0.1:8787/").await;
        assert!(t.is_ok_and(|t| t.base_url == "http://127.0.0.1:8787"));
        let t = Target::parse("http://localhost:9").await;
        assert!(t.is_ok_and(|t| t.addr.port() == 9));
        assert!(Target::parse("https://127.0.0.1:8787").await.is_err());
        assert!(Target::parse("127.0.0.1:8787").await.is_err());
        assert!(Target::parse("http://127.0.0.1:8787/api").await.is_err());
    }
}
