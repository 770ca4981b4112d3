//! S3 specifics against a real server: objects written through `Ufs` are
//! what boto3 sees and vice versa, implicit directories, and actionable
//! errors for a wrong endpoint, bucket or credentials.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use curvine_ufs::testing::{get, pattern, put};
use curvine_ufs::{ErrorKind, Ufs};
use testbed::s3::S3Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_round_trip_with_boto3() {
    let s3 = S3Server::start();
    s3.create_bucket("bkt");
    let ufs = Ufs::new(&s3.uri("bkt", "root"), &s3.options()).unwrap();

    // Written through Ufs (multipart) → seen by boto3 under the mount root.
    let data = pattern(12 << 20, 3);
    let e = put(&ufs, "dir/big.bin", &data).await;
    let out = s3.boto3(
        "import hashlib\n\
         h = s3.head_object(Bucket='bkt', Key='root/dir/big.bin')\n\
         body = s3.get_object(Bucket='bkt', Key='root/dir/big.bin')['Body'].read()\n\
         print(h['ContentLength'], h['ETag'], hashlib.sha256(body).hexdigest())",
    );
    let parts: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(parts[0], (12 << 20).to_string());
    assert_eq!(parts[1], e.etag, "Ufs reports the store's etag");
    assert_eq!(parts[2], sha256_hex(&data));

    // Written by boto3, no directory markers → implicit dirs in Ufs.
    s3.boto3("s3.put_object(Bucket='bkt', Key='root/x/y/z.txt', Body=b'from boto3')");
    let x = ufs.stat("x").await.unwrap().expect("implicit dir x");
    assert!(x.is_dir);
    assert_eq!(get(&ufs, "x/y/z.txt", 5, 5, None).await.unwrap(), b"boto3");
    // Objects outside the mount root are invisible.
    s3.boto3("s3.put_object(Bucket='bkt', Key='outside.txt', Body=b'no')");
    assert_eq!(ufs.stat("../outside.txt").await.unwrap_err().kind(), ErrorKind::InvalidPath);
    let mut l = ufs.list("").await.unwrap();
    let names: Vec<String> = l.next_page(100).await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["dir", "x"]);

    // Overwritten behind our back → the cached etag no longer reads.
    s3.boto3("s3.put_object(Bucket='bkt', Key='root/dir/big.bin', Body=b'new')");
    let err = get(&ufs, "dir/big.bin", 0, 3, Some(&e.etag)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.message().starts_with("s3://bkt/root/dir/big.bin: changed in the UFS"), "{err}");
}

fn sha256_hex(data: &[u8]) -> String {
    // No sha2 dependency for one test: ask Python, which the harness has anyway.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("d");
    std::fs::write(&f, data).unwrap();
    let py = testbed::s3::moto_venv().join("bin/python");
    let out = std::process::Command::new(py)
        .args(["-c", "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())"])
        .arg(&f)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_missing_bucket() {
    let s3 = S3Server::start();
    let ufs = Ufs::new(&s3.uri("nosuch", ""), &s3.options()).unwrap();
    let e = ufs.check().await.unwrap_err();
    eprintln!("{e}");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().starts_with("s3://nosuch: bucket does not exist"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_unreachable_endpoint_quickly() {
    // A port nobody listens on: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut o = BTreeMap::new();
    o.insert("endpoint".to_string(), format!("http://127.0.0.1:{port}"));
    o.insert("access_key_id".to_string(), "k".to_string());
    o.insert("secret_access_key".to_string(), "topsecret".to_string());
    let ufs = Ufs::new("s3://bkt", &o).unwrap();
    let t = Instant::now();
    let e = ufs.check().await.unwrap_err();
    eprintln!("{e} (after {:?})", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?}", t.elapsed());
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_temporary());
    let want = format!("s3://bkt: cannot reach endpoint http://127.0.0.1:{port}");
    assert!(e.message().starts_with(&want), "{e}");
    assert!(!e.message().contains("topsecret"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_fail_before_any_io() {
    let mut o = BTreeMap::new();
    o.insert("endpoint".to_string(), "http://127.0.0.1:1".to_string());
    o.insert("secret_acces_key".to_string(), "topsecret".to_string());
    let e = Ufs::new("s3://bkt/p", &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("unknown option 'secret_acces_key'"), "{e}");
    assert!(!e.message().contains("topsecret"), "{e}");
    let e = Ufs::new("file:///definitely/not/here", &BTreeMap::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_refused_credentials() {
    let s3 = S3Server::start_refusing_credentials();
    let mut o = s3.options();
    o.insert("secret_access_key".into(), "wrong-secret".into());
    let ufs = Ufs::new(&s3.uri("bkt", ""), &o).unwrap();
    let e = ufs.check().await.unwrap_err();
    eprintln!("{e}");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.message().starts_with("s3://bkt: access denied (check the credentials"), "{e}");
    assert!(!e.message().contains("wrong-secret"), "{e}");
}
