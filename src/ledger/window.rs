//! Tables of what grows with traffic (payments, idempotency records), as a ledger sees them.
//!
//! Two modes. `All` keeps every row (replicas, simulations, offline tools). `Window` is a
//! set-associative cache of fixed size, allocated once (TigerBeetle's
//! `set_associative_cache.zig` is the model): a row lives in one of `WAYS` slots of the set
//! its key hashes to, so an insert never rehashes, never moves another entry and never
//! allocates a table. The authoritative copy of a row that is not in the window is in the
//! shard's store (`crate::store`); the shard loads it before any command touches it.
//!
//! The window's one rule: **a slot holding a change the store has not applied is never
//! evicted** (`dirty > stored`). When every slot of a set is such a change, there is no room,
//! and the caller sheds the request rather than lose state.
//!
//! Never: I/O, clocks, or any knowledge of where a missing row is stored.

use crate::domain::Lsn;
use crate::ledger::state::{IdemRecord, Payment};
use crate::ledger::Hash16;
use std::collections::HashMap;
use std::hash::Hash;

/// A key that picks its set: spread over every set even when keys are consecutive.
pub trait WindowKey: Copy + Eq + Hash + std::fmt::Debug {
    fn spread(&self) -> u64;
}

impl WindowKey for u64 {
    fn spread(&self) -> u64 {
        // splitmix64's finaliser: consecutive sequences spread over every set.
        let mut z = self.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl WindowKey for Hash16 {
    fn spread(&self) -> u64 {
        // Already a cryptographic hash.
        u64::from_le_bytes(self[..8].try_into().expect("16 bytes"))
    }
}

/// Payments by their sequence on the shard.
pub type PaymentTable = Table<u64, Payment>;
/// Idempotency records by key hash, on the shard whose WAL holds them.
pub type IdemTable = Table<Hash16, IdemRecord>;
/// Transfers by the hash of their id (`transfer_key`), on the debited account's shard.
pub type TransferTable = Table<Hash16, crate::ledger::TransferView>;

/// The key of transfer `id` in its table and in the store.
pub fn transfer_key(id: &str) -> Hash16 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    digest[..16].try_into().expect("32 bytes")
}

/// Slots per set. Eight keeps a whole set within a few cache lines of metadata and makes a
/// set full of unapplied changes vanishingly rare (the store applies within milliseconds).
pub const WAYS: usize = 8;
/// Smallest window: one set per way, so tests can exercise eviction with tiny windows.
pub const WINDOW_MIN: usize = WAYS * 8;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Slot<K, V> {
    seq: K,
    payment: V,
    /// LSN of the last change made here and not yet known to be in the store (`Lsn(0)`: the
    /// slot equals the store's copy).
    dirty: Lsn,
    /// Last use, for least-recently-used replacement within the set.
    used: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode<K: WindowKey, V> {
    All(HashMap<K, V>),
    Window {
        slots: Vec<Option<Slot<K, V>>>,
        /// `sets - 1`; `sets` is a power of two.
        mask: u64,
        len: usize,
        /// The highest LSN the store has applied (its readers can see it).
        stored: Lsn,
        clock: u64,
    },
}

/// Why a payment could not be placed in the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoRoom;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table<K: WindowKey, V> {
    mode: Mode<K, V>,
}

impl<K: WindowKey, V> Table<K, V> {
    /// Every row in memory (for replicas, simulations and tools).
    pub fn all() -> Table<K, V> {
        Table {
            mode: Mode::All(HashMap::new()),
        }
    }

    /// A window of at least `capacity` payments (rounded up to a power-of-two number of sets),
    /// allocated now and never grown.
    pub fn window(capacity: usize) -> Table<K, V> {
        let sets = capacity.max(WINDOW_MIN).div_ceil(WAYS).next_power_of_two();
        let mut slots = Vec::with_capacity(sets * WAYS);
        slots.resize_with(sets * WAYS, || None);
        Table {
            mode: Mode::Window {
                slots,
                mask: sets as u64 - 1,
                len: 0,
                stored: Lsn(0),
                clock: 0,
            },
        }
    }

    pub fn is_window(&self) -> bool {
        matches!(self.mode, Mode::Window { .. })
    }

    /// Payments held in memory now.
    pub fn len(&self) -> usize {
        match &self.mode {
            Mode::All(map) => map.len(),
            Mode::Window { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots in the window (`None` for `All`).
    pub fn capacity(&self) -> Option<usize> {
        match &self.mode {
            Mode::All(_) => None,
            Mode::Window { slots, .. } => Some(slots.len()),
        }
    }

    /// Tells the window how far the store has applied: slots changed at or before `lsn` may
    /// now be evicted. Monotonic.
    pub fn set_stored(&mut self, lsn: Lsn) {
        if let Mode::Window { stored, .. } = &mut self.mode {
            assert!(lsn >= *stored, "the store's applied LSN never goes back");
            *stored = lsn;
        }
    }

    pub fn contains(&self, seq: K) -> bool {
        match &self.mode {
            Mode::All(map) => map.contains_key(&seq),
            Mode::Window { .. } => self.find(seq).is_some(),
        }
    }

    pub fn get(&self, seq: K) -> Option<&V> {
        match &self.mode {
            Mode::All(map) => map.get(&seq),
            Mode::Window { slots, .. } => self
                .find(seq)
                .map(|i| &slots[i].as_ref().expect("found").payment),
        }
    }

    /// A payment to change at `lsn`: the slot is dirty until the store has applied `lsn`.
    pub fn get_mut(&mut self, seq: K, lsn: Lsn) -> Option<&mut V> {
        let found = self.find(seq);
        match &mut self.mode {
            Mode::All(map) => map.get_mut(&seq),
            Mode::Window { slots, clock, .. } => {
                let slot = slots[found?].as_mut().expect("found");
                *clock += 1;
                slot.used = *clock;
                assert!(lsn.0 > 0, "changes carry the LSN of their record");
                slot.dirty = slot.dirty.max(lsn);
                Some(&mut slot.payment)
            }
        }
    }

    /// True when `seq` is held, or a slot for it can be had now.
    pub fn has_room(&self, seq: K) -> bool {
        match &self.mode {
            Mode::All(_) => true,
            Mode::Window { .. } => self.find(seq).is_some() || self.victim(seq).is_some(),
        }
    }

    /// Adds a row created by the record at `lsn`. The caller checked `has_room`.
    pub fn insert_new(&mut self, seq: K, payment: V, lsn: Lsn) {
        assert!(lsn.0 > 0);
        self.place(seq, payment, lsn)
            .expect("room for a new row is checked before its record is logged");
    }

    /// Sets `key` to `value` as changed by the record at `lsn`, held or not.
    pub fn upsert(&mut self, key: K, value: V, lsn: Lsn) {
        match self.get_mut(key, lsn) {
            Some(slot) => *slot = value,
            None => self.insert_new(key, value, lsn),
        }
    }

    /// Adds a payment read from the store (equal to the store's copy). Does nothing when the
    /// payment is already held: the held copy is never older than the store's.
    pub fn load(&mut self, seq: K, payment: V) -> Result<(), NoRoom> {
        if self.contains(seq) {
            return Ok(());
        }
        self.place(seq, payment, Lsn(0))
    }

    /// Every held payment with its dirty LSN, in no particular order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (K, &V)> + '_> {
        match &self.mode {
            Mode::All(map) => Box::new(map.iter().map(|(&s, p)| (s, p))),
            Mode::Window { slots, .. } => {
                Box::new(slots.iter().flatten().map(|slot| (slot.seq, &slot.payment)))
            }
        }
    }

    /// Held payments with a change the store has not applied (for tests and assertions).
    pub fn unapplied(&self) -> usize {
        match &self.mode {
            Mode::All(_) => 0,
            Mode::Window { slots, stored, .. } => {
                slots.iter().flatten().filter(|s| s.dirty > *stored).count()
            }
        }
    }

    // ---- the window's mechanics ----------------------------------------------------------

    fn set_of(seq: K, mask: u64) -> usize {
        ((seq.spread() & mask) as usize) * WAYS
    }

    fn find(&self, seq: K) -> Option<usize> {
        let Mode::Window { slots, mask, .. } = &self.mode else {
            return None;
        };
        let base = Self::set_of(seq, *mask);
        (base..base + WAYS).find(|&i| slots[i].as_ref().is_some_and(|s| s.seq == seq))
    }

    /// The slot `seq` would take: an empty one, else the least recently used slot whose
    /// change the store has applied. `None` when every slot holds an unapplied change.
    fn victim(&self, seq: K) -> Option<usize> {
        let Mode::Window {
            slots,
            mask,
            stored,
            ..
        } = &self.mode
        else {
            return None;
        };
        let base = Self::set_of(seq, *mask);
        if let Some(i) = (base..base + WAYS).find(|&i| slots[i].is_none()) {
            return Some(i);
        }
        (base..base + WAYS)
            .filter(|&i| slots[i].as_ref().expect("full set").dirty <= *stored)
            .min_by_key(|&i| slots[i].as_ref().expect("full set").used)
    }

    fn place(&mut self, seq: K, payment: V, dirty: Lsn) -> Result<(), NoRoom> {
        if let Mode::All(map) = &mut self.mode {
            let previous = map.insert(seq, payment);
            assert!(previous.is_none() || dirty.0 == 0, "a new payment is new");
            return Ok(());
        }
        assert!(self.find(seq).is_none(), "placed once");
        let index = self.victim(seq).ok_or(NoRoom)?;
        let Mode::Window {
            slots,
            len,
            stored,
            clock,
            ..
        } = &mut self.mode
        else {
            unreachable!()
        };
        *clock += 1;
        let evicted = slots[index].replace(Slot {
            seq,
            payment,
            dirty,
            used: *clock,
        });
        match evicted {
            // The window's rule, asserted where it could break.
            Some(old) => assert!(old.dirty <= *stored, "evicted a change the store lacks"),
            None => *len += 1,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, Currency, Millis, ShardId};
    use crate::ledger::command::{PaymentRef, PaymentStatus, PaymentView};

    fn payment(seq: u64) -> Payment {
        Payment {
            view: PaymentView {
                id: PaymentRef {
                    shard: ShardId(0),
                    seq,
                },
                merchant: crate::ledger::MerchantId("m".into()),
                status: PaymentStatus::Authorized,
                amount: seq as i64,
                amount_captured: 0,
                amount_refunded: 0,
                currency: Currency::from_alpha("EUR").unwrap(),
                bin: "424242".into(),
                last4: "4242".into(),
                approval_code: None,
                decline: None,
                reference: Default::default(),
                created_at: Millis(0),
            },
            account: Some(AccountId(1)),
            settlement: AccountId(2),
            settlement_shard: ShardId(0),
            expires_at: Millis(10),
        }
    }

    #[test]
    fn the_window_never_evicts_an_unapplied_change() {
        let mut t = PaymentTable::window(WINDOW_MIN);
        let cap = t.capacity().unwrap();
        // Fill far past capacity while the store applies nothing: inserts stop at a full set.
        let mut placed = Vec::new();
        for seq in 1..=(cap as u64 * 2) {
            if t.has_room(seq) {
                t.insert_new(seq, payment(seq), Lsn(seq));
                placed.push(seq);
            }
        }
        assert!(placed.len() <= cap);
        assert_eq!(t.unapplied(), placed.len());
        for &seq in &placed {
            assert_eq!(t.get(seq).unwrap().view.amount, seq as i64, "nothing lost");
        }
        // Once the store has applied them, new payments evict the least recently used.
        t.set_stored(Lsn(u64::MAX / 2));
        let fresh = cap as u64 * 3;
        assert!(t.has_room(fresh));
        t.insert_new(fresh, payment(fresh), Lsn(u64::MAX / 2 + 1));
        assert!(t.contains(fresh));
        assert!(t.len() <= cap);
    }

    #[test]
    fn a_load_never_replaces_a_held_copy() {
        let mut t = PaymentTable::window(WINDOW_MIN);
        t.insert_new(5, payment(5), Lsn(1));
        t.get_mut(5, Lsn(2)).unwrap().view.amount = 99;
        t.load(5, payment(5)).unwrap();
        assert_eq!(t.get(5).unwrap().view.amount, 99);
        // A change marks the slot dirty up to its LSN: not evictable before the store has it.
        t.set_stored(Lsn(1));
        assert_eq!(t.unapplied(), 1);
        t.set_stored(Lsn(2));
        assert_eq!(t.unapplied(), 0);
    }

    #[test]
    fn all_mode_keeps_everything() {
        let mut t = PaymentTable::all();
        for seq in 1..10_000 {
            assert!(t.has_room(seq));
            t.insert_new(seq, payment(seq), Lsn(seq));
        }
        assert_eq!(t.len(), 9_999);
        assert_eq!(t.capacity(), None);
    }
}
