//! Request and response bodies: size-limited JSON in, JSON and streams out.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::problem::ApiError;

pub type ResponseBody = BoxBody<Bytes, Infallible>;
pub type Response = http::Response<ResponseBody>;

pub fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).boxed()
}

pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec(value).expect("API types serialize");
    json_bytes_response(status, Bytes::from(body))
}

/// Returns a response with `status` and `body`, typed as JSON.
fn json_bytes_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = http::Response::new(full_body(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Returns a JSON response whose body buffer is zeroed when the response is
/// dropped, for bodies that carry a secret value. The buffer is sized before
/// it is written, so no reallocation leaves a copy behind.
// NOTE: hyper's HTTP/2 send buffer and rustls's record buffers still contain
// copies of the body, which are not zeroed.
pub fn secret_json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut length = ByteCount(0);
    serde_json::to_writer(&mut length, value).expect("API types serialize");
    let mut buffer = Zeroizing::new(Vec::with_capacity(length.0));
    serde_json::to_writer(&mut *buffer, value).expect("API types serialize");
    json_bytes_response(status, Bytes::from_owner(buffer))
}

/// A writer that only counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads the whole body, up to `limit` bytes (413 beyond it).
pub async fn read_bytes(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!("the request body exceeds the limit of {limit} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(
            "body-unreadable",
            format!("the request body could not be read: {e}"),
        )),
    }
}

/// Reads and parses a JSON object body; a parse error names the position and the problem.
pub async fn read_json<T: DeserializeOwned>(body: Incoming, limit: usize) -> Result<T, ApiError> {
    let bytes = read_bytes(body, limit).await?;
    parse_json_object(&bytes)
}

/// Parses a request body that must be a JSON object. Structs with derived
/// `Deserialize` also accept an array of their fields in order, which no
/// operation documents, so anything but an object is rejected first.
pub fn parse_json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        let found = match first {
            None => "the body is empty".to_owned(),
            Some(byte) => format!("it starts with {:?}", char::from(*byte)),
        };
        return Err(ApiError::bad_request(
            "invalid-json",
            format!("the request body must be a JSON object; {found}"),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid-json",
            format!("the request body is not valid JSON for this operation: {e}"),
        )
    })
}

/// A response or request body fed from a channel, one chunk per message.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    pub fn new(rx: mpsc::Receiver<Bytes>) -> ChannelBody {
        ChannelBody { rx }
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Named {
        #[serde(default)]
        name: Option<String>,
    }

    #[test]
    fn json_object_accepted() {
        let parsed: Named = parse_json_object(b" \n{\"name\": \"a\"}").unwrap();
        assert_eq!(parsed.name.as_deref(), Some("a"));
    }

    #[test]
    fn json_array_of_fields_rejected() {
        let err = parse_json_object::<Named>(b"[null]").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.problem, "invalid-json");
        assert!(err.detail.contains("starts with '['"), "{}", err.detail);
    }

    #[test]
    fn empty_body_rejected() {
        let err = parse_json_object::<Named>(b"  ").unwrap_err();
        assert_eq!(err.problem, "invalid-json");
        assert!(err.detail.contains("empty"), "{}", err.detail);
    }
}
