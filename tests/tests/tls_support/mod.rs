//! Helpers of the certificate and TLS reload tests: issuing test
//! certificates from the server's development CA, and connecting with them
//! to see what the listeners do.

// Each test file that includes this module uses a different part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use keygate_gateway::config::Config;
use keygate_gateway::pki::{ClientCertParams, DevCa};
use keygate_tests::{HttpsClient, TestServer};
use rustls::{AlertDescription, ClientConfig, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub const TLS_VERSIONS: [(&str, &SupportedProtocolVersion); 2] = [
    ("TLS 1.2", &rustls::version::TLS12),
    ("TLS 1.3", &rustls::version::TLS13),
];

/// What the agent listener did with a client certificate.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The handshake finished and a request got a 200 response.
    Accepted,
    /// The server ended the handshake with this TLS alert.
    Rejected(AlertDescription),
}

/// Returns the development CA of the data folder `config` names, creating the folder's TLS files if missing.
pub fn dev_ca(config: &Config) -> DevCa {
    keygate_gateway::devinit::ensure_material(config).expect("dev material");
    let (ca, _) = DevCa::load_or_create(&config.data_dir.join("tls")).expect("dev CA");
    ca
}

/// Writes `ca.pem`, `client.pem` and `client-key.pem` into `dir`, the layout the agent and `HttpsClient` read.
pub fn write_client_cert(ca: &DevCa, params: &ClientCertParams, dir: &Path) {
    std::fs::create_dir_all(dir).expect("certificate folder");
    ca.issue_client_cert_with(params)
        .expect("client certificate")
        .write(&dir.join("client.pem"), &dir.join("client-key.pem"))
        .expect("write client certificate");
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write CA");
}

pub fn der_of(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

/// A client configuration for one TLS version that trusts `ca` and presents
/// the certificate in `client_dir`, if given.
pub fn client_config(
    ca: &Path,
    client_dir: Option<&Path>,
    version: &'static SupportedProtocolVersion,
    alpn: &[&[u8]],
) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in keygate_gateway::tls::load_certs(ca).expect("CA bundle") {
        roots.add(cert).expect("CA certificate");
    }
    let builder = ClientConfig::builder_with_provider(keygate_gateway::tls::provider())
        .with_protocol_versions(&[version])
        .expect("protocol version")
        .with_root_certificates(roots);
    let mut config = match client_dir {
        Some(dir) => builder
            .with_client_auth_cert(
                keygate_gateway::tls::load_certs(&dir.join("client.pem")).expect("client cert"),
                keygate_gateway::tls::load_key(&dir.join("client-key.pem")).expect("client key"),
            )
            .expect("client certificate and key"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Completes a TLS handshake with `addr`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: ClientConfig,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

/// Returns the alert the server sent, if `error` is rustls's report of one.
pub fn alert_of(error: &std::io::Error) -> Option<AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

fn rejected_or_panic(error: std::io::Error, step: &str) -> Verdict {
    match alert_of(&error) {
        Some(alert) => Verdict::Rejected(alert),
        None => panic!("{step} failed without a TLS alert: {error}"),
    }
}

/// Connects to the agent listener at `addr` with the certificate in
/// `client_dir` and sends one HTTP/1.1 request. With TLS 1.3 the server
/// checks the certificate after the client's handshake has finished, so its
/// alert shows up on the first read.
pub async fn present_certificate(
    addr: SocketAddr,
    ca: &Path,
    client_dir: &Path,
    version: &'static SupportedProtocolVersion,
) -> Verdict {
    let config = client_config(ca, Some(client_dir), version, &[b"http/1.1"]);
    let mut stream = match tls_connect(addr, config).await {
        Ok(stream) => stream,
        Err(e) => return rejected_or_panic(e, "the handshake"),
    };
    let request =
        b"GET /.well-known/jwks.json HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    if let Err(e) = stream.write_all(request).await {
        return rejected_or_panic(e, "writing the request");
    }
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response).await {
        return rejected_or_panic(e, "reading the response");
    }
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "unexpected response: {}",
        String::from_utf8_lossy(&response)
    );
    Verdict::Accepted
}

/// Returns the leaf certificate served to a new connection to `addr`, with the client certificate in `client_dir` if given.
pub async fn served_certificate(
    addr: SocketAddr,
    ca: &Path,
    client_dir: Option<&Path>,
) -> CertificateDer<'static> {
    let config = client_config(ca, client_dir, &rustls::version::TLS13, &[b"http/1.1"]);
    let stream = tls_connect(addr, config).await.expect("TLS handshake");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .expect("a server certificate")
        .clone()
        .into_owned()
}

/// Returns the ops listener's `/metrics` text.
pub async fn metrics_text(server: &TestServer) -> String {
    let (_, _, body) = HttpsClient::plain(server.ops_addr)
        .send(Method::GET, "/metrics", &[], Bytes::new())
        .await;
    String::from_utf8(body.to_vec()).expect("UTF-8 metrics")
}

/// Returns the value of the sample whose name and labels are `series`, e.g. `keygate_tls_reloads_total{result="success"}`.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Polls `check` every 50 ms until it returns true or `limit` has passed; returns whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
