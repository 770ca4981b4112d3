//! Group commit: concurrent writes share Raft entries.
//!
//! Calls hand their command to one loop. While a batch is being committed
//! the next one gathers whatever arrived meanwhile, so under load many
//! commands travel in one `Batch` entry — one log write, one fsync, one
//! replication round — and alone a command goes by itself with no added
//! wait. A batch not committed within `timeout` fails with a "no quorum"
//! error (the entry may still commit later; a client's retry carries the
//! same request id and is applied once).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use curvine_common::{Error, Result};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::contact::Contact;
use crate::namespace::{MetaCommand, Outcome};
use crate::raft::types::Raft;

/// Most commands in one entry.
const MAX_BATCH: usize = 512;
/// Most bytes of commands in one entry (as logged, bincode); a larger
/// command goes in an entry of its own. Bounds the Raft messages that
/// carry entries to followers (`raft::network::RAFT_MESSAGE_MAX`).
pub const MAX_BATCH_BYTES: u64 = 1 << 20;
/// Batches being committed at once: one, while the next gathers. Measured
/// with 16 writers over frames: 2 or more in flight made smaller batches
/// and more Raft entries, and each entry's fixed cost (openraft's
/// hand-offs, one fsync each: the log flusher never found two appends
/// queued) outweighed the overlap — 1 in flight gave 9.3–12.1 k creates/s,
/// 2 gave 8.0–8.6 k, 4 gave 7.5 k.
const IN_FLIGHT: usize = 1;

type Reply = oneshot::Sender<Result<Outcome>>;

/// The handle writes go through. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<(MetaCommand, Reply)>,
    direct: Arc<Direct>,
}

/// What a call needs to commit its command itself, skipping the loop's two
/// task hand-offs when nothing else is waiting (a lone writer's latency).
struct Direct {
    raft: Raft,
    id: u64,
    timeout: Duration,
    /// A write fails early once this member is cut off (`contact.rs`).
    contact: Arc<Contact>,
    slots: Arc<Semaphore>,
    /// Commands handed to the loop and not yet taken into a batch.
    queued: AtomicUsize,
}

impl Proposer {
    /// Starts the loop for `raft` (node `id`, for error messages).
    pub fn start(raft: Raft, id: u64, timeout: Duration, contact: Arc<Contact>) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        let direct = Arc::new(Direct { raft, id, timeout, contact, slots: Arc::new(Semaphore::new(IN_FLIGHT)), queued: AtomicUsize::new(0) });
        tokio::spawn(run(direct.clone(), rx));
        Proposer { tx, direct }
    }

    /// Proposes `cmd` and waits until it is applied on this node.
    pub async fn propose(&self, cmd: MetaCommand) -> Result<Outcome> {
        let d = &self.direct;
        // Nothing queued and a slot free: no batch to join, so commit here.
        if d.queued.load(Ordering::Acquire) == 0 {
            if let Ok(permit) = d.slots.try_acquire() {
                // A caller that gives up (client deadline) frees the slot
                // while its entry may still be on its way through Raft: the
                // slots bound how commands are batched, not how many
                // entries openraft holds (those of abandoned calls finish
                // or fail with the write timeout like any other).
                let res = write(d, cmd).await;
                drop(permit);
                return res;
            }
        }
        let (tx, rx) = oneshot::channel();
        d.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.send((cmd, tx)).is_err() {
            d.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::unavailable("meta node is shutting down"));
        }
        rx.await.map_err(|_| Error::unavailable("meta node is shutting down"))?
    }
}

fn size(cmd: &MetaCommand) -> u64 {
    bincode::serialized_size(cmd).unwrap_or(0)
}

async fn run(d: Arc<Direct>, mut rx: mpsc::UnboundedReceiver<(MetaCommand, Reply)>) {
    // A command taken that did not fit the last batch: first in the next.
    let mut carried: Option<(MetaCommand, Reply)> = None;
    loop {
        let first = match carried.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(c) => c,
                None => return,
            },
        };
        let Ok(permit) = d.slots.clone().acquire_owned().await else { return };
        // Everything that queued while waiting for a slot goes together.
        let mut bytes = size(&first.0);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    let n = size(&p.0);
                    if bytes + n > MAX_BATCH_BYTES {
                        carried = Some(p);
                        break;
                    }
                    bytes += n;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        d.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        let d = d.clone();
        tokio::spawn(async move {
            commit(&d, batch).await;
            drop(permit);
        });
    }
}

async fn commit(d: &Direct, mut batch: Vec<(MetaCommand, Reply)>) {
    if batch.len() == 1 {
        let (cmd, reply) = batch.pop().expect("one command");
        let _ = reply.send(write(d, cmd).await);
        return;
    }
    let (cmds, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let n = cmds.len();
    match write(d, MetaCommand::Batch(cmds)).await {
        Ok(Outcome::Batch(results)) if results.len() == n => {
            for (r, reply) in results.into_iter().zip(replies) {
                let _ = reply.send(r.0);
            }
        }
        Ok(other) => {
            let e = Error::internal(format!("a batch of {n} commands was answered with {other:?}"));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// How often a write in progress checks whether its member is cut off.
const CUT_OFF_CHECK: Duration = Duration::from_millis(250);

async fn write(d: &Direct, cmd: MetaCommand) -> Result<Outcome> {
    let (raft, id, timeout) = (&d.raft, d.id, d.timeout);
    // A leader cut off from its group commits nothing until it hears from
    // it again: its callers learn that after `CUT_OFF`, not `timeout`.
    let cut_off = async {
        loop {
            tokio::time::sleep(CUT_OFF_CHECK).await;
            let then = "it may still be applied, and a retry of the same call is applied once";
            if let Some(e) = d.contact.cut_off(raft, id, " while committing a write", then) {
                return e;
            }
        }
    };
    let res = tokio::select! {
        r = tokio::time::timeout(timeout, raft.client_write(cmd)) => r,
        e = cut_off => return Err(e),
    };
    match res {
        Ok(Ok(resp)) => resp.data.0,
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(Error::not_leader(id, f.leader_node.as_ref().map(|n| n.addr.as_str())))
        }
        Ok(Err(e)) => Err(Error::unavailable(format!("meta node {id}: raft: {e}"))),
        Err(_) => Err(Error::unavailable(format!(
            "no quorum: meta node {id} could not commit a write within {timeout:?} (too few meta members reachable?); \
             it may still be applied, and a retry of the same call is applied once"
        ))),
    }
}
