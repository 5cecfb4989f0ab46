//! The `keygate` binary as a child process: `keygate dev` on loopback ports,
//! stopped by SIGTERM or killed with SIGKILL, and an HTTP/2 client that keeps
//! one connection open for many requests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio_rustls::TlsConnector;

/// Returns the `keygate` binary next to the running test's deps folder (built
/// by `scripts/test.sh`), or the one `KEYGATE_BIN` names.
pub fn keygate_bin() -> PathBuf {
    if let Ok(path) = std::env::var("KEYGATE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target folder")
        .join("keygate");
    assert!(
        bin.exists(),
        "{} is missing; build it with `cargo build --release --bin keygate` (scripts/test.sh does) or set KEYGATE_BIN",
        bin.display()
    );
    bin
}

/// A `keygate dev` process with its data folder and listener addresses.
pub struct DevProcess {
    child: Child,
    pub data_dir: PathBuf,
    pub agent_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    /// File that receives the process's log (stderr), JSON lines.
    pub log_path: PathBuf,
}

impl DevProcess {
    /// Starts `keygate dev` on `data_dir` with every listener on a free
    /// loopback port, and waits until it prints its addresses.
    pub fn start(data_dir: &Path, log_path: &Path) -> DevProcess {
        DevProcess::start_with(Command::new(keygate_bin()), data_dir, log_path)
    }

    /// Like [`DevProcess::start`], but runs `command` (a wrapper that ends by
    /// running the `keygate` binary with the arguments appended here).
    pub fn start_with(mut command: Command, data_dir: &Path, log_path: &Path) -> DevProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("open the server log");
        command
            .args(["dev", "--data-dir"])
            .arg(data_dir)
            .args([
                "--agent-addr",
                "127.0.0.1:0",
                "--api-addr",
                "127.0.0.1:0",
                "--ops-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--log-filter",
                "info",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = command.spawn().expect("spawn keygate dev");
        let stdout = child.stdout.take().expect("piped stdout");
        let (agent_addr, api_addr, ops_addr) = match read_addresses(stdout) {
            Ok(addresses) => addresses,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                panic!("keygate dev did not start: {e}\nits log:\n{log}");
            }
        };
        DevProcess {
            child,
            data_dir: data_dir.to_owned(),
            agent_addr,
            api_addr,
            ops_addr,
            log_path: log_path.to_owned(),
        }
    }

    /// Returns the process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns the development admin token the server wrote at start.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("dev-admin.token"))
            .expect("read dev-admin.token")
            .trim()
            .to_owned()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.join("tls/ca.pem")
    }

    /// Kills the process with SIGKILL and waits for it to end.
    pub fn kill_hard(mut self) -> ExitStatus {
        // `Child::kill` sends SIGKILL to this child's process id on Unix.
        self.child.kill().expect("send SIGKILL");
        self.child.wait().expect("wait for the killed server")
    }

    /// Sends SIGTERM and waits up to 20 s for the process to exit.
    pub fn stop(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process {} did not exit within 20 s of SIGTERM",
                    self.child.id()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        // A test that panics leaves no server behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `keygate dev` output until the three listener lines appear, then
/// keeps draining it on a thread so the server never blocks on a full pipe.
fn read_addresses(
    stdout: std::process::ChildStdout,
) -> Result<(SocketAddr, SocketAddr, SocketAddr), String> {
    let mut lines = BufReader::new(stdout).lines();
    let (mut agent, mut api, mut ops) = (None, None, None);
    let find = |line: &str, label: &str, scheme: &str| -> Option<SocketAddr> {
        let rest = line.trim().strip_prefix(label)?.trim();
        rest.strip_prefix(scheme)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    while agent.is_none() || api.is_none() || ops.is_none() {
        let line = match lines.next() {
            Some(Ok(line)) => line,
            Some(Err(e)) => return Err(format!("reading its output failed: {e}")),
            None => return Err("it exited before printing its addresses".to_owned()),
        };
        agent = agent.or(find(&line, "agent listener", "https://"));
        api = api.or(find(&line, "API listener", "https://"));
        ops = ops.or(find(&line, "ops listener", "http://"));
    }
    std::thread::spawn(move || for _ in lines {});
    Ok((
        agent.expect("agent address"),
        api.expect("API address"),
        ops.expect("ops address"),
    ))
}

/// An HTTP/2 client over TLS that sends every request on one connection.
#[derive(Clone)]
pub struct H2Client {
    sender: SendRequest<Full<Bytes>>,
}

impl H2Client {
    /// Connects to `addr`, trusting the CA certificate in `ca`.
    pub async fn connect(addr: SocketAddr, ca: &Path) -> Result<H2Client, String> {
        let config = keygate_gateway::tls::client_config(ca, None, true)
            .map_err(|e| format!("client TLS config: {e}"))?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let stream = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").expect("valid name"), tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
        tokio::spawn(connection);
        Ok(H2Client { sender })
    }

    /// Sends a request with a bearer token and an optional JSON body, and
    /// returns the status and the body parsed as JSON (a JSON string if it is
    /// not JSON). Fails when the connection breaks.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), String> {
        self.request_with(method, path, token, &[], body).await
    }

    /// Like [`H2Client::request`], with extra request headers.
    pub async fn request_with(
        &self,
        method: Method,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), String> {
        let mut sender = self.sender.clone();
        sender.ready().await.map_err(|e| e.to_string())?;
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(bytes)).map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let raw = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value = serde_json::from_slice(&raw)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()));
        Ok((status, value))
    }
}

/// A small deterministic pseudo-random generator (xorshift64*), so a failing
/// run can be repeated from the seed it prints.
pub struct TestRng(u64);

impl TestRng {
    /// Seeds from `KEYGATE_TEST_SEED` when set, or else from the clock.
    pub fn from_env_or_clock() -> TestRng {
        let seed = std::env::var("KEYGATE_TEST_SEED")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("random seed {seed} (set KEYGATE_TEST_SEED={seed} to repeat this run)");
        TestRng::new(seed)
    }

    pub fn new(seed: u64) -> TestRng {
        TestRng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Returns a number in `low..high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low)
    }
}
