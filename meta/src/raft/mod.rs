//! Raft glue: type configuration, the RocksDB log store and the gRPC transport.

pub mod log_store;
pub mod network;
pub mod types;
