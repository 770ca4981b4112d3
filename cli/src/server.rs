//! The server roles: `cv up` (meta + worker in one process with embedded
//! defaults), `cv meta` and `cv worker`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use curvine_common::config::{Config, TierConf};
use curvine_common::size::ByteSize;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// State directory (meta, worker ids, disk tier). Default: ~/.curvine
    #[arg(long, env = "CURVINE_HOME")]
    pub home: Option<PathBuf>,
    /// Optional TOML config; flags override it.
    #[arg(long, short = 'c', env = "CURVINE_CONF")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "CURVINE_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Metadata gRPC port (0 = any free port)
    #[arg(long, env = "CURVINE_META_PORT")]
    pub meta_port: Option<u16>,
    /// Worker data port (0 = any free port)
    #[arg(long, env = "CURVINE_WORKER_PORT")]
    pub worker_port: Option<u16>,
    /// HTTP port for /metrics and /health (0 = any free port)
    #[arg(long, env = "CURVINE_WEB_PORT")]
    pub web_port: Option<u16>,
    /// Memory tier capacity (default: a quarter of /dev/shm, at most 8GiB)
    #[arg(long)]
    pub mem: Option<ByteSize>,
    /// Disk tier capacity (default: half the free disk under HOME, at most 64GiB)
    #[arg(long)]
    pub disk: Option<ByteSize>,
    /// Skip the memory tier.
    #[arg(long)]
    pub no_mem: bool,
    /// Directory of the memory tier (default: /dev/shm/curvine-<hash of HOME>)
    #[arg(long)]
    pub mem_dir: Option<PathBuf>,
    /// Default block size of new files
    #[arg(long)]
    pub block_size: Option<ByteSize>,
}

#[derive(Args, Debug, Clone)]
pub struct RoleArgs {
    /// TOML config file; flags and environment override it.
    #[arg(long, short = 'c', env = "CURVINE_CONF")]
    pub config: Option<PathBuf>,
    /// State directory of this role.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long)]
    pub host: Option<String>,
    /// Port of this role (0 = any free port)
    #[arg(long)]
    pub port: Option<u16>,
    /// HTTP port for /metrics and /health (0 = any free port)
    #[arg(long, env = "CURVINE_WEB_PORT")]
    pub web_port: Option<u16>,
    /// Meta address(es) to report to (worker only), comma-separated.
    #[arg(long, env = "CURVINE_META", value_delimiter = ',')]
    pub meta: Vec<String>,
    /// Tiers (worker only): KIND:DIR:CAPACITY, e.g. MEM:/dev/shm/cv:4GiB
    #[arg(long = "tier", value_parser = parse_tier)]
    pub tiers: Vec<TierConf>,
    /// Raft id of this meta member (meta only)
    #[arg(long)]
    pub id: Option<u64>,
    /// Members of a new meta group, ID=HOST:PORT comma-separated, this one
    /// among them; start every member with the same list (meta only)
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Start as a new member of a running group, to be added with
    /// `cv meta members add ID HOST:PORT` (meta only)
    #[arg(long)]
    pub join: bool,
}

fn parse_tier(s: &str) -> Result<TierConf, String> {
    let mut it = s.splitn(3, ':');
    let (Some(kind), Some(dir), Some(cap)) = (it.next(), it.next(), it.next()) else {
        return Err(format!("'{s}': expected KIND:DIR:CAPACITY"));
    };
    if curvine_common::tier::TierKind::parse(kind).is_none() {
        return Err(format!("'{kind}' is not one of MEM, SSD, HDD"));
    }
    Ok(TierConf { kind: kind.to_ascii_uppercase(), dir: dir.into(), capacity: cap.parse()? })
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

pub fn default_home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp")).join(".curvine")
}

/// Free and total bytes of the filesystem holding `p`.
fn fs_space(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated and st is a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64 * st.f_frsize as u64, st.f_blocks as u64 * st.f_frsize as u64))
}

/// `cv up` configuration: embedded defaults, then the config file, then flags.
fn up_config(a: &UpArgs) -> Result<(Config, PathBuf)> {
    let home = a.home.clone().unwrap_or_else(default_home);
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create home {}", home.display()))?;
    let home = home.canonicalize()?;
    let mut conf = load_config(a.config.as_deref())?;
    conf.meta.host = a.host.clone();
    conf.worker.host = a.host.clone();
    conf.web.host = a.host.clone();
    // Relative state directories (the defaults among them) live in HOME,
    // whether or not a config file was given.
    for dir in [&mut conf.meta.dir, &mut conf.worker.dir] {
        if dir.is_relative() {
            *dir = home.join(&*dir);
        }
    }
    if let Some(p) = a.meta_port {
        conf.meta.port = p;
    }
    if let Some(p) = a.worker_port {
        conf.worker.port = p;
    }
    if let Some(p) = a.web_port {
        conf.web.port = p;
    }
    if let Some(b) = a.block_size {
        conf.cluster.block_size = b;
    }
    if conf.worker.tiers.is_empty() {
        let shm = Path::new("/dev/shm");
        if !a.no_mem && shm.is_dir() {
            // One directory per home so two nodes on a host never share blocks.
            let tag = home.to_string_lossy().bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
            let total = fs_space(shm).map(|(_, t)| t).unwrap_or(0);
            let cap = a.mem.map(|s| s.0).unwrap_or((total / 4).min(8 << 30));
            if cap > 0 {
                conf.worker.tiers.push(TierConf {
                    kind: "MEM".into(),
                    dir: a.mem_dir.clone().unwrap_or_else(|| shm.join(format!("curvine-{tag:016x}"))),
                    capacity: ByteSize(cap),
                });
            }
        }
        let disk_dir = home.join("data/ssd");
        let free = fs_space(&home).map(|(f, _)| f).unwrap_or(0);
        let cap = a.disk.map(|s| s.0).unwrap_or((free / 2).min(64 << 30));
        conf.worker.tiers.push(TierConf { kind: "SSD".into(), dir: disk_dir, capacity: ByteSize(cap) });
    }
    conf.validate("cv up")?;
    Ok((conf, home))
}

/// Binds `host:port` for `what`; a failure says why in the user's terms,
/// naming `flag`, the option that chooses this port.
async fn bind(host: &str, port: u16, what: &str, flag: &str) -> Result<TcpListener> {
    TcpListener::bind((host, port)).await.map_err(|e| {
        use std::io::ErrorKind as K;
        let hint = match e.kind() {
            K::AddrInUse => format!("; the port is in use (another Curvine, or another program?): choose another with {flag}"),
            K::PermissionDenied if port != 0 && port < 1024 => {
                format!("; ports below 1024 need root (or CAP_NET_BIND_SERVICE): choose another with {flag}")
            }
            K::AddrNotAvailable => format!("; {host} is not an address of this machine: give one of its own with --host"),
            _ => String::new(),
        };
        anyhow::anyhow!("cannot listen on {host}:{port} for the {what}: {e}{hint}")
    })
}

/// Refuses a wildcard listen address (0.0.0.0, ::) for a service whose
/// address is handed out: meta, workers and clients would be told to connect
/// to it, which on another machine means that machine itself. Checked on
/// the literal before binding and on the bound address after (a name can
/// resolve to the wildcard too).
fn check_advertised(host: &str, bound: Option<SocketAddr>, what: &str) -> Result<()> {
    let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>();
    if literal.is_ok_and(|ip| ip.is_unspecified()) || bound.is_some_and(|a| a.ip().is_unspecified()) {
        anyhow::bail!(
            "host {host}: the {what} address is handed to clients and workers, and a wildcard address does not lead them to this machine; give this machine's own address (e.g. --host 10.0.0.5)"
        );
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn shutdown_signal(rx: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|v| *v).await;
    }
}

pub async fn up(a: UpArgs) -> Result<()> {
    let (mut conf, home) = up_config(&a)?;
    check_advertised(&conf.meta.host, None, "meta")?;
    let meta_l = bind(&conf.meta.host, conf.meta.port, "meta", "--meta-port").await?;
    check_advertised(&conf.meta.host, Some(meta_l.local_addr()?), "meta")?;
    let worker_l = bind(&conf.worker.host, conf.worker.port, "worker", "--worker-port").await?;
    check_advertised(&conf.worker.host, Some(worker_l.local_addr()?), "worker")?;
    let web_l = bind(&conf.web.host, conf.web.port, "web", "--web-port").await?;
    let (meta_addr, worker_addr, web_addr) = (meta_l.local_addr()?, worker_l.local_addr()?, web_l.local_addr()?);
    conf.meta.port = meta_addr.port();
    conf.worker.port = worker_addr.port();
    conf.worker.meta = vec![meta_addr.to_string()];

    let mut registry = Registry::default();
    let meta = curvine_meta::MetaNode::start(conf.clone(), meta_l, &mut registry).await?;
    let worker = curvine_worker::start(conf.clone(), worker_l, &mut registry).await?;

    let (tx, rx) = watch::channel(false);
    let health = serde_json::json!({"roles": ["meta", "worker"], "meta": meta_addr.to_string(), "worker": worker_addr.to_string()});
    let web = tokio::spawn(crate::web::serve(web_l, Arc::new(registry), health, shutdown_signal(&rx)));

    write_cluster_file(&home, meta_addr, Some(worker_addr), web_addr)?;
    let tiers: Vec<String> =
        conf.worker.tiers.iter().map(|t| format!("{}:{}:{}", t.kind, t.dir.display(), t.capacity)).collect();
    println!(
        "curvine ready meta={meta_addr} worker={worker_addr} web={web_addr} home={} tiers={}",
        home.display(),
        tiers.join(",")
    );
    terminated().await;
    tracing::info!("shutting down");
    let _ = tx.send(true);
    worker.shutdown().await;
    meta.shutdown().await?;
    let _ = web.await;
    Ok(())
}

fn write_cluster_file(home: &Path, meta: SocketAddr, worker: Option<SocketAddr>, web: SocketAddr) -> Result<()> {
    let mut t = String::from("# Written by `cv up` at start: the addresses this node listens on.\n");
    t.push_str(&format!("[client]\nmeta = [\"{meta}\"]\n\n[resolved]\nmeta = \"{meta}\"\n"));
    if let Some(w) = worker {
        t.push_str(&format!("worker = \"{w}\"\n"));
    }
    t.push_str(&format!("web = \"{web}\"\n"));
    let path = home.join("cluster.toml");
    std::fs::write(&path, t).with_context(|| format!("cannot write {}", path.display()))
}

fn role_config(a: &RoleArgs, role: &str) -> Result<Config> {
    let mut conf = load_config(a.config.as_deref())?;
    let home = default_home();
    match role {
        "meta" => {
            if let Some(d) = &a.dir {
                conf.meta.dir = d.clone();
            } else if a.config.is_none() {
                conf.meta.dir = home.join("meta");
            }
            if let Some(h) = &a.host {
                conf.meta.host = h.clone();
            }
            if let Some(p) = a.port {
                conf.meta.port = p;
            }
            if let Some(id) = a.id {
                conf.meta.id = id;
            }
            if !a.peers.is_empty() {
                conf.meta.peers = a.peers.clone();
            }
            conf.meta.join |= a.join;
        }
        _ => {
            if let Some(d) = &a.dir {
                conf.worker.dir = d.clone();
            } else if a.config.is_none() {
                conf.worker.dir = home.join("worker");
            }
            if let Some(h) = &a.host {
                conf.worker.host = h.clone();
            }
            if let Some(p) = a.port {
                conf.worker.port = p;
            }
            if !a.meta.is_empty() {
                conf.worker.meta = a.meta.clone();
            }
            if !a.tiers.is_empty() {
                conf.worker.tiers = a.tiers.clone();
            }
            if conf.worker.tiers.is_empty() {
                anyhow::bail!("worker.tiers: no tier configured (add [[worker.tiers]] to the config or --tier KIND:DIR:CAPACITY)");
            }
        }
    }
    if let Some(p) = a.web_port {
        conf.web.port = p;
    }
    conf.validate(a.config.as_ref().map(|p| p.display().to_string()).as_deref().unwrap_or("flags"))?;
    Ok(conf)
}

/// A role started by `cv meta` or `cv worker`.
enum Running {
    Meta(curvine_meta::MetaNode),
    Worker(curvine_worker::Worker),
}

/// Runs one role (`"meta"` or `"worker"`) until SIGTERM or Ctrl-C.
pub async fn role(a: RoleArgs, role: &'static str) -> Result<()> {
    let conf = role_config(&a, role)?;
    let (host, port) = match role {
        "meta" => (conf.meta.host.clone(), conf.meta.port),
        _ => (conf.worker.host.clone(), conf.worker.port),
    };
    // A meta joining or forming a group with --peers is known by the peer
    // list; a new one-member group records this address.
    let advertised = role != "meta" || (conf.meta.peers.is_empty() && !conf.meta.join);
    if advertised {
        check_advertised(&host, None, role)?;
    }
    let l = bind(&host, port, role, "--port").await?;
    if advertised {
        check_advertised(&host, Some(l.local_addr()?), role)?;
    }
    let web_l = bind(&conf.web.host, conf.web.port, "web", "--web-port").await?;
    let (addr, web_addr) = (l.local_addr()?, web_l.local_addr()?);
    let mut registry = Registry::default();
    let running = match role {
        "meta" => Running::Meta(curvine_meta::MetaNode::start(conf, l, &mut registry).await?),
        _ => Running::Worker(curvine_worker::start(conf, l, &mut registry).await?),
    };
    let (tx, rx) = watch::channel(false);
    let web = tokio::spawn(crate::web::serve(
        web_l,
        Arc::new(registry),
        serde_json::json!({"roles": [role], role: addr.to_string()}),
        shutdown_signal(&rx),
    ));
    println!("curvine ready {role}={addr} web={web_addr}");
    terminated().await;
    let _ = tx.send(true);
    match running {
        Running::Meta(node) => node.shutdown().await?,
        Running::Worker(w) => w.shutdown().await,
    }
    let _ = web.await;
    Ok(())
}
