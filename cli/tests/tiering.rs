//! Tier watermarks end to end on a real node: cold blocks sink from MEM to
//! the disk tier, a block read repeatedly climbs back, and a cache full of
//! UFS data evicts what the UFS holds while pinned and cache-only files stay.

mod common;

use std::time::Duration;

use common::*;
use curvine_client::FileSystem;
use curvine_common::config::ClientConf;
use curvine_ufs::Ufs;
use testbed::s3::S3Server;

const CONF: &str = "[worker]\n\
    tiering_interval = \"100ms\"\n\
    heartbeat_interval = \"200ms\"\n\
    high_watermark = 0.9\n\
    low_watermark = 0.5\n\
    promote_after = 2\n";

const MIB: usize = 1 << 20;

fn small_node(disk: &str) -> UpOptions {
    UpOptions {
        mem: Some("4MiB".into()),
        disk: Some(disk.into()),
        block_size: Some("1MiB".into()),
        config: Some(CONF.into()),
        ..Default::default()
    }
}

/// The tier meta reports for the (one-block) file at `path`.
async fn tier(fs: &FileSystem, path: &str) -> String {
    let r = fs.open(path).await.expect("open");
    r.blocks()[0].locations.first().map(|l| l.tier.clone()).unwrap_or_default()
}

/// A client that reads over TCP, so every read reaches the worker (a
/// short-circuit client keeps the block's descriptor after the first).
fn tcp_client(n: &Node) -> FileSystem {
    FileSystem::new(ClientConf { meta: vec![n.meta_addr()], short_circuit: false, ..Default::default() }).unwrap()
}

fn metric(n: &Node, name: &str) -> u64 {
    let body = http_get(&n.web_addr(), "/metrics");
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_blocks_sink_and_a_hot_block_climbs_back_to_mem() {
    let n = node_with(small_node("64MiB")).await;
    let fs = n.fs().unwrap();
    fs.mkdir("/t", true).await.unwrap();
    let files: Vec<(String, Vec<u8>)> =
        (0..4).map(|i| (format!("/t/f{i}"), random_bytes(MIB, 40 + i))).collect();
    for (p, d) in &files {
        fs.write_all(p, d, false).await.unwrap();
    }
    // 4 MiB in a 4 MiB MEM tier is above 90%: the two least recently
    // written blocks go down to SSD (MEM back to 50%).
    testbed::wait_for("f0 and f1 demoted", Duration::from_secs(20), || async {
        tier(&fs, "/t/f0").await == "SSD" && tier(&fs, "/t/f1").await == "SSD"
    })
    .await
    .unwrap();
    assert_eq!(tier(&fs, "/t/f2").await, "MEM");
    assert_eq!(tier(&fs, "/t/f3").await, "MEM");
    assert!(metric(&n, "curvine_worker_blocks_demoted_total") >= 2);

    // Two whole reads of f0 over TCP earn it a promotion (MEM has room).
    let tcp = tcp_client(&n);
    for _ in 0..2 {
        assert!(tcp.read_all("/t/f0").await.unwrap() == files[0].1, "f0 reads back identical from SSD");
    }
    testbed::wait_for("f0 promoted", Duration::from_secs(20), || async { tier(&fs, "/t/f0").await == "MEM" })
        .await
        .unwrap();
    assert_eq!(tier(&fs, "/t/f1").await, "SSD", "f1 was not read: it stays down");
    assert_eq!(metric(&n, "curvine_worker_blocks_promoted_total"), 1);
    for (p, d) in &files {
        assert!(&fs.read_all(p).await.unwrap() == d, "{p} differs after moving between tiers");
        assert!(&tcp.read_all(p).await.unwrap() == d, "{p} differs over TCP");
    }
    assert_eq!(metric(&n, "curvine_worker_blocks_evicted_total"), 0, "nothing leaves the cache while a tier has room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_cache_evicts_ufs_blocks_but_keeps_pinned_and_cache_only_files() {
    let s3 = S3Server::start();
    s3.create_bucket("evict");
    let ufs = Ufs::new(&s3.uri("evict", ""), &s3.options()).unwrap();
    let data = put_many(&ufs, "d", 16, MIB).await;
    let pinned = put_many(&ufs, "p", 2, MIB).await;
    // 4 MiB MEM + 8 MiB SSD hold 12 MiB; 16 + 2 + 2 MiB go through them.
    let n = node_with(small_node("8MiB")).await;
    let fs = n.fs().unwrap();
    let local = random_bytes(2 * MIB, 7);
    fs.mkdir("/local", true).await.unwrap();
    fs.write_all("/local/keep", &local, false).await.unwrap();
    mount_s3(&n, &s3, "evict", "", "/w", &[]);
    ok(&cv(&n, &["pin", "/w/p"]));
    for (k, v) in &pinned {
        assert!(&fs.read_all(&format!("/w/{k}")).await.unwrap() == v);
    }

    let out = ok(&cv(&n, &["warm", "/w/d", "--json"]));
    let job: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(job["state"], "done", "warm must get room by evicting: {out}");
    assert_eq!(job["blocks_failed"], 0, "{out}");
    assert!(metric(&n, "curvine_worker_blocks_evicted_total") > 0);
    // Reading everything back loads what was evicted (evicting again).
    for (k, v) in &data {
        assert!(&fs.read_all(&format!("/w/{k}")).await.unwrap() == v, "{k} differs");
    }
    assert!(fs.read_all("/local/keep").await.unwrap() == local, "the cache-only file is whole");
    for (k, v) in &pinned {
        let p = format!("/w/{k}");
        let r = fs.open(&p).await.unwrap();
        assert!(!r.blocks()[0].locations.is_empty(), "{p} is pinned: it must still be cached");
        assert!(&fs.read_all(&p).await.unwrap() == v);
    }
    let r = fs.open("/local/keep").await.unwrap();
    assert!(r.blocks().iter().all(|b| !b.locations.is_empty()), "cache-only blocks are never evicted");
    let report = fs.report().await.unwrap();
    for w in &report.workers {
        for t in &w.tiers {
            assert!(t.used <= t.capacity, "{} over capacity: {} > {}", t.kind, t.used, t.capacity);
        }
    }
}

/// Flips bytes in the middle of a cached block's file on the node.
fn rot(n: &Node, block: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(n.mem_dir().join("blocks").join(block.to_string())).unwrap();
    f.write_all_at(b"bit rot", 100_000).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_cached_copy_is_dropped_and_refetched_never_served() {
    let s3 = S3Server::start();
    s3.create_bucket("rot");
    let ufs = Ufs::new(&s3.uri("rot", ""), &s3.options()).unwrap();
    let objs = put_many(&ufs, "c", 2, 2 * MIB).await;
    let n = node_with(UpOptions { mem: Some("64MiB".into()), block_size: Some("1MiB".into()), ..Default::default() })
        .await;
    mount_s3(&n, &s3, "rot", "", "/r", &[]);
    let fs = n.fs().unwrap();
    let tcp = tcp_client(&n);
    for (i, (k, v)) in objs.iter().enumerate() {
        let p = format!("/r/{k}");
        assert!(&fs.read_all(&p).await.unwrap() == v, "first read (load)");
        let block = fs.open(&p).await.unwrap().blocks()[1].id;
        rot(&n, block);
        // Short-circuit for the first object, TCP for the second.
        let reader = if i == 0 { &fs } else { &tcp };
        assert!(&reader.read_all(&p).await.unwrap() == v, "{p}: the corrupt copy must not be served");
        assert_eq!(metric(&n, "curvine_worker_blocks_corrupt_total"), i as u64 + 1);
        assert!(&tcp.read_all(&p).await.unwrap() == v, "{p}: the refetched copy is good");
    }
    assert_eq!(metric(&n, "curvine_meta_corrupt_blocks_total"), 2);

    // A cache-only file has nowhere to refetch from: a clear error, not
    // bytes, and its only copy is kept (the undamaged chunks still read).
    fs.mkdir("/only", true).await.unwrap();
    let only = random_bytes(MIB, 3);
    fs.write_all("/only/here", &only, false).await.unwrap();
    let block = fs.open("/only/here").await.unwrap().blocks()[0].id;
    rot(&n, block);
    let e = tcp.read_all("/only/here").await.unwrap_err();
    assert_eq!(e.kind(), curvine_common::ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("/only/here"), "the error names the file: {e}");
    let mut head = vec![0u8; 65536];
    tcp.open("/only/here").await.unwrap().read_at(0, &mut head).await.unwrap();
    assert!(head == only[..65536], "the chunk before the damage still reads");
    assert_eq!(metric(&n, "curvine_worker_blocks_corrupt_total"), 2, "the only copy was not dropped");
}
