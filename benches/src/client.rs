//! HTTP/2 connections over TLS to the API listener.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

pub type Sender = SendRequest<Full<Bytes>>;

/// Opens `count` HTTP/2 connections to `addr`, trusting `ca`.
pub async fn connect_all(addr: SocketAddr, ca: &Path, count: usize) -> Result<Vec<Sender>, String> {
    let config =
        Arc::new(keygate_gateway::tls::client_config(ca, None, true).map_err(|e| e.to_string())?);
    let mut senders = Vec::with_capacity(count);
    for _ in 0..count {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let stream = TlsConnector::from(config.clone())
            .connect(ServerName::try_from("localhost").expect("valid name"), tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {addr} failed: {e}"))?;
        tokio::spawn(connection);
        senders.push(sender);
    }
    Ok(senders)
}
