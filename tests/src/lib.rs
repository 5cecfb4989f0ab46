//! Harness for end-to-end tests: a real keygate server on loopback ports with
//! real TLS and RocksDB in a temporary folder, an HTTPS client, and the
//! reference agent running against it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate_auth::{ScopeSet, TokenRequest};
use keygate_gateway::agent::{AgentOptions, TaskHandlers};
use keygate_gateway::config::Config;
use keygate_gateway::server::Server;
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

pub use keygate_gateway;

pub mod azure_mock;
pub mod gcp_mock;
pub mod moto;
pub mod process;
pub mod serve_process;
pub mod vault_mock;

/// A server started for one test, with its own data folder.
pub struct TestServer {
    server: Option<Server>,
    pub config: Config,
    pub dir: tempfile::TempDir,
    pub agent_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    /// Token of account `acme` with every platform scope.
    pub admin_token: String,
}

pub const ACCOUNT: &str = "acme";

pub fn loopback_config(data_dir: &Path) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen.agent = any_port;
    config.listen.api = any_port;
    config.listen.ops = any_port;
    config.gateway.shutdown_grace_ms = 2000;
    config.external.loopback_only = true;
    config
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` has changed the loopback test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = loopback_config(&dir.path().join("data"));
        adjust(&mut config);
        keygate_gateway::devinit::ensure_material(&config).expect("dev material");
        let server = Server::start(config.clone()).await.expect("server starts");
        let mut test = TestServer {
            agent_addr: server.agent_addr,
            api_addr: server.api_addr,
            ops_addr: server.ops_addr,
            server: Some(server),
            config,
            dir,
            admin_token: String::new(),
        };
        test.admin_token = test.token(
            ACCOUNT,
            &[
                "agents:admin",
                "tasks:write",
                "secrets:admin",
                "secrets:read",
            ],
            None,
        );
        test
    }

    /// Stops the server and starts it again on the same data folder and
    /// configuration; the listeners get new ports.
    pub async fn restart(&mut self) {
        self.shutdown().await;
        let server = Server::start(self.config.clone())
            .await
            .expect("server starts again");
        self.agent_addr = server.agent_addr;
        self.api_addr = server.api_addr;
        self.ops_addr = server.ops_addr;
        self.server = Some(server);
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    pub async fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.config.data_dir.join("tls/ca.pem")
    }

    /// Signs a platform token with the server's signing key.
    pub fn token(&self, account: &str, scopes: &[&str], projects: Option<&[&str]>) -> String {
        self.token_with_lifetime(account, scopes, projects, 600)
    }

    pub fn token_with_lifetime(
        &self,
        account: &str,
        scopes: &[&str],
        projects: Option<&[&str]>,
        lifetime_secs: u64,
    ) -> String {
        let (token, _) = self
            .server()
            .state()
            .signing
            .issue(&TokenRequest {
                subject: "test-caller".into(),
                account: account.into(),
                scopes: ScopeSet::parse_strict(scopes.iter().copied(), &keygate_auth::Scope::ALL)
                    .expect("known scopes"),
                projects: projects.map(|p| p.iter().map(|s| s.to_string()).collect()),
                lifetime_secs,
                certificate_thumbprint: None,
            })
            .expect("token");
        token
    }

    pub fn api(&self) -> HttpsClient {
        HttpsClient::new(self.api_addr, &self.ca_path(), None)
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops_addr)
    }

    /// Creates an agent in `account` and issues its client certificate; returns the agent's credentials.
    pub async fn create_agent(&self, account: &str) -> AgentCredentials {
        self.create_agent_with(account, serde_json::json!({"name": "test"}))
            .await
    }

    /// Creates an agent from a `POST /v1/agents` body and issues its client certificate.
    pub async fn create_agent_with(&self, account: &str, request: Value) -> AgentCredentials {
        let token = self.token(account, &["agents:admin"], None);
        let (status, _, body) = self
            .api()
            .request(Method::POST, "/v1/agents", Some(&token), Some(request))
            .await;
        assert_eq!(status, StatusCode::CREATED, "create agent: {body}");
        let id = body["client_id"].as_str().expect("client_id").to_owned();
        let secret = body["client_secret"]
            .as_str()
            .expect("client_secret")
            .to_owned();
        let dir = self.dir.path().join("agents").join(&id);
        self.issue_agent_cert(&id, &dir);
        AgentCredentials { id, secret, dir }
    }

    /// Writes `ca.pem`, `client.pem` and `client-key.pem` for `common_name` into `dir`.
    pub fn issue_agent_cert(&self, common_name: &str, dir: &Path) {
        let (ca, _) =
            keygate_gateway::pki::DevCa::load_or_create(&self.config.data_dir.join("tls"))
                .expect("dev CA");
        std::fs::create_dir_all(dir).expect("agent dir");
        ca.issue_client_cert(common_name)
            .expect("client cert")
            .write(&dir.join("client.pem"), &dir.join("client-key.pem"))
            .expect("write client cert");
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write CA");
    }

    /// Runs the reference agent in this process until the returned handle is stopped.
    pub async fn start_agent(&self, creds: &AgentCredentials, capacity: u32) -> RunningAgent {
        self.start_agent_with(creds, capacity, TaskHandlers::builtin())
            .await
    }

    pub async fn start_agent_with(
        &self,
        creds: &AgentCredentials,
        capacity: u32,
        handlers: TaskHandlers,
    ) -> RunningAgent {
        let agent = self.spawn_agent(creds, capacity, handlers, "test-instance");
        self.wait_for_session(&creds.id).await;
        agent
    }

    /// Runs the reference agent as instance `instance_id`, without waiting for its session.
    pub fn spawn_agent(
        &self,
        creds: &AgentCredentials,
        capacity: u32,
        handlers: TaskHandlers,
        instance_id: &str,
    ) -> RunningAgent {
        let options = AgentOptions {
            gateway: self.agent_addr.to_string(),
            server_name: "localhost".into(),
            ca_cert: creds.dir.join("ca.pem"),
            client_cert: creds.dir.join("client.pem"),
            client_key: creds.dir.join("client-key.pem"),
            client_id: creds.id.clone(),
            client_secret: creds.secret.clone().into(),
            capacity,
            instance_id: instance_id.into(),
        };
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(keygate_gateway::agent::run(options, handlers, stop_rx));
        RunningAgent { stop, task }
    }

    /// Waits until the agent's session is registered (at most 10 s).
    pub async fn wait_for_session(&self, agent_id: &str) {
        for _ in 0..200 {
            if self.server().state().sessions.get(agent_id).is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("agent {agent_id} did not connect within 10 s");
    }

    /// Submits a task as the admin and returns status and body.
    pub async fn submit(&self, agent_id: &str, body: Value) -> (StatusCode, Value) {
        let (status, _, body) = self
            .api()
            .request(
                Method::POST,
                &format!("/v1/agents/{agent_id}/tasks"),
                Some(&self.admin_token),
                Some(body),
            )
            .await;
        (status, body)
    }
}

/// An agent's id, secret and credentials folder.
#[derive(Clone)]
pub struct AgentCredentials {
    pub id: String,
    pub secret: String,
    pub dir: PathBuf,
}

pub struct RunningAgent {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), keygate_gateway::agent::AgentError>>,
}

impl RunningAgent {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// An HTTPS (or, with `tls` off, plain HTTP) client that opens one HTTP/1.1 connection per request.
pub struct HttpsClient {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl HttpsClient {
    /// Creates a client trusting `ca`, optionally with a client certificate (`client.pem`, `client-key.pem` in a folder).
    pub fn new(addr: SocketAddr, ca: &Path, client_dir: Option<&Path>) -> HttpsClient {
        let cert_paths = client_dir.map(|d| (d.join("client.pem"), d.join("client-key.pem")));
        let identity = cert_paths.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        let config =
            keygate_gateway::tls::client_config(ca, identity, false).expect("client TLS config");
        HttpsClient {
            addr,
            tls: Some(Arc::new(config)),
        }
    }

    pub fn plain(addr: SocketAddr) -> HttpsClient {
        HttpsClient { addr, tls: None }
    }

    /// Sends a JSON request; returns the status, headers and the body parsed as JSON (or as a JSON string if it is not JSON).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut headers = vec![(http::header::CONTENT_TYPE, "application/json".to_owned())];
        if let Some(token) = token {
            headers.push((http::header::AUTHORIZATION, format!("Bearer {token}")));
        }
        let (status, headers, raw) = self.send(method, path, &headers, bytes).await;
        let value = serde_json::from_slice(&raw)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()));
        (status, headers, value)
    }

    /// Sends raw bytes with the given headers; returns status, headers and raw body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(http::HeaderName, String)],
        body: Bytes,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost");
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let request = builder.body(Full::new(body)).expect("request");
        let response = match &self.tls {
            Some(config) => {
                let stream = TlsConnector::from(config.clone())
                    .connect(ServerName::try_from("localhost").expect("name"), tcp)
                    .await
                    .expect("TLS handshake");
                send_http1(TokioIo::new(stream), request).await
            }
            None => send_http1(TokioIo::new(tcp), request).await,
        };
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("response body").to_bytes();
        (parts.status, parts.headers, bytes)
    }
}

async fn send_http1<I>(
    io: I,
    request: http::Request<Full<Bytes>>,
) -> http::Response<hyper::body::Incoming>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    sender.send_request(request).await.expect("HTTP request")
}

/// Opens an HTTP/1.1 connection over mTLS to the agent listener that can be
/// upgraded to a session, for tests that speak the protocol by hand.
pub async fn agent_http1<B>(
    addr: SocketAddr,
    creds_dir: &Path,
) -> Result<hyper::client::conn::http1::SendRequest<B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = agent_tls_http1(addr, creds_dir).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection.with_upgrades());
    Ok(sender)
}

/// Opens a TLS connection with the agent's certificate to the agent
/// listener, offering only HTTP/1.1, for tests that write HTTP by hand.
pub async fn agent_tls_http1(
    addr: SocketAddr,
    creds_dir: &Path,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    agent_tls(addr, creds_dir, b"http/1.1").await
}

/// Opens a TLS connection with the agent's certificate in `creds_dir` to
/// the agent listener, offering `alpn` as the only application protocol.
async fn agent_tls(
    addr: SocketAddr,
    creds_dir: &Path,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let mut config = keygate_gateway::tls::client_config(
        &creds_dir.join("ca.pem"),
        Some((
            &creds_dir.join("client.pem"),
            &creds_dir.join("client-key.pem"),
        )),
        false,
    )
    .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| e.to_string())
}

/// Opens an HTTP/2 connection over mTLS to the agent listener, for tests that speak the protocol by hand.
pub async fn agent_h2<B>(
    addr: SocketAddr,
    creds_dir: &Path,
) -> Result<hyper::client::conn::http2::SendRequest<B>, String>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = agent_tls(addr, creds_dir, b"h2").await?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Logs an agent in at the token endpoint and returns its access token.
pub async fn agent_token(server: &TestServer, creds: &AgentCredentials) -> String {
    use base64::Engine;
    let client = HttpsClient::new(
        server.agent_addr,
        &creds.dir.join("ca.pem"),
        Some(&creds.dir),
    );
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", creds.id, creds.secret));
    let headers = [
        (
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".to_owned(),
        ),
        (http::header::AUTHORIZATION, format!("Basic {basic}")),
    ];
    let (status, _, body) = client
        .send(
            Method::POST,
            "/oauth/token",
            &headers,
            Bytes::from_static(b"grant_type=client_credentials"),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "login: {}",
        String::from_utf8_lossy(&body)
    );
    let parsed: Value = serde_json::from_slice(&body).expect("token JSON");
    parsed["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// A JWK set server on a loopback port, for trusted-issuer tests: plain HTTP,
/// serving a document the test can replace, and counting the requests it gets.
pub struct JwksServer {
    pub addr: SocketAddr,
    shared: Arc<JwksServerShared>,
    accept_task: Option<tokio::task::JoinHandle<()>>,
}

struct JwksServerShared {
    /// The status and body every request gets.
    answer: std::sync::Mutex<(StatusCode, Bytes)>,
    requests: std::sync::atomic::AtomicUsize,
}

impl JwksServer {
    /// Starts serving `document` with status 200 at any path.
    pub async fn start(document: &Value) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the JWK set server");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(JwksServerShared {
            answer: std::sync::Mutex::new((StatusCode::OK, Bytes::from(document.to_string()))),
            requests: std::sync::atomic::AtomicUsize::new(0),
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        let shared = shared.clone();
                        async move {
                            shared
                                .requests
                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let (status, body) = shared.answer.lock().expect("answer lock").clone();
                            let response = http::Response::builder()
                                .status(status)
                                .header(http::header::CONTENT_TYPE, "application/json")
                                .body(Full::new(body))
                                .expect("response");
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            shared,
            accept_task: Some(accept_task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Serves `document` with status 200 from now on.
    pub fn set_document(&self, document: &Value) {
        self.set_answer(StatusCode::OK, Bytes::from(document.to_string()));
    }

    /// Serves `status` and `body` to every request from now on.
    pub fn set_answer(&self, status: StatusCode, body: Bytes) {
        *self.shared.answer.lock().expect("answer lock") = (status, body);
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.shared
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes the listening socket, so new connections are refused.
    pub async fn stop(&mut self) {
        if let Some(task) = self.accept_task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
    }
}
