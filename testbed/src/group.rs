//! A meta group of N `cv meta` processes on loopback (ids 1..=N), for
//! failover and fault tests: kill -9, restart, SIGSTOP/SIGCONT a member,
//! ask each member its own status, wait until members agree.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use curvine_client::FileSystem;
use curvine_common::proto::meta_service_client::MetaServiceClient;
use curvine_common::proto::{NodeStatusRequest, NodeStatusResponse};

use crate::{Proc, READY_TIMEOUT};

pub struct Group {
    /// Member `i` has Raft id `i + 1`; `None` while it is down.
    pub members: Vec<Option<Proc>>,
    /// Member addresses, by index.
    pub addrs: Vec<String>,
    args: Vec<Vec<String>>,
    /// Members stopped with SIGSTOP.
    paused: std::collections::BTreeSet<usize>,
    dir: tempfile::TempDir,
    /// `cv`, or `ip` for members started in network namespaces.
    bin: PathBuf,
    via_ip: bool,
}

/// Ports the OS hands out now (and frees again), for members that must know
/// each other's addresses before they start.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let ls: Vec<std::net::TcpListener> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    ls.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

impl Group {
    /// Starts `n` members forming one group; `meta_toml` is extra `[meta]`
    /// configuration (e.g. `snapshot_logs = 500`). Waits for a leader.
    pub async fn start(bin: &Path, n: usize, meta_toml: &str) -> Result<Group> {
        let ports = free_ports(n)?;
        let hosts: Vec<(String, u16)> = ports.iter().map(|p| ("127.0.0.1".to_string(), *p)).collect();
        Self::start_on(bin, hosts, |_| Vec::new(), meta_toml).await
    }

    /// The same, with member `i` in host `i` of `net` (`netns::Net`), so a
    /// test can partition members from each other while they run.
    pub async fn start_in(bin: &Path, net: &crate::netns::Net, n: usize, meta_toml: &str) -> Result<Group> {
        // Each host has its own ports: one fixed port serves.
        let hosts: Vec<(String, u16)> = (0..n).map(|i| (net.ip(i), 7100)).collect();
        Self::start_on(bin, hosts, |i| net.exec_prefix(i), meta_toml).await
    }

    async fn start_on(bin: &Path, hosts: Vec<(String, u16)>, prefix: impl Fn(usize) -> Vec<String>, meta_toml: &str) -> Result<Group> {
        let n = hosts.len();
        let dir = tempfile::Builder::new().prefix("cv-group-").tempdir()?;
        let addrs: Vec<String> = hosts.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        let peers = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
        let conf = dir.path().join("meta.toml");
        std::fs::write(&conf, format!("[meta]\n{meta_toml}\n"))?;
        let mut g = Group {
            members: Vec::new(),
            addrs,
            args: Vec::new(),
            paused: Default::default(),
            dir,
            bin: bin.to_path_buf(),
            via_ip: false,
        };
        for (i, (host, port)) in hosts.iter().enumerate() {
            let d = g.dir.path().join(format!("m{}", i + 1));
            let mut args = prefix(i);
            if !args.is_empty() {
                // `ip netns exec NS cv …` execs cv in place: the pid is cv's.
                args.push(bin.display().to_string());
                g.via_ip = true;
            }
            args.extend(
                [
                    "meta", "--config", &conf.display().to_string(), "--id", &(i + 1).to_string(), "--peers", &peers,
                    "--host", host, "--port", &port.to_string(), "--web-port", "0", "--dir", &d.display().to_string(),
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            g.args.push(args);
            g.members.push(None);
        }
        if g.via_ip {
            g.bin = crate::netns::ip_bin().into();
        }
        // All at once: each waits (up to 10 s) for a leader before it says ready.
        let all: Vec<usize> = (0..n).collect();
        g.restart_all(&all)?;
        g.leader(READY_TIMEOUT).await?;
        Ok(g)
    }

    /// Starts a new member with `--join` (id = index + 1), not yet part of
    /// the group: `cv meta members add` makes it one. Returns its index.
    pub fn spawn_joiner(&mut self) -> Result<usize> {
        anyhow::ensure!(!self.via_ip, "joiners are started on loopback only");
        let i = self.members.len();
        let port = free_ports(1)?[0];
        let d = self.dir.path().join(format!("m{}", i + 1));
        let conf = self.dir.path().join("meta.toml");
        let args: Vec<String> = [
            "meta", "--config", &conf.display().to_string(), "--id", &(i + 1).to_string(), "--join",
            "--port", &port.to_string(), "--web-port", "0", "--dir", &d.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.addrs.push(format!("127.0.0.1:{port}"));
        self.args.push(args);
        self.members.push(None);
        self.restart(i)?;
        Ok(i)
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{}.log", i + 1))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// All member addresses, comma-separated (for `--meta`).
    pub fn meta_list(&self) -> String {
        self.addrs.join(",")
    }

    /// A client configured with every member; `failover` bounds how long
    /// its calls wait for a leader.
    pub fn fs(&self, failover: Duration) -> Result<FileSystem> {
        let conf = curvine_common::config::ClientConf { meta: self.addrs.clone(), failover, ..Default::default() };
        Ok(FileSystem::new(conf)?)
    }

    /// Member `i`'s own status (not redirected to the leader).
    pub async fn status(&self, i: usize) -> Result<NodeStatusResponse> {
        let mut c = tokio::time::timeout(Duration::from_secs(3), MetaServiceClient::connect(format!("http://{}", self.addrs[i])))
            .await
            .context("connect timed out")??;
        let s = tokio::time::timeout(Duration::from_secs(3), c.node_status(NodeStatusRequest {})).await.context("status timed out")??;
        Ok(s.into_inner())
    }

    /// The index of the member that leads, once every running member
    /// answers, exactly one of them says it leads, and all the others name
    /// it as their leader at its term.
    pub async fn leader(&self, timeout: Duration) -> Result<usize> {
        self.leader_among(&self.up(), timeout).await
    }

    /// The same among the members `which` only (say, the majority side of
    /// a partition, while the member cut off may still think it leads).
    pub async fn leader_among(&self, which: &[usize], timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.agreed_leader(which).await {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!("no agreed meta leader within {timeout:?}; logs:\n{}", self.logs(15));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn agreed_leader(&self, which: &[usize]) -> Option<usize> {
        let mut all = Vec::new();
        for &i in which {
            // A running member that does not answer is no agreement.
            all.push((i, self.status(i).await.ok()?));
        }
        let mut leaders = all.iter().filter(|(_, s)| s.state == "Leader");
        let (l, ls) = leaders.next()?;
        if leaders.next().is_some() {
            return None;
        }
        let id = *l as u64 + 1;
        all.iter().all(|(_, s)| s.leader_id == id && s.term == ls.term).then_some(*l)
    }

    /// Indexes of the members running (and not paused).
    pub fn up(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|i| self.members[*i].is_some() && !self.paused.contains(i)).collect()
    }

    pub fn kill9(&mut self, i: usize) {
        self.paused.remove(&i);
        if let Some(mut p) = self.members[i].take() {
            p.kill9();
        }
    }

    /// Starts member `i` again (after `kill9`), waiting for its ready line.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill9(i);
        let p = tokio::task::block_in_place(|| Proc::spawn(&self.bin, &self.args[i], &self.log(i)))?;
        self.members[i] = Some(p);
        Ok(())
    }

    /// Starts several members at once (each waits for a leader, which may
    /// need the others).
    pub fn restart_all(&mut self, which: &[usize]) -> Result<()> {
        for &i in which {
            self.kill9(i);
        }
        let spawned: Vec<(usize, Result<Proc>)> = tokio::task::block_in_place(|| {
            std::thread::scope(|s| {
                let hs: Vec<_> = which
                    .iter()
                    .map(|&i| {
                        let (bin, args, log) = (&self.bin, &self.args[i], self.log(i));
                        (i, s.spawn(move || Proc::spawn(bin, args, &log)))
                    })
                    .collect();
                hs.into_iter().map(|(i, h)| (i, h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("spawn panicked"))))).collect()
            })
        });
        for (i, p) in spawned {
            self.members[i] = Some(p?);
        }
        Ok(())
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) member `i`: a member that is
    /// alive but answers nothing, as behind a partition.
    pub fn pause(&mut self, i: usize, stop: bool) {
        if stop {
            self.paused.insert(i);
        } else {
            self.paused.remove(&i);
        }
        if let Some(pid) = self.members[i].as_ref().and_then(|p| p.pid()) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, if stop { libc::SIGSTOP } else { libc::SIGCONT }) };
        }
    }

    /// Waits until the members in `which` have applied the same entries and
    /// hold the same state: returns (applied index, digest).
    pub async fn converged(&self, which: &[usize], timeout: Duration) -> Result<(u64, u64)> {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        loop {
            let mut seen = Vec::new();
            for &i in which {
                match self.status(i).await {
                    Ok(s) => seen.push((s.last_applied, s.digest)),
                    Err(_) => seen.push((0, 0)),
                }
            }
            if seen.windows(2).all(|w| w[0] == w[1]) && seen.first().is_some_and(|s| s.0 > 0) {
                return Ok(seen[0]);
            }
            if Instant::now() > deadline {
                bail!("members {which:?} did not converge within {timeout:?}: (applied, digest) {seen:?} (before: {last:?})");
            }
            last = seen;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of every member's log.
    pub fn logs(&self, lines: usize) -> String {
        (0..self.members.len())
            .map(|i| {
                let text = std::fs::read_to_string(self.log(i)).unwrap_or_default();
                let v: Vec<&str> = text.lines().collect();
                format!("--- member {} ---\n{}", i + 1, v[v.len().saturating_sub(lines)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
