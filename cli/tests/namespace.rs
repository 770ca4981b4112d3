//! Namespace semantics and every error kind, through the SDK and the CLI.

mod common;

use common::*;
use curvine_client::{CreateOptions, ErrorKind, FileKind};

#[track_caller]
fn kind<T>(r: Result<T, curvine_client::Error>) -> ErrorKind {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.kind(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_kind_reaches_the_caller() {
    let n = node().await;
    let fs = n.fs().unwrap();
    fs.mkdir("/d", false).await.unwrap();
    fs.write_all("/d/f", b"x", false).await.unwrap();

    assert_eq!(kind(fs.stat("/missing").await), ErrorKind::NotFound);
    assert_eq!(kind(fs.mkdir("/d", false).await), ErrorKind::AlreadyExists);
    assert_eq!(kind(fs.create("/d/f", CreateOptions::default()).await), ErrorKind::AlreadyExists);
    assert_eq!(kind(fs.mkdir("/d/f/sub", false).await), ErrorKind::NotADirectory);
    assert_eq!(kind(fs.create("/d/f/sub", CreateOptions::default()).await), ErrorKind::NotADirectory);
    assert_eq!(kind(fs.open("/d").await), ErrorKind::IsADirectory);
    assert_eq!(kind(fs.create("/d", CreateOptions { overwrite: true, ..Default::default() }).await), ErrorKind::IsADirectory);
    assert_eq!(kind(fs.delete("/d", false).await), ErrorKind::NotEmpty);
    assert_eq!(kind(fs.stat("relative/path").await), ErrorKind::InvalidPath);
    assert_eq!(kind(fs.stat("/a/../b").await), ErrorKind::InvalidPath);
    assert_eq!(kind(fs.mkdir("/x/y/z", false).await), ErrorKind::NotFound);
    assert_eq!(kind(fs.rename("/missing", "/m2").await), ErrorKind::NotFound);
    assert_eq!(kind(fs.rename("/d", "/d/inside").await), ErrorKind::InvalidArgument);
    assert_eq!(kind(fs.list("/d/f").await), ErrorKind::NotADirectory);
    let odd = CreateOptions { block_size: 100_000, ..Default::default() };
    assert_eq!(kind(fs.create("/d/odd", odd).await), ErrorKind::InvalidArgument);

    // The CLI turns them into one line each and a non-zero exit.
    fails_with(&cv(&n, &["fs", "stat", "/a/b"]), "/a/b: no such file or directory");
    fails_with(&cv(&n, &["fs", "mkdir", "/d"]), "/d: file exists");
    fails_with(&cv(&n, &["fs", "rm", "/d"]), "/d: directory not empty");
    fails_with(&cv(&n, &["fs", "cat", "/d"]), "/d: is a directory");
    fails_with(&cv(&n, &["fs", "ls", "relative"]), "invalid path");
    fails_with(&cv(&n, &["fs", "mkdir", "/d/f/x"]), "not a directory");
    // No service at all: a clear message, not a hang.
    let o = std::process::Command::new(bin()).args(["fs", "ls", "/", "--meta", "127.0.0.1:1"]).output().unwrap();
    fails_with(&o, "cannot reach the meta service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_operations_behave_like_posix() {
    let n = node().await;
    let fs = n.fs().unwrap();
    fs.mkdir("/a/b/c", true).await.unwrap();
    // mkdir -p of an existing tree is fine.
    fs.mkdir("/a/b/c", true).await.unwrap();
    fs.write_all("/a/b/c/f1", b"one", false).await.unwrap();
    fs.write_all("/a/b/f2", b"two", false).await.unwrap();
    let names: Vec<String> = {
        let mut v: Vec<_> = fs.list("/a/b").await.unwrap().into_iter().map(|e| e.name).collect();
        v.sort();
        v
    };
    assert_eq!(names, ["c", "f2"]);
    let st = fs.stat("/a/b").await.unwrap();
    assert_eq!(st.kind, FileKind::Dir as i32);
    assert_eq!(st.children, 2);

    // Overwrite replaces content.
    fs.write_all("/a/b/f2", b"second", true).await.unwrap();
    assert_eq!(fs.read_all("/a/b/f2").await.unwrap(), b"second");

    // Rename a file over an existing file replaces it (POSIX rename).
    fs.write_all("/a/tmp", b"new", false).await.unwrap();
    fs.rename("/a/tmp", "/a/b/f2").await.unwrap();
    assert_eq!(fs.read_all("/a/b/f2").await.unwrap(), b"new");
    assert!(!fs.exists("/a/tmp").await.unwrap());

    // Set attributes.
    let st = fs.set_attr("/a/b/f2", Some(0o640), Some(1234)).await.unwrap();
    assert_eq!((st.mode & 0o777, st.mtime_ms), (0o640, 1234));

    // Recursive delete takes the whole tree.
    fs.delete("/a", true).await.unwrap();
    assert!(!fs.exists("/a/b/c/f1").await.unwrap());
    assert!(!fs.exists("/a").await.unwrap());
    assert_eq!(fs.delete("/", true).await.unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_of_a_non_empty_directory_moves_the_tree() {
    let n = node().await;
    let fs = n.fs().unwrap();
    fs.mkdir("/src/deep/er", true).await.unwrap();
    let data = random_bytes(300_000, 3);
    fs.write_all("/src/deep/er/file", &data, false).await.unwrap();
    fs.write_all("/src/top", b"top", false).await.unwrap();
    fs.mkdir("/dst", false).await.unwrap();
    fs.rename("/src", "/dst/moved").await.unwrap();
    assert!(!fs.exists("/src").await.unwrap());
    assert_eq!(fs.read_all("/dst/moved/deep/er/file").await.unwrap(), data);
    assert_eq!(fs.read_all("/dst/moved/top").await.unwrap(), b"top");
    assert_eq!(fs.stat("/dst/moved/deep/er/file").await.unwrap().path, "/dst/moved/deep/er/file");
    // Renaming onto a non-empty directory is refused.
    fs.mkdir("/other/x", true).await.unwrap();
    assert_eq!(fs.rename("/dst/moved", "/other").await.unwrap_err().kind(), ErrorKind::NotEmpty);
    // Through the CLI, `mv` into a directory.
    ok(&cv(&n, &["fs", "mv", "/dst/moved", "/other/x"]));
    assert_eq!(fs.read_all("/other/x/moved/top").await.unwrap(), b"top");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_file_commands_work_end_to_end() {
    let n = node().await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("hello.txt");
    std::fs::write(&local, b"hello curvine\n").unwrap();
    ok(&cv(&n, &["fs", "mkdir", "-p", "/t/u"]));
    ok(&cv(&n, &["fs", "put", local.to_str().unwrap(), "/t/u"]));
    assert_eq!(ok(&cv(&n, &["fs", "cat", "/t/u/hello.txt"])), "hello curvine\n");
    let ls = ok(&cv(&n, &["fs", "ls", "/t/u"]));
    assert!(ls.contains("/t/u/hello.txt") && ls.contains(" 14 "), "{ls}");
    let du = ok(&cv(&n, &["fs", "du", "/t"]));
    assert!(du.starts_with("14\t"), "{du}");
    ok(&cv(&n, &["fs", "mv", "/t/u/hello.txt", "/t/h.txt"]));
    // A hard link: one file, two names; removing one keeps the other.
    ok(&cv(&n, &["fs", "ln", "/t/h.txt", "/t/u/again.txt"]));
    assert_eq!(ok(&cv(&n, &["fs", "cat", "/t/u/again.txt"])), "hello curvine\n");
    fails_with(&cv(&n, &["fs", "ln", "/t/u", "/t/v"]), "cannot hard-link a directory");
    fails_with(&cv(&n, &["fs", "ln", "/t/h.txt", "/t/u/again.txt"]), "exists");
    ok(&cv(&n, &["fs", "rm", "/t/u/again.txt"]));
    let out = dir.path().join("out.txt");
    ok(&cv(&n, &["fs", "get", "/t/h.txt", out.to_str().unwrap()]));
    assert_eq!(std::fs::read(&out).unwrap(), b"hello curvine\n");
    let df = ok(&cv(&n, &["fs", "df"]));
    assert!(df.contains("capacity"), "{df}");
    let report = ok(&cv(&n, &["report"]));
    assert!(report.contains("1 alive") && report.contains("MEM") && report.contains("SSD"), "{report}");
    let json = ok(&cv(&n, &["report", "--json"]));
    assert!(json.contains("\"alive\":true"), "{json}");
    ok(&cv(&n, &["fs", "rm", "-r", "/t"]));
    fails_with(&cv(&n, &["fs", "stat", "/t"]), "no such file");
    assert!(ok(&cv(&n, &["version"])).starts_with("cv 0."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_locks_through_the_sdk() {
    use curvine_client::locks::{LockKind, LockWho};
    let n = node().await;
    let fs = n.fs().unwrap();
    fs.write_all("/f", b"bytes", false).await.unwrap();
    let a = LockWho { session: 7, owner: 1, pid: 100 };
    let b = LockWho { session: 8, owner: 1, pid: 200 };
    assert_eq!(fs.lock_keep(7).await.unwrap(), std::time::Duration::from_secs(30), "the default lease");

    fs.lock_set("/f", a, Some(LockKind::Write), 0, 99).await.unwrap();
    assert_eq!(kind(fs.lock_set("/f", b, Some(LockKind::Read), 50, 50).await), ErrorKind::WouldBlock);
    let held = fs.lock_test("/f", b, LockKind::Read, 0, u64::MAX).await.unwrap().expect("a's lock");
    assert_eq!((held.kind, held.start, held.end, held.pid), (LockKind::Write, 0, 99, 100));
    assert_eq!(fs.lock_test("/f", a, LockKind::Write, 0, 10).await.unwrap(), None, "own locks do not conflict");
    fs.lock_set("/f", b, Some(LockKind::Read), 100, u64::MAX).await.unwrap();
    // The same session, another owner: still another owner.
    let a2 = LockWho { owner: 2, ..a };
    assert_eq!(kind(fs.lock_set("/f", a2, Some(LockKind::Write), 0, 0).await), ErrorKind::WouldBlock);
    // Releasing a's locks on the file (a close) frees the range.
    fs.lock_release(7, Some("/f"), Some(1)).await.unwrap();
    fs.lock_set("/f", a2, Some(LockKind::Write), 0, 99).await.unwrap();
    // The whole session (an unmount).
    fs.lock_release(7, None, None).await.unwrap();
    fs.lock_set("/f", b, Some(LockKind::Write), 0, 99).await.unwrap();

    // Bad requests are clear errors that change nothing.
    assert_eq!(kind(fs.lock_set("/missing", a, Some(LockKind::Read), 0, 1).await), ErrorKind::NotFound);
    assert_eq!(kind(fs.lock_set("/f", a, Some(LockKind::Read), 9, 1).await), ErrorKind::InvalidArgument);
    assert_eq!(kind(fs.lock_set("/f", LockWho { session: 0, ..a }, Some(LockKind::Read), 0, 1).await), ErrorKind::InvalidArgument);
    assert_eq!(kind(fs.lock_set("relative", a, Some(LockKind::Read), 0, 1).await), ErrorKind::InvalidPath);
    assert!(fs.lock_test("/f", a, LockKind::Read, 0, 99).await.unwrap().is_some(), "b's lock is still there");
}
