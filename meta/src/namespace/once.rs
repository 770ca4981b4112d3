//! Exactly-once writes and group commit in the state machine.
//!
//! A client names each call with a request id that stays the same across
//! its retries; the service wraps the commands of that call in `Once`. The
//! first `Once` with an id applies its command and records the result under
//! the id, in the same batch; any later one (a retry after a lost answer, a
//! leader change, a timeout) gets the recorded result and changes nothing.
//! Records are kept `RETAIN_MS` (by the commands' own clocks, so every
//! member expires the same ones).
//!
//! `Batch` carries the commands of many concurrent calls in one Raft entry
//! (one log write, one fsync, one replication round); each applies or fails
//! on its own, and all of them with the entry's `last_applied` atomically.

use curvine_common::Result;
use serde::{Deserialize, Serialize};

use super::{apply, MetaCommand, MetaResult, Outcome};
use crate::store::{decode, encode, Txn, CF_REQUESTS};

/// How long a request id is remembered. Clients retry for seconds; ten
/// minutes also covers a retry across a leader change and a long pause.
pub const RETAIN_MS: i64 = 10 * 60 * 1000;
/// Expired records removed per `Once` of an entry (bounded work per
/// command; a storm of writes removes old records faster than it adds new
/// ones). Expiry runs once per entry (`expire_for_entry`): run per command,
/// every command of a batch would pick the same oldest records from the
/// committed database, and a batch of hundreds would remove only four.
const GC_PER_COMMAND: usize = 4;

/// One write of one client call: `client` is random per client process,
/// `seq` counts its calls, `sub` numbers the writes one call makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId {
    pub client: u64,
    pub seq: u64,
    pub sub: u32,
}

impl RequestId {
    fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(21);
        k.push(b'r');
        k.extend_from_slice(&self.client.to_be_bytes());
        k.extend_from_slice(&self.seq.to_be_bytes());
        k.extend_from_slice(&self.sub.to_be_bytes());
        k
    }

    fn time_key(&self, now_ms: i64) -> Vec<u8> {
        let mut k = Vec::with_capacity(29);
        k.push(b't');
        k.extend_from_slice(&(now_ms.max(0) as u64).to_be_bytes());
        k.extend_from_slice(&self.key()[1..]);
        k
    }
}

pub(super) fn apply_once(txn: &mut Txn, id: &RequestId, now_ms: i64, cmd: &MetaCommand) -> Result<Outcome> {
    if let Some(v) = txn.get(CF_REQUESTS, &id.key())? {
        return match decode::<(i64, MetaResult)>(&v) {
            Ok((_, prev)) => prev.0,
            // Recorded by an older binary in a layout this one cannot read
            // (a store upgraded since). It was applied then: applying it
            // again would make this member differ from those that still
            // read the record.
            Err(_) => Err(curvine_common::Error::new(
                curvine_common::ErrorKind::Internal,
                "this call was applied before a meta upgrade and its answer cannot be read back; check its result",
            )),
        };
    }
    let res = apply(txn, cmd);
    let rec = MetaResult(res.clone());
    txn.put(CF_REQUESTS, id.key(), encode(&(now_ms, rec))?);
    txn.put(CF_REQUESTS, id.time_key(now_ms), Vec::new());
    res
}

/// After applying an entry's `cmd`: removes up to `GC_PER_COMMAND` expired
/// records per `Once` in it, by the latest of their clocks.
pub(super) fn expire_for_entry(txn: &mut Txn, cmd: &MetaCommand) -> Result<()> {
    let once = |c: &MetaCommand| match c {
        MetaCommand::Once { now_ms, .. } => Some(*now_ms),
        _ => None,
    };
    let cmds = match cmd {
        MetaCommand::Batch(cmds) => cmds.as_slice(),
        c => std::slice::from_ref(c),
    };
    let (n, now_ms) = cmds.iter().filter_map(once).fold((0, i64::MIN), |(n, t), c| (n + 1, t.max(c)));
    if n == 0 {
        return Ok(());
    }
    expire(txn, now_ms, GC_PER_COMMAND * n)
}

/// Removes up to `limit` records older than `RETAIN_MS`. Reads the
/// committed database (this entry's own records are never that old).
fn expire(txn: &mut Txn, now_ms: i64, limit: usize) -> Result<()> {
    let cutoff = (now_ms - RETAIN_MS).max(0) as u64;
    let db = txn.db().clone();
    let cf = crate::store::cf(&db, CF_REQUESTS)?;
    let mut old = Vec::new();
    for item in db.iterator_cf(cf, rocksdb::IteratorMode::From(b"t", rocksdb::Direction::Forward)) {
        let (k, _) = item.map_err(|e| crate::store::db_err(db.path(), e))?;
        if k.len() != 29 || k[0] != b't' || u64::from_be_bytes(k[1..9].try_into().unwrap_or_default()) >= cutoff {
            break;
        }
        old.push(k.to_vec());
        if old.len() >= limit {
            break;
        }
    }
    for k in old {
        let mut r = vec![b'r'];
        r.extend_from_slice(&k[9..]);
        txn.delete(CF_REQUESTS, r);
        txn.delete(CF_REQUESTS, k);
    }
    Ok(())
}

pub(super) fn apply_batch(txn: &mut Txn, cmds: &[MetaCommand]) -> Outcome {
    Outcome::Batch(cmds.iter().map(|c| MetaResult(apply(txn, c))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StateStore;

    #[test]
    fn a_batch_expires_old_records_for_each_of_its_calls() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let once = |seq: u64, now_ms: i64| MetaCommand::Once {
            id: RequestId { client: 9, seq, sub: 0 },
            now_ms,
            cmd: Box::new(MetaCommand::Mkdir { path: format!("/d{seq}"), parents: false, mode: 0o755, now_ms }),
        };
        let run = |cmd: MetaCommand| {
            let mut txn = Txn::new(store.db());
            let (res, expired) = crate::namespace::apply_entry(&mut txn, &cmd);
            res.unwrap();
            expired.unwrap();
            store.db().write(txn.into_batch().unwrap()).unwrap();
        };
        for seq in 0..20 {
            run(once(seq, 1));
        }
        let records = || {
            let db = store.db();
            let cf = crate::store::cf(&db, CF_REQUESTS).unwrap();
            db.iterator_cf(cf, rocksdb::IteratorMode::Start).filter(|r| r.as_ref().unwrap().0[0] == b'r').count()
        };
        assert_eq!(records(), 20);
        // Five calls in one entry, all past the retention of the first 20:
        // each call's share of expiry applies (5 × 4), not four in all.
        let later = 2 + RETAIN_MS;
        run(MetaCommand::Batch((100..105).map(|seq| once(seq, later)).collect()));
        assert_eq!(records(), 5, "the 20 expired records are gone, the batch's 5 are kept");
    }

    #[test]
    fn a_record_this_binary_cannot_read_is_not_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let id = RequestId { client: 1, seq: 2, sub: 0 };
        let mkdir = MetaCommand::Mkdir { path: "/d".into(), parents: false, mode: 0o755, now_ms: 1 };
        // What an older binary recorded, in a layout this one cannot decode.
        let db = store.db();
        db.put_cf(crate::store::cf(&db, CF_REQUESTS).unwrap(), id.key(), [0xffu8; 3]).unwrap();
        let mut txn = Txn::new(store.db());
        let e = apply_once(&mut txn, &id, 5, &mkdir).unwrap_err();
        assert!(e.message().contains("applied before a meta upgrade"), "{e}");
        store.db().write(txn.into_batch().unwrap()).unwrap();
        assert!(crate::store::Reader { db: store.db() }.resolve("/d").is_err(), "the call must not be applied again");
        // A readable record answers as recorded; a new id applies.
        let fresh = RequestId { client: 1, seq: 3, sub: 0 };
        let mut txn = Txn::new(store.db());
        assert!(apply_once(&mut txn, &fresh, 5, &mkdir).is_ok());
        assert!(apply_once(&mut txn, &fresh, 6, &mkdir).is_ok(), "a retry gets the recorded answer");
    }
}
