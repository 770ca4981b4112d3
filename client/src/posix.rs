//! What POSIX front ends (FUSE) need beyond files and directories: owners,
//! symbolic links and extended attributes.

use curvine_common::path::normalize;
use curvine_common::proto::{self, FileStatus};
use curvine_common::{Error, Result};

use crate::fs::FileSystem;

/// `xattr_set` flags, as setxattr(2) has them.
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

impl FileSystem {
    /// Changes the owner and/or group of `path`.
    pub async fn set_owner(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<FileStatus> {
        let path = normalize(path)?;
        let r = self.meta().call(|mut c| {
            let req = proto::SetAttrRequest { path: path.clone(), uid, gid, ..Default::default() };
            async move { c.set_attr(req).await }
        });
        r.await?.status.ok_or_else(|| Error::internal("set_attr: empty response"))
    }

    /// Creates a symbolic link at `path` pointing to `target` (stored as
    /// given; meta never follows it).
    pub async fn symlink(&self, target: &str, path: &str, owner: Option<(u32, u32)>) -> Result<FileStatus> {
        let path = normalize(path)?;
        let r = self.meta().call(|mut c| {
            let req = proto::SymlinkRequest {
                path: path.clone(),
                target: target.to_string(),
                uid: owner.map(|o| o.0),
                gid: owner.map(|o| o.1),
            };
            async move { c.symlink(req).await }
        });
        r.await?.status.ok_or_else(|| Error::internal("symlink: empty response"))
    }

    /// `link(2)`: makes `dst` another name of the file at `src` (files only;
    /// not under UFS mounts). Returns the file's status under `dst`.
    pub async fn link(&self, src: &str, dst: &str) -> Result<FileStatus> {
        let (src, dst) = (normalize(src)?, normalize(dst)?);
        let r = self.meta().call(|mut c| {
            let req = proto::LinkRequest { src: src.clone(), dst: dst.clone() };
            async move { c.link(req).await }
        });
        r.await?.status.ok_or_else(|| Error::internal("link: empty response"))
    }

    /// Creates a FIFO, socket or device node (`kind`; `rdev` for devices).
    pub async fn mknod(&self, path: &str, kind: proto::FileKind, mode: u32, rdev: u64, owner: Option<(u32, u32)>) -> Result<FileStatus> {
        let path = normalize(path)?;
        let r = self.meta().call(|mut c| {
            let req = proto::MknodRequest {
                path: path.clone(),
                kind: kind as i32,
                mode,
                rdev,
                uid: owner.map(|o| o.0),
                gid: owner.map(|o| o.1),
            };
            async move { c.mknod(req).await }
        });
        r.await?.status.ok_or_else(|| Error::internal("mknod: empty response"))
    }

    async fn xattr(&self, path: &str, op: u32, name: &str, value: &[u8], flags: u32) -> Result<proto::XattrResponse> {
        let path = normalize(path)?;
        self.meta()
            .call(|mut c| {
                let req = proto::XattrRequest { path: path.clone(), op, name: name.to_string(), value: value.to_vec(), flags };
                async move { c.xattr(req).await }
            })
            .await
    }

    /// The value of extended attribute `name`; `NotFound` when absent.
    pub async fn xattr_get(&self, path: &str, name: &str) -> Result<Vec<u8>> {
        Ok(self.xattr(path, 0, name, &[], 0).await?.value)
    }

    pub async fn xattr_set(&self, path: &str, name: &str, value: &[u8], flags: u32) -> Result<()> {
        self.xattr(path, 1, name, value, flags).await.map(|_| ())
    }

    pub async fn xattr_remove(&self, path: &str, name: &str) -> Result<()> {
        self.xattr(path, 2, name, &[], 0).await.map(|_| ())
    }

    pub async fn xattr_list(&self, path: &str) -> Result<Vec<String>> {
        Ok(self.xattr(path, 3, "", &[], 0).await?.names)
    }
}
