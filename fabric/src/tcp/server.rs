//! TCP data-plane server: one task per connection, requests handled in
//! order (so responses come back in request order and clients can keep
//! several requests in flight), block bytes sent with `sendfile`.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use curvine_common::{Error, ErrorKind, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};

use crate::frame::{Header, Op, CHUNK, HEADER_LEN};
use crate::msg::{self, ReadReq, WriteCommit, WriteData, WriteOpen};
use crate::range::RangePlan;
use crate::rdma::server::{Hub, Link};
use crate::rdma::wire::FLAG_RDMA;
use crate::rdma::RdmaOptions;
use crate::service::{BlockService, BlockSink, ReadSource};

/// What a data server offers beside TCP.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Device and buffers for clients that ask for RDMA (used only when the
    /// build has the `rdma` feature; the device is opened at the first
    /// ask); `None` refuses RDMA.
    pub rdma: Option<RdmaOptions>,
    /// Upper bound on one socket operation once a request is under way:
    /// sending a response (a peer that stops reading would otherwise pin
    /// `sendfile` for ever) or receiving the rest of a frame whose header
    /// arrived. On expiry the connection is closed.
    pub io_timeout: Duration,
    /// When set, a connection with a block open for write that sends
    /// nothing for this long is closed, which aborts its writes
    /// (reservation, temp file and the block's "being written" mark are
    /// released). Off by default: a live writer may legitimately pause for
    /// hours (a log appended through FUSE keeps its block open between
    /// lines), and TCP keepalive already reaps connections whose host
    /// vanished. Connections without open writes pin nothing but a
    /// descriptor.
    pub write_idle_timeout: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            rdma: Some(RdmaOptions::default()),
            // Twice the client's default io timeout: a slow but live peer
            // is the client's to give up on, not ours.
            io_timeout: Duration::from_secs(120),
            write_idle_timeout: None,
        }
    }
}

/// Serves `svc` on `listener` until `shutdown` resolves. Connection errors
/// close that connection only.
pub async fn serve(
    listener: TcpListener,
    svc: Arc<dyn BlockService>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_with(listener, svc, shutdown, ServeOptions::default()).await
}

pub async fn serve_with(
    listener: TcpListener,
    svc: Arc<dyn BlockService>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    opts: ServeOptions,
) -> Result<()> {
    let hub = Arc::new(Hub::new(opts.rdma));
    let limits = Limits { io: opts.io_timeout, write_idle: opts.write_idle_timeout };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    // EMFILE and friends: keep serving the connections we have.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                set_sndbuf(&stream, SNDBUF);
                set_keepalive(&stream);
                let (svc, hub) = (svc.clone(), hub.clone());
                tokio::spawn(async move {
                    if let Err(e) = Conn::new(stream, svc, hub, limits).run().await {
                        tracing::debug!(%peer, error = %e, "data connection closed");
                    }
                });
            }
        }
    }
}

/// Socket send buffer for data connections: large enough that one
/// `sendfile` call moves a whole pipelined response without waking up for
/// more room (the kernel caps it at net.core.wmem_max).
const SNDBUF: i32 = 8 << 20;

fn set_sndbuf(stream: &TcpStream, bytes: i32) {
    // SAFETY: setsockopt on an open socket with a valid int option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// SO_KEEPALIVE probing of data connections: a peer whose host vanished
/// (power loss, a cut link: no FIN, no RST) is detected within about
/// IDLE + INTVL * CNT = 60 s instead of the kernel's two hours, and its
/// connection (with any write it held open) is closed.
const KEEPIDLE_S: i32 = 30;
const KEEPINTVL_S: i32 = 10;
const KEEPCNT: i32 = 3;
/// TCP_USER_TIMEOUT: sent bytes unacknowledged for this long fail the
/// socket, so a vanished peer cannot hold a sending connection either
/// (keepalive alone does not probe while data is outstanding).
const USER_TIMEOUT_MS: i32 = 60_000;

fn setsockopt_int(stream: &TcpStream, level: i32, name: i32, v: i32) {
    // SAFETY: setsockopt on an open socket with a valid int option value.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            &v as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r != 0 {
        // Best effort: the io and idle timeouts still bound the connection.
        tracing::debug!(level, name, error = %std::io::Error::last_os_error(), "setsockopt failed");
    }
}

fn set_keepalive(stream: &TcpStream) {
    setsockopt_int(stream, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    setsockopt_int(stream, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPIDLE_S);
    setsockopt_int(stream, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPINTVL_S);
    setsockopt_int(stream, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPCNT);
    setsockopt_int(stream, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, USER_TIMEOUT_MS);
}

/// Open writes one connection may hold. A client writes one block per
/// connection at a time; the cap bounds what one peer can pin (space
/// reservations, buffers) with WriteOpens it never follows up.
pub(super) const MAX_WRITES_PER_CONN: usize = 16;

/// Timeouts of one connection (see `ServeOptions`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) io: Duration,
    pub(super) write_idle: Option<Duration>,
}

/// Runs `fut`, a socket operation, for at most `limit`; on expiry the
/// error is `Timeout` (the caller closes the connection: the stream may
/// hold half a frame).
pub(super) async fn bounded<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = std::io::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::new(ErrorKind::Timeout, format!("{what}: peer made no progress in {limit:?}"))),
    }
}

/// One frame of block data on its way to the block file.
pub(super) struct Piece {
    pub(super) offset: u64,
    pub(super) data: Vec<u8>,
    pub(super) crcs: Vec<u32>,
}

/// What a write task hands back: the sink, the first failure, and the
/// piece's buffer for reuse.
type Written = (Box<dyn BlockSink>, Option<Error>, Vec<u8>);

/// A block being written. The connection task only reads frames off the
/// socket; each frame is verified and appended by a blocking task while the
/// connection reads the next one, so socket reads and file writes overlap.
/// A blocking thread is used only while a frame is being written: an idle
/// session holds none (tokio's blocking pool is shared by the whole worker).
pub(super) struct WriteSession {
    block_id: u64,
    /// The sink, when no write task holds it.
    sink: Option<Box<dyn BlockSink>>,
    /// The frame being written, if any.
    inflight: Option<tokio::task::JoinHandle<Written>>,
    /// The first failure, reported at commit; later frames are dropped.
    failed: Option<Error>,
    /// A buffer a write task has finished with, for reuse.
    pub(super) spare: Option<Vec<u8>>,
    pub(super) next: u64,
    pub(super) ended: bool,
}

impl WriteSession {
    fn start(block_id: u64, sink: Box<dyn BlockSink>) -> WriteSession {
        WriteSession { block_id, sink: Some(sink), inflight: None, failed: None, spare: None, next: 0, ended: false }
    }

    /// Waits for the frame being written (if any) to be done.
    async fn settle(&mut self) -> Result<()> {
        if let Some(task) = self.inflight.take() {
            let (sink, failed, buf) =
                task.await.map_err(|e| Error::internal(format!("block {} writer failed: {e}", self.block_id)))?;
            self.sink = Some(sink);
            if self.failed.is_none() {
                self.failed = failed;
            }
            self.spare = Some(buf);
        }
        Ok(())
    }

    /// Hands `p` to a blocking task once the previous frame is written (at
    /// most one frame is written while the next is read: two buffers per
    /// session).
    pub(super) async fn push(&mut self, p: Piece) -> Result<()> {
        self.settle().await?;
        if self.failed.is_some() {
            self.spare = Some(p.data);
            return Ok(());
        }
        let mut sink = self.sink.take().ok_or_else(|| Error::internal("write session without its sink"))?;
        let block_id = self.block_id;
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            let failed = append_verified(block_id, &mut *sink, &p).err();
            (sink, failed, p.data)
        }));
        Ok(())
    }

    /// Waits for the last frame and returns the sink with the first failure.
    async fn finish(mut self) -> Result<(Box<dyn BlockSink>, Option<Error>)> {
        self.settle().await?;
        let sink = self.sink.take().ok_or_else(|| Error::internal("write session without its sink"))?;
        Ok((sink, self.failed.take()))
    }
}

fn append_verified(block_id: u64, sink: &mut dyn BlockSink, p: &Piece) -> Result<()> {
    for (i, (chunk, want)) in p.data.chunks(CHUNK as usize).zip(&p.crcs).enumerate() {
        if crate::crc::crc32c(chunk) != *want {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("block {block_id}: chunk at offset {} arrived corrupted", p.offset + i as u64 * CHUNK),
            ));
        }
    }
    sink.append(p.offset, &p.data, &p.crcs)
}

pub(super) struct Conn {
    stream: TcpStream,
    pub(super) svc: Arc<dyn BlockService>,
    pub(super) head: Vec<u8>,
    out: Vec<u8>,
    /// Dropping a session (e.g. when the connection dies) drops its sink
    /// (once a frame being written is done): an uncommitted block is
    /// discarded.
    pub(super) writes: HashMap<u64, WriteSession>,
    pub(super) hub: Arc<Hub>,
    /// This connection's RDMA queue pair, once the client asked for one.
    pub(super) link: Option<Link>,
    pub(super) limits: Limits,
}

impl Conn {
    fn new(stream: TcpStream, svc: Arc<dyn BlockService>, hub: Arc<Hub>, limits: Limits) -> Self {
        Conn { stream, svc, head: Vec::new(), out: Vec::new(), writes: HashMap::new(), hub, link: None, limits }
    }

    async fn run(mut self) -> Result<()> {
        let mut hb = [0u8; HEADER_LEN];
        loop {
            let next = self.stream.read_exact(&mut hb);
            // Waiting for a request is unbounded, except while this
            // connection holds writes open: those pin space and a block id
            // until the peer commits, aborts or goes away.
            let got = match self.limits.write_idle.filter(|_| !self.writes.is_empty()) {
                None => next.await,
                Some(idle) => match tokio::time::timeout(idle, next).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "{} open write(s) idle for {:?}: closing the connection aborts them",
                                self.writes.len(),
                                idle
                            ),
                        ))
                    }
                },
            };
            match got {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            let h = match Header::decode(&hb) {
                Ok(h) => h,
                Err(e) => {
                    // The stream is out of sync: tell the peer why, then close.
                    let _ = self.send_error(Op::Ping, 0, &e).await;
                    return Err(e);
                }
            };
            // Lengths were bounded by decode, so these allocations are too.
            self.head.resize(h.head_len as usize, 0);
            bounded(self.limits.io, "reading a request head", self.stream.read_exact(&mut self.head)).await?;
            let res = match h.op {
                Op::Read if h.flags & FLAG_RDMA != 0 => self.read_rdma(&h).await,
                Op::Read => self.read(&h).await,
                Op::WriteOpen => self.write_open(&h).await,
                Op::WriteData if h.flags & FLAG_RDMA != 0 => self.write_data_rdma(&h).await,
                Op::WriteData => self.write_data(&h).await,
                Op::RdmaConnect => self.rdma_connect(&h).await,
                Op::WriteCommit => self.write_commit(&h, false).await,
                Op::WriteAbort => self.write_commit(&h, true).await,
                Op::Ping => {
                    self.drain_payload(&h).await?;
                    self.respond(&h, &[]).await
                }
                Op::Load => self.load(&h).await,
                Op::Verify => self.verify(&h).await,
                Op::Persist => self.persist(&h).await,
            };
            if let Err(e) = res {
                if e.kind() == ErrorKind::Protocol {
                    let _ = self.send_error(h.op, h.req_id, &e).await;
                }
                return Err(e);
            }
        }
    }

    pub(super) async fn drain_payload(&mut self, h: &Header) -> Result<()> {
        if h.payload_len != 0 {
            return Err(Error::protocol(format!("{:?} request carries an unexpected payload", h.op)));
        }
        Ok(())
    }

    pub(super) async fn respond(&mut self, h: &Header, head: &[u8]) -> Result<()> {
        self.out.clear();
        let rh = Header { status: 0, head_len: head.len() as u32, payload_len: 0, ..*h };
        self.out.extend_from_slice(&rh.encode());
        self.out.extend_from_slice(head);
        bounded(self.limits.io, "sending a response", self.stream.write_all(&self.out)).await
    }

    pub(super) async fn send_error(&mut self, op: Op, req_id: u64, e: &Error) -> Result<()> {
        let msg = e.message().as_bytes();
        let msg = &msg[..msg.len().min(4096)];
        let h = Header { op, status: e.kind().code(), flags: 0, req_id, head_len: 0, payload_len: msg.len() as u32 };
        self.out.clear();
        self.out.extend_from_slice(&h.encode());
        self.out.extend_from_slice(msg);
        bounded(self.limits.io, "sending an error", self.stream.write_all(&self.out)).await
    }

    async fn persist(&mut self, h: &Header) -> Result<()> {
        self.drain_payload(h).await?;
        let file = crate::frame::HeadReader::new(&self.head).u64()?;
        let res = match self.svc.persist(file) {
            Some(f) => f.await,
            None => Err(Error::invalid(format!("file {file}: this server does not upload to a UFS"))),
        };
        match res {
            Ok(()) => self.respond(h, &[]).await,
            Err(e) => self.send_error(h.op, h.req_id, &e).await,
        }
    }

    /// Answers `[1]` when the block was already here, `[0]` once loaded.
    async fn load(&mut self, h: &Header) -> Result<()> {
        self.drain_payload(h).await?;
        let block = crate::frame::HeadReader::new(&self.head).u64()?;
        if self.svc.open_read(block).is_ok() {
            return self.respond(h, &[1]).await;
        }
        let res = match self.svc.load(block) {
            Some(f) => f.await,
            None => Err(Error::not_found(&format!("block {block} (this server cannot load blocks)"))),
        };
        match res {
            Ok(()) => self.respond(h, &[0]).await,
            Err(e) => self.send_error(h.op, h.req_id, &e).await,
        }
    }

    async fn verify(&mut self, h: &Header) -> Result<()> {
        self.drain_payload(h).await?;
        let block = crate::frame::HeadReader::new(&self.head).u64()?;
        let svc = self.svc.clone();
        let res = tokio::task::spawn_blocking(move || svc.verify(block))
            .await
            .unwrap_or_else(|e| Err(Error::internal(format!("verify task: {e}"))));
        match res {
            Ok(intact) => self.respond(h, &[intact as u8]).await,
            Err(e) => self.send_error(h.op, h.req_id, &e).await,
        }
    }

    async fn read(&mut self, h: &Header) -> Result<()> {
        self.drain_payload(h).await?;
        let req = ReadReq::decode(&self.head)?;
        let (src, loaded) = match open_source(self.svc.clone(), req).await {
            Ok(s) => s,
            Err(e) => return self.send_error(h.op, h.req_id, &e).await,
        };
        // ReadReq::decode checked that offset + len does not overflow.
        let end = (req.offset + req.len).min(src.len);
        // Edge chunks are read and checked before anything is sent, so a
        // failure here (Corrupt, a media error) is still answered in sync.
        let plan = match RangePlan::new(&src, req.block_id, req.offset, end) {
            Ok(p) => p,
            Err(e) => return self.send_error(h.op, h.req_id, &e).await,
        };
        // Once the response header is out, an error cannot be framed any
        // more (it would land inside the payload): it closes the connection.
        self.send_range(h, &req, &src, &plan, end).await?;
        self.svc.on_read(req.block_id, end - req.offset, loaded);
        Ok(())
    }

    /// Sends `[offset, end)` as `plan` says: partial chunks at either edge
    /// were read and verified; whole chunks go by `sendfile` with their crcs
    /// for the receiver to verify.
    async fn send_range(&mut self, h: &Header, req: &ReadReq, src: &ReadSource, plan: &RangePlan, end: u64) -> Result<()> {
        let mut head = Vec::with_capacity(12 + plan.resp.crcs.len() * 4);
        plan.resp.encode(&mut head);
        let rh = Header { status: 0, head_len: head.len() as u32, payload_len: (end - req.offset) as u32, ..*h };
        self.out.clear();
        self.out.extend_from_slice(&rh.encode());
        self.out.extend_from_slice(&head);
        self.out.extend_from_slice(&plan.head_edge);
        let io = self.limits.io;
        bounded(io, "sending a read response", self.stream.write_all(&self.out)).await?;
        if plan.lo < plan.hi {
            let n = (plan.hi - plan.lo) as usize;
            sendfile_all(&self.stream, &src.file, src.base + plan.lo, n, io)
                .await
                .map_err(|e| e.context(format!("block {}", req.block_id)))?;
        }
        if !plan.tail_edge.is_empty() {
            bounded(io, "sending a read response", self.stream.write_all(&plan.tail_edge)).await?;
        }
        Ok(())
    }

    async fn write_open(&mut self, h: &Header) -> Result<()> {
        self.drain_payload(h).await?;
        let req = WriteOpen::decode(&self.head)?;
        if self.writes.contains_key(&req.block_id) {
            let e = Error::new(ErrorKind::AlreadyExists, format!("block {} is already being written", req.block_id));
            return self.send_error(h.op, h.req_id, &e).await;
        }
        if self.writes.len() >= MAX_WRITES_PER_CONN {
            let e = Error::unavailable(format!(
                "block {}: this connection already has {MAX_WRITES_PER_CONN} writes open (the most one connection may hold); commit or abort one first",
                req.block_id
            ));
            return self.send_error(h.op, h.req_id, &e).await;
        }
        match self.svc.open_write(req.block_id, req.len_hint, req.after) {
            Ok(sink) => {
                let mut head = Vec::new();
                msg::encode_tier(sink.tier(), &mut head);
                self.writes.insert(req.block_id, WriteSession::start(req.block_id, sink));
                self.respond(h, &head).await
            }
            Err(e) => self.send_error(h.op, h.req_id, &e).await,
        }
    }

    /// The open write a data frame continues, checked to be at its end.
    pub(super) fn session_at(&mut self, req: &WriteData) -> Result<&mut WriteSession> {
        let Some(s) = self.writes.get_mut(&req.block_id) else {
            return Err(Error::protocol(format!("data for block {} without an open write", req.block_id)));
        };
        if s.ended || req.offset != s.next {
            return Err(Error::protocol(format!(
                "block {}: write at offset {} but {} bytes written so far",
                req.block_id, req.offset, s.next
            )));
        }
        Ok(s)
    }

    /// Data frames get no response: a failure is remembered and reported by
    /// the commit, so the client can stream without round trips.
    async fn write_data(&mut self, h: &Header) -> Result<()> {
        let req = WriteData::decode(&self.head, h.payload_len)?;
        // Bounded by MAX_PAYLOAD (checked in decode) and by two buffers per
        // session (this one and the one being written).
        let mut data = self.session_at(&req)?.spare.take().unwrap_or_default();
        data.resize(h.payload_len as usize, 0);
        bounded(self.limits.io, "reading block data", self.stream.read_exact(&mut data)).await?;
        let s = self.writes.get_mut(&req.block_id).ok_or_else(|| Error::internal("write session vanished"))?;
        s.next += data.len() as u64;
        s.ended = data.len() as u64 % CHUNK != 0;
        // Waits (without blocking the runtime) while the previous frame is
        // being written.
        s.push(Piece { offset: req.offset, data, crcs: req.crcs }).await
    }

    async fn write_commit(&mut self, h: &Header, abort: bool) -> Result<()> {
        self.drain_payload(h).await?;
        let req = WriteCommit::decode(&self.head)?;
        let Some(s) = self.writes.remove(&req.block_id) else {
            let e = Error::protocol(format!("block {} has no open write", req.block_id));
            return self.send_error(h.op, h.req_id, &e).await;
        };
        let written = s.next;
        let (sink, failed) = s.finish().await?;
        if abort {
            sink.abort();
            return self.respond(h, &[]).await;
        }
        if let Some(e) = failed {
            sink.abort();
            return self.send_error(h.op, h.req_id, &e).await;
        }
        if req.len != written {
            sink.abort();
            let e = Error::invalid(format!("block {}: commit of {} bytes but {} were written", req.block_id, req.len, written));
            return self.send_error(h.op, h.req_id, &e).await;
        }
        match sink.commit(req.len) {
            Ok(tier) => {
                let mut head = Vec::new();
                msg::encode_tier(tier, &mut head);
                self.respond(h, &head).await
            }
            Err(e) => self.send_error(h.op, h.req_id, &e).await,
        }
    }
}

/// Opens the block a read asks for, loading it when the service can. An
/// error here is for the client: the connection stays up.
pub(super) async fn open_source(svc: Arc<dyn BlockService>, req: ReadReq) -> Result<(ReadSource, bool)> {
    let (src, loaded) = match svc.open_read(req.block_id) {
        Ok(s) => (s, false),
        Err(e) if e.kind() == ErrorKind::NotFound => match svc.clone().load_until(req.block_id, req.offset + req.len) {
            // A miss the service can fill (e.g. from the UFS): wait until
            // the requested range has arrived, not the whole block.
            Some(load) => (load.await?, true),
            None => return Err(e),
        },
        Err(e) => return Err(e),
    };
    if req.offset > src.len {
        return Err(Error::invalid(format!("block {}: offset {} beyond its {} bytes", req.block_id, req.offset, src.len)));
    }
    Ok((src, loaded))
}

/// Sends `count` bytes of `file` from `offset` with sendfile(2): the bytes go
/// from the page cache to the socket without entering user space. Waiting
/// for socket room is bounded by `io` each time (a peer that stops reading
/// fails the send instead of pinning it). Called after the response header
/// went out, so any error must close the connection.
async fn sendfile_all(stream: &TcpStream, file: &std::fs::File, offset: u64, mut count: usize, io: Duration) -> Result<()> {
    let mut off = offset as libc::off_t;
    while count > 0 {
        bounded(io, "sending block data", stream.writable()).await?;
        let res = stream.try_io(Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the duration of the call.
            let r = unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
            if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r as usize) }
        });
        match res {
            // Not `Corrupt`: part of the payload is out, so this cannot be
            // answered as an error; the connection is closed and the client
            // sees a broken connection, never a short or padded payload.
            Ok(0) => {
                tracing::warn!(offset = off, left = count, "block file is shorter than its recorded length");
                return Err(Error::new(ErrorKind::Io, "block file is shorter than its recorded length; closing the connection"));
            }
            Ok(n) => count -= n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
