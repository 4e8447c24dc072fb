//! HTTP plumbing shared by both listeners: responses with the security headers, bounded
//! JSON bodies, server-sent event streams, and serving one TLS connection.
#![forbid(unsafe_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;
pub type Resp = Response<Body>;

/// Header block limit (hyper's read buffer); larger header blocks are refused.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Time allowed to send the request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to send a request body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

/// A response with an arbitrary body and content type.
pub fn content(status: StatusCode, content_type: &'static str, data: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(full(data));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A JSON API response (never cached).
pub fn json<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = content(status, "application/json", body);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A JSON error: `{"error": "..."}`.
pub fn error(status: StatusCode, message: &str) -> Resp {
    json(status, &serde_json::json!({ "error": message }))
}

pub fn no_content() -> Resp {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Add the headers every response carries.
pub fn secure_headers(r: &mut Resp, csp: &str) {
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=63072000; includeSubDomains"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
}

/// Read a JSON body of at most `limit` bytes within [`BODY_READ_TIMEOUT`].
pub async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, Resp> {
    let ct_ok = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !ct_ok {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/json",
        ));
    }
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ));
        }
    }
    let collected = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(req.into_body(), limit).collect(),
    )
    .await;
    let bytes = match collected {
        Err(_) => return Err(error(StatusCode::REQUEST_TIMEOUT, "request body too slow")),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large",
                ));
            }
            return Err(error(
                StatusCode::BAD_REQUEST,
                "could not read the request body",
            ));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    parse_body(&bytes).map_err(|msg| error(StatusCode::BAD_REQUEST, &msg))
}

/// A request body as every handler reads it: a JSON object with known fields only. The
/// error is the client-facing text (bounded in length, never the body itself).
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    // Every body of this API is an object. serde would also fill a struct from a
    // positional array, which no client sends and nothing documents: refuse it.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("invalid JSON body: expected an object".into());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| format!("invalid JSON body: {}", truncate_msg(&e.to_string())))
}

fn truncate_msg(s: &str) -> String {
    s.chars().take(160).collect()
}

/// A server-sent event frame.
pub fn sse_frame(event: &str, id: Option<i64>, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + 48);
    if let Some(id) = id {
        s.push_str("id: ");
        s.push_str(&id.to_string());
        s.push('\n');
    }
    s.push_str("event: ");
    s.push_str(event);
    s.push('\n');
    // JSON never contains a raw line break, but split defensively on every line break the
    // event-stream format knows (\r\n, \r and \n), so data can never start a field (an
    // `id:` or `event:` line, or the end of the event) of its own.
    let normalised;
    let data = if data.contains('\r') {
        normalised = data.replace("\r\n", "\n").replace('\r', "\n");
        normalised.as_str()
    } else {
        data
    };
    for line in data.split('\n') {
        s.push_str("data: ");
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    Bytes::from(s)
}

/// A streaming `text/event-stream` response fed by a channel; the stream ends when the
/// sender is dropped.
pub fn sse_response(rx: mpsc::Receiver<Bytes>) -> Resp {
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = tokio_stream::StreamExt::map(stream, |b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// The `Last-Event-ID` a reconnecting client sent (0 when absent). Malformed → error.
pub fn last_event_id(req: &Request<Incoming>) -> Result<i64, Resp> {
    match req.headers().get("last-event-id") {
        None => Ok(0),
        Some(v) => parse_event_id(v.as_bytes()).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID must be a decimal event number",
            )
        }),
    }
}

/// Parse an event-stream resume id: 1–18 ASCII digits, no sign, no spaces.
pub fn parse_event_id(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 18 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Serve HTTP/1.1 on one (TLS) connection with the header limits and timeouts.
pub async fn serve_connection<I, S>(io: I, service: S)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Resp, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _ = http1(io, service).await;
}

fn http1<I, S>(io: I, service: S) -> hyper::server::conn::http1::Connection<TokioIo<I>, S>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Resp, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .max_headers(64)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
}

/// Where a request's handler leaves an event stream's channel when the connection itself
/// is to carry the stream (see [`event_stream`]). One per connection, put into each
/// request's extensions by [`serve_connection_handing_off`].
#[derive(Clone, Debug, Default)]
pub struct StreamHandoff(Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>);

/// An event-stream response. When the connection serves with a [`StreamHandoff`] (the
/// visitor listener), hyper writes only the response head (HTTP/1.0 framing: the body
/// runs until the connection closes) and then gives the connection back, and
/// [`write_event_stream`] writes the events on it without hyper's per-connection
/// buffers; otherwise it is an ordinary chunked streaming response.
pub fn event_stream(req: &Request<Incoming>, rx: mpsc::Receiver<Bytes>) -> Resp {
    let Some(slot) = req.extensions().get::<StreamHandoff>() else {
        return sse_response(rx);
    };
    match slot.0.lock() {
        Ok(mut s) => *s = Some(rx),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
    // A body of unknown length that ends at once: with an HTTP/1.0 head hyper frames it
    // by closing, so it writes the head, nothing else, and ends the connection's HTTP part.
    let empty = tokio_stream::empty::<Result<Frame<Bytes>, Infallible>>();
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(empty)));
    *r.version_mut() = hyper::Version::HTTP_10;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Like [`serve_connection`], but a request answered by [`event_stream`] ends the HTTP
/// part of the connection: the connection and the stream's channel are returned, for
/// [`write_event_stream`]. `service` gets the handoff slot to put into each request.
pub async fn serve_connection_handing_off<I, S>(
    io: I,
    make_service: impl FnOnce(StreamHandoff) -> S,
) -> Option<(I, mpsc::Receiver<Bytes>)>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Resp, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let slot = StreamHandoff::default();
    let parts = http1(io, make_service(slot.clone()))
        .without_shutdown()
        .await
        .ok()?;
    let mut io = parts.io.into_inner();
    let rx = slot.0.lock().ok().and_then(|mut s| s.take());
    match rx {
        Some(rx) => Some((io, rx)),
        None => {
            // hyper's own serving closes the connection this way (TLS close_notify).
            let _ = io.shutdown().await;
            None
        }
    }
}

/// Write an event stream's frames on a connection whose response head is already sent,
/// until the stream ends, the peer closes, or the peer sends anything (a client of an
/// event stream has nothing more to say on that connection). `held` (the connection's
/// slot under the listener's limit) is released when the stream ends.
pub async fn write_event_stream<I, H>(mut io: I, mut rx: mpsc::Receiver<Bytes>, held: H)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            _ = io.read(&mut probe) => return,
            frame = rx.recv() => match frame {
                Some(b) => {
                    if io.write_all(&b).await.is_err() || io.flush().await.is_err() {
                        return;
                    }
                }
                None => break,
            },
        }
    }
    let _ = io.shutdown().await;
    drop(held);
}

/// Path segments after a prefix, e.g. `/api/v1/operator/chats/7/accept` → `["7","accept"]`.
pub fn segments<'a>(path: &'a str, prefix: &str) -> Option<Vec<&'a str>> {
    path.strip_prefix(prefix)
        .map(|rest| rest.split('/').filter(|s| !s.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_strict() {
        assert_eq!(parse_event_id(b"42"), Some(42));
        assert_eq!(parse_event_id(b""), None);
        assert_eq!(parse_event_id(b"-1"), None);
        assert_eq!(parse_event_id(b" 1"), None);
        assert_eq!(parse_event_id(b"1e3"), None);
        assert_eq!(parse_event_id(b"9999999999999999999999"), None);
    }

    #[test]
    fn sse_frames_cannot_be_split_by_data() {
        let f = sse_frame("message", Some(3), "a\nevent: x");
        let s = std::str::from_utf8(&f).unwrap();
        assert_eq!(s, "id: 3\nevent: message\ndata: a\ndata: event: x\n\n");
        // A lone CR is a line break to an event-stream parser too.
        let f = sse_frame("message", None, "a\rid: 99\r\revent: x\r\nb");
        let s = std::str::from_utf8(&f).unwrap();
        assert_eq!(
            s,
            "event: message\ndata: a\ndata: id: 99\ndata: \ndata: event: x\ndata: b\n\n"
        );
    }

    proptest::proptest! {
        #[test]
        fn event_id_round_trips(n in 0i64..=999_999_999_999_999_999) {
            proptest::prop_assert_eq!(parse_event_id(n.to_string().as_bytes()), Some(n));
        }
        #[test]
        fn event_id_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = parse_event_id(&b);
        }
    }
}
