//! Raft transport over the proto `RaftService`: openraft requests and
//! responses travel bincode-encoded in `RaftMessage.data`.

use openraft::error::{InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use curvine_common::proto::raft_service_client::RaftServiceClient;
use curvine_common::proto::raft_service_server::RaftService;
use curvine_common::proto::RaftMessage;

use std::sync::Arc;

use crate::contact::Contact;
use crate::raft::types::{NodeId, Raft, TypeConfig};

/// Largest Raft message sent or accepted (tonic's default is 4 MiB). An
/// entry holds at most `propose::MAX_BATCH_BYTES` of batched commands (one
/// larger command goes alone), and an append carries at most
/// `max_payload_entries` (lib.rs) of them; an append that still does not
/// fit is refused before sending with openraft's "payload too large", and
/// openraft sends fewer entries. Without a bound a follower could never
/// take an entry larger than the limit, and every write would stall.
pub const RAFT_MESSAGE_MAX: usize = 256 << 20;

/// Creates one `PeerClient` per peer.
pub struct Network {
    /// Where peers' answers are noted (`contact.rs`).
    pub contact: Arc<Contact>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient { target, addr: node.addr.clone(), client: None, contact: self.contact.clone() }
    }
}

/// The connection to one peer, made lazily and remade after a failure.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Option<RaftServiceClient<Channel>>,
    contact: Arc<Contact>,
}

#[derive(Debug)]
struct Msg(String);
impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Msg {}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: &'static str,
        req: &Req,
        entries: Option<usize>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if data.len() > RAFT_MESSAGE_MAX {
            let too_big = Msg(format!("{} {}: a {kind} of {} bytes exceeds {RAFT_MESSAGE_MAX}", self.target, self.addr, data.len()));
            return Err(match entries {
                Some(n) if n > 1 => RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint((n / 2) as u64).with_source_error(&too_big)),
                _ => RPCError::Network(NetworkError::new(&too_big)),
            });
        }
        if self.client.is_none() {
            let endpoint = Channel::from_shared(format!("http://{}", self.addr))
                .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?
                .connect_timeout(option.hard_ttl());
            // connect_timeout covers TCP only; a paused peer accepts and
            // never answers the HTTP/2 handshake.
            let ch = match tokio::time::timeout(option.hard_ttl(), endpoint.connect()).await {
                Ok(r) => r.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?,
                Err(_) => return Err(RPCError::Unreachable(Unreachable::new(&Msg(format!("{}: handshake timed out", self.addr))))),
            };
            self.client = Some(
                RaftServiceClient::new(ch).max_decoding_message_size(RAFT_MESSAGE_MAX).max_encoding_message_size(RAFT_MESSAGE_MAX),
            );
        }
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&Msg("no connection".into()))));
        };
        let mut request = tonic::Request::new(RaftMessage { data });
        request.set_timeout(option.hard_ttl());
        let resp = match kind {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let resp = match resp {
            Ok(r) => r.into_inner(),
            Err(status) => {
                self.client = None;
                return Err(RPCError::Network(NetworkError::new(&Msg(format!("{} {}: {status}", self.target, self.addr)))));
            }
        };
        let res: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&resp.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let res = self.call("append", &rpc, Some(rpc.entries.len()), &option).await;
        if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.contact.answered_by(self.target);
        }
        res
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call("snapshot", &rpc, None, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let res: Result<VoteResponse<NodeId>, _> = self.call("vote", &rpc, None, &option).await;
        if matches!(&res, Ok(r) if r.vote_granted) {
            self.contact.answered_by(self.target);
        }
        res
    }
}

/// The server side of the Raft transport: hands requests to the local `Raft`.
pub struct RaftServer {
    pub raft: Raft,
    pub contact: Arc<Contact>,
}

fn decode<T: DeserializeOwned>(req: tonic::Request<RaftMessage>) -> Result<T, tonic::Status> {
    bincode::deserialize(&req.into_inner().data)
        .map_err(|e| tonic::Status::invalid_argument(format!("raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
    let data = bincode::serialize(v).map_err(|e| tonic::Status::internal(format!("raft message: {e}")))?;
    Ok(tonic::Response::new(RaftMessage { data }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(&self, req: tonic::Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        let res = self.raft.append_entries(rpc).await;
        if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.contact.heard_leader();
        }
        encode(&res)
    }

    async fn vote(&self, req: tonic::Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let rpc: VoteRequest<NodeId> = decode(req)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: tonic::Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn admin(&self, req: tonic::Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let op: crate::members::Admin = decode(req)?;
        crate::members::admin(&self.raft, op).await.map_err(tonic::Status::from)?;
        Ok(tonic::Response::new(RaftMessage { data: vec![] }))
    }
}

