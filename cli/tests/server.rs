//! `cv up` itself: ready line, cluster.toml, HTTP endpoints, clean
//! shutdown, bad configuration, and malformed data-plane input.

mod common;

use std::io::{Read, Write};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_publishes_addresses_health_and_metrics_and_stops_cleanly() {
    let mut n = node().await;
    for k in ["meta", "worker", "web", "home"] {
        assert!(n.proc.ready.contains_key(k), "ready line lacks {k}: {:?}", n.proc.ready);
    }
    let cluster = std::fs::read_to_string(n.home().join("cluster.toml")).unwrap();
    assert!(cluster.contains(&n.meta_addr()), "{cluster}");
    let health = http_get(&n.web_addr(), "/health");
    assert!(health.starts_with("HTTP/1.1 200") && health.contains("\"status\":\"ok\""), "{health}");
    let before = inodes(&http_get(&n.web_addr(), "/metrics"));
    n.fs().unwrap().write_all("/m", &random_bytes(100_000, 1), false).await.unwrap();
    n.fs().unwrap().mkdir("/d", false).await.unwrap();
    n.fs().unwrap().read_all("/m").await.unwrap();
    let metrics = http_get(&n.web_addr(), "/metrics");
    assert!(metrics.contains("curvine_meta_"), "no meta metrics:\n{metrics}");
    assert_eq!(inodes(&metrics), before + 2, "a file and a directory more:\n{metrics}");
    assert!(metrics.contains("curvine_worker_"), "no worker metrics:\n{metrics}");
    let code = tokio::task::block_in_place(|| n.proc.terminate()).unwrap();
    assert_eq!(code, Some(0), "SIGTERM must shut down cleanly:\n{}", n.proc.log_tail(30));
}

/// The value of `curvine_meta_inodes` in a scrape.
fn inodes(metrics: &str) -> i64 {
    let line = metrics.lines().find(|l| l.starts_with("curvine_meta_inodes ")).unwrap_or_else(|| panic!("no curvine_meta_inodes:\n{metrics}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn bad_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[worker]\nprot = 8997\n", "prot"),
        ("[cluster]\nblock_size = \"12 parsecs\"\n", "block_size"),
        ("[[worker.tiers]]\nkind = \"TAPE\"\ndir = \"/tmp/x\"\ncapacity = \"1GiB\"\n", "worker.tiers[0].kind"),
        ("[meta]\nport = \"eighty\"\n", "port"),
    ];
    for (text, key) in cases {
        let conf = dir.path().join("bad.toml");
        std::fs::write(&conf, text).unwrap();
        let o = std::process::Command::new(bin())
            .args(["up", "--home", dir.path().to_str().unwrap(), "--config", conf.to_str().unwrap()])
            .args(["--meta-port", "0", "--worker-port", "0", "--web-port", "0"])
            .output()
            .unwrap();
        assert!(!o.status.success(), "bad config accepted: {text}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(key), "error for {text:?} does not name '{key}': {err}");
        assert!(err.contains("bad.toml"), "error does not name the file: {err}");
    }
    let o = std::process::Command::new(bin()).args(["up", "--config", "/nonexistent/cv.toml"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/cv.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_one_connection_and_the_worker_keeps_serving() {
    let n = node().await;
    let fs = n.fs().unwrap();
    let data = random_bytes(3 << 20, 4);
    fs.write_all("/ok", &data, false).await.unwrap();
    let worker = n.proc.addr("worker").unwrap();
    let cases: Vec<Vec<u8>> = vec![
        vec![0xff; 100],                                    // garbage
        {
            let mut h = curvine_fabric::frame::Header::request(curvine_fabric::frame::Op::WriteData, 1, 0, 0).encode();
            h[20..24].copy_from_slice(&u32::MAX.to_le_bytes()); // 4 GiB payload claim
            h.to_vec()
        },
        {
            let mut h = curvine_fabric::frame::Header::request(curvine_fabric::frame::Op::Read, 1, 0, 0).encode();
            h[16..20].copy_from_slice(&u32::MAX.to_le_bytes()); // 4 GiB head claim
            h.to_vec()
        },
        curvine_fabric::frame::Header::request(curvine_fabric::frame::Op::Read, 1, 3, 0).encode()[..].iter().chain(&[1, 2, 3]).copied().collect(),
    ];
    for bytes in cases {
        tokio::task::block_in_place(|| {
            let mut s = std::net::TcpStream::connect(&worker).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
            s.write_all(&bytes).unwrap();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(e) => panic!("worker kept a malformed connection open: {e}"),
                }
            }
        });
        assert_eq!(fs.read_all("/ok").await.unwrap(), data, "worker stopped serving after malformed input");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_and_workers_run_as_separate_processes() {
    let mut split = testbed::Split::start(bin(), 2, "256MiB").await.unwrap();
    let fs = split.fs().unwrap();
    let data = random_bytes(5 << 20, 8);
    fs.write_all("/split", &data, false).await.unwrap();
    assert_eq!(fs.read_all("/split").await.unwrap(), data);
    let r = fs.report().await.unwrap();
    assert_eq!(r.workers.iter().filter(|w| w.alive).count(), 2);
    // A worker restart keeps its blocks and its id, and meta learns them again.
    split.workers[0].restart().unwrap();
    split.workers[1].restart().unwrap();
    split.wait_workers(2).await.unwrap();
    testbed::wait_for("blocks to be re-reported", std::time::Duration::from_secs(30), || async {
        fs.read_all("/split").await.map(|d| d == data).unwrap_or(false)
    })
    .await
    .unwrap();
    assert_eq!(fs.report().await.unwrap().workers.len(), 2, "restarted workers must keep their ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_worker_gives_a_clear_error_not_a_hang() {
    let mut split = testbed::Split::start(bin(), 1, "64MiB").await.unwrap();
    let fs = split.fs().unwrap();
    let data = random_bytes(3 << 20, 12);
    fs.write_all("/w", &data, false).await.unwrap();
    split.workers[0].kill9();
    let t = std::time::Instant::now();
    let e = fs.read_all("/w").await.unwrap_err();
    assert_eq!(e.kind(), curvine_client::ErrorKind::Unavailable, "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(30), "took {:?}", t.elapsed());
    // Writes have nowhere to go once meta notices: a clear "no space" (no live workers).
    testbed::wait_for("meta to notice the dead worker", std::time::Duration::from_secs(60), || async {
        fs.report().await.map(|r| r.workers.iter().all(|w| !w.alive)).unwrap_or(false)
    })
    .await
    .unwrap();
    let e = fs.write_all("/w2", b"x", false).await.unwrap_err();
    assert_eq!(e.kind(), curvine_client::ErrorKind::NoSpace, "{e}");
    assert!(e.to_string().contains("no live workers"), "{e}");
    assert!(!fs.exists("/w2").await.unwrap(), "a failed write must not leave a file");
    // The file comes back with its worker.
    split.workers[0].restart().unwrap();
    split.wait_workers(1).await.unwrap();
    assert_eq!(fs.read_all("/w").await.unwrap(), data);
}

/// Runs `cv ARGS` with no inherited Curvine settings and expects it to fail.
fn cv_fails(args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new(bin());
    c.args(args);
    for v in ["CURVINE_CONF", "CURVINE_HOME", "CURVINE_HOST", "CURVINE_META", "CURVINE_META_PORT", "CURVINE_WORKER_PORT", "CURVINE_WEB_PORT"] {
        c.env_remove(v);
    }
    let o = c.output().unwrap();
    assert!(!o.status.success(), "cv {args:?} succeeded");
    o
}

#[test]
fn bind_failures_name_the_real_flag_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let meta_dir = dir.path().join("meta");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let o = cv_fails(&["meta", "--dir", meta_dir.to_str().unwrap(), "--host", "127.0.0.1", "--port", &port, "--web-port", "0"]);
    fails_with(&o, "in use");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--port") && !err.contains("--meta-port"), "{err}");
    let o = cv_fails(&["meta", "--dir", meta_dir.to_str().unwrap(), "--host", "127.0.0.1", "--port", "0", "--web-port", &port]);
    fails_with(&o, "choose another with --web-port");
    // `cv up` names its own flags.
    let home = dir.path().join("home");
    let o = cv_fails(&["up", "--home", home.to_str().unwrap(), "--no-mem", "--meta-port", "0", "--worker-port", &port, "--web-port", "0"]);
    fails_with(&o, "choose another with --worker-port");
    // An address of another machine (TEST-NET-1) is not "in use".
    let o = cv_fails(&["meta", "--dir", meta_dir.to_str().unwrap(), "--host", "192.0.2.1", "--port", "0", "--web-port", "0"]);
    fails_with(&o, "192.0.2.1 is not an address of this machine");
    // Ports below 1024 need privileges (root has them: nothing to check).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let o = cv_fails(&["meta", "--dir", meta_dir.to_str().unwrap(), "--host", "127.0.0.1", "--port", "1", "--web-port", "0"]);
        fails_with(&o, "ports below 1024 need root");
    }
}

#[test]
fn wildcard_host_is_refused_where_it_would_be_advertised() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    for host in ["0.0.0.0", "::"] {
        let o = cv_fails(&["up", "--home", home.to_str().unwrap(), "--no-mem", "--host", host, "--meta-port", "0", "--worker-port", "0", "--web-port", "0"]);
        fails_with(&o, "give this machine's own address");
    }
    assert!(!home.join("cluster.toml").exists(), "a wildcard address was written to cluster.toml");
    let tier = format!("SSD:{}:64MiB", dir.path().join("ssd").display());
    let o = cv_fails(&["worker", "--dir", dir.path().join("w").to_str().unwrap(), "--host", "0.0.0.0", "--port", "0", "--web-port", "0", "--meta", "127.0.0.1:1", "--tier", &tier]);
    fails_with(&o, "give this machine's own address");
}
