//! Membership of the meta group (`cv meta members list|add|remove|transfer`)
//! and each member's own status (`NodeStatus`, for operators and the fault
//! suite's cross-member comparison).
//!
//! - add: the new member was started with `--join`; it is added as a
//!   learner, catches up (by log or snapshot), then becomes a voter.
//! - remove: a joint-consensus change to the voters without it.
//! - transfer: openraft 0.9 has no TimeoutNow, and its followers refuse
//!   votes while the leader's lease lasts. So the leader waits until the
//!   target has its whole log, pauses elections on the other members and
//!   its own heartbeats (leases then run out), and asks the target to stand
//!   until it leads; everything is switched back on whatever the result.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use curvine_common::proto::raft_service_client::RaftServiceClient;
use curvine_common::proto::*;
use curvine_common::{Error, ErrorKind, Result};
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};

use crate::leader::Role;
use crate::raft::types::Raft;
use crate::service::MetaServiceImpl;
use crate::store::snapshot;

const TRANSFER_TIMEOUT: Duration = Duration::from_secs(15);

/// A step of a leadership transfer, sent member to member over `RaftService.Admin`.
#[derive(Debug, Serialize, Deserialize)]
pub enum Admin {
    /// Stand for election now.
    Elect,
    /// Allow (true) or pause (false) this member's own elections.
    Elections(bool),
}

/// Carries out `op` on this member's Raft.
pub async fn admin(raft: &Raft, op: Admin) -> Result<()> {
    match op {
        Admin::Elect => raft.trigger().elect().await.map_err(|e| Error::unavailable(format!("elect: {e}"))),
        Admin::Elections(on) => {
            raft.runtime_config().elect(on);
            Ok(())
        }
    }
}

async fn send_admin(addr: &str, op: &Admin) -> Result<()> {
    let data = bincode::serialize(op).map_err(|e| Error::internal(e.to_string()))?;
    let call = async {
        let mut c = RaftServiceClient::connect(format!("http://{addr}"))
            .await
            .map_err(|e| Error::unavailable(format!("meta member {addr}: {e}")))?;
        c.admin(RaftMessage { data }).await.map_err(Error::from)?;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .unwrap_or_else(|_| Err(Error::unavailable(format!("meta member {addr}: no answer within 3s"))))
}

fn raft_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("{what}: {e}"))
}

impl MetaServiceImpl {
    pub(crate) async fn do_members(&self, r: MembersRequest) -> Result<MembersResponse> {
        // The leader's view: it alone knows how far each member has the log.
        if let Role::Other { leader } = crate::leader::role(&self.raft, self.id) {
            return Err(Error::not_leader(self.id, leader.as_deref()));
        }
        match r.op {
            0 => {}
            1 => {
                if r.id == 0 || !r.addr.contains(':') {
                    return Err(Error::invalid("members add: give the new member's id (from 1) and HOST:PORT"));
                }
                let node = BasicNode { addr: r.addr.clone() };
                // Blocks until the learner has caught up.
                self.raft.add_learner(r.id, node, true).await.map_err(|e| raft_err("add learner", e))?;
                let add = ChangeMembers::AddVoterIds(BTreeSet::from([r.id]));
                self.raft.change_membership(add, false).await.map_err(|e| raft_err("add voter", e))?;
                tracing::info!(id = r.id, addr = %r.addr, "meta member added");
            }
            2 => {
                let voters: BTreeSet<u64> = self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
                if !voters.contains(&r.id) {
                    return Err(Error::new(ErrorKind::NotFound, format!("meta member {} is not a voter of this group", r.id)));
                }
                if voters.len() == 1 {
                    return Err(Error::invalid("cannot remove the last member of the meta group"));
                }
                let rm = ChangeMembers::RemoveVoters(BTreeSet::from([r.id]));
                self.raft.change_membership(rm, false).await.map_err(|e| raft_err("remove voter", e))?;
                let rm = ChangeMembers::RemoveNodes(BTreeSet::from([r.id]));
                self.raft.change_membership(rm, false).await.map_err(|e| raft_err("remove node", e))?;
                tracing::info!(id = r.id, "meta member removed");
            }
            3 => self.transfer(r.id).await?,
            op => return Err(Error::invalid(format!("members: unknown op {op}"))),
        }
        Ok(self.members())
    }

    fn members(&self) -> MembersResponse {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| MemberInfo {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
                leader: m.current_leader == Some(*id),
                matched_index: if *id == self.id && m.state == ServerState::Leader {
                    m.last_log_index
                } else {
                    m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index)
                },
            })
            .collect();
        MembersResponse {
            members,
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
        }
    }

    async fn transfer(&self, to: u64) -> Result<()> {
        let (addrs, voters) = {
            let m = self.raft.metrics().borrow().clone();
            let ms = m.membership_config.membership();
            let addrs: Vec<(u64, String)> = ms.nodes().map(|(i, n)| (*i, n.addr.clone())).collect();
            (addrs, ms.voter_ids().collect::<BTreeSet<u64>>())
        };
        if to == self.id {
            return Ok(());
        }
        if !voters.contains(&to) {
            return Err(Error::new(ErrorKind::NotFound, format!("meta member {to} is not a voter of this group")));
        }
        let addr_of = |id: u64| addrs.iter().find(|(i, _)| *i == id).map(|(_, a)| a.clone()).unwrap_or_default();
        let deadline = Instant::now() + TRANSFER_TIMEOUT;
        // 1. The target must hold the whole log, or it cannot win.
        loop {
            let m = self.raft.metrics().borrow().clone();
            let have = m.replication.as_ref().and_then(|r| r.get(&to).cloned().flatten()).map(|l| l.index);
            if have.is_some() && have >= m.last_log_index {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::unavailable(format!("meta member {to} did not catch up with the log in time")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // 2. Quiet everyone else, 3. let the target stand until it leads.
        let others: Vec<u64> = voters.iter().copied().filter(|i| *i != to && *i != self.id).collect();
        for i in &others {
            if let Err(e) = send_admin(&addr_of(*i), &Admin::Elections(false)).await {
                tracing::warn!(member = i, error = %e, "cannot pause elections for a leadership transfer");
            }
        }
        self.raft.runtime_config().elect(false);
        self.raft.runtime_config().heartbeat(false);
        let mut res = Err(Error::unavailable(format!("meta member {to} did not become leader in {TRANSFER_TIMEOUT:?}")));
        while Instant::now() < deadline {
            let _ = send_admin(&addr_of(to), &Admin::Elect).await;
            let waited = self.raft.wait(Some(Duration::from_millis(500))).metrics(|m| m.current_leader == Some(to), "transfer").await;
            if waited.is_ok() {
                res = Ok(());
                break;
            }
        }
        // 4. Back to normal, whatever happened.
        self.raft.runtime_config().heartbeat(true);
        self.raft.runtime_config().elect(true);
        for i in &others {
            if let Err(e) = send_admin(&addr_of(*i), &Admin::Elections(true)).await {
                tracing::warn!(member = i, error = %e, "cannot resume elections after a leadership transfer");
            }
        }
        if res.is_ok() {
            tracing::info!(from = self.id, to, "meta leadership transferred");
        }
        res
    }

    pub(crate) async fn do_node_status(&self, _r: NodeStatusRequest) -> Result<NodeStatusResponse> {
        let m = self.raft.metrics().borrow().clone();
        let (digest, files, dirs, applied) = {
            // Under the apply lock, the digest and the applied index agree.
            let _g = self.store.apply_lock.lock();
            let r = self.reader();
            let applied = r.last_applied()?;
            (r.digest()?, r.sys_u64(crate::store::KEY_FILES)?, r.sys_u64(crate::store::KEY_DIRS)?, applied)
        };
        let leader_addr = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        let snap = snapshot::newest(&self.conf.meta.dir.join("snapshots"))?.and_then(|(_, s)| s.last_log_id).map(|l| l.index);
        Ok(NodeStatusResponse {
            id: self.id,
            state: format!("{:?}", m.state),
            leader_id: m.current_leader.unwrap_or(0),
            leader_addr,
            term: m.current_term,
            last_applied: applied,
            digest,
            files,
            dirs,
            snapshot_index: snap.unwrap_or(0),
            log_first_index: m.purged.map(|p| p.index + 1).unwrap_or(0),
            contact_ms: match m.state {
                openraft::ServerState::Leader => self.contact.group_quorum_age(&self.raft, self.id),
                _ => self.contact.leader_age(),
            }
            .map_or(-1, |d| d.as_millis() as i64),
        })
    }
}
