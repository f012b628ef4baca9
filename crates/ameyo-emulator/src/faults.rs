//! Fault injection: the faults a test can switch on, the answers they produce, and
//! the listener that refuses connections during an [`Outage::Refuse`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The servlet container's page for a 500.
pub(crate) const HTML_500: &str =
    "<html><head><title>Error 500</title></head><body>Internal Server Error</body></html>";
/// The front proxy's page during an outage.
pub(crate) const HTML_503: &str =
    "<html><head><title>Error 503</title></head><body>Service Unavailable</body></html>";

/// Misbehaviour to inject into API calls (never into the admin endpoints).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Faults {
    /// 0.0..=1.0: share of API calls answered 500 with an HTML page.
    pub error_rate: f64,
    /// Added to every API call.
    pub latency_ms: u64,
    /// Serde: `"unavailable"` | `"refuse"`.
    pub outage: Option<Outage>,
    /// 0 = off; else every Nth API call gets 429 with `Retry-After`.
    pub rate_limit_every: u64,
    /// Value of `Retry-After` on 429 and 503 (1 when 0).
    pub retry_after_secs: u64,
    /// Create and update of these userIds answer 400 InvalidInput (a permanent error).
    pub reject_user_ids: Vec<String>,
}

impl Faults {
    pub(crate) fn retry_after(&self) -> u64 {
        self.retry_after_secs.max(1)
    }
}

/// How Ameyo is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outage {
    /// Every API call answers 503 with `Retry-After` and an HTML page.
    Unavailable,
    /// Connections are accepted and dropped at once (only when served over TCP by
    /// [`Emulator::serve`](crate::Emulator::serve); a router driven in-process answers
    /// normally).
    Refuse,
}

pub(crate) fn html_page(
    status: StatusCode,
    page: &'static str,
    retry_after: Option<u64>,
) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))],
        page,
    )
        .into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

pub(crate) fn too_many_requests(retry_after: u64) -> Response {
    let body = json!({
        "message": "too.many.requests",
        "code": 429,
        "info": null,
        "status": 429,
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

/// A TCP listener that, during an [`Outage::Refuse`], drops every connection it
/// accepts, and hands out connections that close themselves at their next read.
pub(crate) struct RefusingListener {
    pub(crate) inner: TcpListener,
    pub(crate) refusing: Arc<AtomicBool>,
}

impl axum::serve::Listener for RefusingListener {
    type Io = RefusableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            if self.refusing.load(Ordering::SeqCst) {
                drop(stream);
                continue;
            }
            let stream = RefusableStream {
                inner: stream,
                refusing: self.refusing.clone(),
            };
            return (stream, addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that reads as closed once the outage is `Refuse`, so a kept-alive
/// connection from before the outage does not keep working through it.
pub(crate) struct RefusableStream {
    inner: TcpStream,
    refusing: Arc<AtomicBool>,
}

impl AsyncRead for RefusableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.refusing.load(Ordering::SeqCst) {
            // Reading nothing is end of stream: the server closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for RefusableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
