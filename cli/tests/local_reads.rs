//! Same-host short-circuit reads: chosen when the worker is local, refused
//! when the socket is not the worker's, byte-identical either way.

mod common;

use common::*;
use curvine_client::FileSystem;
use curvine_common::config::ClientConf;

/// Reads the whole file and a few unaligned ranges; compares with `want`.
async fn check(fs: &FileSystem, path: &str, want: &[u8]) {
    assert!(fs.read_all(path).await.unwrap() == want, "{path}: bytes differ");
    let r = fs.open(path).await.unwrap();
    for (off, len) in [(0usize, 1usize), (65_535, 2), (100_001, 300_000), (want.len().saturating_sub(7), 100)] {
        if off >= want.len() {
            continue;
        }
        let mut buf = vec![0u8; len];
        let n = r.read_at(off as u64, &mut buf).await.unwrap();
        let end = (off + len).min(want.len());
        assert_eq!(n, end - off, "{path}: read of {len} at {off}");
        assert!(buf[..n] == want[off..end], "{path}: range {off}+{len} differs");
    }
}

fn client(n: &Node, short_circuit: bool) -> FileSystem {
    FileSystem::new(ClientConf { meta: vec![n.meta_addr()], short_circuit, ..Default::default() }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_worker_blocks_are_read_from_their_files() {
    let n = node_with(UpOptions { block_size: Some("1MiB".into()), ..Default::default() }).await;
    let files = [("/one", random_bytes(1, 1)), ("/small", random_bytes(100_005, 2)), ("/multi", random_bytes((3 << 20) + 77, 3))];
    let fs = client(&n, true);
    for (p, d) in &files {
        fs.write_all(p, d, false).await.unwrap();
    }
    for (p, d) in &files {
        check(&fs, p, d).await;
    }
    let st = fs.local_stats();
    assert!(st.reads > 0, "no read took the short-circuit: {st:?}");
    assert_eq!(st.fallbacks, 0, "{st:?}");
    let loc = fs.open("/multi").await.unwrap().blocks()[0].locations[0].clone();
    assert!(loc.local_socket.ends_with("data.sock") && loc.local_token != 0, "{loc:?}");

    // Switched off: the same bytes over TCP.
    let tcp = client(&n, false);
    for (p, d) in &files {
        check(&tcp, p, d).await;
    }
    assert_eq!(tcp.local_stats().reads, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socket_that_is_not_the_workers_is_refused() {
    let n = node().await;
    let data = random_bytes((1 << 20) + 3, 9);
    let fs = client(&n, true);
    fs.write_all("/f", &data, false).await.unwrap();
    let loc = fs.open("/f").await.unwrap().blocks()[0].locations[0].clone();
    let real = std::path::PathBuf::from(&loc.local_socket);
    let aside = real.with_extension("real");
    std::fs::rename(&real, &aside).unwrap();

    // An impostor at the worker's path: right protocol, wrong token.
    let fake = tokio::net::UnixListener::bind(&real).unwrap();
    let worker_id = loc.worker_id;
    let impostor = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        loop {
            let Ok((mut s, _)) = fake.accept().await else { return };
            let mut hello = Vec::new();
            hello.extend_from_slice(&0x4356_5343u32.to_le_bytes());
            hello.extend_from_slice(&1u32.to_le_bytes());
            hello.extend_from_slice(&worker_id.to_le_bytes());
            hello.extend_from_slice(&12345u64.to_le_bytes());
            let _ = s.write_all(&hello).await;
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        }
    });
    let other = client(&n, true);
    check(&other, "/f", &data).await;
    let st = other.local_stats();
    assert_eq!(st.reads, 0, "read through an impostor socket: {st:?}");
    assert!(st.fallbacks >= 1, "{st:?}");
    impostor.abort();

    // Nothing listening at all (a dead socket file): TCP too.
    std::fs::remove_file(&real).unwrap();
    std::os::unix::net::UnixListener::bind(&real).map(drop).unwrap();
    let third = client(&n, true);
    check(&third, "/f", &data).await;
    assert_eq!(third.local_stats().reads, 0);

    // The real socket back: a new client uses it.
    std::fs::remove_file(&real).unwrap();
    std::fs::rename(&aside, &real).unwrap();
    let fourth = client(&n, true);
    check(&fourth, "/f", &data).await;
    assert!(fourth.local_stats().reads > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_many_answers_each_path_in_order() {
    let n = node().await;
    let fs = n.fs().unwrap();
    let mut paths = Vec::new();
    for i in 0..300u64 {
        let p = format!("/batch/f{i:03}");
        fs.create(&p, curvine_client::CreateOptions { parents: true, ..Default::default() }).await.unwrap().close().await.unwrap();
        paths.push(p);
    }
    fs.write_all("/batch/f007", &random_bytes(5000, 7), true).await.unwrap();
    paths.insert(10, "/batch/missing".into());
    paths.insert(20, "/batch".into());
    let got = fs.open_many(&paths).await.unwrap();
    assert_eq!(got.len(), paths.len());
    for (p, r) in paths.iter().zip(&got) {
        match p.as_str() {
            "/batch/missing" => assert_eq!(r.as_ref().err().map(|e| e.kind()), Some(curvine_client::ErrorKind::NotFound), "{p}"),
            "/batch" => assert_eq!(r.as_ref().err().map(|e| e.kind()), Some(curvine_client::ErrorKind::IsADirectory), "{p}"),
            _ => assert_eq!(&r.as_ref().unwrap().status().path, p),
        }
    }
    let f7 = got.iter().flatten().find(|r| r.status().path == "/batch/f007").unwrap();
    assert_eq!(f7.len(), 5000);
    let mut buf = vec![0u8; 5000];
    f7.read_at(0, &mut buf).await.unwrap();
    assert!(buf == random_bytes(5000, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_small_files_fetches_descriptors_in_one_go() {
    let n = node().await;
    let fs = client(&n, true);
    // 250: two batches (200 + 50), and within the descriptor budget of a
    // process with the usual 1,024 open-file limit (a quarter of it).
    let mut paths = Vec::new();
    for i in 0..250u64 {
        let p = format!("/batch2/f{i:03}");
        fs.create(&p, curvine_client::CreateOptions { parents: true, ..Default::default() }).await.unwrap().close().await.unwrap();
        fs.write_all(&p, &random_bytes(1000 + i as usize, i), true).await.unwrap();
        paths.push(p);
    }
    let readers: Vec<_> = fs.open_many(&paths).await.unwrap().into_iter().map(|r| r.unwrap()).collect();
    let refs: Vec<_> = readers.iter().collect();
    fs.prepare_local(&refs).await;
    let st = fs.local_stats();
    assert_eq!(st.prefetched, 250, "{st:?}");
    for (i, r) in readers.iter().enumerate() {
        let mut buf = vec![0u8; r.len() as usize];
        r.read_at(0, &mut buf).await.unwrap();
        assert!(buf == random_bytes(1000 + i, i as u64), "{}", r.status().path);
    }
    let st = fs.local_stats();
    assert_eq!((st.reads, st.fallbacks, st.prefetched), (250, 0, 250), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_host_writes_go_straight_into_the_tier_file() {
    let n = node_with(UpOptions { block_size: Some("1MiB".into()), mem: Some("64MiB".into()), ..Default::default() }).await;
    let (fs, tcp) = (client(&n, true), client(&n, false));
    fs.mkdir("/w", true).await.unwrap();
    let files = [
        ("/w/one", random_bytes(1, 4)),
        ("/w/edge", random_bytes(1 << 20, 5)),
        ("/w/multi", random_bytes((3 << 20) + 65_537, 6)),
    ];
    for (p, d) in &files {
        fs.write_all(p, d, false).await.unwrap();
    }
    assert_eq!(fs.local_stats().writes, 1 + 1 + 4, "every block went straight into the tier file");
    for (p, d) in &files {
        check(&tcp, p, d).await;
        check(&fs, p, d).await;
    }
    // Writes smaller than a chunk are staged and still land whole.
    let pieces = random_bytes(300_000, 7);
    let mut w = fs.create("/w/pieces", Default::default()).await.unwrap();
    for p in pieces.chunks(1000) {
        w.write(p).await.unwrap();
    }
    w.close().await.unwrap();
    check(&tcp, "/w/pieces", &pieces).await;
    tcp.write_all("/w/tcp", &pieces, false).await.unwrap();
    assert_eq!(tcp.local_stats().writes, 0, "short-circuit off: written over TCP");

    // A writer dropped mid-block leaves no file, no temp file and no reservation.
    let mut w = fs.create("/w/dropped", Default::default()).await.unwrap();
    w.write(&random_bytes(200_000, 8)).await.unwrap();
    drop(w);
    let tmp = n.mem_dir().join("tmp");
    testbed::wait_for("the half-written block is gone", std::time::Duration::from_secs(20), || async {
        let reserved: u64 = fs.report().await.unwrap().workers.iter().flat_map(|w| &w.tiers).map(|t| t.reserved).sum();
        std::fs::read_dir(&tmp).unwrap().count() == 0 && reserved == 0 && fs.stat("/w/dropped").await.is_err()
    })
    .await
    .unwrap();
}
