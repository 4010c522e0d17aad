//! The corepay ISO 8583:1987 profile as data: which fields exist, their character class
//! and their length rule (DESIGN.md §6). `codec` is driven by this table alone; a field
//! is added to the profile by adding a row here, never by writing per-message code.
//!
//! Never: parses bytes or knows what a field means to a payment.

/// Which bytes a field's value may contain (all encodings are ASCII).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `n`: decimal digits.
    N,
    /// `an`: ASCII letters, digits and space (jPOS pads fixed `an` fields with spaces).
    An,
    /// `ans`: printable ASCII, 0x20..=0x7E.
    Ans,
    /// `z`: track-2 data: digits and the separator `=` (`D` is accepted as well).
    Z,
}

impl Class {
    /// Whether `byte` may appear in a value of this class.
    #[inline]
    pub const fn admits(self, byte: u8) -> bool {
        match self {
            Class::N => byte.is_ascii_digit(),
            Class::An => byte.is_ascii_alphanumeric() || byte == b' ',
            Class::Ans => matches!(byte, 0x20..=0x7E),
            Class::Z => byte.is_ascii_digit() || byte == b'=' || byte == b'D',
        }
    }

    /// Whether every byte of `value` may appear in a value of this class.
    #[inline]
    pub fn admits_all(self, value: &[u8]) -> bool {
        // One branch-free pass per class (no early exit), which the compiler vectorises;
        // values are at most 120 bytes.
        fn every(value: &[u8], admits: impl Fn(u8) -> bool) -> bool {
            value.iter().fold(true, |ok, &b| ok & admits(b))
        }
        match self {
            Class::N => every(value, |b| b.wrapping_sub(b'0') < 10),
            Class::An => every(value, |b| Class::An.admits(b)),
            Class::Ans => every(value, |b| b.wrapping_sub(0x20) < 0x5F),
            Class::Z => every(value, |b| Class::Z.admits(b)),
        }
    }
}

/// A field's length rule. Lengths count bytes of the value, prefix excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Len {
    /// Exactly this many bytes, no prefix.
    Fixed(u16),
    /// A 2-digit ASCII decimal length prefix, then at most this many bytes.
    LLVar(u16),
    /// A 3-digit ASCII decimal length prefix, then at most this many bytes.
    LLLVar(u16),
}

impl Len {
    /// The longest value the rule admits.
    pub const fn max(self) -> usize {
        match self {
            Len::Fixed(n) | Len::LLVar(n) | Len::LLLVar(n) => n as usize,
        }
    }

    /// Bytes of the ASCII length prefix: 0, 2 or 3.
    pub const fn prefix_len(self) -> usize {
        match self {
            Len::Fixed(_) => 0,
            Len::LLVar(_) => 2,
            Len::LLLVar(_) => 3,
        }
    }
}

/// One data element of the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// The data element number, 2..=128 (1 is the secondary bitmap, never a field).
    pub number: u8,
    /// The ISO 8583:1987 name, for logs and errors.
    pub name: &'static str,
    /// Which bytes the value may contain.
    pub class: Class,
    /// The length rule.
    pub len: Len,
}

const fn f(number: u8, name: &'static str, class: Class, len: Len) -> FieldSpec {
    FieldSpec {
        number,
        name,
        class,
        len,
    }
}

use Class::{An, Ans, N, Z};
use Len::{Fixed, LLLVar, LLVar};

/// Every field of the corepay profile, in ascending field order (checked at compile time).
/// A bitmap bit for any other field (except bit 1) makes a message unsupported.
pub const FIELDS: &[FieldSpec] = &[
    f(2, "primary account number", N, LLVar(19)),
    f(3, "processing code", N, Fixed(6)),
    f(4, "amount, transaction", N, Fixed(12)),
    f(7, "transmission date and time", N, Fixed(10)),
    f(11, "systems trace audit number", N, Fixed(6)),
    f(12, "time, local transaction", N, Fixed(6)),
    f(13, "date, local transaction", N, Fixed(4)),
    f(14, "date, expiration", N, Fixed(4)),
    f(18, "merchant category code", N, Fixed(4)),
    f(22, "point of service entry mode", N, Fixed(3)),
    f(25, "point of service condition code", N, Fixed(2)),
    f(
        32,
        "acquiring institution identification code",
        N,
        LLVar(11),
    ),
    f(35, "track 2 data", Z, LLVar(37)),
    f(37, "retrieval reference number", An, Fixed(12)),
    f(38, "approval code", An, Fixed(6)),
    f(39, "response code", An, Fixed(2)),
    f(41, "card acceptor terminal identification", Ans, Fixed(8)),
    f(42, "card acceptor identification code", Ans, Fixed(15)),
    f(43, "card acceptor name/location", Ans, Fixed(40)),
    f(49, "currency code, transaction", N, Fixed(3)),
    f(54, "additional amounts", An, LLLVar(120)),
    f(70, "network management information code", N, Fixed(3)),
    f(90, "original data elements", N, Fixed(42)),
    f(95, "replacement amounts", An, Fixed(42)),
];

/// The specification of field `number`, if the profile has it.
#[inline]
pub fn spec(number: u8) -> Option<&'static FieldSpec> {
    index(number).map(|i| &FIELDS[i])
}

/// The position of field `number` in `FIELDS`.
#[inline]
pub(crate) fn index(number: u8) -> Option<usize> {
    match INDEX.get(number as usize) {
        Some(&i) if i != NONE => Some(i as usize),
        _ => None,
    }
}

/// The bitmap bit of field `number` (1..=128): field 1 is the most significant bit, so
/// `to_be_bytes()` of a bitmap is its wire order.
#[inline]
pub(crate) const fn bit(number: u8) -> u128 {
    assert!(number >= 1 && number <= 128);
    1u128 << (128 - number as u32)
}

/// The field number of the most significant bit set in `bits` (which must not be 0).
#[inline]
pub(crate) const fn first(bits: u128) -> u8 {
    assert!(bits != 0);
    bits.leading_zeros() as u8 + 1
}

/// Bits of the secondary bitmap (fields 65..=128).
pub(crate) const SECONDARY: u128 = u64::MAX as u128;

/// Every bit a decoder accepts: the profile's fields and bit 1 (secondary bitmap present).
pub(crate) const SUPPORTED: u128 = {
    let mut bits = bit(1);
    let mut i = 0;
    while i < FIELDS.len() {
        bits |= bit(FIELDS[i].number);
        i += 1;
    }
    bits
};

/// The longest message body the profile allows: MTI, both bitmaps in hex, every field at
/// its maximum. Every frame `encode` produces fits in either length header.
pub const MAX_MESSAGE_LEN: usize = {
    let mut len = 4 + 32;
    let mut i = 0;
    while i < FIELDS.len() {
        len += FIELDS[i].len.prefix_len() + FIELDS[i].len.max();
        i += 1;
    }
    len
};

const NONE: u8 = u8::MAX;

const INDEX: [u8; 129] = {
    let mut index = [NONE; 129];
    let mut i = 0;
    while i < FIELDS.len() {
        index[FIELDS[i].number as usize] = i as u8;
        i += 1;
    }
    index
};

// The table's invariants, checked when the crate compiles.
const _: () = {
    assert!(FIELDS.len() < NONE as usize);
    let mut i = 0;
    while i < FIELDS.len() {
        let spec = &FIELDS[i];
        assert!(
            spec.number >= 2 && spec.number <= 128,
            "field 1 is the secondary bitmap"
        );
        assert!(
            i == 0 || FIELDS[i - 1].number < spec.number,
            "FIELDS ascending, no repeats"
        );
        match spec.len {
            Len::Fixed(n) => assert!(n >= 1),
            Len::LLVar(n) => assert!(n >= 1 && n <= 99),
            Len::LLLVar(n) => assert!(n >= 1 && n <= 999),
        }
        i += 1;
    }
};
const _: () = assert!(
    MAX_MESSAGE_LEN <= 9999,
    "must fit a 4-digit ASCII length header"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8583_spec_lookup_matches_table() {
        for n in 0..=255u8 {
            match spec(n) {
                Some(s) => assert_eq!(s.number, n),
                None => assert!(FIELDS.iter().all(|s| s.number != n)),
            }
        }
        assert_eq!(spec(2).unwrap().len, Len::LLVar(19));
        assert_eq!(spec(54).unwrap().len, Len::LLLVar(120));
        assert_eq!(spec(35).unwrap().class, Class::Z);
        assert!(spec(1).is_none());
        assert!(spec(129).is_none());
        assert_eq!(FIELDS.len(), 24);
    }

    #[test]
    fn iso8583_spec_bits() {
        assert_eq!(bit(1).to_be_bytes()[0], 0x80);
        assert_eq!(bit(64).to_be_bytes()[7], 0x01);
        assert_eq!(bit(65).to_be_bytes()[8], 0x80);
        assert_eq!(bit(128).to_be_bytes()[15], 0x01);
        for n in 1..=128u8 {
            assert_eq!(first(bit(n)), n);
            assert_eq!(bit(n) & SECONDARY != 0, n > 64);
        }
        assert_eq!(SUPPORTED.count_ones() as usize, FIELDS.len() + 1);
    }

    #[test]
    fn iso8583_spec_classes() {
        assert!(Class::N.admits_all(b"0123456789"));
        assert!(!Class::N.admits_all(b"12a"));
        assert!(!Class::N.admits_all(b" 1"));
        assert!(Class::An.admits_all(b"Ab9 z"));
        assert!(!Class::An.admits_all(b"A-1"));
        assert!(Class::Ans.admits_all(b" ~!Az09"));
        assert!(!Class::Ans.admits_all(b"\x7f"));
        assert!(!Class::Ans.admits_all(b"\t"));
        assert!(Class::Z.admits_all(b"4111=2512D1"));
        assert!(!Class::Z.admits_all(b"4111^2512"));
        assert!(!Class::Z.admits_all(b"d"));
    }
}
