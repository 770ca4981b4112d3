//! The worker end to end: a real data server on a real socket, a fake meta
//! that records what the worker reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use curvine_common::config::{Config, TierConf};
use curvine_common::proto::meta_service_server::{MetaService, MetaServiceServer};
use curvine_common::proto::*;
use curvine_common::size::ByteSize;
use curvine_common::tier::TierKind;
use curvine_fabric::tcp::{TcpOptions, TcpTransport};
use curvine_fabric::Transport;
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Seen {
    registrations: Vec<Vec<u64>>,
    added: Vec<u64>,
    removed: Vec<u64>,
    heartbeats: u64,
    delete: Vec<u64>,
    reregister: bool,
}

#[derive(Clone, Default)]
struct FakeMeta(Arc<Mutex<Seen>>);

#[async_trait::async_trait]
impl MetaService for FakeMeta {
    async fn mkdir(&self, _: Request<MkdirRequest>) -> Result<Response<MkdirResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn create(&self, _: Request<CreateRequest>) -> Result<Response<CreateResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn add_block(&self, _: Request<AddBlockRequest>) -> Result<Response<AddBlockResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn complete(&self, _: Request<CompleteRequest>) -> Result<Response<CompleteResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn abort(&self, _: Request<AbortRequest>) -> Result<Response<AbortResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn open(&self, _: Request<OpenRequest>) -> Result<Response<OpenResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn open_many(&self, _: Request<OpenManyRequest>) -> Result<Response<OpenManyResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn stat(&self, _: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn rename(&self, _: Request<RenameRequest>) -> Result<Response<RenameResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn set_attr(&self, _: Request<SetAttrRequest>) -> Result<Response<SetAttrResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn report(&self, _: Request<ReportRequest>) -> Result<Response<ReportResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn mount(&self, _: Request<MountRequest>) -> Result<Response<MountResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn umount(&self, _: Request<UmountRequest>) -> Result<Response<UmountResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn list_mounts(&self, _: Request<ListMountsRequest>) -> Result<Response<ListMountsResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn resync(&self, _: Request<ResyncRequest>) -> Result<Response<ResyncResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn warm(&self, _: Request<WarmRequest>) -> Result<Response<WarmResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn job_status(&self, _: Request<JobStatusRequest>) -> Result<Response<JobStatusResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn cancel_job(&self, _: Request<CancelJobRequest>) -> Result<Response<CancelJobResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn free(&self, _: Request<FreeRequest>) -> Result<Response<FreeResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn pin(&self, _: Request<PinRequest>) -> Result<Response<PinResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn report_corrupt(&self, _: Request<ReportCorruptRequest>) -> Result<Response<ReportCorruptResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn persist_source(&self, _: Request<PersistSourceRequest>) -> Result<Response<PersistSourceResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn persist_done(&self, _: Request<PersistDoneRequest>) -> Result<Response<PersistDoneResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn sync(&self, _: Request<SyncRequest>) -> Result<Response<SyncResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn symlink(&self, _: Request<SymlinkRequest>) -> Result<Response<SymlinkResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn link(&self, _: Request<LinkRequest>) -> Result<Response<LinkResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn lock(&self, _: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn xattr(&self, _: Request<XattrRequest>) -> Result<Response<XattrResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn mknod(&self, _: Request<MknodRequest>) -> Result<Response<MknodResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn members(&self, _: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn node_status(&self, _: Request<NodeStatusRequest>) -> Result<Response<NodeStatusResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    /// Blocks of this fake namespace are never in a UFS.
    async fn block_source(&self, r: Request<BlockSourceRequest>) -> Result<Response<BlockSourceResponse>, Status> {
        Err(Status::from(curvine_common::Error::not_found(&format!("block {}", r.into_inner().block_id))))
    }

    async fn register_worker(
        &self,
        req: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerResponse>, Status> {
        let req = req.into_inner();
        let w = req.worker.ok_or_else(|| Status::invalid_argument("no worker"))?;
        assert!(w.id != 0 && w.addr.starts_with("127.0.0.1:") && !w.hostname.is_empty());
        assert_eq!(w.tiers.len(), 2);
        let mut ids: Vec<u64> = req.blocks.iter().map(|b| b.id).collect();
        ids.sort();
        self.0.lock().registrations.push(ids);
        Ok(Response::new(RegisterWorkerResponse { heartbeat_interval_ms: 50 }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let mut s = self.0.lock();
        s.heartbeats += 1;
        s.added.extend(req.added.iter().map(|b| b.id));
        s.removed.extend(req.removed);
        let resp = HeartbeatResponse {
            reregister: std::mem::take(&mut s.reregister),
            delete_blocks: std::mem::take(&mut s.delete),
            evictable: vec![],
            replicate: vec![],
        };
        Ok(Response::new(resp))
    }
}

async fn fake_meta() -> (FakeMeta, String) {
    let fake = FakeMeta::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let svc = MetaServiceServer::new(fake.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (fake, addr)
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn conf(dir: &std::path::Path, meta: Vec<String>) -> Config {
    let mut c = Config::default();
    c.worker.dir = dir.join("state");
    c.worker.meta = meta;
    c.worker.heartbeat_interval = Duration::from_millis(50);
    c.worker.tiers = vec![
        TierConf { kind: "MEM".into(), dir: dir.join("mem"), capacity: ByteSize(1 << 20) },
        TierConf { kind: "SSD".into(), dir: dir.join("ssd"), capacity: ByteSize(8 << 20) },
    ];
    c
}

async fn start(c: Config, reg: &mut prometheus_client::registry::Registry) -> crate::Worker {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    crate::start(c, listener, reg).await.unwrap()
}

#[tokio::test]
async fn worker_serves_blocks_and_reports_them_to_meta() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, meta_addr) = fake_meta().await;
    // The first meta is dead: the worker must move on to the next.
    let c = conf(dir.path(), vec!["127.0.0.1:1".into(), meta_addr]);
    let mut reg = prometheus_client::registry::Registry::default();
    let w = start(c.clone(), &mut reg).await;
    let addr = w.addr().to_string();
    assert_eq!(w.advertised_addr(), addr);

    let t = TcpTransport::new(TcpOptions::default());
    let small: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let big: Vec<u8> = (0..(2u32 << 20)).map(|i| (i / 7) as u8).collect();
    assert_eq!(curvine_fabric::testing::write_block(&t, &addr, 1, &small, 1 << 20).await.unwrap(), TierKind::Mem);
    assert_eq!(curvine_fabric::testing::write_block(&t, &addr, 2, &big, 1 << 20).await.unwrap(), TierKind::Ssd);
    let mut conn = t.connect(&addr).await.unwrap();
    let mut buf = vec![0u8; big.len()];
    assert_eq!(conn.read_into(2, 0, &mut buf).await.unwrap(), big.len());
    assert!(buf == big);
    let e = conn.read_into(99, 0, &mut buf).await.unwrap_err();
    assert_eq!(e.kind(), curvine_common::ErrorKind::NotFound);

    wait_for("blocks reported", || {
        let s = fake.0.lock();
        let all: Vec<u64> = s.registrations.iter().flatten().chain(s.added.iter()).copied().collect();
        all.contains(&1) && all.contains(&2)
    })
    .await;
    // Meta asks to delete block 1; the worker does, and reports the removal.
    fake.0.lock().delete = vec![1];
    wait_for("block 1 removal reported", || fake.0.lock().removed.contains(&1)).await;
    assert!(!w.store().contains(1));
    // Meta forgot the worker: it registers again with a full report.
    fake.0.lock().reregister = true;
    wait_for("re-registration", || fake.0.lock().registrations.len() >= 2).await;
    assert_eq!(fake.0.lock().registrations.last().unwrap(), &vec![2]);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    for name in [
        "curvine_worker_tier_capacity_bytes{tier=\"MEM\"} 1048576",
        "curvine_worker_tier_used_bytes{tier=\"SSD\"} 2097152",
        "curvine_worker_blocks{tier=\"SSD\"} 1",
        "curvine_worker_read_bytes_total",
        "curvine_worker_write_bytes_total",
        "curvine_worker_blocks_written_total 2",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    let id = w.id();
    w.shutdown().await;

    // Restart on the same directories: same id, same blocks, no meta at all.
    let mut reg = prometheus_client::registry::Registry::default();
    let w = start(conf(dir.path(), vec!["127.0.0.1:1".into()]), &mut reg).await;
    assert_eq!(w.id(), id);
    let mut conn = t.connect(&w.addr().to_string()).await.unwrap();
    let mut buf = vec![0u8; big.len()];
    assert_eq!(conn.read_into(2, 0, &mut buf).await.unwrap(), big.len());
    assert!(buf == big);
    w.shutdown().await;
}

#[tokio::test]
async fn uncreatable_tier_dir_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let mut c = conf(dir.path(), vec![]);
    c.worker.tiers[1].dir = file.join("ssd");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = crate::start(c, listener, &mut Default::default()).await.err().unwrap();
    assert_eq!(e.kind(), curvine_common::ErrorKind::Config);
    assert!(e.message().contains("worker.tiers[1].dir"), "{e}");
}

/// The tiered store behind the real TCP server passes the transport
/// conformance suite (round trips, ranges, errors, corruption on disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_store_passes_the_fabric_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let tiers = vec![
        TierConf { kind: "MEM".into(), dir: dir.path().join("mem"), capacity: ByteSize(4 << 20) },
        TierConf { kind: "SSD".into(), dir: dir.path().join("ssd"), capacity: ByteSize(64 << 20) },
    ];
    let store = Arc::new(crate::store::TieredStore::open(7, &tiers, false).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(curvine_fabric::tcp::serve(listener, store.clone(), std::future::pending()));
    let t = TcpTransport::new(TcpOptions { chunk_size: 1 << 20, depth: 3, ..Default::default() });
    let corrupt = |id: u64, at: u64| {
        let path = tiers
            .iter()
            .map(|tc| tc.dir.join("blocks").join(id.to_string()))
            .find(|p| p.exists())
            .ok_or_else(|| curvine_common::Error::not_found(&format!("block {id}")))?;
        curvine_fabric::testing::flip_byte(&path, at)
    };
    curvine_fabric::testing::run_all(&t, &addr, &corrupt).await;
}

/// A client that dies in the middle of a block leaves nothing behind: the
/// reservation is released, the temp file removed, and the id reusable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_mid_write_releases_everything() {
    let dir = tempfile::tempdir().unwrap();
    let tiers = vec![TierConf { kind: "MEM".into(), dir: dir.path().join("mem"), capacity: ByteSize(16 << 20) }];
    let store = Arc::new(crate::store::TieredStore::open(9, &tiers, false).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(curvine_fabric::tcp::serve(listener, store.clone(), std::future::pending()));
    let t = TcpTransport::new(TcpOptions::default());
    let mut c = t.connect(&addr).await.unwrap();
    c.write_open(42, 8 << 20, 0).await.unwrap();
    c.write_data(42, 0, &vec![7u8; 4 << 20]).await.unwrap();
    c.ping().await.unwrap(); // the frames above have been taken off the socket
    assert_eq!(store.usage()[0].reserved, 8 << 20);
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.usage()[0].reserved != 0 {
        assert!(Instant::now() < deadline, "reservation not released: {:?}", store.usage()[0].reserved);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(std::fs::read_dir(dir.path().join("mem/tmp")).unwrap().count(), 0, "temp file left behind");
    assert!(!store.contains(42));
    let data = vec![9u8; 1 << 20];
    assert_eq!(curvine_fabric::testing::write_block(&t, &addr, 42, &data, 1 << 20).await.unwrap(), TierKind::Mem);
}

/// Blocks written with `after` over TCP and over the same-host socket land
/// in one extent file at consecutive offsets, and read back right over
/// both (sendfile and the socket's descriptor add the block's base).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_written_after_each_other_form_one_extent_over_both_transports() {
    use curvine_fabric::service::BlockService;
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let tiers = vec![TierConf { kind: "MEM".into(), dir: dir.path().join("mem"), capacity: ByteSize(64 << 20) }];
    let store = Arc::new(crate::store::TieredStore::open(9, &tiers, false).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(curvine_fabric::tcp::serve(listener, store.clone(), std::future::pending()));
    let sock = dir.path().join("w.sock");
    let local = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(curvine_fabric::local::serve_local(local, store.clone(), 9, 77, std::future::pending()));
    let tcp = TcpTransport::new(TcpOptions::default());
    let shm = curvine_fabric::shm::ShmTransport::new(9, 77, true);
    let sock = sock.to_str().unwrap().to_string();
    let blocks: Vec<Vec<u8>> = (0..4u8).map(|i| (0..(1usize << 20)).map(|j| (j as u8) ^ i.wrapping_mul(37)).collect()).collect();
    // 1 and 3 over TCP, 2 and 4 through the socket, each after the one before.
    for (i, data) in blocks.iter().enumerate() {
        let (t, at): (&dyn Transport, &str) = if i % 2 == 0 { (&tcp, &addr) } else { (&shm, &sock) };
        let mut c = t.connect(at).await.unwrap();
        let id = i as u64 + 1;
        c.write_open(id, data.len() as u64, id - 1).await.unwrap();
        c.write_data(id, 0, data).await.unwrap();
        c.write_commit(id, data.len() as u64).await.unwrap();
    }
    let placed: Vec<(u64, u64)> = (1..=4)
        .map(|id| {
            let s = store.open_read(id).unwrap();
            (s.file.metadata().unwrap().ino(), s.base)
        })
        .collect();
    assert!(placed.iter().all(|p| p.0 == placed[0].0), "one file: {placed:?}");
    assert_eq!(placed.iter().map(|p| p.1).collect::<Vec<_>>(), vec![0, 1 << 20, 2 << 20, 3 << 20]);
    for (t, at) in [(&tcp as &dyn Transport, &addr), (&shm, &sock)] {
        let mut c = t.connect(at).await.unwrap();
        for (i, data) in blocks.iter().enumerate() {
            let mut buf = vec![0u8; data.len()];
            assert_eq!(c.read_into(i as u64 + 1, 0, &mut buf).await.unwrap(), data.len());
            assert!(buf == *data, "block {} over {}", i + 1, t.name());
            // A range that starts mid-chunk.
            let mut part = vec![0u8; 100_000];
            c.read_into(i as u64 + 1, 12_345, &mut part).await.unwrap();
            assert!(part[..] == data[12_345..112_345]);
        }
    }
}
