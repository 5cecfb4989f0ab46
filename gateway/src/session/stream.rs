//! Session frames over a bare byte stream: an HTTP/1.1 connection that the
//! agent upgraded with `Upgrade: keygate-session`, used by both ends.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use keygate_protocol::{Frame, FrameDecoder, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

/// The token in an HTTP/1.1 `Upgrade` header that asks for a bare session stream.
pub const UPGRADE_PROTOCOL: &str = "keygate-session";

/// Why reading a frame from a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("reading the session stream failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection ended inside a frame, with {buffered} bytes of it received")]
    Truncated { buffered: usize },
    #[error("invalid frame: {0}")]
    Frame(#[from] FrameError),
}

/// Reads the next whole frame; `Ok(None)` when the peer closed the stream
/// between frames. `min_space` is the free buffer space reserved for each
/// read: an idle session keeps that much, and the decoder reserves a whole
/// frame as soon as it has read the frame's length.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    decoder: &mut FrameDecoder,
    min_space: usize,
) -> Result<Option<Frame>, StreamError> {
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(Some(frame));
        }
        if reader.read_buf(decoder.read_buffer(min_space)).await? == 0 {
            return match decoder.buffered_len() {
                0 => Ok(None),
                buffered => Err(StreamError::Truncated { buffered }),
            };
        }
    }
}

/// Frames below this size are copied into one buffer before they are
/// written. Larger frames, and joined runs that reach this size, are
/// written as they are. 16 KiB is the largest payload of a TLS record.
const JOIN_LIMIT: usize = 16 * 1024;

/// Outcome of [`write_frames`].
#[derive(Debug)]
pub enum WriteEnd {
    /// Every sender is gone; the stream was shut down after the last frame.
    Closed,
    Failed(std::io::Error),
    /// A flush did not finish within the timeout: the peer stopped reading.
    TimedOut,
}

/// Writes queued frames to the stream, flushing whenever the queue is
/// empty. Each flush must finish within `timeout`, so a peer that stops
/// reading cannot keep the connection open. The queue stays open until the
/// caller drops it, so the caller can record how writing ended before the
/// senders see the queue close.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    frames: &mut mpsc::Receiver<Bytes>,
    timeout: Duration,
) -> WriteEnd {
    while let Some(first) = frames.recv().await {
        let written = tokio::time::timeout(timeout, async {
            // TLS seals each write into records of its own and sends them at
            // once, so small frames are joined first: one record and one
            // system call for many frames. The join buffer lives only for
            // this flush, so an idle session keeps none.
            let mut joined = BytesMut::new();
            let mut next = Some(first);
            while let Some(frame) = next {
                if frame.len() >= JOIN_LIMIT {
                    if !joined.is_empty() {
                        writer.write_all(&joined).await?;
                        joined.clear();
                    }
                    writer.write_all(&frame).await?;
                } else {
                    joined.extend_from_slice(&frame);
                    if joined.len() >= JOIN_LIMIT {
                        writer.write_all(&joined).await?;
                        joined.clear();
                    }
                }
                next = frames.try_recv().ok();
            }
            if !joined.is_empty() {
                writer.write_all(&joined).await?;
            }
            writer.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                debug!(%error, "writing session frames failed");
                return WriteEnd::Failed(error);
            }
            Err(_) => {
                debug!(
                    write_timeout_ms = timeout.as_millis() as u64,
                    "the peer took no session frame within the write timeout"
                );
                return WriteEnd::TimedOut;
            }
        }
    }
    let _ = tokio::time::timeout(timeout, writer.shutdown()).await;
    WriteEnd::Closed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(frame: &Frame) -> Bytes {
        crate::session::encode_frame(frame)
    }

    #[tokio::test]
    async fn frames_cross_a_duplex_stream_in_order() {
        let (client, server) = tokio::io::duplex(64);
        let (tx, mut rx) = mpsc::channel(8);
        let writer =
            tokio::spawn(
                async move { write_frames(client, &mut rx, Duration::from_secs(5)).await },
            );
        let big = Bytes::from(vec![7u8; 10_000]);
        tx.send(encoded(&Frame::Ping { nonce: 1 })).await.unwrap();
        tx.send(encoded(&Frame::TaskAccepted {
            task_id: "t".repeat(300),
        }))
        .await
        .unwrap();
        tx.send(encoded(&Frame::TaskResultChunk {
            task_id: "t1".into(),
            payload: big.clone(),
        }))
        .await
        .unwrap();
        drop(tx);

        let mut server = server;
        let mut decoder = FrameDecoder::new(1 << 20);
        let first = read_frame(&mut server, &mut decoder, 16).await.unwrap();
        assert!(matches!(first, Some(Frame::Ping { nonce: 1 })));
        let second = read_frame(&mut server, &mut decoder, 16).await.unwrap();
        assert!(matches!(second, Some(Frame::TaskAccepted { task_id }) if task_id.len() == 300));
        let third = read_frame(&mut server, &mut decoder, 16).await.unwrap();
        assert!(matches!(third, Some(Frame::TaskResultChunk { payload, .. }) if payload == big));
        assert!(read_frame(&mut server, &mut decoder, 16)
            .await
            .unwrap()
            .is_none());
        assert!(matches!(writer.await.unwrap(), WriteEnd::Closed));
    }

    #[tokio::test]
    async fn end_inside_a_frame_is_an_error() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let whole = encoded(&Frame::Ping { nonce: 9 });
        client.write_all(&whole[..whole.len() - 2]).await.unwrap();
        drop(client);
        let mut decoder = FrameDecoder::new(1 << 20);
        let error = read_frame(&mut server, &mut decoder, 16).await.unwrap_err();
        assert!(
            matches!(error, StreamError::Truncated { buffered } if buffered == whole.len() - 2),
            "{error}"
        );
    }

    #[tokio::test]
    async fn unread_stream_times_out_writer() {
        let (client, _server) = tokio::io::duplex(16);
        let (tx, mut rx) = mpsc::channel(8);
        let writer = tokio::spawn(async move {
            let end = write_frames(client, &mut rx, Duration::from_millis(50)).await;
            (end, rx)
        });
        tx.send(Bytes::from(vec![0u8; 1024])).await.unwrap();
        // The writer ends on its own while the sender is still open.
        let (end, rx) = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer stops after its timeout")
            .unwrap();
        assert!(matches!(end, WriteEnd::TimedOut), "{end:?}");
        drop(rx);
        assert!(tx.send(Bytes::from_static(b"x")).await.is_err());
    }
}
