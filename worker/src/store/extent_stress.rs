//! Extents under concurrent writes, deletes, moves, joins and reads: every
//! read sees its block's bytes or NotFound, and after a restart the index,
//! the files and the accounting agree.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use curvine_common::ErrorKind;
use curvine_fabric::frame::CHUNK;
use curvine_fabric::service::BlockService;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

use super::tests::{crcs, data, two_tiers, K};
use super::TieredStore;

/// Block `id`'s bytes: 64 or 128 KiB, or a short last block.
fn bytes_of(id: u64, last: bool) -> Vec<u8> {
    let len = if last { 10_000 + (id % 7) as usize * 100 } else { (1 + (id % 2) as usize) * 64 * K as usize };
    data(len, id as u8)
}

/// Reads block `id` whole and checks it; NotFound is fine (deleted).
fn check(store: &TieredStore, id: u64, want: &[u8]) {
    match store.open_read(id) {
        Ok(src) => {
            let mut buf = vec![0u8; src.len as usize];
            src.read_exact_at(&mut buf, 0).unwrap();
            assert!(buf == want, "block {id} reads other bytes (base {}, len {})", src.base, src.len);
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "block {id}: {e}"),
    }
}

#[test]
fn extents_stay_right_under_concurrent_writes_deletes_moves_and_joins() {
    let dir = tempfile::tempdir().unwrap();
    let tiers = two_tiers(dir.path(), 64 << 20, 64 << 20);
    let store = Arc::new(TieredStore::open(7, &tiers, false).unwrap());
    // File -> its blocks, in order; block -> bytes.
    let files: Arc<Mutex<Vec<Vec<u64>>>> = Arc::default();
    let bytes: Arc<Mutex<HashMap<u64, Vec<u8>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut threads = Vec::new();
    {
        let (store, files, bytes, stop) = (store.clone(), files.clone(), bytes.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut id = 1u64;
            let mut rng = rand::rngs::StdRng::seed_from_u64(1);
            while !stop.load(Ordering::Relaxed) {
                let n = rng.random_range(1..=4);
                let mut blocks = Vec::new();
                for i in 0..n {
                    let b = bytes_of(id, i + 1 == n);
                    let after = blocks.last().copied().unwrap_or(0);
                    let mut sink = match store.open_write(id, b.len() as u64, after) {
                        Ok(s) => s,
                        // Full of blocks (and of bytes held for extents): the file ends here.
                        Err(e) if e.kind() == ErrorKind::NoSpace => break,
                        Err(e) => panic!("block {id}: {e}"),
                    };
                    let mut off = 0u64;
                    for piece in b.chunks(CHUNK as usize) {
                        sink.append(off, piece, &crcs(piece)).unwrap();
                        off += piece.len() as u64;
                    }
                    if rng.random_bool(0.05) {
                        sink.abort(); // an aborted append: the file ends here
                        break;
                    }
                    sink.commit(off).unwrap();
                    bytes.lock().insert(id, b);
                    blocks.push(id);
                    id += 1;
                }
                id += 1; // the aborted id is never used again
                files.lock().push(blocks);
            }
        }));
    }
    for seed in 2..6u64 {
        let (store, files, bytes, stop) = (store.clone(), files.clone(), bytes.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            while !stop.load(Ordering::Relaxed) {
                let file = {
                    let f = files.lock();
                    if f.is_empty() {
                        continue;
                    }
                    f[rng.random_range(0..f.len())].clone()
                };
                let Some(&id) = file.get(rng.random_range(0..file.len().max(1))) else { continue };
                match (seed, rng.random_range(0..10)) {
                    (2, 0) => drop(store.delete_block(id)),
                    (2, 1) => drop(store.evict(id)),
                    (3, _) => drop(store.move_block(id, rng.random_range(0..2), &mut super::moves::Pace::new(1 << 40))),
                    (4, _) => drop(store.join(&file)),
                    _ => {
                        let want = bytes.lock().get(&id).cloned().unwrap();
                        check(&store, id, &want);
                    }
                }
            }
        }));
    }
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let bytes = bytes.lock().clone();
    let before: Vec<_> = {
        let mut r = store.full_report();
        r.sort_by_key(|b| b.id);
        r
    };
    let usage = store.usage();
    assert!(usage.iter().all(|u| u.reserved == 0), "reservations left: {usage:?}");
    for b in &before {
        check(&store, b.id, &bytes[&b.id]);
    }
    drop(store);
    let store = TieredStore::open(7, &tiers, false).unwrap();
    let mut after = store.full_report();
    after.sort_by_key(|b| b.id);
    assert_eq!(after, before, "a restart finds the same blocks in the same tiers");
    for b in &after {
        check(&store, b.id, &bytes[&b.id]);
    }
    let again = store.usage();
    for (u, v) in usage.iter().zip(&again) {
        assert_eq!((u.used, u.blocks), (v.used, v.blocks), "accounting before and after a restart ({})", u.kind);
    }
    // Every byte in a tier directory is accounted for.
    for (t, u) in tiers.iter().zip(&again) {
        let on_disk: u64 = std::fs::read_dir(t.dir.join("blocks"))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| !e.file_name().to_string_lossy().contains('.'))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert_eq!(on_disk, u.used, "{}: bytes in block and extent files vs used", u.kind);
    }
    eprintln!("{} files written, {} blocks kept", files.lock().len(), after.len());
}
