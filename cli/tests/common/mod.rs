#![allow(dead_code)]
//! Shared helpers for the `cv` integration tests.

use std::path::Path;
use std::process::Output;

pub use testbed::{random_bytes, Node, UpOptions};
use testbed::s3::S3Server;

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cv"))
}

pub async fn node() -> Node {
    Node::up(bin(), UpOptions { mem: Some("512MiB".into()), disk: Some("2GiB".into()), ..Default::default() })
        .await
        .expect("cv up")
}

pub async fn node_with(o: UpOptions) -> Node {
    Node::up(bin(), o).await.expect("cv up")
}

/// Runs a `cv` command against `n`, returning its output.
pub fn cv(n: &Node, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| n.cv(args).output()).expect("run cv")
}

pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "cv failed: {}\n{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a failed command printed exactly one `cv: …` line containing `want`.
pub fn fails_with(o: &Output, want: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure containing '{want}', got success");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("cv: "), "error line must start with 'cv: ': {err}");
    assert!(lines[0].contains(want), "expected '{want}' in: {err}");
}

/// Byte-compares two local files without loading them whole.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// A plain HTTP GET over a socket (the tests need no HTTP client crate).
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `cv mount` of `bucket/prefix` at `at` with the server's options (and `extra` flags).
pub fn mount_s3(n: &Node, s3: &S3Server, bucket: &str, prefix: &str, at: &str, extra: &[&str]) {
    let mut args = vec!["mount".to_string(), s3.uri(bucket, prefix), at.to_string()];
    for (k, v) in s3.options() {
        args.push("-o".into());
        args.push(format!("{k}={v}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    ok(&cv(n, &a));
}

/// Puts `n` objects of `len` random bytes as `prefix/oNNNNN`; returns (key, bytes).
pub async fn put_many(ufs: &curvine_ufs::Ufs, prefix: &str, n: usize, len: usize) -> Vec<(String, Vec<u8>)> {
    use futures::StreamExt;
    let objs: Vec<(String, Vec<u8>)> =
        (0..n).map(|i| (format!("{prefix}/o{i:05}"), random_bytes(len, (i as u64) << 8 | len as u64))).collect();
    futures::stream::iter(objs.iter())
        .for_each_concurrent(32, |(k, v)| {
            let ufs = ufs.clone();
            async move {
                let mut w = ufs.writer(k).await.expect("writer");
                w.write(bytes::Bytes::copy_from_slice(v)).await.expect("write");
                w.close().await.expect("close");
            }
        })
        .await;
    objs
}
