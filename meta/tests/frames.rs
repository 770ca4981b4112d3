//! The frame transport (`frame_rpc`) against a real in-process meta node:
//! the same answers and error kinds as gRPC on the same port, malformed
//! frames closing only their own connection, and a shutdown that releases
//! the node's databases while frame clients are still connected.

use std::time::Duration;

use curvine_common::meta_client::MetaClient;
use curvine_common::proto::meta_service_client::MetaServiceClient;
use curvine_common::proto::*;
use curvine_common::{ErrorKind, Result};
use curvine_meta::MetaNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(dir: &std::path::Path) -> MetaNode {
    let mut conf = curvine_common::config::Config::default();
    conf.meta.dir = dir.to_path_buf();
    conf.meta.log_sync = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    MetaNode::start(conf, listener, &mut registry).await.unwrap()
}

fn client(node: &MetaNode, grpc_only: bool) -> MetaClient {
    MetaClient::with_options(vec![node.addr().to_string()], 0, Duration::from_secs(10), Duration::ZERO, false)
        .unwrap()
        .grpc_only(grpc_only)
}

async fn stat(c: &MetaClient, path: &str) -> Result<FileStatus> {
    let p = path.to_string();
    c.call(|mut r| {
        let p = p.clone();
        async move { r.stat(StatRequest { path: p, ..Default::default() }).await }
    })
    .await
    .map(|s| s.status.unwrap())
}

async fn mkdir(c: &MetaClient, path: &str) -> Result<()> {
    let p = path.to_string();
    c.call(|mut r| {
        let p = p.clone();
        async move { r.mkdir(MkdirRequest { path: p, parents: true, ..Default::default() }).await }
    })
    .await
    .map(|_| ())
}

async fn list(c: &MetaClient, path: &str) -> Result<Vec<String>> {
    let p = path.to_string();
    let r = c
        .call(|mut r| {
            let p = p.clone();
            async move { r.list(ListRequest { path: p, ..Default::default() }).await }
        })
        .await?;
    Ok(r.entries.into_iter().map(|e| e.path).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_and_grpc_share_the_port_and_answer_alike() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let (frames, grpc) = (client(&node, false), client(&node, true));

    // Writes over one transport are read over the other.
    for i in 0..300 {
        mkdir(&frames, &format!("/f/d{i:03}")).await.unwrap();
    }
    mkdir(&grpc, "/g/x").await.unwrap();
    assert_eq!(frames.transport(), Some("frames"));
    assert_eq!(grpc.transport(), Some("grpc"));
    let (a, b) = (list(&frames, "/f").await.unwrap(), list(&grpc, "/f").await.unwrap());
    assert_eq!(a.len(), 300);
    assert_eq!(a, b);
    assert_eq!(stat(&frames, "/g/x").await.unwrap().kind, FileKind::Dir as i32);

    // Error kinds cross frames intact, for each transport alike.
    for c in [&frames, &grpc] {
        assert_eq!(stat(c, "/missing").await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(stat(c, "relative").await.unwrap_err().kind(), ErrorKind::InvalidPath);
        let e = c
            .call(|mut r| async move { r.mkdir(MkdirRequest { path: "/g/x".into(), ..Default::default() }).await })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    }

    // Many calls at once on one frame connection, answered out of order.
    let calls = (0..200).map(|i| {
        let c = &frames;
        async move {
            if i % 2 == 0 {
                stat(c, &format!("/f/d{:03}", i)).await.map(|s| s.path)
            } else {
                mkdir(c, &format!("/h/{i}")).await.map(|_| format!("/h/{i}"))
            }
        }
    });
    let got = futures::future::try_join_all(calls).await.unwrap();
    for (i, p) in got.iter().enumerate() {
        let want = if i % 2 == 0 { format!("/f/d{i:03}") } else { format!("/h/{i}") };
        assert_eq!(p, &want);
    }
    assert_eq!(list(&grpc, "/h").await.unwrap().len(), 100);

    // A raw tonic client (Raft peers and other tools speak plain gRPC) on
    // the same port.
    let mut raw = MetaServiceClient::connect(format!("http://{}", node.addr())).await.unwrap();
    let st = raw.stat(StatRequest { path: "/h".into(), ..Default::default() }).await.unwrap().into_inner().status.unwrap();
    assert_eq!(st.children, 100);

    // Shutdown with frame clients still connected releases the databases:
    // the node restarts on the same directory and a client reconnects.
    node.shutdown().await.unwrap();
    assert_eq!(stat(&frames, "/h").await.unwrap_err().kind(), ErrorKind::Unavailable);
    let node = start(dir.path()).await;
    let again = client(&node, false);
    assert_eq!(stat(&again, "/h").await.unwrap().children, 100);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let good = client(&node, false);
    mkdir(&good, "/kept").await.unwrap();

    let frames: Vec<Vec<u8>> = vec![
        // a length below the fixed part of a frame
        3u32.to_le_bytes().to_vec(),
        // a length over the limit
        u32::MAX.to_le_bytes().to_vec(),
        // a request whose path runs past its frame
        [&13u32.to_le_bytes()[..], &[1], &7u64.to_le_bytes(), &[200, 0, b'/', b'x']].concat(),
        // a kind no client sends
        [&9u32.to_le_bytes()[..], &[42], &1u64.to_le_bytes()].concat(),
    ];
    for bad in frames {
        let mut s = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
        s.write_all(b"CVRP\x01").await.unwrap();
        let mut echo = [0u8; 5];
        s.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"CVRP\x01");
        s.write_all(&bad).await.unwrap();
        s.write_all(&[0u8; 32]).await.unwrap_or(());
        // The node hangs up on this connection ...
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "frame {bad:?}: {n:?}");
        // ... and keeps serving everyone else.
        assert_eq!(stat(&good, "/kept").await.unwrap().kind, FileKind::Dir as i32);
    }
    // A greeting of an unknown version is refused the same way.
    let mut s = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
    s.write_all(b"CVRP\x09").await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    node.shutdown().await.unwrap();
}
