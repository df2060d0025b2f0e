//! The HTTP layer under the ops API: hyper's HTTP/1.1 server with the limits an exposed
//! port needs, and the small [`Request`]/[`Response`] types the routes work with (so the
//! router is tested in-process without sockets).
//!
//! - keep-alive, and per-connection limits: request head at most
//!   [`HttpLimits::max_head_bytes`] (`431` beyond), no body accepted beyond
//!   [`HttpLimits::max_body_bytes`] (`413`; the API reads none), the head within
//!   [`HttpLimits::header_read_timeout`], and every write making progress within
//!   [`HttpLimits::write_timeout`] (a reader that stops reading is cut off);
//! - at most [`HttpLimits::max_connections`] connections: at the cap the oldest connection not
//!   in a request is closed to make room (idle keep-alive or slow-header connections cannot
//!   lock the probes out); when every connection is busy, a new one is answered `503` and
//!   closed. An accept error (out of file descriptors) backs off instead of spinning;
//! - graceful shutdown: on the shutdown future, connections finish the request in flight.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

pub use crate::config::HttpLimits;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The raw query string (without `?`).
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// A `GET` of `target` (path and query), for in-process tests of the router.
    pub fn get(target: &str) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request { method: "GET".into(), path: path.into(), query: query.into(), headers: Vec::new() }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The percent-decoded value of a `key=value` query parameter (RFC 3986: a literal `+`
    /// stays a `+`, so `from=…T00:00:00+01:00` keeps its offset; `%2B` is a `+` too).
    pub fn param(&self, key: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let k = percent_decode_str(k).decode_utf8_lossy();
            (k == key).then(|| percent_decode_str(v).decode_utf8_lossy().into_owned())
        })
    }
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response { status, content_type, body: body.into() }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }
}

/// Counters of the server (exported as metrics).
#[derive(Debug, Default)]
pub struct ServerStats {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Refused at the cap (every connection busy).
    pub refused: AtomicU64,
    /// Closed to make room at the cap.
    pub evicted: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// One open connection as the cap sees it.
struct Conn {
    seq: u64,
    busy: AtomicBool,
    close: Notify,
}

/// The open connections (for the cap and eviction).
#[derive(Default)]
struct Conns {
    map: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection if there is room (closing the oldest idle one at the cap).
    fn admit(&self, seq: u64, cap: usize, stats: &ServerStats) -> Option<Arc<Conn>> {
        let mut map = self.lock();
        if map.len() >= cap {
            let oldest_idle = map.values().filter(|c| !c.busy.load(Ordering::Relaxed)).min_by_key(|c| c.seq).cloned();
            let victim = oldest_idle?;
            map.remove(&victim.seq);
            victim.close.notify_one();
            stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let c = Arc::new(Conn { seq, busy: AtomicBool::new(false), close: Notify::new() });
        map.insert(seq, c.clone());
        Some(c)
    }

    fn remove(&self, seq: u64) {
        self.lock().remove(&seq);
    }
}

/// Serves `handler` on `listener` until `shutdown` completes; connections then finish the
/// request in flight (bounded by the write timeout).
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: HttpLimits,
    stats: Arc<ServerStats>,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    tokio::pin!(shutdown);
    let conns = Arc::new(Conns::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut seq = 0u64;
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            acc = listener.accept() => match acc {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off, never spin.
                    if stats.accept_errors.fetch_add(1, Ordering::Relaxed).is_multiple_of(100) {
                        tracing::warn!(error = %e, "HTTP accept failed; backing off.");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        seq += 1;
        let Some(conn) = conns.admit(seq, limits.max_connections.max(1), &stats) else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            // Best effort, never waiting: the client learns why.
            let _ =
                stream.try_write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let (handler, limits, conns, stats, mut stop) =
            (handler.clone(), limits.clone(), conns.clone(), stats.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let io = TokioIo::new(TimedIo::new(stream, limits.write_timeout));
            let service = hyper::service::service_fn({
                let (conn, limits) = (conn.clone(), limits.clone());
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let (handler, conn, limits) = (handler.clone(), conn.clone(), limits.clone());
                    async move {
                        conn.busy.store(true, Ordering::Relaxed);
                        let resp = respond(req, &limits, handler).await;
                        conn.busy.store(false, Ordering::Relaxed);
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_head_bytes.max(8192))
                .keep_alive(true);
            let served = builder.serve_connection(io, service);
            tokio::pin!(served);
            tokio::select! {
                _ = served.as_mut() => {}
                _ = conn.close.notified() => {}
                _ = async { drop(stop.wait_for(|s| *s).await) } => {
                    served.as_mut().graceful_shutdown();
                    let _ = served.await;
                }
            }
            conns.remove(conn.seq);
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    let _ = stop_tx.send(true);
}

/// Turns a hyper request into ours, runs the handler, and the answer back.
async fn respond<H, F>(
    req: hyper::Request<hyper::body::Incoming>,
    limits: &HttpLimits,
    handler: H,
) -> hyper::Response<Full<Bytes>>
where
    H: Fn(Request) -> F,
    F: Future<Output = Response>,
{
    let too_long = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > limits.max_body_bytes);
    let resp = if too_long {
        Response::text(413, "request body too large\n")
    } else {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let ours = Request {
            method: req.method().as_str().to_string(),
            path: req.uri().path().to_string(),
            query: req.uri().query().unwrap_or("").to_string(),
            headers,
        };
        handler(ours).await
    };
    let mut out = hyper::Response::new(Full::new(Bytes::from(resp.body)));
    *out.status_mut() = http::StatusCode::from_u16(resp.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let h = out.headers_mut();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(resp.content_type));
    h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    if too_long {
        h.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    out
}

/// A socket whose writes must make progress within `timeout`: a write (or flush) that stays
/// pending that long fails with `TimedOut`, and hyper closes the connection.
pub struct TimedIo<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> TimedIo<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        TimedIo { inner, timeout, stalled: None }
    }

    /// Passes `Ready` on (and forgets the stall); on `Pending` arms or polls the deadline.
    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let timeout = self.timeout;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write made no progress in time")))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn query_parameters_are_percent_decoded_and_keep_a_plus() {
        let r = Request::get("/api/x?from=2026-11-01T00:00:00+01:00&to=2026-11-02T00%3A00%3A00%2B01%3A00&a%20b=c&flag");
        assert_eq!(r.param("from").as_deref(), Some("2026-11-01T00:00:00+01:00"));
        assert_eq!(r.param("to").as_deref(), Some("2026-11-02T00:00:00+01:00"));
        assert_eq!(r.param("a b").as_deref(), Some("c"));
        assert_eq!(r.param("flag").as_deref(), Some(""));
        assert_eq!(r.param("missing"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_times_out() {
        // A peer that never reads: the pipe fills, the write stays pending.
        let (a, _b) = tokio::io::duplex(64);
        let mut io = TimedIo::new(a, Duration::from_secs(10));
        io.write_all(&[0u8; 64]).await.unwrap();
        let err = io.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_progressing_reader_is_not_cut_off() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = TimedIo::new(a, Duration::from_secs(10));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut n = 0;
            while n < 1024 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                n += tokio::io::AsyncReadExt::read(&mut b, &mut buf).await.unwrap();
            }
            n
        });
        io.write_all(&[0u8; 1024]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 1024);
    }

    #[test]
    fn the_cap_closes_the_oldest_idle_connection_and_refuses_when_all_are_busy() {
        let (conns, stats) = (Conns::default(), ServerStats::default());
        let c1 = conns.admit(1, 2, &stats).unwrap();
        let c2 = conns.admit(2, 2, &stats).unwrap();
        c2.busy.store(true, Ordering::Relaxed);
        let c3 = conns.admit(3, 2, &stats).expect("room made by closing c1");
        assert_eq!(stats.evicted.load(Ordering::Relaxed), 1);
        assert!(!conns.lock().contains_key(&c1.seq));
        c3.busy.store(true, Ordering::Relaxed);
        assert!(conns.admit(4, 2, &stats).is_none(), "all busy: refused");
    }
}
