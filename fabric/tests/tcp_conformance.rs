//! The TCP transport against the conformance suite, plus what only a byte
//! stream can get wrong: malformed and oversized frames.

use std::sync::Arc;

use curvine_fabric::frame::{Header, Op, HEADER_LEN, MAGIC};
use curvine_fabric::tcp::{serve, TcpOptions, TcpTransport};
use curvine_fabric::testing::{run_all, DirBlocks};
use curvine_fabric::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn server() -> (String, Arc<DirBlocks>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let svc = Arc::new(DirBlocks::new(dir.path().to_path_buf()));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(serve(l, svc.clone(), std::future::pending()));
    (addr, svc, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_passes_the_conformance_suite() {
    let (addr, svc, _d) = server().await;
    // Small requests and a shallow pipeline exercise the multi-request path.
    let t = TcpTransport::new(TcpOptions { chunk_size: 1 << 20, depth: 3, ..Default::default() });
    run_all(&t, &addr, &|id, at| svc.corrupt(id, at)).await;
}

/// Sends `bytes` on a fresh connection; returns whether the server closed it.
async fn closed_after(addr: &str, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 8192];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // the error frame, then EOF
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_that_connection() {
    let (addr, _svc, _d) = server().await;
    let t = TcpTransport::new(TcpOptions::default());
    let mut healthy = t.connect(&addr).await.unwrap();
    healthy.ping().await.unwrap();

    let garbage = [0xABu8; 64];
    assert!(closed_after(&addr, &garbage).await, "bad magic must close the connection");

    let mut oversized = Header::request(Op::WriteData, 1, 0, 0).encode();
    oversized[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(closed_after(&addr, &oversized).await, "oversized payload must close the connection");

    let mut big_head = Header::request(Op::Read, 1, 0, 0).encode();
    big_head[16..20].copy_from_slice(&(1u32 << 31).to_le_bytes());
    assert!(closed_after(&addr, &big_head).await, "oversized head must close the connection");

    let mut bad_version = [0u8; HEADER_LEN];
    bad_version[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    bad_version[2] = 77;
    assert!(closed_after(&addr, &bad_version).await);

    // A truncated read head is a protocol error too.
    let mut short = Header::request(Op::Read, 1, 4, 0).encode().to_vec();
    short.extend_from_slice(&[1, 2, 3, 4]);
    assert!(closed_after(&addr, &short).await);

    // The server still serves the connection it had and new ones.
    healthy.ping().await.unwrap();
    t.connect(&addr).await.unwrap().ping().await.unwrap();
}
