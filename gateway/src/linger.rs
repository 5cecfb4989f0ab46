//! Lingering close: after the server is done with a connection, its socket
//! still reads and discards what the client sends, for a bounded time.
//!
//! Closing a socket that has unread input makes the kernel send a reset.
//! A client still sending a request body that the server rejected without
//! reading it (a 404, a 413, a failed TLS handshake) then gets a write error
//! or a truncated stream instead of the response. So the server
//! ends its side of the connection first and drains the rest.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Bounds of the drain that follows the end of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Linger {
    /// Time spent reading after the server ended its side.
    pub timeout: Duration,
    /// Bytes read after the server ended its side.
    pub max_bytes: usize,
}

/// A TCP stream that lingers when dropped: it ends its side of the
/// connection and reads what the client still sends, within `Linger`'s
/// bounds, in a task of its own.
pub struct LingeringStream {
    stream: Option<TcpStream>,
    linger: Linger,
}

impl LingeringStream {
    pub fn new(stream: TcpStream, linger: Linger) -> LingeringStream {
        LingeringStream {
            stream: Some(stream),
            linger,
        }
    }

    fn stream(&mut self) -> &mut TcpStream {
        // `stream` is taken only in `drop`.
        self.stream.as_mut().expect("stream present until drop")
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // Outside a runtime (or while it shuts down) the stream closes at once.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(stream, self.linger));
        }
    }
}

async fn drain(mut stream: TcpStream, linger: Linger) {
    // The connection may be shut down already; the read below still drains it.
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 8192];
    let read_rest = async {
        let mut total = 0;
        while total < linger.max_bytes {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(linger.timeout, read_rest).await;
}

impl AsyncRead for LingeringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()).poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Returns the response seen by a client that sends more than the server reads.
    async fn response_after_sending(body_bytes: usize, lingering: bool) -> io::Result<Vec<u8>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;

        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut head = [0u8; 16];
            if lingering {
                let mut stream = LingeringStream::new(
                    tcp,
                    Linger {
                        timeout: Duration::from_secs(5),
                        max_bytes: 64 * 1024 * 1024,
                    },
                );
                stream.read_exact(&mut head).await?;
                stream.write_all(b"rejected").await?;
                stream.shutdown().await?;
            } else {
                let mut stream = tcp;
                stream.read_exact(&mut head).await?;
                stream.write_all(b"rejected").await?;
                stream.shutdown().await?;
            }
            io::Result::Ok(())
        });

        let mut client = TcpStream::connect(addr).await?;
        let body = vec![b'x'; body_bytes];
        let sent = client.write_all(&body).await;
        let mut response = Vec::new();
        let read = client.read_to_end(&mut response).await;
        server.await.expect("server task")?;
        sent?;
        read?;
        Ok(response)
    }

    #[tokio::test]
    async fn client_reads_early_response() {
        let response = response_after_sending(8 * 1024 * 1024, true)
            .await
            .expect("the client sends its whole body and reads the response");
        assert_eq!(response, b"rejected");
    }

    #[tokio::test]
    async fn plain_close_resets_client() {
        // The failure that lingering prevents; if this ever passes, the kernel
        // no longer resets such connections and the test above proves nothing.
        let result = response_after_sending(8 * 1024 * 1024, false).await;
        assert!(result.is_err(), "expected a reset, got {result:?}");
    }
}
