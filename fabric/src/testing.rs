//! Conformance suite every transport runs, and a minimal file-backed
//! `BlockService` to run it against (the worker's real store runs the same
//! suite from its own tests).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use curvine_common::tier::TierKind;
use curvine_common::{Error, ErrorKind, Result};
use parking_lot::Mutex;

use crate::frame::CHUNK;
use crate::service::{BlockService, BlockSink, ReadSource};
use crate::transport::Transport;

/// A `DirBlocks` over `dir`, served over TCP with `opts` on a loopback port
/// the OS picks, until the process ends: its address and the service.
pub async fn serve_dir(dir: &std::path::Path, opts: crate::tcp::ServeOptions) -> (String, Arc<DirBlocks>) {
    let svc = Arc::new(DirBlocks::new(dir.to_path_buf()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = l.local_addr().expect("local addr").to_string();
    tokio::spawn(crate::tcp::serve_with(l, svc.clone(), std::future::pending(), opts));
    (addr, svc)
}

/// Blocks as plain files in one directory; no capacity limit.
pub struct DirBlocks {
    dir: PathBuf,
    blocks: Arc<Mutex<HashMap<u64, (u64, Arc<[u32]>)>>>,
}

impl DirBlocks {
    pub fn new(dir: PathBuf) -> Self {
        DirBlocks { dir, blocks: Arc::default() }
    }

    /// Flips one byte of a stored block, as a failing disk would.
    pub fn corrupt(&self, block_id: u64, at: u64) -> Result<()> {
        flip_byte(&self.dir.join(block_id.to_string()), at)
    }
}

struct DirSink {
    id: u64,
    path: PathBuf,
    file: Arc<File>,
    crcs: Vec<u32>,
    blocks: Arc<Mutex<HashMap<u64, (u64, Arc<[u32]>)>>>,
}

impl BlockSink for DirSink {
    fn append(&mut self, _offset: u64, data: &[u8], crcs: &[u32]) -> Result<()> {
        (&*self.file).write_all(data)?;
        self.crcs.extend_from_slice(crcs);
        Ok(())
    }
    fn commit(self: Box<Self>, len: u64) -> Result<TierKind> {
        self.blocks.lock().insert(self.id, (len, self.crcs.into()));
        Ok(TierKind::Mem)
    }
    fn abort(self: Box<Self>) {
        let _ = std::fs::remove_file(&self.path);
    }
    fn tier(&self) -> TierKind {
        TierKind::Mem
    }
    fn direct(&self) -> Option<Arc<File>> {
        Some(self.file.clone())
    }
    fn adopt(&mut self, len: u64, crcs: &[u32]) -> Result<()> {
        if crcs.len() as u64 != len.div_ceil(CHUNK) {
            return Err(Error::invalid(format!("block {}: {} checksums for {len} bytes", self.id, crcs.len())));
        }
        self.crcs = crcs.to_vec();
        Ok(())
    }
}

impl BlockService for DirBlocks {
    fn open_read(&self, block_id: u64) -> Result<ReadSource> {
        let (len, crcs) = self
            .blocks
            .lock()
            .get(&block_id)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("block {block_id} not found")))?;
        let file = Arc::new(File::open(self.dir.join(block_id.to_string()))?);
        Ok(ReadSource { file, base: 0, len, crcs, tier: TierKind::Mem })
    }

    fn open_write(&self, block_id: u64, _len_hint: u64, _after: u64) -> Result<Box<dyn BlockSink>> {
        if self.blocks.lock().contains_key(&block_id) {
            return Err(Error::new(ErrorKind::AlreadyExists, format!("block {block_id} exists")));
        }
        let path = self.dir.join(block_id.to_string());
        let file = Arc::new(std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?);
        Ok(Box::new(DirSink { id: block_id, path, file, crcs: Vec::new(), blocks: self.blocks.clone() }))
    }
}

/// Flips the byte at `at` of the file at `path`.
pub fn flip_byte(path: &std::path::Path, at: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at)?;
    b[0] ^= 0xff;
    f.write_all_at(&b, at)?;
    Ok(())
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes a block through `t` in frames of `frame` bytes (a multiple of CHUNK).
pub async fn write_block(t: &dyn Transport, addr: &str, id: u64, data: &[u8], frame: usize) -> Result<TierKind> {
    let mut c = t.connect(addr).await?;
    c.write_open(id, data.len() as u64, 0).await?;
    let mut off = 0;
    for piece in data.chunks(frame.max(CHUNK as usize)) {
        c.write_data(id, off as u64, piece).await?;
        off += piece.len();
    }
    c.write_commit(id, data.len() as u64).await
}

/// The suite: round trips of awkward sizes, ranged and unaligned reads,
/// reads past the end, missing blocks, commit errors, and corruption.
/// `corrupt(block_id, offset)` must flip a stored byte of a block of the
/// service behind `addr`, as a failing disk would. Block ids 100..=104 and
/// 500 are used.
pub async fn run_all(t: &dyn Transport, addr: &str, corrupt: &(dyn Fn(u64, u64) -> Result<()> + Sync)) {
    let sizes = [1usize, CHUNK as usize - 1, CHUNK as usize, CHUNK as usize + 1, (9 << 20) + 3];
    for (i, &n) in sizes.iter().enumerate() {
        let id = 100 + i as u64;
        let data = pattern(n, id);
        write_block(t, addr, id, &data, 1 << 20).await.expect("write");
        let mut c = t.connect(addr).await.expect("connect");
        let mut buf = vec![0u8; n];
        assert_eq!(c.read_into(id, 0, &mut buf).await.expect("read"), n, "size {n}");
        assert!(buf == data, "round trip of {n} bytes differs");
        // Unaligned ranges inside the block.
        for (lo, len) in [(1usize, 7usize), (CHUNK as usize - 3, 10), (n / 3, n / 2)] {
            if lo + len > n {
                continue;
            }
            let mut b = vec![0u8; len];
            assert_eq!(c.read_into(id, lo as u64, &mut b).await.expect("range"), len);
            assert!(b == data[lo..lo + len], "range {lo}+{len} of {n} differs");
        }
        // Past the end: short read, connection stays usable.
        let mut b = vec![0u8; 100];
        let got = c.read_into(id, n as u64 - 1, &mut b).await.expect("tail");
        assert_eq!(got, 1);
        assert_eq!(b[0], data[n - 1]);
        c.ping().await.expect("connection usable after short read");
    }

    // A request whose future is dropped midway (a timeout, a cancelled
    // task) leaves the connection marked broken, never out of step with the
    // server for the next caller.
    let mut big = vec![0u8; 9 << 20];
    let mut abandoned = 0;
    for _ in 0..20 {
        let mut c = t.connect(addr).await.expect("connect");
        let finished = {
            let read = c.read_into(104, 0, &mut big);
            futures::pin_mut!(read);
            futures::poll!(read.as_mut()).is_ready()
        };
        // A read that completed within one poll left nothing in flight.
        if !finished {
            abandoned += 1;
            assert!(c.is_broken(), "{}: a connection with an abandoned request must not be reused", t.name());
        }
    }
    // Over TCP a 9 MiB answer practically always needs more than one poll.
    assert!(abandoned > 0 || t.name() != "tcp", "no TCP read was ever caught in flight");

    let mut c = t.connect(addr).await.expect("connect");
    let e = c.read_into(999_999, 0, &mut [0u8; 10]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(!c.is_broken());
    c.ping().await.expect("usable after NotFound");
    // Load of a block the server has: "already cached"; of one it cannot
    // produce: a NotFound for that request only.
    assert!(c.load(100).await.expect("load of a present block"), "present block must report cached");
    assert_eq!(c.load(999_999).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert!(c.persist(1).await.is_err(), "a plain block server cannot upload files");
    assert!(!c.is_broken());

    // A commit whose length disagrees with what was sent is refused and
    // leaves no block behind.
    c.write_open(500, 10, 0).await.expect("open");
    c.write_data(500, 0, b"0123456789").await.expect("data");
    assert!(c.write_commit(500, 11).await.is_err());
    assert_eq!(c.read_into(500, 0, &mut [0u8; 4]).await.unwrap_err().kind(), ErrorKind::NotFound);

    // Corruption is detected on the aligned body (checked by the reader)
    // and on partial edges (checked by the server).
    let id = 104;
    let data = pattern((9 << 20) + 3, id);
    corrupt(id, 3 * CHUNK + 5).expect("corrupt");
    let mut buf = vec![0u8; data.len()];
    let e = c.read_into(id, 0, &mut buf).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let mut c = t.connect(addr).await.expect("connect");
    let e = c.read_into(id, 3 * CHUNK + 1, &mut [0u8; 16]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    // Untouched chunks still read fine.
    let mut b = vec![0u8; CHUNK as usize];
    let mut c = t.connect(addr).await.expect("connect");
    c.read_into(id, 5 * CHUNK, &mut b).await.expect("clean chunk");
    assert!(b == data[5 * CHUNK as usize..6 * CHUNK as usize]);
}
