//! Accept loops: TLS (or plain HTTP on the ops listener), then HTTP/1.1 or HTTP/2 per connection.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use keygate_auth::ClientIdentity;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::http::{handle, ConnInfo, ListenerKind};
use crate::state::SharedState;

/// Accepts connections until `shutdown` turns true, then waits up to `grace`
/// for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    kind: ListenerKind,
    tls: Option<TlsAcceptor>,
    state: SharedState,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let handshake_timeout = Duration::from_millis(state.config.gateway.tls_handshake_timeout_ms);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(listener = kind.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match tls {
                None => {
                    let conn = ConnInfo {
                        listener: kind,
                        peer,
                        client: None,
                    };
                    serve_connection(TokioIo::new(stream), conn, state, watcher).await;
                }
                Some(acceptor) => {
                    let tls_stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(listener = kind.as_str(), client.addr = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(listener = kind.as_str(), client.addr = %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let client = tls_stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|der| ClientIdentity::from_der(der).ok());
                    let conn = ConnInfo {
                        listener: kind,
                        peer,
                        client,
                    };
                    serve_connection(TokioIo::new(tls_stream), conn, state, watcher).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            listener = kind.as_str(),
            grace_ms = grace.as_millis() as u64,
            "connections still open after the grace period; closing them"
        );
    }
}

async fn serve_connection<I>(io: TokioIo<I>, conn: ConnInfo, state: SharedState, watcher: Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (kind, peer) = (conn.listener, conn.peer);
    let conn = Arc::new(conn);
    let service = service_fn(move |req| handle(state.clone(), conn.clone(), req));
    let builder = auto::Builder::new(TokioExecutor::new());
    let served = builder.serve_connection(io, service);
    if let Err(e) = watcher.watch(served.into_owned()).await {
        debug!(listener = kind.as_str(), client.addr = %peer, error = %e, "connection ended with an error");
    }
}
