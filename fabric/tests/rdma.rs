//! The RDMA transport: the conformance suite where this host has an RDMA
//! device (soft-RoCE from testbed/rxe.sh, or a real NIC), and everywhere
//! the parts that need none: the worker's answer to a client that asks for
//! RDMA, the protocol errors of RDMA requests out of order, and the
//! client's fallback to TCP.

use std::sync::Arc;

use curvine_common::{Error, ErrorKind, Result};
use curvine_fabric::frame::{Header, Op, HEADER_LEN};
use curvine_fabric::rdma::auto::AutoTransport;
use curvine_fabric::rdma::wire::{Endpoint, FLAG_RDMA};
use curvine_fabric::rdma::{probe, RdmaOptions};
use curvine_fabric::tcp::{ServeOptions, TcpOptions};
use curvine_fabric::testing::{run_all, serve_dir, DirBlocks};
use curvine_fabric::{Capabilities, DataConn, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server(opts: ServeOptions) -> (String, Arc<DirBlocks>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (addr, svc) = serve_dir(dir.path(), opts).await;
    (addr, svc, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdma_passes_the_conformance_suite_where_a_device_exists() {
    let opts = RdmaOptions { slot_size: 1 << 20, slots: 4, ..Default::default() };
    if let Err(why) = probe(&opts) {
        eprintln!("SKIP rdma conformance: {}", why.message());
        return;
    }
    let (addr, svc, _d) = server(ServeOptions { rdma: Some(opts.clone()), ..Default::default() }).await;
    let t = curvine_fabric::rdma::client::RdmaTransport::open(&opts, TcpOptions::default()).unwrap();
    assert_eq!(t.name(), "rdma");
    run_all(&t, &addr, &|id, at| svc.corrupt(id, at)).await;
}

/// Sends one frame and returns the answer's header, head and payload.
async fn exchange(s: &mut TcpStream, h: Header, head: &[u8]) -> Option<(Header, Vec<u8>, Vec<u8>)> {
    let mut out = h.encode().to_vec();
    out.extend_from_slice(head);
    s.write_all(&out).await.ok()?;
    let mut hb = [0u8; HEADER_LEN];
    s.read_exact(&mut hb).await.ok()?;
    let rh = Header::decode(&hb).ok()?;
    let mut rhead = vec![0u8; rh.head_len as usize];
    s.read_exact(&mut rhead).await.ok()?;
    let mut payload = vec![0u8; rh.payload_len as usize];
    s.read_exact(&mut payload).await.ok()?;
    Some((rh, rhead, payload))
}

fn some_endpoint() -> Vec<u8> {
    let mut b = Vec::new();
    Endpoint { qpn: 0x42, psn: 7, lid: 0, gid: [0; 16], mtu: 3 }.encode(&mut b);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_rdma_says_why_and_keeps_the_connection() {
    for (opts, expect) in [
        (ServeOptions { rdma: None, ..Default::default() }, "turned off"),
        (ServeOptions::default(), "rdma"),
    ] {
        let has_device = opts.rdma.as_ref().is_some_and(|o| probe(o).is_ok());
        let (addr, _svc, _d) = server(opts).await;
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let (h, head, msg) =
            exchange(&mut s, Header::request(Op::RdmaConnect, 1, Endpoint::LEN, 0), &some_endpoint()).await.unwrap();
        if has_device {
            // A host with a device accepts; its endpoint must decode.
            assert!(h.error().is_none());
            Endpoint::decode(&head).unwrap();
            continue;
        }
        let msg = String::from_utf8_lossy(&msg).to_string();
        assert_eq!(h.error(), Some(ErrorKind::Unavailable), "{msg}");
        assert!(msg.to_lowercase().contains(expect), "{msg:?} should say {expect:?}");
        eprintln!("worker refused rdma: {msg}");
        // The refusal is an answer, not a dropped connection.
        let (h, _, _) = exchange(&mut s, Header::request(Op::Ping, 2, 0, 0), &[]).await.unwrap();
        assert!(h.error().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdma_requests_out_of_order_are_protocol_errors() {
    let (addr, _svc, _d) = server(ServeOptions::default()).await;
    // A read that asks for RDMA on a connection without a queue pair.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let mut head = Vec::new();
    curvine_fabric::msg::ReadReq { block_id: 1, offset: 0, len: 10 }.encode(&mut head);
    curvine_fabric::rdma::wire::RemoteBuf { addr: 4096, rkey: 1, len: 10 }.encode(&mut head);
    let h = Header { flags: FLAG_RDMA, ..Header::request(Op::Read, 1, head.len(), 0) };
    let (rh, _, msg) = exchange(&mut s, h, &head).await.unwrap();
    assert_eq!(rh.error(), Some(ErrorKind::Protocol));
    assert!(String::from_utf8_lossy(&msg).contains("RdmaConnect"), "{}", String::from_utf8_lossy(&msg));
    // A garbled endpoint.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let (rh, _, msg) = exchange(&mut s, Header::request(Op::RdmaConnect, 1, 3, 0), &[1, 2, 3]).await.unwrap();
    assert_eq!(rh.error(), Some(ErrorKind::Protocol), "{}", String::from_utf8_lossy(&msg));
}

/// Plays an RDMA-capable client up to the handshake: asks the worker for a
/// queue pair and fails with the worker's answer, as `RdmaTransport` does
/// when the worker refuses (a capable client on a host whose workers have
/// no device).
struct AskOnly;

#[async_trait::async_trait]
impl Transport for AskOnly {
    fn name(&self) -> &'static str {
        "rdma-handshake"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn connect(&self, addr: &str) -> Result<Box<dyn DataConn>> {
        let mut s = TcpStream::connect(addr).await?;
        let (h, _, msg) = exchange(&mut s, Header::request(Op::RdmaConnect, 1, Endpoint::LEN, 0), &some_endpoint())
            .await
            .ok_or_else(|| Error::unavailable("no answer"))?;
        match h.error() {
            Some(kind) => Err(Error::new(kind, String::from_utf8_lossy(&msg).into_owned())),
            None => Err(Error::internal("the worker accepted a made-up queue pair")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_falls_back_to_tcp_when_a_worker_refuses_rdma() {
    let (addr, svc, _d) = server(ServeOptions { rdma: None, ..Default::default() }).await;
    let t = AutoTransport::new(TcpOptions { chunk_size: 1 << 20, depth: 3, ..Default::default() }, Some(Arc::new(AskOnly)));
    assert!(t.uses_rdma(&addr));
    t.connect(&addr).await.unwrap().ping().await.unwrap();
    assert!(!t.uses_rdma(&addr), "a refusing worker is remembered");
    // Everything then works over TCP.
    run_all(&t, &addr, &|id, at| svc.corrupt(id, at)).await;

    // A client without a device never asks.
    let plain = AutoTransport::detect(TcpOptions::default(), &RdmaOptions::default());
    if probe(&RdmaOptions::default()).is_err() {
        assert!(!plain.uses_rdma(&addr));
        assert_eq!(plain.name(), "tcp");
    }
}
