//! Routing: which shard owns a piece of state. Plain functions of `(key, shard count)`.
//!
//! The mapping is part of the data directory's format (the shard count is recorded there and
//! a different count is refused), so these functions must never change for a given input.

use crate::domain::{AccountId, ShardId};
use crate::ledger::{CardHash, Hash16, MerchantId};

/// SplitMix64's finaliser: spreads sequential ids evenly over shards.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn pick(h: u64, shards: u16) -> ShardId {
    assert!(shards >= 1);
    ShardId((h % shards as u64) as u16)
}

/// `hash(account id) mod shards`.
pub fn shard_of_account(id: AccountId, shards: u16) -> ShardId {
    pick(mix(id.0), shards)
}

/// A card lives where its keyed hash points (the hash is already uniform).
pub fn shard_of_card(hash: &CardHash, shards: u16) -> ShardId {
    pick(
        u64::from_le_bytes(hash[..8].try_into().expect("8 of 32")),
        shards,
    )
}

pub fn shard_of_merchant(id: &MerchantId, shards: u16) -> ShardId {
    if shards == 1 {
        // Every hash picks shard 0: skip the SHA-256 (asked on every merchant request).
        return ShardId(0);
    }
    let h = crate::secrets::hash16(&[b"merchant", id.0.as_bytes()]);
    pick(
        u64::from_le_bytes(h[..8].try_into().expect("8 of 16")),
        shards,
    )
}

/// The shard that indexes an idempotency key (the record itself lives where the change did).
pub fn shard_of_key(key: &Hash16, shards: u16) -> ShardId {
    pick(
        u64::from_le_bytes(key[8..].try_into().expect("8 of 16")),
        shards,
    )
}

/// The shard encoded in a card id (`seq * SHARDS_MAX + shard`).
pub fn shard_of_card_id(id: u64) -> ShardId {
    ShardId((id % crate::domain::SHARDS_MAX as u64) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_spread_over_every_shard() {
        for shards in 1..=8u16 {
            let mut seen = vec![0u32; shards as usize];
            for id in 0..8000 {
                seen[shard_of_account(AccountId(id), shards).index()] += 1;
            }
            let (min, max) = (*seen.iter().min().unwrap(), *seen.iter().max().unwrap());
            assert!(min * 10 >= max * 8, "{shards} shards: {seen:?}");
        }
    }

    const GOLDEN_1000_TO_1007_ON_4: [u16; 8] = [3, 3, 3, 2, 3, 0, 2, 1];

    #[test]
    fn routing_is_stable() {
        // Changing these values changes where existing data lives: never do it.
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0x5692_161D_100B_05E5);
        let placed: Vec<u16> = (1000..1008)
            .map(|id| shard_of_account(AccountId(id), 4).0)
            .collect();
        assert_eq!(placed, GOLDEN_1000_TO_1007_ON_4);
    }
}
