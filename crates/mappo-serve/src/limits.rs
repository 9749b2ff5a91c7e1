//! Connection limits — what keeps slow or hostile clients from starving the others:
//!
//! - the accept loop ([`serve_connections`]): at most `serve.max_connections` open at once (one
//!   beyond is answered 503 and closed), each connection served by hyper's HTTP/1 with a header
//!   read timeout of `serve.header_timeout_ms` (which also closes a kept-alive connection idle
//!   that long); graceful shutdown lets in-flight requests finish;
//! - the body deadline ([`read_body`]): a request's whole body must arrive within
//!   `serve.body_timeout_ms` (408 otherwise) — a deadline for the body, not per chunk, so a
//!   client sending a byte a second cannot hold a handler;
//! - the lingering close ([`Lingering`]): a connection the server ends after answering on it
//!   (`Connection: close` after a 408 or 413, a kept-alive one idle past the header timeout)
//!   is half-closed and drained for up to
//!   [`LINGER`] before the socket is dropped, so that bytes the client is still sending do not
//!   make the kernel answer with a reset — which would throw away the answer the client has
//!   not read yet (the lingering close of Apache and nginx).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Reads the whole request body within `serve.body_timeout_ms` and at most
/// `serve.max_body_bytes`, then hands the request on with the body in memory: a body that does
/// not arrive in time is 408 (the connection is closed), a larger one 413, a broken one 400.
/// Runs after the API key check, so an unauthenticated client never makes the server buffer.
pub(crate) async fn read_body(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let limit = st.cfg.max_body_bytes;
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "the request body is larger than serve.max_body_bytes")
    };
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return close(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("the request body could not be read: {e}"))
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    };
    let wait = Duration::from_millis(st.cfg.body_timeout_ms);
    let err = match tokio::time::timeout(wait, read).await {
        Ok(Ok(())) => return next.run(Request::from_parts(parts, Body::from(buf))).await,
        Ok(Err(e)) => e,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within serve.body_timeout_ms = {} ms",
                st.cfg.body_timeout_ms
            ),
        ),
    };
    close(err)
}

/// `err` with `Connection: close`: the rest of the body is not read, so the connection cannot
/// carry another request.
fn close(err: ApiError) -> Response {
    let mut resp = err.into_response();
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Accepts connections on `listener` and serves `app` on each until `shutdown` completes; then
/// stops accepting, lets every connection finish its in-flight request and returns.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    st: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = st.cfg.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(st.cfg.header_timeout_ms))
        .keep_alive(true);
    let service = TowerToHyperService::new(app);
    let refusal = Arc::new(refusal(max));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: the next accept may succeed once
                    // connections close; a per-connection error (reset before accept) is not ours.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            st.metrics.connections_refused.inc();
            tokio::spawn(refuse(stream, refusal.clone()));
            continue;
        };
        let conn = graceful.watch(http.serve_connection(
            TokioIo::new(Lingering { stream: Some(stream), answered: false }),
            service.clone(),
        ));
        let metrics = st.metrics.clone();
        metrics.connections_open.inc();
        tokio::spawn(async move {
            // A header timeout or a client gone mid-request ends the connection; nothing to do.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            metrics.connections_open.dec();
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The answer to a connection beyond `serve.max_connections`.
fn refusal(max: usize) -> Vec<u8> {
    let body = serde_json::to_string(&ErrorBody {
        error: format!("too many connections: serve.max_connections = {max} are open; retry later"),
    })
    .unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers 503 and closes, reading (for at most [`LINGER`]) what the client sent so that the
/// answer is not lost to a reset.
async fn refuse(mut stream: TcpStream, answer: Arc<Vec<u8>>) {
    if tokio::time::timeout(Duration::from_secs(1), stream.write_all(&answer)).await.is_ok() {
        linger(stream).await;
    }
}

/// How long a closed connection is drained before its socket is dropped.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// A connection's socket that, when hyper drops it, is not closed at once: it is half-closed
/// (the answer already written is followed by a FIN) and read until the client closes its side
/// or [`LINGER`] passes. Closing a socket with unread bytes, or receiving bytes after the close,
/// makes the kernel send a reset, and a client's kernel that receives a reset discards the
/// answer it has not handed to the client yet: a slow body would see its 408 vanish.
/// A connection that was never answered (a slowloris one, an idle one) has nothing to lose and
/// is closed at once.
struct Lingering {
    stream: Option<TcpStream>,
    /// Whether the server wrote anything on this connection.
    answered: bool,
}

impl Lingering {
    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream.as_mut().ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection closed"))
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.answered = true;
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.answered = true;
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else { return };
        if !self.answered {
            return;
        }
        // Outside a runtime (the process is ending) there is nothing to linger for.
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(linger(stream));
    }
}

/// Half-closes `stream` and reads what the client still sends until it closes its side, an
/// error, or [`LINGER`]; then the socket is dropped.
async fn linger(mut stream: TcpStream) {
    let _ = tokio::time::timeout(LINGER, async {
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
