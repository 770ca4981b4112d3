//! A view of the metadata service for clients and workers: a tonic channel
//! to the Raft leader among the configured meta addresses, following
//! leadership changes.
//!
//! - A node that is not the leader answers `NotLeader`, naming the leader
//!   when it knows it: the client moves there (even to an address not in its
//!   list) and retries at once. Without a hint, or when a node cannot be
//!   reached, it tries the next address, with backoff.
//! - Temporary failures are retried until `failover` has passed (an
//!   election takes one to two seconds); permanent ones return at once.
//! - Every call carries a request id (`x-cv-request-id`) that stays the same
//!   across its retries, so meta applies a retried write once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::frame_rpc::{Connected, FrameChannel};
use crate::proto::meta_service_client::MetaServiceClient;
use crate::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::{READ_HEADER, REQUEST_ID_HEADER};

tokio::task_local! {
    /// The request id of the call running in this task.
    static CALL_ID: (u64, u64);
}

/// Adds the call's headers to each request.
#[derive(Clone)]
pub struct CallHeaders {
    follower_reads: bool,
}

impl tonic::service::Interceptor for CallHeaders {
    fn call(&mut self, mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Ok((client, seq)) = CALL_ID.try_with(|id| *id) {
            if let Ok(v) = format!("{client:x}-{seq:x}").parse() {
                req.metadata_mut().insert(REQUEST_ID_HEADER, v);
            }
        }
        if self.follower_reads {
            req.metadata_mut().insert(READ_HEADER, tonic::metadata::MetadataValue::from_static("follower"));
        }
        Ok(req)
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const KEEPALIVE: Duration = Duration::from_secs(1);

/// A meta RPC stub as handed to `MetaClient::call`'s closure.
pub type MetaRpc = MetaServiceClient<InterceptedService<MetaChannel, CallHeaders>>;

/// How calls reach a meta node: frames (`frame_rpc`, the default) or
/// gRPC over HTTP/2 (a node that does not speak frames, or
/// `CURVINE_META_TRANSPORT=grpc`).
#[derive(Clone)]
pub enum MetaChannel {
    Frames(FrameChannel),
    Grpc(Channel),
}

impl MetaChannel {
    fn is_broken(&self) -> bool {
        matches!(self, MetaChannel::Frames(f) if f.is_broken())
    }
}

/// The connection in use: its address, its stub and its channel.
#[derive(Clone)]
struct Current {
    addr: String,
    rpc: MetaRpc,
    channel: MetaChannel,
}

impl tower_service::Service<http::Request<tonic::body::Body>> for MetaChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::codegen::StdError;
    type Future = futures::future::BoxFuture<'static, std::result::Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        match self {
            MetaChannel::Frames(f) => f.poll_ready(cx).map_err(Into::into),
            MetaChannel::Grpc(c) => c.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        use futures::FutureExt;
        match self {
            MetaChannel::Frames(f) => f.call(req).map(|r| r.map(|r| r.map(tonic::body::Body::new)).map_err(Into::into)).boxed(),
            MetaChannel::Grpc(c) => c.call(req).map(|r| r.map_err(Into::into)).boxed(),
        }
    }
}

pub struct MetaClient {
    addrs: Vec<String>,
    /// The channel in use and the address it goes to.
    current: Mutex<Option<Current>>,
    /// Where to connect next: a leader some node named, else `addrs[next]`.
    hint: Mutex<Option<String>>,
    next: AtomicUsize,
    retries: u32,
    timeout: Duration,
    failover: Duration,
    follower_reads: bool,
    /// Only gRPC, never frames (`CURVINE_META_TRANSPORT=grpc`).
    grpc_only: bool,
    /// Random per client and process (re-drawn after fork), and a counter.
    client_id: Mutex<(u32, u64)>,
    seq: AtomicU64,
}

impl MetaClient {
    pub fn with_options(
        addrs: Vec<String>,
        retries: u32,
        timeout: Duration,
        failover: Duration,
        follower_reads: bool,
    ) -> Result<MetaClient> {
        if addrs.is_empty() {
            return Err(Error::new(ErrorKind::Config, "no meta address given (use --meta HOST:PORT or CURVINE_META)"));
        }
        Ok(MetaClient {
            addrs,
            current: Mutex::new(None),
            hint: Mutex::new(None),
            next: AtomicUsize::new(0),
            retries,
            timeout,
            failover,
            follower_reads,
            grpc_only: std::env::var("CURVINE_META_TRANSPORT").is_ok_and(|v| v == "grpc"),
            client_id: Mutex::new((0, 0)),
            seq: AtomicU64::new(0),
        })
    }

    /// Uses gRPC only (or frames where the node speaks them).
    pub fn grpc_only(mut self, yes: bool) -> MetaClient {
        self.grpc_only = yes;
        self
    }

    /// The transport of the connection in use: "frames" or "grpc".
    pub fn transport(&self) -> Option<&'static str> {
        self.current.lock().as_ref().map(|c| match c.channel {
            MetaChannel::Frames(_) => "frames",
            MetaChannel::Grpc(_) => "grpc",
        })
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// This process's client id: a fork gets a new one, so parent and
    /// child never send the same request id.
    fn client_id(&self) -> u64 {
        let pid = std::process::id();
        let mut g = self.client_id.lock();
        if g.0 != pid || g.1 == 0 {
            // Time and pid: unique enough for ids that live minutes, and
            // distinct between a parent and its forked child.
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
            let mut x = t ^ (u64::from(pid) << 40) ^ (self as *const Self as u64).rotate_left(17);
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
            x ^= x >> 33;
            *g = (pid, x | 1);
        }
        g.1
    }

    async fn connect(&self, addr: &str) -> Result<Current> {
        let headers = CallHeaders { follower_reads: self.follower_reads };
        let wrap = |channel: MetaChannel| Current {
            addr: addr.to_string(),
            rpc: MetaServiceClient::with_interceptor(channel.clone(), headers.clone()).max_decoding_message_size(256 << 20),
            channel,
        };
        if !self.grpc_only {
            match FrameChannel::connect(addr, CONNECT_TIMEOUT, self.timeout).await {
                Ok(Connected::Frames(f)) => return Ok(wrap(MetaChannel::Frames(f))),
                Ok(Connected::NotSupported) => tracing::debug!(addr, "meta node does not speak frames; using gRPC"),
                Err(e) => return Err(Error::unavailable(format!("{addr}: {e}"))),
            }
        }
        let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
        let ep = Endpoint::from_shared(url)
            .map_err(|e| Error::new(ErrorKind::Config, format!("bad meta address '{addr}': {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(self.timeout)
            .tcp_nodelay(true)
            // A member that stops answering (hung, paused, cut off) is
            // noticed within seconds, not at the request timeout.
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE * 2)
            .keep_alive_while_idle(true);
        // connect_timeout covers TCP only; a peer that accepts but never
        // answers the HTTP/2 handshake must not hang us.
        let ch = match tokio::time::timeout(CONNECT_TIMEOUT, ep.connect()).await {
            Ok(r) => r.map_err(|e| Error::unavailable(format!("{addr}: {e}")))?,
            Err(_) => return Err(Error::unavailable(format!("{addr}: no answer within {CONNECT_TIMEOUT:?}"))),
        };
        Ok(wrap(MetaChannel::Grpc(ch)))
    }

    async fn channel(&self) -> Result<(String, MetaRpc)> {
        {
            let mut cur = self.current.lock();
            match &*cur {
                // A broken frame connection fails every call: connect again.
                Some(c) if c.channel.is_broken() => *cur = None,
                Some(c) => return Ok((c.addr.clone(), c.rpc.clone())),
                None => {}
            }
        }
        // The leader a node named first, then every configured address
        // once, starting after the last one used.
        let mut order: Vec<String> = self.hint.lock().take().into_iter().collect();
        let start = self.next.load(Ordering::Relaxed);
        order.extend((0..self.addrs.len()).map(|i| self.addrs[(start + i) % self.addrs.len()].clone()));
        let mut last = None;
        for addr in order {
            match self.connect(&addr).await {
                Ok(c) => {
                    let rpc = c.rpc.clone();
                    *self.current.lock() = Some(c);
                    return Ok((addr, rpc));
                }
                Err(e) => last = Some(e.to_string()),
            }
        }
        Err(Error::unavailable(format!(
            "cannot reach the meta service at {} ({}); is `cv up` running?",
            self.addrs.join(","),
            last.unwrap_or_default()
        )))
    }

    /// Stops using `addr`: the next call connects to `leader` if given,
    /// else to the configured address after it.
    fn drop_channel(&self, addr: &str, leader: Option<&str>) {
        let mut cur = self.current.lock();
        if matches!(&*cur, Some(c) if c.addr == addr) {
            *cur = None;
            match leader {
                Some(l) => *self.hint.lock() = Some(l.to_string()),
                None => {
                    let i = self.addrs.iter().position(|a| a == addr).map(|i| i + 1).unwrap_or(0);
                    self.next.store(i % self.addrs.len(), Ordering::Relaxed);
                }
            }
        }
    }

    /// Runs `f` against the leader, retrying temporary failures (moving to
    /// the leader, waiting out elections) for up to `failover`, with the
    /// same request id on every attempt. Permanent errors (not found,
    /// exists, …) return at once.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(MetaRpc) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let id = (self.client_id(), self.seq.fetch_add(1, Ordering::Relaxed) + 1);
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let res = match self.channel().await {
                Ok((addr, client)) => CALL_ID.scope(id, f(client)).await.map(|r| r.into_inner()).map_err(|s| {
                    let e = Error::from(s);
                    if e.is_temporary() {
                        self.drop_channel(&addr, e.leader_hint());
                    }
                    e
                }),
                Err(e) => Err(e),
            };
            match res {
                Err(e) if e.is_temporary() && (attempt < self.retries || started.elapsed() < self.failover) => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "retrying meta call");
                    // Straight to a named leader; otherwise back off (an
                    // election takes a second or two).
                    if e.leader_hint().is_none() || attempt > 3 {
                        tokio::time::sleep(Duration::from_millis((50u64 << attempt.min(4)).min(500))).await;
                    }
                }
                other => return other,
            }
        }
    }
}
