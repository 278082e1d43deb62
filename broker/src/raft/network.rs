//! openraft's network on the peer port: one lazily connected HTTP/2 channel
//! per peer address, shared by every group (requests are multiplexed and keyed
//! by group id), so a thousand partitions do not mean a thousand connections.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use strata_proto::grpc_wire::{RAFT_APPEND_PATH, WireBody, call_request, unary_reply};
use strata_proto::limits::{
    HTTP2_CONNECTION_WINDOW_BYTES, HTTP2_MAX_FRAME_BYTES, HTTP2_STREAM_WINDOW_BYTES,
};
use strata_proto::v1::peer_client::PeerClient;
use strata_proto::v1::{RaftAppendRequest, RaftReply, RaftRequest};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tower::ServiceExt;

use super::{NodeId, TypeConfig, wire};

/// How long connecting to a peer may take before the attempt counts as
/// unreachable (openraft then backs off).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Largest peer message: a full AppendEntries of maximum batches.
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Channels to peers by address, shared by all groups of a node, and where
/// this node reaches each peer.
///
/// Three sources, in order: this node's own book (`--peers`), which wins
/// because each node may reach a peer differently (a proxy, a NAT, a renamed
/// host); then the address in a group's membership (given to `add-node`);
/// then the address a node registered in the cluster metadata.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    book: Arc<parking_lot::RwLock<HashMap<NodeId, String>>>,
    learned: Arc<parking_lot::RwLock<HashMap<NodeId, String>>>,
    /// Mutual TLS to peers (the cluster CA and this node's certificate);
    /// `None`: plaintext.
    tls: Option<ClientTlsConfig>,
}

impl Peers {
    /// Peers reached at the given addresses.
    pub fn with_addresses(book: impl IntoIterator<Item = (NodeId, String)>) -> Peers {
        let peers = Peers::default();
        peers.book.write().extend(book);
        peers
    }

    /// Records where `node` says it listens (its registration). A wildcard
    /// address (`0.0.0.0`, `[::]`) says nothing about where to reach it and
    /// is ignored.
    pub fn learn(&self, node: NodeId, addr: &str) {
        let wildcard = addr
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_unspecified());
        if wildcard || self.learned.read().get(&node).is_some_and(|a| a == addr) {
            return;
        }
        self.learned.write().insert(node, addr.to_owned());
    }

    /// Where this node reaches `node`: its own book, else what `node`
    /// registered.
    pub fn address(&self, node: NodeId) -> Option<String> {
        self.configured(node)
            .or_else(|| self.learned.read().get(&node).cloned())
    }

    /// The address for `node` in this node's own book (`--peers`), if any.
    pub fn configured(&self, node: NodeId) -> Option<String> {
        self.book.read().get(&node).cloned()
    }

    /// The same peers, dialled over mutual TLS with `tls`.
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Peers {
        self.tls = tls;
        self
    }

    /// The one place peer channels are built: every call to a peer (Raft,
    /// proposals, hellos) goes through a channel made here.
    fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("peer address {addr}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
            .max_frame_size(HTTP2_MAX_FRAME_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("peer TLS for {addr}: {e}"))?;
        }
        Ok(endpoint)
    }

    /// The channel to `addr`, shared by every call to that peer.
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        match channels.get(addr) {
            Some(c) => Ok(c.clone()),
            None => {
                let channel = self.endpoint(addr)?.connect_lazy();
                channels.insert(addr.to_string(), channel.clone());
                Ok(channel)
            }
        }
    }

    pub(crate) fn client(&self, addr: &str) -> Result<PeerClient<Channel>, String> {
        let channel = self.channel(addr)?;
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }

    /// The network of one group.
    pub fn group(&self, group: &str) -> GroupNetwork {
        GroupNetwork {
            peers: self.clone(),
            group: group.to_string(),
        }
    }
}

/// Creates connections to the members of one group.
#[derive(Clone)]
pub struct GroupNetwork {
    peers: Peers,
    group: String,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        let membership = Some(node.addr.clone()).filter(|a| !a.is_empty());
        PeerConnection {
            addr: self
                .peers
                .configured(target)
                .or(membership)
                .or_else(|| self.peers.address(target))
                .unwrap_or_default(),
            peers: self.peers.clone(),
            group: self.group.clone(),
            target,
        }
    }
}

/// One group's link to one member.
pub struct PeerConnection {
    peers: Peers,
    group: String,
    target: NodeId,
    addr: String,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, E>>;

/// A peer this node cannot even build a channel to (a bad address).
fn unreachable<E: std::error::Error>(why: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why)))
}

impl PeerConnection {
    fn client<E: std::error::Error>(&self) -> RpcResult<PeerClient<Channel>, E> {
        self.peers.client(&self.addr).map_err(unreachable)
    }

    /// The channel to this member, for calls made below tonic.
    fn channel<E: std::error::Error>(&self) -> RpcResult<Channel, E> {
        self.peers.channel(&self.addr).map_err(unreachable)
    }

    /// Turns a transport failure into the error openraft acts on: refused or
    /// unreachable peers back off; anything else retries.
    fn transport<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, BasicNode, E> {
        let io = std::io::Error::other(status.to_string());
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                RPCError::Unreachable(Unreachable::new(&io))
            }
            _ => RPCError::Network(NetworkError::new(&io)),
        }
    }

    /// Sends one request with `send` under openraft's deadline and decodes
    /// the peer's `Result` (a remote error stays the peer's error).
    async fn call<Req, Fut, T, E>(
        &self,
        request: Req,
        option: &RPCOption,
        send: impl FnOnce(PeerClient<Channel>, tonic::Request<Req>) -> Fut,
    ) -> RpcResult<T, RaftError<NodeId, E>>
    where
        Fut: Future<Output = Result<tonic::Response<RaftReply>, tonic::Status>>,
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut request = tonic::Request::new(request);
        request.set_timeout(option.hard_ttl());
        let reply = send(self.client()?, request)
            .await
            .map_err(Self::transport)?
            .into_inner();
        self.decode_reply(reply)
    }

    /// The peer's `Result`, decoded (a remote error stays the peer's error).
    fn decode_reply<T, E>(&self, reply: RaftReply) -> RpcResult<T, RaftError<NodeId, E>>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<T, RaftError<NodeId, E>> = serde_json::from_slice(&reply.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::error(e))))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                BasicNode::new(&self.addr),
                e,
            ))
        })
    }

    /// A request other than AppendEntries: openraft's own type as JSON.
    fn json_request(&self, rpc: &impl serde::Serialize) -> RaftRequest {
        RaftRequest {
            group: self.group.clone(),
            json: serde_json::to_vec(rpc)
                .expect("openraft requests serialize")
                .into(),
        }
    }
}

/// Calls RaftAppend one layer below tonic (see `strata_proto::grpc_wire`):
/// each entry's batch goes to h2 as a frame of its own, written to the
/// socket from the log's memory instead of encoded into a buffer first.
async fn append_call(
    channel: Channel,
    request: RaftAppendRequest,
    ttl: Duration,
) -> Result<RaftReply, tonic::Status> {
    let body = WireBody::request(futures::stream::iter([Ok::<_, tonic::Status>(request)]));
    let mut call = call_request(RAFT_APPEND_PATH, tonic::body::Body::new(body));
    // As tonic's `set_timeout` says it, for the peer to stop in time too.
    if let Ok(timeout) = format!("{}m", ttl.as_millis().max(1)).parse() {
        call.headers_mut().insert("grpc-timeout", timeout);
    }
    let response = channel
        .oneshot(call)
        .await
        .map_err(|e| tonic::Status::from_error(e.into()))?;
    unary_reply(response, MAX_PEER_MESSAGE_BYTES).await
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let (header_json, entries) = wire::encode_append(rpc);
        let request = RaftAppendRequest {
            group: self.group.clone(),
            header_json: header_json.into(),
            entries,
        };
        let channel = self.channel()?;
        // openraft bounds the call by `hard_ttl` itself (and calls a late
        // one a timeout); a deadline of ours would race it and come back as
        // an unreachable peer, which pauses replication to it.
        let reply = append_call(channel, request, option.hard_ttl())
            .await
            .map_err(Self::transport)?;
        self.decode_reply(reply)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        let request = self.json_request(&rpc);
        self.call(request, &option, |mut c, r| async move {
            c.raft_snapshot(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        let request = self.json_request(&rpc);
        self.call(
            request,
            &option,
            |mut c, r| async move { c.raft_vote(r).await },
        )
        .await
    }
}
