//! Serving the router to a network anyone may reach: every connection and request is
//! bounded in time, connections are capped, and running out of file descriptors slows
//! accepting down instead of spinning.
//!
//! | bound | default | what happens |
//! |---|---|---|
//! | [`Limits::header_timeout`] | 10 s | a connection that has not sent a whole request head within it (from connecting, or from the head's first byte) is closed |
//! | [`Limits::idle_timeout`] | 60 s | a keep-alive connection with no request for that long is closed; so is one whose response the client stops reading |
//! | [`Limits::body_timeout`] | 30 s | a body not received within it is answered 408 `request_timeout` |
//! | [`Limits::request_timeout`] | 30 s | a request whose handling runs longer is answered 503 `service_unavailable` |
//! | [`Limits::max_connections`] | 10,000 | further connections wait in the listen backlog |

use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// How long clients may take, and how many may be connected at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// To send a whole request head.
    pub header_timeout: Duration,
    /// To send a whole request body, once its head has arrived.
    pub body_timeout: Duration,
    /// For the server to answer, once the body has arrived.
    pub request_timeout: Duration,
    /// Between two requests on a keep-alive connection, and for a stalled response write.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then waits for
/// the requests in flight. Handlers see the client's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let app = app.layer(axum::middleware::from_fn_with_state(limits, deadlines));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut backoff = Backoff::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener, &permits) => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer, permit) = match accepted {
            Ok(accepted) => {
                backoff.reset();
                accepted
            }
            Err(e) => {
                // Out of file descriptors (or another resource): wait for connections to
                // close instead of retrying at once.
                let pause = backoff.next();
                tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "accept failed; pausing");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let phase = Arc::new(Mutex::new(Phase::Idle {
            since: Instant::now(),
            served: false,
        }));
        let io = TokioIo::new(Bounded::new(stream, phase.clone(), limits));
        let service = Tracked {
            app: app.clone(),
            peer,
            phase,
        };
        // The head and idle bounds are `Bounded`'s: hyper's own header timer also runs
        // while a keep-alive connection waits for its next request, so it cannot tell the
        // two apart.
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .serve_connection(io, service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> io::Result<(TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .map_err(io::Error::other)?;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => return Ok((stream, peer, permit)),
            // The client gave up before we accepted: nothing to pause for.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Pauses after failed accepts: 10 ms, doubling up to 1 s.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        self.0 = (self.0 + 1).min(8);
        Duration::from_millis(10 << (self.0 - 1)).min(Duration::from_secs(1))
    }

    fn reset(&mut self) {
        self.0 = 0;
    }
}

/// Where a connection is between requests, which says which bound applies to its reads.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request since `since`; `served` once it has answered one.
    Idle { since: Instant, served: bool },
    /// A request head has been arriving since `since`.
    Head { since: Instant },
    /// This many requests are being handled (the request and body timeouts bound them).
    Busy(u32),
}

/// The service of one connection: tells `Bounded` when requests start and end, and gives
/// handlers the client's address.
#[derive(Clone)]
struct Tracked {
    app: Router,
    peer: SocketAddr,
    phase: Arc<Mutex<Phase>>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        {
            let mut phase = self.phase.lock();
            *phase = match *phase {
                Phase::Busy(n) => Phase::Busy(n + 1),
                _ => Phase::Busy(1),
            };
        }
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let (app, phase) = (self.app.clone(), self.phase.clone());
        Box::pin(async move {
            let response = app.oneshot(req).await;
            {
                let mut phase = phase.lock();
                *phase = match *phase {
                    Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
                    _ => Phase::Idle {
                        since: Instant::now(),
                        served: true,
                    },
                };
            }
            // hyper may have polled the read side while the request was busy (no
            // deadline then) and not poll it again until bytes arrive: have the
            // connection polled once more, so that `Bounded` arms the idle deadline.
            std::future::poll_fn(|cx| {
                cx.waker().wake_by_ref();
                Poll::Ready(())
            })
            .await;
            response
        })
    }
}

/// A connection whose reads fail with `TimedOut` past the head and idle bounds, and
/// whose writes fail when the client has read nothing for the idle bound.
struct Bounded {
    stream: TcpStream,
    phase: Arc<Mutex<Phase>>,
    limits: Limits,
    read_deadline: Pin<Box<Sleep>>,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl Bounded {
    fn new(stream: TcpStream, phase: Arc<Mutex<Phase>>, limits: Limits) -> Self {
        Self {
            stream,
            phase,
            limits,
            read_deadline: Box::pin(tokio::time::sleep(limits.header_timeout)),
            write_deadline: None,
        }
    }

    /// When a read still pending must give up, if ever.
    fn read_deadline(&self) -> Option<Instant> {
        match *self.phase.lock() {
            Phase::Idle {
                since,
                served: false,
            }
            | Phase::Head { since } => Some(since + self.limits.header_timeout),
            Phase::Idle { since, .. } => Some(since + self.limits.idle_timeout),
            Phase::Busy(_) => None,
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let mut phase = this.phase.lock();
                    if let Phase::Idle { .. } = *phase {
                        *phase = Phase::Head {
                            since: Instant::now(),
                        };
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.read_deadline() else {
                    return Poll::Pending;
                };
                if this.read_deadline.deadline() != deadline {
                    this.read_deadline.as_mut().reset(deadline);
                }
                ready!(this.read_deadline.as_mut().poll(cx));
                Poll::Ready(Err(timed_out("reading the request")))
            }
        }
    }
}

impl Bounded {
    /// `write` as it went, failing once the client has taken nothing for the idle bound.
    fn bound_write(
        &mut self,
        cx: &mut Context<'_>,
        write: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if write.is_ready() {
            self.write_deadline = None;
            return write;
        }
        let idle = self.limits.idle_timeout;
        let deadline = self
            .write_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(Err(timed_out("writing the response")))
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(&mut self.stream).poll_write(cx, data);
        self.bound_write(cx, write)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.bound_write(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Reads the whole body within [`Limits::body_timeout`] (408 past it), then gives the
/// handler [`Limits::request_timeout`] (503 past it). One timer each, started in turn:
/// tower-http's body timeout bounds each chunk rather than the body, and racing it with a
/// request timeout would answer a stalled upload 503 or 408 by chance.
async fn deadlines(
    axum::extract::State(limits): axum::extract::State<Limits>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, crate::MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if crate::caused_by::<http_body_util::LengthLimitError>(&e) => {
            return ApiError::too_large(crate::MAX_BODY_BYTES).into_response()
        }
        Ok(Err(_)) => {
            return ApiError::bad_request("the request body could not be read").into_response()
        }
        Err(_) => return ApiError::body_timeout(limits.body_timeout).into_response(),
    };
    let req = Request::from_parts(parts, Body::from(bytes));
    match tokio::time::timeout(limits.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::request_timeout(limits.request_timeout).into_response(),
    }
}
