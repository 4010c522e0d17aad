//! The index of idempotency keys owned by one shard (`shard_of_key`).
//!
//! The record itself (the stored answer) lives with the shard whose WAL write made the
//! guarded change durable (its ledger's window, then its store). This index knows, per key,
//! the body hash, whether the operation is still running, and which shard holds the record.
//!
//! It is a fixed set-associative table (`WAYS` slots per set, allocated once, never rehashed)
//! of the keys in use now and recently. A finished key may leave it once its holder's store
//! has the record (`Done::durable` ≤ that store's applied LSN): a key that is not here is
//! then looked up in the stores (`resolve`) — unless no key that left its set (and no record
//! from before the start) is still within retention, which each set remembers as one time.
//! A running key never leaves it. With no store (tests), a finished key leaves only when its
//! retention has passed.
//!
//! Never: I/O, or a decision about the guarded operation.

use crate::domain::{Lsn, Millis, ShardId};
use crate::gateway::msg::IdemBegin;
use crate::ledger::Hash16;

const WAYS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The operation runs (or its key is being looked up in the stores).
    Running,
    /// Finished; `holder` logged the record; it is in the holder's store once that store
    /// has applied `durable` (the holder's durable LSN when the key finished).
    Done { holder: ShardId, durable: Lsn },
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: Hash16,
    body: Hash16,
    at: Millis,
    state: State,
}

/// What the index knows of a key without asking the stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    Known(IdemBegin),
    /// Not here: the stores must be asked (`resolve`). For `begin`, the key is now held as
    /// running, so that a concurrent request with the same key waits for this one.
    Unknown,
}

pub struct IdemIndex {
    slots: Vec<Option<Entry>>,
    /// Per set: the newest `at` of a finished key that left it for the stores.
    left_at: Vec<u64>,
    /// The newest record the stores held at start (0: none).
    floor_at: u64,
    mask: u64,
    len: usize,
    retention_millis: u64,
    /// True when finished keys may leave once their holder's store has them.
    backed: bool,
}

impl IdemIndex {
    /// An index of about `max` keys; `backed`: the stores hold every finished key, the
    /// newest of which was recorded at `floor_at` when the index was made (0: none).
    pub fn new(retention_millis: u64, max: usize, backed: bool, floor_at: Millis) -> IdemIndex {
        assert!(max > 0);
        let sets = max.div_ceil(WAYS).next_power_of_two();
        IdemIndex {
            slots: vec![None; sets * WAYS],
            left_at: vec![0; sets],
            floor_at: floor_at.0,
            mask: sets as u64 - 1,
            len: 0,
            retention_millis,
            backed,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Starts `key` with `body`. `stored(holder)` is that shard's store applied LSN.
    pub fn begin(
        &mut self,
        key: Hash16,
        body: Hash16,
        now: Millis,
        stored: &dyn Fn(ShardId) -> Lsn,
    ) -> Local {
        if let Some(i) = self.find(&key, now) {
            let e = self.slots[i].expect("found");
            return Local::Known(match (e.body == body, e.state) {
                (false, _) => IdemBegin::Mismatch,
                (true, State::Running) => IdemBegin::InFlight,
                (true, State::Done { holder, .. }) => IdemBegin::Replay(holder),
            });
        }
        match self.place(key, body, now, State::Running, stored) {
            true if self.stores_may_hold(&key, now) => Local::Unknown,
            true => Local::Known(IdemBegin::Proceed),
            false => Local::Known(IdemBegin::Full),
        }
    }

    /// Ends a `begin` that returned `Unknown`, with what the stores hold for the key
    /// (`(holder, body, at)` of a record still within retention, or `None`).
    pub fn resolve(
        &mut self,
        key: Hash16,
        body: Hash16,
        found: Option<(ShardId, Hash16, Millis)>,
    ) -> IdemBegin {
        let i = self
            .slots_of(&key)
            .find(|&i| self.slots[i].is_some_and(|e| e.key == key))
            .expect("a key being resolved is held as running");
        let e = self.slots[i].as_mut().expect("found");
        assert_eq!(e.state, State::Running);
        match found {
            None => IdemBegin::Proceed,
            Some((holder, stored_body, at)) => {
                // The record is in the holder's store: nothing to wait for before eviction.
                *e = Entry {
                    key,
                    body: stored_body,
                    at,
                    state: State::Done {
                        holder,
                        durable: Lsn(0),
                    },
                };
                if stored_body == body {
                    IdemBegin::Replay(holder)
                } else {
                    IdemBegin::Mismatch
                }
            }
        }
    }

    /// Where `key` stands, without changing anything (`Unknown`: ask the stores).
    pub fn lookup(&self, key: &Hash16, now: Millis) -> Local {
        match self
            .find(key, now)
            .map(|i| self.slots[i].expect("found").state)
        {
            Some(State::Running) => Local::Known(IdemBegin::InFlight),
            Some(State::Done { holder, .. }) => Local::Known(IdemBegin::Replay(holder)),
            None if self.stores_may_hold(key, now) => Local::Unknown,
            None => Local::Known(IdemBegin::Proceed),
        }
    }

    /// The operation under `key` ended: its record is at `holder` (durable there by LSN
    /// `durable`), or it failed and the key is free again (`None`).
    pub fn end(&mut self, key: Hash16, holder: Option<(ShardId, Lsn)>) {
        let Some(i) = self
            .slots_of(&key)
            .find(|&i| self.slots[i].is_some_and(|e| e.key == key))
        else {
            return;
        };
        match holder {
            Some((holder, durable)) => {
                let e = self.slots[i].as_mut().expect("found");
                assert_eq!(e.state, State::Running, "a key finishes once");
                e.state = State::Done { holder, durable };
            }
            None => {
                self.slots[i] = None;
                self.len -= 1;
            }
        }
    }

    /// True when a record of `key` could be in a store: a finished key of its set left the
    /// index (or the stores held records at start) less than a retention ago.
    fn stores_may_hold(&self, key: &Hash16, now: Millis) -> bool {
        let set = self.slots_of(key).start / WAYS;
        let newest = self.left_at[set].max(self.floor_at);
        self.backed && newest > 0 && newest + self.retention_millis > now.0
    }

    fn slots_of(&self, key: &Hash16) -> std::ops::Range<usize> {
        let spread = u64::from_le_bytes(key[..8].try_into().expect("16 bytes"));
        let base = ((spread & self.mask) as usize) * WAYS;
        base..base + WAYS
    }

    fn expired(&self, e: &Entry, now: Millis) -> bool {
        matches!(e.state, State::Done { .. }) && e.at.0 + self.retention_millis <= now.0
    }

    /// The slot of `key` if it is held and not expired.
    fn find(&self, key: &Hash16, now: Millis) -> Option<usize> {
        self.slots_of(key)
            .find(|&i| self.slots[i].is_some_and(|e| e.key == *key && !self.expired(&e, now)))
    }

    fn place(
        &mut self,
        key: Hash16,
        body: Hash16,
        now: Millis,
        state: State,
        stored: &dyn Fn(ShardId) -> Lsn,
    ) -> bool {
        let range = self.slots_of(&key);
        let free = range.clone().find(|&i| {
            match &self.slots[i] {
                None => true,
                Some(e) if e.key == key => true, // expired copy of this key
                Some(e) if self.expired(e, now) => true,
                Some(Entry {
                    state: State::Done { holder, durable },
                    ..
                }) => self.backed && stored(*holder) >= *durable,
                Some(_) => false,
            }
        });
        let Some(i) = free else {
            return false;
        };
        match &self.slots[i] {
            None => self.len += 1,
            Some(e) if e.key != key && !self.expired(e, now) => {
                // A finished key leaves for its holder's store.
                let set = i / WAYS;
                self.left_at[set] = self.left_at[set].max(e.at.0);
            }
            Some(_) => {}
        }
        self.slots[i] = Some(Entry {
            key,
            body,
            at: now,
            state,
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nothing_stored(_: ShardId) -> Lsn {
        Lsn(0)
    }

    #[test]
    fn a_key_goes_from_proceed_to_in_flight_to_replay() {
        let mut idx = IdemIndex::new(1000, 64, false, Millis(0));
        let (k, b) = ([1; 16], [2; 16]);
        let begin = |idx: &mut IdemIndex, body, at| idx.begin(k, body, Millis(at), &nothing_stored);
        assert_eq!(begin(&mut idx, b, 0), Local::Known(IdemBegin::Proceed));
        assert_eq!(begin(&mut idx, b, 1), Local::Known(IdemBegin::InFlight));
        assert_eq!(
            begin(&mut idx, [3; 16], 1),
            Local::Known(IdemBegin::Mismatch)
        );
        idx.end(k, Some((ShardId(3), Lsn(7))));
        assert_eq!(
            begin(&mut idx, b, 2),
            Local::Known(IdemBegin::Replay(ShardId(3)))
        );
        assert_eq!(
            begin(&mut idx, [3; 16], 2),
            Local::Known(IdemBegin::Mismatch)
        );
        assert_eq!(
            begin(&mut idx, b, 1000),
            Local::Known(IdemBegin::Proceed),
            "expired after retention"
        );
    }

    #[test]
    fn a_failed_operation_frees_its_key_and_an_unbacked_index_is_bounded() {
        let mut idx = IdemIndex::new(1000, 8, false, Millis(0));
        assert_eq!(
            idx.begin([1; 16], [0; 16], Millis(0), &nothing_stored),
            Local::Known(IdemBegin::Proceed)
        );
        idx.end([1; 16], None);
        assert_eq!(idx.len(), 0);
        // Keys that all fall into one set: the ninth finds no slot while eight run.
        let key = |n: u8| {
            let mut k = [0u8; 16];
            k[15] = n;
            k
        };
        for n in 0..8 {
            assert_eq!(
                idx.begin(key(n), [0; 16], Millis(0), &nothing_stored),
                Local::Known(IdemBegin::Proceed)
            );
        }
        assert_eq!(
            idx.begin(key(8), [0; 16], Millis(0), &nothing_stored),
            Local::Known(IdemBegin::Full)
        );
    }

    #[test]
    fn a_finished_key_leaves_only_once_its_holder_stored_it() {
        let mut idx = IdemIndex::new(86_400_000, 8, true, Millis(1));
        let key = |n: u8| {
            let mut k = [0u8; 16];
            k[15] = n;
            k
        };
        for n in 0..8 {
            assert_eq!(
                idx.begin(key(n), [n; 16], Millis(0), &nothing_stored),
                Local::Unknown
            );
            assert_eq!(idx.resolve(key(n), [n; 16], None), IdemBegin::Proceed);
            idx.end(key(n), Some((ShardId(0), Lsn(100 + n as u64))));
        }
        // The holder's store has applied up to 101: keys 0 and 1 may leave, no other.
        let stored = |_: ShardId| Lsn(101);
        assert_eq!(
            idx.begin(key(8), [8; 16], Millis(1), &stored),
            Local::Unknown
        );
        assert_eq!(
            idx.begin(key(9), [9; 16], Millis(1), &stored),
            Local::Unknown
        );
        assert_eq!(
            idx.begin(key(10), [10; 16], Millis(1), &stored),
            Local::Known(IdemBegin::Full)
        );
        // An evicted key is found again in the stores: replayed, or refused for another body.
        assert_eq!(idx.resolve(key(8), [8; 16], None), IdemBegin::Proceed);
        idx.end(key(8), None);
        assert_eq!(
            idx.begin(key(0), [7; 16], Millis(2), &stored),
            Local::Unknown
        );
        assert_eq!(
            idx.resolve(key(0), [7; 16], Some((ShardId(0), [0; 16], Millis(0)))),
            IdemBegin::Mismatch
        );
        assert_eq!(
            idx.lookup(&key(0), Millis(3)),
            Local::Known(IdemBegin::Replay(ShardId(0)))
        );
    }
}
