//! Keyed hashing of card numbers and API keys, Luhn checks, and the PAN key's life cycle.
//!
//! Owns: the only code that sees a clear PAN or API key after parsing, and turns it into a
//! hash. Never: logs, stores or returns a clear PAN, key or secret (`Debug` of `PanKey` is
//! redacted).

use crate::ledger::{CardHash, Hash16};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::path::Path;

/// Bytes in the PAN hashing key.
pub const PAN_KEY_BYTES: usize = 32;
/// Environment variable that may carry the PAN key (64 hex characters).
pub const PAN_KEY_ENV: &str = "COREPAY_PAN_KEY";

/// The secret key of the card-number HMAC.
#[derive(Clone)]
pub struct PanKey {
    key: [u8; PAN_KEY_BYTES],
    /// The HMAC with the key already absorbed (its inner and outer pads hashed once): each
    /// hash clones it and hashes only the message, two SHA-256 blocks instead of four.
    keyed: Hmac<Sha256>,
}

impl fmt::Debug for PanKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PanKey(<redacted>)")
    }
}

impl PanKey {
    fn new(key: [u8; PAN_KEY_BYTES]) -> PanKey {
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("any key length");
        PanKey { key, keyed }
    }

    pub fn from_hex(text: &str) -> Result<PanKey, String> {
        let bytes = hex::decode(text.trim()).map_err(|_| "is not hex".to_string())?;
        let key: [u8; PAN_KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| format!("must be {} hex characters", PAN_KEY_BYTES * 2))?;
        Ok(PanKey::new(key))
    }

    /// Loads the key: `COREPAY_PAN_KEY`, else `file` when configured, else (embedded default)
    /// `data_dir/pan.key`, generated on first start with mode 0600.
    pub fn load(file: Option<&Path>, data_dir: &Path) -> Result<PanKey, String> {
        if let Ok(text) = std::env::var(PAN_KEY_ENV) {
            return PanKey::from_hex(&text).map_err(|e| format!("{PAN_KEY_ENV} {e}"));
        }
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("secrets.pan_key_file {}: {e}", file.display()))?;
            return PanKey::from_hex(&text).map_err(|e| format!("secrets.pan_key_file {e}"));
        }
        let path = data_dir.join("pan.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => PanKey::from_hex(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = PanKey::new(random_bytes());
                write_private(&path, hex::encode(key.key).as_bytes())
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                Ok(key)
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Keyed 128-bit hash of several byte strings (each length-prefixed), for anything that
    /// may contain a card number, such as a request body kept as an idempotency fingerprint:
    /// an unkeyed hash of a PAN can be reversed by enumerating the few card numbers a BIN allows.
    pub fn mac16(&self, parts: &[&[u8]]) -> Hash16 {
        let mut mac = self.keyed.clone();
        mac.update(b"corepay-mac16");
        for p in parts {
            mac.update(&(p.len() as u64).to_le_bytes());
            mac.update(p);
        }
        let full: [u8; 32] = mac.finalize().into_bytes().into();
        full[..16].try_into().expect("16 of 32")
    }

    /// HMAC-SHA-256 of the digits of a card number.
    pub fn hash_pan(&self, pan: &str) -> CardHash {
        let mut mac = self.keyed.clone();
        mac.update(pan.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).expect("the OS random source works");
    bytes
}

/// SHA-256 of an API key: what the ledger keeps.
pub fn hash_api_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// 128-bit hash of several byte strings, each length-prefixed so that boundaries count.
pub fn hash16(parts: &[&[u8]]) -> Hash16 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let full: [u8; 32] = h.finalize().into();
    full[..16].try_into().expect("16 of 32")
}

/// A new merchant API key, `sk_<merchant id in hex>_<32 random hex>`: the id inside lets any
/// shard find the merchant's home without a directory.
pub fn new_api_key(merchant_id: &str) -> String {
    format!(
        "sk_{}_{}",
        hex::encode(merchant_id),
        hex::encode(random_bytes::<16>())
    )
}

/// The merchant id inside an API key, if the key has the right shape.
pub fn merchant_of_api_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix("sk_")?;
    let (id_hex, secret) = rest.split_once('_')?;
    if secret.len() != 32 || id_hex.len() > 30 {
        return None;
    }
    String::from_utf8(hex::decode(id_hex).ok()?).ok()
}

/// A card number in clear, as presented: kept only until it is hashed, and wiped when
/// dropped, so that no copy is left in freed memory. `Debug` shows nothing of it.
#[derive(serde::Deserialize)]
#[serde(transparent)]
pub struct Pan(compact_str::CompactString);

impl std::ops::Deref for Pan {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Pan {
    fn from(s: &str) -> Pan {
        Pan(s.into())
    }
}

impl From<String> for Pan {
    fn from(mut s: String) -> Pan {
        let pan = Pan(s.as_str().into());
        zeroize::Zeroize::zeroize(&mut s);
        pan
    }
}

impl Drop for Pan {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pan(redacted)")
    }
}

/// Length limits of a card number (ISO/IEC 7812).
pub const PAN_MIN: usize = 12;
pub const PAN_MAX: usize = 19;

/// True when `pan` is 12..=19 digits and passes the Luhn check.
pub fn luhn_valid(pan: &str) -> bool {
    if pan.len() < PAN_MIN || pan.len() > PAN_MAX || !pan.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = pan
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = (b - b'0') as u32;
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 {
                    dd - 9
                } else {
                    dd
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// Appends the Luhn check digit to `partial` (used by bulk provisioning and tests).
pub fn with_luhn_digit(partial: &str) -> String {
    (0..10)
        .map(|d| format!("{partial}{d}"))
        .find(|pan| luhn_valid(pan))
        .expect("one of ten digits completes any number")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_public_test_cards_and_rejects_typos() {
        for good in [
            "4242424242424242",
            "4000056655665556",
            "5555555555554444",
            "378282246310005",
        ] {
            assert!(luhn_valid(good), "{good}");
        }
        for bad in [
            "4242424242424241",
            "42424242",
            "424242424242424a",
            "",
            "42424242424242424242",
        ] {
            assert!(!luhn_valid(bad), "{bad}");
        }
        let pan = with_luhn_digit("411111111111111");
        assert_eq!(pan, "4111111111111111");
    }

    #[test]
    fn pan_hash_depends_on_the_key_and_hides_the_pan() {
        let a = PanKey::new([1; 32]);
        let b = PanKey::new([2; 32]);
        let pan = "4242424242424242";
        assert_eq!(a.hash_pan(pan), a.hash_pan(pan));
        assert_ne!(a.hash_pan(pan), b.hash_pan(pan));
        assert!(!format!("{a:?}").contains("0101"));
    }

    /// The prepared HMAC is HMAC-SHA-256 itself (RFC 4231 test case 2), however often used.
    #[test]
    fn prepared_hmac_is_hmac_sha256() {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let k = PanKey::new(key);
        // Keys shorter than a block are zero-padded: "Jefe" and "Jefe" + 28 zeros are equal.
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        for _ in 0..2 {
            assert_eq!(
                hex::encode(k.hash_pan("what do ya want for nothing?")),
                expected
            );
        }
    }

    #[test]
    fn api_keys_carry_their_merchant() {
        let key = new_api_key("SHOP 1");
        assert_eq!(merchant_of_api_key(&key).as_deref(), Some("SHOP 1"));
        assert_eq!(merchant_of_api_key("sk_zz_00"), None);
        assert_eq!(
            merchant_of_api_key("pk_41_00000000000000000000000000000000"),
            None
        );
        assert_ne!(hash_api_key(&key), hash_api_key(&new_api_key("SHOP 1")));
    }

    #[test]
    fn hash16_separates_its_parts() {
        assert_ne!(hash16(&[b"ab", b"c"]), hash16(&[b"a", b"bc"]));
    }

    #[test]
    fn pan_key_is_generated_once_with_owner_only_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::env::remove_var(PAN_KEY_ENV);
        let k1 = PanKey::load(None, dir.path()).unwrap();
        let k2 = PanKey::load(None, dir.path()).unwrap();
        assert_eq!(
            k1.hash_pan("4242424242424242"),
            k2.hash_pan("4242424242424242")
        );
        let mode = std::fs::metadata(dir.path().join("pan.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
