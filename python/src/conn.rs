//! One process's connection to a cluster: a tokio runtime and a
//! `FileSystem` on it, rebuilt when the process forks.
//!
//! A forked child (a DataLoader worker) inherits the parent's memory but not
//! its threads: the runtime's workers and the gRPC channel's tasks are gone,
//! so any call through them would wait forever. Each `Conn` remembers the pid
//! that built it; a client used in another process builds a new one. The
//! inherited one is never dropped there either, because dropping a runtime
//! waits for worker threads that do not exist in the child.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::sync::Arc;

use curvine_client::FileSystem;
use curvine_common::config::ClientConf;
use curvine_common::{Error, Result};
use tokio::runtime::Runtime;

pub struct Conn {
    pid: u32,
    rt: ManuallyDrop<Runtime>,
    fs: ManuallyDrop<FileSystem>,
}

impl Conn {
    pub fn new(conf: &ClientConf, threads: usize) -> Result<Arc<Conn>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("curvine-py")
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("cannot start the client runtime: {e}")))?;
        // The channel and connection pool spawn onto the current runtime.
        let fs = {
            let _enter = rt.enter();
            FileSystem::new(conf.clone())?
        };
        Ok(Arc::new(Conn { pid: std::process::id(), rt: ManuallyDrop::new(rt), fs: ManuallyDrop::new(fs) }))
    }

    /// Whether this connection was made by the current process.
    pub fn is_current(&self) -> bool {
        self.pid == std::process::id()
    }

    pub fn fs(&self) -> &FileSystem {
        &self.fs
    }

    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// Runs `f` to completion on this connection's runtime. Called with the
    /// GIL released.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.is_current() {
            // SAFETY: dropped once, here, and never used again.
            unsafe {
                ManuallyDrop::drop(&mut self.fs);
                ManuallyDrop::drop(&mut self.rt);
            }
        }
        // Else: inherited across fork. Leak it (see the module comment).
    }
}
