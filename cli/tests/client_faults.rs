//! The client against workers and meta that stop answering, die or come
//! back, with separate `cv meta` and `cv worker` processes (and a relay in
//! front of meta that can lose requests): reads fall back from a stopped
//! same-host worker, writes move off a dead worker meta still counts live,
//! a worker restarted on its old port gets a fresh connection, and a
//! cancelled close or write leaves no incomplete file behind.
//!
//! Meta creates a file complete and empty (`CreateSealed`); the writer's
//! first block opens it again. So a file is incomplete only once its writer
//! has written something, which the tests check before they cancel.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use curvine_client::{CreateOptions, ErrorKind, FileSystem, ReportResponse};
use curvine_common::config::ClientConf;
use testbed::{wait_for, Split};

const MIB: usize = 1 << 20;

/// A client of `c`'s meta with its own connections and caches.
fn client(c: &Split, timeout: Duration, short_circuit: bool) -> FileSystem {
    FileSystem::new(ClientConf { meta: vec![c.meta_addr()], timeout, short_circuit, ..Default::default() }).unwrap()
}

/// Index in `c.workers` of the process serving the worker address `addr`.
fn worker_at(c: &Split, addr: &str) -> usize {
    c.workers
        .iter()
        .position(|p| p.addr("worker").ok().as_deref() == Some(addr))
        .unwrap_or_else(|| panic!("no worker process serves {addr}"))
}

/// Free bytes of worker `id` as meta last heard (what placement sorts by).
fn free(r: &ReportResponse, id: u64) -> u64 {
    r.workers
        .iter()
        .filter(|w| w.id == id)
        .flat_map(|w| &w.tiers)
        .map(|t| t.capacity.saturating_sub(t.used).saturating_sub(t.reserved))
        .sum()
}

/// The state letter of process `pid` (`T` when stopped), from /proc.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A child process stopped with SIGSTOP: alive, its kernel still accepts
/// connections and buffers bytes, it answers nothing. Dropping the guard
/// continues it, also when an assertion fails in between.
struct Stopped(u32);

impl Stopped {
    async fn new(pid: u32) -> Stopped {
        // SAFETY: kill(2) on the pid of a child this test started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0, "SIGSTOP {pid}");
        let s = Stopped(pid);
        wait_for("the process to be stopped", Duration::from_secs(10), || async { proc_state(pid) == Some('T') })
            .await
            .unwrap();
        s
    }

    /// SIGCONT, and wait until the process runs again.
    async fn resume(self) {
        let pid = self.0;
        drop(self);
        wait_for("the process to run again", Duration::from_secs(10), || async { proc_state(pid).is_some_and(|s| s != 'T') })
            .await
            .unwrap();
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in `new`. Errors ignored: this may run while unwinding.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// A TCP relay to `upstream` on an OS-chosen port. After `hold`, what
/// clients send on the connections open so far is swallowed (counted,
/// never delivered: requests lost on the way); `cut` closes those
/// connections. Connections opened later are relayed as they are.
struct Relay {
    addr: String,
    held: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<(tokio::task::JoinHandle<()>, Arc<AtomicBool>)>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: &str) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<(tokio::task::JoinHandle<()>, Arc<AtomicBool>)>>> = Arc::default();
        let (upstream, h, cs) = (upstream.to_string(), held.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let hold = Arc::new(AtomicBool::new(false));
                let task = tokio::spawn(relay_conn(down, upstream.clone(), hold.clone(), h.clone()));
                cs.lock().unwrap().push((task, hold));
            }
        });
        Relay { addr, held, conns, accept }
    }

    fn hold(&self) {
        for (_, hold) in self.conns.lock().unwrap().iter() {
            hold.store(true, Ordering::SeqCst);
        }
    }

    /// Bytes swallowed since `hold`.
    fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    fn cut(&self) {
        for (task, _) in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Relays one connection until either side closes it (or the task is
/// aborted, which closes both).
async fn relay_conn(down: tokio::net::TcpStream, upstream: String, hold: Arc<AtomicBool>, held: Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(up) = tokio::net::TcpStream::connect(&upstream).await else { return };
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    let back = async {
        let _ = tokio::io::copy(&mut ur, &mut dw).await;
    };
    let forth = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match dr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if hold.load(Ordering::SeqCst) {
                held.fetch_add(n as u64, Ordering::SeqCst);
            } else if uw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = back => {}
        _ = forth => {}
    }
}

/// Checks that a read whose first copy is on a same-host worker that
/// stopped answering (SIGSTOP) returns the file's bytes from the other copy
/// within a deadline, and that it tried the short-circuit path first
/// (a fallback counted). Fails if a same-host socket exchange had no
/// timeout (the read hangs past the deadline) or the local path was never
/// tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_local_worker_falls_back_instead_of_hanging() {
    let c = Split::start(bin(), 2, "256MiB").await.unwrap();
    let timeout = Duration::from_secs(3);
    let fs = client(&c, timeout, true);
    let data = random_bytes((3 * MIB) + 5, 1);
    let mut w = fs.create("/r", CreateOptions { replication: 2, ..Default::default() }).await.unwrap();
    w.write(&data).await.unwrap();
    w.close().await.unwrap();
    let blocks = fs.open("/r").await.unwrap().blocks().to_vec();
    let locs = &blocks[0].locations;
    assert_eq!(locs.len(), 2, "two copies of the block: {locs:?}");
    // Both workers are on this host: a reader tries them in meta's order.
    let idx = worker_at(&c, &locs[0].addr);
    // A client that has opened nothing: no block descriptor cached before the stop.
    let fresh = client(&c, timeout, true);
    let stopped = Stopped::new(c.workers[idx].pid().unwrap()).await;
    let t = Instant::now();
    // The deadline: well past the few client timeouts a fallback may take.
    let got = tokio::time::timeout(timeout * 20, fresh.read_all("/r")).await;
    let took = t.elapsed();
    stopped.resume().await;
    let stats = fresh.local_stats();
    eprintln!("stopped worker {} (process {idx}): read took {took:?}; local stats {stats:?}", locs[0].worker_id);
    let got = got.unwrap_or_else(|_| panic!("read still running after {took:?}")).expect("read");
    assert!(got == data, "the bytes read differ from the bytes written");
    assert!(stats.fallbacks >= 1, "the read never tried the stopped worker's short-circuit: {stats:?}");
}

/// Checks that while meta still counts a killed worker live and places new
/// blocks on it first (it has the most free space), writes go to the other
/// worker and read back identical. Fails if a writer gave up when no placed
/// worker could open its block instead of asking meta for another
/// placement. The test would prove nothing if meta noticed the death before
/// the writes ended (it would not place there): it checks that it did not,
/// with meta's worker timeout raised so that it cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_move_off_a_dead_worker_meta_still_places_blocks_on() {
    let mut c = Split::start_with(bin(), 2, "256MiB", "[meta]\nworker_timeout = \"120s\"\n").await.unwrap();
    let fs = c.fs().unwrap();
    // Fill one worker (x) so the other (y) has more free space.
    fs.write_all("/fill", &random_bytes(16 * MIB, 9), false).await.unwrap();
    let x = fs.open("/fill").await.unwrap().blocks()[0].locations[0].worker_id;
    let r = fs.report().await.unwrap();
    let y = r.workers.iter().find(|w| w.id != x).expect("a second worker").clone();
    wait_for("meta to see more free space on the empty worker", Duration::from_secs(30), || async {
        fs.report().await.map(|r| free(&r, y.id) > free(&r, x)).unwrap_or(false)
    })
    .await
    .unwrap();
    let r = fs.report().await.unwrap();
    eprintln!("free as meta sees it: worker {x} {} B, worker {} {} B", free(&r, x), y.id, free(&r, y.id));
    let idx = worker_at(&c, &y.addr);
    tokio::task::block_in_place(|| c.workers[idx].kill9());
    eprintln!("killed worker {} (process {idx})", y.id);

    let t = Instant::now();
    for i in 0..4usize {
        let data = random_bytes(MIB + i, 20 + i as u64);
        let p = format!("/w{i}");
        fs.write_all(&p, &data, false).await.unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(fs.read_all(&p).await.unwrap() == data, "{p} reads back different bytes");
        let on: Vec<u64> = fs.open(&p).await.unwrap().blocks()[0].locations.iter().map(|l| l.worker_id).collect();
        assert_eq!(on, vec![x], "{p} must be on the live worker only");
    }
    let took = t.elapsed();
    let r = fs.report().await.unwrap();
    let alive: Vec<(u64, bool)> = r.workers.iter().map(|w| (w.id, w.alive)).collect();
    eprintln!("4 writes after the kill took {took:?}; meta's workers (id, alive): {alive:?}");
    assert!(
        r.workers.iter().any(|w| w.id == y.id && w.alive),
        "meta noticed the death before the writes ended: the test proved nothing"
    );
    assert!(free(&r, y.id) > free(&r, x), "meta would no longer place on the dead worker first: the test proved nothing");
}

/// Checks that a client that pooled a data connection to a worker writes
/// to it again after the worker is killed and restarted on the same address
/// (same id): the dead pooled connection is replaced by a new one. Fails if
/// the writer took the failed open on the dead connection for the worker's
/// answer: with one worker, meta would then have nowhere else to place the
/// block and the write would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_restarted_on_the_same_port_gets_a_fresh_connection() {
    let mut c = Split::start(bin(), 1, "256MiB").await.unwrap();
    // Over TCP only, so the write uses the pooled data connection.
    let fs = client(&c, Duration::from_secs(10), false);
    let a = random_bytes(100_000, 1);
    fs.write_all("/a", &a, false).await.unwrap(); // leaves a connection in the pool
    let addr = c.workers[0].addr("worker").unwrap();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let mut args = c.workers[0].args().to_vec();
    let at = args.iter().position(|s| s == "--port").expect("--port in the worker's arguments");
    args[at + 1] = port;
    let old_pid = c.workers[0].pid().unwrap();
    tokio::task::block_in_place(|| {
        c.workers[0].kill9();
        c.workers[0].restart_with(args)
    })
    .unwrap();
    assert_eq!(c.workers[0].addr("worker").unwrap(), addr, "restarted on the same address");
    c.wait_workers(1).await.unwrap();
    eprintln!("worker on {addr}: pid {old_pid} killed, pid {} started", c.workers[0].pid().unwrap());
    let t = Instant::now();
    let b = random_bytes(200_000, 2);
    fs.write_all("/b", &b, false).await.expect("write after a restart on the same port");
    eprintln!("write after the restart took {:?}", t.elapsed());
    assert!(fs.read_all("/b").await.unwrap() == b, "/b reads back different bytes");
    assert!(fs.read_all("/a").await.unwrap() == a, "/a, written before the restart, reads back different bytes");
}

/// Checks that a close cancelled while its complete is on the way to meta,
/// a complete meta never gets (the connection carrying it is lost), leaves
/// no file behind: the writer is done only once meta answered, so the
/// dropped close aborts the file. Fails if a cancelled close left the
/// writer marked done: nothing would abort the file, which would stay
/// incomplete. (Meta itself is not stopped here: a stopped meta reads the
/// cancelled complete once continued and applies it, which hides the bug.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_close_cancelled_during_complete_leaves_no_incomplete_file() {
    let c = Split::start(bin(), 1, "256MiB").await.unwrap();
    let relay = Relay::start(&c.meta_addr()).await;
    let fs = FileSystem::new(ClientConf { meta: vec![relay.addr.clone()], timeout: Duration::from_secs(10), ..Default::default() })
        .unwrap();
    let data = random_bytes(300_000, 5);
    let mut w = fs.create("/c", CreateOptions::default()).await.unwrap();
    let st = fs.stat("/c").await.unwrap();
    assert!(st.complete && st.len == 0, "meta creates a file complete and empty: {st:?}");
    w.write(&data).await.unwrap();
    assert!(!fs.stat("/c").await.unwrap().complete, "the writer's first block opens the file again");

    // The close commits the block on the worker (meta is not involved),
    // then sends its complete over the held connection: meta never gets it.
    relay.hold();
    let t = Instant::now();
    let mut close = Box::pin(w.close());
    let finished = tokio::select! {
        r = &mut close => Some(r),
        r = wait_for("the complete to reach the relay", Duration::from_secs(30), || async { relay.held() > 0 }) => {
            r.unwrap();
            None
        }
    };
    assert!(finished.is_none(), "the close finished though meta never got its complete: {finished:?}");
    drop(close);
    let (waited, held) = (t.elapsed(), relay.held());
    // The connection is lost; the client reconnects through the relay.
    relay.cut();
    let t = Instant::now();
    let gone = wait_for("the file to go", Duration::from_secs(30), || async {
        matches!(fs.stat("/c").await, Err(e) if e.kind() == ErrorKind::NotFound)
    })
    .await;
    let state = fs.stat("/c").await.map(|s| (s.complete, s.len));
    eprintln!(
        "close dropped after {waited:?} with {held} bytes held by the relay; after the cut, in {:?}: (complete, len) {state:?}",
        t.elapsed()
    );
    gone.unwrap_or_else(|e| panic!("{e}: the file is left as (complete, len) {state:?}"));
    assert!(!c.fs().unwrap().exists("/c").await.unwrap(), "meta still has the file");
}

/// Checks that a write dropped mid-way (its worker stopped, so it cannot
/// finish) poisons the writer: the next write fails with an error saying
/// so, the file is aborted (gone, neither incomplete nor complete with part
/// of the bytes), and close fails too. Fails if a writer went on after a
/// cancelled write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_write_poisons_the_writer_and_leaves_no_file() {
    let c = Split::start(bin(), 1, "256MiB").await.unwrap();
    // Over TCP: a direct write into a tier file would not involve the worker.
    let fs = client(&c, Duration::from_secs(5), false);
    let mut w = fs.create("/c", CreateOptions { block_size: MIB as u64, ..Default::default() }).await.unwrap();
    w.write(&random_bytes(5000, 3)).await.unwrap();
    assert!(!fs.stat("/c").await.unwrap().complete, "the writer's first block opens the file again");
    let stopped = Stopped::new(c.workers[0].pid().unwrap()).await;
    // The write crosses the 1 MiB block boundary, where the writer waits
    // for the worker's commit answer: it cannot finish while the worker is
    // stopped, whatever the socket buffers take. The bounded wait lets time
    // pass to show it does not finish (any length would do); then it is
    // dropped mid-way.
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_millis(500), w.write(&random_bytes(3 * MIB, 4))).await;
    let ran = t.elapsed();
    stopped.resume().await;
    assert!(r.is_err(), "the write finished with its worker stopped: {r:?}");
    let t = Instant::now();
    let e = w.write(b"more").await.expect_err("a writer whose write was cancelled refuses more");
    let refused = t.elapsed();
    eprintln!("write dropped after {ran:?}; the next write failed in {refused:?}: {e}");
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.to_string().contains("cancelled"), "the error says why: {e}");
    // The refused write aborted the file before it returned.
    assert!(!fs.exists("/c").await.unwrap(), "the poisoned writer's file is still there");
    let e = w.close().await.expect_err("close of a poisoned writer");
    eprintln!("close: {e}");
    assert!(!fs.exists("/c").await.unwrap(), "close left a file");
}
