//! Client side of the TCP transport.

use std::future::Future;
use std::time::Duration;

use curvine_common::tier::TierKind;
use curvine_common::{Error, ErrorKind, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::frame::{Header, Op, CHUNK, HEADER_LEN, MAX_PAYLOAD};
use crate::msg::{self, ReadReq, ReadResp, WriteCommit, WriteData, WriteOpen};
use crate::transport::{Capabilities, DataConn, Transport};

/// Bytes received between checksum checks (a multiple of CHUNK that fits in
/// L2 cache).
const VERIFY_PIECE: usize = 4 * CHUNK as usize;

#[derive(Clone, Copy, Debug)]
pub struct TcpOptions {
    /// Bytes per read request; a large read becomes several requests.
    pub chunk_size: usize,
    /// Read requests kept in flight on one connection.
    pub depth: usize,
    pub connect_timeout: Duration,
    /// Upper bound on waiting for one response, and on any one socket read
    /// or write making no progress (a stalled worker fails the request
    /// instead of blocking it for ever).
    pub io_timeout: Duration,
    /// Check the crc32c of every received chunk (partial edge chunks are
    /// always checked by the worker).
    pub verify: bool,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            chunk_size: 2 << 20,
            depth: 8,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(60),
            verify: true,
        }
    }
}

pub struct TcpTransport {
    opts: TcpOptions,
}

impl TcpTransport {
    pub fn new(opts: TcpOptions) -> Self {
        let chunk_size = (opts.chunk_size.clamp(CHUNK as usize, MAX_PAYLOAD as usize) / CHUNK as usize) * CHUNK as usize;
        TcpTransport { opts: TcpOptions { chunk_size, depth: opts.depth.max(1), ..opts } }
    }

    pub fn options(&self) -> &TcpOptions {
        &self.opts
    }
}

#[async_trait::async_trait]
impl Transport for TcpTransport {
    fn name(&self) -> &'static str {
        "tcp"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { zero_copy_read: true, pipelined: true }
    }
    async fn connect(&self, addr: &str) -> Result<Box<dyn DataConn>> {
        Ok(Box::new(TcpConn::connect(addr, self.opts).await?))
    }
}

pub struct TcpConn {
    stream: TcpStream,
    addr: String,
    opts: TcpOptions,
    next_id: u64,
    broken: bool,
    /// A request is under way; still set if its future was dropped midway
    /// (the stream may then hold half a frame or an unread response, so
    /// the connection must not go back to a pool).
    busy: bool,
    out: Vec<u8>,
    head: Vec<u8>,
    lowat: i32,
}

impl TcpConn {
    pub async fn connect(addr: &str, opts: TcpOptions) -> Result<TcpConn> {
        let stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout, format!("worker {addr}: connect timed out")))?
            .map_err(|e| Error::from(e).context(format!("worker {addr}")))?;
        let _ = stream.set_nodelay(true);
        Ok(TcpConn {
            stream,
            addr: addr.to_string(),
            opts,
            next_id: 1,
            broken: false,
            busy: false,
            out: Vec::new(),
            head: Vec::new(),
            lowat: 1,
        })
    }

    /// Sets SO_RCVLOWAT, so readiness fires once `bytes` are queued. Only
    /// ever set to bytes the worker is already sending, so it cannot stall.
    fn set_lowat(&mut self, bytes: usize) {
        let v = bytes.clamp(1, VERIFY_PIECE) as i32;
        if v == self.lowat {
            return;
        }
        self.lowat = v;
        // SAFETY: setsockopt on an open socket with a valid int option value.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&self.stream),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                &v as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
    }

    /// Fills `buf` from the socket, asking to be woken only once all of it
    /// (up to VERIFY_PIECE) is queued: one copy per piece instead of one
    /// wake-up per arriving segment. The low-water mark is only ever the
    /// number of bytes still owed by a response in flight, so it cannot stall.
    async fn read_piece(&mut self, buf: &mut [u8]) -> Result<()> {
        let mut pos = 0;
        while pos < buf.len() {
            match self.stream.try_read(&mut buf[pos..]) {
                Ok(0) => return Err(self.fail(Error::unavailable("connection closed mid-response"))),
                Ok(n) => pos += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.set_lowat(buf.len() - pos);
                    let io = self.opts.io_timeout;
                    let ready = tokio::time::timeout(io, self.stream.readable()).await;
                    match ready {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(self.fail(e.into())),
                        Err(_) => return Err(self.fail(Error::new(ErrorKind::Timeout, format!("no data in {io:?}")))),
                    }
                }
                Err(e) => return Err(self.fail(e.into())),
            }
        }
        Ok(())
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn fail(&mut self, e: Error) -> Error {
        self.broken = true;
        e.context(format!("worker {}", self.addr))
    }

    /// Queues a request frame into `self.out` (sent by `flush`).
    fn push(&mut self, op: Op, req_id: u64, head: &[u8], payload_len: usize) {
        let h = Header::request(op, req_id, head.len(), payload_len);
        self.out.extend_from_slice(&h.encode());
        self.out.extend_from_slice(head);
    }

    async fn flush(&mut self) -> Result<()> {
        let r = timed(self.opts.io_timeout, "sending a request", self.stream.write_all(&self.out)).await;
        self.out.clear();
        r.map_err(|e| self.fail(e))
    }

    /// Reads one response header for `req_id` and its head into `self.head`.
    /// A worker-reported error is returned as `Ok(Err(..))`: the stream is
    /// still in sync.
    async fn recv_header(&mut self, op: Op, req_id: u64) -> Result<std::result::Result<Header, Error>> {
        let mut hb = [0u8; HEADER_LEN];
        let io = self.opts.io_timeout;
        // Every read other than `read_piece` waits with the mark at 1 byte.
        self.set_lowat(1);
        match tokio::time::timeout(io, self.stream.read_exact(&mut hb)).await {
            Err(_) => return Err(self.fail(Error::new(ErrorKind::Timeout, format!("no response in {io:?}")))),
            Ok(Err(e)) => return Err(self.fail(e.into())),
            Ok(Ok(_)) => {}
        }
        let h = Header::decode(&hb).map_err(|e| self.fail(e))?;
        if h.error().is_none() && (h.req_id != req_id || h.op != op) {
            return Err(self.fail(Error::protocol(format!(
                "response {:?}#{} does not match request {op:?}#{req_id}",
                h.op, h.req_id
            ))));
        }
        self.head.resize(h.head_len as usize, 0);
        timed(io, "reading a response head", self.stream.read_exact(&mut self.head)).await.map_err(|e| self.fail(e))?;
        if let Some(kind) = h.error() {
            let mut m = vec![0u8; h.payload_len.min(64 << 10) as usize];
            timed(io, "reading an error message", self.stream.read_exact(&mut m)).await.map_err(|e| self.fail(e))?;
            if h.payload_len as usize > m.len() || h.req_id != req_id {
                self.broken = true;
            }
            let e = Error::new(kind, String::from_utf8_lossy(&m).into_owned());
            return Ok(Err(e));
        }
        Ok(Ok(h))
    }

    async fn simple(&mut self, op: Op, head: Vec<u8>) -> Result<Vec<u8>> {
        self.call(op, 0, &head).await
    }

    /// Sends one request without payload and returns its answer's head: the
    /// control channel of transports that move payloads another way (RDMA).
    /// A worker-reported error leaves the connection usable.
    pub(crate) async fn call(&mut self, op: Op, flags: u16, head: &[u8]) -> Result<Vec<u8>> {
        self.busy = true;
        let r = self.call_inner(op, flags, head).await;
        self.busy = false;
        r
    }

    async fn call_inner(&mut self, op: Op, flags: u16, head: &[u8]) -> Result<Vec<u8>> {
        let id = self.id();
        let h = Header { flags, ..Header::request(op, id, head.len(), 0) };
        self.out.extend_from_slice(&h.encode());
        self.out.extend_from_slice(head);
        self.flush().await?;
        match self.recv_header(op, id).await? {
            Ok(h) if h.payload_len == 0 => Ok(std::mem::take(&mut self.head)),
            Ok(_) => Err(self.fail(Error::protocol(format!("unexpected payload in {op:?} response")))),
            Err(e) => Err(e),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }
}

/// Runs `fut`, a socket operation, for at most `limit`: on expiry the error
/// is `Timeout` (the caller marks the connection failed: the stream may be
/// mid-frame).
async fn timed<T>(limit: Duration, what: &str, fut: impl Future<Output = std::io::Result<T>>) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::new(ErrorKind::Timeout, format!("{what}: no progress in {limit:?}"))),
    }
}

impl TcpConn {
    async fn read_into_inner(&mut self, block_id: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let chunk = self.opts.chunk_size;
        let mut pieces = buf.len().div_ceil(chunk);
        let first_id = self.next_id + 1;
        self.next_id += pieces as u64;
        let mut sent = 0;
        let mut filled = 0;
        let mut done = 0;
        let mut short = false;
        let mut worker_err = None;
        while done < pieces {
            // Keep `depth` requests in flight: the worker streams the next
            // response while we copy this one out of the socket.
            while sent < pieces && sent - done < self.opts.depth {
                let lo = sent * chunk;
                let len = chunk.min(buf.len() - lo);
                let mut head = Vec::with_capacity(ReadReq::LEN);
                ReadReq { block_id, offset: offset + lo as u64, len: len as u64 }.encode(&mut head);
                self.push(Op::Read, first_id + sent as u64, &head, 0);
                sent += 1;
            }
            if !self.out.is_empty() {
                self.flush().await?;
            }
            let lo = done * chunk;
            let len = chunk.min(buf.len() - lo);
            let h = match self.recv_header(Op::Read, first_id + done as u64).await? {
                Ok(h) => h,
                Err(e) => {
                    worker_err.get_or_insert(e);
                    pieces = sent; // stop asking; drain what is in flight
                    done += 1;
                    continue;
                }
            };
            if h.payload_len as usize > len {
                return Err(self.fail(Error::protocol("read response longer than requested")));
            }
            let resp = ReadResp::decode(&self.head, h.payload_len).map_err(|e| self.fail(e))?;
            let dst = &mut buf[lo..lo + h.payload_len as usize];
            if !short && worker_err.is_none() {
                // Checksum each piece right after it lands, while it is
                // still in cache, instead of re-reading the whole response.
                let (bs, be) = (resp.body_start as usize, resp.body_end as usize);
                let io = self.opts.io_timeout;
                timed(io, "reading block data", self.stream.read_exact(&mut dst[..bs])).await.map_err(|e| self.fail(e))?;
                let mut at = bs;
                while at < be {
                    let end = (at + VERIFY_PIECE).min(be);
                    self.read_piece(&mut dst[at..end]).await?;
                    if self.opts.verify {
                        if let Err(e) = resp.verify_body(at - bs, &dst[at..end], block_id, offset + lo as u64) {
                            worker_err.get_or_insert(e);
                        }
                    }
                    at = end;
                }
                self.set_lowat(1);
                timed(io, "reading block data", self.stream.read_exact(&mut dst[be..])).await.map_err(|e| self.fail(e))?;
                filled += dst.len();
                short = dst.len() < len;
                if short || worker_err.is_some() {
                    pieces = sent;
                }
            } else {
                // Drain responses after a short read or an error so the
                // stream stays in sync.
                let mut sink = vec![0u8; h.payload_len as usize];
                self.set_lowat(1);
                let io = self.opts.io_timeout;
                timed(io, "draining a response", self.stream.read_exact(&mut sink)).await.map_err(|e| self.fail(e))?;
            }
            done += 1;
        }
        match worker_err {
            Some(e) => Err(e.context(format!("worker {}", self.addr))),
            None => Ok(filled),
        }
    }

    async fn write_data_inner(&mut self, block_id: u64, offset: u64, data: &[u8]) -> Result<()> {
        // Frames of `chunk_size` keep the worker's socket reads, checksum
        // checks and file writes overlapping instead of one long stall.
        let frame = self.opts.chunk_size;
        for (i, piece) in data.chunks(frame).enumerate() {
            let mut head = Vec::new();
            let off = offset + (i * frame) as u64;
            WriteData { block_id, offset: off, crcs: msg::chunk_crcs(piece) }.encode(&mut head);
            let id = self.id();
            self.push(Op::WriteData, id, &head, piece.len());
            self.flush().await?;
            // The payload goes from the caller's slice to the socket; a
            // worker that stops reading fails the write after io_timeout.
            let io = self.opts.io_timeout;
            timed(io, "sending block data", self.stream.write_all(piece)).await.map_err(|e| self.fail(e))?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl DataConn for TcpConn {
    #[tracing::instrument(level = "trace", skip(self, buf), fields(len = buf.len()))]
    async fn read_into(&mut self, block_id: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.busy = true;
        let r = self.read_into_inner(block_id, offset, buf).await;
        self.busy = false;
        r
    }

    async fn write_open(&mut self, block_id: u64, len_hint: u64, after: u64) -> Result<TierKind> {
        let mut head = Vec::new();
        WriteOpen { block_id, len_hint, after }.encode(&mut head);
        let r = self.simple(Op::WriteOpen, head).await?;
        msg::decode_tier(&r).map_err(|e| self.fail(e))
    }

    async fn write_data(&mut self, block_id: u64, offset: u64, data: &[u8]) -> Result<()> {
        self.busy = true;
        let r = self.write_data_inner(block_id, offset, data).await;
        self.busy = false;
        r
    }

    async fn write_commit(&mut self, block_id: u64, len: u64) -> Result<TierKind> {
        let mut head = Vec::new();
        WriteCommit { block_id, len }.encode(&mut head);
        let r = self.simple(Op::WriteCommit, head).await.map_err(|e| e.context(format!("worker {}", self.addr)))?;
        msg::decode_tier(&r).map_err(|e| self.fail(e))
    }

    async fn write_abort(&mut self, block_id: u64) -> Result<()> {
        let mut head = Vec::new();
        WriteCommit { block_id, len: 0 }.encode(&mut head);
        self.simple(Op::WriteAbort, head).await.map(|_| ())
    }

    async fn ping(&mut self) -> Result<()> {
        self.simple(Op::Ping, Vec::new()).await.map(|_| ())
    }

    async fn persist(&mut self, file_id: u64) -> Result<()> {
        self.simple(Op::Persist, file_id.to_le_bytes().to_vec()).await.map(|_| ())
    }

    async fn load(&mut self, block_id: u64) -> Result<bool> {
        let head = self.simple(Op::Load, block_id.to_le_bytes().to_vec()).await?;
        match head.first() {
            Some(&v) => Ok(v == 1),
            None => Err(self.fail(Error::protocol("load response without a head"))),
        }
    }

    async fn verify(&mut self, block_id: u64) -> Result<bool> {
        let head = self.simple(Op::Verify, block_id.to_le_bytes().to_vec()).await?;
        match head.first() {
            Some(&v) => Ok(v == 1),
            None => Err(self.fail(Error::protocol("verify response without a head"))),
        }
    }

    fn is_broken(&self) -> bool {
        self.broken || self.busy
    }
}
