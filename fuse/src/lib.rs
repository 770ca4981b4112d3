//! `cv fuse MOUNTPOINT`: Curvine's namespace as a POSIX file system, for
//! programs that open files by path. See `fs.rs` for the operations and
//! `files.rs` for how writes map onto Curvine's sealed files.

mod dirattrs;
mod files;
mod fs;
mod inodes;
mod locks;
mod looked;
mod passthrough;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use curvine_client::{Error, ErrorKind, FileSystem, Result};
use fuser::{Config, MountOption, SessionACL};

pub use fs::HIDDEN_PREFIX;

#[derive(Clone, Debug)]
pub struct FuseOptions {
    pub mountpoint: PathBuf,
    /// The Curvine directory to show at the mount point.
    pub subdir: String,
    pub allow_other: bool,
    /// Bypass the kernel page cache (every read and write reaches us).
    pub direct_io: bool,
    /// Let the kernel gather small writes in its page cache.
    pub writeback_cache: bool,
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    /// How long the kernel may cache that a name does not exist (zero:
    /// not at all). Names other clients create meanwhile stay invisible
    /// here until it passes.
    pub negative_timeout: Duration,
    /// How long a lookup's answer may serve the open after it (`looked.rs`;
    /// capped by the attribute and entry timeouts).
    pub open_after_lookup: Duration,
    /// Threads reading requests from the kernel (each operation runs there
    /// until it first waits, then on the async runtime).
    pub threads: usize,
    /// Read-only opens of files held whole in a same-host MEM block are
    /// served by the kernel from the block file (`passthrough.rs`).
    pub passthrough: bool,
    /// Mounted read-only: the kernel refuses every change (EROFS).
    pub read_only: bool,
}

/// Whether `path` is a mount point whose FUSE daemon is gone: statfs
/// fails with ENOTCONN ("transport endpoint is not connected"). statfs
/// always reaches the daemon, where a stat may be answered from the
/// kernel's attribute cache for a while after the daemon died.
pub fn is_stale_mount(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs(2) with a valid path and an out-struct of the right type.
    let rc = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st)
    };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

/// Whether something is mounted at `path` (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let want = canon.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str())))
        .unwrap_or(false)
}

fn lazy_unmount(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts and serves until SIGTERM/SIGINT or an external `umount`; returns
/// once unmounted. A stale mount left by a dead daemon is cleared first.
pub fn run(fs: FileSystem, rt: tokio::runtime::Handle, opts: FuseOptions) -> Result<()> {
    let mp = &opts.mountpoint;
    if is_stale_mount(mp) {
        tracing::warn!(mountpoint = %mp.display(), "clearing a stale mount left by a dead daemon");
        lazy_unmount(mp).map_err(|e| Error::from(e).context(format!("clearing the stale mount at {}", mp.display())))?;
    }
    let meta = std::fs::metadata(mp).map_err(|e| Error::from(e).context(format!("mount point {}", mp.display())))?;
    if !meta.is_dir() {
        return Err(Error::new(ErrorKind::NotADirectory, format!("mount point {} is not a directory", mp.display())));
    }
    if is_mounted(mp) {
        return Err(Error::new(ErrorKind::AlreadyExists, format!("{} is already a mount point", mp.display())));
    }
    // The directory must exist in Curvine before the kernel asks about it.
    let root = curvine_common::path::normalize(&opts.subdir)?;
    let st = rt.block_on(fs.stat(&root)).map_err(|e| e.context("--subdir"))?;
    if st.kind != curvine_client::FileKind::Dir as i32 {
        return Err(Error::not_dir(&root));
    }
    let staging = tempfile::Builder::new().prefix("cvfuse-staging-").tempdir()?;
    let fopts = fs::Options {
        attr_ttl: opts.attr_timeout,
        entry_ttl: opts.entry_timeout,
        negative_ttl: opts.negative_timeout,
        open_after_lookup: opts.open_after_lookup,
        direct_io: opts.direct_io,
        writeback_cache: opts.writeback_cache,
        staging: staging.path().to_path_buf(),
        passthrough: opts.passthrough,
    };
    let inner = Arc::new(fs::CvFuse::new(fs, rt.clone(), &root, fopts));
    let at_end = inner.clone();
    let at_signal = inner.clone();
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(format!("curvine:{root}")),
        MountOption::Subtype("curvine".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::CUSTOM(format!("max_read={}", 1 << 20)),
    ];
    if opts.read_only {
        cfg.mount_options.push(MountOption::RO);
    }
    if opts.allow_other {
        cfg.acl = SessionACL::All;
    }
    cfg.n_threads = Some(opts.threads.max(1));
    cfg.clone_fd = opts.threads > 1;
    let mut session = fuser::Session::new(fs::Mounted(inner), mp, &cfg)
        .map_err(|e| Error::from(e).context(format!("mounting {}", mp.display())))?;
    let mut unmounter = session.unmount_callable();
    let mp_owned = mp.clone();
    // Signals are turned into an unmount from a task, never inside a
    // signal handler. With files still open the kernel refuses a plain
    // unmount (EBUSY): detach lazily, save what those files hold unsaved
    // (their writes were answered as done), and end the process so open
    // files get errors instead of hanging.
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(mountpoint = %mp_owned.display(), "unmounting");
        if let Err(e) = unmounter.unmount() {
            tracing::warn!(error = %e, "unmount refused (files open?); detaching lazily");
            let _ = lazy_unmount(&mp_owned);
            let end = async {
                at_signal.save_all().await;
                at_signal.end_locks().await;
            };
            if tokio::time::timeout(SAVE_AT_EXIT, end).await.is_err() {
                tracing::error!("files still open were not all saved within {SAVE_AT_EXIT:?}");
            }
            std::process::exit(0);
        }
    });
    raise_readahead(mp);
    println!("curvine ready fuse root={root} mountpoint={}", mp.display());
    let served = session.run().map_err(|e| Error::from(e).context("serving FUSE requests"));
    // Anything a handle still held unsaved (an external `umount -l`), then
    // the locks: other mounts may take them now (bounded: a meta that is
    // gone frees them after the lease anyway).
    let _ = rt.block_on(async {
        if tokio::time::timeout(SAVE_AT_EXIT, at_end.save_all()).await.is_err() {
            tracing::error!("files still open were not all saved within {SAVE_AT_EXIT:?}");
        }
        tokio::time::timeout(Duration::from_secs(5), at_end.end_locks()).await
    });
    served?;
    drop(staging);
    Ok(())
}

/// How long the daemon spends saving open files' unsaved bytes at exit.
const SAVE_AT_EXIT: Duration = Duration::from_secs(30);

/// The kernel reads ahead only 128 KiB on a FUSE mount by default; a
/// sequential reader of large files does far better with 1 MiB requests
/// queued ahead. Best effort (needs root).
fn raise_readahead(mp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let mp = mp.to_path_buf();
    // Stat-ing the mount point is a FUSE request: do it off this thread,
    // after the session starts serving.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(m) = std::fs::metadata(&mp) {
            let dev = m.dev();
            // SAFETY: major/minor are pure bit manipulation.
            let (maj, min) = (libc::major(dev), libc::minor(dev));
            let p = format!("/sys/class/bdi/{maj}:{min}/read_ahead_kb");
            if let Err(e) = std::fs::write(&p, "1024") {
                tracing::debug!(path = %p, error = %e, "could not raise the kernel read-ahead");
            }
        }
    });
}
