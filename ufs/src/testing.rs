//! Conformance suite every UFS passes: the same calls and assertions against
//! a local directory and a real S3 server (and any store a user wants to
//! vet: point it at a scratch prefix). Panics with a message naming the
//! failed property.
//!
//! Needs a `Ufs` built with `list_page=7` so listing crosses store pages with
//! few objects.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{ErrorKind, Ufs, UfsEntry};

/// Runs every check under `prefix` (relative to the UFS root; must be empty
/// or absent and writable). Removes what it wrote.
pub async fn conformance(ufs: &Ufs, prefix: &str) {
    let p = prefix.trim_matches('/').to_string();
    ufs.check().await.unwrap_or_else(|e| panic!("check: {e}"));
    write_then_stat(ufs, &p).await;
    directories(ufs, &p).await;
    list_pages(ufs, &p).await;
    read_ranges(ufs, &p).await;
    etag_guards_reads(ufs, &p).await;
    multipart_write(ufs, &p).await;
    abort_and_drop(ufs, &p).await;
    failed_overwrite_keeps_previous(ufs, &p).await;
    staging_dir_is_hidden(ufs, &p).await;
    renames(ufs, &p).await;
    bad_paths(ufs).await;
    cleanup(ufs, &p).await;
}

/// Deterministic bytes (xorshift), so a mismatch points at an offset.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub async fn put(ufs: &Ufs, rel: &str, data: &[u8]) -> UfsEntry {
    let mut w = ufs.writer(rel).await.unwrap_or_else(|e| panic!("writer {rel}: {e}"));
    for piece in data.chunks(1 << 20) {
        w.write(Bytes::copy_from_slice(piece)).await.unwrap_or_else(|e| panic!("write {rel}: {e}"));
    }
    w.close().await.unwrap_or_else(|e| panic!("close {rel}: {e}"))
}

pub async fn get(ufs: &Ufs, rel: &str, offset: u64, len: u64, etag: Option<&str>) -> crate::Result<Vec<u8>> {
    let mut r = ufs.read(rel, offset, len, etag).await?;
    let mut out = Vec::with_capacity(len as usize);
    while let Some(b) = r.next().await? {
        out.extend_from_slice(&b);
    }
    Ok(out)
}

async fn list_all(ufs: &Ufs, rel: &str, page: usize) -> Vec<UfsEntry> {
    let mut l = ufs.list(rel).await.unwrap_or_else(|e| panic!("list {rel}: {e}"));
    let mut all = Vec::new();
    loop {
        let got = l.next_page(page).await.unwrap_or_else(|e| panic!("list {rel}: {e}"));
        if got.is_empty() {
            return all;
        }
        assert!(got.len() <= page, "list {rel}: page of {} > max {page}", got.len());
        all.extend(got);
    }
}

async fn write_then_stat(ufs: &Ufs, p: &str) {
    let rel = format!("{p}/small");
    let closed = put(ufs, &rel, b"hello ufs").await;
    assert_eq!((closed.name.as_str(), closed.is_dir, closed.len), ("small", false, 9), "close returns the entry");
    assert!(!closed.etag.is_empty(), "close returns an etag");
    assert!(closed.mtime_ms > 0, "close returns an mtime");
    let st = ufs.stat(&rel).await.unwrap().expect("stat finds the written file");
    assert_eq!(st, closed, "stat agrees with close");
    assert_eq!(ufs.stat(&format!("{p}/nope")).await.unwrap(), None, "stat of a missing file is None");
    assert_eq!(ufs.stat(&format!("{p}/nope/deeper")).await.unwrap(), None, "stat under a missing dir is None");
    assert_eq!(ufs.stat(&format!("{p}/small/under-a-file")).await.unwrap(), None, "stat under a file is None");
    assert_eq!(get(ufs, &rel, 0, 9, None).await.unwrap(), b"hello ufs");
    ufs.delete(&rel).await.unwrap();
    assert_eq!(ufs.stat(&rel).await.unwrap(), None, "delete removes");
    let empty = put(ufs, &format!("{p}/empty"), b"").await;
    assert_eq!((empty.len, empty.is_dir), (0, false), "an empty object");
    assert!(get(ufs, &format!("{p}/empty"), 0, 0, None).await.unwrap().is_empty());
    ufs.delete(&rel).await.expect("deleting a missing file is Ok");
}

async fn directories(ufs: &Ufs, p: &str) {
    // On object stores `d/implicit` exists only as a prefix of this object.
    put(ufs, &format!("{p}/d/implicit/deep/x"), b"x").await;
    for dir in [p.to_string(), format!("{p}/d"), format!("{p}/d/implicit"), format!("{p}/d/implicit/deep")] {
        let st = ufs.stat(&dir).await.unwrap().unwrap_or_else(|| panic!("stat {dir}: implicit dir not found"));
        assert!(st.is_dir, "{dir} is a dir");
        assert_eq!(st.name, dir.rsplit('/').next().unwrap(), "name of {dir}");
    }
    let root = ufs.stat("").await.unwrap().expect("root");
    assert!(root.is_dir, "root is a dir");
    let kids = list_all(ufs, &format!("{p}/d"), 10).await;
    assert_eq!(kids.len(), 1, "list {p}/d: {kids:?}");
    assert_eq!((kids[0].name.as_str(), kids[0].is_dir), ("implicit", true), "list shows implicit dirs");
    assert!(list_all(ufs, &format!("{p}/missing-dir"), 10).await.is_empty(), "list of a missing dir is empty");
}

async fn renames(ufs: &Ufs, p: &str) {
    let data = pattern(100_000, 7);
    put(ufs, &format!("{p}/mv/a"), &data).await;
    put(ufs, &format!("{p}/mv/over"), b"old").await;
    let e = ufs.rename(&format!("{p}/mv/a"), &format!("{p}/mv/over")).await.unwrap();
    assert_eq!(e.len, data.len() as u64, "renamed entry");
    assert!(ufs.stat(&format!("{p}/mv/a")).await.unwrap().is_none(), "source gone after rename");
    assert_eq!(get(ufs, &format!("{p}/mv/over"), 0, e.len, None).await.unwrap(), data, "renamed bytes");
    assert!(ufs.rename(&format!("{p}/mv/missing"), &format!("{p}/mv/x")).await.is_err(), "rename of a missing file");

    for (i, k) in ["t/1", "t/sub/2", "t/sub/deeper/3"].iter().enumerate() {
        put(ufs, &format!("{p}/mv/{k}"), &pattern(1000 + i, i as u64)).await;
    }
    let n = ufs.rename_all(&format!("{p}/mv/t"), &format!("{p}/mv/t2")).await.unwrap();
    assert_eq!(n, 3, "files moved by rename_all");
    assert!(ufs.stat(&format!("{p}/mv/t")).await.unwrap().is_none(), "source tree gone");
    for (i, k) in ["t2/1", "t2/sub/2", "t2/sub/deeper/3"].iter().enumerate() {
        let got = get(ufs, &format!("{p}/mv/{k}"), 0, 1000 + i as u64, None).await.unwrap();
        assert_eq!(got, pattern(1000 + i, i as u64), "{k} after rename_all");
    }
}

async fn list_pages(ufs: &Ufs, p: &str) {
    let dir = format!("{p}/many");
    let mut want = BTreeSet::new();
    for i in 0..25 {
        let name = format!("f{i:02}");
        put(ufs, &format!("{dir}/{name}"), &pattern(i, i as u64)).await;
        want.insert(name);
    }
    put(ufs, &format!("{dir}/sub/y"), b"y").await;
    want.insert("sub".to_string());
    let all = list_all(ufs, &dir, 4).await;
    let names: BTreeSet<String> = all.iter().map(|e| e.name.clone()).collect();
    assert_eq!(all.len(), names.len(), "no duplicates across pages");
    assert_eq!(names, want, "list over several store pages");
    for e in &all {
        if e.name == "sub" {
            assert!(e.is_dir, "sub is a dir");
            continue;
        }
        let i: usize = e.name[1..].parse().unwrap();
        assert!(!e.is_dir && e.len == i as u64, "{e:?}");
        let st = ufs.stat(&format!("{dir}/{}", e.name)).await.unwrap().unwrap();
        assert_eq!(st.etag, e.etag, "list and stat agree on the etag of {}", e.name);
        assert_eq!(st.len, e.len);
    }
}

async fn read_ranges(ufs: &Ufs, p: &str) {
    let rel = format!("{p}/ranges");
    let len = (3 << 20) + 17;
    let data = pattern(len, 7);
    put(ufs, &rel, &data).await;
    let n = len as u64;
    for (off, l) in [(0, n), (1, 99), (n - 10, 10), (n - 1, 1), (5, 0), (1 << 20, 1 << 20)] {
        let got = get(ufs, &rel, off, l, None).await.unwrap_or_else(|e| panic!("read {off}+{l}: {e}"));
        assert!(got == data[off as usize..(off + l) as usize], "bytes of {off}+{l}");
    }
    let e = get(ufs, &rel, n - 5, 10, None).await.expect_err("a range past the end fails");
    assert_ne!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = get(ufs, &format!("{p}/absent"), 0, 1, None).await.expect_err("missing");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().contains(&format!("{p}/absent")), "error names the path: {e}");
}

async fn etag_guards_reads(ufs: &Ufs, p: &str) {
    let rel = format!("{p}/versioned");
    let v1 = put(ufs, &rel, b"version one").await;
    assert_eq!(get(ufs, &rel, 0, 11, Some(&v1.etag)).await.unwrap(), b"version one");
    let v2 = put(ufs, &rel, b"version two!").await;
    assert_ne!(v1.etag, v2.etag, "an overwrite changes the etag");
    let e = get(ufs, &rel, 0, 5, Some(&v1.etag)).await.expect_err("stale etag must not read the new version");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.message().contains("changed in the UFS"), "{e}");
    assert_eq!(get(ufs, &rel, 0, 12, Some(&v2.etag)).await.unwrap(), b"version two!");
}

async fn multipart_write(ufs: &Ufs, p: &str) {
    let rel = format!("{p}/big");
    let data = pattern(20 << 20, 20);
    let e = put(ufs, &rel, &data).await;
    assert_eq!(e.len, 20 << 20, "multipart length");
    // Larger than read_chunk: concurrent ranged reads.
    let got = get(ufs, &rel, 0, e.len, Some(&e.etag)).await.unwrap();
    assert!(got == data, "20 MiB round trip");
    let got = get(ufs, &rel, (9 << 20) + 3, 10 << 20, None).await.unwrap();
    assert!(got[..] == data[(9 << 20) + 3..(19 << 20) + 3], "chunked mid-range");
}

async fn abort_and_drop(ufs: &Ufs, p: &str) {
    // Larger than a part (8 MiB by default): an S3 store has a multipart
    // upload in progress, which the abort must remove.
    let rel = format!("{p}/aborted");
    let mut w = ufs.writer(&rel).await.unwrap();
    w.write(Bytes::from(pattern(10 << 20, 1))).await.unwrap();
    w.abort().await.unwrap();
    assert_eq!(ufs.stat(&rel).await.unwrap(), None, "an aborted write leaves nothing");

    let rel = format!("{p}/dropped");
    let mut w = ufs.writer(&rel).await.unwrap();
    w.write(Bytes::from(pattern(10 << 20, 2))).await.unwrap();
    drop(w);
    wait_for_aborts(ufs).await;
    assert_eq!(ufs.stat(&rel).await.unwrap(), None, "a dropped writer leaves nothing");
}

/// Dropped writers abort in a spawned task: waits until none is running.
async fn wait_for_aborts(ufs: &Ufs) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ufs.aborts_in_flight() > 0 {
        assert!(Instant::now() < deadline, "aborts of dropped writers still running after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An overwrite that is aborted or dropped leaves the previous object as it
/// was: same entry, same bytes (not on stores that write in place). The new data is larger than a
/// write chunk, so the store has staged parts (multipart upload, temp file,
/// WebHDFS blocks) when it stops.
async fn failed_overwrite_keeps_previous(ufs: &Ufs, p: &str) {
    if ufs.writes_in_place() {
        return;
    }
    let rel = format!("{p}/kept");
    let old = put(ufs, &rel, b"the previous content").await;
    let intact = |how: &'static str| {
        let (rel, old) = (rel.clone(), old.clone());
        async move {
            let now = ufs.stat(&rel).await.unwrap().unwrap_or_else(|| panic!("{how}: the previous object is gone"));
            assert_eq!(now, old, "{how}: the previous object changed");
            let got = get(ufs, &rel, 0, old.len, Some(&old.etag)).await.unwrap_or_else(|e| panic!("{how}: {e}"));
            assert_eq!(got, b"the previous content", "{how}: previous bytes");
        }
    };

    let mut w = ufs.writer(&rel).await.unwrap();
    w.write(Bytes::from(pattern(10 << 20, 3))).await.unwrap();
    intact("during an overwrite").await;
    w.abort().await.unwrap();
    intact("after an aborted overwrite").await;

    let mut w = ufs.writer(&rel).await.unwrap();
    w.write(Bytes::from(pattern(10 << 20, 4))).await.unwrap();
    drop(w);
    wait_for_aborts(ufs).await;
    intact("after a dropped overwrite").await;

    // Aborting before anything reached the store.
    let w = ufs.writer(&rel).await.unwrap();
    w.abort().await.unwrap();
    intact("after an overwrite aborted before its first byte").await;
}

/// The staging directory (where a store has one inside the root) is never
/// listed, not even while a write is staged in it, and is refused as a path.
async fn staging_dir_is_hidden(ufs: &Ufs, p: &str) {
    let names = |all: Vec<UfsEntry>| all.into_iter().map(|e| e.name).collect::<BTreeSet<_>>();
    let top = p.split('/').next().unwrap_or(p).to_string();
    let before = (names(list_all(ufs, "", 100).await), names(list_all(ufs, p, 100).await));
    let mut w = ufs.writer(&format!("{p}/staged")).await.unwrap();
    w.write(Bytes::from(pattern(10 << 20, 5))).await.unwrap();
    let during = (names(list_all(ufs, "", 100).await), names(list_all(ufs, p, 100).await));
    assert_eq!(during, before, "a write in progress is not listed");
    assert!(during.0.contains(&top), "root listing has {top}: {:?}", during.0);
    if let Some(t) = ufs.staging_dir() {
        let first = t.split('/').next().unwrap_or(t);
        assert!(!during.0.contains(first), "the staging dir {t} is listed: {:?}", during.0);
        for rel in [t.to_string(), format!("{t}/x"), format!("/{t}/")] {
            let e = ufs.stat(&rel).await.expect_err("stat of the staging dir");
            assert_eq!(e.kind(), ErrorKind::InvalidPath, "stat {rel}: {e}");
            let e = ufs.list(&rel).await.err().expect("list of the staging dir");
            assert_eq!(e.kind(), ErrorKind::InvalidPath, "list {rel}: {e}");
        }
        let e = ufs.writer(&format!("{t}/x")).await.err().expect("writer in the staging dir");
        assert_eq!(e.kind(), ErrorKind::InvalidPath, "{e}");
        let e = ufs.delete(&format!("{t}/x")).await.expect_err("delete in the staging dir");
        assert_eq!(e.kind(), ErrorKind::InvalidPath, "{e}");
        // Only the directory itself is reserved, not names that start alike.
        assert_eq!(ufs.stat(&format!("{t}-not")).await.unwrap(), None);
    }
    w.abort().await.unwrap();
    assert_eq!(ufs.stat(&format!("{p}/staged")).await.unwrap(), None, "an aborted write leaves nothing");
}

async fn bad_paths(ufs: &Ufs) {
    for rel in ["a/../b", "a//b", "./a"] {
        let e = ufs.stat(rel).await.expect_err(rel);
        assert_eq!(e.kind(), ErrorKind::InvalidPath, "{rel}: {e}");
    }
    assert_eq!(ufs.read("", 0, 1, None).await.err().map(|e| e.kind()), Some(ErrorKind::IsADirectory));
}

async fn cleanup(ufs: &Ufs, p: &str) {
    let mut dirs = vec![p.to_string()];
    while let Some(d) = dirs.pop() {
        for e in list_all(ufs, &d, 100).await {
            let rel = format!("{d}/{}", e.name);
            if e.is_dir {
                dirs.push(rel);
            } else {
                ufs.delete(&rel).await.unwrap_or_else(|e| panic!("cleanup {rel}: {e}"));
            }
        }
    }
}
