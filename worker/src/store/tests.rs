use std::os::unix::fs::FileExt;
use std::path::Path;

use curvine_common::config::TierConf;
use curvine_common::size::ByteSize;
use curvine_common::tier::TierKind;
use curvine_common::ErrorKind;
use curvine_fabric::frame::CHUNK;
use curvine_fabric::service::BlockService;

use super::TieredStore;

pub(super) const K: u64 = 1024;

pub(super) fn tier(kind: &str, dir: &Path, capacity: u64) -> TierConf {
    TierConf { kind: kind.into(), dir: dir.join(kind.to_lowercase()), capacity: ByteSize(capacity) }
}

pub(super) fn two_tiers(dir: &Path, mem: u64, ssd: u64) -> Vec<TierConf> {
    vec![tier("MEM", dir, mem), tier("SSD", dir, ssd)]
}

pub(super) fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

pub(super) fn crcs(data: &[u8]) -> Vec<u32> {
    data.chunks(CHUNK as usize).map(curvine_fabric::crc::crc32c).collect()
}

/// Writes a whole block in 64 KiB appends; returns the tier it landed in.
pub(super) fn write(store: &TieredStore, id: u64, bytes: &[u8]) -> curvine_common::Result<TierKind> {
    let mut sink = store.open_write(id, bytes.len() as u64, 0)?;
    let mut off = 0u64;
    for piece in bytes.chunks(CHUNK as usize) {
        sink.append(off, piece, &crcs(piece))?;
        off += piece.len() as u64;
    }
    sink.commit(off)
}

pub(super) fn read_back(store: &TieredStore, id: u64) -> Vec<u8> {
    let src = store.open_read(id).unwrap();
    let mut buf = vec![0u8; src.len as usize];
    src.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&src.crcs[..], &crcs(&buf)[..], "stored crcs match the bytes");
    buf
}

pub(super) fn dir_entries(p: &Path) -> usize {
    std::fs::read_dir(p).unwrap().count()
}

#[test]
fn writes_fall_through_from_full_mem_to_ssd() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(7, &two_tiers(dir.path(), 100 * K, 1024 * K), false).unwrap();
    let a = data(80 * K as usize, 1);
    let b = data(80 * K as usize + 3, 2);
    assert_eq!(write(&store, 1, &a).unwrap(), TierKind::Mem);
    assert_eq!(write(&store, 2, &b).unwrap(), TierKind::Ssd);
    assert_eq!(read_back(&store, 1), a);
    assert_eq!(read_back(&store, 2), b);
    assert_eq!(store.open_read(2).unwrap().tier, TierKind::Ssd);
    let u = store.usage();
    assert_eq!((u[0].used, u[0].blocks, u[0].reserved), (80 * K, 1, 0));
    assert_eq!((u[1].used, u[1].blocks, u[1].reserved), (80 * K + 3, 1, 0));
    assert!(store.verify_block(2).is_ok());
}

#[test]
fn full_worker_says_no_space_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(7, &two_tiers(dir.path(), 64 * K, 64 * K), false).unwrap();
    let a = data(64 * K as usize, 1);
    let b = data(64 * K as usize, 2);
    write(&store, 1, &a).unwrap();
    write(&store, 2, &b).unwrap();

    let e = store.open_write(3, 1, 0).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::NoSpace);
    assert!(e.message().contains("worker 7: no space for 1 B block: MEM 0 B free, SSD 0 B free"), "{e}");

    // A write that grows past everything: fails mid-way, leaves nothing.
    store.delete_block(2).unwrap();
    let mut sink = store.open_write(4, 0, 0).unwrap();
    let big = data(2 * CHUNK as usize, 3);
    sink.append(0, &big[..CHUNK as usize], &crcs(&big[..CHUNK as usize])).unwrap();
    let e = sink.append(CHUNK, &big[CHUNK as usize..], &crcs(&big[CHUNK as usize..])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    drop(sink);
    assert!(store.open_read(4).is_err());
    assert_eq!(read_back(&store, 1), a);
    assert!(store.usage().iter().all(|u| u.reserved == 0));
    assert_eq!(dir_entries(&dir.path().join("mem/tmp")) + dir_entries(&dir.path().join("ssd/tmp")), 0);
}

#[test]
fn abort_and_drop_release_the_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(7, &two_tiers(dir.path(), 256 * K, 256 * K), false).unwrap();
    let mut sink = store.open_write(1, 200 * K, 0).unwrap();
    assert_eq!(sink.tier(), TierKind::Mem);
    assert_eq!(store.usage()[0].reserved, 200 * K);
    let d = data(CHUNK as usize, 1);
    sink.append(0, &d, &crcs(&d)).unwrap();
    // The same id cannot be written twice at once.
    assert_eq!(store.open_write(1, 1, 0).err().unwrap().kind(), ErrorKind::AlreadyExists);
    sink.abort();
    assert_eq!(store.usage()[0].reserved, 0);

    let mut sink = store.open_write(1, 200 * K, 0).unwrap();
    sink.append(0, &d, &crcs(&d)).unwrap();
    // Out of order and wrong-length commits are refused; the sink then cleans up.
    assert_eq!(sink.append(5, &d, &crcs(&d)).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert!(sink.commit(2 * CHUNK).is_err());
    assert_eq!(store.usage()[0].reserved, 0);
    assert_eq!(store.open_read(1).err().unwrap().kind(), ErrorKind::NotFound);

    drop(store.open_write(2, 10 * K, 0).unwrap());
    assert!(store.usage().iter().all(|u| u.reserved == 0 && u.used == 0));
    assert_eq!(dir_entries(&dir.path().join("mem/tmp")), 0);
    assert!(store.take_deltas().added.is_empty());
}

#[test]
fn existing_blocks_are_refused_and_deletes_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(7, &two_tiers(dir.path(), 256 * K, 256 * K), false).unwrap();
    write(&store, 1, &data(10, 1)).unwrap();
    assert_eq!(write(&store, 1, &data(10, 1)).unwrap_err().kind(), ErrorKind::AlreadyExists);
    let d = store.take_deltas();
    assert_eq!(d.added.len(), 1);
    store.delete_block(1).unwrap();
    assert_eq!(store.delete_block(1).unwrap_err().kind(), ErrorKind::NotFound);
    let e = store.open_read(1).err().unwrap();
    assert!(e.message().contains("block 1 not on worker 7"), "{e}");
    assert_eq!(store.usage()[0].used, 0);
    // Unacknowledged deltas come back; newer changes win.
    store.restore_deltas(d);
    let d = store.take_deltas();
    assert_eq!((d.added.len(), d.removed), (0, vec![1]));
    // An empty block is a valid block.
    write(&store, 9, &[]).unwrap();
    assert_eq!(store.open_read(9).unwrap().len, 0);
}

#[test]
fn restart_rebuilds_index_and_removes_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let confs = two_tiers(dir.path(), 128 * K, 1024 * K);
    let a = data(100 * K as usize, 1);
    let b = data(200 * K as usize, 2);
    {
        let store = TieredStore::open(7, &confs, false).unwrap();
        write(&store, 1, &a).unwrap();
        write(&store, 2, &b).unwrap();
        // An unfinished write when the process dies.
        let mut sink = store.open_write(3, 0, 0).unwrap();
        sink.append(0, &a[..10], &crcs(&a[..10])).unwrap();
        std::mem::forget(sink);
    }
    let ssd = dir.path().join("ssd/blocks");
    std::fs::write(ssd.join("10"), b"data without crc").unwrap();
    std::fs::write(ssd.join("11"), vec![0u8; 3 * CHUNK as usize]).unwrap();
    std::fs::write(ssd.join("11.crc"), [0u8; 4]).unwrap(); // one crc for three chunks
    std::fs::write(ssd.join("12.crc"), [0u8; 4]).unwrap(); // crc without data

    let store = TieredStore::open(7, &confs, false).unwrap();
    assert_eq!(read_back(&store, 1), a);
    assert_eq!(read_back(&store, 2), b);
    assert_eq!(store.open_read(1).unwrap().tier, TierKind::Mem);
    assert_eq!(store.open_read(2).unwrap().tier, TierKind::Ssd);
    for id in [3, 10, 11, 12] {
        assert_eq!(store.open_read(id).err().unwrap().kind(), ErrorKind::NotFound, "block {id}");
    }
    let mut report: Vec<_> = store.full_report().into_iter().map(|b| (b.id, b.len, b.tier)).collect();
    report.sort();
    assert_eq!(report, vec![(1, 100 * K, TierKind::Mem), (2, 200 * K, TierKind::Ssd)]);
    let u = store.usage();
    assert_eq!((u[0].used, u[0].reserved, u[1].used, u[1].blocks), (100 * K, 0, 200 * K, 1));
    assert_eq!(dir_entries(&ssd), 2);
    assert_eq!(dir_entries(&dir.path().join("mem/tmp")), 0);
}

#[test]
fn corruption_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(7, &two_tiers(dir.path(), 1024 * K, 1024 * K), false).unwrap();
    write(&store, 1, &data(3 * CHUNK as usize, 1)).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(dir.path().join("mem/blocks/1")).unwrap();
    f.write_all_at(&[0xff, 0x00], CHUNK + 7).unwrap();
    let e = store.verify_block(1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.message().contains("chunk 1"), "{e}");
}

#[test]
fn bad_tier_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(TieredStore::open(1, &[], false).err().unwrap().kind(), ErrorKind::Config);
    let e = TieredStore::open(1, &[tier("TAPE", dir.path(), 1)], false).err().unwrap();
    assert!(e.message().contains("worker.tiers[0].kind"), "{e}");
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let bad = TierConf { kind: "SSD".into(), dir: file.join("sub"), capacity: ByteSize(1) };
    let e = TieredStore::open(1, &[tier("MEM", dir.path(), 1), bad], false).err().unwrap();
    assert!(e.message().contains("worker.tiers[1].dir"), "{e}");
}

#[test]
fn blocks_of_another_worker_identity_are_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let confs = two_tiers(dir.path(), 1024 * K, 1024 * K);
    {
        let store = TieredStore::open(7, &confs, false).unwrap();
        write(&store, 1, &data(70 * K as usize, 1)).unwrap();
    }
    // Same worker again: its block is still there.
    let store = TieredStore::open(7, &confs, false).unwrap();
    assert_eq!(read_back(&store, 1), data(70 * K as usize, 1));
    drop(store);
    // A new worker id over the same directories: nothing of worker 7's is indexed.
    let store = TieredStore::open(8, &confs, false).unwrap();
    assert_eq!(store.open_read(1).err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    assert_eq!(store.usage()[0].blocks, 0);
    write(&store, 1, &data(10, 2)).unwrap();
    assert_eq!(read_back(&store, 1), data(10, 2));
}

pub(super) fn move_to(store: &TieredStore, id: u64, tier: usize) -> curvine_common::Result<()> {
    store.move_block(id, tier, &mut super::moves::Pace::new(1 << 30))
}

#[test]
fn blocks_move_between_tiers_with_their_bytes_and_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(7, &two_tiers(dir.path(), 1024 * K, 1024 * K), false).unwrap();
    let a = data(200 * K as usize + 5, 1);
    write(&store, 1, &a).unwrap();
    store.take_deltas();
    let held = store.open_read(1).unwrap(); // an open reader keeps its handle
    move_to(&store, 1, 1).unwrap();
    assert_eq!(store.tier_of(1), Some(TierKind::Ssd));
    assert_eq!(read_back(&store, 1), a);
    let mut buf = vec![0u8; a.len()];
    held.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, a, "the reader opened before the move still reads the block");
    let u = store.usage();
    assert_eq!((u[0].used, u[0].blocks, u[1].used, u[1].blocks), (0, 0, a.len() as u64, 1));
    assert_eq!((u[0].reserved, u[1].reserved), (0, 0));
    assert_eq!(dir_entries(&dir.path().join("mem/blocks")), 0, "the source files are gone");
    let d = store.take_deltas();
    assert_eq!(d.added, vec![super::StoredBlock { id: 1, len: a.len() as u64, tier: TierKind::Ssd }]);
    // Back up, and the index survives a restart in the new place.
    move_to(&store, 1, 0).unwrap();
    drop(store);
    let store = TieredStore::open(7, &two_tiers(dir.path(), 1024 * K, 1024 * K), false).unwrap();
    assert_eq!(store.tier_of(1), Some(TierKind::Mem));
    assert_eq!(read_back(&store, 1), a);
    assert_eq!(store.metrics().blocks_demoted.get() + store.metrics().blocks_promoted.get(), 0, "fresh metrics");
}

#[test]
fn a_move_needs_room_and_a_corrupt_block_is_dropped_not_moved() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(7, &two_tiers(dir.path(), 1024 * K, 100 * K), false).unwrap();
    write(&store, 1, &data(150 * K as usize, 1)).unwrap();
    assert_eq!(move_to(&store, 1, 1).unwrap_err().kind(), ErrorKind::NoSpace);
    assert_eq!(store.tier_of(1), Some(TierKind::Mem), "a failed move leaves the block where it was");
    assert_eq!(store.usage()[1].reserved, 0);
    write(&store, 2, &data(70 * K as usize, 2)).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(dir.path().join("mem/blocks/2")).unwrap();
    f.write_all_at(b"rot", 66 * K).unwrap();
    let e = move_to(&store, 2, 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(!store.contains(2), "the corrupt block left the index");
    assert_eq!(store.take_deltas().removed, vec![2], "and meta hears of it");
    assert_eq!(dir_entries(&dir.path().join("ssd/blocks")), 0, "nothing half-copied is left");
    assert_eq!(dir_entries(&dir.path().join("ssd/tmp")), 0);
    assert_eq!(store.metrics().blocks_corrupt.get(), 1);
}

#[test]
fn a_failed_move_leaves_alone_the_block_written_again_meanwhile() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let tiers = two_tiers(dir.path(), 1024 * K, 1024 * K);
    let a = data(100 * K as usize, 1);
    let store = TieredStore::open(7, &tiers, false).unwrap();
    write(&store, 1, &a).unwrap();
    move_to(&store, 1, 1).unwrap();
    drop(store);
    // Reopened, the store reads block 1's crcs from disk to move it: a FIFO
    // in their place holds the move until the block was deleted and written
    // again into the target tier, then fails it (no checksums: Corrupt).
    let store = std::sync::Arc::new(TieredStore::open(7, &tiers, false).unwrap());
    let crc = dir.path().join("ssd/blocks/1.crc");
    std::fs::remove_file(&crc).unwrap();
    let c = std::ffi::CString::new(crc.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mover = {
        let store = store.clone();
        std::thread::spawn(move || move_to(&store, 1, 0))
    };
    // Opens once the move opened it to read: the block is marked moving.
    let fifo = std::fs::OpenOptions::new().write(true).open(&crc).unwrap();
    store.delete_block(1).unwrap();
    assert_eq!(write(&store, 1, &a).unwrap(), TierKind::Mem);
    drop(fifo);
    let e = mover.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert_eq!(store.tier_of(1), Some(TierKind::Mem), "the block written again stays");
    assert_eq!(read_back(&store, 1), a);
    store.verify_block(1).unwrap();
    assert_eq!(store.metrics().blocks_corrupt.get(), 0, "nothing was dropped");
    let u = store.usage();
    assert_eq!((u[0].used, u[0].blocks, u[0].reserved, u[1].used, u[1].blocks), (a.len() as u64, 1, 0, 0, 0));
    assert_eq!(dir_entries(&dir.path().join("mem/tmp")), 0);
    // A move's leftovers in tmp/ go at start like a write's.
    std::fs::write(dir.path().join("mem/tmp/2.mv"), b"x").unwrap();
    std::fs::write(dir.path().join("mem/tmp/2.mv.crc"), b"x").unwrap();
    drop(store);
    let store = TieredStore::open(7, &tiers, false).unwrap();
    assert_eq!(read_back(&store, 1), a);
    assert_eq!(dir_entries(&dir.path().join("mem/tmp")), 0);
}

#[test]
fn full_tiers_make_room_only_from_blocks_meta_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(7, &[tier("MEM", dir.path(), 200 * K)], false).unwrap();
    write(&store, 1, &data(100 * K as usize, 1)).unwrap();
    write(&store, 2, &data(100 * K as usize, 2)).unwrap();
    store.on_read(2, 100 * K, false); // 1 is the least recently read (ties go by id too)
    let e = write(&store, 3, &data(100 * K as usize, 3)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace, "nothing was cleared for eviction: {e}");
    store.mark_evictable(&[1, 2], &[1, 2]);
    write(&store, 3, &data(100 * K as usize, 3)).unwrap();
    assert!(!store.contains(1) && store.contains(2) && store.contains(3), "the colder cleared block went");
    assert_eq!(store.metrics().blocks_evicted.get(), 1);
    assert!(store.take_deltas().removed.contains(&1));
}

#[test]
fn a_tiering_round_sinks_cold_blocks_and_lifts_hot_ones() {
    use crate::tiering::policy::Thresholds;
    use crate::tiering::{Round, Tiering};
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(TieredStore::open(7, &two_tiers(dir.path(), 400 * K, 4096 * K), false).unwrap());
    for id in 1..=4 {
        write(&store, id, &data(100 * K as usize, id as u8)).unwrap();
    }
    for id in [2, 3, 4] {
        store.on_read(id, 100 * K, false);
    }
    let t = Tiering {
        store: store.clone(),
        thresholds: Thresholds { high: 0.9, low: 0.6, promote_after: 2.0 },
        bandwidth: 1 << 30,
        interval: std::time::Duration::from_secs(1),
    };
    // 400 KiB of 400: down to 240 KiB, the least recently read first.
    assert_eq!(t.round(), Round { demoted: 2, ..Default::default() });
    assert_eq!(store.tier_of(1), Some(TierKind::Ssd));
    assert_eq!(store.tier_of(2), Some(TierKind::Ssd));
    assert_eq!(t.round(), Round::default(), "stable once under the watermark");
    store.on_read(1, 100 * K, false);
    assert_eq!(t.round(), Round::default(), "one read is not enough");
    store.on_read(1, 100 * K, false);
    assert_eq!(t.round(), Round { promoted: 1, ..Default::default() });
    assert_eq!(store.tier_of(1), Some(TierKind::Mem));
    assert_eq!(read_back(&store, 1), data(100 * K as usize, 1));
}

#[test]
fn a_length_hint_beyond_the_largest_block_is_refused_without_reserving() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(7, &[tier("MEM", dir.path(), 200 * K)], false).unwrap();
    write(&store, 1, &data(100 * K as usize, 1)).unwrap();
    // Cleared by meta: a hint that does not fit would evict it.
    store.mark_evictable(&[1], &[1]);
    for hint in [super::MAX_BLOCK_LEN + 1, u64::MAX] {
        let e = store.open_write(2, hint, 0).err().expect("refused");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    }
    // Nothing was reserved or evicted.
    assert!(store.contains(1));
    assert_eq!(store.metrics().blocks_evicted.get(), 0);
    assert_eq!(read_back(&store, 1), data(100 * K as usize, 1));
    assert_eq!(write(&store, 2, &data(100 * K as usize, 2)).unwrap(), TierKind::Mem);
    // A hint of the largest block size is a legal one: too big for this
    // tier, it is refused for want of space, not as malformed.
    let e = store.open_write(3, super::MAX_BLOCK_LEN, 0).err().expect("no room");
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
}
