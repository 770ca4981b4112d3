//! Types every Curvine crate shares: errors, paths, configuration, sizes,
//! tier kinds, and the control-plane protobuf definitions.

pub mod config;
pub mod error;
pub mod path;
pub mod size;
pub mod telemetry;
pub mod tier;

pub use error::{Error, ErrorKind, Result};

/// Generated control-plane types and gRPC stubs (`proto/meta.proto`).
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("curvine.meta");
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
