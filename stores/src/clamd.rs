//! Virus scanning through ClamAV's daemon (clamd) and its `INSTREAM` command: the bytes go to
//! clamd over TCP or a unix socket in length-prefixed chunks, and clamd answers with a verdict.
//!
//! The verdict is fail-closed: only clamd's literal `stream: OK` is [`ScanVerdict::Clean`]. An
//! `ERROR` reply (such as `INSTREAM size limit exceeded. ERROR` once a stream passes clamd's
//! `StreamMaxLength`) or any reply this module does not recognise is [`ScanError::Daemon`], and a
//! clamd that cannot be reached, or stops answering, is [`ScanError::Unavailable`], which the
//! caller retries later.
//!
//! Why hand-written rather than the `clamav-client` crate: that crate returns clamd's raw reply
//! and its `clean()` reads it as `contains("OK") && !contains("FOUND")`, so any reply that
//! happens to contain `OK` would pass as clean; it writes the whole stream before it reads, so a
//! refusal at `StreamMaxLength` surfaces as a broken pipe rather than clamd's reason; and it has
//! no timeouts, so a wedged clamd hangs the caller. The exact semantics above need the reply read
//! while the stream is still being sent, and the protocol itself is a few dozen lines.
//!
//! ```text
//! client: zINSTREAM\0 <len u32 BE><bytes> … <0u32>      clamd: stream: OK\0
//!                                                              stream: Sig.Name FOUND\0
//!                                                              INSTREAM size limit exceeded. ERROR\0
//! ```

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The default size of each `INSTREAM` chunk: large enough that the 4-byte headers and the
/// per-chunk system calls vanish, small enough to stay well under any `StreamMaxLength`.
pub const DEFAULT_CHUNK_SIZE: usize = 256 * 1024;

/// The longest reply accepted: clamd's replies are one line naming at most one signature, so
/// anything longer is not clamd and must not grow a buffer without bound.
const MAX_REPLY: usize = 4096;

/// How long to wait for clamd's explanation after it closed the connection under our write: it
/// writes the reply before closing, so it is already in our receive buffer or never comes.
const REPLY_AFTER_CLOSE: Duration = Duration::from_secs(2);

/// Where clamd listens: `tcp://host:port` or `unix:/path/to/clamd.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddr {
    /// A TCP address; the host may be a name, an IPv4 address or a bracketed IPv6 address.
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port, never 0.
        port: u16,
    },
    /// A unix domain socket, by absolute path.
    Unix(PathBuf),
}

/// Why a clamd address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClamdAddrError {
    /// Neither `tcp://` nor `unix:`.
    #[error("clamd address `{0}` must start with tcp:// or unix: (e.g. tcp://127.0.0.1:3310, unix:/run/clamav/clamd.ctl)")]
    UnknownScheme(String),
    /// `tcp://` without a host.
    #[error("clamd address `{0}` has no host (expected tcp://host:port)")]
    MissingHost(String),
    /// `tcp://host` without `:port`.
    #[error(
        "clamd address `{0}` has no port (expected tcp://host:port; clamd's usual port is 3310)"
    )]
    MissingPort(String),
    /// The port is not a number in 1..=65535.
    #[error("clamd address `{0}` has an invalid port (expected 1..=65535)")]
    InvalidPort(String),
    /// An IPv6 address that is not bracketed, or brackets around something else.
    #[error(
        "clamd address `{0}` has an invalid IPv6 host (write it in brackets: tcp://[::1]:3310)"
    )]
    InvalidIpv6(String),
    /// A path, query, fragment or user part after `tcp://host:port`.
    #[error("clamd address `{0}` has more than host and port after tcp://")]
    TrailingParts(String),
    /// `unix:` with an empty or relative path.
    #[error(
        "clamd address `{0}` needs an absolute socket path (expected unix:/path/to/clamd.sock)"
    )]
    RelativeSocketPath(String),
}

impl ClamdAddr {
    /// Parses `tcp://host:port` (IPv6 as `tcp://[::1]:3310`) or `unix:/absolute/path`
    /// (`unix:///absolute/path` is accepted too).
    pub fn parse(input: &str) -> Result<Self, ClamdAddrError> {
        if let Some(rest) = input.strip_prefix("tcp://") {
            Self::parse_tcp(input, rest)
        } else if let Some(rest) = input.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(ClamdAddrError::RelativeSocketPath(input.to_owned()));
            }
            Ok(ClamdAddr::Unix(PathBuf::from(path)))
        } else {
            Err(ClamdAddrError::UnknownScheme(input.to_owned()))
        }
    }

    fn parse_tcp(input: &str, rest: &str) -> Result<Self, ClamdAddrError> {
        let error = |make: fn(String) -> ClamdAddrError| make(input.to_owned());
        if rest.contains(['/', '?', '#', '@']) {
            return Err(error(ClamdAddrError::TrailingParts));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| error(ClamdAddrError::InvalidIpv6))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(error(ClamdAddrError::InvalidIpv6));
            }
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| error(ClamdAddrError::MissingPort))?;
            (host, port)
        } else {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| error(ClamdAddrError::MissingPort))?;
            if host.contains(':') {
                return Err(error(ClamdAddrError::InvalidIpv6));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(error(ClamdAddrError::MissingHost));
        }
        if port.is_empty() {
            return Err(error(ClamdAddrError::MissingPort));
        }
        // `u16::from_str` alone would also take `+80`.
        let digits = port.bytes().all(|b| b.is_ascii_digit());
        match port.parse::<u16>() {
            Ok(port) if digits && port != 0 => Ok(ClamdAddr::Tcp {
                host: host.to_owned(),
                port,
            }),
            _ => Err(error(ClamdAddrError::InvalidPort)),
        }
    }
}

impl FromStr for ClamdAddr {
    type Err = ClamdAddrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::parse(input)
    }
}

impl fmt::Display for ClamdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClamdAddr::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            ClamdAddr::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            ClamdAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// What clamd said about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanVerdict {
    /// clamd answered `stream: OK`.
    Clean,
    /// clamd answered `stream: <signature> FOUND`.
    Infected {
        /// The signature's name as clamd reports it (signatures from a custom database end in
        /// `.UNOFFICIAL`).
        signature: String,
    },
}

/// Why a scan has no verdict. Never a reason to treat the bytes as clean.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// clamd could not be reached, closed the connection without a reply, or did not answer in
    /// time. Transient: retry the scan later.
    #[error("clamd is unavailable: {0}")]
    Unavailable(String),
    /// clamd answered with an error (e.g. `INSTREAM size limit exceeded. ERROR`) or with
    /// something that is not a verdict. Scanning the same bytes again gives the same answer.
    #[error("clamd refused the scan: {0}")]
    Daemon(String),
    /// The stream being scanned failed; whether to retry depends on that error.
    #[error("the stream to scan failed: {0}")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ScanError {
    /// Whether the same scan may succeed later: only when clamd was unavailable.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ScanError::Unavailable(_))
    }
}

/// How long each step of a conversation with clamd may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClamdTimeouts {
    /// Establishing the connection.
    pub connect: Duration,
    /// Writing one chunk (clamd not reading for this long means it is stuck).
    pub write: Duration,
    /// From the end of the stream to clamd's verdict: the scan itself. Keep it above clamd's
    /// `MaxScanTime` (120 s by default), so clamd reports its own limit first.
    pub reply: Duration,
}

impl Default for ClamdTimeouts {
    fn default() -> Self {
        ClamdTimeouts {
            connect: Duration::from_secs(5),
            write: Duration::from_secs(30),
            reply: Duration::from_secs(130),
        }
    }
}

/// A clamd client. Cheap to clone; every call opens its own connection, since clamd serves one
/// command per connection unless a session is set up, and sessions gain nothing for uploads.
#[derive(Debug, Clone)]
pub struct Clamd {
    addr: ClamdAddr,
    chunk_size: usize,
    timeouts: ClamdTimeouts,
}

impl Clamd {
    /// A client for the clamd at `addr` with [`DEFAULT_CHUNK_SIZE`] and default timeouts.
    pub fn new(addr: ClamdAddr) -> Self {
        Clamd {
            addr,
            chunk_size: DEFAULT_CHUNK_SIZE,
            timeouts: ClamdTimeouts::default(),
        }
    }

    /// Sets the `INSTREAM` chunk size: the stream's pieces are regrouped into chunks of this
    /// size (the last one shorter). Clamped to 1..=16 MiB, since clamd refuses a single chunk
    /// above its `StreamMaxLength` anyway.
    pub fn with_chunk_size(mut self, chunk_size: usize) -> Self {
        self.chunk_size = chunk_size.clamp(1, 16 * 1024 * 1024);
        self
    }

    /// Sets the timeouts.
    pub fn with_timeouts(mut self, timeouts: ClamdTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Where this client connects.
    pub fn addr(&self) -> &ClamdAddr {
        &self.addr
    }

    /// Checks that clamd answers (`PING` ⇒ `PONG`).
    pub async fn ping(&self) -> Result<(), ScanError> {
        match self.connect().await? {
            Connection::Tcp(conn) => self.ping_on(conn).await,
            #[cfg(unix)]
            Connection::Unix(conn) => self.ping_on(conn).await,
        }
    }

    /// Scans a stream of bytes with `INSTREAM`. The stream is consumed as it is sent, so memory
    /// stays at about one chunk whatever its length.
    pub async fn scan_stream<S, E>(&self, stream: S) -> Result<ScanVerdict, ScanError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        match self.connect().await? {
            Connection::Tcp(conn) => self.scan_on(conn, stream).await,
            #[cfg(unix)]
            Connection::Unix(conn) => self.scan_on(conn, stream).await,
        }
    }

    async fn connect(&self) -> Result<Connection, ScanError> {
        let connecting = async {
            match &self.addr {
                ClamdAddr::Tcp { host, port } => {
                    let conn = TcpStream::connect((host.as_str(), *port)).await?;
                    // The last chunk and the terminator are small; Nagle would hold them back
                    // waiting for an ACK of the previous chunk.
                    conn.set_nodelay(true)?;
                    Ok::<_, std::io::Error>(Connection::Tcp(conn))
                }
                #[cfg(unix)]
                ClamdAddr::Unix(path) => Ok(Connection::Unix(
                    tokio::net::UnixStream::connect(path).await?,
                )),
                #[cfg(not(unix))]
                ClamdAddr::Unix(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "unix sockets are not supported on this platform",
                )),
            }
        };
        match timeout(self.timeouts.connect, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.unavailable(format!("connecting: {e}"))),
            Err(_) => Err(self.unavailable(format!(
                "connecting timed out after {:?}",
                self.timeouts.connect
            ))),
        }
    }

    async fn ping_on<C: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut conn: C,
    ) -> Result<(), ScanError> {
        self.write(&mut conn, Bytes::from_static(b"zPING\0"))
            .await
            .map_err(|e| self.unavailable(format!("sending PING: {e}")))?;
        match self
            .reply_within(self.timeouts.reply, read_reply(&mut conn))
            .await?
        {
            reply if reply == "PONG" => Ok(()),
            reply => Err(ScanError::Daemon(format!(
                "{} answered PING with `{reply}`",
                self.addr
            ))),
        }
    }

    async fn scan_on<C, S, E>(&self, conn: C, stream: S) -> Result<ScanVerdict, ScanError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        S: Stream<Item = Result<Bytes, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(conn);
        // clamd only speaks before the end of the stream to refuse it, and then closes the
        // connection; reading all along catches that refusal instead of a broken pipe.
        let reply = read_reply(&mut reader);
        tokio::pin!(reply);
        let send = self.send_stream(&mut writer, stream);
        tokio::pin!(send);
        // Sending first: once the terminator is out, the reply is the verdict, not a refusal.
        let sent = tokio::select! {
            biased;
            sent = &mut send => sent,
            early = &mut reply => return Err(self.early_reply(early)),
        };
        match sent {
            Ok(()) => {}
            Err(SendError::Source(e)) => return Err(ScanError::Source(e)),
            Err(SendError::Io(e)) => {
                return match timeout(REPLY_AFTER_CLOSE, &mut reply).await {
                    Ok(Ok(Some(text))) => Err(self.early_reply(Ok(Some(text)))),
                    _ => Err(self.unavailable(format!("sending the stream: {e}"))),
                };
            }
        }
        let text = self.reply_within(self.timeouts.reply, reply).await?;
        parse_verdict(&text)
    }

    async fn send_stream<W, S, E>(&self, writer: &mut W, stream: S) -> Result<(), SendError>
    where
        W: AsyncWrite + Unpin,
        S: Stream<Item = Result<Bytes, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.write(writer, Bytes::from_static(b"zINSTREAM\0"))
            .await?;
        let chunk_size = self.chunk_size;
        let mut pending = BytesMut::new();
        tokio::pin!(stream);
        while let Some(item) = stream.next().await {
            let mut bytes = item.map_err(|e| SendError::Source(Box::new(e)))?;
            if !pending.is_empty() {
                let take = (chunk_size - pending.len()).min(bytes.len());
                pending.extend_from_slice(&bytes.split_to(take));
                if pending.len() < chunk_size {
                    continue;
                }
                self.write_chunk(writer, pending.split().freeze()).await?;
            }
            // Whole chunks go out without a copy; only a remainder is kept back.
            while bytes.len() >= chunk_size {
                self.write_chunk(writer, bytes.split_to(chunk_size)).await?;
            }
            pending.extend_from_slice(&bytes);
        }
        if !pending.is_empty() {
            self.write_chunk(writer, pending.freeze()).await?;
        }
        self.write(writer, Bytes::from_static(&[0, 0, 0, 0]))
            .await?;
        Ok(())
    }

    async fn write_chunk<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        chunk: Bytes,
    ) -> std::io::Result<()> {
        // Chunks are at most 16 MiB (see `with_chunk_size`), so the length always fits.
        let len = u32::try_from(chunk.len()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "chunk longer than u32::MAX",
            )
        })?;
        let header = Bytes::copy_from_slice(&len.to_be_bytes());
        // One buffer chain, so header and data leave in one vectored write.
        let mut buf = header.chain(chunk);
        timeout(self.timeouts.write, writer.write_all_buf(&mut buf))
            .await
            .map_err(|_| self.write_timed_out())??;
        Ok(())
    }

    async fn write<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        mut bytes: Bytes,
    ) -> std::io::Result<()> {
        timeout(self.timeouts.write, writer.write_all_buf(&mut bytes))
            .await
            .map_err(|_| self.write_timed_out())??;
        Ok(())
    }

    fn write_timed_out(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("clamd read nothing for {:?}", self.timeouts.write),
        )
    }

    async fn reply_within(
        &self,
        limit: Duration,
        reply: impl std::future::Future<Output = std::io::Result<Option<String>>>,
    ) -> Result<String, ScanError> {
        match timeout(limit, reply).await {
            Ok(Ok(Some(text))) => Ok(text),
            Ok(Ok(None)) => Err(self.unavailable("closed the connection without a reply")),
            Ok(Err(e)) => Err(self.unavailable(format!("reading the reply: {e}"))),
            Err(_) => Err(self.unavailable(format!("no reply within {limit:?}"))),
        }
    }

    /// A reply that came before the stream was complete: clamd refusing it, or a broken daemon.
    fn early_reply(&self, reply: std::io::Result<Option<String>>) -> ScanError {
        match reply {
            Ok(Some(text)) => match parse_verdict(&text) {
                Err(refusal) => refusal,
                Ok(_) => ScanError::Daemon(format!(
                    "{} answered `{text}` before the stream was complete",
                    self.addr
                )),
            },
            Ok(None) => self.unavailable("closed the connection in the middle of the stream"),
            Err(e) => self.unavailable(format!("reading during the stream: {e}")),
        }
    }

    fn unavailable(&self, what: impl fmt::Display) -> ScanError {
        ScanError::Unavailable(format!("{}: {what}", self.addr))
    }
}

enum Connection {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

enum SendError {
    Io(std::io::Error),
    Source(Box<dyn std::error::Error + Send + Sync>),
}

impl From<std::io::Error> for SendError {
    fn from(e: std::io::Error) -> Self {
        SendError::Io(e)
    }
}

/// Reads one NUL-terminated reply (the `z` command form). `None` when clamd closed the
/// connection without writing anything.
async fn read_reply<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Option<String>> {
    let mut reply = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            // clamd always ends a reply with NUL; a partial line is still its words.
            return Ok((!reply.is_empty()).then(|| String::from_utf8_lossy(&reply).into_owned()));
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == 0) {
            reply.extend_from_slice(&buf[..end]);
            return Ok(Some(String::from_utf8_lossy(&reply).into_owned()));
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.len() > MAX_REPLY {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("reply longer than {MAX_REPLY} bytes without a terminator"),
            ));
        }
    }
}

/// Turns clamd's reply into a verdict; everything but `stream: OK` and `stream: NAME FOUND` is
/// an error, so no unexpected reply can ever read as clean.
fn parse_verdict(reply: &str) -> Result<ScanVerdict, ScanError> {
    let reply = reply.trim_end_matches(['\n', '\r']);
    if reply.ends_with("ERROR") {
        return Err(ScanError::Daemon(reply.to_owned()));
    }
    match reply.strip_prefix("stream: ") {
        Some("OK") => Ok(ScanVerdict::Clean),
        Some(rest) => match rest.strip_suffix(" FOUND") {
            Some(signature) if !signature.trim().is_empty() => Ok(ScanVerdict::Infected {
                signature: signature.to_owned(),
            }),
            _ => Err(ScanError::Daemon(format!("unexpected reply `{reply}`"))),
        },
        None => Err(ScanError::Daemon(format!("unexpected reply `{reply}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_addresses() {
        let cases = [
            ("tcp://127.0.0.1:3310", "127.0.0.1", 3310),
            ("tcp://clamd:3310", "clamd", 3310),
            ("tcp://[::1]:3311", "::1", 3311),
        ];
        for (input, host, port) in cases {
            let addr = ClamdAddr::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                addr,
                ClamdAddr::Tcp {
                    host: host.into(),
                    port
                }
            );
            assert_eq!(addr.to_string(), input);
        }
        let unix = ClamdAddr::parse("unix:/run/clamav/clamd.ctl").expect("unix");
        assert_eq!(unix, ClamdAddr::Unix("/run/clamav/clamd.ctl".into()));
        assert_eq!(unix.to_string(), "unix:/run/clamav/clamd.ctl");
        assert_eq!(
            ClamdAddr::parse("unix:///tmp/c.sock").expect("unix:///"),
            ClamdAddr::Unix("/tmp/c.sock".into())
        );
    }

    #[test]
    fn refuses_bad_addresses_precisely() {
        use ClamdAddrError as E;
        type Expected = fn(String) -> E;
        let cases: [(&str, Expected); 14] = [
            ("127.0.0.1:3310", E::UnknownScheme),
            ("http://127.0.0.1:3310", E::UnknownScheme),
            ("tcp://:3310", E::MissingHost),
            ("tcp://127.0.0.1", E::MissingPort),
            ("tcp://127.0.0.1:", E::MissingPort),
            ("tcp://127.0.0.1:0", E::InvalidPort),
            ("tcp://127.0.0.1:65536", E::InvalidPort),
            ("tcp://127.0.0.1:+80", E::InvalidPort),
            ("tcp://127.0.0.1:x", E::InvalidPort),
            ("tcp://::1:3310", E::InvalidIpv6),
            ("tcp://[nope]:3310", E::InvalidIpv6),
            ("tcp://127.0.0.1:3310/scan", E::TrailingParts),
            ("unix:clamd.sock", E::RelativeSocketPath),
            ("unix:", E::RelativeSocketPath),
        ];
        for (input, expected) in cases {
            assert_eq!(
                ClamdAddr::parse(input),
                Err(expected(input.into())),
                "{input}"
            );
        }
    }

    #[test]
    fn only_ok_is_clean() {
        assert_eq!(parse_verdict("stream: OK").ok(), Some(ScanVerdict::Clean));
        assert_eq!(
            parse_verdict("stream: Eicar-Signature FOUND").ok(),
            Some(ScanVerdict::Infected {
                signature: "Eicar-Signature".into()
            })
        );
        for reply in [
            "INSTREAM size limit exceeded. ERROR",
            "stream: Can't allocate memory ERROR",
            "stream: OK ERROR",
            "stream:  FOUND",
            "stream: ok",
            "OK",
            "UNKNOWN COMMAND",
            "",
        ] {
            assert!(
                matches!(parse_verdict(reply), Err(ScanError::Daemon(_))),
                "{reply:?}"
            );
        }
    }
}
