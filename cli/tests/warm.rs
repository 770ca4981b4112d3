//! `cv warm` load jobs, `cv free` and `cv pin` against a real S3-compatible
//! server: progress, skip-what-is-cached, resume after kill -9, cancel.

mod common;

use std::time::Duration;

use common::*;
use curvine_client::{FileSystem, JobInfo};
use curvine_ufs::Ufs;
use testbed::s3::S3Server;

fn mount(n: &Node, s3: &S3Server, bucket: &str, at: &str) {
    mount_s3(n, s3, bucket, "", at, &[]);
}

fn job_json(out: &str) -> serde_json::Value {
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

async fn job(fs: &FileSystem, id: u64) -> JobInfo {
    fs.jobs(id).await.expect("job status").pop().expect("job exists")
}

async fn loads(fs: &FileSystem) -> u64 {
    fs.report().await.unwrap().cache.unwrap_or_default().loads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_loads_once_free_drops_and_pin_keeps() {
    let s3 = S3Server::start();
    s3.create_bucket("warm");
    let ufs = Ufs::new(&s3.uri("warm", ""), &s3.options()).unwrap();
    let objs = put_many(&ufs, "set/a", 120, 300 << 10).await;
    let more = put_many(&ufs, "set/b", 30, 2 << 20).await;
    let total: u64 = objs.iter().chain(&more).map(|(_, v)| v.len() as u64).sum();

    let n = node_with(UpOptions { mem: Some("1GiB".into()), ..Default::default() }).await;
    mount(&n, &s3, "warm", "/w");
    let fs = n.fs().unwrap();

    let out = ok(&cv(&n, &["warm", "/w/set", "--json"]));
    let j = job_json(&out);
    assert_eq!(j["state"], "done", "{out}");
    assert_eq!(j["files_total"], 150);
    assert_eq!(j["files_done"], 150);
    assert_eq!(j["bytes_total"].as_u64().unwrap(), total);
    assert_eq!(j["bytes_loaded"].as_u64().unwrap(), total, "first warm loads everything");
    testbed::wait_for("loads reported", Duration::from_secs(20), || async { loads(&fs).await == 150 }).await.unwrap();

    // Everything is cached: reads add no load, a second warm loads nothing.
    for (k, v) in objs.iter().chain(&more).step_by(7) {
        assert!(&fs.read_all(&format!("/w/{k}")).await.unwrap() == v, "{k} differs");
    }
    let out = ok(&cv(&n, &["load", "/w/set", "--json"]));
    assert_eq!(job_json(&out)["bytes_loaded"], 0, "second warm must skip cached blocks: {out}");
    assert_eq!(loads(&fs).await, 150);

    // Pin one directory, free the whole set: only the unpinned part goes.
    ok(&cv(&n, &["pin", "/w/set/b"]));
    assert!(fs.stat("/w/set/b").await.unwrap().pinned);
    // A reader opened while the file was cached, read after the copy is
    // gone: the worker it asks loads the block again from the UFS.
    let (early_key, early_bytes) = &objs[1];
    let early = fs.open(&format!("/w/{early_key}")).await.unwrap();
    assert!(early.blocks().iter().all(|b| !b.from_ufs && !b.locations.is_empty()));
    let out = ok(&cv(&n, &["free", "/w/set"]));
    assert!(out.contains("120 files") && out.contains("30 pinned"), "{out}");
    assert!(fs.open("/w/set/a/o00000").await.unwrap().blocks().iter().all(|b| b.from_ufs));
    // The worker deletes the copies on its next heartbeat; the pinned 30 stay.
    testbed::wait_for("freed blocks deleted on the worker", Duration::from_secs(20), || async {
        let r = fs.report().await.unwrap();
        r.workers.iter().flat_map(|w| &w.tiers).map(|t| t.blocks).sum::<u64>() == 30
    })
    .await
    .unwrap();
    let mut got = vec![0u8; early_bytes.len()];
    let mut at = 0;
    while at < got.len() {
        let k = early.read_at(at as u64, &mut got[at..]).await.expect("a reader whose cached copy was freed reads from the UFS");
        assert!(k > 0, "early end of file at {at}");
        at += k;
    }
    assert!(&got == early_bytes, "{early_key} differs");
    let out = ok(&cv(&n, &["warm", "/w/set", "--json"]));
    assert_eq!(job_json(&out)["bytes_loaded"].as_u64().unwrap(), 119 * (300 << 10), "{out}");
    ok(&cv(&n, &["unpin", "/w/set/b"]));
    assert!(!fs.stat("/w/set/b").await.unwrap().pinned);

    // Errors: warm of a missing path; status of a missing job.
    fails_with(&cv(&n, &["warm", "/w/nope"]), "/w/nope");
    fails_with(&cv(&n, &["warm", "status", "999"]), "999");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_resumes_after_kill9_and_cancel_stops_it() {
    let s3 = S3Server::start();
    s3.create_bucket("resume");
    let ufs = Ufs::new(&s3.uri("resume", ""), &s3.options()).unwrap();
    let objs = put_many(&ufs, "r", 600, 64 << 10).await;
    let cancelled = put_many(&ufs, "c", 600, 64 << 10).await;

    let mut n = node_with(UpOptions { mem: Some("512MiB".into()), ..Default::default() }).await;
    mount(&n, &s3, "resume", "/r");
    let fs = n.fs().unwrap();

    // One load at a time keeps the job running long enough to kill the node under it.
    let out = ok(&cv(&n, &["warm", "/r/r", "--detach", "--parallel", "1", "--json"]));
    let id = job_json(&out)["id"].as_u64().unwrap();
    testbed::wait_for("job makes progress", Duration::from_secs(30), || async {
        let j = job(&fs, id).await;
        j.bytes_done > 0
    })
    .await
    .unwrap();
    let before = job(&fs, id).await;
    assert_eq!(before.state, "running", "job ended before the restart: {before:?}");
    n.kill9_and_restart().await.unwrap();
    let fs = n.fs().unwrap();
    testbed::wait_for("resumed job finishes", Duration::from_secs(120), || async {
        fs.jobs(id).await.ok().and_then(|mut v| v.pop()).map(|j| j.state != "running").unwrap_or(false)
    })
    .await
    .unwrap();
    let j = job(&fs, id).await;
    assert_eq!(j.state, "done", "{j:?}");
    assert!(j.attempt >= 2, "job was not resumed: {j:?}");
    assert_eq!(j.files_done, 600);
    assert_eq!(j.bytes_done, 600 * (64 << 10));
    // All of it is cached now: reads are byte-identical and load nothing.
    testbed::wait_for("worker reported", Duration::from_secs(20), || async { fs.report().await.is_ok() }).await.unwrap();
    for (k, v) in objs.iter().step_by(25) {
        let r = fs.open(&format!("/r/{k}")).await.unwrap();
        assert!(r.blocks().iter().all(|b| !b.from_ufs), "{k} not cached after the resumed job");
        assert!(&fs.read_all(&format!("/r/{k}")).await.unwrap() == v, "{k} differs");
    }

    // Cancel: the job stops, stays cancelled, and what it loaded stays cached.
    let out = ok(&cv(&n, &["warm", "/r/c", "--detach", "--parallel", "1", "--json"]));
    let id = job_json(&out)["id"].as_u64().unwrap();
    testbed::wait_for("second job makes progress", Duration::from_secs(30), || async {
        job(&fs, id).await.bytes_done > 0
    })
    .await
    .unwrap();
    let out = ok(&cv(&n, &["warm", "cancel", &id.to_string()]));
    assert!(out.contains("cancelled"), "{out}");
    let status = ok(&cv(&n, &["warm", "status", &id.to_string(), "--json"]));
    let v: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    assert_eq!(v[0]["state"], "cancelled", "{status}");
    assert!(v[0]["bytes_done"].as_u64().unwrap() < 600 * (64 << 10), "cancel came too late: {status}");
    // The loading stops: the node's UFS load count stays put for 3 s (the
    // job loads several objects a second while it runs).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (mut last, mut since) = (loads(&fs).await, std::time::Instant::now());
    while since.elapsed() < Duration::from_secs(3) {
        assert!(std::time::Instant::now() < deadline, "UFS loads went on after the cancel ({last} so far)");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = loads(&fs).await;
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        }
    }
    // What it loaded stays cached, and it did not load everything.
    let mut cached = 0;
    for (k, _) in &cancelled {
        let r = fs.open(&format!("/r/{k}")).await.unwrap();
        cached += u64::from(r.blocks().iter().all(|b| !b.from_ufs));
    }
    let j = job(&fs, id).await;
    assert_eq!(j.state, "cancelled", "{j:?}");
    assert!(cached > 0 && cached < 600, "{cached} of 600 objects cached after the cancel: {j:?}");
    assert!(cached >= j.files_done, "the job counted {} files done, {cached} are cached", j.files_done);
    println!("cancelled warm: {cached} of 600 objects cached, job {j:?}");
}
