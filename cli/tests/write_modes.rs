//! Write-through and write-back mounts against a real S3-compatible server:
//! files land in the bucket (checked with boto3), a write-back file survives
//! kill -9 before its upload, deletes and renames reach the UFS.

mod common;

use std::time::Duration;

use common::*;
use testbed::s3::S3Server;

fn mount(n: &Node, s3: &S3Server, bucket: &str, at: &str, extra: &[&str]) {
    mount_prefix(n, s3, bucket, "out", at, extra)
}

fn mount_prefix(n: &Node, s3: &S3Server, bucket: &str, prefix: &str, at: &str, extra: &[&str]) {
    mount_s3(n, s3, bucket, prefix, at, extra)
}

/// Size and sha256 of an object as boto3 sees it, or "missing".
fn object(s3: &S3Server, bucket: &str, key: &str) -> String {
    s3.boto3(&format!(
        "import hashlib\n\
         try:\n    b = s3.get_object(Bucket='{bucket}', Key='{key}')['Body'].read()\n    print(len(b), hashlib.sha256(b).hexdigest())\n\
         except s3.exceptions.NoSuchKey:\n    print('missing')"
    ))
    .trim()
    .to_string()
}

/// What `object` prints for `data` (Python computes the digest, as for the bucket).
fn expect(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d");
    std::fs::write(&p, data).unwrap();
    let code = format!("import hashlib;print(hashlib.sha256(open('{}','rb').read()).hexdigest())", p.display());
    let out = std::process::Command::new("python3").args(["-c", &code]).output().unwrap();
    format!("{} {}", data.len(), String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_through_files_are_in_the_bucket_when_close_returns() {
    let s3 = S3Server::start();
    s3.create_bucket("wthru");
    let n = node().await;
    mount(&n, &s3, "wthru", "/wt", &["--write-mode", "write-through"]);
    let fs = n.fs().unwrap();
    let small = random_bytes(1000, 1);
    let big = random_bytes((150 << 20) + 12345, 2); // 3 blocks, multipart upload
    fs.write_all("/wt/small.bin", &small, false).await.unwrap();
    fs.mkdir("/wt/dir", false).await.unwrap();
    fs.write_all("/wt/dir/big.bin", &big, false).await.unwrap();
    // No waiting: close returned after the upload.
    assert_eq!(object(&s3, "wthru", "out/small.bin"), expect(&small));
    assert_eq!(object(&s3, "wthru", "out/dir/big.bin"), expect(&big));
    assert_eq!(fs.stat("/wt/dir/big.bin").await.unwrap().ufs_state, "persisted");
    let st = ok(&cv(&n, &["fs", "stat", "/wt/small.bin"]));
    assert!(st.contains("persisted"), "{st}");
    // Reads are cache hits of what was written; bytes identical.
    assert!(fs.read_all("/wt/dir/big.bin").await.unwrap() == big);

    // Deletes reach the UFS.
    ok(&cv(&n, &["fs", "rm", "/wt/small.bin"]));
    assert_eq!(object(&s3, "wthru", "out/small.bin"), "missing");
    ok(&cv(&n, &["fs", "rm", "-r", "/wt/dir"]));
    assert_eq!(object(&s3, "wthru", "out/dir/big.bin"), "missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_back_survives_kill9_before_upload_and_sync_uploads() {
    let s3 = S3Server::start();
    s3.create_bucket("wback");
    let mut n = node().await;
    // A long upload delay: nothing is uploaded until `cv sync`.
    mount(&n, &s3, "wback", "/wb", &["--write-mode", "write-back", "--upload-delay", "1h"]);
    let fs = n.fs().unwrap();
    let files: Vec<(String, Vec<u8>)> =
        (0..5).map(|i| (format!("f{i}"), random_bytes(((i + 1) * (700 << 10)) as usize, 10 + i as u64))).collect();
    for (name, data) in &files {
        fs.write_all(&format!("/wb/{name}"), data, false).await.unwrap();
    }
    assert_eq!(fs.stat("/wb/f0").await.unwrap().ufs_state, "pending");
    assert_eq!(object(&s3, "wback", "out/f0"), "missing", "uploaded before its delay");

    // kill -9 before any upload: acknowledged files are still there, still pending.
    n.kill9_and_restart().await.unwrap();
    let fs = n.fs().unwrap();
    for (name, data) in &files {
        let p = format!("/wb/{name}");
        assert_eq!(fs.stat(&p).await.unwrap().ufs_state, "pending", "{p}");
        testbed::wait_for("blocks reported after restart", Duration::from_secs(20), || async {
            fs.read_all(&p).await.map(|d| d == *data).unwrap_or(false)
        })
        .await
        .unwrap();
    }
    let out = ok(&cv(&n, &["sync", "/wb"]));
    assert!(out.contains("5 files"), "{out}");
    for (name, data) in &files {
        assert_eq!(object(&s3, "wback", &format!("out/{name}")), expect(data), "{name}");
        assert_eq!(fs.stat(&format!("/wb/{name}")).await.unwrap().ufs_state, "persisted");
    }
    // Nothing left to do.
    let out = ok(&cv(&n, &["sync", "/wb"]));
    assert!(out.contains("0 files"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_back_uploads_in_the_background_and_retries_after_failures() {
    let s3 = S3Server::start();
    s3.create_bucket("bground");
    let n = node().await;
    mount(&n, &s3, "bground", "/bg", &["--write-mode", "write-back"]);
    let fs = n.fs().unwrap();
    let data = random_bytes(3 << 20, 7);
    fs.write_all("/bg/a", &data, false).await.unwrap();
    testbed::wait_for("background upload", Duration::from_secs(30), || async {
        object(&s3, "bground", "out/a") == expect(&data)
    })
    .await
    .unwrap();
    testbed::wait_for("marked persisted", Duration::from_secs(10), || async {
        fs.stat("/bg/a").await.unwrap().ufs_state == "persisted"
    })
    .await
    .unwrap();

    // The bucket disappears: uploads fail, the file stays pending (never
    // lost), `cv sync` says why; once the bucket is back, it goes up.
    s3.boto3("s3.delete_object(Bucket='bground', Key='out/a'); s3.delete_bucket(Bucket='bground')");
    let b = random_bytes(100 << 10, 8);
    fs.write_all("/bg/b", &b, false).await.unwrap();
    let o = cv(&n, &["sync", "/bg"]);
    assert!(!o.status.success(), "sync must fail while the bucket is gone");
    assert!(String::from_utf8_lossy(&o.stderr).contains("failed to upload"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs.stat("/bg/b").await.unwrap().ufs_state, "pending");
    s3.create_bucket("bground");
    testbed::wait_for("retried upload", Duration::from_secs(60), || async {
        object(&s3, "bground", "out/b") == expect(&b)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renames_move_the_objects_in_the_bucket() {
    let s3 = S3Server::start();
    s3.create_bucket("moves");
    let n = node().await;
    mount(&n, &s3, "moves", "/mv", &["--write-mode", "write-through"]);
    mount_prefix(&n, &s3, "moves", "back", "/mb", &["--write-mode", "write-back", "--upload-delay", "1h"]);
    let fs = n.fs().unwrap();
    let a = random_bytes(300 << 10, 11);
    let big = random_bytes((70 << 20) + 5, 12); // two blocks
    fs.write_all("/mv/a.bin", &a, false).await.unwrap();
    fs.mkdir("/mv/d/e", true).await.unwrap();
    fs.write_all("/mv/d/e/big.bin", &big, false).await.unwrap();
    fs.write_all("/mv/d/x.bin", &a, false).await.unwrap();

    // A file: the object moves, the cached copy stays readable.
    ok(&cv(&n, &["fs", "mv", "/mv/a.bin", "/mv/b.bin"]));
    assert_eq!(object(&s3, "moves", "out/a.bin"), "missing");
    assert_eq!(object(&s3, "moves", "out/b.bin"), expect(&a));
    assert!(fs.read_all("/mv/b.bin").await.unwrap() == a);
    assert_eq!(fs.stat("/mv/b.bin").await.unwrap().ufs_state, "persisted");
    // Over an existing file.
    fs.write_all("/mv/c.bin", b"old", false).await.unwrap();
    ok(&cv(&n, &["fs", "mv", "/mv/b.bin", "/mv/c.bin"]));
    assert_eq!(object(&s3, "moves", "out/c.bin"), expect(&a));
    assert_eq!(object(&s3, "moves", "out/b.bin"), "missing");

    // A directory tree: every object under it moves.
    ok(&cv(&n, &["fs", "mv", "/mv/d", "/mv/d2"]));
    assert_eq!(object(&s3, "moves", "out/d/e/big.bin"), "missing");
    assert_eq!(object(&s3, "moves", "out/d2/e/big.bin"), expect(&big));
    assert_eq!(object(&s3, "moves", "out/d2/x.bin"), expect(&a));
    assert!(fs.read_all("/mv/d2/e/big.bin").await.unwrap() == big);
    // After a resync the moved entries are still the same versions: no reload.
    ok(&cv(&n, &["mount", "resync", "/mv"]));
    let ls = ok(&cv(&n, &["fs", "ls", "/mv/d2/e"]));
    assert!(ls.contains("big.bin"), "{ls}");
    assert_eq!(fs.stat("/mv/d").await.unwrap_err().kind(), curvine_common::ErrorKind::NotFound);
    let fs = n.fs().unwrap();
    assert!(fs.read_all("/mv/d2/e/big.bin").await.unwrap() == big);

    // Write-back: a file renamed before its upload is uploaded at its new key.
    fs.write_all("/mb/ckpt.tmp", &a, false).await.unwrap();
    ok(&cv(&n, &["fs", "mv", "/mb/ckpt.tmp", "/mb/ckpt.pt"]));
    ok(&cv(&n, &["sync", "/mb"]));
    assert_eq!(object(&s3, "moves", "back/ckpt.pt"), expect(&a));
    assert_eq!(object(&s3, "moves", "back/ckpt.tmp"), "missing");
    assert_eq!(fs.stat("/mb/ckpt.pt").await.unwrap().ufs_state, "persisted");

    // Between mounts, or out of a writing mount: refused, nothing moved.
    fails_with(&cv(&n, &["fs", "mv", "/mv/c.bin", "/mb/c.bin"]), "different places");
    fails_with(&cv(&n, &["fs", "mv", "/mv/c.bin", "/c.bin"]), "copy the data");
    assert_eq!(object(&s3, "moves", "out/c.bin"), expect(&a));
    // A rename the namespace refuses touches nothing in the bucket.
    fails_with(&cv(&n, &["fs", "mv", "/mv/c.bin", "/mv/nodir/c.bin"]), "no such file or directory");
    assert_eq!(object(&s3, "moves", "out/c.bin"), expect(&a));

    // A retried rename whose first attempt moved the object but never
    // recorded it (its leader died in between; here the bucket is changed
    // behind meta's back): the namespace follows the object, no NotFound.
    s3.boto3(
        "s3.copy_object(Bucket='moves', Key='out/e.bin', CopySource={'Bucket': 'moves', 'Key': 'out/c.bin'})\n\
         s3.delete_object(Bucket='moves', Key='out/c.bin')",
    );
    ok(&cv(&n, &["fs", "mv", "/mv/c.bin", "/mv/e.bin"]));
    assert_eq!(object(&s3, "moves", "out/e.bin"), expect(&a));
    assert!(fs.read_all("/mv/e.bin").await.unwrap() == a);
    assert_eq!(fs.stat("/mv/c.bin").await.unwrap_err().kind(), curvine_common::ErrorKind::NotFound);
}
