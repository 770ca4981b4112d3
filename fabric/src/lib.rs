//! Curvine's data plane: the frame protocol and the transports that carry
//! block bytes between clients and workers. Payload bytes never pass
//! through protobuf.

pub mod crc;
pub mod frame;
pub mod local;
pub mod msg;
pub mod range;
pub mod rdma;
pub mod service;
pub mod shm;
pub mod tcp;
pub mod testing;
pub mod transport;

pub use service::{BlockService, BlockSink, ReadSource};
pub use transport::{Capabilities, DataConn, Transport};
