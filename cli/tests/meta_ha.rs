//! The meta group under faults: three real `cv meta` processes on loopback,
//! clients writing through every fault, and after each fault a check that
//! every acknowledged operation is there exactly once, nothing unacknowledged
//! is half there, and all members hold identical state (same digest).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use curvine_client::{CreateOptions, FileSystem};
use testbed::group::Group;

const FAILOVER: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(60);
/// Small snapshot interval and write timeout, so snapshots, log purges and
/// "no quorum" answers happen within the test.
const META_TOML: &str = "snapshot_logs = 300\nwrite_timeout = \"3s\"";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Create,
    Rename,
    Delete,
}

/// One client's history: per file number, its operations and whether each
/// was acknowledged.
type History = BTreeMap<u64, Vec<(Kind, bool)>>;

/// Creates files `/c{k}/f{n}`, renames every third to `r{n}`, deletes every
/// fifth, until `stop`; after a failed operation a file is left alone.
/// `acked` counts the acknowledged operations of all clients as they come.
async fn client(fs: FileSystem, k: usize, first: u64, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) -> (History, u64) {
    let mut h = History::new();
    let mut n = first;
    let mut errors = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let f = format!("/c{k}/f{n}");
        let r = format!("/c{k}/r{n}");
        let ops = h.entry(n).or_default();
        let res = match fs.create(&f, CreateOptions { overwrite: false, ..Default::default() }).await {
            Ok(w) => w.close().await.map(|_| ()),
            Err(e) => Err(e),
        };
        ops.push((Kind::Create, res.is_ok()));
        acked.fetch_add(u64::from(res.is_ok()), Ordering::Relaxed);
        if res.is_err() {
            errors += 1;
            continue;
        }
        let mut name = f.clone();
        if n % 3 == 0 {
            let res = fs.rename(&f, &r).await;
            ops.push((Kind::Rename, res.is_ok()));
            acked.fetch_add(u64::from(res.is_ok()), Ordering::Relaxed);
            if res.is_err() {
                errors += 1;
                continue;
            }
            name = r.clone();
        }
        if n % 5 == 0 {
            let res = fs.delete(&name, false).await;
            ops.push((Kind::Delete, res.is_ok()));
            acked.fetch_add(u64::from(res.is_ok()), Ordering::Relaxed);
            errors += u64::from(res.is_err());
        }
    }
    (h, errors)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum At {
    Absent,
    F,
    R,
}

/// Where file `n` may be after `ops`: acknowledged operations happened
/// once; an unacknowledged one happened wholly or not at all.
fn allowed(ops: &[(Kind, bool)]) -> BTreeSet<At> {
    let mut now = BTreeSet::from([At::Absent]);
    for (kind, acked) in ops {
        let next: BTreeSet<At> = now
            .iter()
            .map(|s| match (kind, s) {
                (Kind::Create, At::Absent) => At::F,
                (Kind::Rename, At::F) => At::R,
                (Kind::Delete, _) => At::Absent,
                (_, s) => *s,
            })
            .collect();
        now = if *acked { next } else { now.union(&next).copied().collect() };
    }
    now
}

#[derive(Default, Debug)]
struct Tally {
    acked: u64,
    unacked: u64,
    files: u64,
}

/// Checks every client's files against its history through `fs`.
async fn verify(fs: &FileSystem, histories: &[History]) -> Tally {
    let mut t = Tally::default();
    for (k, h) in histories.iter().enumerate() {
        let listed: BTreeSet<String> = fs.list(&format!("/c{k}")).await.expect("list").into_iter().map(|s| s.name).collect();
        for (n, ops) in h {
            let (f, r) = (listed.contains(&format!("f{n}")), listed.contains(&format!("r{n}")));
            assert!(!(f && r), "client {k} file {n} exists under both names (applied twice?): {ops:?}");
            let at = if f { At::F } else if r { At::R } else { At::Absent };
            let ok = allowed(ops);
            assert!(ok.contains(&at), "client {k} file {n}: found {at:?}, allowed {ok:?} after {ops:?}");
            t.acked += ops.iter().filter(|o| o.1).count() as u64;
            t.unacked += ops.iter().filter(|o| !o.1).count() as u64;
            t.files += u64::from(at != At::Absent);
        }
        for name in &listed {
            let n: Option<u64> = name.get(1..).and_then(|s| s.parse().ok());
            assert!(n.is_some_and(|n| h.contains_key(&n)), "client {k}: unexpected entry {name}");
        }
    }
    t
}

/// Acknowledged operations the storm must see before its fault, and again
/// after it: the group commits before the fault and goes on committing
/// after it.
const PROGRESS: u64 = 20;

/// Runs `clients` writers; once they have operations acknowledged, runs
/// `fault`; keeps them writing for `tail` and until the group has
/// acknowledged more operations after the fault, then stops them.
async fn storm<F, Fut>(g: &mut Group, clients: usize, round: u64, tail: Duration, fault: F) -> Vec<(History, u64)>
where
    F: FnOnce(&mut Group) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let fs = g.fs(FAILOVER).unwrap();
    let tasks: Vec<_> = (0..clients)
        .map(|k| tokio::spawn(client(fs.clone(), k, round * 1_000_000, stop.clone(), acked.clone())))
        .collect();
    let count = || {
        let n = acked.load(Ordering::Relaxed);
        async move { n }
    };
    testbed::wait_for("the storm's first acknowledged operations", FAILOVER, || async { count().await >= PROGRESS })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", g.logs(20)));
    fault(g).await;
    let at_fault = count().await;

    // The storm's length (how far a killed follower falls behind), not a
    // synchronization: progress is waited for below.
    tokio::time::sleep(tail).await;
    testbed::wait_for("acknowledged operations after the fault", FAILOVER, || async { count().await >= at_fault + PROGRESS })
        .await
        .unwrap_or_else(|e| panic!("round {round}: the group stopped committing after the fault: {e}\n{}", g.logs(20)));
    println!("round {round}: {at_fault} operations acknowledged before the fault, {} after", count().await - at_fault);
    stop.store(true, Ordering::Relaxed);
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// How many snapshots member `i` has installed (from its log).
fn installed(g: &Group, i: usize) -> usize {
    std::fs::read_to_string(g.dir().join(format!("m{}.log", i + 1))).unwrap_or_default().matches("installed snapshot").count()
}

/// Creates `path` through `fs` with too few members up: the write must
/// fail with a clear "no quorum" error, which is returned.
async fn refused_without_quorum(fs: &FileSystem, path: &str) -> String {
    let err = match fs.create(path, CreateOptions::default()).await {
        Ok(w) => w.close().await.err(),
        Err(e) => Some(e),
    }
    .expect("a write without a quorum must fail");
    let msg = err.to_string();
    assert!(msg.contains("quorum") || msg.contains("knows no leader"), "not a clear no-quorum error: {msg}");
    msg
}

fn merge(all: &mut [History], round: Vec<(History, u64)>) -> u64 {
    let mut errors = 0;
    for (k, (h, e)) in round.into_iter().enumerate() {
        all[k].extend(h);
        errors += e;
    }
    errors
}

/// Prints the counts of a fault round (the test output records them).
fn report(name: &str, t: &Tally, errors: u64, conv: (u64, u64), started: Instant) {
    println!(
        "fault {name}: {} acknowledged ops, {} failed ({} this round), {} files present, members converged at \
         applied {} digest {:016x}, {:.1} s",
        t.acked,
        t.unacked,
        errors,
        t.files,
        conv.0,
        conv.1,
        started.elapsed().as_secs_f64()
    );
}

/// A group of `n` members, a client, and each storm client's directory and
/// (empty) history.
async fn storm_group(n: usize, clients: usize) -> (Group, FileSystem, Vec<History>) {
    let g = Group::start(common::bin(), n, META_TOML).await.unwrap_or_else(|e| panic!("a meta group of {n}: {e:#}"));
    let fs = g.fs(FAILOVER).unwrap();
    for k in 0..clients {
        fs.mkdir(&format!("/c{k}"), true).await.unwrap();
    }
    (g, fs, vec![History::new(); clients])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_operations_survive_every_fault() {
    const CLIENTS: usize = 4;
    let (mut g, fs, mut all) = storm_group(3, CLIENTS).await;
    let all_members = [0, 1, 2];

    // 1. kill -9 the leader during the storm; it comes back as a follower.
    let started = Instant::now();
    let old = g.leader(FAILOVER).await.unwrap();
    let round = storm(&mut g, CLIENTS, 1, Duration::from_secs(2), |g| {
        g.kill9(old);
        async {}
    })
    .await;
    let errors = merge(&mut all, round);
    let new = g.leader(FAILOVER).await.unwrap();
    assert_ne!(new, old, "a killed member cannot lead");
    let t = verify(&fs, &all).await;
    g.restart(old).unwrap();
    let conv = g.converged(&all_members, CONVERGE).await.unwrap_or_else(|e| panic!("{e}\n{}", g.logs(20)));
    report("kill -9 leader", &t, errors, conv, started);

    // 2. kill -9 a follower; it is behind by more than the log kept after a
    // snapshot when it returns, so it catches up from a snapshot.
    let started = Instant::now();
    let leader = g.leader(FAILOVER).await.unwrap();
    let follower = (leader + 1) % 3;
    let round = storm(&mut g, CLIENTS, 2, Duration::from_secs(3), |g| {
        g.kill9(follower);
        async {}
    })
    .await;
    let errors = merge(&mut all, round);
    let t = verify(&fs, &all).await;
    let installs_before = installed(&g, follower);
    g.restart(follower).unwrap();
    let conv = g.converged(&all_members, CONVERGE).await.unwrap_or_else(|e| panic!("{e}\n{}", g.logs(20)));
    let st = g.status(follower).await.unwrap();
    println!("restarted follower {}: snapshot at {}, log kept from {}", follower + 1, st.snapshot_index, st.log_first_index);
    assert!(st.snapshot_index > 0, "with snapshot_logs = 300 the group must have built snapshots: {st:?}");
    // It was further behind than the log kept after a snapshot: the leader
    // sent it the snapshot.
    let installs = installed(&g, follower);
    assert!(installs > installs_before, "the restarted follower was not sent a snapshot:\n{}", g.logs(30));
    report("kill -9 follower", &t, errors, conv, started);

    // 3. Two of three down: a clear "no quorum" answer, then recovery.
    let started = Instant::now();
    let leader = g.leader(FAILOVER).await.unwrap();
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    g.kill9(a);
    g.kill9(b);
    let impatient = g.fs(Duration::from_secs(1)).unwrap();
    let msg = refused_without_quorum(&impatient, "/c0/no-quorum").await;
    println!("two of three down: write answered \"{msg}\"");
    let err = impatient.stat("/c0").await.expect_err("a linearizable read without a quorum must fail");
    println!("two of three down: stat answered \"{err}\"");
    g.restart(a).unwrap();
    let fs_after = g.fs(FAILOVER).unwrap();
    fs_after.create("/c0/after-quorum", CreateOptions::default()).await.unwrap().close().await.unwrap();
    fs_after.delete("/c0/after-quorum", false).await.unwrap();
    // The write that timed out may still have been applied; it is not
    // part of any client's history.
    let _ = fs_after.delete("/c0/no-quorum", false).await;
    g.restart(b).unwrap();
    let t = verify(&fs, &all).await;
    let conv = g.converged(&all_members, CONVERGE).await.unwrap_or_else(|e| panic!("{e}\n{}", g.logs(20)));
    report("two of three down, then back", &t, 0, conv, started);

    // 4. Every member killed and restarted at once.
    let started = Instant::now();
    for i in 0..3 {
        g.kill9(i);
    }
    g.restart_all(&all_members).unwrap();
    g.leader(FAILOVER).await.unwrap();
    let t = verify(&fs, &all).await;
    let conv = g.converged(&all_members, CONVERGE).await.unwrap_or_else(|e| panic!("{e}\n{}", g.logs(20)));
    report("all restarted at once", &t, 0, conv, started);

    // 5. The leader stops answering (SIGSTOP) during the storm: the others
    // elect a new one and go on; it comes back as a follower and catches up.
    let started = Instant::now();
    let old = g.leader(FAILOVER).await.unwrap();
    let round = storm(&mut g, CLIENTS, 5, Duration::from_secs(4), |g| {
        g.pause(old, true);
        async {}
    })
    .await;
    let errors = merge(&mut all, round);
    let new = g.leader(FAILOVER).await.unwrap();
    assert_ne!(new, old, "a stopped member cannot lead");
    let t = verify(&fs, &all).await;
    g.pause(old, false);
    let conv = g.converged(&all_members, CONVERGE).await.unwrap_or_else(|e| panic!("{e}\n{}", g.logs(20)));
    report("leader paused (SIGSTOP), then resumed", &t, errors, conv, started);
}

/// Whether meta (the leader) knows exactly one live worker.
async fn live(fs: FileSystem) -> bool {
    fs.report().await.map(|r| r.workers.iter().filter(|w| w.alive).count() == 1).unwrap_or(false)
}

/// Runs `cv ARGS` and returns stdout, failing the test on a non-zero exit.
fn cv(args: &[&str]) -> String {
    let out = std::process::Command::new(common::bin()).args(args).env_remove("CURVINE_META").output().unwrap();
    assert!(out.status.success(), "cv {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_follow_the_leader_and_members_change() {
    let mut g = Group::start(common::bin(), 3, "follower_reads = true").await.expect("meta group");
    // A worker told every member's address.
    let wdir = g.dir().join("w");
    let wargs: Vec<String> = [
        "worker", "--dir", &wdir.display().to_string(), "--port", "0", "--web-port", "0", "--meta", &g.meta_list(),
        "--tier", &format!("MEM:{}:256MiB", wdir.join("mem").display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _worker = tokio::task::block_in_place(|| testbed::Proc::spawn(common::bin(), &wargs, &g.dir().join("w.log"))).unwrap();
    let fs = g.fs(FAILOVER).unwrap();
    testbed::wait_for("the worker to register", Duration::from_secs(30), || live(fs.clone())).await.unwrap();
    let data = common::random_bytes(3 << 20, 7);
    fs.write_all("/weights.bin", &data, false).await.unwrap();
    use curvine_client::locks::{LockKind, LockWho};
    let holder = LockWho { session: 5, owner: 1, pid: 1 };
    fs.lock_set("/weights.bin", holder, Some(LockKind::Write), 0, u64::MAX).await.unwrap();

    // The leader dies: the worker registers with the new one and reports
    // its blocks, so the file reads back whole.
    let old = g.leader(FAILOVER).await.unwrap();
    g.kill9(old);
    let new = g.leader(FAILOVER).await.unwrap();
    testbed::wait_for("the worker to register with the new leader", Duration::from_secs(30), || live(fs.clone())).await.unwrap();
    assert_eq!(fs.read_all("/weights.bin").await.unwrap(), data, "read after failover");
    // Locks are state-machine state: the new leader knows them.
    let other = LockWho { session: 6, owner: 1, pid: 2 };
    let e = fs.lock_set("/weights.bin", other, Some(LockKind::Read), 0, 0).await.unwrap_err();
    assert_eq!(e.kind(), curvine_client::ErrorKind::WouldBlock, "a lock lost in a leader change: {e}");
    fs.lock_release(5, None, None).await.unwrap();
    fs.lock_set("/weights.bin", other, Some(LockKind::Read), 0, 0).await.unwrap();
    println!("leader {} killed; member {} leads; the worker re-registered and the file reads back", old + 1, new + 1);
    g.restart(old).unwrap();
    g.converged(&[0, 1, 2], CONVERGE).await.unwrap();

    // A load job runs (one block at a time, to last) when the leadership
    // moves where it is asked to: the old leader hands it over, the new one
    // runs it to the end.
    let s3 = testbed::s3::S3Server::start();
    s3.create_bucket("ha-jobs");
    let ufs = curvine_ufs::Ufs::new(&s3.uri("ha-jobs", ""), &s3.options()).unwrap();
    const OBJECTS: u64 = 1000;
    common::put_many(&ufs, "set", OBJECTS as usize, 16 << 10).await;
    let mount = curvine_client::MountOptions { options: s3.options(), ..Default::default() };
    fs.mount(&s3.uri("ha-jobs", ""), "/ha", mount).await.unwrap();
    let job = fs.warm("/ha/set", 1).await.unwrap();
    let job_started = Instant::now();
    let from = g.leader(FAILOVER).await.unwrap();
    let target = (from + 1) % 3;
    testbed::wait_for("the load job to start loading", FAILOVER, || async {
        fs.jobs(job.id).await.is_ok_and(|j| j.first().is_some_and(|j| j.files_done > 0))
    })
    .await
    .unwrap();
    let out = cv(&["meta", "members", "transfer", &(target + 1).to_string(), "--meta", &g.meta_list()]);
    assert_eq!(g.leader(FAILOVER).await.unwrap(), target, "after transfer:\n{out}");
    println!("leadership transferred to member {}:\n{out}", target + 1);
    // Still running now: it was running on the old leader when that lost
    // the leadership, so it must have been handed over.
    let running_after = fs.jobs(job.id).await.unwrap()[0].state == "running";
    testbed::wait_for("the load job to finish on the new leader", Duration::from_secs(120), || async {
        fs.jobs(job.id).await.is_ok_and(|j| j.first().is_some_and(|j| j.state != "running"))
    })
    .await
    .unwrap();
    let j = fs.jobs(job.id).await.unwrap().remove(0);
    assert_eq!((j.state.as_str(), j.files_done, j.blocks_failed), ("done", OBJECTS, 0), "{j:?}");
    let old_log = std::fs::read_to_string(g.dir().join(format!("m{}.log", from + 1))).unwrap();
    let handed = old_log.contains("load job handed over");
    println!(
        "load job {}: {} files in {:.1} s, attempt {}, running after the transfer: {running_after}, handed over by member {}: \
         {handed}",
        j.id,
        j.files_done,
        job_started.elapsed().as_secs_f64(),
        j.attempt,
        from + 1
    );
    assert!(handed || !running_after, "the old leader did not hand its running job over:\n{}", g.logs(30));
    assert!(!handed || j.attempt >= 2, "the new leader did not resume the job: {j:?}");
    fs.write_all("/after-transfer", b"x", false).await.unwrap();

    // A fourth member joins: it gets the state (by snapshot or log), and votes.
    let j = g.spawn_joiner().unwrap();
    let out = cv(&["meta", "members", "add", &(j + 1).to_string(), &g.addrs[j], "--meta", &g.meta_list()]);
    assert!(out.lines().any(|l| l.contains(&g.addrs[j]) && l.contains("voter")), "after add:\n{out}");
    g.converged(&[0, 1, 2, 3], CONVERGE).await.unwrap();
    assert_eq!(g.status(j).await.unwrap().files, 2 + OBJECTS);

    // A member leaves; the group of three goes on.
    let gone = (g.leader(FAILOVER).await.unwrap() + 1) % 4;
    let out = cv(&["meta", "members", "remove", &(gone + 1).to_string(), "--meta", &g.meta_list()]);
    assert!(!out.contains(&g.addrs[gone]), "after remove:\n{out}");
    g.kill9(gone);
    fs.write_all("/after-remove", b"y", false).await.unwrap();
    let rest: Vec<usize> = (0..4).filter(|i| *i != gone).collect();
    let (applied, digest) = g.converged(&rest, CONVERGE).await.unwrap();
    println!("member {} joined, member {} left: members {:?} agree at {applied} ({digest:016x})\n{out}", j + 1, gone + 1, rest);
    // Follower reads: with the leader stopped, a client that allows them
    // still gets stat answers from a follower at once; one that does not is
    // sent to the (stopped) leader and fails.
    let leader = g.leader(FAILOVER).await.unwrap();
    let f = *rest.iter().find(|i| **i != leader).unwrap();
    g.pause(leader, true);
    let conf = |follower_reads| curvine_common::config::ClientConf {
        meta: vec![g.addrs[f].clone()],
        follower_reads,
        retries: 0,
        failover: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let started = Instant::now();
    let st = FileSystem::new(conf(true)).unwrap().stat("/after-remove").await;
    let took = started.elapsed();
    let plain = FileSystem::new(conf(false)).unwrap().stat("/after-remove").await;
    g.pause(leader, false);
    assert_eq!(st.expect("a follower read with the leader stopped").len, 1);
    assert!(plain.is_err(), "a linearizable read was answered while the leader was stopped: {plain:?}");
    println!("leader stopped: follower read answered in {took:?}; linearizable read: {}", plain.unwrap_err());

    // Bad requests get clear errors.
    let out = std::process::Command::new(common::bin()).args(["meta", "members", "remove", "99", "--meta", &g.meta_list()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("99 is not a voter"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Five members lose two (the leader and a follower) during a storm and keep
/// committing (three of five are a quorum); a third loss stops writes with a
/// "no quorum" error; all five then converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_survive_two_losses() {
    const CLIENTS: usize = 3;
    let (mut g, fs, mut all) = storm_group(5, CLIENTS).await;
    let members: Vec<usize> = (0..5).collect();
    let started = Instant::now();
    let leader = g.leader(FAILOVER).await.unwrap();
    let follower = (leader + 1) % 5;
    let round = storm(&mut g, CLIENTS, 1, Duration::from_secs(3), |g| {
        g.kill9(leader);
        g.kill9(follower);
        async {}
    })
    .await;
    let errors = merge(&mut all, round);
    let new = g.leader(FAILOVER).await.unwrap();
    assert!(new != leader && new != follower, "a killed member cannot lead");
    // Writes go on with two of five down.
    let t = verify(&fs, &all).await;
    fs.create("/c0/three-of-five", CreateOptions::default()).await.unwrap().close().await.unwrap();
    fs.delete("/c0/three-of-five", false).await.unwrap();
    // A third loss leaves two of five: no quorum.
    let third = (0..5).find(|i| ![leader, follower, new].contains(i)).unwrap();
    g.kill9(third);
    // Patient enough to reach the leader, which answers once its write
    // timeout (3 s) passes without a quorum.
    let impatient = g.fs(Duration::from_secs(8)).unwrap();
    let msg = refused_without_quorum(&impatient, "/c0/two-of-five").await;
    for i in [leader, follower, third] {
        g.restart(i).unwrap();
    }
    let _ = g.fs(FAILOVER).unwrap().delete("/c0/two-of-five", false).await;
    let t2 = verify(&fs, &all).await;
    assert_eq!((t2.acked, t2.files), (t.acked, t.files), "the namespace changed while the clients were stopped");
    let conv = g.converged(&members, CONVERGE).await.unwrap_or_else(|e| panic!("{e}\n{}", g.logs(20)));
    println!("five members: a third loss answered \"{msg}\"");
    report("five members, two killed mid-storm", &t, errors, conv, started);
    assert!(t.acked > 0, "the clients got nothing acknowledged");
}

/// Members partitioned from each other while they run, in network
/// namespaces this test makes (`testbed::netns`; the members talk over a
/// bridge, not loopback). A leader cut off from both followers, which the
/// clients still reach, commits nothing and answers no stale read while the
/// other two elect a leader and go on; a follower cut off from the leader
/// only (it still reaches the other follower) does not stop the group. After
/// each partition heals, every acknowledged operation is there exactly once
/// and all members converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_members_lose_nothing_and_serve_nothing_stale() {
    const CLIENTS: usize = 4;
    let net = testbed::netns::Net::create(3).expect("a test network of three hosts (network namespaces: needs root and iproute2)");
    let conf = format!("{META_TOML}\nfollower_reads = true");
    let mut g = Group::start_in(common::bin(), &net, 3, &conf).await.unwrap_or_else(|e| panic!("a meta group in namespaces: {e:#}"));
    let fs = g.fs(FAILOVER).unwrap();
    for k in 0..CLIENTS {
        fs.mkdir(&format!("/c{k}"), true).await.unwrap();
    }
    let mut all = vec![History::new(); CLIENTS];
    let all_members = [0, 1, 2];

    // 1. The leader is cut off from both followers during the storm.
    let started = Instant::now();
    let old = g.leader(FAILOVER).await.unwrap();
    let others: Vec<usize> = all_members.iter().copied().filter(|&i| i != old).collect();
    // A client talking to the leader when it is cut off: its next write
    // must get through (to the new leader), and how long that took is shown.
    let moved = g.fs(FAILOVER).unwrap();
    moved.stat("/c0").await.unwrap();
    let round = storm(&mut g, CLIENTS, 1, Duration::from_secs(4), |_| {
        for &o in &others {
            net.cut(old, o).unwrap();
        }
        async move {
            let t = Instant::now();
            moved.create("/c0/moved", CreateOptions::default()).await.unwrap().close().await.unwrap();
            println!("a client of the leader cut off wrote again {:.1} s after the cut", t.elapsed().as_secs_f64());
        }
    })
    .await;
    let errors = merge(&mut all, round);
    let new = g.leader_among(&others, FAILOVER).await.unwrap_or_else(|e| panic!("the majority side elects no leader: {e}"));
    println!("leader {} cut off; the others elected {}; it says of itself: {:?}", old + 1, new + 1, g.status(old).await.map(|s| (s.state, s.term)));
    // A client that knows only the member cut off: a write is refused
    // (never acknowledged), and a read of what the majority acknowledged
    // since is refused or current, never "not found".
    fs.create("/c0/after-cut", CreateOptions::default()).await.unwrap().close().await.unwrap();
    let alone = FileSystem::new(curvine_common::config::ClientConf {
        meta: vec![g.addrs[old].clone()],
        failover: Duration::from_secs(5),
        ..Default::default()
    })
    .unwrap();
    let write = match alone.create("/c0/from-the-cut-off", CreateOptions::default()).await {
        Ok(w) => w.close().await.err(),
        Err(e) => Some(e),
    };
    let write = write.expect("a member cut off from its group acknowledged a write");
    println!("write through the member cut off: \"{write}\"");
    match alone.stat("/c0/after-cut").await {
        Ok(_) => println!("read through the member cut off: current"),
        Err(e) => {
            assert_ne!(e.kind(), curvine_client::ErrorKind::NotFound, "a stale read from the member cut off: {e}");
            println!("read through the member cut off: \"{e}\"");
        }
    }
    // What an operator sees there.
    let st = cv(&["meta", "status", "--meta", &g.addrs[old]]);
    assert!(st.contains("(cut off from the other members?)"), "cv meta status of the member cut off:\n{st}");
    for &o in &others {
        net.heal(old, o).unwrap();
    }
    g.leader(FAILOVER).await.unwrap_or_else(|e| panic!("no agreed leader after the partition healed: {e}"));
    fs.delete("/c0/moved", false).await.unwrap();
    let gone = fs.stat("/c0/from-the-cut-off").await.expect_err("a write the cut-off leader could not commit was applied");
    assert_eq!(gone.kind(), curvine_client::ErrorKind::NotFound, "{gone}");
    fs.delete("/c0/after-cut", false).await.unwrap();
    let t = verify(&fs, &all).await;
    let conv = g.converged(&all_members, CONVERGE).await.unwrap_or_else(|e| panic!("{e}\n{}", g.logs(20)));
    report("leader cut off from both followers, then healed", &t, errors, conv, started);

    // 2. A follower is cut off from the leader only.
    let started = Instant::now();
    let leader = g.leader(FAILOVER).await.unwrap();
    let follower = (leader + 1) % 3;
    let round = storm(&mut g, CLIENTS, 2, Duration::from_secs(4), |_| {
        net.cut(leader, follower).unwrap();
        async {}
    })
    .await;
    let errors = merge(&mut all, round);
    // A follower read asked of the member cut off, about a file created
    // since: it has not heard from the leader for longer than the bound
    // follower reads promise, so it sends the caller on (to the leader)
    // rather than answer "not found".
    fs.create("/c0/since", CreateOptions::default()).await.unwrap().close().await.unwrap();
    let reader = FileSystem::new(curvine_common::config::ClientConf {
        // The member cut off first: the one a follower read goes to.
        meta: std::iter::once(follower).chain(all_members.into_iter().filter(|&i| i != follower)).map(|i| g.addrs[i].clone()).collect(),
        failover: Duration::from_secs(10),
        follower_reads: true,
        ..Default::default()
    })
    .unwrap();
    let seen = reader.stat("/c0/since").await;
    assert!(seen.is_ok(), "a follower read from the member cut off was stale or failed: {seen:?}");
    fs.delete("/c0/since", false).await.unwrap();
    net.heal(leader, follower).unwrap();
    g.leader(FAILOVER).await.unwrap_or_else(|e| panic!("no agreed leader after the partition healed: {e}"));
    let t = verify(&fs, &all).await;
    let conv = g.converged(&all_members, CONVERGE).await.unwrap_or_else(|e| panic!("{e}\n{}", g.logs(20)));
    report("follower cut off from the leader, then healed", &t, errors, conv, started);
    drop(g);
}
