//! Types every Curvine crate shares: errors, paths, configuration, sizes,
//! tier kinds, and the control-plane protobuf definitions.

pub mod config;
pub mod error;
pub mod frame_rpc;
pub mod meta_client;
pub mod path;
pub mod size;
pub mod telemetry;
pub mod tier;

pub use error::{Error, ErrorKind, Result};

/// gRPC header naming a client call (`CLIENT-SEQ`, hex), the same on every
/// retry: meta applies the writes of one call once.
pub const REQUEST_ID_HEADER: &str = "x-cv-request-id";
/// gRPC header asking a meta follower to answer a read itself (`follower`).
pub const READ_HEADER: &str = "x-cv-read";

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
