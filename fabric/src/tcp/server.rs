//! TCP data-plane server: one task per connection, requests handled in
//! order (so responses come back in request order and clients can keep
//! several requests in flight), block bytes sent with `sendfile`.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;

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
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { rdma: Some(RdmaOptions::default()) }
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
                let (svc, hub) = (svc.clone(), hub.clone());
                tokio::spawn(async move {
                    if let Err(e) = Conn::new(stream, svc, hub).run().await {
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

/// Frames a write session keeps queued for its writer thread.
const WRITE_QUEUE: usize = 2;

/// One frame of block data on its way to the writer thread.
pub(super) struct Piece {
    pub(super) offset: u64,
    pub(super) data: Vec<u8>,
    pub(super) crcs: Vec<u32>,
}

/// A block being written. The connection task only reads frames off the
/// socket; a blocking writer thread verifies their checksums and appends
/// them to the block file, so socket reads and file writes overlap.
pub(super) struct WriteSession {
    pub(super) tx: tokio::sync::mpsc::Sender<Piece>,
    /// Buffers the writer has finished with, for reuse.
    pub(super) spare: std::sync::mpsc::Receiver<Vec<u8>>,
    done: tokio::task::JoinHandle<(Box<dyn BlockSink>, Option<Error>)>,
    pub(super) next: u64,
    pub(super) ended: bool,
}

impl WriteSession {
    fn start(block_id: u64, mut sink: Box<dyn BlockSink>) -> WriteSession {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(WRITE_QUEUE);
        let (spare_tx, spare) = std::sync::mpsc::channel();
        let done = tokio::task::spawn_blocking(move || {
            let mut failed = None;
            while let Some(p) = rx.blocking_recv() {
                if failed.is_none() {
                    failed = append_verified(block_id, &mut *sink, &p).err();
                }
                let _ = spare_tx.send(p.data);
            }
            (sink, failed)
        });
        WriteSession { tx, spare, done, next: 0, ended: false }
    }

    /// Stops the writer thread and returns the sink with the first failure.
    async fn finish(self) -> Result<(Box<dyn BlockSink>, Option<Error>)> {
        drop(self.tx);
        self.done.await.map_err(|e| Error::internal(format!("block writer failed: {e}")))
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
    /// Dropping a session (e.g. when the connection dies) ends its writer
    /// thread, which drops the sink: an uncommitted block is discarded.
    pub(super) writes: HashMap<u64, WriteSession>,
    pub(super) hub: Arc<Hub>,
    /// This connection's RDMA queue pair, once the client asked for one.
    pub(super) link: Option<Link>,
}

impl Conn {
    fn new(stream: TcpStream, svc: Arc<dyn BlockService>, hub: Arc<Hub>) -> Self {
        Conn { stream, svc, head: Vec::new(), out: Vec::new(), writes: HashMap::new(), hub, link: None }
    }

    async fn run(mut self) -> Result<()> {
        let mut hb = [0u8; HEADER_LEN];
        loop {
            match self.stream.read_exact(&mut hb).await {
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
            self.stream.read_exact(&mut self.head).await?;
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
        self.stream.write_all(&self.out).await?;
        Ok(())
    }

    pub(super) async fn send_error(&mut self, op: Op, req_id: u64, e: &Error) -> Result<()> {
        let msg = e.message().as_bytes();
        let msg = &msg[..msg.len().min(4096)];
        let h = Header { op, status: e.kind().code(), flags: 0, req_id, head_len: 0, payload_len: msg.len() as u32 };
        self.out.clear();
        self.out.extend_from_slice(&h.encode());
        self.out.extend_from_slice(msg);
        self.stream.write_all(&self.out).await?;
        Ok(())
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
        let end = (req.offset + req.len).min(src.len);
        match self.send_range(h, &req, &src, end).await {
            Ok(()) => {
                self.svc.on_read(req.block_id, end - req.offset, loaded);
                Ok(())
            }
            // Nothing of the payload has been sent when an edge check fails.
            Err(e) if e.kind() == ErrorKind::Corrupt => self.send_error(h.op, h.req_id, &e).await,
            Err(e) => Err(e),
        }
    }

    /// Sends `[offset, end)`: partial chunks at either edge are read and
    /// verified here; whole chunks go by `sendfile` with their crcs for the
    /// receiver to verify.
    async fn send_range(&mut self, h: &Header, req: &ReadReq, src: &ReadSource, end: u64) -> Result<()> {
        let plan = RangePlan::new(src, req.block_id, req.offset, end)?;
        let mut head = Vec::with_capacity(12 + plan.resp.crcs.len() * 4);
        plan.resp.encode(&mut head);
        let rh = Header { status: 0, head_len: head.len() as u32, payload_len: (end - req.offset) as u32, ..*h };
        self.out.clear();
        self.out.extend_from_slice(&rh.encode());
        self.out.extend_from_slice(&head);
        self.out.extend_from_slice(&plan.head_edge);
        self.stream.write_all(&self.out).await?;
        if plan.lo < plan.hi {
            sendfile_all(&self.stream, &src.file, src.base + plan.lo, (plan.hi - plan.lo) as usize).await?;
        }
        if !plan.tail_edge.is_empty() {
            self.stream.write_all(&plan.tail_edge).await?;
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
        // Bounded by MAX_PAYLOAD (checked in decode) and by WRITE_QUEUE
        // buffers per session.
        let mut data = self.session_at(&req)?.spare.try_recv().unwrap_or_default();
        data.resize(h.payload_len as usize, 0);
        self.stream.read_exact(&mut data).await?;
        let s = self.writes.get_mut(&req.block_id).ok_or_else(|| Error::internal("write session vanished"))?;
        s.next += data.len() as u64;
        s.ended = data.len() as u64 % CHUNK != 0;
        let piece = Piece { offset: req.offset, data, crcs: req.crcs };
        // Waits (without blocking the runtime) while the writer thread is
        // busy with the previous frames.
        match s.tx.send(piece).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::internal(format!("block {}: writer thread is gone", req.block_id))),
        }
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
/// from the page cache to the socket without entering user space.
async fn sendfile_all(stream: &TcpStream, file: &std::fs::File, offset: u64, mut count: usize) -> Result<()> {
    let mut off = offset as libc::off_t;
    while count > 0 {
        stream.writable().await?;
        let res = stream.try_io(Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the duration of the call.
            let r = unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
            if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r as usize) }
        });
        match res {
            Ok(0) => return Err(Error::new(ErrorKind::Corrupt, "block file is shorter than its recorded length")),
            Ok(n) => count -= n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
