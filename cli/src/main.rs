//! `cv`: the one Curvine binary — every server role, the file commands,
//! admin reports and benchmarks.

mod bench;
mod bench_meta;
mod bench_ufs;
mod fs_cmd;
mod fuse_cmd;
mod members_cmd;
mod mount_cmd;
mod server;
mod warm_cmd;
mod web;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cv", version = curvine_common::VERSION, about = "Curvine: a multi-tier cache for AI data", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// Meta service address(es), comma-separated
    #[arg(long, env = "CURVINE_META", default_value = curvine_common::config::DEFAULT_META_ADDR, value_delimiter = ',', global = true)]
    pub meta: Vec<String>,
}

impl ClientArgs {
    pub fn fs(&self) -> curvine_client::Result<curvine_client::FileSystem> {
        curvine_client::FileSystem::new(curvine_common::config::ClientConf {
            meta: self.meta.clone(),
            ..Default::default()
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an all-in-one node (meta + worker) with embedded defaults
    Up(server::UpArgs),
    /// Run the metadata service (or, with a subcommand, manage its group)
    #[command(args_conflicts_with_subcommands = true)]
    Meta {
        #[command(subcommand)]
        cmd: Option<members_cmd::MetaCmd>,
        #[command(flatten)]
        args: server::RoleArgs,
    },
    /// Run a worker
    Worker(server::RoleArgs),
    /// File commands: ls, mkdir, put, get, cat, rm, mv, stat, du, df
    Fs {
        #[command(subcommand)]
        cmd: fs_cmd::FsCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Workers, tiers, capacity and use
    Report {
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Mount a UFS (S3, GCS, Azure, OSS, WebHDFS, local) into the namespace; without arguments, list mounts
    Mount {
        #[command(flatten)]
        args: mount_cmd::MountArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a mount and its cached data (the UFS is not touched)
    Umount {
        path: String,
        /// Also drop files under it that exist only in the cache
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cache PATH (and everything under it) from its UFS with a load job; `warm status`, `warm cancel`
    #[command(alias = "load")]
    Warm {
        #[command(flatten)]
        args: warm_cmd::WarmArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Upload files under PATH that wait for their UFS (write-back) now, and wait
    Sync {
        path: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drop cached copies under PATH (the UFS keeps the data; pinned and cache-only files stay)
    Free {
        path: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Keep PATH (and everything under it) cached: `cv free` and eviction skip it
    Pin {
        path: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Undo `cv pin`
    Unpin {
        path: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Mount Curvine as a POSIX file system at MOUNTPOINT (FUSE) and serve until SIGTERM or umount
    Fuse {
        #[command(flatten)]
        args: fuse_cmd::FuseArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Benchmarks against same-run machine baselines
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the version
    Version,
}

fn main() {
    let cli = Cli::parse();
    let server = matches!(cli.cmd, Cmd::Up(_) | Cmd::Meta { cmd: None, .. } | Cmd::Worker(_) | Cmd::Fuse { .. });
    curvine_common::telemetry::init_logging(if server { "info" } else { "warn" });
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cv: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    // The command runs as a spawned task, on a runtime worker thread next to
    // the IO driver, rather than on the main thread: a wake-up then does not
    // have to cross threads, which halves `cv fs get` throughput otherwise.
    let task = rt.spawn(async move {
        match cli.cmd {
            Cmd::Up(a) => server::up(a).await,
            Cmd::Meta { cmd: Some(cmd), .. } => members_cmd::run(cmd).await,
            Cmd::Meta { cmd: None, args } => server::role(args, "meta").await,
            Cmd::Worker(a) => server::role(a, "worker").await,
            Cmd::Fs { cmd, client } => fs_cmd::run(cmd, &client).await,
            Cmd::Report { client, json } => fs_cmd::report(&client, json).await,
            Cmd::Bench { cmd, client } => bench::run(cmd, &client).await,
            Cmd::Fuse { args, client } => fuse_cmd::run(args, &client).await,
            Cmd::Mount { args, client } => mount_cmd::run(args, &client).await,
            Cmd::Umount { path, force, client } => mount_cmd::umount(&path, force, &client).await,
            Cmd::Warm { args, client } => warm_cmd::run(args, &client).await,
            Cmd::Sync { path, client } => mount_cmd::sync(&path, &client).await,
            Cmd::Free { path, client } => warm_cmd::free(&path, &client).await,
            Cmd::Pin { path, client } => warm_cmd::pin(&path, true, &client).await,
            Cmd::Unpin { path, client } => warm_cmd::pin(&path, false, &client).await,
            Cmd::Version => {
                println!("cv {}", curvine_common::VERSION);
                Ok(())
            }
        }
    });
    let res = rt.block_on(task).unwrap_or_else(|e| Err(anyhow::anyhow!("command task failed: {e}")));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Err(e) = res {
        // One line a human can act on: the root cause carries the path.
        let msg = match e.downcast_ref::<curvine_common::Error>() {
            Some(ce) => ce.to_string(),
            None => format!("{e:#}"),
        };
        eprintln!("cv: {msg}");
        std::process::exit(1);
    }
}
