//! `cv fs …` and `cv report`.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use curvine_client::{CreateOptions, FileKind, FileStatus, FileSystem};
use curvine_common::size::human;
use curvine_common::{Error, ErrorKind};
use indicatif::{ProgressBar, ProgressStyle};

use crate::ClientArgs;

/// Bytes moved per step by put/get/cat; two buffers overlap disk and network.
const IO_BUF: usize = 16 << 20;
/// Reads `get` keeps in flight.
const READS_IN_FLIGHT: usize = 2;

#[derive(Subcommand, Debug)]
pub enum FsCmd {
    /// List a directory (or show a file)
    Ls {
        #[arg(default_value = "/")]
        path: String,
        /// Recurse into directories
        #[arg(short = 'R', long)]
        recursive: bool,
    },
    /// Create a directory
    Mkdir {
        path: String,
        /// Create missing parents; no error if it exists
        #[arg(short, long)]
        parents: bool,
    },
    /// Copy a local file ('-' = stdin) into Curvine
    Put {
        local: PathBuf,
        path: String,
        /// Replace an existing file (once the new copy is complete; a failed
        /// put leaves it as it was)
        #[arg(short, long)]
        force: bool,
        /// Workers holding each block (default: cluster.replication)
        #[arg(long, default_value_t = 0)]
        replication: u32,
    },
    /// Copy a Curvine file to the local disk ('-' = stdout); an existing
    /// file is replaced only once the copy is complete
    Get { path: String, local: PathBuf },
    /// Print a file
    Cat { path: String },
    /// Remove a file or (with -r) a directory tree
    Rm {
        path: String,
        #[arg(short, long)]
        recursive: bool,
    },
    /// Rename (atomic, files and directories)
    Mv { src: String, dst: String },
    /// Hard link: DST becomes another name of the file SRC (files only)
    Ln { src: String, dst: String },
    /// Show a file's status
    Stat {
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Bytes used under a path
    Du {
        #[arg(default_value = "/")]
        path: String,
    },
    /// Cluster capacity and use
    Df,
}

pub async fn run(cmd: FsCmd, c: &ClientArgs) -> Result<()> {
    let fs = c.fs()?;
    match cmd {
        FsCmd::Ls { path, recursive } => ls(&fs, &path, recursive).await,
        FsCmd::Mkdir { path, parents } => {
            match fs.mkdir(&path, parents).await {
                Err(e) if parents && e.kind() == ErrorKind::AlreadyExists => Ok(()),
                r => r.map(|_| ()),
            }?;
            Ok(())
        }
        FsCmd::Put { local, path, force, replication } => put(&fs, &local, &path, force, replication).await,
        FsCmd::Get { path, local } => get(&fs, &path, &local).await,
        FsCmd::Cat { path } => get(&fs, &path, Path::new("-")).await,
        FsCmd::Rm { path, recursive } => {
            fs.delete(&path, recursive).await?;
            Ok(())
        }
        FsCmd::Ln { src, dst } => {
            fs.link(&src, &dst).await?;
            Ok(())
        }
        FsCmd::Mv { src, dst } => {
            // `mv a dir/` semantics: moving into an existing directory.
            let dst = match fs.stat(&dst).await {
                Ok(s) if s.kind == FileKind::Dir as i32 => {
                    let name = curvine_common::path::normalize(&src)?.rsplit('/').next().unwrap_or_default().to_string();
                    curvine_common::path::join(&s.path, &name)
                }
                _ => dst,
            };
            fs.rename(&src, &dst).await?;
            Ok(())
        }
        FsCmd::Stat { path, json } => {
            let s = fs.stat(&path).await?;
            if json {
                println!("{}", status_json(&s));
            } else {
                print_stat(&s);
            }
            Ok(())
        }
        FsCmd::Du { path } => {
            let (bytes, files) = du(&fs, &path).await?;
            println!("{bytes}\t{}\t{files} files\t{path}", human(bytes));
            Ok(())
        }
        FsCmd::Df => {
            let r = fs.report().await?;
            println!("{:>12} {:>12} {:>12} {:>5}", "capacity", "used", "available", "use%");
            let pct = if r.capacity == 0 { 0.0 } else { r.used as f64 * 100.0 / r.capacity as f64 };
            println!(
                "{:>12} {:>12} {:>12} {:>4.0}%",
                human(r.capacity),
                human(r.used),
                human(r.capacity.saturating_sub(r.used)),
                pct
            );
            Ok(())
        }
    }
}

/// A zeroed buffer of `len` bytes backed by transparent huge pages where
/// the kernel allows: one fault per 2 MiB instead of per 4 KiB, which is most
/// of the cost of a fresh buffer on a VM whose memory the host reclaims.
pub fn big_buffer(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = Vec::with_capacity(len);
    const HUGE: usize = 2 << 20;
    let start = v.as_mut_ptr() as usize;
    let lo = start.div_ceil(HUGE) * HUGE; // madvise wants aligned ranges
    let hi = (start + len) / HUGE * HUGE;
    if hi > lo {
        // SAFETY: advisory only, on whole pages inside memory this Vec owns.
        unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
    }
    v.resize(len, 0);
    v
}

fn mode_string(s: &FileStatus) -> String {
    let mut out = String::with_capacity(10);
    out.push(if s.kind == FileKind::Dir as i32 { 'd' } else { '-' });
    for shift in [6, 3, 0] {
        let m = (s.mode >> shift) & 7;
        out.push(if m & 4 != 0 { 'r' } else { '-' });
        out.push(if m & 2 != 0 { 'w' } else { '-' });
        out.push(if m & 1 != 0 { 'x' } else { '-' });
    }
    out
}

fn time_string(ms: i64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

fn status_json(s: &FileStatus) -> serde_json::Value {
    serde_json::json!({
        "path": s.path, "id": s.id,
        "type": if s.kind == FileKind::Dir as i32 { "directory" } else { "file" },
        "len": s.len, "mode": format!("{:o}", s.mode), "mtime_ms": s.mtime_ms,
        "block_size": s.block_size, "replication": s.replication, "complete": s.complete,
        "children": s.children, "ufs_state": s.ufs_state, "pinned": s.pinned, "mount": s.mount_uri,
    })
}

fn print_stat(s: &FileStatus) {
    let kind = if s.kind == FileKind::Dir as i32 { "directory" } else { "file" };
    println!("path:        {}", s.path);
    println!("type:        {kind}");
    println!("size:        {} ({})", s.len, human(s.len));
    println!("mode:        {} ({:o})", mode_string(s), s.mode);
    println!("modified:    {}", time_string(s.mtime_ms));
    if !s.mount_uri.is_empty() {
        println!("mount of:    {}", s.mount_uri);
    }
    if !s.ufs_state.is_empty() {
        println!("ufs:         {}", s.ufs_state);
    }
    if s.pinned {
        println!("pinned:      yes");
    }
    if s.kind == FileKind::Dir as i32 {
        println!("entries:     {}", s.children);
    } else {
        println!("block size:  {}", human(s.block_size));
        println!("replication: {}", s.replication);
        println!("complete:    {}", s.complete);
    }
}

async fn ls(fs: &FileSystem, path: &str, recursive: bool) -> Result<()> {
    let st = fs.stat(path).await?;
    if st.kind != FileKind::Dir as i32 {
        print_entry(&st);
        return Ok(());
    }
    let mut dirs = vec![st.path.clone()];
    while let Some(d) = dirs.pop() {
        if recursive {
            println!("{d}:");
        }
        // Page by page (in name order), so a directory of a million entries
        // never sits in memory at once.
        let mut after = String::new();
        loop {
            let (page, more) = fs.list_page(&d, &after, 0).await?;
            for e in &page {
                print_entry(e);
                if recursive && e.kind == FileKind::Dir as i32 {
                    dirs.push(e.path.clone());
                }
            }
            match page.last() {
                Some(last) if more => after = last.name.clone(),
                _ => break,
            }
        }
    }
    Ok(())
}

fn print_entry(e: &FileStatus) {
    let flag = if e.kind == FileKind::File as i32 && !e.complete { " (incomplete)" } else { "" };
    println!("{} {:>14} {} {}{flag}", mode_string(e), e.len, time_string(e.mtime_ms), e.path);
}

async fn du(fs: &FileSystem, path: &str) -> Result<(u64, u64)> {
    let st = fs.stat(path).await?;
    if st.kind != FileKind::Dir as i32 {
        return Ok((st.len, 1));
    }
    let (mut bytes, mut files) = (0, 0);
    let mut dirs = vec![st.path];
    while let Some(d) = dirs.pop() {
        for e in fs.list(&d).await? {
            if e.kind == FileKind::Dir as i32 {
                dirs.push(e.path);
            } else {
                bytes += e.len;
                files += 1;
            }
        }
    }
    Ok((bytes, files))
}

fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() || len < (8 << 20) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A hidden name next to `name` for a copy in progress: `.NAME.cv-WHAT-RANDOM`.
fn temp_name(name: &str, what: &str) -> String {
    format!(".{name}.cv-{what}-{:08x}", rand::random::<u32>())
}

/// Copies LOCAL (`-` = stdin) to `path`. Without `force` the file is created
/// exclusively. With it, the bytes go to a hidden temporary file next to the
/// destination, renamed over it once closed (meta's rename replaces a file
/// in one step): an existing file stays whole until the new one is complete,
/// and a failed put leaves it untouched.
async fn put(fs: &FileSystem, local: &Path, path: &str, force: bool, replication: u32) -> Result<()> {
    let from_stdin = local == Path::new("-");
    let (mut src, len): (Box<dyn Read + Send>, u64) = if from_stdin {
        (Box::new(std::io::stdin()), 0)
    } else {
        let file = std::fs::File::open(local).with_context(|| format!("{}", local.display()))?;
        let m = file.metadata().with_context(|| format!("{}", local.display()))?;
        // A directory opens fine and fails only at the first read.
        if m.is_dir() {
            anyhow::bail!("{}: is a directory (put copies one file)", local.display());
        }
        (Box::new(file), if m.is_file() { m.len() } else { 0 })
    };
    // `put f /dir` puts into the directory.
    let dst = match fs.stat(path).await {
        Ok(s) if s.kind == FileKind::Dir as i32 => {
            if from_stdin {
                anyhow::bail!("{}: is a directory (give the file name to put standard input to)", s.path);
            }
            let name = local.file_name().and_then(|n| n.to_str()).unwrap_or("file");
            let dst = curvine_common::path::join(&s.path, name);
            // Refused now rather than by the rename after the whole upload.
            if force && matches!(fs.stat(&dst).await, Ok(d) if d.kind == FileKind::Dir as i32) {
                return Err(Error::is_dir(&dst).into());
            }
            dst
        }
        _ => curvine_common::path::normalize(path)?,
    };
    let opts = CreateOptions { overwrite: false, replication, ..Default::default() };
    let (mut w, tmp) = if force {
        let (parent, name) = curvine_common::path::split(&dst).ok_or_else(|| Error::is_dir(&dst))?;
        let mut tries = 0;
        loop {
            let tmp = curvine_common::path::join(parent, &temp_name(name, "put"));
            match fs.create(&tmp, opts.clone()).await {
                Ok(w) => break (w, Some(tmp)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists && tries < 3 => tries += 1,
                // Name the destination, not the temporary file, to the user.
                Err(e) => return Err(Error::new(e.kind(), e.message().replace(&tmp, &dst)).into()),
            }
        }
    } else {
        (fs.create(&dst, opts).await?, None)
    };
    let pb = progress(len, "put");
    // A reader thread fills buffers from the local file while this task
    // sends the previous one.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(1);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let _ = back_tx.send(big_buffer(IO_BUF));
    let _ = back_tx.send(big_buffer(IO_BUF));
    let reader = std::thread::spawn(move || {
        while let Ok(mut buf) = back_rx.recv() {
            buf.resize(IO_BUF, 0);
            let mut n = 0;
            while n < buf.len() {
                match src.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            buf.truncate(n);
            let last = n == 0;
            if tx.blocking_send(Ok(buf)).is_err() || last {
                return;
            }
        }
    });
    let res: Result<()> = async {
        while let Some(buf) = rx.recv().await {
            let buf = buf.with_context(|| format!("{}", local.display()))?;
            if buf.is_empty() {
                break;
            }
            w.write(&buf).await?;
            pb.inc(buf.len() as u64);
            let _ = back_tx.send(buf);
        }
        Ok(())
    }
    .await;
    drop(back_tx);
    let _ = reader.join();
    let res = match res {
        Ok(()) => w.close().await.map(|_| ()).map_err(anyhow::Error::from),
        Err(e) => {
            w.abort().await;
            Err(e)
        }
    };
    let res = match (res, &tmp) {
        (Ok(()), Some(tmp)) => fs.rename(tmp, &dst).await.map_err(anyhow::Error::from),
        (res, _) => res,
    };
    if res.is_err() {
        if let Some(tmp) = &tmp {
            // Gone already if the abort removed it.
            let _ = fs.delete(tmp, false).await;
        }
    }
    res?;
    pb.finish_and_clear();
    Ok(())
}

/// Where `get` writes.
enum Sink {
    Stdout(std::io::Stdout),
    /// An existing device or FIFO (`/dev/null`, a pipe): written in place,
    /// never truncated, replaced or removed.
    InPlace { file: std::fs::File, path: PathBuf },
    /// A regular file: a hidden temporary file in the target's directory,
    /// synced and renamed over the target once complete, so the target is
    /// either its old self or the whole new copy.
    Replace { file: std::fs::File, tmp: PathBuf, target: PathBuf },
}

impl Sink {
    /// Opens the sink for LOCAL (`-` = stdout; a directory = `name` in it).
    fn open(local: &Path, name: &str) -> Result<Sink> {
        use std::os::unix::fs::OpenOptionsExt;
        if local == Path::new("-") {
            return Ok(Sink::Stdout(std::io::stdout()));
        }
        let local = if local.is_dir() { local.join(name) } else { local.to_path_buf() };
        let shown = || format!("{}", local.display());
        let target = match std::fs::metadata(&local) {
            Ok(m) if m.is_dir() => anyhow::bail!("{}: is a directory", local.display()),
            Ok(m) if !m.is_file() => {
                let file = std::fs::OpenOptions::new().write(true).open(&local).with_context(shown)?;
                return Ok(Sink::InPlace { file, path: local });
            }
            Ok(m) => {
                // Replacing needs only the directory writable; keep refusing
                // a file the user may not write, as writing into it would.
                let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(local.as_os_str()))?;
                // SAFETY: c is NUL-terminated.
                if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
                    return Err(std::io::Error::last_os_error()).with_context(shown);
                }
                // Through a symlink, replace the file it names, not the link.
                let target = std::fs::canonicalize(&local).with_context(shown)?;
                Some((target, m.permissions()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(shown),
        };
        let (target, perm) = match target {
            Some((t, p)) => (t, Some(p)),
            None => (local.clone(), None),
        };
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| name.to_string());
        let mut tries = 0;
        loop {
            let tmp = dir.join(temp_name(&base, "get"));
            match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o666).open(&tmp) {
                Ok(file) => {
                    if let Some(p) = perm {
                        // The new copy keeps the old file's mode.
                        let _ = file.set_permissions(p);
                    }
                    return Ok(Sink::Replace { file, tmp, target });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 3 => tries += 1,
                Err(e) => return Err(e).with_context(shown),
            }
        }
    }

    /// The path errors name (never the temporary file).
    fn shown(&self) -> String {
        match self {
            Sink::Stdout(_) => "-".into(),
            Sink::InPlace { path, .. } => path.display().to_string(),
            Sink::Replace { target, .. } => target.display().to_string(),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.write_all(buf),
            Sink::InPlace { file, .. } | Sink::Replace { file, .. } => file.write_all(buf),
        }
    }

    /// Ends the writing, reporting a failed flush. A new copy is not
    /// fsynced, as `cp` and `rsync` do not: the rename keeps a failed get
    /// from touching the old file, and an fsync of gigabytes would cost a
    /// large get several seconds on a disk.
    fn finish(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.flush(),
            Sink::InPlace { file, .. } | Sink::Replace { file, .. } => file.flush(),
        }
    }

    /// Puts a finished copy in place.
    fn commit(self) -> Result<()> {
        if let Sink::Replace { tmp, target, .. } = self {
            if let Err(e) = std::fs::rename(&tmp, &target) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("{}", target.display()));
            }
        }
        Ok(())
    }

    /// Drops a failed copy: only ever the temporary file.
    fn discard(self) {
        if let Sink::Replace { tmp, .. } = self {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// Copies `path` to LOCAL (`-` = stdout) through a `Sink`.
async fn get(fs: &FileSystem, path: &str, local: &Path) -> Result<()> {
    let r = fs.open(path).await?;
    if r.status().kind == FileKind::Dir as i32 {
        return Err(Error::is_dir(&r.status().path).into());
    }
    let len = r.len();
    let mut sink = Sink::open(local, &r.status().name)?;
    let to_stdout = matches!(sink, Sink::Stdout(_));
    let shown = sink.shown();
    let pb = if to_stdout { ProgressBar::hidden() } else { progress(len, "get") };
    // READS_IN_FLIGHT reads (each on its own pooled connection) keep the
    // workers streaming while a writer thread drains finished buffers, in
    // order, to the local file. The thread hands the sink back with the
    // result of its final flush.
    use futures::stream::{FuturesOrdered, StreamExt};
    let r = std::sync::Arc::new(r);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(READS_IN_FLIGHT);
    let (back_tx, mut back_rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(READS_IN_FLIGHT + 1);
    let writer = std::thread::spawn(move || {
        while let Ok(buf) = rx.recv() {
            let r = sink.write_all(&buf).map(|_| buf);
            let failed = r.is_err();
            if back_tx.blocking_send(r).is_err() || failed {
                // The error went back (or nobody listens): no final flush.
                return (sink, Ok(false));
            }
        }
        let done = sink.finish().map(|_| true);
        (sink, done)
    });
    let piece = IO_BUF.min(len as usize).max(1);
    let mut spare: Vec<Vec<u8>> = (0..READS_IN_FLIGHT + 1).map(|_| big_buffer(piece)).collect();
    let mut next = 0u64;
    let mut with_writer = 0;
    let res: Result<()> = async {
        let mut reads = FuturesOrdered::new();
        while next < len || !reads.is_empty() {
            while next < len && reads.len() < READS_IN_FLIGHT {
                let Some(mut buf) = spare.pop() else { break };
                let n = ((len - next) as usize).min(IO_BUF);
                buf.resize(n, 0);
                let (r, off) = (r.clone(), next);
                reads.push_back(async move { r.read_at(off, &mut buf).await.map(|got| (buf, got)) });
                next += n as u64;
            }
            if let Some(done) = reads.next().await {
                let (mut buf, got) = done?;
                buf.truncate(got);
                pb.inc(got as u64);
                if tx.send(buf).is_err() {
                    // The writer failed: its error waits among the buffers it sent back.
                    while let Some(b) = back_rx.recv().await {
                        b.with_context(|| shown.clone())?;
                    }
                    anyhow::bail!("{shown}: writer stopped");
                }
                with_writer += 1;
            }
            // Take back buffers the writer has finished with.
            while spare.is_empty() || (with_writer > 0 && next >= len && reads.is_empty()) {
                let b = back_rx.recv().await.context("writer stopped")?.with_context(|| shown.clone())?;
                with_writer -= 1;
                spare.push(b);
                if with_writer == 0 {
                    break;
                }
            }
        }
        while with_writer > 0 {
            back_rx.recv().await.context("writer stopped")?.with_context(|| shown.clone())?;
            with_writer -= 1;
        }
        Ok(())
    }
    .await;
    drop(tx);
    let joined = writer.join();
    let (sink, finished) = match joined {
        Ok(v) => v,
        Err(_) => anyhow::bail!("{shown}: writer thread panicked"),
    };
    let res = res.and_then(|()| match finished {
        Ok(true) => Ok(()),
        Ok(false) => Err(anyhow::anyhow!("{shown}: write stopped")),
        Err(e) => Err(e).with_context(|| shown.clone()),
    });
    if let Err(e) = res {
        sink.discard();
        // The reader of stdout went away (`cv fs cat f | head`): nothing to
        // report to anyone.
        let broken_pipe =
            e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe));
        if to_stdout && broken_pipe {
            return Ok(());
        }
        return Err(e);
    }
    sink.commit()?;
    pb.finish_and_clear();
    Ok(())
}

fn cache_json(c: Option<&curvine_common::proto::CacheStats>) -> serde_json::Value {
    let c = c.cloned().unwrap_or_default();
    serde_json::json!({
        "hits": c.hits, "misses": c.misses, "bytes_from_cache": c.bytes_from_cache,
        "bytes_from_ufs": c.bytes_from_ufs, "loads": c.loads, "load_errors": c.load_errors,
    })
}

pub async fn report(c: &ClientArgs, json: bool) -> Result<()> {
    let fs = c.fs()?;
    let r = fs.report().await?;
    if json {
        let workers: Vec<_> = r
            .workers
            .iter()
            .map(|w| {
                serde_json::json!({
                    "id": w.id, "addr": w.addr, "hostname": w.hostname, "alive": w.alive,
                    "last_heartbeat_ms": w.last_heartbeat_ms, "cache": cache_json(w.cache.as_ref()),
                    "tiers": w.tiers.iter().map(|t| serde_json::json!({
                        "kind": t.kind, "dir": t.dir, "capacity": t.capacity, "used": t.used,
                        "reserved": t.reserved, "blocks": t.blocks})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let v = serde_json::json!({
            "capacity": r.capacity, "used": r.used, "files": r.files, "dirs": r.dirs,
            "block_size": r.block_size, "raft": {"leader": r.raft_leader, "term": r.raft_term, "applied": r.raft_applied},
            "mounts": r.mounts, "cache": cache_json(r.cache.as_ref()),
            "workers": workers,
        });
        println!("{v}");
        return Ok(());
    }
    println!("meta:      {} (raft leader {}, term {}, applied {})", fs.meta_addrs().join(","), r.raft_leader, r.raft_term, r.raft_applied);
    println!("namespace: {} files, {} directories, block size {}", r.files, r.dirs, human(r.block_size));
    println!("capacity:  {} total, {} used, {} free", human(r.capacity), human(r.used), human(r.capacity.saturating_sub(r.used)));
    if let Some(c) = &r.cache {
        let reads = c.hits + c.misses;
        let ratio = if reads == 0 { 0.0 } else { c.hits as f64 * 100.0 / reads as f64 };
        println!(
            "cache:     {} hits, {} misses ({ratio:.1}% hit), {} from cache, {} loaded from UFS in {} blocks ({} failed); {} mounts",
            c.hits,
            c.misses,
            human(c.bytes_from_cache),
            human(c.bytes_from_ufs),
            c.loads,
            c.load_errors,
            r.mounts
        );
    }
    let alive = r.workers.iter().filter(|w| w.alive).count();
    println!("workers:   {alive} alive, {} dead", r.workers.len() - alive);
    for w in &r.workers {
        let state = if w.alive { "alive" } else { "DEAD" };
        println!("  worker {} {} ({}) {state}, last heartbeat {} ms ago", w.id, w.addr, w.hostname, w.last_heartbeat_ms);
        for t in &w.tiers {
            println!(
                "    {:<4} {:>10} used of {:>10} ({} blocks) {}",
                t.kind,
                human(t.used),
                human(t.capacity),
                t.blocks,
                t.dir
            );
        }
    }
    Ok(())
}
