//! TCP connections of keygate's own HTTP clients (key-set fetches, trace
//! exports and the KMS client), and one request driven with its connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;

use tokio::net::TcpStream;

/// The reason no connection to an outbound host could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("{host} resolves to no loopback address, which plain http requires")]
    NotLoopback { host: String },
    #[error("connecting to {addr} failed: {reason}")]
    Connect { addr: SocketAddr, reason: String },
}

/// Resolves `host` and connects to the first of its addresses that accepts,
/// with Nagle's algorithm off. Without `https`, only loopback addresses are
/// tried, because plain http must not leave the machine. The error names the
/// last address that failed.
pub async fn connect(host: &str, port: u16, https: bool) -> Result<TcpStream, ConnectError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ConnectError::Resolve {
            host: host.to_owned(),
            reason: e.to_string(),
        })?
        .filter(|addr| https || addr.ip().is_loopback())
        .collect();
    let mut last_error = if https {
        ConnectError::NoAddress {
            host: host.to_owned(),
        }
    } else {
        ConnectError::NotLoopback {
            host: host.to_owned(),
        }
    };
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => {
                last_error = ConnectError::Connect {
                    addr,
                    reason: e.to_string(),
                }
            }
        }
    }
    Err(last_error)
}

/// Runs `response`, a request sent on an HTTP/1.1 connection and the
/// reading of its response, while it drives `connection` in the same future.
/// So dropping the future, as a timeout does, closes the connection and
/// leaves no task behind. `failed` turns a connection error into `E`.
pub async fn drive_with_connection<T, E>(
    response: impl Future<Output = Result<T, E>>,
    connection: impl Future<Output = Result<(), hyper::Error>>,
    failed: impl FnOnce(hyper::Error) -> E,
) -> Result<T, E> {
    let mut response = pin!(response);
    let mut connection = pin!(connection);
    tokio::select! {
        biased;
        result = &mut response => result,
        ended = &mut connection => match ended {
            // A connection that ended cleanly may still have delivered the whole response.
            Ok(()) => response.await,
            Err(e) => Err(failed(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_connection_names_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        match connect("127.0.0.1", port, false).await {
            Err(ConnectError::Connect { addr, .. }) => assert_eq!(addr.port(), port),
            other => panic!("expected a refused connection, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn loopback_listener_accepts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = connect("localhost", port, false).await.unwrap();
        assert!(stream.nodelay().unwrap(), "Nagle's algorithm is off");
    }
}
