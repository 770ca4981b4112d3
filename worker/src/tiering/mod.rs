//! Keeps every tier between its watermarks: a background round every
//! `worker.tiering_interval` plans moves with `policy::plan` and carries
//! them out at `worker.move_bandwidth` — demotions and promotions are block
//! copies, evictions drop blocks meta confirmed the UFS holds (candidates
//! are asked about with the next heartbeat).

pub mod policy;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::store::moves::Pace;
use crate::store::TieredStore;
use policy::{Move, Thresholds};

/// At most this many eviction candidates per heartbeat.
const MAX_ASK: usize = 4096;

pub struct Tiering {
    pub store: Arc<TieredStore>,
    pub thresholds: Thresholds,
    /// Bytes per second for copies between tiers.
    pub bandwidth: u64,
    pub interval: Duration,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub demoted: usize,
    pub promoted: usize,
    pub evicted: usize,
    pub failed: usize,
    pub asked: usize,
}

impl Tiering {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let me = Arc::new(self);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|v| *v) => return,
                _ = tokio::time::sleep(me.interval) => {}
            }
            let m = me.clone();
            match tokio::task::spawn_blocking(move || m.round()).await {
                Ok(r) if r != Round::default() => tracing::debug!(?r, "tiering round"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "tiering round failed"),
            }
        }
    }

    /// Plans and carries out one round. Blocking IO.
    pub fn round(&self) -> Round {
        let Some((tiers, blocks, now)) = self.store.views_if_needed(self.thresholds.high) else {
            return Round::default();
        };
        let plan = policy::plan(&tiers, &blocks, self.store.policy(), self.thresholds, now);
        let mut r = Round::default();
        let mut pace = Pace::new(self.bandwidth);
        for m in plan.moves {
            let (id, to) = match m {
                Move::Evict { id, .. } => {
                    if self.store.evict(id) {
                        r.evicted += 1;
                    }
                    continue;
                }
                Move::Demote { id, to, .. } | Move::Promote { id, to, .. } => (id, to),
            };
            match self.store.move_block(id, to, &mut pace) {
                Ok(()) if matches!(m, Move::Demote { .. }) => r.demoted += 1,
                Ok(()) => r.promoted += 1,
                Err(e) => {
                    r.failed += 1;
                    tracing::warn!(block = id, error = %e, "cannot move block between tiers");
                }
            }
        }
        let mut ask = plan.ask;
        ask.truncate(MAX_ASK);
        r.asked = ask.len();
        self.store.ask_evictable(ask);
        r
    }
}
