//! One port, two protocols: connections that open with the frame greeting
//! (`frame_rpc::MAGIC`, what Curvine clients and workers send) are served
//! here; everything else (gRPC: Raft peers, other tools) goes on to tonic.

use std::time::Duration;

use curvine_common::frame_rpc;
use curvine_common::proto::meta_service_server::MetaServiceServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;

use crate::service::MetaServiceImpl;

/// How long a new connection may take to send its first four bytes before
/// it is handed to the gRPC server as is.
const GREETING_WAIT: Duration = Duration::from_secs(10);

/// Accepts on `listener` until `stop` changes (or its sender is gone):
/// frame connections are served with `svc`, the rest come out of the
/// returned stream for tonic. The task ends once its frame connections
/// are closed, so nothing holds the service after it.
pub fn split(
    listener: TcpListener,
    svc: MetaServiceServer<MetaServiceImpl>,
    mut stop: watch::Receiver<bool>,
) -> (ReceiverStream<std::io::Result<TcpStream>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                r = listener.accept() => match r {
                    Ok((s, peer)) => {
                        // Small RPCs must not wait on Nagle's algorithm behind a
                        // delayed ACK (40 ms stalls seen with concurrent calls).
                        if let Err(e) = s.set_nodelay(true) {
                            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                        }
                        let (tx, svc) = (tx.clone(), svc.clone());
                        conns.spawn(async move {
                            if is_frames(&s).await {
                                if let Err(e) = frame_rpc::serve(s, svc, heavy).await {
                                    tracing::debug!(%peer, error = %e, "meta frame connection closed");
                                }
                            } else {
                                let _ = tx.send(Ok(s)).await;
                            }
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: keep serving the
                        // connections there are, try again shortly.
                        tracing::warn!(error = %e, "meta cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.shutdown().await;
    });
    (ReceiverStream::new(rx), task)
}

/// Calls with real CPU work on the meta node (listings, many opens, block
/// reports): a frame connection runs them on tasks of their own.
fn heavy(path: &str) -> bool {
    matches!(
        path.rsplit('/').next(),
        Some("List" | "OpenMany" | "Report" | "RegisterWorker" | "ListMounts" | "Warm" | "JobStatus" | "Members" | "NodeStatus")
    )
}

/// Whether the connection starts with the frame greeting (peeked, so a
/// gRPC connection reaches tonic with its bytes intact).
async fn is_frames(s: &TcpStream) -> bool {
    let mut head = [0u8; 4];
    let look = async {
        loop {
            match s.peek(&mut head).await {
                Ok(n) if n >= head.len() => return head == *frame_rpc::MAGIC,
                Ok(0) | Err(_) => return false,
                // Fewer bytes so far: they trickle in rarely; wait a moment.
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    };
    tokio::time::timeout(GREETING_WAIT, look).await.unwrap_or(false)
}
