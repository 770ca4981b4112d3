//! testbed: real `cv` processes on OS-chosen loopback ports in temp dirs,
//! started, waited on (by status calls, never sleeps), killed and restarted.
//! Used by the integration tests of every crate and by benchmarks.
//! `s3` starts a real S3 server (moto or s3s-fs) for UFS tests.

pub mod group;
pub mod netns;
pub mod s3;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use curvine_client::FileSystem;

/// How long a process may take to print its ready line or become healthy.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// One running `cv` server process.
pub struct Proc {
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// `key=value` pairs of the ready line (`meta`, `worker`, `web`, …).
    pub ready: HashMap<String, String>,
}

impl Proc {
    /// Starts `bin args…` and waits for its `curvine ready` line. Stderr goes
    /// to `log`.
    pub fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Proc> {
        let mut p = Proc { bin: bin.to_path_buf(), args: args.to_vec(), log: log.to_path_buf(), child: None, ready: HashMap::new() };
        p.start()?;
        Ok(p)
    }

    fn start(&mut self) -> Result<()> {
        let err = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut child = Command::new(&self.bin)
            .args(&self.args)
            .env_remove("CURVINE_META")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining stdout after the ready line so the child never blocks.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("curvine ready") {
                    let _ = tx.send(line);
                }
            }
        });
        self.child = Some(child);
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                self.kill9();
                bail!("`cv {}` did not become ready (exit: {status:?}); log:\n{}", self.args.join(" "), self.log_tail(40));
            }
        };
        self.ready = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        Ok(())
    }

    pub fn addr(&self, key: &str) -> Result<String> {
        self.ready.get(key).cloned().with_context(|| format!("ready line has no {key}="))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL and reap: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for the process to end by itself (no signal);
    /// returns its exit code, or an error if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(c) = self.child.as_mut() else { bail!("process not running") };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait()? {
                self.child = None;
                return Ok(st.code());
            }
            if Instant::now() > deadline {
                bail!("process still running {timeout:?} later");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Result<Option<i32>> {
        let Some(mut c) = self.child.take() else { return Ok(None) };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st.code());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("process did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same command again (after `kill9` or `terminate`).
    pub fn restart_with(&mut self, args: Vec<String>) -> Result<()> {
        self.kill9();
        self.args = args;
        self.start()
    }

    /// kill -9 (if running), then starts the same command again.
    pub fn restart(&mut self) -> Result<()> {
        self.restart_with(self.args.clone())
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Options for an all-in-one node.
#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// Memory tier capacity, e.g. "64MiB" (None: `cv up` default).
    pub mem: Option<String>,
    pub disk: Option<String>,
    pub no_mem: bool,
    pub block_size: Option<String>,
    /// TOML settings written to `HOME/cv.toml` and passed with `--config`
    /// (the flags above still set the tiers).
    pub config: Option<String>,
}

/// A `cv up` node in its own temp home.
pub struct Node {
    pub proc: Proc,
    home: tempfile::TempDir,
    /// The memory tier, on tmpfs when the host has /dev/shm; removed on drop.
    mem: tempfile::TempDir,
    opts: UpOptions,
}

impl Node {
    /// Starts `cv up` on OS-chosen ports and waits until a worker has
    /// registered with the meta service.
    pub async fn up(bin: &Path, opts: UpOptions) -> Result<Node> {
        let home = tempfile::Builder::new().prefix("cv-test-").tempdir()?;
        let shm = Path::new("/dev/shm");
        let mem = if shm.is_dir() {
            tempfile::Builder::new().prefix("cv-test-").tempdir_in(shm)?
        } else {
            tempfile::Builder::new().prefix("cv-test-mem-").tempdir()?
        };
        if let Some(c) = &opts.config {
            std::fs::write(home.path().join("cv.toml"), c)?;
        }
        let args = Self::args(home.path(), mem.path(), &opts, None);
        let log = home.path().join("cv.log");
        let proc = tokio::task::block_in_place(|| Proc::spawn(bin, &args, &log))?;
        let node = Node { proc, home, mem, opts };
        node.wait_ready().await?;
        Ok(node)
    }

    fn args(home: &Path, mem: &Path, o: &UpOptions, ports: Option<(String, String, String)>) -> Vec<String> {
        let (m, w, web) = ports.unwrap_or_else(|| ("0".into(), "0".into(), "0".into()));
        let mut a: Vec<String> = ["up", "--home"].iter().map(|s| s.to_string()).collect();
        a.push(home.display().to_string());
        a.extend(["--mem-dir".into(), mem.display().to_string()]);
        a.extend(["--meta-port".into(), m, "--worker-port".into(), w, "--web-port".into(), web]);
        if let Some(s) = &o.mem {
            a.extend(["--mem".into(), s.clone()]);
        }
        if let Some(s) = &o.disk {
            a.extend(["--disk".into(), s.clone()]);
        }
        if o.no_mem {
            a.push("--no-mem".into());
        }
        if let Some(s) = &o.block_size {
            a.extend(["--block-size".into(), s.clone()]);
        }
        if o.config.is_some() {
            a.extend(["--config".into(), home.join("cv.toml").display().to_string()]);
        }
        a
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Directory of the memory tier.
    pub fn mem_dir(&self) -> &Path {
        self.mem.path()
    }

    pub fn meta_addr(&self) -> String {
        self.proc.ready.get("meta").cloned().unwrap_or_default()
    }

    pub fn web_addr(&self) -> String {
        self.proc.ready.get("web").cloned().unwrap_or_default()
    }

    pub fn fs(&self) -> Result<FileSystem> {
        Ok(FileSystem::connect_to(&self.meta_addr())?)
    }

    /// A `cv` command aimed at this node.
    pub fn cv(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.proc.bin);
        c.args(args).env("CURVINE_META", self.meta_addr()).stdin(Stdio::null());
        c
    }

    /// Waits until meta answers and reports at least one live worker.
    pub async fn wait_ready(&self) -> Result<()> {
        let fs = self.fs()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match fs.report().await {
                Ok(r) if r.workers.iter().any(|w| w.alive) => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => {}
                Ok(r) => bail!("no live worker after {READY_TIMEOUT:?}: {r:?}\n{}", self.proc.log_tail(40)),
                Err(e) => bail!("meta not ready after {READY_TIMEOUT:?}: {e}\n{}", self.proc.log_tail(40)),
            }
            // Poll interval between status calls, not a wait for an event.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// kill -9, then start again on the same home and ports.
    pub async fn kill9_and_restart(&mut self) -> Result<()> {
        self.proc.kill9();
        self.start_again().await
    }

    /// SIGTERM (clean shutdown), then start again on the same home and ports.
    pub async fn stop_and_restart(&mut self) -> Result<()> {
        tokio::task::block_in_place(|| self.proc.terminate())?;
        self.start_again().await
    }

    async fn start_again(&mut self) -> Result<()> {
        let ports = (
            port_of(&self.proc.addr("meta")?),
            port_of(&self.proc.addr("worker")?),
            port_of(&self.proc.addr("web")?),
        );
        let args = Self::args(self.home.path(), self.mem.path(), &self.opts, Some(ports));
        tokio::task::block_in_place(|| self.proc.restart_with(args))?;
        self.wait_ready().await
    }
}

fn port_of(addr: &str) -> String {
    addr.rsplit(':').next().unwrap_or("0").to_string()
}

/// Separate `cv meta` and `cv worker` processes sharing one temp dir.
pub struct Split {
    pub meta: Proc,
    pub workers: Vec<Proc>,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Split {
    /// Starts a meta process and `workers` worker processes (one MEM tier of
    /// `mem` each, in the temp dir) and waits until all workers are live.
    pub async fn start(bin: &Path, workers: usize, mem: &str) -> Result<Split> {
        Self::start_with(bin, workers, mem, "").await
    }

    /// `start`, with `meta_toml` as the meta process's config file.
    pub async fn start_with(bin: &Path, workers: usize, mem: &str, meta_toml: &str) -> Result<Split> {
        let dir = tempfile::Builder::new().prefix("cv-split-").tempdir()?;
        let d = dir.path().to_path_buf();
        let mut meta_args: Vec<String> = ["meta", "--dir", &d.join("meta").display().to_string(), "--port", "0", "--web-port", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !meta_toml.is_empty() {
            std::fs::write(d.join("meta.toml"), meta_toml)?;
            meta_args.extend(["--config".to_string(), d.join("meta.toml").display().to_string()]);
        }
        let meta = tokio::task::block_in_place(|| Proc::spawn(bin, &meta_args, &d.join("meta.log")))?;
        let mut split = Split { meta, workers: Vec::new(), dir, bin: bin.to_path_buf() };
        for i in 0..workers {
            split.add_worker(i, mem)?;
        }
        split.wait_workers(workers).await?;
        Ok(split)
    }

    fn add_worker(&mut self, i: usize, mem: &str) -> Result<()> {
        let d = self.dir.path();
        let args: Vec<String> = vec![
            "worker".into(),
            "--dir".into(),
            d.join(format!("w{i}")).display().to_string(),
            "--port".into(),
            "0".into(),
            "--web-port".into(),
            "0".into(),
            "--meta".into(),
            self.meta_addr(),
            "--tier".into(),
            format!("MEM:{}:{mem}", d.join(format!("w{i}/mem")).display()),
        ];
        let p = tokio::task::block_in_place(|| Proc::spawn(&self.bin, &args, &d.join(format!("w{i}.log"))))?;
        self.workers.push(p);
        Ok(())
    }

    pub fn meta_addr(&self) -> String {
        self.meta.ready.get("meta").cloned().unwrap_or_default()
    }

    pub fn fs(&self) -> Result<FileSystem> {
        Ok(FileSystem::connect_to(&self.meta_addr())?)
    }

    /// Waits until meta reports `n` live workers.
    pub async fn wait_workers(&self, n: usize) -> Result<()> {
        let fs = self.fs()?;
        wait_for(&format!("{n} live workers"), READY_TIMEOUT, || async {
            fs.report().await.map(|r| r.workers.iter().filter(|w| w.alive).count() >= n).unwrap_or(false)
        })
        .await
    }
}

/// Waits for `cond` to hold, polling every 50 ms, up to `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for GiBs.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
