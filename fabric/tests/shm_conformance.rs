//! The same-host socket transport against the conformance suite, and the
//! refusal of a socket that is not the expected worker's.

use std::sync::Arc;

use curvine_common::ErrorKind;
use curvine_fabric::local::serve_local;
use curvine_fabric::shm::ShmTransport;
use curvine_fabric::testing::{run_all, DirBlocks};
use curvine_fabric::Transport;
use tokio::net::UnixListener;

const WORKER: u64 = 7;
const TOKEN: u64 = 0x5eed;

async fn server() -> (String, Arc<DirBlocks>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    std::fs::create_dir(&blocks).unwrap();
    let svc = Arc::new(DirBlocks::new(blocks));
    let sock = dir.path().join("data.sock");
    let l = UnixListener::bind(&sock).unwrap();
    tokio::spawn(serve_local(l, svc.clone(), WORKER, TOKEN, std::future::pending()));
    (sock.to_string_lossy().into_owned(), svc, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_passes_the_conformance_suite() {
    let (sock, svc, _d) = server().await;
    let t = ShmTransport::new(WORKER, TOKEN, true);
    run_all(&t, &sock, &|id, at| svc.corrupt(id, at)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_is_not_the_workers_is_refused() {
    let (sock, _svc, _d) = server().await;
    for t in [ShmTransport::new(WORKER + 1, TOKEN, true), ShmTransport::new(WORKER, TOKEN + 1, true)] {
        let e = t.connect(&sock).await.err().expect("must refuse");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        assert!(e.message().contains("not trusting"), "{e}");
    }
    let e = ShmTransport::new(WORKER, TOKEN, true).connect("/nonexistent/data.sock").await.err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}
