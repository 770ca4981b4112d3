//! Mount administration on `FileSystem`: `cv mount`, `cv umount`, resync.

use std::collections::BTreeMap;

use curvine_common::path::normalize;
use curvine_common::proto::{self, MountInfo};
use curvine_common::{Error, Result};

use crate::fs::FileSystem;

/// What `mount` asks for; `None` fields take the server's defaults.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    pub options: BTreeMap<String, String>,
    pub write_mode: Option<String>,
    pub ttl_ms: i64,
    pub sync_interval_ms: Option<i64>,
    /// Write-back: how long a closed file waits before its upload.
    pub upload_delay_ms: i64,
}

impl FileSystem {
    /// Mounts UFS `uri` at `path`; meta checks the UFS is reachable first.
    #[tracing::instrument(skip(self, opts), fields(uri))]
    pub async fn mount(&self, uri: &str, path: &str, opts: MountOptions) -> Result<MountInfo> {
        let path = normalize(path)?;
        let req = proto::MountRequest {
            path,
            uri: uri.to_string(),
            options: opts.options.into_iter().collect(),
            write_mode: opts.write_mode.unwrap_or_default(),
            ttl_ms: opts.ttl_ms,
            sync_interval_ms: opts.sync_interval_ms.unwrap_or(0),
            sync_interval_set: opts.sync_interval_ms.is_some(),
            upload_delay_ms: opts.upload_delay_ms,
        };
        let r = self.meta_ufs().call(|mut c| {
            let req = req.clone();
            async move { c.mount(req).await }
        });
        r.await?.mount.ok_or_else(|| Error::internal("mount: empty response"))
    }

    /// Unmounts `path`; `force` also drops files that exist only in the cache.
    pub async fn umount(&self, path: &str, force: bool) -> Result<u64> {
        let path = normalize(path)?;
        let r = self.meta().call(|mut c| {
            let req = proto::UmountRequest { path: path.clone(), force };
            async move { c.umount(req).await }
        });
        Ok(r.await?.freed_blocks)
    }

    /// The mount table, credentials redacted.
    pub async fn mounts(&self) -> Result<Vec<MountInfo>> {
        let r = self.meta().call(|mut c| async move { c.list_mounts(proto::ListMountsRequest {}).await });
        Ok(r.await?.mounts)
    }

    /// Re-reads `path` (and the listed directories below it) from its UFS now.
    pub async fn resync(&self, path: &str) -> Result<proto::ResyncResponse> {
        let path = normalize(path)?;
        self.meta_ufs()
            .call(|mut c| {
                let req = proto::ResyncRequest { path: path.clone() };
                async move { c.resync(req).await }
            })
            .await
    }
}

impl FileSystem {
    /// Starts a load job that caches everything under `path`; returns at once.
    /// `parallel` bounds the block loads in flight (0 = the server default).
    pub async fn warm(&self, path: &str, parallel: u32) -> Result<proto::JobInfo> {
        let path = normalize(path)?;
        let r = self.meta().call(|mut c| {
            let req = proto::WarmRequest { path: path.clone(), parallel };
            async move { c.warm(req).await }
        });
        r.await?.job.ok_or_else(|| Error::internal("warm: empty response"))
    }

    /// One job (`id` > 0) or all of them.
    pub async fn jobs(&self, id: u64) -> Result<Vec<proto::JobInfo>> {
        let r = self.meta().call(|mut c| async move { c.job_status(proto::JobStatusRequest { id }).await });
        Ok(r.await?.jobs)
    }

    pub async fn cancel_job(&self, id: u64) -> Result<proto::JobInfo> {
        let r = self.meta().call(|mut c| async move { c.cancel_job(proto::CancelJobRequest { id }).await });
        r.await?.job.ok_or_else(|| Error::internal("cancel: empty response"))
    }

    /// Drops cached copies under `path`; the UFS keeps the data.
    pub async fn free(&self, path: &str) -> Result<proto::FreeResponse> {
        let path = normalize(path)?;
        self.meta()
            .call(|mut c| {
                let req = proto::FreeRequest { path: path.clone() };
                async move { c.free(req).await }
            })
            .await
    }

    /// Uploads every file under `path` still waiting for its UFS, and waits.
    pub async fn sync(&self, path: &str) -> Result<proto::SyncResponse> {
        let path = normalize(path)?;
        self.meta_ufs()
            .call(|mut c| {
                let req = proto::SyncRequest { path: path.clone() };
                async move { c.sync(req).await }
            })
            .await
    }

    /// Pins (or unpins) `path` and everything below it against eviction and `free`.
    pub async fn pin(&self, path: &str, pinned: bool) -> Result<proto::FileStatus> {
        let path = normalize(path)?;
        let r = self.meta().call(|mut c| {
            let req = proto::PinRequest { path: path.clone(), pinned };
            async move { c.pin(req).await }
        });
        r.await?.status.ok_or_else(|| Error::internal("pin: empty response"))
    }
}
