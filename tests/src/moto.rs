//! A local AWS KMS for tests: moto's server on a free loopback port, and a
//! TCP relay in front of it that a test switches off to make KMS unreachable.
//!
//! `scripts/install-test-deps.sh` installs moto; a test that needs it fails
//! with a message naming that script when it is missing.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keygate_gateway::master_key::kms::{KmsClient, KmsSettings};
use keygate_gateway::master_key::sigv4::Credentials;
use serde_json::json;

/// Region of every KMS key the tests create.
pub const REGION: &str = "us-east-1";
/// Dummy credentials: moto accepts any, and they never reach AWS.
pub const ACCESS_KEY_ID: &str = "AKIDKEYGATETEST";
pub const SECRET_ACCESS_KEY: &str = "keygate-test-secret-key";

/// Returns moto's server program: `KEYGATE_MOTO_SERVER`, or the one
/// `scripts/install-test-deps.sh` installs.
pub fn moto_server_path() -> PathBuf {
    if let Ok(path) = std::env::var("KEYGATE_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let root = match std::env::var_os("KEYGATE_TEST_DEPS") {
        Some(root) => PathBuf::from(root),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
                .expect("HOME or XDG_CACHE_HOME is set");
            cache.join("keygate-test-deps")
        }
    };
    let path = root.join("moto/bin/moto_server");
    assert!(
        path.exists(),
        "moto's server is missing at {}; run scripts/install-test-deps.sh (scripts/test.sh does), or set KEYGATE_MOTO_SERVER",
        path.display()
    );
    path
}

/// Returns the environment variables a KMS client under test gets: the dummy
/// credentials, and the AWS SDKs' instance-metadata lookup switched off.
pub fn aws_env() -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), SECRET_ACCESS_KEY.into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}

pub fn credentials() -> Credentials {
    Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None)
}

/// A moto server process, killed when dropped.
pub struct Moto {
    child: Child,
    pub addr: SocketAddr,
    /// Whether it serves https, with the certificate given at start.
    tls: bool,
}

impl Moto {
    /// Starts moto over plain http on a free loopback port.
    pub fn start() -> Moto {
        Moto::spawn(None, &[])
    }

    /// Starts moto over https with a PEM certificate chain and key, such as
    /// the development server certificate of a data folder (for `localhost`).
    pub fn start_tls(cert: &Path, key: &Path) -> Moto {
        Moto::spawn(Some((cert, key)), &[])
    }

    /// Starts moto over plain http with extra environment variables, such as
    /// `INITIAL_NO_AUTH_ACTION_COUNT`, after which moto checks IAM permissions.
    pub fn start_with_env(env: &[(&str, &str)]) -> Moto {
        Moto::spawn(None, env)
    }

    fn spawn(tls: Option<(&Path, &Path)>, env: &[(&str, &str)]) -> Moto {
        let mut command = Command::new(moto_server_path());
        command.envs(env.iter().copied());
        command.args(["-H", "127.0.0.1", "-p", "0"]);
        if let Some((cert, key)) = tls {
            command.arg("-c").arg(cert).arg("-k").arg(key);
        }
        command
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start moto's server {}: {e}; run scripts/install-test-deps.sh",
                moto_server_path().display()
            )
        });

        // Werkzeug prints the address it bound, port included, on stderr.
        let stderr = child.stderr.take().expect("piped stderr");
        let (found, port) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            let mut seen = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    seen.push_str(&line);
                    seen.push('\n');
                    if let Some(port) = line
                        .split("://127.0.0.1:")
                        .nth(1)
                        .and_then(|rest| rest.trim().parse::<u16>().ok())
                    {
                        let _ = found.send(Ok(port));
                        sent = true;
                    }
                }
            }
            if !sent {
                let _ = found.send(Err(seen));
            }
        });
        let port = match port.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(port)) => port,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("moto's server did not report its port within 60 s: {other:?}");
            }
        };
        Moto {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: tls.is_some(),
        }
    }

    /// Returns the endpoint URL, `https://localhost:PORT` with TLS.
    pub fn endpoint(&self) -> String {
        match self.tls {
            true => format!("https://localhost:{}", self.addr.port()),
            false => format!("http://{}", self.addr),
        }
    }

    /// Creates a symmetric KMS key and returns its id; `ca` is the CA bundle
    /// for a TLS server.
    pub async fn create_key(&self, ca: Option<&Path>) -> String {
        let endpoint = self.endpoint();
        let client = KmsClient::new(KmsSettings {
            endpoint: &endpoint,
            region: REGION,
            ca_file: ca,
            timeout: Duration::from_secs(30),
        })
        .expect("KMS client");
        let created = client
            .call(
                &credentials(),
                "CreateKey",
                &json!({"Description": "keygate test master-key wrapping key"}),
            )
            .await
            .expect("CreateKey");
        created["KeyMetadata"]["KeyId"]
            .as_str()
            .expect("KeyMetadata.KeyId")
            .to_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // SIGKILL to this test's own child process.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay on a free loopback port to `target`. While closed, it accepts
/// each connection and drops it at once, so clients see KMS as unreachable
/// without the port ever being reused by someone else.
pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Connections passed on to the target so far.
    relayed: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        let open = Arc::new(AtomicBool::new(true));
        let accept_open = open.clone();
        let relayed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = relayed.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accept_open.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay {
            addr,
            open,
            relayed,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections passed on so far; keygate's provider clients open one per request.
    pub fn relayed(&self) -> usize {
        self.relayed.load(Ordering::SeqCst)
    }

    /// Opens or closes the relay for new connections.
    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
