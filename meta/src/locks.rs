//! The service side of cluster-wide locks (`namespace/locks.rs` holds the
//! state): the `Lock` call, and the leases that free a dead client's locks.
//!
//! A client with locks renews its session (`KEEP`) well within
//! `meta.lock_lease`. The leader remembers when it last heard from each
//! session, in memory only: a new leader gives every session a full lease
//! from the moment it took over, so a leader change never frees live
//! clients' locks. A session holding locks and silent for a lease loses
//! them through a `ReleaseLocks` command, like any other write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use curvine_common::proto::lock_request::{Kind, Op};
use curvine_common::proto::{LockRequest, LockResponse};
use curvine_common::path::normalize;
use curvine_common::{Error, Result};
use parking_lot::Mutex;

use crate::leader::Role;
use crate::namespace::locks::{self, LockKind, LockOwner};
use crate::namespace::MetaCommand;
use crate::service::MetaServiceImpl;

/// When the leader last heard from each lock session.
pub struct Leases {
    seen: Mutex<HashMap<u64, Instant>>,
    /// When this node last became leader: the lease start of sessions it
    /// has not heard from.
    since: Mutex<Instant>,
    /// Bumped at each leadership; an older sweeper stops.
    term: AtomicU64,
}

impl Default for Leases {
    fn default() -> Self {
        Leases { seen: Mutex::default(), since: Mutex::new(Instant::now()), term: AtomicU64::new(0) }
    }
}

impl Leases {
    fn keep(&self, session: u64) {
        self.seen.lock().insert(session, Instant::now());
    }

    fn expired(&self, session: u64, lease: Duration) -> bool {
        let last = self.seen.lock().get(&session).copied().unwrap_or(*self.since.lock());
        last.elapsed() > lease
    }
}

fn kind_of(k: Kind) -> Option<LockKind> {
    match k {
        Kind::Unlock => None,
        Kind::Read => Some(LockKind::Read),
        Kind::Write => Some(LockKind::Write),
    }
}

impl MetaServiceImpl {
    #[tracing::instrument(skip(self))]
    pub(crate) async fn do_lock(&self, r: LockRequest) -> Result<LockResponse> {
        let op = Op::try_from(r.op).map_err(|_| Error::invalid(format!("lock: unknown operation {}", r.op)))?;
        let kind = Kind::try_from(r.kind).map_err(|_| Error::invalid(format!("lock: unknown kind {}", r.kind)))?;
        if r.session == 0 {
            return Err(Error::invalid("lock: session 0 is not a session"));
        }
        if matches!(op, Op::Set | Op::Get) && r.start > r.end {
            return Err(Error::invalid(format!("lock range {}..{} is empty", r.start, r.end)));
        }
        let who = LockOwner { session: r.session, owner: r.owner, pid: r.pid };
        let path = normalize(&r.path);
        match op {
            Op::Set => {
                self.locks.keep(r.session);
                let path = path?;
                // A lock held by another owner is refused from the applied
                // state, without a Raft entry: a waiting F_SETLKW asks again
                // and again. (Apply checks again: the state may change in
                // between.)
                if let Some(k) = kind_of(kind) {
                    if let Some(l) = locks::conflicting(&self.store.db(), &path, &who, k, r.start, r.end)? {
                        return Err(locks::conflict_error(&path, &l));
                    }
                }
                let cmd = MetaCommand::SetLock { file: path, who, kind: kind_of(kind), start: r.start, end: r.end };
                self.write(cmd).await?;
                Ok(LockResponse::default())
            }
            Op::Get => {
                let k = kind_of(kind).ok_or_else(|| Error::invalid("lock: a test for a lock needs READ or WRITE"))?;
                let found = locks::conflicting(&self.store.db(), &path?, &who, k, r.start, r.end)?;
                Ok(match found {
                    Some(l) => LockResponse {
                        kind: match l.kind {
                            LockKind::Read => Kind::Read,
                            LockKind::Write => Kind::Write,
                        } as i32,
                        start: l.start,
                        end: l.end,
                        pid: l.holder.pid,
                        lease_ms: 0,
                    },
                    None => LockResponse::default(),
                })
            }
            Op::Release => {
                let file = r.only_path.as_deref().map(normalize).transpose()?;
                self.write(MetaCommand::ReleaseLocks { session: r.session, file, owner: r.only_owner }).await?;
                Ok(LockResponse::default())
            }
            Op::Keep => {
                self.locks.keep(r.session);
                Ok(LockResponse { lease_ms: self.conf.meta.lock_lease.as_millis() as u64, ..Default::default() })
            }
        }
    }

    /// Starts freeing expired sessions' locks: called when this node
    /// becomes leader.
    pub(crate) fn start_lock_sweeper(self: &Arc<Self>) {
        *self.locks.since.lock() = Instant::now();
        self.locks.seen.lock().clear();
        let term = self.locks.term.fetch_add(1, Ordering::AcqRel) + 1;
        tokio::spawn(sweep(Arc::downgrade(self), term));
    }
}

async fn sweep(svc: Weak<MetaServiceImpl>, term: u64) {
    loop {
        let lease = match svc.upgrade() {
            Some(s) => s.conf.meta.lock_lease,
            None => return,
        };
        tokio::time::sleep((lease / 4).max(Duration::from_millis(100))).await;
        let Some(svc) = svc.upgrade() else { return };
        if svc.locks.term.load(Ordering::Acquire) != term || !matches!(crate::leader::role(&svc.raft, svc.id), Role::Leader { .. }) {
            return;
        }
        let sessions = match locks::sessions(&svc.store.db()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list lock sessions");
                continue;
            }
        };
        // Sessions holding no lock that have been silent for a lease are
        // forgotten: every client that ever took a lock (or only renewed
        // its lease) would otherwise stay in `seen` until the next leader.
        svc.locks.seen.lock().retain(|s, t| t.elapsed() <= lease || sessions.contains(s));
        for s in sessions.into_iter().filter(|s| svc.locks.expired(*s, lease)) {
            tracing::warn!(session = s, ?lease, "lock session silent for a lease (client gone?): releasing its locks");
            let last = svc.locks.seen.lock().get(&s).copied();
            match svc.write(MetaCommand::ReleaseLocks { session: s, file: None, owner: None }).await {
                Ok(_) => {
                    // Forgotten unless it renewed meanwhile (a renewal
                    // dropped here would count its lease from the
                    // leadership's start, and expire it again at once).
                    let mut seen = svc.locks.seen.lock();
                    if seen.get(&s).copied() == last {
                        seen.remove(&s);
                    }
                    drop(seen);
                    svc.metrics.locks_expired.inc();
                }
                Err(e) => tracing::warn!(session = s, error = %e, "cannot release an expired session's locks"),
            }
        }
    }
}
