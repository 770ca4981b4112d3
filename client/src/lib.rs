//! The Rust SDK of Curvine: `FileSystem` for namespace calls, `FileWriter`
//! and `FileReader` for bytes. Namespace calls go to the meta service over
//! gRPC; block bytes move directly between this process and the workers over
//! a fabric transport.

mod ahead;
mod fs;
#[cfg(feature = "gpu")]
pub mod gpu;
mod local;
pub mod locks;
pub use curvine_common::meta_client::{MetaClient, MetaRpc};
mod mounts;
mod pool;
pub mod posix;
mod reader;
mod writer;

pub use curvine_common::proto::{FileKind, FileStatus, LocatedBlock, ReportResponse};
pub use curvine_common::{Error, ErrorKind, Result};
pub use curvine_common::proto::{FreeResponse, JobInfo, MountInfo};
pub use fs::{CreateOptions, FileSystem, Removed};
pub use local::{LocalStats, MappedRange};
pub use mounts::MountOptions;
pub use reader::FileReader;
pub use writer::FileWriter;
