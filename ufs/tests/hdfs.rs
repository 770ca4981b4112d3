//! hdfs:// (native RPC). No HDFS runs on the test machines, so this only
//! proves the scheme is built and fails fast and clearly without a namenode.

#![cfg(feature = "hdfs")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use curvine_ufs::{ErrorKind, Ufs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_namenode_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let uri = format!("hdfs://127.0.0.1:{port}/warehouse");
    let ufs = Ufs::new(&uri, &BTreeMap::new()).unwrap();
    assert_eq!(ufs.uri(), uri);
    let t = Instant::now();
    let e = ufs.check().await.unwrap_err();
    eprintln!("{e} (after {:?})", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    assert!(matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Io), "{e}");
    assert!(e.message().starts_with(&uri), "{e}");
}
