//! Recognizes a gateway's rejection of the agent's client certificate.
//!
//! With TLS 1.2 the rejection ends the handshake. With TLS 1.3 the client
//! finishes its side of the handshake before the gateway checks the
//! certificate, so the alert arrives on the first read, where the response to
//! the first request would be. [`FirstReadWatch`] catches the rustls error
//! there, below the HTTP layer, whose errors need not keep it.

use std::error::Error;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::AlertDescription;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// Returns the alert if `error`, or an error in its source chain, is a TLS
/// alert by which a server rejects a client certificate.
pub(super) fn rejected_certificate_alert(
    error: &(dyn Error + 'static),
) -> Option<AlertDescription> {
    match find_rustls_error(error)? {
        rustls::Error::AlertReceived(alert) if is_certificate_alert(*alert) => Some(*alert),
        _ => None,
    }
}

/// Alerts that reject a certificate: those a rustls 0.23 server sends for an
/// unacceptable client certificate, and the other certificate alerts of TLS.
/// rustls sends decrypt_error when a signature in the chain does not verify,
/// for example for a certificate from another CA with the same name as a trusted one.
fn is_certificate_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::DecryptError
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}

/// Walks the source chain. `io::Error::source` skips the error it wraps, so
/// the wrapped error of each `io::Error` is searched too.
fn find_rustls_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = error
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = find_rustls_error(inner) {
                return Some(tls);
            }
        }
        current = error.source();
    }
    None
}

/// The outcome of the first read from the gateway.
pub(super) enum FirstRead {
    Data,
    Closed,
    Failed {
        /// The certificate alert, if the read failed with one.
        rejected: Option<AlertDescription>,
    },
}

/// A stream that reports the outcome of its first completed read.
pub(super) struct FirstReadWatch<S> {
    inner: S,
    report: Option<oneshot::Sender<FirstRead>>,
}

impl<S> FirstReadWatch<S> {
    pub(super) fn new(inner: S) -> (FirstReadWatch<S>, oneshot::Receiver<FirstRead>) {
        let (report, outcome) = oneshot::channel();
        let watch = FirstReadWatch {
            inner,
            report: Some(report),
        };
        (watch, outcome)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstReadWatch<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let filled_before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(outcome) = &result {
            if let Some(report) = this.report.take() {
                let first = match outcome {
                    Ok(()) if buf.filled().len() > filled_before => FirstRead::Data,
                    Ok(()) => FirstRead::Closed,
                    Err(e) => FirstRead::Failed {
                        rejected: rejected_certificate_alert(e),
                    },
                };
                // The receiver is gone once the connection is dropped; nothing waits for the outcome then.
                let _ = report.send(first);
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstReadWatch<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert_in_io_error(alert: AlertDescription) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(alert),
        )
    }

    /// An error whose source is `inner`, like hyper's and tokio's wrappers.
    #[derive(Debug, thiserror::Error)]
    #[error("request failed")]
    struct Wrapper(#[source] io::Error);

    #[test]
    fn certificate_alerts_recognized() {
        for alert in [
            AlertDescription::BadCertificate,
            AlertDescription::UnsupportedCertificate,
            AlertDescription::CertificateRevoked,
            AlertDescription::CertificateExpired,
            AlertDescription::UnknownCA,
            AlertDescription::CertificateRequired,
        ] {
            let error = alert_in_io_error(alert);
            assert_eq!(rejected_certificate_alert(&error), Some(alert), "{alert:?}");
        }
    }

    #[test]
    fn alert_found_deeper_in_chain() {
        let error = Wrapper(alert_in_io_error(AlertDescription::CertificateRevoked));
        assert_eq!(
            rejected_certificate_alert(&error),
            Some(AlertDescription::CertificateRevoked)
        );
    }

    #[test]
    fn other_errors_not_rejections() {
        let unrelated_alert = alert_in_io_error(AlertDescription::HandshakeFailure);
        assert_eq!(rejected_certificate_alert(&unrelated_alert), None);

        // The agent rejecting the gateway's certificate is a local error, not an alert from the gateway.
        let local = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(rejected_certificate_alert(&local), None);

        let connection_refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(rejected_certificate_alert(&connection_refused), None);

        // Text that mentions certificates is not enough.
        let text = io::Error::other("received fatal alert: CertificateRevoked");
        assert_eq!(rejected_certificate_alert(&text), None);
    }
}
