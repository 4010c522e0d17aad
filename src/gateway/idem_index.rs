//! The index of idempotency keys owned by one shard (`shard_of_key`).
//!
//! The record itself (the stored answer) lives in the ledger of the shard whose WAL write made
//! the guarded change durable; this index only knows, per key, the body hash, whether the
//! operation is still running, and which shard holds the record. It is memory only: at start-up
//! it is rebuilt from every shard's records. Bounded by `max` entries.

use crate::domain::{Millis, ShardId};
use crate::gateway::msg::IdemBegin;
use crate::ledger::Hash16;
use std::collections::{HashMap, VecDeque};

#[derive(Clone, Copy, Debug)]
struct Entry {
    body: Hash16,
    at: Millis,
    /// `None` while the operation runs.
    holder: Option<ShardId>,
}

pub struct IdemIndex {
    entries: HashMap<Hash16, Entry>,
    order: VecDeque<(Millis, Hash16)>,
    retention_millis: u64,
    max: usize,
}

impl IdemIndex {
    pub fn new(retention_millis: u64, max: usize) -> IdemIndex {
        assert!(max > 0);
        IdemIndex {
            entries: HashMap::new(),
            order: VecDeque::new(),
            retention_millis,
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a finished record found during start-up.
    pub fn restore(&mut self, key: Hash16, body: Hash16, at: Millis, holder: ShardId) {
        self.entries.insert(
            key,
            Entry {
                body,
                at,
                holder: Some(holder),
            },
        );
        self.order.push_back((at, key));
    }

    /// Sorts the expiry queue after `restore` calls arrived out of time order.
    pub fn finish_restore(&mut self) {
        self.order.make_contiguous().sort();
    }

    pub fn begin(&mut self, key: Hash16, body: Hash16, now: Millis) -> IdemBegin {
        self.prune(now);
        if let Some(e) = self.entries.get(&key) {
            return match (e.body == body, e.holder) {
                (false, _) => IdemBegin::Mismatch,
                (true, None) => IdemBegin::InFlight,
                (true, Some(holder)) => IdemBegin::Replay(holder),
            };
        }
        if self.entries.len() >= self.max {
            return IdemBegin::Full;
        }
        self.entries.insert(
            key,
            Entry {
                body,
                at: now,
                holder: None,
            },
        );
        self.order.push_back((now, key));
        IdemBegin::Proceed
    }

    /// Where `key` stands, without changing anything.
    pub fn lookup(&self, key: &Hash16) -> IdemBegin {
        match self.entries.get(key) {
            None => IdemBegin::Proceed,
            Some(Entry { holder: None, .. }) => IdemBegin::InFlight,
            Some(Entry {
                holder: Some(h), ..
            }) => IdemBegin::Replay(*h),
        }
    }

    pub fn end(&mut self, key: Hash16, holder: Option<ShardId>) {
        match holder {
            Some(h) => {
                if let Some(e) = self.entries.get_mut(&key) {
                    assert!(e.holder.is_none(), "a key finishes once");
                    e.holder = Some(h);
                }
            }
            None => {
                self.entries.remove(&key);
            }
        }
    }

    fn prune(&mut self, now: Millis) {
        while let Some(&(at, key)) = self.order.front() {
            if at.0 + self.retention_millis > now.0 {
                break;
            }
            self.order.pop_front();
            // Only finished entries expire; a running one is still guarding its operation.
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.at == at && e.holder.is_some())
            {
                self.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_goes_from_proceed_to_in_flight_to_replay() {
        let mut idx = IdemIndex::new(1000, 10);
        let (k, b) = ([1; 16], [2; 16]);
        assert_eq!(idx.begin(k, b, Millis(0)), IdemBegin::Proceed);
        assert_eq!(idx.begin(k, b, Millis(1)), IdemBegin::InFlight);
        assert_eq!(idx.begin(k, [3; 16], Millis(1)), IdemBegin::Mismatch);
        idx.end(k, Some(ShardId(3)));
        assert_eq!(idx.begin(k, b, Millis(2)), IdemBegin::Replay(ShardId(3)));
        assert_eq!(idx.begin(k, [3; 16], Millis(2)), IdemBegin::Mismatch);
        assert_eq!(
            idx.begin(k, b, Millis(1000)),
            IdemBegin::Proceed,
            "expired after retention"
        );
    }

    #[test]
    fn a_failed_operation_frees_its_key_and_the_index_is_bounded() {
        let mut idx = IdemIndex::new(1000, 2);
        assert_eq!(idx.begin([1; 16], [0; 16], Millis(0)), IdemBegin::Proceed);
        idx.end([1; 16], None);
        assert_eq!(idx.len(), 0);
        assert_eq!(idx.begin([1; 16], [9; 16], Millis(0)), IdemBegin::Proceed);
        assert_eq!(idx.begin([2; 16], [0; 16], Millis(0)), IdemBegin::Proceed);
        assert_eq!(idx.begin([3; 16], [0; 16], Millis(0)), IdemBegin::Full);
    }
}
