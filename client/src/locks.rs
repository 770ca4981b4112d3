//! Cluster-wide record locks: fcntl-style locks that every client of the
//! cluster sees (meta keeps them; see docs/architecture.md). A lock belongs
//! to `(session, owner)`; a session that stops calling `lock_keep` within
//! the lease meta answers loses its locks.

use std::time::Duration;

use curvine_common::path::normalize;
use curvine_common::proto::lock_request::{Kind, Op};
use curvine_common::proto::{LockRequest, LockResponse};
use curvine_common::Result;

use crate::fs::FileSystem;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    Read,
    Write,
}

/// Who takes a lock: `session` names this client (random, not 0), `owner`
/// the lock owner inside it, `pid` is shown to others testing for locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockWho {
    pub session: u64,
    pub owner: u64,
    pub pid: u32,
}

/// A lock found in the way (`lock_test`); `end` is `u64::MAX` for "to the
/// end of the file".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldLock {
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

fn kind(k: Option<LockKind>) -> Kind {
    match k {
        None => Kind::Unlock,
        Some(LockKind::Read) => Kind::Read,
        Some(LockKind::Write) => Kind::Write,
    }
}

fn range_req(op: Op, path: &str, who: LockWho, k: Option<LockKind>, start: u64, end: u64) -> Result<LockRequest> {
    Ok(LockRequest {
        op: op as i32,
        path: normalize(path)?,
        session: who.session,
        owner: who.owner,
        pid: who.pid,
        kind: kind(k) as i32,
        start,
        end,
        ..Default::default()
    })
}

impl FileSystem {
    async fn lock_call(&self, req: LockRequest) -> Result<LockResponse> {
        self.meta()
            .call(|mut c| {
                let req = req.clone();
                async move { c.lock(req).await }
            })
            .await
    }

    /// Takes (`kind` Some) or drops (None) `who`'s lock on bytes
    /// `[start, end]` of `path`. Fails with `ErrorKind::WouldBlock` when
    /// another owner holds a conflicting lock; never waits.
    pub async fn lock_set(&self, path: &str, who: LockWho, k: Option<LockKind>, start: u64, end: u64) -> Result<()> {
        self.lock_call(range_req(Op::Set, path, who, k, start, end)?).await.map(|_| ())
    }

    /// The first lock of another owner that would stop `who` taking `k` on
    /// `[start, end]` of `path` (F_GETLK).
    pub async fn lock_test(&self, path: &str, who: LockWho, k: LockKind, start: u64, end: u64) -> Result<Option<HeldLock>> {
        let req = range_req(Op::Get, path, who, Some(k), start, end)?;
        let r = self.lock_call(req).await?;
        let kind = match Kind::try_from(r.kind) {
            Ok(Kind::Read) => LockKind::Read,
            Ok(Kind::Write) => LockKind::Write,
            _ => return Ok(None),
        };
        Ok(Some(HeldLock { kind, start: r.start, end: r.end, pid: r.pid }))
    }

    /// Drops `session`'s locks: on `path` only and/or of `owner` only when
    /// given (a close), all of them otherwise (an unmount).
    pub async fn lock_release(&self, session: u64, path: Option<&str>, owner: Option<u64>) -> Result<()> {
        let req = LockRequest {
            op: Op::Release as i32,
            session,
            only_path: path.map(normalize).transpose()?,
            only_owner: owner,
            ..Default::default()
        };
        self.lock_call(req).await.map(|_| ())
    }

    /// Renews `session`'s lease; answers the lease (renew well within it).
    pub async fn lock_keep(&self, session: u64) -> Result<Duration> {
        let req = LockRequest { op: Op::Keep as i32, session, ..Default::default() };
        Ok(Duration::from_millis(self.lock_call(req).await?.lease_ms))
    }
}
