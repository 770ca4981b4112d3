//! The TCP transport against the conformance suite, plus what only a byte
//! stream can get wrong: malformed and oversized frames.

use std::sync::Arc;

use std::time::Duration;

use curvine_common::ErrorKind;
use curvine_fabric::frame::{Header, Op, HEADER_LEN, MAGIC};
use curvine_fabric::msg::{ReadReq, WriteOpen};
use curvine_fabric::tcp::{ServeOptions, TcpOptions, TcpTransport};
use curvine_fabric::testing::{run_all, serve_dir, write_block, DirBlocks};
use curvine_fabric::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn server() -> (String, Arc<DirBlocks>, tempfile::TempDir) {
    server_with(ServeOptions::default()).await
}

async fn server_with(opts: ServeOptions) -> (String, Arc<DirBlocks>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (addr, svc) = serve_dir(dir.path(), opts).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_end_overflows_closes_the_connection() {
    let (addr, _svc, _d) = server().await;
    let mut head = Vec::new();
    ReadReq { block_id: 1, offset: u64::MAX - 10, len: 100 }.encode(&mut head);
    let mut frame = Header::request(Op::Read, 1, head.len(), 0).encode().to_vec();
    frame.extend_from_slice(&head);
    assert!(closed_after(&addr, &frame).await);
    let t = TcpTransport::new(TcpOptions::default());
    t.connect(&addr).await.unwrap().ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_writes_per_connection_are_capped() {
    let (addr, _svc, _d) = server().await;
    let t = TcpTransport::new(TcpOptions::default());
    let mut c = t.connect(&addr).await.unwrap();
    for id in 1..=16 {
        c.write_open(id, 0, 0).await.unwrap();
    }
    let e = c.write_open(17, 0, 0).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.message().contains("16 writes open"), "{e}");
    // The refusal leaves the connection usable, and freeing a slot lets
    // the next block open.
    assert!(!c.is_broken());
    c.write_abort(1).await.unwrap();
    c.write_open(17, 0, 0).await.unwrap();
    // Idle sessions hold no blocking thread: sixteen of them on each of
    // many connections still leave the server serving.
    let mut held = Vec::new();
    for n in 0..40u64 {
        let mut c = t.connect(&addr).await.unwrap();
        for id in 0..16 {
            c.write_open(1000 + n * 16 + id, 0, 0).await.unwrap();
        }
        held.push(c);
    }
    let data = vec![7u8; 3 << 20];
    write_block(&t, &addr, 99, &data, 1 << 20).await.unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(t.connect(&addr).await.unwrap().read_into(99, 0, &mut back).await.unwrap(), data.len());
    assert!(back == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_block_file_breaks_the_connection_instead_of_serving_bad_bytes() {
    let (addr, _svc, dir) = server().await;
    let t = TcpTransport::new(TcpOptions { chunk_size: 2 << 20, io_timeout: Duration::from_secs(20), ..Default::default() });
    let data = vec![5u8; 1 << 20];
    write_block(&t, &addr, 7, &data, 1 << 20).await.unwrap();
    // The disk lost the block's second half behind the index's back.
    std::fs::OpenOptions::new().write(true).open(dir.path().join("7")).unwrap().set_len(512 << 10).unwrap();
    let mut c = t.connect(&addr).await.unwrap();
    let mut buf = vec![0u8; data.len()];
    let e = c.read_into(7, 0, &mut buf).await.unwrap_err();
    // Part of the payload was out: the worker closes the connection (no
    // error frame inside the payload, no wait for bytes that never come).
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(c.is_broken());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_reading_makes_the_client_write_time_out() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // A worker that answers the WriteOpen, then never reads again.
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut hb = [0u8; HEADER_LEN];
        s.read_exact(&mut hb).await.unwrap();
        let h = Header::decode(&hb).unwrap();
        let mut head = vec![0u8; h.head_len as usize];
        s.read_exact(&mut head).await.unwrap();
        WriteOpen::decode(&head).unwrap();
        s.write_all(&Header { status: 0, head_len: 1, payload_len: 0, ..h }.encode()).await.unwrap();
        s.write_all(&[0]).await.unwrap();
        let _ = stop_rx.await;
    });
    let t = TcpTransport::new(TcpOptions { io_timeout: Duration::from_millis(300), ..Default::default() });
    let mut c = t.connect(&addr).await.unwrap();
    c.write_open(1, 0, 0).await.unwrap();
    // Far more than the socket buffers of both ends hold.
    let data = vec![0u8; 128 << 20];
    let e = c.write_data(1, 0, &data).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(c.is_broken());
    drop(stop_tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_open_write_goes_silent_is_closed() {
    let opts = ServeOptions { write_idle_timeout: Some(Duration::from_millis(200)), ..Default::default() };
    let (addr, _svc, _d) = server_with(opts).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let mut head = Vec::new();
    WriteOpen { block_id: 3, len_hint: 0, after: 0 }.encode(&mut head);
    let mut frame = Header::request(Op::WriteOpen, 1, head.len(), 0).encode().to_vec();
    frame.extend_from_slice(&head);
    s.write_all(&frame).await.unwrap();
    // The answer (header + tier byte), then EOF once the idle limit passes.
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept an idle write open"),
        }
    }
    assert_eq!(got.len(), HEADER_LEN + 1, "only the WriteOpen answer");
    let h = Header::decode(got[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert!(h.error().is_none());
    // Other connections are untouched, and the block can be written again.
    let t = TcpTransport::new(TcpOptions::default());
    write_block(&t, &addr, 3, &[1u8; 100], 1 << 20).await.unwrap();
}
