//! The same conformance suite against a local directory and a real S3 server
//! (moto, or s3s-fs with CV_S3_SERVER=s3s-fs).

use std::collections::BTreeMap;

use curvine_ufs::testing::conformance;
use curvine_ufs::Ufs;
use testbed::s3::S3Server;

/// Small store pages so listings cross several of them.
fn small_pages(mut o: BTreeMap<String, String>) -> BTreeMap<String, String> {
    o.insert("list_page".into(), "7".into());
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let ufs = Ufs::new(&format!("file://{}", dir.path().display()), &small_pages(BTreeMap::new())).unwrap();
    conformance(&ufs, "suite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_passes_conformance() {
    let s3 = S3Server::start();
    s3.create_bucket("conf");
    let ufs = Ufs::new(&s3.uri("conf", "mount/root"), &small_pages(s3.options())).unwrap();
    conformance(&ufs, "suite").await;
    // What the suite wrote, it also removed.
    let left = s3.boto3("print(s3.list_objects_v2(Bucket='conf').get('KeyCount', 0))");
    assert_eq!(left.trim(), "0", "objects left behind");
    // Nor multipart uploads: the aborted and the dropped writer each had
    // one in progress (a dropped writer aborts from a spawned task).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let pending = s3.boto3("print(len(s3.list_multipart_uploads(Bucket='conf').get('Uploads', [])))");
        if pending.trim() == "0" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "multipart uploads left behind: {pending}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
