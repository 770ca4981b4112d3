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

/// Names in `dir`, for "nothing left behind" checks.
fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let ufs = Ufs::new(&format!("file://{}", dir.path().display()), &small_pages(BTreeMap::new())).unwrap();
    // Writes are staged in the root (same file system as their targets) ...
    assert_eq!(ufs.staging_dir(), Some(".curvine-tmp"));
    assert!(!ufs.writes_in_place());
    assert!(dir.path().join(".curvine-tmp").is_dir());
    conformance(&ufs, "suite").await;
    // ... and aborted or dropped writes leave no temp file there.
    assert!(names_in(&dir.path().join(".curvine-tmp")).is_empty(), "{:?}", names_in(&dir.path().join(".curvine-tmp")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_with_its_own_staging_dir_passes_conformance() {
    let (dir, staging) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut o = BTreeMap::new();
    o.insert("atomic_write_dir".to_string(), staging.path().display().to_string());
    let ufs = Ufs::new(&format!("file://{}", dir.path().display()), &small_pages(o)).unwrap();
    assert_eq!(ufs.staging_dir(), None, "outside the root: nothing to hide");
    conformance(&ufs, "suite").await;
    assert!(names_in(staging.path()).is_empty(), "{:?}", names_in(staging.path()));
    assert_eq!(names_in(dir.path()), ["suite"], "no default staging dir");
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
