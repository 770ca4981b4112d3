//! Meta RPCs over plain length-prefixed frames: the transport clients and
//! workers use to reach meta, on the same port as its gRPC server.
//!
//! Why: a metadata call is a few hundred bytes, and over HTTP/2 each one
//! costs HPACK work and two extra task hand-offs (the h2 connection tasks
//! on both sides). On a small machine those hand-offs (thread wake-ups)
//! were most of a call's cost. Frames keep the gRPC *messages* and
//! metadata — the tonic-generated client and server run unchanged on top —
//! and drop the HTTP/2 machinery: a caller writes its request to the socket
//! itself, one reader task per connection completes calls, and the server
//! runs a connection's calls inside that connection's task.
//!
//! Wire format, after the client's `MAGIC`+version and the server's echo:
//! each frame is `u32 length` (of what follows), `u8 kind`, `u64 call id`,
//! then for a request `u16 path length, path, headers, body`, for a response
//! `headers, body`; pings and pongs carry nothing. Headers are `u16 count`
//! then `(u16 name length, name, u32 value length, value)`. Bodies are gRPC
//! length-prefixed messages, exactly as tonic encodes them. A malformed
//! frame closes the connection; its calls fail as "unavailable" and retry.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// First bytes a frame client sends; an HTTP/2 client sends "PRI " instead.
pub const MAGIC: &[u8; 4] = b"CVRP";
const VERSION: u8 = 1;
const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;
const PING: u8 = 3;
const PONG: u8 = 4;
/// Largest frame accepted (the biggest listing a client decodes, plus room).
pub const MAX_FRAME: usize = (256 << 20) + (64 << 10);
/// How often an idle or busy client checks that the server still answers.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// How long a server waits for a connection's greeting.
const GREETING_WAIT: Duration = Duration::from_secs(10);
/// Nothing heard for this long (pings unanswered): the server is gone.
const DEAD_AFTER: Duration = Duration::from_millis(2500);

type Reply = std::result::Result<(HeaderMap, Bytes), tonic::Status>;

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

fn put_headers(out: &mut BytesMut, h: &HeaderMap) {
    let n = h.len().min(u16::MAX as usize);
    out.put_u16_le(n as u16);
    for (k, v) in h.iter().take(n) {
        out.put_u16_le(k.as_str().len() as u16);
        out.put_slice(k.as_str().as_bytes());
        out.put_u32_le(v.len() as u32);
        out.put_slice(v.as_bytes());
    }
}

fn take(b: &mut Bytes, n: usize, what: &str) -> std::io::Result<Bytes> {
    if b.remaining() < n {
        return Err(bad(format!("malformed meta frame: {what} runs past the frame")));
    }
    Ok(b.split_to(n))
}

fn get_u16(b: &mut Bytes, what: &str) -> std::io::Result<usize> {
    Ok(take(b, 2, what)?.get_u16_le() as usize)
}

fn get_headers(b: &mut Bytes) -> std::io::Result<HeaderMap> {
    let n = get_u16(b, "header count")?;
    let mut h = HeaderMap::with_capacity(n);
    for _ in 0..n {
        let kl = get_u16(b, "header name length")?;
        let k = take(b, kl, "header name")?;
        let vl = take(b, 4, "header value length")?.get_u32_le() as usize;
        let v = take(b, vl, "header value")?;
        let k = HeaderName::from_bytes(&k).map_err(|e| bad(format!("malformed meta frame: header name: {e}")))?;
        let v = HeaderValue::from_maybe_shared(v).map_err(|e| bad(format!("malformed meta frame: header value: {e}")))?;
        h.append(k, v);
    }
    Ok(h)
}

/// Starts a frame in `out`; `finish` writes its length.
fn begin(out: &mut BytesMut, kind: u8, id: u64) -> usize {
    let at = out.len();
    out.put_u32_le(0);
    out.put_u8(kind);
    out.put_u64_le(id);
    at
}

fn finish(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Takes every complete frame off the front of `buf`.
fn split_frames(buf: &mut BytesMut, mut each: impl FnMut(u8, u64, Bytes) -> std::io::Result<()>) -> std::io::Result<()> {
    loop {
        if buf.len() < 4 {
            return Ok(());
        }
        let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if !(9..=MAX_FRAME).contains(&len) {
            return Err(bad(format!("malformed meta frame: length {len}")));
        }
        if buf.len() < 4 + len {
            // Room for what is announced, a step at a time: a header alone
            // must not make the reader hold 256 MiB.
            buf.reserve((4 + len - buf.len()).min(4 << 20));
            return Ok(());
        }
        buf.advance(4);
        let mut f = buf.split_to(len).freeze();
        let kind = f.get_u8();
        let id = f.get_u64_le();
        each(kind, id, f)?;
    }
}

// ---------------------------------------------------------------- client

/// One connection to a meta node speaking frames. Cheap to clone; calls
/// from many tasks share it. When it breaks (or the server stops answering
/// pings) every call on it fails as unavailable, and so do later ones: the
/// owner then connects again.
#[derive(Clone)]
pub struct FrameChannel {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    calls: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    /// Why the connection is unusable, once it is.
    closed: Mutex<Option<String>>,
    broken: AtomicBool,
    next: AtomicU64,
    timeout: Duration,
    /// Milliseconds since `born` when a frame last arrived.
    heard: AtomicU64,
    born: Instant,
    reader: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(r) = self.reader.lock().take() {
            r.abort();
        }
    }
}

/// What `FrameChannel::connect` found at the address.
pub enum Connected {
    Frames(FrameChannel),
    /// The server does not speak frames (an older meta): use gRPC.
    NotSupported,
}

impl FrameChannel {
    /// Connects and checks that the server answers the frame greeting
    /// within `connect_timeout`; `timeout` bounds each call.
    pub async fn connect(addr: &str, connect_timeout: Duration, timeout: Duration) -> std::io::Result<Connected> {
        let hostport = addr.split("://").last().unwrap_or(addr).trim_end_matches('/');
        let greet = async {
            let mut s = TcpStream::connect(hostport).await?;
            s.set_nodelay(true)?;
            let mut hello = MAGIC.to_vec();
            hello.push(VERSION);
            s.write_all(&hello).await?;
            let mut echo = [0u8; 5];
            match s.read_exact(&mut echo).await {
                Ok(_) if echo[..4] == MAGIC[..] && echo[4] == VERSION => Ok(Some(s)),
                // An HTTP/2 server answers with its own frames or hangs up.
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(e) => Err(e),
            }
        };
        let s = match tokio::time::timeout(connect_timeout, greet).await {
            Ok(Ok(Some(s))) => s,
            Ok(Ok(None)) => return Ok(Connected::NotSupported),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {connect_timeout:?}")))
            }
        };
        let (rd, wr) = s.into_split();
        let inner = Arc::new(Inner {
            addr: hostport.to_string(),
            writer: tokio::sync::Mutex::new(wr),
            calls: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
            broken: AtomicBool::new(false),
            next: AtomicU64::new(1),
            timeout,
            heard: AtomicU64::new(0),
            born: Instant::now(),
            reader: Mutex::new(None),
        });
        let reader = tokio::spawn(read_loop(rd, Arc::downgrade(&inner)));
        *inner.reader.lock() = Some(reader.abort_handle());
        tokio::spawn(keepalive(Arc::downgrade(&inner)));
        Ok(Connected::Frames(FrameChannel { inner }))
    }

    /// Whether the connection broke (its owner should connect again).
    pub fn is_broken(&self) -> bool {
        self.inner.broken.load(Ordering::Acquire)
    }
}

impl Inner {
    fn since_born(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Marks the connection unusable and fails every call waiting on it.
    fn fail(&self, why: String) {
        let mut closed = self.closed.lock();
        if closed.is_none() {
            *closed = Some(why.clone());
        }
        drop(closed);
        // After the reason, so a caller that sees `broken` can give it.
        self.broken.store(true, Ordering::Release);
        let calls: Vec<_> = self.calls.lock().drain().collect();
        for (_, tx) in calls {
            let _ = tx.send(Err(tonic::Status::unavailable(format!("meta {}: {why}", self.addr))));
        }
        if let Some(r) = self.reader.lock().take() {
            r.abort();
        }
    }

    async fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let mut w = self.writer.lock().await;
        // A caller dropped mid-write (its deadline, a cancelled task) would
        // leave half a frame on the stream: the connection is given up then.
        struct Sending<'a>(&'a Inner, bool);
        impl Drop for Sending<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.fail("a call was dropped while its request was being sent".into());
                }
            }
        }
        let mut guard = Sending(self, false);
        let res = w.write_all(frame).await;
        guard.1 = true;
        res
    }

    async fn call(self: Arc<Self>, req: http::Request<tonic::body::Body>) -> std::result::Result<http::Response<Reply1>, tonic::Status> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map_err(|e| tonic::Status::internal(format!("request body: {e}")))?.to_bytes();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let path = parts.uri.path();
        let mut out = BytesMut::with_capacity(64 + path.len() + body.len());
        let at = begin(&mut out, REQUEST, id);
        out.put_u16_le(path.len() as u16);
        out.put_slice(path.as_bytes());
        put_headers(&mut out, &parts.headers);
        out.put_slice(&body);
        finish(&mut out, at);
        let (tx, rx) = oneshot::channel();
        {
            // Checked under the calls lock: `fail` marks the connection
            // broken first and drains the calls after.
            let mut calls = self.calls.lock();
            if self.broken.load(Ordering::Acquire) {
                let why = self.closed.lock().clone().unwrap_or_default();
                return Err(tonic::Status::unavailable(format!("meta {}: {why}", self.addr)));
            }
            calls.insert(id, tx);
        }
        // Removes the call if this future is dropped (caller's deadline).
        struct Forget<'a>(&'a Inner, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.calls.lock().remove(&self.1);
            }
        }
        let _forget = Forget(&*self, id);
        if let Err(e) = self.send(&out).await {
            self.fail(format!("send failed: {e}"));
        }
        let reply = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(tonic::Status::unavailable(format!("meta {}: connection closed", self.addr))),
            Err(_) => {
                return Err(tonic::Status::deadline_exceeded(format!("meta {}: no answer within {:?}", self.addr, self.timeout)))
            }
        };
        let (headers, data) = reply;
        let mut resp = http::Response::new(Reply1::new(data, headers));
        resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        if resp.body().data.is_none() {
            // Trailers-only (an error): tonic reads the status from the headers.
            let trailers = resp.body_mut().trailers.take().unwrap_or_default();
            resp.headers_mut().extend(trailers);
        }
        Ok(resp)
    }
}

async fn read_loop(mut rd: tokio::net::tcp::OwnedReadHalf, me: Weak<Inner>) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    let why = loop {
        match rd.read_buf(&mut buf).await {
            Ok(0) => break "connection closed by the meta node".to_string(),
            Ok(_) => {}
            Err(e) => break format!("read failed: {e}"),
        }
        let Some(inner) = me.upgrade() else { return };
        inner.heard.store(inner.since_born(), Ordering::Relaxed);
        let res = split_frames(&mut buf, |kind, id, mut f| {
            match kind {
                RESPONSE => {
                    let headers = get_headers(&mut f)?;
                    if let Some(tx) = inner.calls.lock().remove(&id) {
                        let _ = tx.send(Ok((headers, f)));
                    }
                }
                PONG => {}
                other => return Err(bad(format!("malformed meta frame: unexpected kind {other}"))),
            }
            Ok(())
        });
        if let Err(e) = res {
            break e.to_string();
        }
    };
    if let Some(inner) = me.upgrade() {
        inner.fail(why);
    }
}

/// Pings every `KEEPALIVE`; a server silent for `DEAD_AFTER` (hung, paused,
/// cut off) fails the connection within seconds, not at the call timeout.
async fn keepalive(me: Weak<Inner>) {
    let mut ping = BytesMut::new();
    let at = begin(&mut ping, PING, 0);
    finish(&mut ping, at);
    loop {
        tokio::time::sleep(KEEPALIVE).await;
        let Some(inner) = me.upgrade() else { return };
        if inner.broken.load(Ordering::Acquire) {
            return;
        }
        let silent = inner.since_born().saturating_sub(inner.heard.load(Ordering::Relaxed));
        if silent > DEAD_AFTER.as_millis() as u64 {
            inner.fail(format!("no answer for {silent} ms"));
            return;
        }
        // Never wait behind a stuck writer: a ping that cannot go out now
        // is skipped, and silence decides.
        if let Ok(mut w) = inner.writer.try_lock() {
            let sent = tokio::time::timeout(KEEPALIVE, w.write_all(&ping)).await;
            drop(w);
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return inner.fail(format!("send failed: {e}")),
                // Possibly half a ping on the stream: unusable.
                Err(_) => return inner.fail(format!("could not send for {KEEPALIVE:?}")),
            }
        };
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for FrameChannel {
    type Response = http::Response<Reply1>;
    type Error = tonic::Status;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.inner.clone().call(req).boxed()
    }
}

/// A unary response body: one message, then the trailers.
#[derive(Debug)]
pub struct Reply1 {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Reply1 {
    fn new(data: Bytes, trailers: HeaderMap) -> Reply1 {
        Reply1 { data: (!data.is_empty()).then_some(data), trailers: Some(trailers) }
    }
}

impl Body for Reply1 {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

// ---------------------------------------------------------------- server

/// Serves one frame connection (its `MAGIC` not yet read) with `svc`, a
/// tonic-generated server, until the client hangs up or sends a malformed
/// frame. Calls run concurrently inside this task (no hand-off per call),
/// except those `own_task` names by path — calls with real CPU work, such
/// as listings, which would otherwise hold every call of the connection to
/// one core. Answers ready together go out in one write.
pub async fn serve<S, B>(stream: TcpStream, svc: S, own_task: impl Fn(&str) -> bool) -> std::io::Result<()>
where
    S: tower_service::Service<http::Request<Full<Bytes>>, Response = http::Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut hello = [0u8; 5];
    match tokio::time::timeout(GREETING_WAIT, rd.read_exact(&mut hello)).await {
        Ok(r) => r?,
        Err(_) => return Err(bad(format!("no frame greeting within {GREETING_WAIT:?}"))),
    };
    if hello[..4] != MAGIC[..] || hello[4] != VERSION {
        return Err(bad(format!("unsupported meta frame greeting {hello:?} (this meta speaks version {VERSION})")));
    }
    wr.write_all(&hello).await?;
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut out = BytesMut::with_capacity(64 << 10);
    type Answer = BoxFuture<'static, (u64, HeaderMap, Bytes)>;
    let mut running: FuturesUnordered<Answer> = FuturesUnordered::new();
    loop {
        tokio::select! {
            n = rd.read_buf(&mut buf) => {
                if n? == 0 {
                    // The client is gone; its calls' answers have nowhere to go,
                    // but writes already proposed finish in Raft regardless.
                    return Ok(());
                }
                split_frames(&mut buf, |kind, id, mut f| {
                    match kind {
                        REQUEST => {
                            let pl = get_u16(&mut f, "path length")?;
                            let path = take(&mut f, pl, "path")?;
                            let headers = get_headers(&mut f)?;
                            let own = std::str::from_utf8(&path).is_ok_and(&own_task);
                            // A handler that panics fails its call, not the connection.
                            let call = std::panic::AssertUnwindSafe(handle(svc.clone(), id, path, headers, f))
                                .catch_unwind()
                                .map(move |r| r.unwrap_or_else(|_| failed(id, "meta call panicked".into())));
                            if own {
                                let task = tokio::spawn(call);
                                running.push(Box::pin(async move {
                                    task.await.unwrap_or_else(|e| failed(id, format!("meta call task: {e}")))
                                }));
                            } else {
                                running.push(Box::pin(call));
                            }
                        }
                        PING => {
                            let at = begin(&mut out, PONG, id);
                            finish(&mut out, at);
                        }
                        other => return Err(bad(format!("malformed meta frame: unexpected kind {other}"))),
                    }
                    Ok(())
                })?;
            }
            Some((id, headers, data)) = running.next(), if !running.is_empty() => {
                encode_response(&mut out, id, &headers, &data);
                while let Some(Some((id, headers, data))) = running.next().now_or_never() {
                    encode_response(&mut out, id, &headers, &data);
                }
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
    }
}

fn encode_response(out: &mut BytesMut, id: u64, headers: &HeaderMap, data: &Bytes) {
    if data.len() + 64 * 1024 > MAX_FRAME {
        // Too big for one frame: this call fails, not the connection.
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from(tonic::Code::ResourceExhausted as i32));
        let msg = format!("answer of {} bytes is over the {MAX_FRAME}-byte frame limit; ask for less (e.g. a smaller page)", data.len());
        if let Ok(v) = HeaderValue::from_str(&msg) {
            h.insert("grpc-message", v);
        }
        return encode_response(out, id, &h, &Bytes::new());
    }
    let at = begin(out, RESPONSE, id);
    put_headers(out, headers);
    out.put_slice(data);
    finish(out, at);
}

/// An internal-error answer to call `id`.
fn failed(id: u64, msg: String) -> (u64, HeaderMap, Bytes) {
    let mut h = HeaderMap::new();
    h.insert("grpc-status", HeaderValue::from(tonic::Code::Internal as i32));
    if let Ok(v) = HeaderValue::from_str(&msg.replace(|c: char| !c.is_ascii_graphic() && c != ' ', "?")) {
        h.insert("grpc-message", v);
    }
    (id, h, Bytes::new())
}

async fn handle<S, B>(mut svc: S, id: u64, path: Bytes, headers: HeaderMap, body: Bytes) -> (u64, HeaderMap, Bytes)
where
    S: tower_service::Service<http::Request<Full<Bytes>>, Response = http::Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let failed = |msg: String| failed(id, msg);
    let Ok(path) = std::str::from_utf8(&path) else { return failed("request path is not UTF-8".into()) };
    let mut req = match http::Request::builder().method(http::Method::POST).uri(path).version(http::Version::HTTP_2).body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return failed(format!("bad request path {path}: {e}")),
    };
    *req.headers_mut() = headers;
    req.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let Ok(()) = std::future::poll_fn(|cx| svc.poll_ready(cx)).await;
    let Ok(resp) = svc.call(req).await;
    let (parts, body) = resp.into_parts();
    let mut h = parts.headers;
    h.remove(http::header::CONTENT_TYPE);
    match body.collect().await {
        Ok(c) => {
            if let Some(t) = c.trailers() {
                h.extend(t.clone());
            }
            (id, h, c.to_bytes())
        }
        Err(e) => failed(format!("response body: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_any_boundary_and_headers_round_trip() {
        let mut h = HeaderMap::new();
        h.insert("x-cv-request-id", HeaderValue::from_static("ab-1"));
        h.append("x-many", HeaderValue::from_static("1"));
        h.append("x-many", HeaderValue::from_static("2"));
        let mut wire = BytesMut::new();
        for id in 1..=3u64 {
            encode_response(&mut wire, id, &h, &Bytes::from(vec![id as u8; 1000 * id as usize]));
        }
        let wire = wire.freeze();
        // Fed in pieces of every size: the same three frames come out.
        for step in [1usize, 7, 13, 4096, wire.len()] {
            let (mut buf, mut got) = (BytesMut::new(), Vec::new());
            for piece in wire.chunks(step) {
                buf.extend_from_slice(piece);
                split_frames(&mut buf, |kind, id, mut f| {
                    assert_eq!(kind, RESPONSE);
                    let back = get_headers(&mut f)?;
                    assert_eq!(back, h);
                    got.push((id, f));
                    Ok(())
                })
                .unwrap();
            }
            assert!(buf.is_empty());
            let ids: Vec<u64> = got.iter().map(|g| g.0).collect();
            assert_eq!(ids, vec![1, 2, 3], "step {step}");
            assert!(got.iter().all(|(id, f)| f.len() == 1000 * *id as usize && f.iter().all(|b| *b == *id as u8)));
        }
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        // A length below the fixed part, one above the limit, and headers
        // that run past the end of their frame.
        for len in [0u32, 8, (MAX_FRAME + 1) as u32] {
            let mut buf = BytesMut::from(&len.to_le_bytes()[..]);
            buf.extend_from_slice(&[0u8; 16]);
            let e = split_frames(&mut buf, |_, _, _| Ok(())).unwrap_err();
            assert!(e.to_string().contains("malformed meta frame"), "{e}");
        }
        let mut f = Bytes::from_static(&[3, 0, 5, 0, b'a']);
        let e = get_headers(&mut f).unwrap_err();
        assert!(e.to_string().contains("runs past the frame"), "{e}");
        let mut f = Bytes::from_static(&[1, 0, 2, 0, b'\n', b'a', 0, 0, 0, 0]);
        assert!(get_headers(&mut f).unwrap_err().to_string().contains("header name"));
    }

    #[tokio::test]
    async fn a_server_without_frames_is_reported_so_the_client_uses_grpc() {
        // An HTTP/2 server answers a strange preface with its own frames.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.write_all(b"\0\0\x06\x04\0\0\0\0\0").await;
            let mut sink = [0u8; 64];
            let _ = s.read(&mut sink).await;
        });
        let c = FrameChannel::connect(&addr, Duration::from_secs(5), Duration::from_secs(5)).await.unwrap();
        assert!(matches!(c, Connected::NotSupported));
    }

    /// A server that greets with frames and then hands its socket to
    /// `then`; the client connected to it.
    async fn greeting_server<F, Fut>(then: F) -> FrameChannel
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut hello = [0u8; 5];
            s.read_exact(&mut hello).await.unwrap();
            s.write_all(&hello).await.unwrap();
            then(s).await;
        });
        match FrameChannel::connect(&addr, Duration::from_secs(5), Duration::from_secs(120)).await.unwrap() {
            Connected::Frames(c) => c,
            Connected::NotSupported => panic!("the fake server greets with frames"),
        }
    }

    #[tokio::test]
    async fn a_silent_server_fails_calls_within_seconds() {
        // Reads, never answers (a hung or stopped meta process).
        let mut c = greeting_server(|mut s| async move {
            let mut sink = vec![0u8; 1 << 16];
            while s.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        })
        .await;
        let t = Instant::now();
        let req = http::Request::builder().uri("/curvine.meta.MetaService/Stat").body(tonic::body::Body::empty()).unwrap();
        let e = tower_service::Service::call(&mut c, req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
        assert!(e.message().contains("no answer for"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
        assert!(c.is_broken());
        // Later calls fail at once instead of waiting again.
        let req = http::Request::builder().uri("/x/Stat").body(tonic::body::Body::empty()).unwrap();
        let t = Instant::now();
        assert_eq!(tower_service::Service::call(&mut c, req).await.unwrap_err().code(), tonic::Code::Unavailable);
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_call_dropped_mid_send_breaks_the_connection() {
        // Reads nothing: a large request cannot be sent whole.
        let mut c = greeting_server(|s| async move {
            let _held_open = s;
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        let body = tonic::body::Body::new(Full::new(Bytes::from(vec![0u8; 64 << 20])));
        let req = http::Request::builder().uri("/x/Big").body(body).unwrap();
        let call = tower_service::Service::call(&mut c, req);
        assert!(tokio::time::timeout(Duration::from_millis(500), call).await.is_err(), "nobody reads: the send cannot finish");
        // Half a frame went out: the connection must not carry another call.
        assert!(c.is_broken());
    }
}
