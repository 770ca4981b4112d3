//! Extents: a file's consecutive MEM blocks in one tier file.

use std::os::unix::fs::MetadataExt;

use curvine_fabric::frame::CHUNK;
use curvine_fabric::service::BlockService;

use super::tests::{crcs, data, move_to, read_back, two_tiers, K};
use super::TieredStore;

/// Writes block `id` after `after` in 64 KiB appends.
fn write_after(store: &TieredStore, id: u64, after: u64, bytes: &[u8]) {
    let mut sink = store.open_write(id, bytes.len() as u64, after).unwrap();
    let mut off = 0u64;
    for piece in bytes.chunks(CHUNK as usize) {
        sink.append(off, piece, &crcs(piece)).unwrap();
        off += piece.len() as u64;
    }
    sink.commit(off).unwrap();
}

/// A store with block 1 (256 KiB) and block 2 (64 KiB, written after
/// block `after`), its tier config and both blocks' bytes.
fn two_blocks(dir: &std::path::Path, after: u64) -> (TieredStore, Vec<curvine_common::config::TierConf>, Vec<u8>, Vec<u8>) {
    let tiers = two_tiers(dir, 4096 * K, 4096 * K);
    let store = TieredStore::open(7, &tiers, false).unwrap();
    let (a, b) = (data(256 * K as usize, 1), data(64 * K as usize, 2));
    write_after(&store, 1, 0, &a);
    write_after(&store, 2, after, &b);
    (store, tiers, a, b)
}

/// (device, inode, base, file length) of a block's file.
fn placed(store: &TieredStore, id: u64) -> (u64, u64, u64, u64) {
    let s = store.open_read(id).unwrap();
    let m = s.file.metadata().unwrap();
    (m.dev(), m.ino(), s.base, m.len())
}

#[test]
fn consecutive_blocks_share_one_file_at_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(7, &two_tiers(dir.path(), 4096 * K, 4096 * K), false).unwrap();
    let (a, b, c) = (
        data(256 * K as usize, 1),
        data(256 * K as usize, 2),
        data(100 * K as usize + 7, 3),
    );
    write_after(&store, 1, 0, &a);
    write_after(&store, 2, 1, &b);
    write_after(&store, 3, 2, &c);
    let (p1, p2, p3) = (placed(&store, 1), placed(&store, 2), placed(&store, 3));
    assert_eq!((p1.0, p1.1), (p2.0, p2.1), "block 2 is in block 1's file");
    assert_eq!((p1.0, p1.1), (p3.0, p3.1), "block 3 too");
    assert_eq!(
        (p1.2, p2.2, p3.2),
        (0, 256 * K, 512 * K),
        "at their file offsets"
    );
    assert_eq!(
        p3.3,
        (512 + 100) * K + 7,
        "the file is exactly the three blocks"
    );
    assert_eq!(
        (
            read_back(&store, 1),
            read_back(&store, 2),
            read_back(&store, 3)
        ),
        (a.clone(), b.clone(), c.clone())
    );
    let u = store.usage();
    assert_eq!((u[0].used, u[0].blocks), (p3.3, 3));
    // After a short block nothing can follow page-aligned: a file of its own.
    write_after(&store, 4, 3, &data(10, 4));
    assert_eq!(placed(&store, 4).2, 0);
    assert_ne!(placed(&store, 4).1, p1.1);
    // Only the extent's last block can be followed, and only once.
    write_after(&store, 5, 1, &data(10, 5));
    assert_ne!(
        placed(&store, 5).1,
        p1.1,
        "block 1 is not the extent's last block"
    );
    assert_eq!(store.full_report().len(), 5);
}

#[test]
fn an_extent_holds_its_memory_until_its_last_block_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, _, b) = two_blocks(dir.path(), 1);
    let held = store.open_read(2).unwrap();
    store.delete_block(1).unwrap();
    assert_eq!(read_back(&store, 2), b, "the other block still reads right");
    let u = store.usage();
    assert_eq!(
        (u[0].used, u[0].blocks),
        (320 * K, 1),
        "the deleted block's bytes are still held"
    );
    assert!(store.open_read(1).is_err());
    // And after a restart.
    drop(held);
    drop(store);
    let store = TieredStore::open(7, &two_tiers(dir.path(), 4096 * K, 4096 * K), false).unwrap();
    assert_eq!(read_back(&store, 2), b);
    let u = store.usage();
    assert_eq!((u[0].used, u[0].blocks), (320 * K, 1));
    store.delete_block(2).unwrap();
    let u = store.usage();
    assert_eq!(
        (u[0].used, u[0].blocks),
        (0, 0),
        "the last block freed the extent"
    );
    assert_eq!(
        super::tests::dir_entries(&dir.path().join("mem/blocks")),
        0,
        "no file left behind"
    );
}

#[test]
fn an_aborted_or_crashed_append_leaves_the_extent_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let tiers = two_tiers(dir.path(), 4096 * K, 4096 * K);
    let store = TieredStore::open(7, &tiers, false).unwrap();
    let a = data(256 * K as usize, 1);
    write_after(&store, 1, 0, &a);
    // Aborted: the file is cut back, the reservation released.
    let mut sink = store.open_write(2, 256 * K, 1).unwrap();
    sink.append(0, &a[..CHUNK as usize], &crcs(&a[..CHUNK as usize]))
        .unwrap();
    assert_eq!(placed(&store, 1).3, 256 * K + CHUNK);
    sink.abort();
    assert_eq!(placed(&store, 1).3, 256 * K, "cut back to block 1's end");
    assert_eq!(store.usage()[0].reserved, 0);
    // The extent takes the next append after all.
    write_after(&store, 3, 1, &data(64 * K as usize, 3));
    assert_eq!(placed(&store, 3).2, 256 * K);
    // A crash mid-append: bytes past the last block and no marker.
    let mut sink = store.open_write(4, 64 * K, 3).unwrap();
    sink.append(0, &a[..CHUNK as usize], &crcs(&a[..CHUNK as usize]))
        .unwrap();
    std::mem::forget(sink);
    drop(store);
    let store = TieredStore::open(7, &tiers, false).unwrap();
    // Not cut at start (a reader may map bytes there): dead bytes.
    assert_eq!(placed(&store, 1).3, 320 * K + CHUNK);
    assert_eq!(read_back(&store, 1), a);
    assert_eq!(read_back(&store, 3), data(64 * K as usize, 3));
    assert!(store.open_read(4).is_err());
    let u = store.usage();
    assert_eq!((u[0].used, u[0].blocks, u[0].reserved), (320 * K + CHUNK, 2, 0));
    // Nothing goes after them: the next block would be off its offset.
    write_after(&store, 5, 3, &data(64 * K as usize, 5));
    assert_eq!(placed(&store, 5).2, 0);
    assert_ne!(placed(&store, 5).1, placed(&store, 3).1);
}

#[test]
fn a_block_moved_out_of_an_extent_keeps_its_bytes_and_the_rest_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, a, b) = two_blocks(dir.path(), 1);
    move_to(&store, 1, 1).unwrap();
    assert_eq!(read_back(&store, 1), a);
    assert_eq!(read_back(&store, 2), b);
    let u = store.usage();
    assert_eq!(
        (u[0].used, u[0].blocks, u[1].used, u[1].blocks),
        (320 * K, 1, 256 * K, 1)
    );
    move_to(&store, 2, 1).unwrap();
    let u = store.usage();
    assert_eq!(
        (u[0].used, u[0].blocks, u[1].used, u[1].blocks),
        (0, 0, 320 * K, 2),
        "the emptied extent is freed"
    );
    assert_eq!(super::tests::dir_entries(&dir.path().join("mem/blocks")), 0);
    drop(store);
    let store = TieredStore::open(7, &two_tiers(dir.path(), 4096 * K, 4096 * K), false).unwrap();
    assert_eq!((read_back(&store, 1), read_back(&store, 2)), (a, b));
}

#[test]
fn a_bad_marker_drops_only_its_block() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tiers, a, _) = two_blocks(dir.path(), 1);
    drop(store);
    // A marker pointing past the end of the extent's file.
    std::fs::write(
        dir.path().join("mem/blocks/2.at"),
        format!("1 {} {}\n", 256 * K, 1 << 30),
    )
    .unwrap();
    let store = TieredStore::open(7, &tiers, false).unwrap();
    assert_eq!(read_back(&store, 1), a);
    assert!(store.open_read(2).is_err());
    assert!(!dir.path().join("mem/blocks/2.crc").exists());
}

#[test]
fn a_marker_whose_end_overflows_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tiers, a, _) = two_blocks(dir.path(), 1);
    drop(store);
    // Page-aligned, one crc's worth, and `base + len` wraps to 0.
    std::fs::write(dir.path().join("mem/blocks/2.at"), "1 18446744073709547520 4096\n").unwrap();
    let store = TieredStore::open(7, &tiers, false).unwrap();
    assert_eq!(read_back(&store, 1), a);
    assert!(store.open_read(2).is_err(), "judged by its own files: it has none");
    assert!(!dir.path().join("mem/blocks/2.at").exists());
    assert!(!dir.path().join("mem/blocks/2.crc").exists());
    let u = store.usage();
    assert_eq!((u[0].used, u[0].blocks), (320 * K, 1), "block 2's bytes stay as the extent's dead bytes");
}

#[test]
fn an_extent_of_duplicate_blocks_only_is_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let tiers = two_tiers(dir.path(), 4096 * K, 4096 * K);
    let store = TieredStore::open(7, &tiers, false).unwrap();
    let a = data(64 * K as usize, 1);
    write_after(&store, 1, 0, &a);
    drop(store);
    // A crash mid-move left block 1 in MEM and, alone in an extent, in SSD.
    let (mem, ssd) = (dir.path().join("mem/blocks"), dir.path().join("ssd/blocks"));
    std::fs::copy(mem.join("1"), ssd.join("x5")).unwrap();
    std::fs::copy(mem.join("1.crc"), ssd.join("1.crc")).unwrap();
    std::fs::write(ssd.join("1.at"), format!("5 0 {}\n", a.len())).unwrap();
    let store = TieredStore::open(7, &tiers, false).unwrap();
    assert_eq!(store.tier_of(1), Some(curvine_common::tier::TierKind::Mem));
    assert_eq!(read_back(&store, 1), a);
    assert_eq!(super::tests::dir_entries(&ssd), 0, "the duplicate's extent went with it");
    let u = store.usage();
    assert_eq!((u[0].used, u[0].blocks, u[1].used, u[1].blocks), (64 * K, 1, 0, 0));
}

#[test]
fn a_block_id_that_comes_back_never_lands_on_an_extent() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tiers, a, b) = two_blocks(dir.path(), 1);
    // Demoted and promoted again: block 1 gets a file of its own in MEM.
    move_to(&store, 1, 1).unwrap();
    move_to(&store, 1, 0).unwrap();
    assert_eq!((read_back(&store, 1), read_back(&store, 2)), (a.clone(), b.clone()));
    // Evicted and loaded again (same id, as a cache reload does).
    assert!(store.evict(1));
    write_after(&store, 1, 0, &a);
    assert_eq!((read_back(&store, 1), read_back(&store, 2)), (a.clone(), b.clone()));
    drop(store);
    let store = TieredStore::open(7, &tiers, false).unwrap();
    assert_eq!((read_back(&store, 1), read_back(&store, 2)), (a, b));
}

#[test]
fn a_crash_while_a_block_becomes_an_extent_keeps_the_block() {
    let dir = tempfile::tempdir().unwrap();
    let (store, tiers, a, b) = two_blocks(dir.path(), 0);
    drop(store);
    let blocks = dir.path().join("mem/blocks");
    // Block 1: marker written, its file not yet renamed to the extent.
    std::fs::write(blocks.join("1.at"), format!("9 0 {}\n", a.len())).unwrap();
    // Block 2: renamed, but its own file is there again (as after a crash
    // between the marker and the removal of a copied block's file).
    std::fs::copy(blocks.join("2"), blocks.join("x4")).unwrap();
    std::fs::write(blocks.join("2.at"), format!("4 0 {}\n", b.len())).unwrap();
    let store = TieredStore::open(7, &tiers, false).unwrap();
    assert_eq!((read_back(&store, 1), read_back(&store, 2)), (a, b.clone()));
    assert!(!blocks.join("1.at").exists(), "the marker naming no extent is gone");
    assert!(!blocks.join("2").exists(), "the valid marker wins over the block's old file");
    assert_eq!(placed(&store, 2).2, 0);
    // New extents are numbered past the ones found.
    write_after(&store, 3, 1, &data(64 * K as usize, 3));
    assert!(blocks.join("x5").exists());
}

#[test]
fn join_puts_a_files_scattered_blocks_into_one_extent() {
    let dir = tempfile::tempdir().unwrap();
    let tiers = two_tiers(dir.path(), 4096 * K, 4096 * K);
    let store = TieredStore::open(7, &tiers, false).unwrap();
    let (a, b, c, d) = (data(256 * K as usize, 1), data(128 * K as usize, 2), data(64 * K as usize, 3), data(100, 4));
    // 1 and 2 already an extent; 3 and 4 blocks of their own.
    write_after(&store, 1, 0, &a);
    write_after(&store, 2, 1, &b);
    write_after(&store, 3, 0, &c);
    write_after(&store, 4, 0, &d);
    let held = store.open_read(2).unwrap();
    store.join(&[1, 2, 3, 4]).unwrap();
    let p: Vec<_> = (1..=4).map(|id| placed(&store, id)).collect();
    assert!(p.iter().all(|x| (x.0, x.1) == (p[0].0, p[0].1)), "one file: {p:?}");
    assert_eq!(p.iter().map(|x| x.2).collect::<Vec<_>>(), vec![0, 256 * K, 384 * K, 448 * K]);
    assert_eq!(p[0].3, 448 * K + 100, "exactly the file");
    assert_eq!((read_back(&store, 1), read_back(&store, 2), read_back(&store, 3), read_back(&store, 4)), (a.clone(), b.clone(), c.clone(), d.clone()));
    let mut buf = vec![0u8; b.len()];
    held.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, b, "a reader of the old place still reads right");
    let u = store.usage();
    assert_eq!((u[0].used, u[0].blocks, u[0].reserved), (448 * K + 100, 4, 0), "old files and the old extent are gone");
    assert_eq!(super::tests::dir_entries(&dir.path().join("mem/blocks")), 1 + 4 * 2, "one extent, a marker and crcs per block");
    // Again: nothing to do (same file).
    store.join(&[1, 2, 3, 4]).unwrap();
    assert_eq!(placed(&store, 4).1, p[0].1);
    drop(store);
    let store = TieredStore::open(7, &tiers, false).unwrap();
    assert_eq!((read_back(&store, 1), read_back(&store, 4)), (a, d));
    assert_eq!(store.usage()[0].used, 448 * K + 100);
}

#[test]
fn join_refuses_what_it_cannot_do_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(7, &two_tiers(dir.path(), 1024 * K, 4096 * K), false).unwrap();
    write_after(&store, 1, 0, &data(100, 1));
    write_after(&store, 2, 0, &data(64 * K as usize, 2));
    assert_eq!(store.join(&[1, 2]).unwrap_err().kind(), curvine_common::ErrorKind::InvalidArgument, "an unaligned block inside");
    assert_eq!(store.join(&[2, 9]).unwrap_err().kind(), curvine_common::ErrorKind::NotFound);
    write_after(&store, 3, 0, &data(512 * K as usize, 3));
    write_after(&store, 4, 0, &data(256 * K as usize, 4));
    // 832 KiB of 1 MiB used: no room for a second copy.
    assert_eq!(store.join(&[2, 3, 4]).unwrap_err().kind(), curvine_common::ErrorKind::NoSpace);
    move_to(&store, 4, 1).unwrap();
    assert_eq!(store.join(&[3, 4]).unwrap_err().kind(), curvine_common::ErrorKind::InvalidArgument, "not all in MEM");
    assert_eq!(read_back(&store, 3), data(512 * K as usize, 3));
    let u = store.usage();
    assert_eq!((u[0].reserved, u[0].blocks), (0, 3));
    assert_eq!(placed(&store, 2).2, 0);
}
