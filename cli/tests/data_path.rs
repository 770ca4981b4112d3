//! Bytes in, bytes out: large files across separate client processes,
//! concurrent writers, restarts, full workers.

mod common;

use common::*;
use curvine_client::{CreateOptions, ErrorKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_1gib_is_byte_identical_across_processes() {
    let n = node().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    // Several pieces with different seeds: a block mix-up cannot go unseen.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&src).unwrap();
        for i in 0..16u64 {
            f.write_all(&random_bytes(64 << 20, i + 1)).unwrap();
        }
    }
    ok(&cv(&n, &["fs", "put", src.to_str().unwrap(), "/big.bin"]));
    let back = dir.path().join("back.bin");
    let out = cv(&n, &["fs", "get", "/big.bin", back.to_str().unwrap()]);
    ok(&out);
    // Piped output: no progress bar noise.
    assert!(out.stderr.is_empty(), "stderr not empty when piped: {}", String::from_utf8_lossy(&out.stderr));
    assert!(same_file(&src, &back), "1 GiB round trip differs");
    let stat = ok(&cv(&n, &["fs", "stat", "/big.bin", "--json"]));
    assert!(stat.contains("\"len\":1073741824"), "{stat}");
    assert!(stat.contains("\"complete\":true"), "{stat}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_reads_ranges_and_small_files_exactly() {
    let n = node_with(UpOptions { block_size: Some("1MiB".into()), mem: Some("256MiB".into()), ..Default::default() }).await;
    let fs = n.fs().unwrap();
    for (i, len) in [0usize, 1, 65535, 65536, 65537, (1 << 20) - 1, 1 << 20, (3 << 20) + 12345].into_iter().enumerate() {
        let data = random_bytes(len, i as u64);
        let path = format!("/sizes/f{len}");
        let mut w = fs.create(&path, CreateOptions { parents: true, ..Default::default() }).await.unwrap();
        // Odd-sized writes exercise the staging path.
        for piece in data.chunks(100_003) {
            w.write(piece).await.unwrap();
        }
        let st = w.close().await.unwrap();
        assert_eq!(st.len, len as u64);
        assert_eq!(fs.read_all(&path).await.unwrap(), data, "len {len}");
        let r = fs.open(&path).await.unwrap();
        if len > 10 {
            // A range spanning a block boundary, read into the caller's buffer.
            let lo = len / 3;
            let mut buf = vec![0u8; len - lo];
            assert_eq!(r.read_at(lo as u64, &mut buf).await.unwrap(), len - lo);
            assert_eq!(buf, data[lo..]);
        }
        let mut past = [0u8; 10];
        assert_eq!(r.read_at(len as u64, &mut past).await.unwrap(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_to_different_files() {
    let n = node_with(UpOptions { block_size: Some("4MiB".into()), ..Default::default() }).await;
    let fs = n.fs().unwrap();
    fs.mkdir("/conc", false).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let fs = fs.clone();
        tasks.push(tokio::spawn(async move {
            let data = random_bytes((9 << 20) + i as usize * 4099, 100 + i);
            let mut w = fs.create(&format!("/conc/f{i}"), CreateOptions::default()).await.unwrap();
            for piece in data.chunks(1 << 20) {
                w.write(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            w.close().await.unwrap();
            data
        }));
    }
    let mut expected = Vec::new();
    for t in tasks {
        expected.push(t.await.unwrap());
    }
    assert_eq!(fs.list("/conc").await.unwrap().len(), 8);
    for (i, data) in expected.iter().enumerate() {
        assert_eq!(&fs.read_all(&format!("/conc/f{i}")).await.unwrap(), data, "file {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_then_restart_keeps_namespace_and_disk_data() {
    let mut n = node_with(UpOptions { no_mem: true, disk: Some("1GiB".into()), block_size: Some("1MiB".into()), ..Default::default() }).await;
    let fs = n.fs().unwrap();
    fs.mkdir("/keep/a/b", true).await.unwrap();
    let data = random_bytes((5 << 20) + 7, 9);
    fs.write_all("/keep/a/b/data", &data, false).await.unwrap();
    fs.write_all("/keep/small", b"hello", false).await.unwrap();
    fs.rename("/keep/small", "/keep/a/small").await.unwrap();
    fs.set_attr("/keep/a/small", Some(0o600), Some(1_000_000)).await.unwrap();

    n.kill9_and_restart().await.unwrap();
    let fs = n.fs().unwrap();
    assert_eq!(fs.read_all("/keep/a/b/data").await.unwrap(), data);
    let st = fs.stat("/keep/a/small").await.unwrap();
    assert_eq!((st.mode & 0o777, st.mtime_ms, st.len), (0o600, 1_000_000, 5));
    assert_eq!(fs.read_all("/keep/a/small").await.unwrap(), b"hello");
    assert!(!fs.exists("/keep/small").await.unwrap());

    // And a clean stop/start too.
    n.stop_and_restart().await.unwrap();
    assert_eq!(n.fs().unwrap().read_all("/keep/a/b/data").await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_worker_says_no_space_and_loses_nothing() {
    let n = node_with(UpOptions {
        mem: Some("2MiB".into()),
        disk: Some("3MiB".into()),
        block_size: Some("1MiB".into()),
        ..Default::default()
    })
    .await;
    let fs = n.fs().unwrap();
    fs.mkdir("/full", false).await.unwrap();
    let mut kept = Vec::new();
    let mut err = None;
    for i in 0..10u64 {
        let data = random_bytes(1 << 20, i);
        match fs.write_all(&format!("/full/f{i}"), &data, false).await {
            Ok(_) => kept.push((i, data)),
            Err(e) => {
                err = Some((i, e));
                break;
            }
        }
    }
    let (failed, e) = err.expect("5 MiB of tiers must fill up");
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    assert!(e.to_string().contains("no space"), "{e}");
    assert!(kept.len() >= 4, "only {} files fit in 5 MiB", kept.len());
    // The failed file is not left behind as complete.
    match fs.stat(&format!("/full/f{failed}")).await {
        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound),
        Ok(s) => assert!(!s.complete, "a partial file is reported complete"),
    }
    for (i, data) in &kept {
        assert_eq!(&fs.read_all(&format!("/full/f{i}")).await.unwrap(), data, "file {i} damaged by the full disk");
    }
    // The CLI says so on one line.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, random_bytes(1 << 20, 77)).unwrap();
    fails_with(&cv(&n, &["fs", "put", p.to_str().unwrap(), "/full/cli"]), "no space");
    // Freeing space makes writes work again.
    fs.delete("/full/f0", false).await.unwrap();
    fs.delete("/full/f1", false).await.unwrap();
    testbed::wait_for("space to be freed", std::time::Duration::from_secs(30), || async {
        fs.write_all("/full/again", &random_bytes(1 << 20, 5), true).await.is_ok()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_block_is_detected_not_served() {
    let n = node_with(UpOptions { block_size: Some("1MiB".into()), mem: Some("64MiB".into()), ..Default::default() }).await;
    let fs = n.fs().unwrap();
    let data = random_bytes(1 << 20, 11);
    fs.write_all("/c", &data, false).await.unwrap();
    let blocks = n.mem_dir().join("blocks");
    let file = std::fs::read_dir(&blocks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_none())
        .expect("a block file in the memory tier");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[300_000] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let e = fs.read_all("/c").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    // A range that avoids the damaged chunk still reads.
    let r = fs.open("/c").await.unwrap();
    let mut head = vec![0u8; 65536];
    r.read_at(0, &mut head).await.unwrap();
    assert_eq!(head, data[..65536]);
    let out = tempfile::tempdir().unwrap();
    fails_with(&cv(&n, &["fs", "get", "/c", out.path().join("c").to_str().unwrap()]), "checksum mismatch");
}

/// On a terminal `put`/`get` draw a progress bar (run under `script`, which
/// gives the command a pseudo-terminal); piped, they print nothing (checked
/// in the 1 GiB test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bar_on_a_terminal() {
    if std::process::Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED progress_bar_on_a_terminal: util-linux `script` is not installed, no way to get a pty");
        return;
    }
    let n = node().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("p.bin");
    std::fs::write(&src, random_bytes(64 << 20, 21)).unwrap();
    let cmd = format!("{} fs put {} /p.bin", bin().display(), src.display());
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("CURVINE_META", n.meta_addr())
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(tty.contains("put") && tty.contains("MiB"), "no progress bar on the terminal: {tty:?}");
    assert_eq!(n.fs().unwrap().read_all("/p.bin").await.unwrap().len(), 64 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_writer_leaves_no_file_and_no_reservation() {
    let n = node_with(UpOptions { block_size: Some("8MiB".into()), mem: Some("64MiB".into()), ..Default::default() }).await;
    let fs = n.fs().unwrap();
    let mut w = fs.create("/dropped", CreateOptions::default()).await.unwrap();
    w.write(&random_bytes(3 << 20, 1)).await.unwrap();
    // The open block holds a reservation, and the report shows it.
    testbed::wait_for("the reservation to show in the report", std::time::Duration::from_secs(30), || async {
        fs.report().await.map(|r| r.workers.iter().flat_map(|w| &w.tiers).any(|t| t.reserved > 0)).unwrap_or(false)
    })
    .await
    .unwrap();
    drop(w);
    testbed::wait_for("the dropped file to be aborted", std::time::Duration::from_secs(30), || async {
        !fs.exists("/dropped").await.unwrap_or(true)
    })
    .await
    .unwrap();
    testbed::wait_for("the worker to release the reservation", std::time::Duration::from_secs(30), || async {
        fs.report().await.map(|r| r.workers.iter().flat_map(|w| &w.tiers).all(|t| t.reserved == 0)).unwrap_or(false)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_small_reads_over_tcp_are_served_from_read_ahead() {
    use curvine_client::FileSystem;
    use curvine_common::config::ClientConf;
    let n = node_with(UpOptions { block_size: Some("1MiB".into()), ..Default::default() }).await;
    // 5 blocks and a bit: windows cross block boundaries and the file's end.
    let data = random_bytes((5 << 20) + 12_345, 21);
    let tcp = |read_ahead: u64| {
        let conf = ClientConf {
            meta: vec![n.meta_addr()],
            short_circuit: false,
            read_ahead: curvine_common::size::ByteSize(read_ahead),
            ..Default::default()
        };
        FileSystem::new(conf).unwrap()
    };
    let fs = tcp(1 << 20);
    fs.write_all("/seq", &data, false).await.unwrap();

    // A reader taking 8 KiB at a time, as Python's buffered files do.
    let mut r = fs.open("/seq").await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            break;
        }
        got.extend_from_slice(&buf[..k]);
    }
    assert!(got == data, "sequential read through read-ahead differs");
    let served = fs.read_ahead_bytes();
    // Everything after the first piece can come from windows fetched ahead.
    assert!(served >= data.len() as u64 / 2, "only {served} of {} bytes came from read-ahead", data.len());

    // A seek backwards and forwards again: still exact.
    r.seek(100_000);
    let mut b = vec![0u8; 4096];
    assert_eq!(r.read(&mut b).await.unwrap(), 4096);
    assert!(b == data[100_000..104_096]);
    assert_eq!(r.read(&mut b).await.unwrap(), 4096);
    assert!(b == data[104_096..108_192]);

    // Random reads and a client with read-ahead off never use it.
    let off = tcp(0);
    let r = off.open("/seq").await.unwrap();
    let mut got = vec![0u8; data.len()];
    for (i, piece) in got.chunks_mut(8192).enumerate() {
        assert_eq!(r.read_at(i as u64 * 8192, piece).await.unwrap(), piece.len());
    }
    assert!(got == data);
    assert_eq!(off.read_ahead_bytes(), 0);
    let rand = tcp(1 << 20);
    let r = rand.open("/seq").await.unwrap();
    for off in [3 << 20, 7, 1 << 20, 4 << 20] {
        let mut b = vec![0u8; 1000];
        r.read_at(off, &mut b).await.unwrap();
        assert!(b == data[off as usize..off as usize + 1000]);
    }
    assert_eq!(rand.read_ahead_bytes(), 0, "random reads must not read ahead");
}

/// Hidden temporary copies `cv fs get` left in `dir` (there must be none).
fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.contains(".cv-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_get_keeps_the_old_local_file_and_a_good_one_replaces_it() {
    // Disk tier only: one block file per block, named by its id.
    let n = node_with(UpOptions { no_mem: true, disk: Some("512MiB".into()), block_size: Some("8MiB".into()), ..Default::default() }).await;
    let fs = n.fs().unwrap();
    let data = random_bytes(40 << 20, 31);
    fs.write_all("/m", &data, false).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("m");
    let old = b"the old copy, still wanted".to_vec();
    std::fs::write(&local, &old).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o640)).unwrap();

    // A remote file that does not exist: nothing local changes.
    fails_with(&cv(&n, &["fs", "get", "/nope", local.to_str().unwrap()]), "/nope: no such file or directory");
    assert_eq!(std::fs::read(&local).unwrap(), old);

    // Damage the last block: the get fails after writing the first pieces.
    let last = fs.open("/m").await.unwrap().blocks().last().unwrap().id;
    let block = n.home().join("data/ssd/blocks").join(last.to_string());
    let mut bytes = std::fs::read(&block).unwrap_or_else(|e| panic!("{}: {e}", block.display()));
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    std::fs::write(&block, &bytes).unwrap();
    fails_with(&cv(&n, &["fs", "get", "/m", local.to_str().unwrap()]), "checksum mismatch");
    let kept = std::fs::read(&local).unwrap_or_else(|e| panic!("a failed get removed the old local file: {e}"));
    assert_eq!(kept, old, "a failed get changed the old local file");
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    // Also into a new name: nothing is left behind.
    fails_with(&cv(&n, &["fs", "get", "/m", dir.path().join("new").to_str().unwrap()]), "checksum mismatch");
    assert!(!dir.path().join("new").exists());

    // Repaired, the get replaces the old file whole and keeps its mode.
    bytes[at] ^= 0x40;
    std::fs::write(&block, &bytes).unwrap();
    ok(&cv(&n, &["fs", "get", "/m", local.to_str().unwrap()]));
    assert_eq!(std::fs::read(&local).unwrap(), data);
    assert_eq!(std::fs::metadata(&local).unwrap().permissions().mode() & 0o777, 0o640);
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    // Through a symlink the file it names is replaced; the link stays.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&local, &link).unwrap();
    fs.write_all("/small", b"small", false).await.unwrap();
    ok(&cv(&n, &["fs", "get", "/small", link.to_str().unwrap()]));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&local).unwrap(), b"small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_writes_devices_and_fifos_in_place_and_reports_output_errors() {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let n = node().await;
    let fs = n.fs().unwrap();
    let data = random_bytes(20 << 20, 32);
    fs.write_all("/d", &data, false).await.unwrap();
    // No newline: stdout holds it until the final flush.
    fs.write_all("/short", b"no newline", false).await.unwrap();

    // A character device is written, never replaced or removed.
    ok(&cv(&n, &["fs", "get", "/d", "/dev/null"]));
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());

    // A FIFO: the reader gets every byte, and the FIFO stays a FIFO.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: c is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            std::fs::File::open(&fifo).unwrap().read_to_end(&mut got).unwrap();
            got
        })
    };
    ok(&cv(&n, &["fs", "get", "/d", fifo.to_str().unwrap()]));
    assert!(reader.join().unwrap() == data, "bytes through the FIFO differ");
    // A reader that stops early: the error is reported, the FIFO is kept.
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::open(&fifo).unwrap();
            let mut b = [0u8; 10];
            f.read_exact(&mut b).unwrap();
        })
    };
    fails_with(&cv(&n, &["fs", "get", "/d", fifo.to_str().unwrap()]), "Broken pipe");
    reader.join().unwrap();
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());

    // stdout: a failing final flush is an error, not exit 0.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let o = tokio::task::block_in_place(|| n.cv(&["fs", "cat", "/short"]).stdout(full).output()).unwrap();
    fails_with(&o, "No space left on device");
    // A reader of stdout that goes away (`| head`) ends the command quietly.
    let o = tokio::task::block_in_place(|| {
        let mut child = n.cv(&["fs", "cat", "/d"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut head = [0u8; 10];
        child.stdout.take().unwrap().read_exact(&mut head).unwrap();
        child.wait_with_output().unwrap()
    });
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_force_replaces_only_with_a_complete_copy() {
    let n = node().await;
    let fs = n.fs().unwrap();
    fs.mkdir("/p", false).await.unwrap();
    fs.write_all("/p/f", b"keep me", false).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // A directory opens, then fails to read: the remote file is untouched.
    fails_with(&cv(&n, &["fs", "put", "-f", dir.path().to_str().unwrap(), "/p/f"]), "is a directory");
    assert_eq!(fs.read_all("/p/f").await.unwrap(), b"keep me");
    fails_with(&cv(&n, &["fs", "put", "-f", dir.path().join("missing").to_str().unwrap(), "/p/f"]), "No such file");
    assert_eq!(fs.read_all("/p/f").await.unwrap(), b"keep me");
    // Without -f an existing file is refused.
    let local = dir.path().join("f");
    let data = random_bytes(3 << 20, 33);
    std::fs::write(&local, &data).unwrap();
    fails_with(&cv(&n, &["fs", "put", local.to_str().unwrap(), "/p/f"]), "/p/f: file exists");
    assert_eq!(fs.read_all("/p/f").await.unwrap(), b"keep me");
    // With -f the new copy replaces it, and no temporary name is left.
    ok(&cv(&n, &["fs", "put", "-f", local.to_str().unwrap(), "/p/f"]));
    assert_eq!(fs.read_all("/p/f").await.unwrap(), data);
    let names: Vec<String> = fs.list("/p").await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["f"]);
    // -f into a directory, and into a missing one (the error names the destination).
    ok(&cv(&n, &["fs", "put", "-f", local.to_str().unwrap(), "/p"]));
    assert_eq!(fs.read_all("/p/f").await.unwrap(), data);
    let o = cv(&n, &["fs", "put", "-f", local.to_str().unwrap(), "/nodir/f"]);
    fails_with(&o, "no such file or directory");
    assert!(!String::from_utf8_lossy(&o.stderr).contains(".cv-put"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_reads_standard_input_for_dash() {
    use std::io::Write;
    let n = node().await;
    let fs = n.fs().unwrap();
    let data = random_bytes(20 << 20, 34);
    let put = |args: &[&str], input: &[u8]| {
        tokio::task::block_in_place(|| {
            let mut child = n
                .cv(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let input = input.to_vec();
            let feeder = std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
            let o = child.wait_with_output().unwrap();
            feeder.join().unwrap();
            o
        })
    };
    ok(&put(&["fs", "put", "-", "/in"], &data));
    assert!(fs.read_all("/in").await.unwrap() == data, "bytes from stdin differ");
    ok(&put(&["fs", "put", "-f", "-", "/in"], b"second"));
    assert_eq!(fs.read_all("/in").await.unwrap(), b"second");
    ok(&put(&["fs", "put", "-", "/empty"], b""));
    assert_eq!(fs.read_all("/empty").await.unwrap(), b"");
    fails_with(&put(&["fs", "put", "-", "/"], b"x"), "give the file name");
}
