//! Session frames over a bare byte stream: an HTTP/1.1 connection that the
//! agent upgraded with `Upgrade: keygate-session`, used by both ends.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use keygate_protocol::{Frame, FrameDecoder, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

/// The token in an HTTP/1.1 `Upgrade` header that requests a bare session stream.
pub const UPGRADE_PROTOCOL: &str = "keygate-session";

/// Failure to read a frame from a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("reading the session stream failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection ended inside a frame, with {buffered} bytes of it received")]
    Truncated { buffered: usize },
    #[error("invalid frame: {0}")]
    Frame(#[from] FrameError),
}

/// Reads the next whole frame, or returns `Ok(None)` when the peer closed the
/// stream between frames. `min_space` is the free buffer space reserved for each
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
    /// Every sender is gone, and the last frame was written. Then the stream
    /// was shut down, or the shutdown failed or timed out.
    Closed,
    Failed(std::io::Error),
    /// A write or flush did not finish within the timeout: the peer stopped
    /// reading.
    TimedOut,
}

/// Writes queued frames to the stream, flushing whenever the queue is
/// empty. Each write (one frame, or joined frames of at most
/// [`JOIN_LIMIT`] bytes) and each flush must finish within `timeout`, so a
/// peer that stops reading cannot keep the connection open, while one that
/// reads steadily can take any amount. The queue stays open until the
/// caller drops it, so the caller can record how writing ended before the
/// senders see the queue close.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    frames: &mut mpsc::Receiver<Bytes>,
    timeout: Duration,
) -> WriteEnd {
    // TLS seals each write into records of its own and sends them at once,
    // so small frames are joined first: one record and one system call for
    // many frames. The join buffer is dropped whenever the queue is empty,
    // so an idle session keeps none.
    let mut joined = BytesMut::new();
    while let Some(first) = frames.recv().await {
        let mut next = Some(first);
        while let Some(frame) = next {
            if frame.len() >= JOIN_LIMIT {
                if !joined.is_empty() {
                    if let Err(end) = within(timeout, writer.write_all(&joined)).await {
                        return end;
                    }
                    joined.clear();
                }
                if let Err(end) = within(timeout, writer.write_all(&frame)).await {
                    return end;
                }
            } else {
                joined.extend_from_slice(&frame);
                if joined.len() >= JOIN_LIMIT {
                    if let Err(end) = within(timeout, writer.write_all(&joined)).await {
                        return end;
                    }
                    joined.clear();
                }
            }
            next = frames.try_recv().ok();
        }
        if !joined.is_empty() {
            if let Err(end) = within(timeout, writer.write_all(&joined)).await {
                return end;
            }
        }
        joined = BytesMut::new();
        if let Err(end) = within(timeout, writer.flush()).await {
            return end;
        }
    }
    let _ = tokio::time::timeout(timeout, writer.shutdown()).await;
    WriteEnd::Closed
}

/// Runs one write or flush with a time limit.
async fn within(
    timeout: Duration,
    io: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), WriteEnd> {
    match tokio::time::timeout(timeout, io).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => {
            debug!(%error, "writing session frames failed");
            Err(WriteEnd::Failed(error))
        }
        Err(_) => {
            debug!(
                write_timeout_ms = timeout.as_millis() as u64,
                "the peer took no session frame within the write timeout"
            );
            Err(WriteEnd::TimedOut)
        }
    }
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
    async fn slow_steady_reader_outlasts_the_timeout() {
        let (client, mut server) = tokio::io::duplex(1024);
        let (tx, mut rx) = mpsc::channel(16);
        let timeout = Duration::from_secs(1);
        let writer = tokio::spawn(async move { write_frames(client, &mut rx, timeout).await });
        // Ten frames of 16 KiB queued at once take at least 1.6 s at the
        // reader's pace, more than the timeout, but each write about 160 ms.
        for nonce in 0..10u8 {
            tx.send(Bytes::from(vec![nonce; JOIN_LIMIT])).await.unwrap();
        }
        drop(tx);
        let mut received = 0;
        let mut chunk = [0u8; 1024];
        let started = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            match server.read(&mut chunk).await.unwrap() {
                0 => break,
                n => received += n,
            }
        }
        assert!(started.elapsed() > timeout, "{:?}", started.elapsed());
        assert_eq!(received, 10 * JOIN_LIMIT);
        assert!(matches!(writer.await.unwrap(), WriteEnd::Closed));
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
