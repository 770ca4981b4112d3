//! `cv fuse`: a real kernel mount served by a real `cv fuse` process,
//! exercised with real programs (cp, tar, git, sqlite3, Python) and
//! compared against a local directory. Skips, saying why, where there is no
//! /dev/fuse or the test is not root.

mod common;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use testbed::Proc;

fn fuse_missing() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse on this machine".into());
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("mounting needs root here (no fusermount setup for other users)".into());
    }
    None
}

macro_rules! need_fuse {
    ($name:expr) => {
        if let Some(why) = fuse_missing() {
            eprintln!("SKIPPED {}: {why}", $name);
            return;
        }
    };
}

/// A `cv fuse` process and its mount point; unmounted on drop.
struct Mount {
    proc: Option<Proc>,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Mount {
    fn start(n: &Node, extra: &[&str]) -> Mount {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let mut m = Mount { proc: None, dir, _tmp: tmp };
        m.proc = Some(m.spawn(n, extra));
        m
    }

    fn spawn(&self, n: &Node, extra: &[&str]) -> Proc {
        let mut args = vec!["fuse".to_string(), self.dir.to_string_lossy().into_owned(), "--meta".into(), n.meta_addr()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::spawn(bin(), &args, &self._tmp.path().join("fuse.log")).expect("cv fuse")
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel.trim_start_matches('/'))
    }

    fn mounted(&self) -> bool {
        curvine_fuse::is_mounted(&self.dir)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.terminate();
        }
        if self.mounted() {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A local tree with nested directories and files of awkward sizes.
fn make_tree(root: &Path) {
    let sizes = [0usize, 1, 4095, 65_536, 1 << 20, (3 << 20) + 17];
    for (d, dir) in ["", "a", "a/b", "c"].iter().enumerate() {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        for (i, n) in sizes.iter().enumerate() {
            std::fs::write(root.join(dir).join(format!("f{i}.bin")), random_bytes(*n, (d * 10 + i) as u64 + 1)).unwrap();
        }
    }
}

fn assert_same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff").arg("-r").arg(a).arg(b).output().unwrap();
    assert!(out.status.success(), "trees differ:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_programs_and_the_sdk_see_the_same_bytes() {
    need_fuse!("trees_programs_and_the_sdk_see_the_same_bytes");
    let n = node_with(UpOptions { block_size: Some("1MiB".into()), ..Default::default() }).await;
    let m = Mount::start(&n, &[]);
    assert!(m.mounted());
    let fs = n.fs().unwrap();
    let work = tempfile::tempdir().unwrap();

    // cp -r in and out; tar out and back in elsewhere.
    let src = work.path().join("src");
    make_tree(&src);
    sh(work.path(), &format!("cp -r {} {}", src.display(), m.p("tree").display()));
    assert_same_tree(&src, &m.p("tree"));
    sh(work.path(), &format!("cp -r {} {}", m.p("tree").display(), work.path().join("back").display()));
    assert_same_tree(&src, &work.path().join("back"));
    sh(&m.dir, &format!("tar -cf {} tree", work.path().join("t.tar").display()));
    std::fs::create_dir(m.p("untar")).unwrap();
    sh(&m.p("untar"), &format!("tar -xf {}", work.path().join("t.tar").display()));
    assert_same_tree(&src, &m.p("untar/tree"));

    // Written through FUSE → read by the SDK; written by the SDK → read here.
    let f = random_bytes((2 << 20) + 5, 99);
    std::fs::write(m.p("via-fuse.bin"), &f).unwrap();
    assert!(fs.read_all("/via-fuse.bin").await.unwrap() == f);
    fs.write_all("/via-sdk.bin", &f, false).await.unwrap();
    assert!(std::fs::read(m.p("via-sdk.bin")).unwrap() == f);

    // Python: open/seek/read/write/truncate/append, then mmap.
    let py = r#"
import mmap, os, sys
p = sys.argv[1]
with open(p, "wb") as f:
    f.write(b"0123456789" * 1000)
with open(p, "r+b") as f:
    f.seek(5); f.write(b"XYZ")
    f.seek(9990); assert f.read(10) == b"0123456789"
    f.truncate(20)
with open(p, "ab") as f:
    f.write(b"tail")
data = open(p, "rb").read()
assert data == b"01234XYZ890123456789tail", data
with open(p, "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    assert m[5:8] == b"XYZ" and m[-4:] == b"tail"
    m.close()
os.truncate(p, 3)
assert open(p, "rb").read() == b"012"
print("python ok")
"#;
    let out = Command::new("python3").arg("-c").arg(py).arg(m.p("py.bin")).output().unwrap();
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs.read_all("/py.bin").await.unwrap(), b"012", "the SDK sees the final version");

    // sqlite3: create, insert, select (journal files created, rewritten,
    // fsynced and unlinked while open, over and over: ten databases).
    let q = "create table t(k integer primary key, v text); \
             insert into t(v) values ('a'),('b'),('c'); \
             update t set v = 'bb' where k = 2; select group_concat(v) from t;";
    for i in 0..10 {
        let db = m.p(&format!("t{i}.db"));
        let out = sh(&m.dir, &format!("sqlite3 {} \"{q}\"", db.display()));
        assert_eq!(out.trim(), "a,bb,c");
        let out = sh(&m.dir, &format!("sqlite3 {} 'select count(*) from t'", db.display()));
        assert_eq!(out.trim(), "3");
    }

    // git init && commit inside the mount.
    std::fs::create_dir(m.p("repo")).unwrap();
    sh(
        &m.p("repo"),
        "git init -q . && git config user.email t@example.com && git config user.name t && \
         echo hello > a.txt && mkdir d && echo x > d/b.txt && git add -A && git commit -q -m one && \
         echo more >> a.txt && git commit -q -am two && git fsck --no-progress",
    );
    let log = sh(&m.p("repo"), "git log --oneline | wc -l");
    assert_eq!(log.trim(), "2");

    // Concurrent readers of one large file.
    let big = random_bytes(24 << 20, 5);
    fs.write_all("/big.bin", &big, false).await.unwrap();
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let p = m.p("big.bin");
            std::thread::spawn(move || {
                let f = std::fs::File::open(p).unwrap();
                let mut buf = vec![0u8; 1 << 20];
                let mut all = Vec::new();
                let mut off = (i * 3) << 20; // each starts elsewhere, wraps around
                for _ in 0..24 {
                    let at = off % (24 << 20);
                    f.read_exact_at(&mut buf, at as u64).unwrap();
                    all.push((at, buf.clone()));
                    off += 1 << 20;
                }
                all
            })
        })
        .collect();
    for r in readers {
        for (at, got) in r.join().unwrap() {
            assert!(got[..] == big[at..at + (1 << 20)], "concurrent read at {at} differs");
        }
    }

    // statfs shows the cluster's real capacity.
    let df = sh(&m.dir, &format!("df -B1 --output=size {} | tail -1", m.dir.display()));
    let report = fs.report().await.unwrap();
    let size: u64 = df.trim().parse().unwrap();
    assert_eq!(size / 4096, report.capacity / 4096, "df size {size} vs capacity {}", report.capacity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_errno_and_unlinked_open_files_stay_readable() {
    need_fuse!("errors_map_to_errno_and_unlinked_open_files_stay_readable");
    let n = node().await;
    let m = Mount::start(&n, &[]);
    let code = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(code(std::fs::read(m.p("nope")).map(|_| ())), Some(libc::ENOENT));
    std::fs::create_dir(m.p("d")).unwrap();
    assert_eq!(code(std::fs::create_dir(m.p("d"))), Some(libc::EEXIST));
    std::fs::write(m.p("d/f"), b"x").unwrap();
    assert_eq!(code(std::fs::remove_dir(m.p("d"))), Some(libc::ENOTEMPTY));
    assert_eq!(code(std::fs::remove_file(m.p("d"))), Some(libc::EISDIR));
    assert_eq!(code(std::fs::create_dir(m.p("d/f/g"))), Some(libc::ENOTDIR));
    assert_eq!(code(std::fs::read_dir(m.p("d/f")).map(|_| ())), Some(libc::ENOTDIR));
    // chmod reaches meta and comes back.
    std::fs::set_permissions(m.p("d/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(m.p("d/f")).unwrap().permissions().mode() & 0o777, 0o600);
    // rename over an existing file replaces it; RENAME_NOREPLACE refuses.
    std::fs::write(m.p("d/g"), b"gg").unwrap();
    std::fs::rename(m.p("d/f"), m.p("d/g")).unwrap();
    assert_eq!(std::fs::read(m.p("d/g")).unwrap(), b"x");
    std::fs::write(m.p("d/h"), b"h").unwrap();
    let c = |p: PathBuf| std::ffi::CString::new(p.to_string_lossy().as_bytes()).unwrap();
    let (from, to) = (c(m.p("d/h")), c(m.p("d/g")));
    // SAFETY: renameat2(2) with two valid NUL-terminated paths.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    assert_eq!(rc, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EEXIST));
    assert_eq!(std::fs::read(m.p("d/g")).unwrap(), b"x", "RENAME_NOREPLACE must not replace");

    // An open file unlinked by its name stays readable until closed.
    let data = random_bytes(3 << 20, 7);
    std::fs::write(m.p("open.bin"), &data).unwrap();
    let f = std::fs::File::open(m.p("open.bin")).unwrap();
    std::fs::remove_file(m.p("open.bin")).unwrap();
    assert!(!m.p("open.bin").exists());
    let names: Vec<_> = std::fs::read_dir(&m.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n.to_string_lossy().starts_with(curvine_fuse::HIDDEN_PREFIX)), "{names:?}");
    let mut buf = vec![0u8; data.len()];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == data, "unlinked open file must read back whole");
    drop(f);
    let fs = n.fs().unwrap();
    testbed::wait_for("the unlinked file's hidden name to go", Duration::from_secs(10), || async {
        !fs.list("/").await.unwrap().iter().any(|e| e.name.starts_with(curvine_fuse::HIDDEN_PREFIX))
    })
    .await
    .unwrap();
}

/// Random creates, writes, renames and unlinks, run on the mount and on a
/// local directory; both must end up identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_a_local_directory() {
    need_fuse!("random_operations_match_a_local_directory");
    let n = node().await;
    let m = Mount::start(&n, &[]);
    let local = tempfile::tempdir().unwrap();
    let roots = [m.dir.clone(), local.path().to_path_buf()];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = |k: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % k
    };
    let names = ["a", "b", "c", "d/a", "d/b", "e/f/a"];
    let mut outcomes = Vec::new();
    for step in 0..300 {
        let op = rnd(5);
        let (p, q) = (names[rnd(names.len() as u64) as usize], names[rnd(names.len() as u64) as usize]);
        let data = random_bytes(rnd(200_000) as usize, step);
        let mut results = Vec::new();
        for r in &roots {
            let res: std::io::Result<()> = match op {
                0 => std::fs::create_dir_all(r.join(p).parent().unwrap()).and_then(|_| std::fs::write(r.join(p), &data)),
                1 => std::fs::rename(r.join(p), r.join(q)),
                2 => std::fs::remove_file(r.join(p)),
                3 => std::fs::OpenOptions::new().append(true).open(r.join(p)).and_then(|mut f| {
                    use std::io::Write;
                    f.write_all(&data[..data.len().min(1000)])
                }),
                // rmdir of the file's directory (never the root itself).
                _ if p.contains('/') => std::fs::remove_dir(r.join(p).parent().unwrap()),
                _ => Ok(()),
            };
            results.push(res.map_err(|e| e.raw_os_error()));
        }
        assert_eq!(results[0], results[1], "step {step}: op {op} on {p} -> {q} differs (fuse vs local)");
        outcomes.push(results[0].is_ok());
    }
    assert_same_tree(&roots[1], &roots[0]);
    let ok = outcomes.iter().filter(|o| **o).count();
    eprintln!("random operations: {ok} of {} succeeded on both, identical trees", outcomes.len());
    assert!(ok > 50, "too few operations succeeded to mean anything: {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmounts_with_files_open_and_clears_a_stale_mount() {
    need_fuse!("unmounts_with_files_open_and_clears_a_stale_mount");
    let n = node().await;
    let mut m = Mount::start(&n, &[]);
    std::fs::write(m.p("f"), b"abc").unwrap();

    // SIGTERM with files open: the daemon exits and the mount is gone.
    // Bytes a writer was told were written are saved first, and a file
    // unlinked while open leaves no hidden name behind.
    use std::io::Write;
    let held = std::fs::File::open(m.p("f")).unwrap();
    let mut writer = std::fs::File::create(m.p("g")).unwrap();
    writer.write_all(b"written before the signal").unwrap();
    let mut unlinked = std::fs::File::create(m.p("u")).unwrap();
    unlinked.write_all(b"gone").unwrap();
    std::fs::remove_file(m.p("u")).unwrap();
    let mut p = m.proc.take().unwrap();
    let code = p.terminate().expect("cv fuse must exit after SIGTERM even with files open");
    assert_eq!(code, Some(0));
    drop((held, writer, unlinked));
    assert!(!m.mounted(), "mount still present after the daemon exited");
    let fs = n.fs().unwrap();
    assert_eq!(fs.read_all("/g").await.unwrap(), b"written before the signal", "an open file's writes saved at exit");
    let names: Vec<String> = fs.list("/").await.unwrap().into_iter().map(|e| e.name).collect();
    assert!(!names.iter().any(|n| n.starts_with(curvine_fuse::HIDDEN_PREFIX) || n == "u"), "{names:?}");

    // kill -9 leaves a stale mount; the next `cv fuse` clears it.
    m.proc = Some(m.spawn(&n, &[]));
    assert_eq!(std::fs::read(m.p("f")).unwrap(), b"abc");
    m.proc.as_mut().unwrap().kill9();
    assert!(curvine_fuse::is_stale_mount(&m.dir), "kill -9 should leave the mount stale");
    m.proc = Some(m.spawn(&n, &[]));
    assert_eq!(std::fs::read(m.p("f")).unwrap(), b"abc");

    // An external umount ends the daemon.
    let st = Command::new("umount").arg(&m.dir).status().unwrap();
    assert!(st.success());
    let mut p = m.proc.take().unwrap();
    assert_eq!(p.wait_exit(Duration::from_secs(20)).expect("cv fuse must end at an external umount"), Some(0));

    // Bad mount points are clear errors.
    let out = cv(&n, &["fuse", "/nonexistent/mnt"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mnt"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cv(&n, &["fuse", m.dir.to_str().unwrap(), "--subdir", "/no/such/dir"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--subdir"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_symlinks_and_extended_attributes() {
    need_fuse!("owners_symlinks_and_extended_attributes");
    use std::os::unix::fs::MetadataExt;
    let n = node().await;
    let m = Mount::start(&n, &["--allow-other"]);
    let fs = n.fs().unwrap();

    // Symlinks: ln -s, readlink, following them, and the SDK's view.
    std::fs::write(m.p("target.txt"), b"pointed at").unwrap();
    std::os::unix::fs::symlink("target.txt", m.p("link")).unwrap();
    assert_eq!(std::fs::read_link(m.p("link")).unwrap(), Path::new("target.txt"));
    assert_eq!(std::fs::read(m.p("link")).unwrap(), b"pointed at");
    assert!(std::fs::symlink_metadata(m.p("link")).unwrap().file_type().is_symlink());
    let st = fs.stat("/link").await.unwrap();
    assert_eq!((st.kind, st.target.as_str()), (curvine_client::FileKind::Symlink as i32, "target.txt"));
    assert!(fs.open("/link").await.is_err(), "the SDK does not read through a symlink");
    std::fs::remove_file(m.p("link")).unwrap();
    assert!(m.p("target.txt").exists());

    // Owners: a file made by another user is theirs; chown by root sticks.
    std::fs::create_dir(m.p("shared")).unwrap();
    std::fs::set_permissions(m.p("shared"), std::fs::Permissions::from_mode(0o777)).unwrap();
    sh(&m.dir, &format!("setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo mine > {}'", m.p("shared/by-nobody").display()));
    let md = std::fs::metadata(m.p("shared/by-nobody")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    assert_eq!(fs.stat("/shared/by-nobody").await.unwrap().uid, 65534);
    // The owner may rewrite it; another user may not.
    sh(&m.dir, &format!("setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo again >> {}'", m.p("shared/by-nobody").display()));
    assert_eq!(std::fs::read(m.p("shared/by-nobody")).unwrap(), b"mine\nagain\n");
    assert_eq!(std::fs::metadata(m.p("shared/by-nobody")).unwrap().uid(), 65534, "a rewrite keeps the owner");
    let denied = Command::new("setpriv")
        .args(["--reuid=1234", "--regid=1234", "--clear-groups", "sh", "-c"])
        .arg(format!("echo x >> {}", m.p("shared/by-nobody").display()))
        .status()
        .unwrap();
    assert!(!denied.success(), "another user must not write a 0644 file it does not own");
    sh(&m.dir, &format!("chown 4321:4322 {}", m.p("target.txt").display()));
    let md = std::fs::metadata(m.p("target.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (4321, 4322));

    // Extended attributes, through the Python os module.
    let py = r#"
import os, sys, errno
p = sys.argv[1]
os.setxattr(p, "user.a", b"1")
os.setxattr(p, "user.b", b"two")
assert sorted(os.listxattr(p)) == ["user.a", "user.b"], os.listxattr(p)
assert os.getxattr(p, "user.b") == b"two"
try:
    os.setxattr(p, "user.a", b"x", os.XATTR_CREATE); raise SystemExit("XATTR_CREATE replaced")
except OSError as e: assert e.errno == errno.EEXIST, e
os.removexattr(p, "user.a")
try:
    os.getxattr(p, "user.a"); raise SystemExit("removed attribute still there")
except OSError as e: assert e.errno == errno.ENODATA, e
print("xattr ok")
"#;
    let out = Command::new("python3").arg("-c").arg(py).arg(m.p("target.txt")).output().unwrap();
    assert!(out.status.success(), "python xattr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs.xattr_get("/target.txt", "user.b").await.unwrap(), b"two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_files_and_change_times() {
    need_fuse!("special_files_and_change_times");
    let n = node().await;
    // No kernel caching of attributes: each stat below asks meta.
    let m = Mount::start(&n, &["--attr-timeout", "0", "--entry-timeout", "0"]);
    let fs = n.fs().unwrap();
    // FIFOs, sockets and device nodes are made and typed; a FIFO carries
    // bytes between two processes (the kernel's pipe, named in Curvine).
    let py = r#"
import os, sys, stat, socket, threading, time
d = sys.argv[1]
os.mkfifo(f"{d}/fifo", 0o640)
assert stat.S_ISFIFO(os.stat(f"{d}/fifo").st_mode)
assert stat.S_IMODE(os.stat(f"{d}/fifo").st_mode) == 0o640
def writer():
    with open(f"{d}/fifo", "wb") as w: w.write(b"through the pipe")
t = threading.Thread(target=writer); t.start()
with open(f"{d}/fifo", "rb") as r: got = r.read()
t.join()
assert got == b"through the pipe", got
s = socket.socket(socket.AF_UNIX); s.bind(f"{d}/sock"); s.close()
assert stat.S_ISSOCK(os.stat(f"{d}/sock").st_mode)
os.mknod(f"{d}/chr", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
st = os.stat(f"{d}/chr")
assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3), st
os.mknod(f"{d}/reg", 0o644 | stat.S_IFREG)
assert stat.S_ISREG(os.stat(f"{d}/reg").st_mode) and os.stat(f"{d}/reg").st_size == 0
kinds = {e.name: (e.is_file(), e.is_dir(), e.is_symlink()) for e in os.scandir(d)}
assert kinds["fifo"] == (False, False, False) and kinds["reg"] == (True, False, False), kinds
try:
    os.mkfifo(f"{d}/fifo"); raise SystemExit("mkfifo over an existing name")
except FileExistsError: pass
os.unlink(f"{d}/fifo"); os.unlink(f"{d}/sock"); os.unlink(f"{d}/chr")

# ctime: chmod, chown and xattrs change it; a failed chmod does not;
# a create, unlink or rename in a directory changes its mtime and ctime.
f = f"{d}/reg"
def ctime(p): return os.stat(p).st_ctime_ns
c0 = ctime(f); time.sleep(0.01)
os.chmod(f, 0o600); c1 = ctime(f); assert c1 > c0, (c0, c1); time.sleep(0.01)
os.chown(f, 7, 7); c2 = ctime(f); assert c2 > c1, (c1, c2); time.sleep(0.01)
os.setxattr(f, "user.k", b"v"); c3 = ctime(f); assert c3 > c2, (c2, c3); time.sleep(0.01)
try: os.chmod(f"{d}/missing", 0o600)
except FileNotFoundError: pass
assert ctime(f) == c3
dm, dc = os.stat(d).st_mtime_ns, ctime(d); time.sleep(0.01)
open(f"{d}/new", "w").close()
assert os.stat(d).st_mtime_ns > dm and ctime(d) > dc
dm, dc = os.stat(d).st_mtime_ns, ctime(d); time.sleep(0.01)
os.rename(f"{d}/new", f"{d}/renamed")
assert os.stat(d).st_mtime_ns > dm and ctime(d) > dc
dm = os.stat(d).st_mtime_ns; time.sleep(0.01)
os.unlink(f"{d}/renamed")
assert os.stat(d).st_mtime_ns > dm
print("special ok")
"#;
    std::fs::create_dir(m.p("sp")).unwrap();
    let out = Command::new("python3").arg("-c").arg(py).arg(m.p("sp")).output().unwrap();
    assert!(out.status.success(), "python: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The SDK sees the kinds, and refuses to read bytes from one.
    fs.mknod("/sp/fifo2", curvine_client::FileKind::Fifo, 0o600, 0, None).await.unwrap();
    assert_eq!(fs.stat("/sp/fifo2").await.unwrap().kind, curvine_client::FileKind::Fifo as i32);
    let err = fs.open("/sp/fifo2").await.err().expect("opening a FIFO through the SDK must fail");
    assert!(err.to_string().contains("Fifo"), "{err}");
    let err = fs.mknod("/sp/nope", curvine_client::FileKind::File, 0o600, 0, None).await.unwrap_err();
    assert!(err.to_string().contains("mknod"), "{err}");
}

/// Hard links: every name shows one file (one inode: equal `st_ino`, link
/// counts, a chmod through one name seen at once through the others with
/// the kernel's attribute cache on), unlinking a name keeps the bytes for
/// the others, links made through the SDK show in the mount, and the file
/// goes with its last name. Directories count their subdirectories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_share_one_file_under_every_name() {
    need_fuse!("hard_links_share_one_file_under_every_name");
    let n = node().await;
    let m = Mount::start(&n, &[]);
    let fs = n.fs().unwrap();
    let py = r#"
import os, sys
d = sys.argv[1]
a, b, c = f"{d}/a", f"{d}/sub/b", f"{d}/c"
n0 = os.stat(d).st_nlink
os.mkdir(f"{d}/sub")
assert os.stat(d).st_nlink == n0 + 1 == 3, (n0, os.stat(d).st_nlink)  # a directory counts its subdirectories
with open(a, "wb") as f: f.write(b"shared bytes")
assert os.stat(a).st_nlink == 1
os.link(a, b)
sa, sb = os.stat(a), os.stat(b)
assert sa.st_nlink == sb.st_nlink == 2, (sa.st_nlink, sb.st_nlink)
assert sa.st_ino == sb.st_ino, (sa.st_ino, sb.st_ino)
os.link(b, c)
assert os.stat(a).st_nlink == 3 and os.stat(c).st_ino == sa.st_ino
os.chmod(b, 0o600)
assert os.stat(a).st_mode & 0o777 == 0o600 and os.stat(c).st_mode & 0o777 == 0o600
with open(c, "rb") as f: assert f.read() == b"shared bytes"
try:
    os.link(f"{d}/sub", f"{d}/sub2"); raise SystemExit("linked a directory")
except PermissionError: pass
try:
    os.link(a, c); raise SystemExit("linked over an existing name")
except FileExistsError: pass
os.unlink(a)
assert not os.path.exists(a)
assert os.stat(b).st_nlink == 2 and os.stat(c).st_nlink == 2, (os.stat(b).st_nlink, os.stat(c).st_nlink)
os.rename(c, f"{d}/c2")
assert os.stat(f"{d}/c2").st_ino == os.stat(b).st_ino
os.rename(b, f"{d}/c2")  # two names of one file: nothing happens
assert os.path.exists(b) and os.stat(b).st_nlink == 2
# A rewrite through one name is seen under the other (O_TRUNC rewrites the file).
with open(b, "wb") as f: f.write(b"rewritten")
with open(f"{d}/c2", "rb") as f: assert f.read() == b"rewritten"
assert os.stat(b).st_ino == os.stat(f"{d}/c2").st_ino and os.stat(b).st_nlink == 2
# Unlinking a name of an open linked file: the file stays open, the other name stays.
# Until the last close the name lives on hidden (like NFS's silly rename),
# and the kernel sends that close (release) after close(2) returned: wait.
import time
f = open(b, "r+b")
os.unlink(b)
f.seek(0); f.write(b"shared bytes"); f.close()
with open(f"{d}/c2", "rb") as f: assert f.read() == b"shared bytes"
deadline = time.time() + 20
while os.stat(f"{d}/c2").st_nlink != 1 or sorted(os.listdir(d)) != ["c2", "sub"]:
    assert time.time() < deadline, (os.stat(f"{d}/c2").st_nlink, os.listdir(d))
    time.sleep(0.05)
print("links ok")
"#;
    std::fs::create_dir(m.p("hl")).unwrap();
    let out = Command::new("python3").arg("-c").arg(py).arg(m.p("hl")).output().unwrap();
    assert!(out.status.success(), "python: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The SDK sees what the mount did, and the mount what the SDK does.
    let st = fs.stat("/hl/c2").await.unwrap();
    assert_eq!((st.nlink, st.len), (1, 12));
    let linked = fs.link("/hl/c2", "/hl/d").await.unwrap();
    assert_eq!((linked.id, linked.nlink, linked.name.as_str()), (st.id, 2, "d"));
    let (c2, d) = (std::fs::metadata(m.p("hl/c2")).unwrap(), std::fs::metadata(m.p("hl/d")).unwrap());
    use std::os::unix::fs::MetadataExt;
    assert_eq!((d.nlink(), d.ino()), (2, c2.ino()));
    assert_eq!(std::fs::read(m.p("hl/d")).unwrap(), b"shared bytes");
    let err = fs.link("/hl", "/hl2").await.unwrap_err();
    assert_eq!(err.kind(), curvine_common::ErrorKind::NotPermitted, "{err}");
    // The file goes with its last name.
    std::fs::remove_file(m.p("hl/c2")).unwrap();
    std::fs::remove_file(m.p("hl/d")).unwrap();
    assert_eq!(fs.stat("/hl/d").await.unwrap_err().kind(), curvine_common::ErrorKind::NotFound);
    assert_eq!(fs.list("/hl").await.unwrap().len(), 1, "only sub is left");
    // Directory link counts: 2 + subdirectories, through the mount and the SDK.
    std::fs::create_dir(m.p("hl/sub/deeper")).unwrap();
    assert_eq!(std::fs::metadata(m.p("hl/sub")).unwrap().nlink(), 3);
    std::fs::rename(m.p("hl/sub/deeper"), m.p("hl/moved")).unwrap();
    assert_eq!((std::fs::metadata(m.p("hl")).unwrap().nlink(), std::fs::metadata(m.p("hl/sub")).unwrap().nlink()), (4, 2));
    assert_eq!(fs.stat("/hl").await.unwrap().nlink, 4);
}

/// `--passthrough`: a file held whole in one MEM block reads through the
/// kernel from the block file (bytes checked; a write open meanwhile gets
/// ETXTBSY, which only a passthrough inode answers); so does a multi-block
/// file, whose blocks the worker keeps in one extent file; a file open for
/// writing reads through the daemon; a rewrite after the last close is
/// what the next open reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_reads_files_through_the_kernel() {
    need_fuse!("passthrough_reads_files_through_the_kernel");
    let n = node_with(UpOptions {
        block_size: Some("4MiB".into()),
        mem: Some("256MiB".into()),
        ..Default::default()
    })
    .await;
    let fs = n.fs().unwrap();
    let small = random_bytes(3 << 20, 41);
    let large = random_bytes(10 << 20, 42);
    fs.mkdir("/pt", false).await.unwrap();
    fs.write_all("/pt/small", &small, false).await.unwrap();
    fs.write_all("/pt/large", &large, false).await.unwrap();
    let m = Mount::start(&n, &["--passthrough"]);
    let log = std::fs::read_to_string(m._tmp.path().join("fuse.log")).unwrap_or_default();

    let held = std::fs::File::open(m.p("pt/small")).unwrap();
    let log_now = std::fs::read_to_string(m._tmp.path().join("fuse.log")).unwrap_or_default();
    if log.contains("passthrough unavailable") || log_now.contains("refused by the kernel") {
        eprintln!("SKIPPED passthrough_reads_files_through_the_kernel: this kernel has no FUSE passthrough:\n{log_now}");
        return;
    }
    let mut got = vec![0u8; small.len()];
    held.read_exact_at(&mut got, 0).unwrap();
    assert!(
        got == small,
        "passthrough read differs from what was written"
    );
    // A second reader shares the backing; reads at an offset.
    let second = std::fs::File::open(m.p("pt/small")).unwrap();
    let mut part = vec![0u8; 100_000];
    second.read_exact_at(&mut part, 1_234_567).unwrap();
    assert!(part[..] == small[1_234_567..1_334_567]);
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(m.p("pt/small"))
        .expect_err("a write open of a passthrough file");
    assert_eq!(e.raw_os_error(), Some(libc::ETXTBSY), "{e}");

    // Ten blocks in one extent: passthrough too, read across block edges.
    let reader = std::fs::File::open(m.p("pt/large")).unwrap();
    let e = std::fs::OpenOptions::new()
        .append(true)
        .open(m.p("pt/large"))
        .expect_err("a write open of a passthrough file");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ETXTBSY),
        "the multi-block file is read by the kernel: {e}"
    );
    let mut edge = vec![0u8; 3 << 20];
    reader.read_exact_at(&mut edge, (4 << 20) - 12_345).unwrap();
    assert!(
        edge[..] == large[(4 << 20) - 12_345..(7 << 20) - 12_345],
        "a read across a block edge"
    );
    assert!(std::fs::read(m.p("pt/large")).unwrap() == large);
    drop(reader);

    // Open for writing first: readers alongside go through the daemon.
    fs.write_all("/pt/other", &large, false).await.unwrap();
    let writer = std::fs::OpenOptions::new()
        .append(true)
        .open(m.p("pt/other"))
        .expect("a write open of a normal file");
    assert!(std::fs::read(m.p("pt/other")).unwrap() == large);
    drop(writer);

    // After the last close the file can be rewritten; the next open reads
    // the new version.
    drop(held);
    drop(second);
    let new = random_bytes(2 << 20, 43);
    testbed::wait_for("the backing to be released", Duration::from_secs(10), || async {
        std::fs::write(m.p("pt/small"), &new).is_ok()
    })
    .await
    .unwrap();
    assert!(std::fs::read(m.p("pt/small")).unwrap() == new);
    assert!(fs.read_all("/pt/small").await.unwrap() == new, "the SDK sees the rewrite");
}

/// `--read-only`: every change is refused with EROFS (nothing reaches
/// meta), reads return the file's bytes (through the kernel where it can).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mounts_refuse_changes_and_read() {
    need_fuse!("read_only_mounts_refuse_changes_and_read");
    let n = node_with(UpOptions { block_size: Some("4MiB".into()), mem: Some("256MiB".into()), ..Default::default() }).await;
    let fs = n.fs().unwrap();
    let data = random_bytes((9 << 20) + 77, 44);
    fs.mkdir("/ro", false).await.unwrap();
    fs.write_all("/ro/weights", &data, false).await.unwrap();
    let m = Mount::start(&n, &["--read-only"]);
    assert!(std::fs::read(m.p("ro/weights")).unwrap() == data);
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(std::fs::write(m.p("ro/new"), b"x"), "create");
    erofs(std::fs::OpenOptions::new().append(true).open(m.p("ro/weights")).map(drop), "write open");
    erofs(std::fs::create_dir(m.p("ro/dir")), "mkdir");
    erofs(std::fs::remove_file(m.p("ro/weights")), "unlink");
    erofs(std::fs::rename(m.p("ro/weights"), m.p("ro/w2")), "rename");
    assert!(fs.read_all("/ro/weights").await.unwrap() == data, "nothing changed");
    assert!(fs.stat("/ro/new").await.is_err());
}

/// `--passthrough` of a file loaded from a UFS: `cv warm` stores its blocks
/// one by one, so the first passthrough open asks the worker to join them
/// into one file (a copy), then the kernel reads it; bytes checked, and
/// the join survives a second open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_reads_a_warmed_ufs_file_after_joining_its_blocks() {
    need_fuse!("passthrough_reads_a_warmed_ufs_file_after_joining_its_blocks");
    let s3 = testbed::s3::S3Server::start();
    s3.create_bucket("ptjoin");
    let ufs = curvine_ufs::Ufs::new(&s3.uri("ptjoin", ""), &s3.options()).unwrap();
    let objs = put_many(&ufs, "m", 1, (10 << 20) + 4321).await;
    let (key, want) = &objs[0];
    let n = node_with(UpOptions { block_size: Some("4MiB".into()), mem: Some("256MiB".into()), ..Default::default() }).await;
    mount_s3(&n, &s3, "ptjoin", "", "/u", &[]);
    ok(&cv(&n, &["warm", "/u/m"]));
    let fs = n.fs().unwrap();
    let path = format!("/u/{key}");
    let blocks = fs.open(&path).await.unwrap().blocks().to_vec();
    assert_eq!(blocks.len(), 3);
    assert!(blocks.iter().all(|b| !b.from_ufs), "warmed: every block cached");
    let m = Mount::start(&n, &["--passthrough"]);
    let log = std::fs::read_to_string(m._tmp.path().join("fuse.log")).unwrap_or_default();
    let f = std::fs::File::open(m.p(&format!("u/{key}"))).unwrap();
    let log_now = std::fs::read_to_string(m._tmp.path().join("fuse.log")).unwrap_or_default();
    if log.contains("passthrough unavailable") || log_now.contains("refused by the kernel") {
        eprintln!("SKIPPED passthrough_reads_a_warmed_ufs_file_after_joining_its_blocks: no FUSE passthrough:\n{log_now}");
        return;
    }
    let e = std::fs::OpenOptions::new().append(true).open(m.p(&format!("u/{key}"))).expect_err("a write open");
    assert_eq!(e.raw_os_error(), Some(libc::ETXTBSY), "the joined file is read by the kernel: {e}");
    let mut got = vec![0u8; want.len()];
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(got == *want, "passthrough read of the joined file differs from the object");
    drop(f);
    // The SDK reads the same bytes from the blocks' new place.
    assert!(fs.read_all(&path).await.unwrap() == *want);
    assert!(std::fs::read(m.p(&format!("u/{key}"))).unwrap() == *want, "a second open reads it again");
}

/// Locks held by a process on one mount, tested from a process on another
/// mount of the same cluster (as two hosts would).
const LOCKS_PY: &str = r#"
import fcntl, os, platform, signal, struct, subprocess, sys, threading, time
a, b = sys.argv[1], sys.argv[2]           # one file, through mount 1 and mount 2
FCNTL = {"x86_64": "72", "aarch64": "25"}[platform.machine()]   # fcntl(2)'s number

def blocked_in_fcntl(pid, tid=None):
    """Waits until thread `tid` of `pid` sits in fcntl(2) (a blocked F_SETLKW)."""
    path = f"/proc/{pid}/task/{tid or pid}/syscall"
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with open(path) as f:
                if f.read().split()[0] == FCNTL:
                    return
        except (OSError, IndexError):
            pass
        time.sleep(0.01)
    raise SystemExit(f"{pid}/{tid} never blocked in fcntl")
fa, fb = a + "-flock", b + "-flock"
HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 100, 0)      # bytes 0..99
g = os.open(sys.argv[2], os.O_RDWR)
fcntl.flock(g, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()                        # until told; exiting closes both
"""
holder = subprocess.Popen([sys.executable, "-c", HOLD, a, fa], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
assert holder.stdout.readline().strip() == "locked"

fd = os.open(b, os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)
    raise SystemExit("took a write lock another mount holds")
except BlockingIOError:
    pass
try:
    fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 0)
    raise SystemExit("took a read lock under another mount's write lock")
except BlockingIOError:
    pass
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 200)   # bytes 200..299 are free
# F_GETLK names the holder (same host, so the same pid).
got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 10, 0))
typ, _, start, length, pid = struct.unpack("hhqqi", got)
assert (typ, start, length, pid) == (fcntl.F_WRLCK, 0, 100, holder.pid), (typ, start, length, pid, holder.pid)
# flock across mounts.
g = os.open(fb, os.O_RDWR)
try:
    fcntl.flock(g, fcntl.LOCK_EX | fcntl.LOCK_NB)
    raise SystemExit("took an flock another mount holds")
except BlockingIOError:
    pass

# A blocking lock waits until the holder exits (its closes drop its locks).
done, tid = [], []
def wait_lock():
    tid.append(threading.get_native_id())
    fcntl.lockf(fd, fcntl.LOCK_EX, 100, 0)
    fcntl.flock(g, fcntl.LOCK_EX)
    done.append(time.time())
t = threading.Thread(target=wait_lock); t.start()
while not tid:
    time.sleep(0.01)
blocked_in_fcntl(os.getpid(), tid[0])
assert not done, "a blocking lock returned while another mount held it"
released = time.time()
holder.stdin.write("go\n"); holder.stdin.flush(); holder.wait()
t.join(30)
assert done and done[0] >= released, "the blocking lock never came"
# Unlocking through mount 2 lets mount 1 lock again.
fcntl.lockf(fd, fcntl.LOCK_UN, 0, 0)
fcntl.flock(g, fcntl.LOCK_UN)
h = os.open(a, os.O_RDWR)
fcntl.lockf(h, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 0)

# A waiter killed while blocked never takes the lock afterwards.
WAIT = "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\nfcntl.lockf(fd, fcntl.LOCK_EX, 0, 0)\nprint('got it', flush=True)\n"
waiter = subprocess.Popen([sys.executable, "-c", WAIT, b], stdout=subprocess.PIPE, text=True)
blocked_in_fcntl(waiter.pid)
assert waiter.poll() is None, "the waiter got a lock mount 1 holds"
waiter.kill()
try:
    waiter.wait(timeout=10)
except subprocess.TimeoutExpired:
    raise SystemExit("a killed F_SETLKW waiter stayed blocked in the mount")
# A caught signal ends a blocked F_SETLKW (the alarm() timeout idiom); one
# the process does not catch leaves it waiting.
ALARM = """
import fcntl, os, signal, sys
def timeout(*_): raise TimeoutError
signal.signal(signal.SIGALRM, timeout)
fd = os.open(sys.argv[1], os.O_RDWR)
signal.alarm(1)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX, 0, 0)
    print('got it', flush=True)
except TimeoutError:
    print('timed out', flush=True)
"""
t0 = time.time()
out = subprocess.run([sys.executable, "-c", ALARM, b], capture_output=True, text=True, timeout=30)
assert out.stdout.strip() == "timed out", (out.stdout, out.stderr)
assert time.time() - t0 < 10, "the alarm took too long to end the wait"
waiter = subprocess.Popen([sys.executable, "-c", WAIT, b], stdout=subprocess.PIPE, text=True)
blocked_in_fcntl(waiter.pid)
waiter.send_signal(signal.SIGWINCH)
# Still waiting a while later (what "keeps waiting" means), and in fcntl.
time.sleep(0.5)
assert waiter.poll() is None, "an uncaught signal ended an F_SETLKW wait"
blocked_in_fcntl(waiter.pid)
waiter.kill()
waiter.wait(timeout=10)
fcntl.lockf(h, fcntl.LOCK_UN, 0, 0)
deadline = time.time() + 3
while True:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 0)
        break
    except BlockingIOError:
        assert time.time() < deadline, "a killed waiter's lock request still holds the file"
        time.sleep(0.05)
print("ok")
"#;

/// A Python script run step by step: it prints a line after each step and
/// waits for a line on stdin before the next.
struct Stepper {
    child: std::process::Child,
    said: std::io::BufReader<std::process::ChildStdout>,
    told: std::process::ChildStdin,
}

impl Stepper {
    fn start(py: &str, args: &[PathBuf]) -> Stepper {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(py)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let said = std::io::BufReader::new(child.stdout.take().unwrap());
        let told = child.stdin.take().unwrap();
        Stepper { child, said, told }
    }

    /// Waits for the script to print `line`.
    fn expect(&mut self, line: &str) {
        let mut got = String::new();
        std::io::BufRead::read_line(&mut self.said, &mut got).unwrap();
        assert_eq!(got.trim(), line);
    }

    /// Lets the script take its next step, which prints `line`.
    fn step(&mut self, line: &str) {
        std::io::Write::write_all(&mut self.told, b"go\n").unwrap();
        self.expect(line);
    }

    /// Lets the script end, and checks it succeeded.
    fn finish(mut self) {
        std::io::Write::write_all(&mut self.told, b"go\n").unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_hold_across_mounts_and_die_with_their_mount() {
    need_fuse!("locks_hold_across_mounts_and_die_with_their_mount");
    let n = node_with(UpOptions { config: Some("[meta]\nlock_lease = \"2s\"\n".into()), ..Default::default() }).await;
    let m1 = Mount::start(&n, &[]);
    for f in ["f", "f-flock", "h"] {
        std::fs::write(m1.p(f), vec![7u8; 4096]).unwrap();
    }
    let mut m2 = Mount::start(&n, &[]);
    let out = Command::new("python3").arg("-c").arg(LOCKS_PY).arg(m1.p("f")).arg(m2.p("f")).output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Locks are kept by path: an unlock after a rename through the mount
    // still frees the lock under the name it was taken by, while the
    // file stays open.
    std::fs::write(m1.p("r1"), b"r").unwrap();
    let fs = n.fs().unwrap();
    let other = curvine_client::locks::LockWho { session: 99, owner: 1, pid: 1 };
    let write = curvine_client::locks::LockKind::Write;
    let mut renamer = Stepper::start(
        "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\nfcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)\n\
         os.rename(sys.argv[1], sys.argv[2])\nprint('renamed', flush=True)\nsys.stdin.readline()\n\
         fcntl.lockf(fd, fcntl.LOCK_UN, 10, 0)\nprint('unlocked', flush=True)\nsys.stdin.readline()\n",
        &[m1.p("r1"), m1.p("r2")],
    );
    renamer.expect("renamed");
    assert!(fs.lock_test("/r1", other, write, 0, 9).await.unwrap().is_some(), "the lock stays under the name it was taken by");
    renamer.step("unlocked");
    assert_eq!(fs.lock_test("/r1", other, write, 0, 9).await.unwrap(), None, "an unlock after a rename left the lock");
    renamer.finish();

    // An open-file-description lock (F_OFD_SETLK) belongs to the open
    // file, which no flush names: it goes when that file is closed, while
    // its process lives on.
    std::fs::write(m1.p("o"), b"o").unwrap();
    let mut ofd = Stepper::start(
        "import fcntl, os, struct, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n\
         fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0))\n\
         print('locked', flush=True)\nsys.stdin.readline()\nos.close(fd)\nprint('closed', flush=True)\nsys.stdin.readline()\n",
        &[m1.p("o")],
    );
    ofd.expect("locked");
    assert!(fs.lock_test("/o", other, write, 0, 0).await.unwrap().is_some(), "the OFD lock holds cluster-wide");
    ofd.step("closed");
    // The kernel sends the release after close(2) returns.
    testbed::wait_for("the closed file's OFD lock to go", Duration::from_secs(10), || async {
        fs.lock_test("/o", other, write, 0, 0).await.unwrap().is_none()
    })
    .await
    .unwrap();
    ofd.finish();

    // A mount that dies holding a lock loses it after the lease.
    let try_lock = |m: &Mount| {
        let py = "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n\
                  try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(11)\n";
        Command::new("python3").arg("-c").arg(py).arg(m.p("h")).status().unwrap().code()
    };
    let py = "import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR)\nfcntl.lockf(fd, fcntl.LOCK_EX)\n\
              print('locked', flush=True)\ntime.sleep(600)\n";
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(py)
        .arg(m2.p("h"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    assert_eq!(try_lock(&m1), Some(11), "the lock of a live mount must hold");
    m2.proc.as_mut().unwrap().kill9();
    let _ = holder.kill();
    let _ = holder.wait();
    let t = std::time::Instant::now();
    let mut freed = false;
    while t.elapsed() < Duration::from_secs(30) {
        match try_lock(&m1) {
            Some(0) => {
                freed = true;
                break;
            }
            Some(11) => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("lock attempt failed: {other:?}"),
        }
    }
    assert!(freed, "a dead mount's lock was never freed (lease 2 s)");
    eprintln!("a dead mount's lock was freed {:?} after its daemon was killed", t.elapsed());
}

/// A directory listing (readdirplus) shows the size of a file as this
/// mount sees it, with bytes not yet saved: a file being streamed, and a
/// file with local changes. Meta's older size would make the kernel cut
/// the file's cached pages, and an O_APPEND writer append at the old end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_show_the_size_of_unsaved_writes() {
    need_fuse!("listings_show_the_size_of_unsaved_writes");
    let n = node().await;
    let m = Mount::start(&n, &[]);
    let py = r#"
import os, sys
d = sys.argv[1]
def listed():
    return {e: os.stat(f"{d}/{e}").st_size for e in os.listdir(d)}
with open(f"{d}/staged", "wb") as f: f.write(b"s" * 3000)
for name, first in [("streamed", b""), ("staged", b"s" * 3000)]:
    p = f"{d}/{name}"
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    os.write(fd, b"a" * 5000)
    sizes = listed()  # the first listing of an open directory is a readdirplus
    assert sizes[name] == len(first) + 5000, (name, sizes)
    os.write(fd, b"b" * 7000)
    os.close(fd)
    data = open(p, "rb").read()
    assert data == first + b"a" * 5000 + b"b" * 7000, (name, len(data), data.count(b"a"), data.count(b"b"))
print("listings ok")
"#;
    std::fs::create_dir(m.p("ls")).unwrap();
    let out = Command::new("python3").arg("-c").arg(py).arg(m.p("ls")).output().unwrap();
    assert!(out.status.success(), "python: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let fs = n.fs().unwrap();
    assert_eq!(fs.read_all("/ls/streamed").await.unwrap().len(), 12_000);
    assert_eq!(fs.read_all("/ls/staged").await.unwrap().len(), 15_000);
}

/// A seal of streamed bytes that fails when another caller triggered it
/// (here a rename, after another client deleted the file being written)
/// is reported to the writer at its close: the bytes are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_seal_is_reported_to_the_writer() {
    need_fuse!("a_failed_seal_is_reported_to_the_writer");
    let n = node().await;
    let m = Mount::start(&n, &[]);
    let fs = n.fs().unwrap();
    std::fs::create_dir(m.p("seal")).unwrap();
    let mut writer = Stepper::start(
        "import os, sys\nfd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644)\nos.write(fd, b'x' * 100000)\n\
         print('written', flush=True)\nsys.stdin.readline()\n\
         try:\n    os.rename(sys.argv[1], sys.argv[2])\n    print('renamed', flush=True)\n\
         except OSError:\n    print('rename failed', flush=True)\n\
         try:\n    os.close(fd)\n    print('closed', flush=True)\n\
         except OSError:\n    print('close failed', flush=True)\n\
         sys.stdin.readline()\n",
        &[m.p("seal/f"), m.p("seal/g")],
    );
    writer.expect("written");
    fs.delete("/seal/f", false).await.unwrap();
    writer.step("rename failed");
    writer.expect("close failed");
    writer.finish();
}

/// An O_CREAT open without O_TRUNC keeps the bytes of a file another
/// client made after the kernel's lookup found no such name: the kernel
/// then asks to create it, and the file must be opened, not replaced.
/// The other client's name appears at once, complete (a link); the race
/// is run many times, each outcome checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_racing_another_clients_file_keeps_its_bytes() {
    need_fuse!("a_create_racing_another_clients_file_keeps_its_bytes");
    let n = node().await;
    let m = Mount::start(&n, &[]);
    let fs = n.fs().unwrap();
    fs.mkdir("/cr", false).await.unwrap();
    let mut appender = Stepper::start(
        "import os, sys\nprint('ready', flush=True)\nfor line in sys.stdin:\n    p = f'{sys.argv[1]}/f{line.strip()}'\n\
         \x20   fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)\n    os.write(fd, b'b')\n    os.close(fd)\n\
         \x20   print('done', flush=True)\n",
        &[m.p("cr")],
    );
    appender.expect("ready");
    let theirs = vec![b'a'; 1000];
    let (mut linked, mut created) = (0, 0);
    for i in 0..200 {
        fs.write_all(&format!("/cr/src{i}"), &theirs, false).await.unwrap();
        std::io::Write::write_all(&mut appender.told, format!("{i}\n").as_bytes()).unwrap();
        let link = fs.link(&format!("/cr/src{i}"), &format!("/cr/f{i}")).await;
        appender.expect("done");
        let got = fs.read_all(&format!("/cr/f{i}")).await.unwrap();
        match link {
            // The other client's file came first: the open appended to it.
            Ok(_) => {
                linked += 1;
                assert!(got.len() == 1001 && got[..1000] == theirs[..] && got[1000] == b'b', "round {i}: {} bytes", got.len());
            }
            // The mount's create came first.
            Err(e) => {
                assert_eq!(e.kind(), curvine_common::ErrorKind::AlreadyExists, "round {i}: {e}");
                created += 1;
                assert_eq!(got, b"b", "round {i}");
            }
        }
    }
    eprintln!("create races: {linked} opened the other client's file, {created} created it");
    drop(appender.told);
    assert!(appender.child.wait().unwrap().success());
}

/// Opens racing truncates of a closed file (each saved at once, its state
/// then dropped): every handle is counted on the state writes find, so
/// no write fails for want of one (EBADF).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_racing_truncates_keep_their_handles() {
    need_fuse!("opens_racing_truncates_keep_their_handles");
    let n = node().await;
    let m = Mount::start(&n, &[]);
    let py = r#"
import os, sys, threading
p = sys.argv[1]
open(p, "wb").close()
stop = []
def truncate():
    i = 0
    while not stop:
        os.truncate(p, i % 7); i += 1
t = threading.Thread(target=truncate); t.start()
try:
    for i in range(500):
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
finally:
    stop.append(1); t.join()
print("opens ok")
"#;
    let out = Command::new("python3").arg("-c").arg(py).arg(m.p("t")).output().unwrap();
    assert!(out.status.success(), "python: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// With the attribute cache on, a directory's attributes kept by the mount
/// follow the creates, unlinks, mkdirs and rmdirs made through it: after
/// each, a stat through the mount shows the times and link count meta gave
/// the directory, and comes from the mount's copy (a mode changed through
/// the SDK meanwhile does not show until the timeout), not from meta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_attributes_follow_changes_made_through_the_mount() {
    use std::os::unix::fs::MetadataExt;
    need_fuse!("directory_attributes_follow_changes_made_through_the_mount");
    let n = node().await;
    let m = Mount::start(&n, &["--attr-timeout", "120", "--entry-timeout", "120"]);
    let fs = n.fs().unwrap();
    std::fs::create_dir(m.p("d")).unwrap();
    let mode0 = std::fs::metadata(m.p("d")).unwrap().mode() & 0o7777;
    let mounted = || {
        let md = std::fs::metadata(m.p("d")).unwrap();
        let ms = |s: i64, ns: i64| s * 1000 + ns / 1_000_000;
        (ms(md.mtime(), md.mtime_nsec()), ms(md.ctime(), md.ctime_nsec()), md.nlink() as u32, md.mode() & 0o7777)
    };
    let d = m.p("d");
    let steps: Vec<(&str, Box<dyn Fn()>)> = vec![
        ("create", Box::new(|| drop(std::fs::File::create(d.join("f")).unwrap()))),
        ("unlink", Box::new(|| std::fs::remove_file(d.join("f")).unwrap())),
        ("mkdir", Box::new(|| std::fs::create_dir(d.join("s")).unwrap())),
        ("second mkdir", Box::new(|| std::fs::create_dir(d.join("t")).unwrap())),
        ("rmdir", Box::new(|| std::fs::remove_dir(d.join("s")).unwrap())),
        ("create again", Box::new(|| drop(std::fs::File::create(d.join("g")).unwrap()))),
        ("unlink again", Box::new(|| std::fs::remove_file(d.join("g")).unwrap())),
        ("last rmdir", Box::new(|| std::fs::remove_dir(d.join("t")).unwrap())),
    ];
    for (i, (what, step)) in steps.iter().enumerate() {
        // Meta's clock counts milliseconds: let it move, so a copy left
        // at the previous step's time would show.
        std::thread::sleep(Duration::from_millis(3));
        step();
        let st = fs.stat("/d").await.unwrap();
        let want = (st.mtime_ms, st.ctime_ms.max(st.mtime_ms), st.nlink.max(2), mode0);
        // Another client changes the mode: the mount's copy does not see it.
        fs.set_attr("/d", Some(0o700 + i as u32), None).await.unwrap();
        assert_eq!(mounted(), want, "after the {what}: (mtime ms, ctime ms, links, mode) through the mount");
    }
    assert_eq!(fs.stat("/d").await.unwrap().nlink.max(2), 2);
}

/// `--negative-timeout`: the kernel remembers a missing name, so a file
/// another client makes meanwhile stays invisible there until the timeout
/// (without the option it shows at once). An O_CREAT open of such a name
/// reaches the daemon as a create of a file that exists: O_EXCL fails with
/// EEXIST, O_APPEND opens the other client's file and adds to its bytes.
/// A name created through the mount itself shows at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_names_are_remembered_only_when_asked() {
    use std::io::Write;
    need_fuse!("missing_names_are_remembered_only_when_asked");
    let n = node().await;
    let cached = Mount::start(&n, &["--negative-timeout", "600"]);
    let plain = Mount::start(&n, &[]);
    let fs = n.fs().unwrap();
    fs.mkdir("/neg", false).await.unwrap();
    let missing = |p: PathBuf| std::fs::metadata(&p).err().map(|e| e.kind()) == Some(std::io::ErrorKind::NotFound);
    for name in ["a", "c"] {
        assert!(missing(cached.p(&format!("neg/{name}"))) && missing(plain.p(&format!("neg/{name}"))));
        fs.write_all(&format!("/neg/{name}"), b"theirs", false).await.unwrap();
        assert_eq!(std::fs::metadata(plain.p(&format!("neg/{name}"))).unwrap().len(), 6, "no negative entries by default");
        assert!(missing(cached.p(&format!("neg/{name}"))), "the missing {name} is remembered");
    }
    let err = std::fs::OpenOptions::new().write(true).create_new(true).open(cached.p("neg/a")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert!(missing(cached.p("neg/c")), "still remembered as missing: the open below creates");
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(cached.p("neg/c")).unwrap();
    f.write_all(b"+mine").unwrap();
    drop(f);
    assert_eq!(fs.read_all("/neg/c").await.unwrap(), b"theirs+mine");
    assert_eq!(std::fs::read(cached.p("neg/c")).unwrap(), b"theirs+mine");
    assert_eq!(fs.read_all("/neg/a").await.unwrap(), b"theirs", "a failed O_EXCL create changes nothing");
    assert!(missing(cached.p("neg/b")));
    std::fs::write(cached.p("neg/b"), b"made here").unwrap();
    assert_eq!(std::fs::read(cached.p("neg/b")).unwrap(), b"made here");
}

/// A read handle reads the version its open found (meta's open answers
/// with the blocks, so the first read asks meta nothing): a rewrite through
/// its own mount shows through it, as an O_TRUNC rewrite does on a local
/// file system, while a handle on a file that another client replaced or
/// removed meanwhile reads the old bytes while they last (from this host's
/// block files) and then answers ESTALE, as on NFS; never the bytes of
/// the file now at that name. Opens afterwards read the new file. (With
/// no entry cache, every open's reader comes from the open itself, not
/// from a lookup just before it: see `looked.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_handles_follow_their_mount_and_never_read_a_replacement() {
    need_fuse!("read_handles_follow_their_mount_and_never_read_a_replacement");
    let n = node().await;
    let m = Mount::start(&n, &["--entry-timeout", "0"]);
    let fs = n.fs().unwrap();
    let (a, b) = (random_bytes(200_000, 11), random_bytes(150_000, 12));
    let read_all = |f: &std::fs::File| {
        let mut got = vec![0u8; 300_000];
        f.read_at(&mut got, 0).map(|k| {
            got.truncate(k);
            got
        })
    };

    std::fs::write(m.p("mine"), &a).unwrap();
    let early = std::fs::File::open(m.p("mine")).unwrap();
    std::fs::write(m.p("mine"), &b).unwrap();
    assert!(read_all(&early).unwrap() == b, "a handle open across its mount's rewrite reads the new bytes");

    for (name, replace) in [("replaced", true), ("removed", false)] {
        fs.write_all(&format!("/{name}"), &a, false).await.unwrap();
        let early = std::fs::File::open(m.p(name)).unwrap();
        if replace {
            fs.write_all(&format!("/{name}"), &b, true).await.unwrap();
        } else {
            fs.delete(&format!("/{name}"), false).await.unwrap();
        }
        match read_all(&early) {
            Ok(got) => assert!(got == a, "{name}: the handle read {} bytes that are not its file's", got.len()),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{name}: {e}"),
        }
        if replace {
            assert!(std::fs::read(m.p(name)).unwrap() == b, "a new open reads the new file");
        }
    }
}

/// Meta calls answered so far, by operation (`curvine_meta_rpc_total`).
fn meta_calls(n: &Node, op: &str) -> u64 {
    let metrics = http_get(&n.web_addr(), "/metrics");
    let want = format!("curvine_meta_rpc_total{{op=\"{op}\",");
    metrics.lines().filter(|l| l.starts_with(&want)).map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).sum()
}

/// A small file read through the mount costs one meta call: the lookup's
/// stat carries the file's blocks (`looked.rs`) and the open that follows
/// uses them. An open whose lookup is older than the window (here: the
/// name's dentry kept by the kernel, its lookup long past) asks meta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_read_asks_meta_once() {
    need_fuse!("a_small_file_read_asks_meta_once");
    let n = node().await;
    let m = Mount::start(&n, &["--entry-timeout", "30", "--attr-timeout", "30"]);
    let fs = n.fs().unwrap();
    fs.mkdir("/few", false).await.unwrap();
    let files = 20u64;
    for i in 0..files {
        fs.write_all(&format!("/few/f{i}"), &random_bytes(64 << 10, i), false).await.unwrap();
    }
    assert!(std::fs::metadata(m.p("few")).unwrap().is_dir());
    let (stats, opens) = (meta_calls(&n, "stat"), meta_calls(&n, "open"));
    for i in 0..files {
        assert!(std::fs::read(m.p(&format!("few/f{i}"))).unwrap() == random_bytes(64 << 10, i), "f{i}");
    }
    let (stats, opens) = (meta_calls(&n, "stat") - stats, meta_calls(&n, "open") - opens);
    eprintln!("{files} small files read: {stats} stats, {opens} opens at meta");
    assert_eq!(stats, files, "one lookup per file");
    // A lookup's answer serves an open for 100 ms: a stall of the test
    // machine between the two may cost an open now and then.
    assert!(opens <= files / 4, "{opens} of {files} opens asked meta again");

    // A lookup long before the open (the dentry is kept for 30 s, so the
    // open comes without one): the open asks meta itself.
    let opens = meta_calls(&n, "open");
    for i in 0..4 {
        let p = m.p(&format!("few/late{i}"));
        fs.write_all(&format!("/few/late{i}"), b"late", false).await.unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4);
        tokio::time::sleep(Duration::from_millis(250)).await; // past the 100 ms window
        assert_eq!(std::fs::read(&p).unwrap(), b"late");
    }
    assert_eq!(meta_calls(&n, "open") - opens, 4, "opens past the window ask meta");
}

/// A lookup's reader (`looked.rs`) never outlives a change made through the
/// same mount: a name stat-ed, then truncated through the mount (no open
/// in between to drop the kept reader), then opened at once reads and
/// fstat-s the new length, on a normal mount and on a passthrough one
/// (where a stale reader would become the kernel's backing file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookups_reader_never_outlives_a_change_through_the_mount() {
    need_fuse!("a_lookups_reader_never_outlives_a_change_through_the_mount");
    let n = node().await;
    let fs = n.fs().unwrap();
    let old = random_bytes(64 << 10, 5);
    let py = r#"
import os, sys
p, size = sys.argv[1], int(sys.argv[2])
old = open(sys.argv[3], "rb").read()
os.stat(p)                       # the lookup: keeps a reader of the old bytes
os.truncate(p, size)             # a new version, made through the mount
with open(p, "rb") as f:         # at once, within the lookup's window
    got, st = f.read(), os.fstat(f.fileno()).st_size
assert got == old[:size] and st == size, (len(got), st, size)
print("ok")
"#;
    let work = tempfile::tempdir().unwrap();
    let old_file = work.path().join("old");
    std::fs::write(&old_file, &old).unwrap();
    for (i, extra) in [&[][..], &["--passthrough"][..]].into_iter().enumerate() {
        let m = Mount::start(&n, extra);
        for size in [0usize, 1000] {
            let name = format!("lk{i}-{size}");
            fs.write_all(&format!("/{name}"), &old, false).await.unwrap();
            let out = Command::new("python3").arg("-c").arg(py).arg(m.p(&name)).arg(size.to_string()).arg(&old_file).output().unwrap();
            assert!(
                out.status.success(),
                "mount {extra:?}, truncated to {size}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// An open served by its lookup's answer (`--open-after-lookup`) of a file
/// that another client replaced in between, and whose old block is gone by
/// the first read, reads the new file — what an open asking meta would
/// have found — rather than failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_after_a_stale_lookup_reads_the_new_file() {
    need_fuse!("an_open_after_a_stale_lookup_reads_the_new_file");
    let n = node().await;
    let fs = n.fs().unwrap();
    let m = Mount::start(&n, &["--attr-timeout", "60", "--entry-timeout", "60", "--open-after-lookup", "60"]);
    let (a, b) = (random_bytes(64 << 10, 21), random_bytes(48 << 10, 22));
    fs.write_all("/rf", &a, false).await.unwrap();
    let old = fs.open("/rf").await.unwrap().blocks()[0].id;
    assert_eq!(std::fs::metadata(m.p("rf")).unwrap().len(), a.len() as u64); // the lookup
    fs.write_all("/rf", &b, true).await.unwrap();
    let blocks = n.mem_dir().join("blocks");
    testbed::wait_for("the replaced file's block to leave the worker", Duration::from_secs(20), || {
        let gone = !blocks.join(old.to_string()).exists() && !blocks.join(format!("{old}.at")).exists();
        async move { gone }
    })
    .await
    .unwrap();
    let got = std::fs::read(m.p("rf")).unwrap();
    assert!(got == b, "read {} bytes, not the new file's", got.len());
}
