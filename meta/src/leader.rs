//! Who answers what in a meta group.
//!
//! - Only the leader serves clients and workers; any other member answers
//!   `NotLeader`, naming the leader when it knows it, and clients move there.
//!   Workers thus register with (and report their blocks to) the leader only.
//! - Reads on the leader are linearizable: before answering, the leader
//!   confirms with a quorum that it still leads (openraft's read index) and
//!   waits until it has applied everything committed by then. Concurrent
//!   reads share one confirmation: a read waits for a round that starts after
//!   it arrived, so none is answered from a leadership checked before it came.
//!   A one-member group needs no round (no one else can lead).
//! - With `meta.follower_reads`, a follower answers stat and list itself when
//!   the client asks (`x-cv-read: follower`): such a read may miss writes
//!   acknowledged in the last moments (the follower's replication lag,
//!   normally under a heartbeat interval, 250 ms). A follower that has not
//!   heard from a leader for `contact::CUT_OFF` (2 s) sends such reads to
//!   the leader instead, so the lag is bounded by that.
//! - A leader that has heard from no majority for `CUT_OFF` answers "no
//!   quorum" at once (`contact.rs`).

use std::time::Duration;

use curvine_common::{Error, Result};
use futures::future::{BoxFuture, FutureExt, Shared};
use openraft::ServerState;
use parking_lot::Mutex;

use crate::raft::types::Raft;

/// What this node is right now.
pub enum Role {
    Leader { voters: usize },
    /// Not the leader; the leader's address when known.
    Other { leader: Option<String> },
}

pub fn role(raft: &Raft, id: u64) -> Role {
    let m = raft.server_metrics();
    let m = m.borrow();
    if m.state == ServerState::Leader && m.current_leader == Some(id) {
        return Role::Leader { voters: m.membership_config.membership().voter_ids().count() };
    }
    let leader = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
    Role::Other { leader }
}

type Round = Shared<BoxFuture<'static, std::result::Result<(), Error>>>;

#[derive(Default)]
struct Rounds {
    /// The round confirming leadership now (or last), and the one that
    /// starts after it: a read arriving joins `next`, which has not started.
    running: Option<Round>,
    next: Option<(u64, Round)>,
    gen: u64,
}

/// Shares read-index confirmations between concurrent reads.
#[derive(Default)]
pub struct ReadBarrier {
    rounds: std::sync::Arc<Mutex<Rounds>>,
}

impl ReadBarrier {
    /// Returns once a read started now may be answered from this node's
    /// state machine.
    pub async fn wait(&self, raft: &Raft, id: u64, timeout: Duration) -> Result<()> {
        let round = {
            let mut g = self.rounds.lock();
            match &g.next {
                Some((_, next)) => next.clone(),
                None => {
                    g.gen += 1;
                    let gen = g.gen;
                    let r = round(self.rounds.clone(), gen, g.running.clone(), raft.clone(), id, timeout);
                    g.next = Some((gen, r.clone()));
                    r
                }
            }
        };
        round.await
    }
}

/// One confirmation: after `after` ends, it becomes the running round (so
/// later readers wait for another), then asks a quorum.
fn round(rounds: std::sync::Arc<Mutex<Rounds>>, gen: u64, after: Option<Round>, raft: Raft, id: u64, timeout: Duration) -> Round {
    async move {
        if let Some(prev) = after {
            let _ = prev.await;
        }
        {
            let mut g = rounds.lock();
            if g.next.as_ref().is_some_and(|(n, _)| *n == gen) {
                let (_, me) = g.next.take().expect("checked");
                g.running = Some(me);
            }
        }
        match tokio::time::timeout(timeout, raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(match role(&raft, id) {
                Role::Other { leader } => Error::not_leader(id, leader.as_deref()),
                Role::Leader { .. } => Error::unavailable(format!("meta node {id}: cannot confirm leadership: {e}")),
            }),
            Err(_) => Err(Error::unavailable(format!(
                "no quorum: meta node {id} could not confirm with a quorum within {timeout:?} that it still leads"
            ))),
        }
    }
    .boxed()
    .shared()
}
