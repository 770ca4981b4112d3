//! Cached replicas on separate worker processes: a file written with
//! replication 2 lands on two workers, reads survive kill -9 of one of them
//! (byte-identical), and meta copies the dead worker's blocks to a survivor.

mod common;

use std::time::Duration;

use common::*;
use curvine_client::{CreateOptions, FileSystem};
use curvine_common::config::ClientConf;
use testbed::Split;

const MIB: usize = 1 << 20;

fn copies_ok(r: &curvine_client::FileReader, n: usize, not_on: &str) -> bool {
    r.blocks().iter().all(|b| {
        let mut ids: Vec<u64> = b.locations.iter().map(|l| l.worker_id).collect();
        ids.sort();
        ids.dedup();
        ids.len() == n && b.locations.iter().all(|l| l.addr != not_on)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_fail_over_and_are_restored_after_a_worker_dies() {
    let mut c = Split::start_with(bin(), 3, "256MiB", "[meta]\nworker_timeout = \"2s\"\n").await.unwrap();
    let fs = c.fs().unwrap();
    let tcp = FileSystem::new(ClientConf { meta: vec![c.meta_addr()], short_circuit: false, ..Default::default() }).unwrap();
    let data = random_bytes(8 * MIB, 5);
    let opts = CreateOptions { replication: 2, block_size: MIB as u64, ..Default::default() };
    let mut w = fs.create("/r", opts).await.unwrap();
    w.write(&data).await.unwrap();
    let st = w.close().await.unwrap();
    assert_eq!(st.replication, 2);
    let before = fs.open("/r").await.unwrap();
    assert!(copies_ok(&before, 2, ""), "every block on two workers: {:?}", before.blocks());

    // Kill -9 the worker holding the first block's first copy while a
    // reader is going; every read returns the file's bytes.
    let victim = before.blocks()[0].locations[0].addr.clone();
    let idx = c.workers.iter().position(|p| p.addr("worker").ok().as_deref() == Some(victim.as_str())).unwrap();
    let reader = {
        let (tcp, data) = (tcp.clone(), data.clone());
        tokio::spawn(async move {
            for _ in 0..6 {
                assert!(tcp.read_all("/r").await.unwrap() == data, "read during the kill differs");
            }
        })
    };
    tokio::task::block_in_place(|| c.workers[idx].kill9());
    reader.await.unwrap();
    let mut buf = vec![0u8; data.len()];
    assert_eq!(before.read_at(0, &mut buf).await.unwrap(), data.len());
    assert!(buf == data, "a reader opened before the kill fails over to the other copy");
    assert!(tcp.read_all("/r").await.unwrap() == data);

    // Once meta declares the worker dead, its blocks are copied from the
    // survivors to the third worker: two live copies again, none on it.
    testbed::wait_for("two live copies of every block again", Duration::from_secs(60), || async {
        tcp.open("/r").await.map(|r| copies_ok(&r, 2, &victim)).unwrap_or(false)
    })
    .await
    .unwrap();
    assert!(tcp.read_all("/r").await.unwrap() == data, "the restored copies read back identical");
    assert!(fs.read_all("/r").await.unwrap() == data, "and through short-circuit reads");

    // The dead worker comes back (same id, its old blocks): copies beyond
    // the factor are dropped from it, so every block has exactly two again.
    tokio::task::block_in_place(|| c.workers[idx].restart()).unwrap();
    c.wait_workers(3).await.unwrap();
    testbed::wait_for("exactly two copies after the return", Duration::from_secs(30), || async {
        tcp.open("/r").await.map(|r| copies_ok(&r, 2, "")).unwrap_or(false)
    })
    .await
    .unwrap();
    assert!(tcp.read_all("/r").await.unwrap() == data);

    // The CLI sets the factor per file too.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("p.bin");
    std::fs::write(&local, &data[..MIB]).unwrap();
    let meta = c.meta_addr();
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(bin())
            .args(["fs", "put", "--meta", &meta, "--replication", "2", local.to_str().unwrap(), "/p.bin"])
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = tcp.open("/p.bin").await.unwrap();
    assert_eq!(r.status().replication, 2);
    assert!(copies_ok(&r, 2, &victim), "{:?}", r.blocks());
}
