//! Accept loops: TLS (or plain HTTP on the ops listener), then HTTP/1.1 or HTTP/2 per connection.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use keygate_auth::ClientIdentity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::http::{handle, ConnInfo, ListenerKind};
use crate::state::SharedState;
use crate::tls::reload::ReloadableServerConfig;

/// Accepts connections until `shutdown` turns true, then waits up to `grace`
/// for open connections to finish. Each TLS handshake uses the configuration
/// that `tls` holds when the connection is accepted.
pub async fn serve(
    listener: TcpListener,
    kind: ListenerKind,
    tls: Option<ReloadableServerConfig>,
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
        let acceptor = tls.as_ref().map(|tls| TlsAcceptor::from(tls.current()));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match acceptor {
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
                        acceptor.accept(stream).into_fallible(),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err((e, tcp))) => {
                            debug!(listener = kind.as_str(), client.addr = %peer, error = %e, "TLS handshake failed");
                            close_after_failed_handshake(tcp).await;
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

/// Maximum time spent reading from a client after its handshake failed.
const REJECTED_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Maximum bytes read from a client after its handshake failed.
const REJECTED_DRAIN_MAX_BYTES: usize = 64 * 1024;

/// Closes a connection whose handshake failed so that the client can read
/// the alert rustls sent. Closing a socket that still has unread input makes
/// the kernel send a reset, and a client that is still writing then gets a
/// write error instead of the alert. So the server ends its side first and
/// reads what the client still sends, for a bounded time.
async fn close_after_failed_handshake(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let mut buf = [0u8; 4096];
    let drain = async {
        let mut total = 0;
        while total < REJECTED_DRAIN_MAX_BYTES {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(REJECTED_DRAIN_TIMEOUT, drain).await;
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
