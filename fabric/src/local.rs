//! Same-host short-circuit. A client on the worker's host asks over the
//! worker's Unix socket for a block and receives the block file's
//! descriptor (SCM_RIGHTS) with its length and checksums; it then reads the
//! page cache itself: one copy, no TCP, no worker CPU per byte.
//!
//! Wire format (little-endian):
//! - hello, worker → client on accept: magic `CVSC` u32, version u32,
//!   worker id u64, token u64. The client compares id and token with what
//!   meta said about the worker, so a socket that is not the worker's is
//!   refused (the client then reads over TCP).
//! - request: op u8 (1 = open for read), block id u64; or op 2 (open
//!   many), count u64 (≤ 200), then that many block ids u64; or op 3 (open
//!   for write), block id u64, length hint u64, previous block of the file
//!   u64 (0: none); op 4 (commit a write), block id u64, length u64, crc
//!   count u32, crcs; op 5 (abort a write), block id u64; op 6 (join a
//!   file's blocks into one file, `BlockService::join`), count u64
//!   (≤ 4096), then that many block ids u64.
//! - answer: status u8 (0 = ok, else an `ErrorKind` code); ok for op 1:
//!   base u64 (where the block starts in the file), length u64, tier u8,
//!   crc count u32, crcs; for op 2: count u32, then per block a presence
//!   byte and, when present, the op-1 fields; for op 3: tier u8 and base
//!   u64 with the block file's descriptor (read-write); for op 4: tier u8;
//!   for ops 5 and 6: nothing. Descriptors (one per present block, in order) ride
//!   on the first byte. Error: message length u32, message.
//!
//! Same-host writes: the client writes the block's bytes into the file it
//! got from op 3, from its base on, and commits with their crc32c (one per
//! 64 KiB chunk, read back and checked by every reader); a connection that
//! closes with a write still open aborts it (the worker removes the bytes
//! and the reservation).
//!
//! To ensure correctness: blocks are sealed and never modified in place, and
//! block ids are never reused, so a descriptor stays a faithful copy of its
//! block for as long as the client keeps it (eviction only unlinks; an
//! extent file shared by several blocks only grows, at its end, and is
//! never cut while any of its blocks is indexed).

use std::fs::File;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use curvine_common::tier::TierKind;
use curvine_common::{Error, ErrorKind, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};

use crate::service::{BlockService, BlockSink, ReadSource};

const MAGIC: u32 = 0x4356_5343;
const VERSION: u32 = 2;
const HELLO_LEN: usize = 24;
const OP_OPEN: u8 = 1;
/// Opens several blocks in one round trip (a batch of small files).
const OP_OPEN_MANY: u8 = 2;
const OP_WRITE_OPEN: u8 = 3;
const OP_WRITE_COMMIT: u8 = 4;
const OP_WRITE_ABORT: u8 = 5;
const OP_JOIN: u8 = 6;
/// Blocks per `OP_JOIN` (a 256 GiB file of 64 MiB blocks).
pub const MAX_JOIN: usize = 4096;
/// Blocks per `OP_OPEN_MANY` (below the kernel's 253 descriptors per message).
pub const MAX_BATCH: usize = 200;
/// Largest crc list accepted (a 4 GiB block of 64 KiB chunks).
const MAX_CRCS: u32 = 1 << 16;

/// Serves short-circuit opens on `listener` until `stop` resolves. Each
/// descriptor handed out counts as one read of the whole block in the
/// service's accounting (a cache hit): the reads themselves happen in the
/// client, unseen. Only
/// processes of root or the worker's own user get descriptors: others are
/// answered `PermissionDenied` and read over TCP.
pub async fn serve_local(
    listener: UnixListener,
    svc: Arc<dyn BlockService>,
    worker_id: u64,
    token: u64,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return Ok(()),
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                // EMFILE and friends: the failed connection stays queued,
                // so retrying at once would spin; pause as the TCP server does.
                Err(e) => {
                    tracing::warn!(error = %e, "short-circuit accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(stream, svc, worker_id, token).await {
                tracing::debug!(error = %e, "short-circuit connection ended");
            }
        });
    }
}

fn allowed(stream: &UnixStream) -> std::result::Result<(), String> {
    let cred = stream.peer_cred().map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if cred.uid() == 0 || cred.uid() == me {
        Ok(())
    } else {
        Err(format!("uid {} may not open block files of a worker running as uid {me}", cred.uid()))
    }
}

async fn serve_conn(mut stream: UnixStream, svc: Arc<dyn BlockService>, worker_id: u64, token: u64) -> Result<()> {
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(&MAGIC.to_le_bytes());
    hello.extend_from_slice(&VERSION.to_le_bytes());
    hello.extend_from_slice(&worker_id.to_le_bytes());
    hello.extend_from_slice(&token.to_le_bytes());
    stream.write_all(&hello).await?;
    let permitted = allowed(&stream);
    // Writes in progress on this connection; dropping one aborts it.
    let mut sinks: std::collections::HashMap<u64, Box<dyn BlockSink>> = std::collections::HashMap::new();
    let mut req = [0u8; 9];
    loop {
        match stream.read_exact(&mut req).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let arg = u64::from_le_bytes(req[1..9].try_into().expect("8 bytes"));
        // Each answer: a head, and descriptors riding on its first byte.
        let res: Result<(Vec<u8>, Vec<ReadSource>)> = match (&permitted, req[0]) {
            (Err(why), _) => Err(Error::new(ErrorKind::PermissionDenied, why.clone())),
            (Ok(()), OP_OPEN) => svc.open_read(arg).map(|src| {
                svc.on_read(arg, src.len, false);
                let mut out = vec![0u8];
                put_source(&mut out, &src);
                (out, vec![src])
            }),
            (Ok(()), OP_OPEN_MANY) if arg as usize <= MAX_BATCH => {
                let mut ids = vec![0u8; arg as usize * 8];
                stream.read_exact(&mut ids).await?;
                let mut out = vec![0u8];
                out.extend_from_slice(&(arg as u32).to_le_bytes());
                let mut srcs = Vec::new();
                for id in ids.chunks_exact(8) {
                    let id = u64::from_le_bytes(id.try_into().expect("8 bytes"));
                    match svc.open_read(id) {
                        Ok(src) => {
                            svc.on_read(id, src.len, false);
                            out.push(1);
                            put_source(&mut out, &src);
                            srcs.push(src);
                        }
                        Err(_) => out.push(0), // not here: the client reads it over TCP
                    }
                }
                Ok((out, srcs))
            }
            (Ok(()), OP_OPEN_MANY) => {
                // The ids that follow cannot be skipped safely: close.
                return Err(Error::protocol(format!("short-circuit: {arg} blocks in one request, at most {MAX_BATCH}")));
            }
            (Ok(()), OP_WRITE_OPEN) => {
                let mut more = [0u8; 16];
                stream.read_exact(&mut more).await?;
                let hint = u64::from_le_bytes(more[0..8].try_into().expect("8 bytes"));
                let after = u64::from_le_bytes(more[8..16].try_into().expect("8 bytes"));
                write_open(&*svc, &mut sinks, arg, hint, after)
            }
            (Ok(()), OP_WRITE_COMMIT) => {
                let mut head = [0u8; 12];
                stream.read_exact(&mut head).await?;
                let len = u64::from_le_bytes(head[0..8].try_into().expect("8 bytes"));
                let n = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
                if n > MAX_CRCS {
                    return Err(Error::protocol(format!("short-circuit: {n} checksums in one commit")));
                }
                let mut raw = vec![0u8; n as usize * 4];
                stream.read_exact(&mut raw).await?;
                let crcs: Vec<u32> = raw.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
                match sinks.remove(&arg) {
                    None => Err(Error::invalid(format!("block {arg}: no write open on this connection"))),
                    // Renames (and fsync on disk tiers) off the async threads.
                    Some(sink) => tokio::task::spawn_blocking(move || {
                        let mut sink = sink;
                        sink.adopt(len, &crcs)?;
                        sink.commit(len)
                    })
                    .await
                    .unwrap_or_else(|e| Err(Error::internal(format!("commit task: {e}"))))
                    .map(|tier| (vec![0u8, tier_code(tier)], Vec::new())),
                }
            }
            (Ok(()), OP_JOIN) if arg as usize <= MAX_JOIN => {
                let mut raw = vec![0u8; arg as usize * 8];
                stream.read_exact(&mut raw).await?;
                let ids: Vec<u64> = raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
                let svc = svc.clone();
                // Copies up to a whole file: off the async threads.
                tokio::task::spawn_blocking(move || svc.join(&ids))
                    .await
                    .unwrap_or_else(|e| Err(Error::internal(format!("join task: {e}"))))
                    .map(|()| (vec![0u8], Vec::new()))
            }
            (Ok(()), OP_JOIN) => {
                return Err(Error::protocol(format!("short-circuit: {arg} blocks to join, at most {MAX_JOIN}")));
            }
            (Ok(()), OP_WRITE_ABORT) => {
                if let Some(s) = sinks.remove(&arg) {
                    s.abort();
                }
                Ok((vec![0u8], Vec::new()))
            }
            (Ok(()), op) => Err(Error::protocol(format!("short-circuit: unknown op {op}"))),
        };
        match res {
            Ok((out, srcs)) => {
                let mut fds: Vec<RawFd> = srcs.iter().map(|s| s.file.as_raw_fd()).collect();
                if req[0] == OP_WRITE_OPEN {
                    if let Some(f) = sinks.get(&arg).and_then(|s| s.direct()) {
                        fds.push(f.as_raw_fd());
                    }
                }
                send_with_fds(&mut stream, &out, &fds).await?;
            }
            Err(e) => {
                let msg = e.message().as_bytes();
                let mut out = Vec::with_capacity(5 + msg.len());
                out.push(e.kind().code().min(255) as u8);
                out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
                out.extend_from_slice(msg);
                stream.write_all(&out).await?;
                // A refused peer's request may carry more bytes than the 9
                // read (ids, a commit's crcs): they were not consumed, so
                // the stream is out of sync. It gets nothing here anyway.
                if permitted.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Opens block `id` for a direct write: the answer head is ok + tier; the
/// caller attaches the sink's file.
fn write_open(
    svc: &dyn BlockService,
    sinks: &mut std::collections::HashMap<u64, Box<dyn BlockSink>>,
    id: u64,
    len_hint: u64,
    after: u64,
) -> Result<(Vec<u8>, Vec<ReadSource>)> {
    if sinks.contains_key(&id) {
        return Err(Error::new(ErrorKind::AlreadyExists, format!("block {id} is already being written")));
    }
    let sink = svc.open_write(id, len_hint, after)?;
    if sink.direct().is_none() {
        sink.abort();
        return Err(Error::invalid("this worker takes no direct writes; write over TCP"));
    }
    let mut out = vec![0u8, tier_code(sink.tier())];
    out.extend_from_slice(&sink.base().to_le_bytes());
    sinks.insert(id, sink);
    Ok((out, Vec::new()))
}

/// base u64, length u64, tier u8, crc count u32, crcs.
fn put_source(out: &mut Vec<u8>, src: &ReadSource) {
    out.extend_from_slice(&src.base.to_le_bytes());
    out.extend_from_slice(&src.len.to_le_bytes());
    out.push(tier_code(src.tier));
    out.extend_from_slice(&(src.crcs.len() as u32).to_le_bytes());
    for c in src.crcs.iter() {
        out.extend_from_slice(&c.to_le_bytes());
    }
}

fn tier_code(t: TierKind) -> u8 {
    match t {
        TierKind::Mem => 0,
        TierKind::Ssd => 1,
        TierKind::Hdd => 2,
    }
}

fn tier_of(c: u8) -> Result<TierKind> {
    match c {
        0 => Ok(TierKind::Mem),
        1 => Ok(TierKind::Ssd),
        2 => Ok(TierKind::Hdd),
        _ => Err(Error::protocol(format!("short-circuit: unknown tier code {c}"))),
    }
}

/// Sends `data` with `fds` attached to its first byte.
async fn send_with_fds(stream: &mut UnixStream, data: &[u8], fds: &[RawFd]) -> Result<()> {
    let sent = loop {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || sendmsg_fds(stream.as_raw_fd(), data, fds)) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    };
    stream.write_all(&data[sent..]).await?;
    Ok(())
}

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic.
    unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as u32) as usize }
}

fn sendmsg_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
    let space = cmsg_space(fds.len());
    let mut cbuf = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is CMSG_SPACE bytes for `fds.len()` descriptors.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((fds.len() * std::mem::size_of::<RawFd>()) as u32) as _;
            let dst = libc::CMSG_DATA(c) as *mut RawFd;
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(dst.add(i), *fd);
            }
        }
    }
    // SAFETY: msg describes valid buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Receives into `buf`; returns the bytes read and the descriptors that came
/// (at most `max_fds`).
fn recvmsg_fds(sock: RawFd, buf: &mut [u8], max_fds: usize) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let space = cmsg_space(max_fds.max(1));
    let mut cbuf = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: as in sendmsg_fds.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: msg describes valid buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg's control part; we walk it with the CMSG macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let bytes = (*c).cmsg_len as usize - (data as usize - c as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(std::io::Error::other("short-circuit: descriptors truncated (out of file descriptors?)"));
    }
    Ok((n as usize, fds))
}

/// A client's connection to a worker's short-circuit socket.
pub struct LocalConn {
    stream: UnixStream,
    broken: bool,
}

impl LocalConn {
    /// Connects to `path` and checks that the worker behind it is
    /// `worker_id` with `token` (both from meta).
    pub async fn connect(path: &str, worker_id: u64, token: u64) -> Result<LocalConn> {
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(|e| Error::unavailable(format!("short-circuit socket {path}: {e}")))?;
        let mut h = [0u8; HELLO_LEN];
        stream.read_exact(&mut h).await.map_err(|e| Error::unavailable(format!("short-circuit socket {path}: {e}")))?;
        let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let long = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        if word(0) != MAGIC || word(4) != VERSION {
            return Err(Error::protocol(format!("{path} is not a Curvine short-circuit socket (version {VERSION})")));
        }
        if long(8) != worker_id || long(16) != token {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("{path} is not worker {worker_id}'s socket (it says worker {}); not trusting it", long(8)),
            ));
        }
        Ok(LocalConn { stream, broken: false })
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The block's file, length and checksums; `NotFound` when the worker
    /// does not hold it (it may be loading, or gone: read over TCP then).
    pub async fn open(&mut self, block_id: u64) -> Result<ReadSource> {
        let res = self.open_inner(block_id).await;
        if let Err(e) = &res {
            if !matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied) {
                self.broken = true;
            }
        }
        res
    }

    async fn open_inner(&mut self, block_id: u64) -> Result<ReadSource> {
        let mut req = [0u8; 9];
        req[0] = OP_OPEN;
        req[1..].copy_from_slice(&block_id.to_le_bytes());
        self.stream.write_all(&req).await?;
        let mut fds = self.answer(1).await?.into_iter();
        let fd = fds.next().ok_or_else(|| Error::protocol("short-circuit: answer without a descriptor"))?;
        self.source(fd).await
    }

    /// Opens up to [`MAX_BATCH`] blocks in one round trip: `None` for each
    /// block the worker does not hold.
    pub async fn open_many(&mut self, ids: &[u64]) -> Result<Vec<Option<ReadSource>>> {
        let res = self.open_many_inner(ids).await;
        if res.is_err() {
            self.broken = true; // the stream may be mid-answer
        }
        res
    }

    async fn open_many_inner(&mut self, ids: &[u64]) -> Result<Vec<Option<ReadSource>>> {
        if ids.len() > MAX_BATCH {
            return Err(Error::invalid(format!("short-circuit: {} blocks in one request, at most {MAX_BATCH}", ids.len())));
        }
        let mut req = Vec::with_capacity(9 + ids.len() * 8);
        req.push(OP_OPEN_MANY);
        req.extend_from_slice(&(ids.len() as u64).to_le_bytes());
        for id in ids {
            req.extend_from_slice(&id.to_le_bytes());
        }
        self.stream.write_all(&req).await?;
        let mut fds = self.answer(ids.len()).await?.into_iter();
        let mut n = [0u8; 4];
        self.stream.read_exact(&mut n).await?;
        if u32::from_le_bytes(n) as usize != ids.len() {
            return Err(Error::protocol("short-circuit: answer for a different number of blocks"));
        }
        let mut out = Vec::with_capacity(ids.len());
        for _ in ids {
            let mut present = [0u8; 1];
            self.stream.read_exact(&mut present).await?;
            if present[0] == 0 {
                out.push(None);
                continue;
            }
            let fd = fds.next().ok_or_else(|| Error::protocol("short-circuit: fewer descriptors than blocks"))?;
            out.push(Some(self.source(fd).await?));
        }
        Ok(out)
    }

    /// Starts block `block_id` for a direct write: the block file (write
    /// the block into it from the returned base on) and the tier it is in;
    /// `after` is the file's previous block on this worker (0: none). The
    /// write stays open until `write_commit`, `write_abort` or the end of
    /// this connection.
    pub async fn write_open(&mut self, block_id: u64, len_hint: u64, after: u64) -> Result<(File, u64, TierKind)> {
        let res = async {
            let mut req = [0u8; 25];
            req[0] = OP_WRITE_OPEN;
            req[1..9].copy_from_slice(&block_id.to_le_bytes());
            req[9..17].copy_from_slice(&len_hint.to_le_bytes());
            req[17..25].copy_from_slice(&after.to_le_bytes());
            self.stream.write_all(&req).await?;
            let fd = self.answer(1).await?.into_iter().next();
            let mut more = [0u8; 9];
            self.stream.read_exact(&mut more).await?;
            let fd = fd.ok_or_else(|| Error::protocol("short-circuit: write answer without a descriptor"))?;
            let base = u64::from_le_bytes(more[1..9].try_into().expect("8 bytes"));
            Ok((File::from(fd), base, tier_of(more[0])?))
        }
        .await;
        self.mark(&res);
        res
    }

    /// Seals a direct write of `len` bytes with their crc32c, one per chunk.
    pub async fn write_commit(&mut self, block_id: u64, len: u64, crcs: &[u32]) -> Result<TierKind> {
        let res = async {
            let mut req = Vec::with_capacity(21 + crcs.len() * 4);
            req.push(OP_WRITE_COMMIT);
            req.extend_from_slice(&block_id.to_le_bytes());
            req.extend_from_slice(&len.to_le_bytes());
            req.extend_from_slice(&(crcs.len() as u32).to_le_bytes());
            for c in crcs {
                req.extend_from_slice(&c.to_le_bytes());
            }
            self.stream.write_all(&req).await?;
            self.answer(0).await?;
            let mut tier = [0u8; 1];
            self.stream.read_exact(&mut tier).await?;
            tier_of(tier[0])
        }
        .await;
        self.mark(&res);
        res
    }

    /// Asks the worker to store `ids` (one file's blocks, in file order) as
    /// one file at their file offsets; open the blocks again afterwards.
    pub async fn join(&mut self, ids: &[u64]) -> Result<()> {
        let res = async {
            if ids.len() > MAX_JOIN {
                return Err(Error::invalid(format!("short-circuit: {} blocks to join, at most {MAX_JOIN}", ids.len())));
            }
            let mut req = Vec::with_capacity(9 + ids.len() * 8);
            req.push(OP_JOIN);
            req.extend_from_slice(&(ids.len() as u64).to_le_bytes());
            for id in ids {
                req.extend_from_slice(&id.to_le_bytes());
            }
            self.stream.write_all(&req).await?;
            self.answer(0).await.map(|_| ())
        }
        .await;
        self.mark(&res);
        res
    }

    /// Drops a direct write (the worker removes its file and reservation).
    pub async fn write_abort(&mut self, block_id: u64) -> Result<()> {
        let res = async {
            let mut req = [0u8; 9];
            req[0] = OP_WRITE_ABORT;
            req[1..9].copy_from_slice(&block_id.to_le_bytes());
            self.stream.write_all(&req).await?;
            self.answer(0).await.map(|_| ())
        }
        .await;
        self.mark(&res);
        res
    }

    /// A failure other than an answered error leaves the stream unusable.
    fn mark<T>(&mut self, res: &Result<T>) {
        if let Err(e) = res {
            if matches!(e.kind(), ErrorKind::Io | ErrorKind::Protocol | ErrorKind::Unavailable | ErrorKind::Timeout) {
                self.broken = true;
            }
        }
    }

    /// Reads an answer's status byte with the descriptors riding on it; an
    /// error answer becomes the error.
    async fn answer(&mut self, max_fds: usize) -> Result<Vec<OwnedFd>> {
        let mut status = [0u8; 1];
        let fds = loop {
            self.stream.readable().await?;
            let sock = self.stream.as_raw_fd();
            match self.stream.try_io(Interest::READABLE, || recvmsg_fds(sock, &mut status, max_fds)) {
                Ok((0, _)) => return Err(Error::unavailable("short-circuit: the worker closed the socket")),
                Ok((_, f)) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if status[0] != 0 {
            let mut n = [0u8; 4];
            self.stream.read_exact(&mut n).await?;
            let len = u32::from_le_bytes(n).min(1 << 16) as usize;
            let mut msg = vec![0u8; len];
            self.stream.read_exact(&mut msg).await?;
            let kind = ErrorKind::from_code(u16::from(status[0]));
            return Err(Error::new(kind, String::from_utf8_lossy(&msg).into_owned()));
        }
        Ok(fds)
    }

    /// Reads one block's base, length, tier and crcs; `fd` is its file.
    async fn source(&mut self, fd: OwnedFd) -> Result<ReadSource> {
        let mut head = [0u8; 21];
        self.stream.read_exact(&mut head).await?;
        let base = u64::from_le_bytes(head[0..8].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let tier = tier_of(head[16])?;
        let n = u32::from_le_bytes(head[17..21].try_into().expect("4 bytes"));
        if n > MAX_CRCS || u64::from(n) != len.div_ceil(crate::frame::CHUNK) {
            return Err(Error::protocol(format!("short-circuit: {n} checksums for a block of {len} bytes")));
        }
        let mut raw = vec![0u8; n as usize * 4];
        self.stream.read_exact(&mut raw).await?;
        let crcs: Arc<[u32]> = raw.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        Ok(ReadSource { file: Arc::new(File::from(fd)), base, len, crcs, tier })
    }
}
