//! Running many independent IOs at once on the client runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use curvine_common::{Error, Result};
use tokio::runtime::Handle;

/// Runs `f(0..n)` on up to `parallel` runtime tasks (so the copies out of
/// the sockets spread over the runtime's threads) and returns the results in
/// index order. The first error wins; the remaining items still finish, so no
/// task is left writing into a caller's buffer after this returns.
pub async fn for_each<T, F, Fut>(rt: &Handle, n: usize, parallel: usize, f: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let workers = parallel.clamp(1, n.max(1));
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(rt.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                out.push((i, f(i).await));
            }
            out
        }));
    }
    // Await every task before looking at any result.
    let joined = futures::future::join_all(tasks).await;
    let mut slots: Vec<Option<Result<T>>> = (0..n).map(|_| None).collect();
    for done in joined {
        let done = done.map_err(|e| Error::internal(format!("read task failed: {e}")))?;
        for (i, r) in done {
            slots[i] = Some(r);
        }
    }
    slots
        .into_iter()
        .map(|s| s.unwrap_or_else(|| Err(Error::internal("read task lost an item"))))
        .collect()
}
