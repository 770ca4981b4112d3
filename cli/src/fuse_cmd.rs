//! `cv fuse MOUNTPOINT`: serves Curvine through the kernel's FUSE until
//! SIGTERM/Ctrl-C or `umount`.

use std::time::Duration;

use clap::Args;

use crate::ClientArgs;

#[derive(Args, Debug, Clone)]
pub struct FuseArgs {
    /// Directory to mount on (must exist)
    pub mountpoint: std::path::PathBuf,
    /// Curvine directory to show at the mount point
    #[arg(long, default_value = "/")]
    pub subdir: String,
    /// Let other users reach the mount (root, or user_allow_other in /etc/fuse.conf)
    #[arg(long)]
    pub allow_other: bool,
    /// Bypass the kernel page cache for file data
    #[arg(long)]
    pub direct_io: bool,
    /// Let the kernel gather small writes in its page cache before sending them
    #[arg(long)]
    pub writeback_cache: bool,
    /// Seconds the kernel may cache file attributes
    #[arg(long, default_value_t = 1.0)]
    pub attr_timeout: f64,
    /// Seconds the kernel may cache name lookups
    #[arg(long, default_value_t = 1.0)]
    pub entry_timeout: f64,
    /// Seconds the kernel may cache that a name does not exist (0: not
    /// at all). Saves a meta call per repeated lookup of a missing name
    /// (Python imports, library search paths); a file another client
    /// creates stays invisible here for up to this long
    #[arg(long, default_value_t = 0.0)]
    pub negative_timeout: f64,
    /// Seconds a lookup's answer (with a small file's blocks) may serve the
    /// open that follows it without asking meta again; never longer than
    /// --attr-timeout and --entry-timeout (0: every open asks meta)
    #[arg(long, default_value_t = 0.1)]
    pub open_after_lookup: f64,
    /// Threads taking requests from the kernel
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Let the kernel read files a worker on this host holds in MEM as one
    /// file (one block, or the blocks of a file written through that worker)
    /// straight from it (Linux 6.9+); while a file is open that way,
    /// opening it for writing on this mount fails with ETXTBSY
    #[arg(long)]
    pub passthrough: bool,
    /// Mount read-only (writes fail with EROFS), as for model weights and
    /// datasets; turns --passthrough on unless --direct-io or
    /// --writeback-cache is given (no write open can then meet ETXTBSY)
    #[arg(long)]
    pub read_only: bool,
}

fn secs(what: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("--{what} {s}: must be a number of seconds ≥ 0"))
}

pub async fn run(a: FuseArgs, c: &ClientArgs) -> anyhow::Result<()> {
    let opts = curvine_fuse::FuseOptions {
        mountpoint: a.mountpoint.clone(),
        subdir: a.subdir.clone(),
        allow_other: a.allow_other,
        direct_io: a.direct_io,
        writeback_cache: a.writeback_cache,
        attr_timeout: secs("attr-timeout", a.attr_timeout)?,
        entry_timeout: secs("entry-timeout", a.entry_timeout)?,
        negative_timeout: secs("negative-timeout", a.negative_timeout)?,
        open_after_lookup: secs("open-after-lookup", a.open_after_lookup)?,
        threads: a.threads,
        passthrough: a.passthrough || (a.read_only && !a.direct_io && !a.writeback_cache),
        read_only: a.read_only,
    };
    let fs = c.fs()?;
    let rt = tokio::runtime::Handle::current();
    // The FUSE session blocks its thread until unmounted.
    tokio::task::spawn_blocking(move || curvine_fuse::run(fs, rt, opts)).await??;
    Ok(())
}
