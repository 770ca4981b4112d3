//! When this member last heard from the rest of its group, so that a member
//! cut off by a partition says so at once instead of making every caller
//! wait out a timeout.
//!
//! - A leader counts a peer as in contact when the peer answered an append
//!   (heartbeats included) or granted it a vote. If no majority has answered
//!   for longer than `CUT_OFF` (the longest election timeout: by then the
//!   others may have elected someone else), the leader answers every call
//!   with "no quorum" and no leader hint, and clients move on to the next
//!   address. openraft 0.9 keeps such a leader leading until it hears a
//!   higher term; without this, its callers waited `write_timeout` (writes)
//!   or a read-index round (reads) per attempt.
//! - A follower notes when it last accepted an append from a leader: follower
//!   reads are refused (the caller is sent to the leader) once that is
//!   older than `CUT_OFF`, which bounds their staleness.
//!
//! Only refusals follow from this, never answers: safety stays Raft's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use curvine_common::Error;

use crate::raft::types::{NodeId, Raft};

/// openraft's `election_timeout_max` (lib.rs).
pub const CUT_OFF: Duration = Duration::from_millis(2000);

#[derive(Default)]
pub struct Contact {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Leader side: the last answer of each peer.
    answered: HashMap<NodeId, Instant>,
    /// Follower side: the last append accepted from a leader.
    from_leader: Option<Instant>,
}

impl Contact {
    /// A peer answered this member's append or granted it a vote.
    pub fn answered_by(&self, peer: NodeId) {
        self.inner.lock().answered.insert(peer, Instant::now());
    }

    /// This member accepted an append (or heartbeat) from a leader.
    pub fn heard_leader(&self) {
        self.inner.lock().from_leader = Some(Instant::now());
    }

    /// How long ago a majority of `voters` (this member counting itself)
    /// last answered: `None` if a majority never has (just started).
    pub fn quorum_age(&self, voters: &[NodeId], me: NodeId) -> Option<Duration> {
        let need = voters.len() / 2 + 1;
        let others = need.saturating_sub(usize::from(voters.contains(&me)));
        if others == 0 {
            return Some(Duration::ZERO);
        }
        let g = self.inner.lock();
        let mut ages: Vec<Duration> =
            voters.iter().filter(|v| **v != me).filter_map(|v| g.answered.get(v)).map(|t| t.elapsed()).collect();
        ages.sort();
        ages.get(others - 1).copied()
    }

    /// `quorum_age` among the group's current voters.
    pub fn group_quorum_age(&self, raft: &Raft, me: NodeId) -> Option<Duration> {
        let voters: Vec<NodeId> = raft.server_metrics().borrow().membership_config.membership().voter_ids().collect();
        self.quorum_age(&voters, me)
    }

    /// The "no quorum" error this member answers with when it leads a group
    /// of several and has heard from no majority for longer than `CUT_OFF`
    /// (`doing`: what it was doing; `then`: what the caller should know);
    /// `None` otherwise.
    pub fn cut_off(&self, raft: &Raft, me: NodeId, doing: &str, then: &str) -> Option<Error> {
        let age = self.group_quorum_age(raft, me).filter(|age| *age > CUT_OFF)?;
        Some(Error::unavailable(format!(
            "no quorum: meta node {me} has heard from no majority of its group for {} ms{doing} (cut off from the \
             other members?); {then}",
            age.as_millis()
        )))
    }

    /// How long ago this member last accepted an append from a leader.
    pub fn leader_age(&self) -> Option<Duration> {
        self.inner.lock().from_leader.map(|t| t.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_age_is_that_of_the_majority_s_oldest_needed_answer() {
        let c = Contact::default();
        assert_eq!(c.quorum_age(&[1], 1), Some(Duration::ZERO), "one member is its own majority");
        assert_eq!(c.quorum_age(&[1, 2, 3], 1), None, "no answer yet: unknown, not cut off");
        c.answered_by(2);
        let age = c.quorum_age(&[1, 2, 3], 1).expect("one peer answered: with this member a majority of three");
        assert!(age < CUT_OFF);
        assert_eq!(c.quorum_age(&[1, 2, 3, 4, 5], 1), None, "five members need two answers");
        // An answer from a node that is not a voter counts for nothing.
        c.answered_by(9);
        assert_eq!(c.quorum_age(&[1, 2, 3, 4, 5], 1), None);
        c.answered_by(4);
        assert!(c.quorum_age(&[1, 2, 3, 4, 5], 1).is_some());
    }

    #[test]
    fn an_old_answer_ages() {
        let c = Contact::default();
        c.inner.lock().answered.insert(2, Instant::now() - Duration::from_secs(5));
        c.answered_by(3);
        // Node 3 answered just now: a majority of three is in contact.
        assert!(c.quorum_age(&[1, 2, 3], 1).unwrap() < CUT_OFF);
        // Of five, the second answer needed is five seconds old.
        assert!(c.quorum_age(&[1, 2, 3, 4, 5], 1).unwrap() >= Duration::from_secs(5));
        assert_eq!(c.leader_age(), None);
        c.heard_leader();
        assert!(c.leader_age().unwrap() < CUT_OFF);
    }
}
