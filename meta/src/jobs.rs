//! Load jobs (`cv warm`), `cv free` and `cv pin`.
//!
//! A job walks its tree twice — once to count, once to load — a page of
//! directory entries at a time, so its memory does not grow with the size
//! of the dataset; its state lives in RocksDB through Raft and is updated
//! while it runs. Block loads go straight to the worker that `loader_for`
//! picks (the same one a reader's miss goes to), over the fabric `Load` op,
//! a bounded number at a time. A meta restart resumes running jobs: the
//! walk starts again and skips what is already cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use curvine_common::path::{join, normalize};
use curvine_common::proto::*;
use curvine_common::{now_ms, Error, ErrorKind, Result};
use curvine_fabric::tcp::{TcpOptions, TcpTransport};
use curvine_fabric::{DataConn, Transport};
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;

use crate::namespace::{MetaCommand, Outcome};
use crate::service::MetaServiceImpl;
use crate::store::{Inode, Job, JobState};

/// Block loads in flight per live worker.
const LOADS_PER_WORKER: usize = 8;
const LOAD_ATTEMPTS: u32 = 6;
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
const PAGE: usize = 1000;

/// A load job running on this member. `stop` ends it: a user's cancel, or
/// this member losing the leadership, which also sets `handed_over` (the
/// new leader runs the job again; this runner then records nothing).
#[derive(Clone, Default)]
struct Runner {
    stop: Arc<AtomicBool>,
    handed_over: Arc<AtomicBool>,
}

/// Running jobs and the data connections their loads use.
pub struct Jobs {
    me: std::sync::OnceLock<Weak<MetaServiceImpl>>,
    running: Mutex<HashMap<u64, Runner>>,
    transport: TcpTransport,
    idle: Mutex<HashMap<String, Vec<Box<dyn DataConn>>>>,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            me: Default::default(),
            running: Default::default(),
            transport: TcpTransport::new(TcpOptions::default()),
            idle: Default::default(),
        }
    }
}

impl Jobs {
    /// Gives the runner a handle on the service (which owns this struct).
    pub fn set_service(&self, svc: &Arc<MetaServiceImpl>) {
        let _ = self.me.set(Arc::downgrade(svc));
    }

    pub(crate) fn service(&self) -> Result<Arc<MetaServiceImpl>> {
        self.me.get().and_then(Weak::upgrade).ok_or_else(|| Error::unavailable("meta service is shutting down"))
    }

    async fn conn(&self, addr: &str) -> Result<Box<dyn DataConn>> {
        let conn = self.idle.lock().get_mut(addr).and_then(|v| v.pop());
        match conn {
            Some(c) => Ok(c),
            None => self.transport.connect(addr).await,
        }
    }

    fn put_back(&self, addr: &str, conn: Box<dyn DataConn>) {
        if !conn.is_broken() {
            self.idle.lock().entry(addr.to_string()).or_default().push(conn);
        }
    }

    async fn load_at(&self, addr: &str, block: u64) -> Result<bool> {
        let mut conn = self.conn(addr).await?;
        let res = conn.load(block).await;
        self.put_back(addr, conn);
        res
    }

    /// Has the worker at `addr` upload file `file` to its UFS.
    pub(crate) async fn persist_at(&self, addr: &str, file: u64) -> Result<()> {
        let mut conn = self.conn(addr).await?;
        let res = conn.persist(file).await;
        self.put_back(addr, conn);
        res
    }
}

pub fn job_info(j: &Job) -> JobInfo {
    JobInfo {
        id: j.id,
        path: j.path.clone(),
        state: j.state.map(|s| s.as_str()).unwrap_or("running").to_string(),
        created_ms: j.created_ms,
        finished_ms: j.finished_ms,
        scanning: j.scanning,
        files_total: j.files_total,
        files_done: j.files_done,
        bytes_total: j.bytes_total,
        bytes_done: j.bytes_done,
        bytes_loaded: j.bytes_loaded,
        blocks_failed: j.blocks_failed,
        error: j.error.clone(),
        attempt: j.attempt,
        parallel: j.parallel,
    }
}

/// A depth-first walk of the namespace under a path, a page at a time.
/// Under a mount, each directory's UFS listing is merged before it is read.
struct Walk {
    /// (directory path, id, last name read, pinned by an ancestor)
    stack: Vec<(String, u64, String, bool)>,
    root_file: Option<(String, Inode, bool)>,
    sync: bool,
}

impl Walk {
    async fn new(svc: &MetaServiceImpl, path: &str, sync: bool) -> Result<Walk> {
        if sync {
            svc.ensure_listed(path, false).await?;
        }
        let r = svc.reader();
        let node = r.resolve(path)?;
        // Pinned by an ancestor?
        let mut pinned = node.pinned;
        let mut p = path;
        while let Some((parent, _)) = curvine_common::path::split(p) {
            pinned |= r.resolve(parent).map(|i| i.pinned).unwrap_or(false);
            p = parent;
        }
        Ok(if node.is_dir() {
            Walk { stack: vec![(path.to_string(), node.id, String::new(), pinned)], root_file: None, sync }
        } else {
            Walk { stack: vec![], root_file: Some((path.to_string(), node, pinned)), sync }
        })
    }

    /// The next files (path, inode, pinned); `None` when the walk is done.
    async fn next(&mut self, svc: &MetaServiceImpl) -> Result<Option<Vec<(String, Inode, bool)>>> {
        if let Some(f) = self.root_file.take() {
            return Ok(Some(vec![f]));
        }
        while let Some((dir, id, after, pinned)) = self.stack.pop() {
            if after.is_empty() && self.sync {
                match svc.ensure_listed(&dir, false).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            let r = svc.reader();
            let page = r.children_page(id, &after, PAGE)?;
            if page.len() == PAGE {
                let last = page.last().map(|(n, _)| n.clone()).unwrap_or_default();
                self.stack.push((dir.clone(), id, last, pinned));
            }
            let mut files = Vec::new();
            for (name, cid) in page {
                let Some(i) = r.inode(cid)? else { continue };
                let p = join(&dir, &name);
                if i.is_dir() {
                    self.stack.push((p, i.id, String::new(), pinned || i.pinned));
                } else {
                    let pin = pinned || i.pinned;
                    files.push((p, i, pin));
                }
            }
            if !files.is_empty() {
                return Ok(Some(files));
            }
        }
        Ok(None)
    }
}

impl MetaServiceImpl {
    pub(crate) async fn do_warm(&self, r: WarmRequest) -> Result<WarmResponse> {
        let path = normalize(&r.path)?;
        self.ensure_entry(&path, false).await?; // under a mount, it may not be loaded yet
        let job = match self.write(MetaCommand::JobCreate { path, parallel: r.parallel, now_ms: now_ms() }).await? {
            Outcome::Job(j) => j,
            other => return Err(Error::internal(format!("unexpected outcome {other:?}"))),
        };
        tracing::info!(job = job.id, path = %job.path, "load job started");
        self.spawn_job(job.clone())?;
        Ok(WarmResponse { job: Some(job_info(&job)) })
    }

    pub(crate) async fn do_job_status(&self, r: JobStatusRequest) -> Result<JobStatusResponse> {
        let reader = self.reader();
        let jobs = if r.id == 0 {
            reader.jobs()?
        } else {
            vec![reader.job(r.id)?.ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no job {}", r.id)))?]
        };
        Ok(JobStatusResponse { jobs: jobs.iter().map(job_info).collect() })
    }

    pub(crate) async fn do_cancel_job(&self, r: CancelJobRequest) -> Result<CancelJobResponse> {
        let mut job =
            self.reader().job(r.id)?.ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no job {}", r.id)))?;
        if let Some(runner) = self.jobs.running.lock().get(&r.id) {
            runner.stop.store(true, Ordering::Release);
        }
        if job.state == Some(JobState::Running) {
            job.state = Some(JobState::Cancelled);
            job.finished_ms = now_ms();
            // Written directly: the runner's later updates cannot revive it.
            job = match self.write(MetaCommand::JobUpdate { job: job.clone() }).await? {
                Outcome::Job(j) => j,
                _ => job,
            };
        }
        Ok(CancelJobResponse { job: Some(job_info(&job)) })
    }

    /// Restarts the jobs that were running when meta stopped.
    pub fn resume_jobs(&self) -> Result<()> {
        for mut job in self.reader().jobs()? {
            if job.state == Some(JobState::Running) {
                job.attempt += 1;
                tracing::info!(job = job.id, path = %job.path, attempt = job.attempt, "resuming load job");
                self.spawn_job(job)?;
            }
        }
        Ok(())
    }

    fn spawn_job(&self, job: Job) -> Result<()> {
        let me = self.jobs.service()?;
        let runner = Runner::default();
        self.jobs.running.lock().insert(job.id, runner.clone());
        tokio::spawn(async move {
            let id = job.id;
            me.run_job(job, &runner).await;
            let mut g = me.jobs.running.lock();
            // Not a runner started since (leading again after a hand-over).
            if g.get(&id).is_some_and(|r| Arc::ptr_eq(&r.stop, &runner.stop)) {
                g.remove(&id);
            }
        });
        Ok(())
    }

    /// This member no longer leads: its running jobs stop and leave their
    /// state as it is, for the new leader, which resumes them.
    pub fn hand_over_jobs(&self) {
        let g = self.jobs.running.lock();
        for (id, runner) in g.iter() {
            runner.handed_over.store(true, Ordering::Release);
            runner.stop.store(true, Ordering::Release);
            tracing::info!(job = id, "this member no longer leads: handing the load job over to the new leader");
        }
    }

    async fn save_job(&self, job: &Job) {
        if let Err(e) = self.write(MetaCommand::JobUpdate { job: job.clone() }).await {
            tracing::warn!(job = job.id, error = %e, "cannot record job progress");
        }
    }

    async fn run_job(&self, mut job: Job, runner: &Runner) {
        let cancel = &runner.stop;
        let res = self.job_body(&mut job, cancel).await;
        if runner.handed_over.load(Ordering::Acquire) {
            tracing::info!(job = job.id, "load job handed over (stopped here, resumed by the new leader)");
            return;
        }
        job.scanning = false;
        job.finished_ms = now_ms();
        job.state = Some(match res {
            Err(e) => {
                job.error = e.to_string();
                JobState::Failed
            }
            Ok(()) if cancel.load(Ordering::Acquire) => JobState::Cancelled,
            Ok(()) if job.blocks_failed > 0 => JobState::Failed,
            Ok(()) => JobState::Done,
        });
        tracing::info!(job = job.id, state = ?job.state, bytes = job.bytes_done, loaded = job.bytes_loaded, "load job ended");
        self.save_job(&job).await;
    }

    async fn job_body(&self, job: &mut Job, cancel: &AtomicBool) -> Result<()> {
        // Pass 1: what is there to load.
        job.scanning = true;
        (job.files_total, job.bytes_total, job.files_done, job.bytes_done, job.bytes_loaded) = (0, 0, 0, 0, 0);
        job.blocks_failed = 0;
        let mut last_save = Instant::now();
        let mut walk = Walk::new(self, &job.path, true).await?;
        while let Some(files) = walk.next(self).await? {
            for (_, f, _) in &files {
                job.files_total += 1;
                job.bytes_total += f.len;
            }
            if cancel.load(Ordering::Acquire) {
                return Ok(());
            }
            if last_save.elapsed() >= PROGRESS_EVERY {
                self.save_job(job).await;
                last_save = Instant::now();
            }
        }
        job.scanning = false;
        self.save_job(job).await;

        // Pass 2: load every block that has no cached copy.
        let mut walk = Walk::new(self, &job.path, false).await?;
        let mut inflight = FuturesUnordered::new();
        // file id -> blocks still loading
        let mut pending: HashMap<u64, usize> = HashMap::new();
        let done_block = |job: &mut Job, pending: &mut HashMap<u64, usize>, file: u64, len: u64, res: Result<bool>| {
            match res {
                Ok(cached) => {
                    job.bytes_done += len;
                    if !cached {
                        job.bytes_loaded += len;
                    }
                }
                Err(e) => {
                    job.blocks_failed += 1;
                    job.error = e.to_string();
                }
            }
            if let Some(n) = pending.get_mut(&file) {
                *n -= 1;
                if *n == 0 {
                    pending.remove(&file);
                    job.files_done += 1;
                }
            }
        };
        while let Some(files) = walk.next(self).await? {
            for (path, f, _) in files {
                let mut todo = Vec::new();
                for b in &f.blocks {
                    if !self.workers.locations(b.id).is_empty() {
                        job.bytes_done += b.len;
                    } else if !f.is_ufs_persisted() {
                        job.blocks_failed += 1;
                        job.error = format!("{path}: block {} has no cached copy and the file is not in a UFS", b.id);
                    } else {
                        todo.push((b.id, b.len));
                    }
                }
                if todo.is_empty() {
                    job.files_done += 1;
                    continue;
                }
                // Counted before any of its loads can finish.
                pending.insert(f.id, todo.len());
                for (id, len) in todo {
                    let file = f.id;
                    inflight.push(async move { (file, len, self.load_block(id).await) });
                    let limit = match job.parallel {
                        0 => LOADS_PER_WORKER * self.workers.alive_count().max(1),
                        n => n as usize,
                    };
                    while inflight.len() >= limit {
                        if let Some((file, len, res)) = inflight.next().await {
                            done_block(job, &mut pending, file, len, res);
                        }
                        if last_save.elapsed() >= PROGRESS_EVERY {
                            self.save_job(job).await;
                            last_save = Instant::now();
                        }
                    }
                    if cancel.load(Ordering::Acquire) {
                        break;
                    }
                }
                if cancel.load(Ordering::Acquire) {
                    break;
                }
            }
            if cancel.load(Ordering::Acquire) {
                break;
            }
        }
        let mut tick = Instant::now();
        while let Some((file, len, res)) = inflight.next().await {
            done_block(job, &mut pending, file, len, res);
            if tick.elapsed() >= PROGRESS_EVERY {
                self.save_job(job).await;
                tick = Instant::now();
            }
        }
        Ok(())
    }

    /// Loads one block on its loader worker, retrying while workers come
    /// and go (a restarted worker is picked again once it re-registers).
    async fn load_block(&self, block: u64) -> Result<bool> {
        let mut last = Error::unavailable(format!("block {block}: no live worker to load it"));
        for attempt in 0..LOAD_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt.min(4))).await;
            }
            let Some(loc) = self.workers.loader_for(block) else { continue };
            match self.jobs.load_at(&loc.addr, block).await {
                Ok(cached) => {
                    // Known at once, not only after the next heartbeat; this
                    // also cancels a deletion still queued for that copy.
                    self.workers.add_locations(block, &[loc.worker_id]);
                    return Ok(cached);
                }
                Err(e) if e.is_temporary() || e.kind() == ErrorKind::Io => last = e.context(format!("worker {}", loc.addr)),
                Err(e) => return Err(e.context(format!("block {block}"))),
            }
        }
        Err(last)
    }

    /// Drops cached copies of UFS-backed files under `path` (the UFS keeps
    /// the data); files only in the cache and pinned ones are kept.
    pub(crate) async fn do_free(&self, r: FreeRequest) -> Result<FreeResponse> {
        let path = normalize(&r.path)?;
        self.ensure_entry(&path, false).await?;
        let mut out = FreeResponse::default();
        let mut walk = Walk::new(self, &path, false).await?;
        while let Some(files) = walk.next(self).await? {
            for (_, f, pinned) in files {
                if !f.is_ufs_persisted() {
                    out.skipped_local += 1;
                    continue;
                }
                if pinned {
                    out.skipped_pinned += 1;
                    continue;
                }
                let ids: Vec<u64> = f.blocks.iter().map(|b| b.id).collect();
                let n = self.workers.drop_cached(&ids);
                if n > 0 {
                    out.files += 1;
                    out.blocks += n as u64;
                    out.bytes += f.len;
                }
            }
        }
        tracing::info!(path = %path, files = out.files, blocks = out.blocks, "freed cached copies");
        Ok(out)
    }

    pub(crate) async fn do_pin(&self, r: PinRequest) -> Result<PinResponse> {
        let path = normalize(&r.path)?;
        self.ensure_entry(&path, false).await?;
        let out = self.write(MetaCommand::SetPin { path: path.clone(), pinned: r.pinned }).await?;
        let inode = match out {
            Outcome::Inode(i) => i,
            other => return Err(Error::internal(format!("unexpected outcome {other:?}"))),
        };
        Ok(PinResponse { status: Some(self.dir_status(&inode, &path)?) })
    }
}
