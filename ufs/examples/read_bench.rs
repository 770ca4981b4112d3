//! Cache-miss read throughput against a local S3 server (moto by default,
//! s3s-fs with CV_S3_SERVER=s3s-fs): `Ufs::read` with several chunk /
//! concurrency settings against one plain streaming OpenDAL GET of the same
//! object, plus the raw local copy rate as the machine's baseline.
//!
//! cargo run --release -p curvine-ufs --example read_bench [-- SIZE_MIB]

use std::collections::BTreeMap;
use std::time::Instant;

use curvine_ufs::testing::{pattern, put};
use curvine_ufs::Ufs;
use futures::TryStreamExt;
use testbed::s3::S3Server;

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mib: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let len = mib << 20;
    let s3 = S3Server::start();
    s3.create_bucket("bench");
    let ufs = Ufs::new(&s3.uri("bench", ""), &s3.options()).unwrap();
    let data = pattern(len as usize, 1);

    let t = Instant::now();
    let copy = data.clone();
    println!("baseline: memcpy {:.0} MB/s", mbps(len, t.elapsed().as_secs_f64()));
    drop(copy);

    let t = Instant::now();
    let e = put(&ufs, "obj", &data).await;
    println!("write {mib} MiB via UfsWriter (8MiB parts, 4 in flight): {:.0} MB/s", mbps(len, t.elapsed().as_secs_f64()));
    drop(data);

    // One plain GET: OpenDAL without chunking, as a client would do naively.
    opendal_plain(&s3, len).await;

    // Cost of one small ranged GET in the middle of the object: moto
    // assembles the whole object for each GET, so this grows with its size.
    let t = Instant::now();
    let mut r = ufs.read("obj", len / 2, 1 << 20, None).await.unwrap();
    while r.next().await.unwrap().is_some() {}
    println!("one 1 MiB ranged GET of the {mib} MiB object: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);

    for (chunk, conc) in [("1GiB", 1), ("8MiB", 1), ("8MiB", 4), ("16MiB", 4), ("32MiB", 4), ("64MiB", 4)] {
        let mut o = s3.options();
        o.insert("read_chunk".into(), chunk.into());
        o.insert("read_concurrency".into(), conc.to_string());
        let u = Ufs::new(&s3.uri("bench", ""), &o).unwrap();
        let t = Instant::now();
        let mut r = u.read("obj", 0, len, Some(&e.etag)).await.unwrap();
        let mut n = 0u64;
        while let Some(b) = r.next().await.unwrap() {
            n += b.len() as u64;
        }
        assert_eq!(n, len);
        println!("Ufs::read chunk={chunk} concurrency={conc}: {:.0} MB/s", mbps(len, t.elapsed().as_secs_f64()));
    }
}

async fn opendal_plain(s3: &S3Server, len: u64) {
    let mut cfg: BTreeMap<String, String> = s3.options();
    cfg.insert("bucket".into(), "bench".into());
    curvine_ufs::init();
    let op = opendal::Operator::from_config(<opendal::services::S3Config as opendal::Configurator>::from_iter(cfg).unwrap()).unwrap();
    let t = Instant::now();
    let mut s = op.reader("obj").await.unwrap().into_stream(0..len).await.unwrap();
    let mut n = 0u64;
    while let Some(b) = s.try_next().await.unwrap() {
        n += b.len() as u64;
    }
    assert_eq!(n, len);
    println!("plain opendal single GET: {:.0} MB/s", mbps(len, t.elapsed().as_secs_f64()));
}
