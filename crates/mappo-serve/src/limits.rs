//! Connection limits — what keeps slow or hostile clients from starving the others:
//!
//! - the accept loop ([`serve_connections`]): at most `serve.max_connections` open at once (one
//!   beyond is answered 503 and closed), each connection served by hyper's HTTP/1 with a header
//!   read timeout of `serve.header_timeout_ms` (which also closes a kept-alive connection idle
//!   that long); graceful shutdown lets in-flight requests finish;
//! - the body deadline ([`read_body`]): a request's whole body must arrive within
//!   `serve.body_timeout_ms` (408 otherwise) — a deadline for the body, not per chunk, so a
//!   client sending a byte a second cannot hold a handler.

use std::future::Future;
use std::sync::Arc;
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
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

/// Answers 503 and closes, reading (for at most a second) what the client sent so that the
/// answer is not lost to a reset.
async fn refuse(mut stream: TcpStream, answer: Arc<Vec<u8>>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
