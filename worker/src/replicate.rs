//! Copies a block from another worker (meta asks for it when a worker
//! holding a replica died): read over the data plane, checked chunk by
//! chunk, written as a new local block, reported like any other.

use std::sync::Arc;

use curvine_common::{Error, ErrorKind, Result};
use curvine_fabric::msg::chunk_crcs;
use curvine_fabric::service::BlockService;
use curvine_fabric::tcp::{TcpConn, TcpOptions};
use curvine_fabric::DataConn;

use crate::store::TieredStore;

/// Bytes per read from the source worker.
const PIECE: usize = 4 << 20;

/// Copies block `id` of `len` bytes from the worker at `source`.
#[tracing::instrument(skip(store), fields(worker = store.worker_id()))]
pub async fn pull(store: Arc<TieredStore>, id: u64, len: u64, source: String) -> Result<()> {
    if store.contains(id) {
        return Ok(());
    }
    let mut conn = TcpConn::connect(&source, TcpOptions::default()).await?;
    let mut sink = store.open_write(id, len, 0)?;
    let mut buf = vec![0u8; PIECE.min(len as usize)];
    let mut off = 0u64;
    // A read must stay inside the block (the worker refuses offsets past
    // its end), so the length from meta drives the loop.
    while off < len {
        let want = ((len - off) as usize).min(buf.len());
        let n = conn.read_into(id, off, &mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        sink.append(off, &buf[..n], &chunk_crcs(&buf[..n]))?;
        off += n as u64;
    }
    if off != len {
        sink.abort();
        return Err(Error::new(ErrorKind::Corrupt, format!("block {id} from {source}: {off} bytes, meta says {len}")));
    }
    sink.commit(off)?;
    tracing::info!(block = id, bytes = off, %source, "replica copied");
    Ok(())
}
