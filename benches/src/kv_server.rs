//! `keygate-bench kv-server`: a minimal HashiCorp Vault KV v2 read endpoint
//! on loopback, the upstream of the external-resolution benchmark. Every
//! `GET /v1/{mount}/data/{path}` with the expected token gets the same
//! secret; anything else gets Vault's 403 or 404 body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

/// Serves until `duration` has passed, then prints how many reads it served.
pub async fn run(addr: SocketAddr, token: String, duration: Duration) -> Result<(), String> {
    if !addr.ip().is_loopback() {
        return Err(format!("--addr {addr} must be a loopback address"));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let reads = Arc::new(AtomicU64::new(0));
    let body = Bytes::from(
        serde_json::json!({
            "data": {
                "data": {"password": "0123456789abcdef0123456789abcdef"},
                "metadata": {"version": 1, "deletion_time": "", "destroyed": false}
            }
        })
        .to_string(),
    );
    let token = Arc::new(token);
    let served = reads.clone();
    let accept = async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (body, token, reads) = (body.clone(), token.clone(), served.clone());
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (body, token, reads) = (body.clone(), token.clone(), reads.clone());
                    async move {
                        let authorized = request
                            .headers()
                            .get("x-vault-token")
                            .is_some_and(|value| value.as_bytes() == token.as_bytes());
                        let is_read = request.method() == http::Method::GET
                            && request.uri().path().starts_with("/v1/")
                            && request.uri().path().contains("/data/");
                        let (status, body) = match (authorized, is_read) {
                            (true, true) => {
                                reads.fetch_add(1, Ordering::Relaxed);
                                (http::StatusCode::OK, body)
                            }
                            (false, _) => (
                                http::StatusCode::FORBIDDEN,
                                Bytes::from_static(b"{\"errors\":[\"permission denied\"]}"),
                            ),
                            (true, false) => (
                                http::StatusCode::NOT_FOUND,
                                Bytes::from_static(b"{\"errors\":[]}"),
                            ),
                        };
                        let mut response = http::Response::new(Full::new(body));
                        *response.status_mut() = status;
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = tokio::time::sleep(duration) => {}
    }
    println!(
        "kv-server: answered {} reads",
        reads.load(Ordering::Relaxed)
    );
    Ok(())
}
