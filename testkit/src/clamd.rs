//! A real clamd for tests, started through `ops/clamd.sh` (so the script is tested
//! too) on a free loopback port with its own state folder and the project's signatures.
//!
//! A clamd outlives no test run: a tiny shell
//! "lifeline" holds this process's end of a pipe and, when the pipe closes (the test binary
//! exited, however it exited, or the [`ClamdServer`] was dropped), runs `ops/clamd.sh --stop`
//! and removes the folder.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use cognomega_stores::clamd::ClamdAddr;

/// `StreamMaxLength` of the shared test clamd: small, so the size-limit case needs only 2 MiB.
pub const STREAM_MAX: usize = 1024 * 1024;

/// One running clamd.
#[derive(Debug)]
pub struct ClamdServer {
    /// Its TCP address.
    pub tcp: ClamdAddr,
    /// Its unix socket.
    pub unix: ClamdAddr,
    dir: PathBuf,
    port: u16,
    stream_max: String,
    _lifeline: Mutex<(Child, ChildStdin)>,
}

/// The clamd shared by this test binary's tests, started on first use with
/// `StreamMaxLength` = [`STREAM_MAX`]. Panics (failing the test, never skipping it) when clamd
/// cannot be installed or started.
pub fn clamd() -> &'static ClamdServer {
    static SERVER: OnceLock<ClamdServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        ClamdServer::start(&format!("{}K", STREAM_MAX / 1024)).unwrap_or_else(|e| panic!("{e}"))
    })
}

impl ClamdServer {
    /// Starts a clamd of its own with the given `StreamMaxLength` (clamd syntax: `1M`, `100M`).
    pub fn start(stream_max: &str) -> Result<Self, String> {
        let script = clamd_sh();
        let dir = std::env::temp_dir().join(format!(
            "cognomega-clamd-{}-{:x}",
            std::process::id(),
            random_u64()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // The lifeline first, so a failed start below is still cleaned up.
        let lifeline = r#"
            # Blocks until the test binary's end of stdin closes, then cleans up.
            cat >/dev/null
            "$0" --stop "$1" >/dev/null 2>&1
            rm -rf "$1"
        "#;
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(lifeline)
            .arg(&script)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the clamd lifeline: {e}"))?;
        let stdin = child
            .stdin
            .take()
            .ok_or("no stdin pipe to the clamd lifeline")?;
        // A port picked free can be taken by a concurrent test process before clamd binds it
        // (and a loaded machine slows clamd's start), so a failed start is retried on a new port.
        let mut attempt = 0;
        let (port, output) = loop {
            attempt += 1;
            let port = free_port()?;
            let output = Command::new(&script)
                .arg(&dir)
                .env("COGNOMEGA_CLAMD_PORT", port.to_string())
                .env("COGNOMEGA_CLAMD_STREAM_MAX", stream_max)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("running {}: {e}", script.display()))?;
            if output.status.success() {
                break (port, output);
            }
            if attempt >= 3 {
                return Err(format!(
                    "{} could not start clamd ({}):\n{}\nThe clamd suite never skips: run \
                     `ops/clamd.sh --install` (installs Debian's clamav-daemon, as root), then \
                     `ops/clamd.sh` to see clamd start.",
                    script.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            let _ = Command::new(&script)
                .arg("--stop")
                .arg(&dir)
                .stdin(Stdio::null())
                .output();
            std::thread::sleep(std::time::Duration::from_millis(500));
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let addr = |scheme: &str| {
            stdout
                .lines()
                .find(|line| line.starts_with(scheme))
                .ok_or_else(|| format!("ops/clamd.sh printed no {scheme} address:\n{stdout}"))
                .and_then(|line| ClamdAddr::parse(line).map_err(|e| e.to_string()))
        };
        Ok(ClamdServer {
            tcp: addr("tcp://")?,
            unix: addr("unix:")?,
            dir,
            port,
            stream_max: stream_max.to_owned(),
            _lifeline: Mutex::new((child, stdin)),
        })
    }

    /// Starts this clamd again after [`ClamdServer::stop`], on the same port and socket.
    pub fn restart(&self) {
        let output = Command::new(clamd_sh())
            .arg(&self.dir)
            .env("COGNOMEGA_CLAMD_PORT", self.port.to_string())
            .env("COGNOMEGA_CLAMD_STREAM_MAX", &self.stream_max)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running ops/clamd.sh: {e}"));
        assert!(
            output.status.success(),
            "ops/clamd.sh could not restart clamd ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops this clamd now (`ops/clamd.sh --stop`), as an operator would.
    pub fn stop(&self) {
        let output = Command::new(clamd_sh())
            .arg("--stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running ops/clamd.sh --stop: {e}"));
        assert!(
            output.status.success(),
            "ops/clamd.sh --stop failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn clamd_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/clamd.sh")
}

/// Some entropy for the folder name, without a dependency.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("reading the bound port: {e}"))
}
