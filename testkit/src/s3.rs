//! A real S3-compatible server for tests: one `s3s-fs` process per test binary, on a free
//! loopback port, over a throwaway folder; each test gets its own bucket. (The object-store
//! conformance suite in `stores/tests/common` has its own copy: `stores` cannot depend on this
//! crate without a dependency cycle.)
//!
//! The process outlives no test run: it is started through a tiny shell "lifeline" that reads
//! this process's end of a pipe and kills the server (and removes its folder) when the pipe
//! closes, which the kernel does when the test binary exits, however it exits.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cognomega_stores::objects::{ObjectStoreUrl, S3Credentials};

/// The pinned server version (newer releases need a newer Rust); `ops/s3.sh` installs it.
const S3S_VERSION: &str = "0.14.1";
const ACCESS_KEY: &str = "cognomega-test";
const SECRET_KEY: &str = "cognomega-test-secret";
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The running server of this test binary.
#[derive(Debug)]
pub struct S3Server {
    endpoint: String,
    root: PathBuf,
    _process: Mutex<(Child, ChildStdin)>,
}

/// The server shared by this test binary's tests, started on first use. Panics (failing the
/// test, never skipping it) when `s3s-fs` is not installed or does not start.
///
/// Also puts its credentials in `COGNOMEGA_S3_ACCESS_KEY_ID` / `COGNOMEGA_S3_SECRET_ACCESS_KEY`,
/// where a platform started by [`crate::TestApp::spawn_on`] (and a `cognomega` child process)
/// finds them; every test of the binary uses the same pair.
pub fn s3() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        std::env::set_var("COGNOMEGA_S3_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("COGNOMEGA_S3_SECRET_ACCESS_KEY", SECRET_KEY);
        S3Server::start().unwrap_or_else(|e| panic!("{e}"))
    })
}

impl S3Server {
    fn start() -> Result<Self, String> {
        let binary = find_binary()?;
        let root = std::env::temp_dir().join(format!(
            "cognomega-s3s-{}-{:x}",
            std::process::id(),
            random_u64()
        ));
        std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        let port = free_port()?;
        let log = root.join("s3s-fs.log");
        let data = root.join("data");
        std::fs::create_dir_all(&data).map_err(|e| format!("creating {}: {e}", data.display()))?;
        let script = r#"
            "$@" >"$LOG" 2>&1 </dev/null &
            server=$!
            # Blocks until the test binary's end of stdin closes (it exited), then cleans up.
            cat >/dev/null
            kill "$server" 2>/dev/null
            wait "$server" 2>/dev/null
            rm -rf "$ROOT"
        "#;
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("lifeline")
            .arg(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&data)
            .env("LOG", &log)
            .env("ROOT", &root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let stdin = child
            .stdin
            .take()
            .ok_or("no stdin pipe to the s3s-fs lifeline")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + READY_WITHIN;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                let mut output = String::new();
                let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut output));
                return Err(format!(
                    "s3s-fs did not listen on {addr} within {READY_WITHIN:?}; its output:\n{output}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(S3Server {
            endpoint: format!("http://{addr}"),
            root: data,
            _process: Mutex::new((child, stdin)),
        })
    }

    /// The credentials the server accepts.
    pub fn credentials(&self) -> S3Credentials {
        S3Credentials::new(ACCESS_KEY, SECRET_KEY)
    }

    /// The endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A new, empty bucket: its URL, and the folder where the server keeps its objects.
    pub fn bucket(&self) -> (ObjectStoreUrl, PathBuf) {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("test-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = self.root.join(&name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating bucket {name}: {e}"));
        let url = ObjectStoreUrl::parse(&format!(
            "s3://{name}?endpoint={}&region=us-east-1",
            self.endpoint
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        (url, dir)
    }
}

/// Some entropy for the folder name, without a dependency.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

fn find_binary() -> Result<PathBuf, String> {
    let candidates = std::env::var_os("COGNOMEGA_S3S_FS")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
                .map(|home| home.join("bin/s3s-fs")),
        )
        .chain(
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("s3s-fs"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "s3s-fs (the S3-compatible test server, version {S3S_VERSION}) is not installed. \
         Run `ops/s3.sh --install` (installs it into ~/.cargo/bin), or point COGNOMEGA_S3S_FS \
         at the binary. The S3 half of the object-store suite never skips."
    ))
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("reading the bound port: {e}"))
}
