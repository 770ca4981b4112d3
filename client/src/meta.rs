//! The client's view of the metadata service: a tonic channel with retries
//! for temporary failures only, moving to the next address on failure.

use std::time::Duration;

use curvine_common::proto::meta_service_client::MetaServiceClient;
use curvine_common::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

pub struct MetaClient {
    addrs: Vec<String>,
    /// The channel in use and the index of its address.
    current: Mutex<Option<(usize, MetaServiceClient<Channel>)>>,
    retries: u32,
    timeout: Duration,
}

impl MetaClient {
    pub fn new(addrs: Vec<String>, retries: u32, timeout: Duration) -> Result<MetaClient> {
        if addrs.is_empty() {
            return Err(Error::new(ErrorKind::Config, "no meta address given (use --meta HOST:PORT or CURVINE_META)"));
        }
        Ok(MetaClient { addrs, current: Mutex::new(None), retries, timeout })
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    async fn channel(&self) -> Result<(usize, MetaServiceClient<Channel>)> {
        if let Some(c) = self.current.lock().clone() {
            return Ok(c);
        }
        let mut last = None;
        for (i, addr) in self.addrs.iter().enumerate() {
            let ep = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| Error::new(ErrorKind::Config, format!("bad meta address '{addr}': {e}")))?
                .connect_timeout(Duration::from_secs(3))
                .timeout(self.timeout)
                .tcp_nodelay(true);
            match ep.connect().await {
                Ok(ch) => {
                    let client = MetaServiceClient::new(ch).max_decoding_message_size(256 << 20);
                    *self.current.lock() = Some((i, client.clone()));
                    return Ok((i, client));
                }
                Err(e) => last = Some(format!("{addr}: {e}")),
            }
        }
        Err(Error::unavailable(format!(
            "cannot reach the meta service at {} ({}); is `cv up` running?",
            self.addrs.join(","),
            last.unwrap_or_default()
        )))
    }

    fn drop_channel(&self, idx: usize) {
        let mut cur = self.current.lock();
        if matches!(&*cur, Some((i, _)) if *i == idx) {
            *cur = None;
        }
    }

    /// Runs `f` against the service, retrying temporary failures with
    /// backoff. Permanent errors (not found, exists, …) return at once.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(MetaServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempt = 0;
        loop {
            let res = match self.channel().await {
                Ok((idx, client)) => f(client).await.map(|r| r.into_inner()).map_err(|s| {
                    let e = Error::from(s);
                    if e.is_temporary() {
                        self.drop_channel(idx);
                    }
                    e
                }),
                Err(e) => Err(e),
            };
            match res {
                Err(e) if e.is_temporary() && attempt < self.retries => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "retrying meta call");
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
                }
                other => return other,
            }
        }
    }
}
