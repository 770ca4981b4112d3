//! Starts a real one-member meta node in-process, drives it over gRPC, and
//! restarts it on the same directory.

use curvine_common::config::Config;
use curvine_common::proto::meta_service_client::MetaServiceClient;
use curvine_common::proto::*;
use curvine_common::{Error, ErrorKind};
use curvine_meta::MetaNode;
use tonic::transport::Channel;

async fn start(dir: &std::path::Path) -> (MetaNode, MetaServiceClient<Channel>) {
    let mut conf = Config::default();
    conf.meta.dir = dir.to_path_buf();
    conf.meta.log_sync = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let node = MetaNode::start(conf, listener, &mut registry).await.unwrap();
    let client = MetaServiceClient::connect(format!("http://{}", node.addr())).await.unwrap();
    (node, client)
}

fn kind(s: tonic::Status) -> ErrorKind {
    Error::from(s).kind()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_survives_restart_and_errors_have_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut c) = start(dir.path()).await;

    c.mkdir(MkdirRequest { path: "/a/b/c".into(), parents: true, mode: 0, ..Default::default() }).await.unwrap();
    let st = c.stat(StatRequest { path: "/a/b".into(), ..Default::default() }).await.unwrap().into_inner().status.unwrap();
    assert_eq!((st.path.as_str(), st.kind, st.children), ("/a/b", FileKind::Dir as i32, 1));

    // a worker, so blocks can be placed
    let worker = WorkerInfo {
        id: 7,
        addr: "127.0.0.1:1".into(),
        hostname: "h".into(),
        tiers: vec![TierInfo { kind: "MEM".into(), capacity: 1 << 30, ..Default::default() }],
        ..Default::default()
    };
    c.register_worker(RegisterWorkerRequest { worker: Some(worker), blocks: vec![ReportedBlock { id: 999, len: 1, tier: "MEM".into() }] })
        .await
        .unwrap();

    let f = c
        .create(CreateRequest { path: "/a/b/f".into(), block_size: 1 << 20, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let blk = c
        .add_block(AddBlockRequest { file_id: f.id, path: "/a/b/f".into(), client_host: "h".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .block
        .unwrap();
    assert_eq!(blk.locations[0].worker_id, 7);
    let done = c
        .complete(CompleteRequest {
            file_id: f.id,
            path: "/a/b/f".into(),
            blocks: vec![CommittedBlock { id: blk.id, len: 100, worker_ids: vec![7] }],
            len: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert!(done.complete);
    let open = c.open(OpenRequest { path: "/a/b/f".into() }).await.unwrap().into_inner();
    assert_eq!(open.blocks.len(), 1);
    assert_eq!(open.blocks[0].locations[0].worker_id, 7);
    assert_eq!(open.status.unwrap().len, 100);

    // the orphan block 999 is sent back for deletion
    let hb = c.heartbeat(HeartbeatRequest { worker_id: 7, ..Default::default() }).await.unwrap().into_inner();
    assert!(!hb.reregister);
    assert_eq!(hb.delete_blocks, vec![999]);

    // error kinds
    let e = c.mkdir(MkdirRequest { path: "/a".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(kind(e), ErrorKind::AlreadyExists);
    let e = c.create(CreateRequest { path: "/a/b/f/x".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(kind(e), ErrorKind::NotADirectory);
    let e = c.open(OpenRequest { path: "/a/b".into() }).await.unwrap_err();
    assert_eq!(kind(e), ErrorKind::IsADirectory);
    let e = c.delete(DeleteRequest { path: "/a".into(), recursive: false }).await.unwrap_err();
    assert_eq!(kind(e), ErrorKind::NotEmpty);
    let e = c.stat(StatRequest { path: "/missing".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(kind(e), ErrorKind::NotFound);
    let e = c.stat(StatRequest { path: "relative/x".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(kind(e), ErrorKind::InvalidPath);

    // renaming a non-empty directory keeps its children reachable
    c.rename(RenameRequest { src: "/a".into(), dst: "/z".into() }).await.unwrap();
    let st = c.stat(StatRequest { path: "/z/b/f".into(), ..Default::default() }).await.unwrap().into_inner().status.unwrap();
    assert_eq!((st.path.as_str(), st.len), ("/z/b/f", 100));
    let list = c.list(ListRequest { path: "/z/b".into(), ..Default::default() }).await.unwrap().into_inner().entries;
    let names: Vec<_> = list.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(names, vec!["/z/b/c", "/z/b/f"]);
    c.set_attr(SetAttrRequest { path: "/z/b/f".into(), mode: Some(0o600), mtime_ms: Some(5), ..Default::default() }).await.unwrap();

    let report = c.report(ReportRequest {}).await.unwrap().into_inner();
    assert_eq!((report.files, report.dirs), (1, 4));
    assert_eq!(report.raft_leader, 1);

    drop(c);
    node.shutdown().await.unwrap();

    // restart on the same directory
    let (node, mut c) = start(dir.path()).await;
    let st = c.stat(StatRequest { path: "/z/b/f".into(), ..Default::default() }).await.unwrap().into_inner().status.unwrap();
    assert_eq!((st.len, st.mode, st.mtime_ms, st.complete), (100, 0o600, 5, true));
    // Locations are soft state: right after a restart no worker has
    // reported the block yet, and that is a temporary error (clients retry
    // while workers register), not an empty answer.
    let err = c.open(OpenRequest { path: "/z/b/f".into() }).await.unwrap_err();
    assert!(err.message().contains("still registering"), "{err:?}");
    assert_eq!(kind(err), ErrorKind::Unavailable);
    let _ = blk;
    let hb = c.heartbeat(HeartbeatRequest { worker_id: 7, ..Default::default() }).await.unwrap().into_inner();
    assert!(hb.reregister);
    assert_eq!(kind(c.stat(StatRequest { path: "/a".into(), ..Default::default() }).await.unwrap_err()), ErrorKind::NotFound);
    c.delete(DeleteRequest { path: "/z".into(), recursive: true }).await.unwrap();
    let report = c.report(ReportRequest {}).await.unwrap().into_inner();
    assert_eq!((report.files, report.dirs), (0, 1));
    drop(c);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_built_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut conf = Config::default();
    conf.meta.dir = dir.path().to_path_buf();
    conf.meta.log_sync = false;
    conf.meta.snapshot_logs = 10;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = MetaNode::start(conf.clone(), listener, &mut Default::default()).await.unwrap();
    let mut c = MetaServiceClient::connect(format!("http://{}", node.addr())).await.unwrap();
    for i in 0..30 {
        c.mkdir(MkdirRequest { path: format!("/d{i}"), ..Default::default() }).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(dir.path().join("snapshots")).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "no snapshot built");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(c);
    node.shutdown().await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = MetaNode::start(conf, listener, &mut Default::default()).await.unwrap();
    let mut c = MetaServiceClient::connect(format!("http://{}", node.addr())).await.unwrap();
    let list = c.list(ListRequest { path: "/".into(), ..Default::default() }).await.unwrap().into_inner().entries;
    assert_eq!(list.len(), 30);
    drop(c);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_node_on_a_locked_dir_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _c) = start(dir.path()).await;
    let mut conf = Config::default();
    conf.meta.dir = dir.path().to_path_buf();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = MetaNode::start(conf, listener, &mut Default::default()).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains(&dir.path().display().to_string()), "{err}");
    node.shutdown().await.unwrap();
}

/// Run only as a child of `namespace_survives_kill_9`: starts a node on
/// `CV_META_CHILD_DIR`, writes, says "ready" and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process of namespace_survives_kill_9, which runs it"]
async fn kill_9_child() {
    let dir = std::env::var("CV_META_CHILD_DIR").expect("run by namespace_survives_kill_9, which sets CV_META_CHILD_DIR");
    let mut conf = Config::default();
    conf.meta.dir = dir.into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = MetaNode::start(conf, listener, &mut Default::default()).await.unwrap();
    let mut c = MetaServiceClient::connect(format!("http://{}", node.addr())).await.unwrap();
    for i in 0..20 {
        c.mkdir(MkdirRequest { path: format!("/k/d{i}"), parents: true, mode: 0, ..Default::default() }).await.unwrap();
    }
    c.rename(RenameRequest { src: "/k".into(), dst: "/kk".into() }).await.unwrap();
    println!("CHILD-READY");
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_survives_kill_9() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill_9_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("CV_META_CHILD_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut ready = false;
    for line in std::io::BufReader::new(stdout).lines() {
        if line.unwrap().contains("CHILD-READY") {
            ready = true;
            break;
        }
    }
    assert!(ready, "child did not get ready");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (node, mut c) = start(dir.path()).await;
    let list = c.list(ListRequest { path: "/kk".into(), ..Default::default() }).await.unwrap().into_inner().entries;
    assert_eq!(list.len(), 20);
    assert_eq!(kind(c.stat(StatRequest { path: "/k".into(), ..Default::default() }).await.unwrap_err()), ErrorKind::NotFound);
    c.mkdir(MkdirRequest { path: "/after".into(), ..Default::default() }).await.unwrap();
    drop(c);
    node.shutdown().await.unwrap();
}
