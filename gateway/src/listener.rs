//! Accept loops: TLS (or plain HTTP on the ops listener), then HTTP/1.1 or HTTP/2 per connection.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use keygate_auth::ClientIdentity;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::http::{handle, ConnInfo, ListenerKind};
use crate::linger::{Linger, LingeringStream};
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
    let handshakes = Arc::new(Semaphore::new(
        state.config.gateway.max_concurrent_handshakes,
    ));
    let linger = Linger {
        timeout: LINGER_TIMEOUT,
        max_bytes: LINGER_MAX_BYTES,
    };
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
        let stream = LingeringStream::new(stream, linger);
        // A handshake costs far more CPU than a running session. Shedding new
        // connections at once keeps a reconnect storm from starving the open
        // sessions, while the agents retry with jittered backoff.
        let handshake_slot = match &tls {
            None => None,
            Some(_) => match handshakes.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    state
                        .metrics
                        .handshakes_shed
                        .with_label_values(&[kind.as_str()])
                        .inc();
                    debug!(listener = kind.as_str(), client.addr = %peer, "too many TLS handshakes in progress; connection closed");
                    drop(stream);
                    continue;
                }
            },
        };
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
                        Ok(Ok(s)) => {
                            drop(handshake_slot);
                            s
                        }
                        Ok(Err((e, _stream))) => {
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

/// Explicit per-connection buffer limits, so a connection's memory has a
/// known bound whatever the peer sends or fails to read.
struct BufferLimits {
    max_streams: u32,
    /// Bytes a peer may send on one stream before the server reads them.
    stream_window_bytes: u32,
    /// Bytes a peer may send on all streams before the server reads them.
    connection_window_bytes: u32,
    /// Bytes of response data buffered per stream before the writer waits.
    send_buffer_bytes: usize,
    header_list_bytes: u32,
    http1_read_buffer_bytes: usize,
}

impl BufferLimits {
    fn for_listener(kind: ListenerKind) -> BufferLimits {
        match kind {
            // One long session stream and a few token requests per agent.
            // Windows of 64 KiB made busy sessions fail with connection
            // errors under load, so they are as large as one 1 MiB frame.
            ListenerKind::Agent => BufferLimits {
                max_streams: 8,
                stream_window_bytes: 1024 * 1024,
                connection_window_bytes: 2 * 1024 * 1024,
                send_buffer_bytes: 400 * 1024,
                header_list_bytes: 16 * 1024,
                http1_read_buffer_bytes: 64 * 1024,
            },
            ListenerKind::Api | ListenerKind::Ops => BufferLimits {
                max_streams: 256,
                stream_window_bytes: 1024 * 1024,
                connection_window_bytes: 4 * 1024 * 1024,
                send_buffer_bytes: 256 * 1024,
                header_list_bytes: 32 * 1024,
                http1_read_buffer_bytes: 256 * 1024,
            },
        }
    }
}

/// Time a closed connection keeps reading what the client still sends.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes a closed connection reads at most. They are read from the socket
/// and dropped, never decrypted, so the bound is on time more than on CPU.
const LINGER_MAX_BYTES: usize = 64 * 1024 * 1024;

async fn serve_connection<I>(io: TokioIo<I>, conn: ConnInfo, state: SharedState, watcher: Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (kind, peer) = (conn.listener, conn.peer);
    let conn = Arc::new(conn);
    let service = service_fn(move |req| handle(state.clone(), conn.clone(), req));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let limits = BufferLimits::for_listener(kind);
    builder.http1().max_buf_size(limits.http1_read_buffer_bytes);
    builder
        .http2()
        .max_concurrent_streams(limits.max_streams)
        .initial_stream_window_size(limits.stream_window_bytes)
        .initial_connection_window_size(limits.connection_window_bytes)
        .max_send_buf_size(limits.send_buffer_bytes)
        .max_header_list_size(limits.header_list_bytes);
    // Agents may upgrade an HTTP/1.1 connection to a bare session stream. Once
    // upgraded, the connection leaves hyper, and with it the graceful
    // shutdown's count: the server drains sessions itself.
    let result = if kind == ListenerKind::Agent {
        let served = builder.serve_connection_with_upgrades(io, service);
        watcher.watch(served.into_owned()).await
    } else {
        let served = builder.serve_connection(io, service);
        watcher.watch(served.into_owned()).await
    };
    if let Err(e) = result {
        debug!(listener = kind.as_str(), client.addr = %peer, error = %e, "connection ended with an error");
    }
}
