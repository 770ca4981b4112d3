//! UFS mounts against a real S3-compatible server (moto, started per test on
//! loopback): read-through caching, cache hits, change detection, and the
//! errors a user sees for bad mounts.

mod common;

use std::time::Duration;

use common::*;
use curvine_client::{FileSystem, ReportResponse};
use curvine_ufs::Ufs;
use futures::{StreamExt, TryStreamExt};
use testbed::s3::S3Server;

const MIB: usize = 1 << 20;

async fn put(ufs: &Ufs, rel: &str, data: &[u8]) {
    let mut w = ufs.writer(rel).await.expect("ufs writer");
    for piece in data.chunks(8 * MIB) {
        w.write(bytes::Bytes::copy_from_slice(piece)).await.expect("ufs write");
    }
    w.close().await.expect("ufs close");
}

fn mount_args<'a>(opts: &'a [String], uri: &'a str, path: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["mount", uri, path];
    for o in opts {
        a.push("-o");
        a.push(o);
    }
    a.extend_from_slice(extra);
    a
}

/// Mount options for `s3`, with a secret distinctive enough to spot if shown.
const SECRET: &str = "sEcReT-must-not-show";
fn option_args(s3: &S3Server) -> Vec<String> {
    let mut o = s3.options();
    o.insert("secret_access_key".into(), SECRET.into());
    o.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

async fn report(fs: &FileSystem) -> ReportResponse {
    fs.report().await.expect("report")
}

/// Waits until the heartbeat-fed cache counters satisfy `cond`.
async fn wait_cache(fs: &FileSystem, what: &str, cond: impl Fn(&curvine_common::proto::CacheStats) -> bool) {
    testbed::wait_for(what, Duration::from_secs(20), || async {
        report(fs).await.cache.map(|c| cond(&c)).unwrap_or(false)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

async fn read_all_parallel(fs: &FileSystem, paths: &[String]) -> Vec<Vec<u8>> {
    futures::stream::iter(paths.iter().cloned())
        .map(|p| async move { fs.read_all(&p).await.map_err(|e| format!("{p}: {e}")) })
        .buffered(16)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("read: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_and_large_objects_read_through_then_hit_the_cache() {
    let s3 = S3Server::start();
    s3.create_bucket("data");
    let ufs = Ufs::new(&s3.uri("data", ""), &s3.options()).unwrap();
    // 2,000 small objects of varied sizes, and a few 200 MiB ones.
    let small: Vec<(String, Vec<u8>)> =
        (0..2000).map(|i| (format!("small/f{i:05}"), random_bytes(1 + (i * 7919) % (64 << 10), i as u64))).collect();
    futures::stream::iter(small.iter())
        .for_each_concurrent(32, |(k, v)| {
            let ufs = ufs.clone();
            async move { put(&ufs, k, v).await }
        })
        .await;
    let big: Vec<(String, Vec<u8>)> = (0..3).map(|i| (format!("big/b{i}"), random_bytes(200 * MIB, 1000 + i))).collect();
    for (k, v) in &big {
        put(&ufs, k, v).await;
    }

    let n = node_with(UpOptions { mem: Some("1GiB".into()), disk: Some("2GiB".into()), ..Default::default() }).await;
    let opts = option_args(&s3);
    let uri = s3.uri("data", "");
    ok(&cv(&n, &mount_args(&opts, &uri, "/ds", &["--sync-interval", "1h"])));
    let listed = ok(&cv(&n, &["mount"]));
    assert!(listed.contains("/ds") && listed.contains(&uri), "{listed}");
    assert!(!listed.contains(SECRET), "secret shown: {listed}");

    // Listing shows the UFS, page by page.
    let ls = ok(&cv(&n, &["fs", "ls", "/ds/small"]));
    assert_eq!(ls.lines().count(), 2000, "ls /ds/small");
    let fs = n.fs().unwrap();
    let st = fs.stat("/ds/small/f00007").await.unwrap();
    assert_eq!(st.len, small[7].1.len() as u64);
    assert_eq!(st.ufs_state, "persisted");

    // First read: every block is a miss, loaded from the UFS; bytes identical.
    let paths: Vec<String> = small.iter().map(|(k, _)| format!("/ds/{k}")).collect();
    let got = read_all_parallel(&fs, &paths).await;
    for ((k, want), got) in small.iter().zip(&got) {
        assert!(got == want, "{k}: bytes differ after read-through");
    }
    // Eight readers miss the same blocks at once: each block is fetched once.
    let p0 = format!("/ds/{}", big[0].0);
    let same: Vec<Vec<u8>> = futures::future::try_join_all((0..8).map(|_| fs.read_all(&p0))).await.unwrap();
    assert!(same.iter().all(|g| *g == big[0].1), "concurrent readers of one object got different bytes");
    for (k, want) in &big[1..] {
        let got = fs.read_all(&format!("/ds/{k}")).await.unwrap();
        assert!(&got == want, "{k}: bytes differ after read-through");
    }
    // 200 MiB objects are 4 blocks of 64 MiB each.
    let blocks = 2000 + 3 * 4;
    wait_cache(&fs, "all blocks counted as loaded", |c| c.loads == blocks).await;
    let before = report(&fs).await.cache.unwrap();
    assert_eq!(before.load_errors, 0);
    let ufs_bytes: u64 = small.iter().chain(&big).map(|(_, v)| v.len() as u64).sum();
    assert_eq!(before.bytes_from_ufs, ufs_bytes, "each byte loaded from the UFS exactly once");

    // Second read: served from the cache, no new loads.
    let again = read_all_parallel(&fs, &paths).await;
    assert!(again == got, "second read differs");
    let got = fs.read_all("/ds/big/b1").await.unwrap();
    assert!(got == big[1].1, "big/b1: second read differs");
    wait_cache(&fs, "second read counted as hits", |c| c.hits >= before.hits + 2000 + 4).await;
    let after = report(&fs).await.cache.unwrap();
    assert_eq!(after.loads, before.loads, "second read loaded from the UFS again");
    assert_eq!(after.bytes_from_ufs, before.bytes_from_ufs);
    assert_eq!(after.misses, before.misses);
    let text = ok(&cv(&n, &["report"]));
    assert!(text.contains("hits") && text.contains("loaded from UFS"), "{text}");
    let metrics = http_get(&n.web_addr(), "/metrics");
    assert!(metrics.contains("curvine_worker_cache_hits_total"), "metrics lack cache hits");
    // A first read of a 64 MiB block asks for its first 2 MiB and is answered
    // long before the whole block has arrived.
    let early = metric(&metrics, "curvine_worker_reads_while_loading_total");
    assert!(early > 0.0, "no read was served while its block was loading:\n{metrics}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changed_and_deleted_objects_are_detected() {
    let s3 = S3Server::start();
    s3.create_bucket("chg");
    let ufs = Ufs::new(&s3.uri("chg", "p"), &s3.options()).unwrap();
    let v1 = random_bytes(300 << 10, 1);
    put(&ufs, "a.bin", &v1).await;
    put(&ufs, "gone.bin", b"bye").await;

    let n = node().await;
    let opts = option_args(&s3);
    let uri = s3.uri("chg", "p");
    ok(&cv(&n, &mount_args(&opts, &uri, "/m", &["--sync-interval", "1s"])));
    let fs = n.fs().unwrap();
    assert_eq!(fs.read_all("/m/a.bin").await.unwrap(), v1);
    assert_eq!(fs.read_all("/m/gone.bin").await.unwrap(), b"bye");

    // Same length, other bytes: only the ETag tells. Never serve v1 after
    // the interval, never a mix of both versions.
    let mut v2 = v1.clone();
    v2[1234] ^= 0xff;
    v2[200 << 10] ^= 0x0f;
    put(&ufs, "a.bin", &v2).await;
    testbed::wait_for("new version served", Duration::from_secs(15), || async {
        let got = fs.read_all("/m/a.bin").await.unwrap();
        assert!(got == v1 || got == v2, "read mixed versions");
        got == v2
    })
    .await
    .unwrap();

    // Deleted in the UFS: gone from the namespace after the interval.
    ufs.delete("gone.bin").await.unwrap();
    testbed::wait_for("deleted object disappears", Duration::from_secs(15), || async {
        !fs.exists("/m/gone.bin").await.unwrap()
    })
    .await
    .unwrap();
    let ls = ok(&cv(&n, &["fs", "ls", "/m"]));
    assert!(!ls.contains("gone.bin") && ls.contains("a.bin"), "{ls}");

    // Changed after the metadata was loaded but before any byte was cached:
    // the load refuses the new bytes (If-Match), the worker asks meta to
    // resync, and the next read sees the new version — no waiting for the
    // interval, never a mix.
    ok(&cv(&n, &mount_args(&opts, &s3.uri("chg", "r"), "/late", &["--sync-interval", "1h"])));
    let ur = Ufs::new(&s3.uri("chg", "r"), &s3.options()).unwrap();
    let (a1, a2) = (random_bytes(100 << 10, 5), random_bytes(100 << 10, 6));
    put(&ur, "y", &a1).await;
    assert_eq!(fs.stat("/late/y").await.unwrap().len, a1.len() as u64);
    put(&ur, "y", &a2).await;
    let first = fs.read_all("/late/y").await;
    assert!(first.as_ref().map(|d| *d == a2).unwrap_or(true), "served bytes of neither version");
    testbed::wait_for("changed object resynced", Duration::from_secs(15), || async {
        fs.read_all("/late/y").await.map(|d| d == a2).unwrap_or(false)
    })
    .await
    .unwrap();

    // `resync` makes a change visible at once, even with a long interval.
    ok(&cv(&n, &mount_args(&opts, &s3.uri("chg", "q"), "/slow", &["--sync-interval", "never"])));
    let uq = Ufs::new(&s3.uri("chg", "q"), &s3.options()).unwrap();
    put(&uq, "x", b"one").await;
    assert_eq!(fs.read_all("/slow/x").await.unwrap(), b"one");
    put(&uq, "x", b"two!").await;
    assert_eq!(fs.read_all("/slow/x").await.unwrap(), b"one", "sync-interval never: cached version");
    let out = ok(&cv(&n, &["mount", "resync", "/slow"]));
    assert!(out.contains("resynced"), "{out}");
    assert_eq!(fs.read_all("/slow/x").await.unwrap(), b"two!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_drops_cached_copies_and_the_next_read_loads_again() {
    let s3 = S3Server::start();
    s3.create_bucket("ttlb");
    let ufs = Ufs::new(&s3.uri("ttlb", ""), &s3.options()).unwrap();
    let data = random_bytes(200 << 10, 3);
    put(&ufs, "t/x", &data).await;
    put(&ufs, "t/keep", &data).await;
    let n = node().await;
    let opts = option_args(&s3);
    ok(&cv(&n, &mount_args(&opts, &s3.uri("ttlb", ""), "/ttl", &["--ttl", "2s"])));
    let fs = n.fs().unwrap();
    ok(&cv(&n, &["pin", "/ttl/t/keep"]));
    assert_eq!(fs.read_all("/ttl/t/x").await.unwrap(), data);
    assert_eq!(fs.read_all("/ttl/t/keep").await.unwrap(), data);
    // After the TTL the unpinned copy is dropped on the worker; the pinned one stays.
    testbed::wait_for("expired copy dropped", Duration::from_secs(30), || async {
        let r = fs.report().await.unwrap();
        r.workers.iter().flat_map(|w| &w.tiers).map(|t| t.blocks).sum::<u64>() == 1
    })
    .await
    .unwrap();
    assert!(fs.open("/ttl/t/x").await.unwrap().blocks().iter().all(|b| b.from_ufs));
    assert!(fs.open("/ttl/t/keep").await.unwrap().blocks().iter().all(|b| !b.from_ufs));
    assert_eq!(fs.read_all("/ttl/t/x").await.unwrap(), data, "an expired file reads again from the UFS");
    wait_cache(&fs, "the re-read loaded it again", |c| c.loads == 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_the_mount_with_access_denied() {
    let s3 = S3Server::start_refusing_credentials(); // (no bucket can be created there)
    let n = node().await;
    let opts = option_args(&s3); // carries a made-up secret the server refuses
    let o = cv(&n, &mount_args(&opts, &s3.uri("locked", ""), "/l", &[]));
    fails_with(&o, "denied");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains(SECRET), "the secret leaked into the error: {err}");
    assert!(ok(&cv(&n, &["mount"])).contains("no mounts"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mounts_fail_with_clear_errors_and_mounts_guard_the_ufs() {
    let s3 = S3Server::start();
    s3.create_bucket("okay");
    let n = node().await;
    let opts = option_args(&s3);
    fails_with(&cv(&n, &["mount", "ftp://x/y", "/a"]), "ftp");
    fails_with(&cv(&n, &mount_args(&opts, &s3.uri("no-such-bucket", ""), "/a", &[])), "no-such-bucket");
    let bad_ep: Vec<String> = opts
        .iter()
        .map(|o| if o.starts_with("endpoint=") { "endpoint=http://127.0.0.1:1".to_string() } else { o.clone() })
        .collect();
    fails_with(&cv(&n, &mount_args(&bad_ep, &s3.uri("okay", ""), "/a", &[])), "127.0.0.1:1");
    let mut bad_opt = opts.clone();
    bad_opt.push("no_such_option=1".into());
    fails_with(&cv(&n, &mount_args(&bad_opt, &s3.uri("okay", ""), "/a", &[])), "no_such_option");
    fails_with(&cv(&n, &mount_args(&opts, &s3.uri("okay", ""), "/a", &["--write-mode", "sideways"])), "sideways");
    assert!(!n.fs().unwrap().exists("/a").await.unwrap(), "a failed mount left its mount point");

    // Nesting and non-empty mount points are refused.
    let ufs = Ufs::new(&s3.uri("okay", ""), &s3.options()).unwrap();
    put(&ufs, "d/f", b"data").await;
    ok(&cv(&n, &mount_args(&opts, &s3.uri("okay", ""), "/a/b", &[])));
    fails_with(&cv(&n, &mount_args(&opts, &s3.uri("okay", ""), "/a/b/c", &[])), "nest");
    fails_with(&cv(&n, &mount_args(&opts, &s3.uri("okay", ""), "/a", &[])), "nest");
    ok(&cv(&n, &["fs", "mkdir", "/full"]));
    n.fs().unwrap().write_all("/full/x", b"x", false).await.unwrap();
    fails_with(&cv(&n, &mount_args(&opts, &s3.uri("okay", ""), "/full", &[])), "not empty");

    // A cache-only mount never changes the UFS: removing its objects is refused.
    assert_eq!(n.fs().unwrap().read_all("/a/b/d/f").await.unwrap(), b"data");
    fails_with(&cv(&n, &["fs", "rm", "/a/b/d/f"]), "cache-only");
    fails_with(&cv(&n, &["fs", "rm", "-r", "/a"]), "mount point");
    fails_with(&cv(&n, &["fs", "mv", "/a/b", "/z"]), "mount point");
    // Files written under the mount live only in the cache: umount asks for --force.
    n.fs().unwrap().write_all("/a/b/local.txt", b"only here", false).await.unwrap();
    fails_with(&cv(&n, &["umount", "/a/b"]), "--force");
    ok(&cv(&n, &["umount", "--force", "/a/b"]));
    assert!(!n.fs().unwrap().exists("/a/b").await.unwrap());
    let objs = s3.boto3("print(len(s3.list_objects_v2(Bucket='okay').get('Contents', [])))");
    assert_eq!(objs.trim(), "1", "umount must leave the bucket alone");
    fails_with(&cv(&n, &["umount", "/a/b"]), "not a mount point");
}

/// A client retries a call with the same request id (its answer was lost).
/// A retried listing under a mount must merge the UFS again under its own
/// stamp. Before, its writes replayed the first attempt's recorded answers
/// by position: with the UFS grown past one page meanwhile, the first page
/// was not merged (a replay), the second replayed the old end of listing,
/// and the retry's own end of listing then removed every entry the first
/// attempt had merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_listing_keeps_the_entries_it_lists() {
    use curvine_common::proto::meta_service_client::MetaServiceClient;
    use curvine_common::proto::ListRequest;

    let s3 = S3Server::start();
    s3.create_bucket("relist");
    let ufs = Ufs::new(&s3.uri("relist", "p"), &s3.options()).unwrap();
    for name in ["a.bin", "b.bin", "c.bin"] {
        put(&ufs, name, name.as_bytes()).await;
    }
    let n = node().await;
    let opts = option_args(&s3);
    let uri = s3.uri("relist", "p");
    // Every listing is stale at once, so each attempt lists the UFS.
    ok(&cv(&n, &mount_args(&opts, &uri, "/m", &["--sync-interval", "0s"])));

    let mut c = MetaServiceClient::connect(format!("http://{}", n.meta_addr())).await.unwrap();
    let mut list = async || {
        let mut req = tonic::Request::new(ListRequest { path: "/m".into(), ..Default::default() });
        req.metadata_mut().insert(curvine_common::REQUEST_ID_HEADER, "c0ffee-7".parse().unwrap());
        let got = c.list(req).await.unwrap().into_inner();
        got.entries.iter().map(|e| e.path.rsplit('/').next().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(list().await, ["a.bin", "b.bin", "c.bin"]);
    // The UFS grows past one listing page (1,000 entries) before the retry.
    futures::stream::iter(0..1000)
        .map(|i| {
            let ufs = &ufs;
            async move { put(ufs, &format!("d{i:04}"), b"d").await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let again = list().await;
    assert_eq!(again.len(), 1000, "one page of the listing");
    assert_eq!(again[..4], ["a.bin", "b.bin", "c.bin", "d0000"], "the retry lists what it merged");
    let fs = n.fs().unwrap();
    assert_eq!(fs.read_all("/m/a.bin").await.unwrap(), b"a.bin");
}

/// A `file://` mount stages writes in `.curvine-tmp`; what unfinished
/// writes left there more than a day ago goes when the mount is made (the
/// mount is made after the leader's first hourly sweep, so only the
/// mount's own sweep can remove them). Newer files (writes that may still
/// run) and the mounted tree itself stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_mount_sweeps_old_leftovers_of_unfinished_writes() {
    let root = tempfile::tempdir().unwrap();
    let tmp = root.path().join(".curvine-tmp");
    std::fs::create_dir(&tmp).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    let make = |p: std::path::PathBuf, t: Option<std::time::SystemTime>| {
        let f = std::fs::File::create(p).unwrap();
        if let Some(t) = t {
            f.set_modified(t).unwrap();
        }
    };
    make(tmp.join("dead-upload-1"), Some(old));
    make(tmp.join("dead-upload-2"), Some(old));
    make(tmp.join("running"), None);
    std::fs::write(root.path().join("data.bin"), b"kept").unwrap();
    std::fs::File::options().write(true).open(root.path().join("data.bin")).unwrap().set_modified(old).unwrap();
    let n = node().await;
    testbed::wait_for("the leader's first staging sweep", Duration::from_secs(20), || async {
        n.proc.log_tail(10_000).contains("sweeping the UFS staging directories")
    })
    .await
    .unwrap();
    ok(&cv(&n, &["mount", &format!("file://{}", root.path().display()), "/local"]));
    testbed::wait_for("the old leftovers to go", Duration::from_secs(20), || async {
        !tmp.join("dead-upload-1").exists() && !tmp.join("dead-upload-2").exists()
    })
    .await
    .unwrap();
    assert!(tmp.join("running").exists(), "a fresh staging file is a write that may still run");
    let fs = n.fs().unwrap();
    assert_eq!(fs.read_all("/local/data.bin").await.unwrap(), b"kept");
    assert_eq!(std::fs::read(root.path().join("data.bin")).unwrap(), b"kept");
}
