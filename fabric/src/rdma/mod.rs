//! The RDMA transport: reliable-connected queue pairs set up over the TCP
//! control connection, with block bytes moved by one-sided RDMA operations
//! between buffers registered once from a pool.
//!
//! - Reads: the worker copies the requested range (checksums verified at
//!   the partial edges, exactly as over TCP) into one of its registered
//!   slots and RDMA-WRITEs it into the client's registered slot; the answer
//!   on the control connection carries the checksums of the whole chunks,
//!   which the client verifies before copying out.
//! - Writes: the client puts the bytes into its slot and sends their
//!   address; the worker RDMA-READs them and appends them to the block.
//!
//! Built only with the cargo feature `rdma` (libibverbs from rdma-core).
//! Without it, or on a host without an RDMA device, the same API reports
//! why RDMA is unavailable and `auto::AutoTransport` uses TCP instead. The
//! wire format (`wire`) is always built.

pub mod auto;
pub mod client;
pub mod server;
pub mod wire;

#[cfg(feature = "rdma")]
pub mod pool;
#[cfg(feature = "rdma")]
pub mod verbs;

/// Which device and port to use, and how much memory to register.
#[derive(Clone, Debug)]
pub struct RdmaOptions {
    /// Device name (`rxe0`, `mlx5_0`); `None` takes the first device.
    pub device: Option<String>,
    /// Port number on the device (ports count from 1).
    pub port: u8,
    /// GID table index of the port's address (RoCE needs one).
    pub gid_index: u8,
    /// Bytes per registered slot: the largest piece one RDMA operation moves.
    pub slot_size: usize,
    /// Slots registered up front: requests beyond this many wait.
    pub slots: usize,
}

impl Default for RdmaOptions {
    fn default() -> Self {
        RdmaOptions { device: None, port: 1, gid_index: 0, slot_size: 4 << 20, slots: 16 }
    }
}

impl RdmaOptions {
    /// The options `conf` asks for; `None` when RDMA is turned off there.
    pub fn from_conf(conf: &curvine_common::config::RdmaConf) -> Option<RdmaOptions> {
        conf.enabled.then(|| RdmaOptions {
            device: (!conf.device.is_empty()).then(|| conf.device.clone()),
            port: conf.port,
            gid_index: conf.gid_index,
            ..Default::default()
        })
    }
}

/// The name of the RDMA device `opts` selects, or an error that says why
/// this host or build cannot use RDMA.
pub fn probe(opts: &RdmaOptions) -> curvine_common::Result<String> {
    #[cfg(feature = "rdma")]
    {
        verbs::Device::open(opts.device.as_deref(), opts.port, opts.gid_index).map(|d| d.name.clone())
    }
    #[cfg(not(feature = "rdma"))]
    {
        let _ = opts;
        Err(not_built())
    }
}

#[cfg(not(feature = "rdma"))]
pub(crate) fn not_built() -> curvine_common::Error {
    curvine_common::Error::new(
        curvine_common::ErrorKind::Unavailable,
        "rdma: this build has no RDMA support (build with the cargo feature `rdma`)",
    )
}
