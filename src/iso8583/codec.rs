//! Decoding and encoding of one ISO 8583:1987 message body (MTI, bitmaps, fields) under
//! the corepay profile of `spec`. The length header around a body is `framing`'s.
//!
//! Decoding is "parse, then validate": a `Reader` over the borrowed frame takes each
//! field's bytes (length prefix, then value), bounds-checked, and only then is the value
//! checked against its field's class and length. Errors are sorted by whose fault they
//! are (`DecodeError`); every one of them is answered with response code 30 where the
//! MTI and STAN can be read (`decode_partial`).
//!
//! Allocation: a decoded `Message` owns one buffer holding its field values back to back,
//! allocated once per message and sized from the frame; fields are spans into it. No
//! allocation per field, and the message does not borrow the frame, so the receive
//! buffer can be reused at once.
//!
//! Never: panics on, or reads outside, peer bytes; does I/O; or knows what a message
//! means (the flows own MTIs and response codes).

use std::fmt;

use super::spec::{self, bit, first, FieldSpec, Len, FIELDS, SECONDARY, SUPPORTED};

/// How bitmaps are written, per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BitmapEncoding {
    /// 8 bytes per bitmap, most significant bit first (the default).
    #[default]
    Binary,
    /// 16 hexadecimal ASCII characters per bitmap (jPOS ISO87APackager): either case is
    /// accepted on decode, upper case is written.
    HexAscii,
}

/// A message: its MTI and the values of its fields, in ASCII as on the wire.
///
/// Values are kept in one owned buffer (see the module header). `Debug` never shows
/// the PAN (2) or track 2 (35).
#[derive(Clone)]
pub struct Message {
    mti: [u8; 4],
    /// The bitmap of fields present. Bit 1 is never set here: `encode` derives it.
    present: u128,
    /// Where the value of `FIELDS[i]` lies in `data`, when its bit is in `present`.
    spans: [Span; FIELDS.len()],
    data: Vec<u8>,
}

/// Card numbers and track data (DE2, DE35) live in `data`: wiped when the message is
/// dropped (and the buffer a compaction replaces, below).
impl Drop for Message {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data);
    }
}

/// The longest value `Message::set` takes: more than any frame can carry, so a longer
/// one is a caller bug. Values within it but over their field's maximum are refused by
/// `encode`.
pub const MAX_SET_LEN: usize = u16::MAX as usize;

impl Message {
    /// A message with no fields.
    pub fn new(mti: [u8; 4]) -> Message {
        Message::with_capacity(mti, 0)
    }

    /// The message type indicator, four ASCII digits when decoded.
    pub fn mti(&self) -> [u8; 4] {
        self.mti
    }

    /// Replaces the MTI (`encode` checks it).
    pub fn set_mti(&mut self, mti: [u8; 4]) {
        self.mti = mti;
    }

    /// The raw ASCII value of `field`, if present. `None` for numbers outside the profile.
    pub fn get(&self, field: u8) -> Option<&[u8]> {
        let i = spec::index(field)?;
        (self.present & bit(field) != 0).then(|| self.value(i))
    }

    /// The value of `field` as text, if present and UTF-8 (a decoded value always is).
    pub fn get_str(&self, field: u8) -> Option<&str> {
        std::str::from_utf8(self.get(field)?).ok()
    }

    /// Sets `field` to `value`, replacing any previous value. The value is checked
    /// against the profile by `encode`, not here.
    ///
    /// Panics if `field` is not in the profile or `value` is longer than `MAX_SET_LEN`:
    /// field numbers are constants in the caller, so either is a caller bug.
    pub fn set(&mut self, field: u8, value: &[u8]) {
        let Some(i) = spec::index(field) else {
            panic!("ISO 8583 field {field} is not in the corepay profile");
        };
        assert!(
            value.len() <= MAX_SET_LEN,
            "ISO 8583 field {field}: a value of {} bytes",
            value.len()
        );
        if self.present & bit(field) != 0 && value.len() <= self.spans[i].len as usize {
            let span = &mut self.spans[i];
            let start = span.start as usize;
            self.data[start..start + value.len()].copy_from_slice(value);
            span.len = value.len() as u32;
            return;
        }
        self.present &= !bit(field);
        // Replaced values leave garbage behind; keep it under the live bytes.
        if self.data.len() + value.len() > 2 * self.live_len() + COMPACT_SLACK {
            self.compact();
        }
        self.push(i, field, value);
    }

    /// Removes `field` if present. Numbers outside the profile are never present.
    pub fn remove(&mut self, field: u8) {
        if spec::index(field).is_some() {
            self.present &= !bit(field);
        }
    }

    /// The fields present, in field order, with their raw ASCII values.
    pub fn fields(&self) -> impl Iterator<Item = (u8, &[u8])> + '_ {
        self.entries().map(|(field, value)| (field.number, value))
    }

    /// The fields present, in field order, with their specs.
    fn entries(&self) -> impl Iterator<Item = (&'static FieldSpec, &[u8])> + '_ {
        Bits(self.present).map(|n| {
            let i = spec::index(n).expect("a Message holds only profile fields");
            (&FIELDS[i], self.value(i))
        })
    }

    fn with_capacity(mti: [u8; 4], capacity: usize) -> Message {
        Message {
            mti,
            present: 0,
            spans: [Span::default(); FIELDS.len()],
            data: Vec::with_capacity(capacity),
        }
    }

    #[inline]
    fn value(&self, i: usize) -> &[u8] {
        let span = self.spans[i];
        &self.data[span.start as usize..][..span.len as usize]
    }

    fn push(&mut self, i: usize, field: u8, value: &[u8]) {
        debug_assert_eq!(spec::index(field), Some(i));
        debug_assert_eq!(self.present & bit(field), 0);
        let start = self.data.len();
        self.data.extend_from_slice(value);
        // `compact` and `MAX_SET_LEN` keep `data` far below 4 GiB.
        assert!(self.data.len() <= u32::MAX as usize);
        self.spans[i] = Span {
            start: start as u32,
            len: value.len() as u32,
        };
        self.present |= bit(field);
    }

    fn live_len(&self) -> usize {
        self.fields().map(|(_, value)| value.len()).sum()
    }

    fn compact(&mut self) {
        let live = Vec::with_capacity(self.live_len());
        let mut old = std::mem::replace(&mut self.data, live);
        for n in Bits(self.present) {
            let i = spec::index(n).expect("present fields are in the profile");
            let span = self.spans[i];
            let start = self.data.len();
            self.data
                .extend_from_slice(&old[span.start as usize..][..span.len as usize]);
            self.spans[i].start = start as u32;
        }
        zeroize::Zeroize::zeroize(&mut old);
        debug_assert_eq!(self.data.len(), self.live_len());
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Message) -> bool {
        self.mti == other.mti && self.present == other.present && self.fields().eq(other.fields())
    }
}

impl Eq for Message {}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Fields<'a>(&'a Message);
        struct Value<'a>(u8, &'a [u8]);
        impl fmt::Debug for Fields<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.fields().map(|(n, v)| (n, Value(n, v))))
                    .finish()
            }
        }
        impl fmt::Debug for Value<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    Value(2 | 35, v) => write!(f, "<{} bytes redacted>", v.len()),
                    Value(_, v) => write!(f, "\"{}\"", v.escape_ascii()),
                }
            }
        }
        f.debug_struct("Message")
            .field("mti", &format_args!("{}", self.mti.escape_ascii()))
            .field("fields", &Fields(self))
            .finish()
    }
}

/// Why a frame's body is not a message of the profile, sorted by whose fault it is.
/// All three are the peer's; the flow layer answers each with response code 30 where
/// `decode_partial` finds the MTI and STAN. `what` is for logs only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not a message: it ends early (in the MTI, a bitmap, a length prefix
    /// or a field), the MTI or a length prefix is not decimal, a hex bitmap is not hex,
    /// or bytes follow the last field. `at` is the offset in the body of the element
    /// that could not be read.
    Malformed {
        /// Offset in the frame body.
        at: usize,
        /// What could not be read.
        what: &'static str,
    },
    /// A field was read but breaks its rule: a character outside its class, or a
    /// variable length over its maximum.
    Violation {
        /// The field number.
        field: u8,
        /// Which rule.
        what: &'static str,
    },
    /// The bitmap names a field the profile does not have (the lowest such `field`), or
    /// `field` is 0, the MTI (jPOS numbering), whose version digit is not `0` (1987).
    Unsupported {
        /// The field number, 0 for the MTI's version.
        field: u8,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::Malformed { at, what } => {
                write!(f, "malformed ISO 8583 message at byte {at}: {what}")
            }
            DecodeError::Violation { field, what } => {
                write!(f, "ISO 8583 {}: {what}", Field(field))
            }
            DecodeError::Unsupported { field: 0 } => {
                write!(f, "ISO 8583 version other than 1987 (MTI not 0xxx)")
            }
            DecodeError::Unsupported { field } => {
                write!(f, "ISO 8583 field {field} is not in the corepay profile")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a `Message` cannot be encoded: a caller bug or unchecked input. The output is
/// left as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The MTI is not four decimal digits beginning with the 1987 version digit `0`.
    Mti([u8; 4]),
    /// A field's value breaks its rule: wrong fixed length, over its maximum, or a
    /// character outside its class.
    Violation {
        /// The field number.
        field: u8,
        /// Which rule.
        what: &'static str,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::Mti(mti) => {
                write!(f, "ISO 8583 MTI \"{}\" is not 0xxx", mti.escape_ascii())
            }
            EncodeError::Violation { field, what } => {
                write!(f, "ISO 8583 {}: {what}", Field(field))
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// What could be read of a message that failed to decode, for answering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Partial {
    /// The MTI, if the body begins with four decimal digits.
    pub mti: Option<[u8; 4]>,
    /// DE11, if the version is 1987, the bitmap names it, the fields before it could be
    /// stepped over, and it is six digits.
    pub stan: Option<[u8; 6]>,
}

/// Decodes one frame body. Accepts any 4-digit MTI of version `0` (the flows answer
/// unknown ones), either bitmap encoding's hex case, and an empty secondary bitmap.
///
/// Checks, in order: MTI, bitmaps, unsupported bits (before any field is read), then
/// each field in order (its bytes, then its rule), then trailing bytes. A length prefix
/// over both the field's maximum and the frame is `Malformed` (the bytes are not there).
pub fn decode(frame: &[u8], bitmap: BitmapEncoding) -> Result<Message, DecodeError> {
    let mut r = Reader::new(frame);
    let mti = read_mti(&mut r)?;
    if mti[0] != VERSION_1987 {
        return Err(DecodeError::Unsupported { field: 0 });
    }
    let bits = read_bitmaps(&mut r, bitmap)?;
    let unsupported = bits & !SUPPORTED;
    if unsupported != 0 {
        return Err(DecodeError::Unsupported {
            field: first(unsupported),
        });
    }
    let mut msg = Message::with_capacity(mti, r.remaining());
    for n in Bits(bits & !bit(1)) {
        let Some(i) = spec::index(n) else {
            return Err(DecodeError::Unsupported { field: n });
        };
        let field = &FIELDS[i];
        let value = take_field(&mut r, field)?;
        check(field, value).map_err(|what| DecodeError::Violation { field: n, what })?;
        msg.push(i, n, value);
    }
    if r.remaining() != 0 {
        return Err(DecodeError::Malformed {
            at: r.position(),
            what: TRAILING,
        });
    }
    debug_assert!(msg.data.len() <= frame.len());
    Ok(msg)
}

/// Reads what it can of a body `decode` refused: the MTI, and DE11 when every field
/// before it can be stepped over (their rules are not checked, only their lengths).
/// Never fails and never panics; the flow layer answers with MTI + 10 and code 30.
pub fn decode_partial(frame: &[u8], bitmap: BitmapEncoding) -> Partial {
    let mut partial = Partial::default();
    let mut r = Reader::new(frame);
    let Ok(mti) = read_mti(&mut r) else {
        return partial;
    };
    partial.mti = Some(mti);
    if mti[0] != VERSION_1987 {
        return partial; // Another version's fields are laid out differently.
    }
    let Ok(bits) = read_bitmaps(&mut r, bitmap) else {
        return partial;
    };
    if bits & bit(STAN) == 0 {
        return partial;
    }
    for n in Bits(bits & !bit(1)) {
        // An unknown field before DE11 has no known length: it cannot be stepped over.
        let Some(field) = spec::spec(n) else {
            return partial;
        };
        let Ok(value) = take_field(&mut r, field) else {
            return partial;
        };
        if n == STAN {
            if check(field, value).is_ok() {
                partial.stan = value.try_into().ok();
            }
            return partial;
        }
    }
    partial
}

/// Appends the encoding of `msg` to `out`: MTI, bitmap(s), then each field with its
/// length prefix. The secondary bitmap is written only when a field above 64 is present.
/// Every field is checked against the profile first; on error `out` is unchanged.
pub fn encode(msg: &Message, bitmap: BitmapEncoding, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if !msg.mti.iter().all(u8::is_ascii_digit) || msg.mti[0] != VERSION_1987 {
        return Err(EncodeError::Mti(msg.mti));
    }
    let mut len = 4;
    for (field, value) in msg.entries() {
        check(field, value).map_err(|what| EncodeError::Violation {
            field: field.number,
            what,
        })?;
        len += field.len.prefix_len() + value.len();
    }
    let mut bits = msg.present;
    debug_assert_eq!(bits & bit(1), 0);
    if bits & SECONDARY != 0 {
        bits |= bit(1);
    }
    let bitmap_bytes = if bits & bit(1) != 0 { 16 } else { 8 };
    let bitmap_bytes = &bits.to_be_bytes()[..bitmap_bytes];
    out.reserve(len + 2 * bitmap_bytes.len());

    let start = out.len();
    out.extend_from_slice(&msg.mti);
    match bitmap {
        BitmapEncoding::Binary => out.extend_from_slice(bitmap_bytes),
        BitmapEncoding::HexAscii => {
            for &b in bitmap_bytes {
                out.extend_from_slice(&[
                    HEX_UPPER[usize::from(b >> 4)],
                    HEX_UPPER[usize::from(b & 0xF)],
                ]);
            }
        }
    }
    for (field, value) in msg.entries() {
        match field.len {
            Len::Fixed(_) => {}
            Len::LLVar(_) => push_decimal(out, value.len(), 2),
            Len::LLLVar(_) => push_decimal(out, value.len(), 3),
        }
        out.extend_from_slice(value);
    }
    debug_assert!(out.len() - start <= spec::MAX_MESSAGE_LEN);
    Ok(())
}

const VERSION_1987: u8 = b'0';
const STAN: u8 = 11;
const COMPACT_SLACK: usize = 256;
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

// `what` texts, for logs.
const MTI_TRUNCATED: &str = "message ends inside the MTI";
const MTI_NOT_DIGITS: &str = "MTI is not four decimal digits";
const PRIMARY_TRUNCATED: &str = "message ends inside the primary bitmap";
const SECONDARY_TRUNCATED: &str = "message ends inside the secondary bitmap";
const BITMAP_NOT_HEX: &str = "bitmap is not hexadecimal";
const PREFIX_TRUNCATED: &str = "message ends inside a length prefix";
const PREFIX_NOT_DIGITS: &str = "length prefix is not decimal";
const FIELD_TRUNCATED: &str = "message ends inside a field";
const TRAILING: &str = "bytes after the last field";
const WRONG_LENGTH: &str = "not its fixed length";
const TOO_LONG: &str = "longer than its maximum";
const BAD_CHARACTER: &str = "a character outside its class";

#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
}

/// The field numbers whose bits are set, ascending.
struct Bits(u128);

impl Iterator for Bits {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        if self.0 == 0 {
            return None;
        }
        let n = first(self.0);
        self.0 &= !bit(n);
        Some(n)
    }
}

/// A field number with its name, for messages.
struct Field(u8);

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match spec::spec(self.0) {
            Some(s) => write!(f, "field {} ({})", self.0, s.name),
            None => write!(f, "field {}", self.0),
        }
    }
}

/// A cursor over a borrowed frame. Every read is bounds-checked and returns `None`
/// instead of going past the end, so no input can make decoding panic or over-read.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn position(&self) -> usize {
        self.pos
    }

    fn remaining(&self) -> usize {
        debug_assert!(self.pos <= self.buf.len());
        self.buf.len() - self.pos
    }

    /// The next `n` bytes, or `None` (and nothing consumed) if fewer remain.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(bytes)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

fn read_mti(r: &mut Reader<'_>) -> Result<[u8; 4], DecodeError> {
    let at = r.position();
    let mti = r.array::<4>().ok_or(DecodeError::Malformed {
        at,
        what: MTI_TRUNCATED,
    })?;
    if !mti.iter().all(u8::is_ascii_digit) {
        return Err(DecodeError::Malformed {
            at,
            what: MTI_NOT_DIGITS,
        });
    }
    Ok(mti)
}

/// Both bitmaps as one `u128`, field 1 the most significant bit; the secondary half is
/// zero when bit 1 is clear.
fn read_bitmaps(r: &mut Reader<'_>, encoding: BitmapEncoding) -> Result<u128, DecodeError> {
    let primary = read_bitmap(r, encoding, PRIMARY_TRUNCATED)?;
    let mut bits = u128::from(primary) << 64;
    if bits & bit(1) != 0 {
        bits |= u128::from(read_bitmap(r, encoding, SECONDARY_TRUNCATED)?);
    }
    Ok(bits)
}

fn read_bitmap(
    r: &mut Reader<'_>,
    encoding: BitmapEncoding,
    truncated: &'static str,
) -> Result<u64, DecodeError> {
    let at = r.position();
    let truncated = DecodeError::Malformed {
        at,
        what: truncated,
    };
    match encoding {
        BitmapEncoding::Binary => Ok(u64::from_be_bytes(r.array::<8>().ok_or(truncated)?)),
        BitmapEncoding::HexAscii => {
            let hex = r.array::<16>().ok_or(truncated)?;
            let mut bits = 0u64;
            for (k, &c) in hex.iter().enumerate() {
                let nibble = (c as char).to_digit(16).ok_or(DecodeError::Malformed {
                    at: at + k,
                    what: BITMAP_NOT_HEX,
                })?;
                bits = bits << 4 | u64::from(nibble);
            }
            Ok(bits)
        }
    }
}

/// The bytes of one field's value: its length prefix read, its bytes taken. Rules are
/// not checked here (`check`), so `decode_partial` can step over a bad field.
fn take_field<'a>(r: &mut Reader<'a>, field: &FieldSpec) -> Result<&'a [u8], DecodeError> {
    let len = match field.len {
        Len::Fixed(n) => usize::from(n),
        Len::LLVar(_) | Len::LLLVar(_) => {
            let at = r.position();
            let prefix = r
                .take(field.len.prefix_len())
                .ok_or(DecodeError::Malformed {
                    at,
                    what: PREFIX_TRUNCATED,
                })?;
            decimal(prefix).ok_or(DecodeError::Malformed {
                at,
                what: PREFIX_NOT_DIGITS,
            })?
        }
    };
    let at = r.position();
    r.take(len).ok_or(DecodeError::Malformed {
        at,
        what: FIELD_TRUNCATED,
    })
}

/// Whether `value` obeys `field`'s rule; the broken rule if not.
fn check(field: &FieldSpec, value: &[u8]) -> Result<(), &'static str> {
    match field.len {
        Len::Fixed(n) if value.len() != usize::from(n) => return Err(WRONG_LENGTH),
        _ if value.len() > field.len.max() => return Err(TOO_LONG),
        _ => {}
    }
    if !field.class.admits_all(value) {
        return Err(BAD_CHARACTER);
    }
    Ok(())
}

fn decimal(digits: &[u8]) -> Option<usize> {
    digits.iter().try_fold(0usize, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0'))
    })
}

fn push_decimal(out: &mut Vec<u8>, value: usize, digits: u32) {
    assert!(
        value < 10usize.pow(digits),
        "checked against the field maximum"
    );
    for place in (0..digits).rev() {
        out.push(b'0' + (value / 10usize.pow(place) % 10) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::spec::Class;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    const BOTH: [BitmapEncoding; 2] = [BitmapEncoding::Binary, BitmapEncoding::HexAscii];

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn encoded(msg: &Message, encoding: BitmapEncoding) -> Vec<u8> {
        let mut out = Vec::new();
        encode(msg, encoding, &mut out).expect("valid message");
        out
    }

    fn malformed(at: usize, what: &'static str) -> DecodeError {
        DecodeError::Malformed { at, what }
    }

    fn violation(field: u8, what: &'static str) -> DecodeError {
        DecodeError::Violation { field, what }
    }

    /// A valid value of `spec` for each field: the longest it may be.
    fn sample(field: &FieldSpec) -> Vec<u8> {
        let alphabet: &[u8] = match field.class {
            Class::N => b"0123456789",
            Class::An => b"AZaz09 ",
            Class::Ans => b" ~!Az09/",
            Class::Z => b"4111=D",
        };
        alphabet
            .iter()
            .copied()
            .cycle()
            .take(field.len.max())
            .collect()
    }

    fn sign_on() -> Message {
        let mut msg = Message::new(*b"0800");
        msg.set(7, b"0615120000");
        msg.set(11, b"000001");
        msg.set(70, b"001");
        msg
    }

    // Written by hand from the profile: bits 1, 7, 11 → 82 20 00.., bit 70 → 04 00 ...
    const SIGN_ON_HEX: &[u8] = concat!(
        "0800",             // MTI
        "8220000000000000", // primary bitmap: 1, 7, 11
        "0400000000000000", // secondary bitmap: 70
        "0615120000",       // DE7
        "000001",           // DE11
        "001",              // DE70
    )
    .as_bytes();

    fn sign_on_binary() -> Vec<u8> {
        cat(&[
            b"0800",
            &[0x82, 0x20, 0, 0, 0, 0, 0, 0],
            &[0x04, 0, 0, 0, 0, 0, 0, 0],
            b"0615120000",
            b"000001",
            b"001",
        ])
    }

    #[test]
    fn iso8583_known_vector_sign_on_hex_bitmap() {
        assert_eq!(encoded(&sign_on(), BitmapEncoding::HexAscii), SIGN_ON_HEX);
        let msg = decode(SIGN_ON_HEX, BitmapEncoding::HexAscii).unwrap();
        assert_eq!(msg, sign_on());
        assert_eq!(msg.mti(), *b"0800");
        assert_eq!(msg.get_str(7), Some("0615120000"));
        assert_eq!(msg.get_str(11), Some("000001"));
        assert_eq!(msg.get_str(70), Some("001"));
        assert_eq!(
            msg.fields().map(|(n, _)| n).collect::<Vec<_>>(),
            [7, 11, 70]
        );
        let lower = SIGN_ON_HEX.to_ascii_lowercase();
        assert_eq!(decode(&lower, BitmapEncoding::HexAscii), Ok(sign_on()));
    }

    #[test]
    fn iso8583_known_vector_sign_on_binary_bitmap() {
        let bytes = sign_on_binary();
        assert_eq!(encoded(&sign_on(), BitmapEncoding::Binary), bytes);
        assert_eq!(decode(&bytes, BitmapEncoding::Binary), Ok(sign_on()));
    }

    #[test]
    fn iso8583_known_vector_llvar_primary_bitmap_only() {
        let mut msg = Message::new(*b"0100");
        msg.set(2, b"4111111111111111");
        msg.set(3, b"000000");
        msg.set(4, b"000000001000");
        msg.set(11, b"000123");
        // Bits 2, 3, 4 → 0x70; bit 11 → 0x20 in the second byte.
        let body: &[u8] = b"164111111111111111000000000000001000000123";
        let hex = cat(&[b"0100", b"7020000000000000", body]);
        let binary = cat(&[b"0100", &[0x70, 0x20, 0, 0, 0, 0, 0, 0], body]);
        assert_eq!(encoded(&msg, BitmapEncoding::HexAscii), hex);
        assert_eq!(encoded(&msg, BitmapEncoding::Binary), binary);
        assert_eq!(decode(&hex, BitmapEncoding::HexAscii), Ok(msg.clone()));
        assert_eq!(decode(&binary, BitmapEncoding::Binary), Ok(msg));
    }

    #[test]
    fn iso8583_known_vector_lllvar() {
        let mut msg = Message::new(*b"0110");
        msg.set(54, b"1002840C000000001000");
        // Bit 54 → 0x04 in the seventh byte.
        let body = cat(&[
            b"0110",
            b"0000000000000400",
            b"020",
            b"1002840C000000001000",
        ]);
        assert_eq!(encoded(&msg, BitmapEncoding::HexAscii), body);
        assert_eq!(decode(&body, BitmapEncoding::HexAscii), Ok(msg));
    }

    #[test]
    fn iso8583_round_trip_every_field_both_bitmaps() {
        for encoding in BOTH {
            let mut all = Message::new(*b"0200");
            for field in FIELDS {
                for value in [sample(field), sample(field)[..field.len.max() / 2].to_vec()] {
                    if matches!(field.len, Len::Fixed(_)) && value.len() != field.len.max() {
                        continue;
                    }
                    let mut one = Message::new(*b"0100");
                    one.set(field.number, &value);
                    let bytes = encoded(&one, encoding);
                    let back = decode(&bytes, encoding).unwrap();
                    assert_eq!(back, one, "field {}", field.number);
                    assert_eq!(back.get(field.number), Some(&value[..]));
                    assert_eq!(encoded(&back, encoding), bytes);
                }
                all.set(field.number, &sample(field));
            }
            let bytes = encoded(&all, encoding);
            let bitmaps = if encoding == BitmapEncoding::Binary {
                16
            } else {
                32
            };
            assert_eq!(bytes.len(), spec::MAX_MESSAGE_LEN - 32 + bitmaps);
            assert_eq!(decode(&bytes, encoding), Ok(all.clone()));
            assert_eq!(all.fields().count(), FIELDS.len());
        }
    }

    #[test]
    fn iso8583_secondary_bitmap_only_when_needed() {
        let mut msg = Message::new(*b"0800");
        msg.set(7, b"0615120000");
        msg.set(11, b"000001");
        let binary = encoded(&msg, BitmapEncoding::Binary);
        assert_eq!(binary.len(), 4 + 8 + 10 + 6);
        assert_eq!(binary[4] & 0x80, 0);
        let hex = encoded(&msg, BitmapEncoding::HexAscii);
        assert_eq!(&hex[4..20], b"0220000000000000");
        assert_eq!(hex.len(), 4 + 16 + 10 + 6);

        msg.set(70, b"301");
        let binary = encoded(&msg, BitmapEncoding::Binary);
        assert_eq!(binary.len(), 4 + 16 + 10 + 6 + 3);
        assert_eq!(binary[4] & 0x80, 0x80);
        msg.remove(70);
        assert_eq!(encoded(&msg, BitmapEncoding::Binary).len(), 4 + 8 + 10 + 6);

        // Decoding accepts a secondary bitmap that names nothing.
        let empty_secondary = cat(&[b"0800", &[0x80, 0, 0, 0, 0, 0, 0, 0], &[0; 8]]);
        assert_eq!(
            decode(&empty_secondary, BitmapEncoding::Binary),
            Ok(Message::new(*b"0800"))
        );
        let no_fields = cat(&[b"0800", b"0000000000000000"]);
        assert_eq!(
            decode(&no_fields, BitmapEncoding::HexAscii),
            Ok(Message::new(*b"0800"))
        );
    }

    #[test]
    fn iso8583_decode_errors_with_concrete_bytes() {
        use BitmapEncoding::{Binary, HexAscii};
        let valid_sign_on = sign_on_binary();
        let cases: Vec<(&str, BitmapEncoding, Vec<u8>, DecodeError)> = vec![
            ("empty frame", Binary, vec![], malformed(0, MTI_TRUNCATED)),
            (
                "truncated in MTI",
                Binary,
                b"08".to_vec(),
                malformed(0, MTI_TRUNCATED),
            ),
            (
                "non-digit MTI",
                Binary,
                cat(&[b"08A0", &[0; 8]]),
                malformed(0, MTI_NOT_DIGITS),
            ),
            (
                "space in MTI",
                HexAscii,
                cat(&[b" 800", &[b'0'; 16]]),
                malformed(0, MTI_NOT_DIGITS),
            ),
            (
                "MTI version 1993",
                Binary,
                cat(&[b"1100", &[0; 8]]),
                DecodeError::Unsupported { field: 0 },
            ),
            (
                "no bitmap",
                Binary,
                b"0800".to_vec(),
                malformed(4, PRIMARY_TRUNCATED),
            ),
            (
                "truncated in bitmap",
                Binary,
                cat(&[b"0800", &[0x82, 0x20]]),
                malformed(4, PRIMARY_TRUNCATED),
            ),
            (
                "truncated in hex bitmap",
                HexAscii,
                b"0800822000".to_vec(),
                malformed(4, PRIMARY_TRUNCATED),
            ),
            (
                "truncated in secondary bitmap",
                Binary,
                cat(&[b"0800", &[0x82, 0x20, 0, 0, 0, 0, 0, 0], &[0x04, 0]]),
                malformed(12, SECONDARY_TRUNCATED),
            ),
            (
                "non-hex in hex bitmap",
                HexAscii,
                cat(&[b"0800", b"822000G000000000"]),
                malformed(10, BITMAP_NOT_HEX),
            ),
            (
                "non-hex in secondary hex bitmap",
                HexAscii,
                cat(&[
                    b"0800",
                    b"8220000000000000",
                    b"04000000000000X0",
                    b"0615120000000001001",
                ]),
                malformed(34, BITMAP_NOT_HEX),
            ),
            (
                "0x prefix in hex bitmap",
                HexAscii,
                cat(&[b"0800", b"0x20000000000000"]),
                malformed(5, BITMAP_NOT_HEX),
            ),
            (
                "truncated in a fixed field",
                Binary,
                cat(&[
                    b"0800",
                    &[0x02, 0x20, 0, 0, 0, 0, 0, 0],
                    b"0615120000",
                    b"0000",
                ]),
                malformed(22, FIELD_TRUNCATED),
            ),
            (
                "bitmap names an absent field",
                Binary,
                cat(&[b"0800", &[0x02, 0x20, 0, 0, 0, 0, 0, 0], b"0615120000"]),
                malformed(22, FIELD_TRUNCATED),
            ),
            (
                "truncated in an LL prefix",
                Binary,
                cat(&[b"0100", &[0x40, 0, 0, 0, 0, 0, 0, 0], b"1"]),
                malformed(12, PREFIX_TRUNCATED),
            ),
            (
                "non-digit LL prefix",
                Binary,
                cat(&[b"0100", &[0x40, 0, 0, 0, 0, 0, 0, 0], b"1A4111"]),
                malformed(12, PREFIX_NOT_DIGITS),
            ),
            (
                "non-digit LLL prefix",
                Binary,
                cat(&[b"0100", &[0, 0, 0, 0, 0, 0, 0x04, 0], b"0X5abcde"]),
                malformed(12, PREFIX_NOT_DIGITS),
            ),
            (
                "LLVAR longer than its maximum",
                Binary,
                cat(&[
                    b"0100",
                    &[0x40, 0, 0, 0, 0, 0, 0, 0],
                    b"20",
                    b"41111111111111111111",
                ]),
                violation(2, TOO_LONG),
            ),
            (
                "LLLVAR longer than its maximum",
                Binary,
                cat(&[b"0100", &[0, 0, 0, 0, 0, 0, 0x04, 0], b"121", &[b'0'; 121]]),
                violation(54, TOO_LONG),
            ),
            (
                "LLVAR longer than the frame",
                Binary,
                cat(&[b"0100", &[0x40, 0, 0, 0, 0, 0, 0, 0], b"16", b"411111"]),
                malformed(14, FIELD_TRUNCATED),
            ),
            (
                "LLVAR over its maximum and the frame",
                Binary,
                cat(&[b"0100", &[0x40, 0, 0, 0, 0, 0, 0, 0], b"99", b"411111"]),
                malformed(14, FIELD_TRUNCATED),
            ),
            (
                "non-digit in an n field",
                Binary,
                cat(&[b"0100", &[0x20, 0, 0, 0, 0, 0, 0, 0], b"00A000"]),
                violation(3, BAD_CHARACTER),
            ),
            (
                "space in an n field",
                Binary,
                cat(&[b"0100", &[0x10, 0, 0, 0, 0, 0, 0, 0], b"00000000100 "]),
                violation(4, BAD_CHARACTER),
            ),
            (
                "punctuation in an an field",
                Binary,
                cat(&[b"0110", &[0, 0, 0, 0, 0x02, 0, 0, 0], b"0-"]),
                violation(39, BAD_CHARACTER),
            ),
            (
                "control byte in an ans field",
                Binary,
                cat(&[b"0100", &[0, 0, 0, 0, 0, 0x80, 0, 0], b"TERM\x00001"]),
                violation(41, BAD_CHARACTER),
            ),
            (
                "high byte in an ans field",
                Binary,
                cat(&[b"0100", &[0, 0, 0, 0, 0, 0x80, 0, 0], b"TERM\xC3\xA901"]),
                violation(41, BAD_CHARACTER),
            ),
            (
                "caret in a z field",
                Binary,
                cat(&[b"0100", &[0, 0, 0, 0, 0x20, 0, 0, 0], b"06", b"4111^1"]),
                violation(35, BAD_CHARACTER),
            ),
            (
                "bit for an unknown field",
                Binary,
                cat(&[b"0100", &[0x08, 0, 0, 0, 0, 0, 0, 0], b"x"]),
                DecodeError::Unsupported { field: 5 },
            ),
            (
                "bit for an unknown secondary field",
                Binary,
                cat(&[
                    b"0100",
                    &[0x80, 0x20, 0, 0, 0, 0, 0, 0],
                    &[0, 0, 0, 0, 0x10, 0, 0, 0],
                    b"000001",
                ]),
                DecodeError::Unsupported { field: 100 },
            ),
            (
                "bit 65 (a tertiary bitmap)",
                Binary,
                cat(&[
                    b"0800",
                    &[0x80, 0, 0, 0, 0, 0, 0, 0],
                    &[0x80, 0, 0, 0, 0, 0, 0, 0],
                ]),
                DecodeError::Unsupported { field: 65 },
            ),
            (
                "all 128 bits set",
                Binary,
                cat(&[b"0100", &[0xFF; 16], &[b'1'; 64]]),
                DecodeError::Unsupported { field: 5 },
            ),
            (
                "all 128 bits set, hex",
                HexAscii,
                cat(&[b"0100", &[b'F'; 32]]),
                DecodeError::Unsupported { field: 5 },
            ),
            (
                "trailing garbage",
                Binary,
                cat(&[&valid_sign_on, b"X"]),
                malformed(valid_sign_on.len(), TRAILING),
            ),
            (
                "trailing garbage, hex",
                HexAscii,
                cat(&[SIGN_ON_HEX, b"\0\0"]),
                malformed(SIGN_ON_HEX.len(), TRAILING),
            ),
            (
                "binary frame decoded as hex",
                HexAscii,
                valid_sign_on.clone(),
                malformed(4, BITMAP_NOT_HEX),
            ),
        ];
        assert!(cases.len() >= 30);
        for (name, encoding, bytes, want) in cases {
            assert_eq!(decode(&bytes, encoding), Err(want), "{name}");
            // Whatever is wrong, reading what can be read never panics.
            let partial = decode_partial(&bytes, encoding);
            assert_eq!(
                partial.mti.is_some(),
                bytes.len() >= 4 && bytes[..4].iter().all(u8::is_ascii_digit),
                "{name}"
            );
            assert!(!format!("{want}").is_empty());
        }
    }

    #[test]
    fn iso8583_partial_mti_and_stan_when_a_later_field_is_bad() {
        for encoding in BOTH {
            let mut msg = Message::new(*b"0100");
            msg.set(2, b"4111111111111111");
            msg.set(3, b"000000");
            msg.set(7, b"0615120000");
            msg.set(11, b"424242");
            msg.set(41, b"TERM0001");
            let good = encoded(&msg, encoding);
            let want = Partial {
                mti: Some(*b"0100"),
                stan: Some(*b"424242"),
            };
            assert_eq!(decode_partial(&good, encoding), want);

            // A bad character in DE41, after DE11.
            let mut bad = good.clone();
            let at = bad.len() - 1;
            bad[at] = 0x07;
            assert_eq!(decode(&bad, encoding), Err(violation(41, BAD_CHARACTER)));
            assert_eq!(decode_partial(&bad, encoding), want);

            // Truncated in DE41, trailing bytes, or an unsupported field after DE11.
            let short = &good[..good.len() - 3];
            assert!(matches!(
                decode(short, encoding),
                Err(DecodeError::Malformed { .. })
            ));
            assert_eq!(decode_partial(short, encoding), want);
            let long = cat(&[&good, b"123"]);
            assert!(decode(&long, encoding).is_err());
            assert_eq!(decode_partial(&long, encoding), want);

            // A bad value before DE11 whose length is still readable is stepped over.
            let mut early = Message::new(*b"0200");
            early.set(2, b"4111111111111111111111111"); // 25 digits: over 19
            early.set(4, b"00000000100A");
            early.set(11, b"000777");
            early.set(39, b"!!");
            let mut out = Vec::new();
            assert_eq!(
                encode(&early, encoding, &mut out),
                Err(EncodeError::Violation {
                    field: 2,
                    what: TOO_LONG
                })
            );
            assert!(out.is_empty(), "out untouched on error");
            let bytes = raw_encode(&early, encoding);
            assert_eq!(decode(&bytes, encoding), Err(violation(2, TOO_LONG)));
            let partial = decode_partial(&bytes, encoding);
            assert_eq!(
                partial,
                Partial {
                    mti: Some(*b"0200"),
                    stan: Some(*b"000777")
                }
            );

            // A bad DE11 itself, or no DE11, gives the MTI only.
            let mut no_stan = msg.clone();
            no_stan.remove(11);
            let bytes = encoded(&no_stan, encoding);
            assert_eq!(
                decode_partial(&bytes, encoding),
                Partial {
                    mti: Some(*b"0100"),
                    stan: None
                }
            );
            let mut bad_stan = msg.clone();
            bad_stan.set(11, b"12345X");
            let bytes = raw_encode(&bad_stan, encoding);
            assert_eq!(decode(&bytes, encoding), Err(violation(11, BAD_CHARACTER)));
            assert_eq!(decode_partial(&bytes, encoding).stan, None);
        }

        // An unknown field before DE11 has no length to step over; after it, no matter.
        let before = cat(&[b"0100", &[0x08, 0x20, 0, 0, 0, 0, 0, 0], b"??", b"000001"]);
        assert_eq!(
            decode_partial(&before, BitmapEncoding::Binary),
            Partial {
                mti: Some(*b"0100"),
                stan: None
            }
        );
        let after = cat(&[
            b"0100",
            &[0x00, 0x20, 0, 0x40, 0, 0, 0, 0],
            b"000001",
            b"??",
        ]);
        assert_eq!(
            decode(&after, BitmapEncoding::Binary),
            Err(DecodeError::Unsupported { field: 26 })
        );
        assert_eq!(
            decode_partial(&after, BitmapEncoding::Binary),
            Partial {
                mti: Some(*b"0100"),
                stan: Some(*b"000001")
            }
        );

        // Another version's layout is not guessed at; garbage yields nothing.
        let v1993 = cat(&[b"1100", &[0x00, 0x20, 0, 0, 0, 0, 0, 0], b"000001"]);
        assert_eq!(
            decode_partial(&v1993, BitmapEncoding::Binary),
            Partial {
                mti: Some(*b"1100"),
                stan: None
            }
        );
        assert_eq!(
            decode_partial(b"\x00\x01garbage", BitmapEncoding::Binary),
            Partial::default()
        );
        assert_eq!(
            decode_partial(b"", BitmapEncoding::HexAscii),
            Partial::default()
        );
    }

    /// Encodes without checking any rule, to build frames a peer might send.
    fn raw_encode(msg: &Message, encoding: BitmapEncoding) -> Vec<u8> {
        let mut bits = msg.present;
        if bits & SECONDARY != 0 {
            bits |= bit(1);
        }
        let n = if bits & bit(1) != 0 { 16 } else { 8 };
        let mut out = msg.mti.to_vec();
        match encoding {
            BitmapEncoding::Binary => out.extend_from_slice(&bits.to_be_bytes()[..n]),
            BitmapEncoding::HexAscii => {
                let hex = format!("{bits:032X}");
                out.extend_from_slice(&hex.as_bytes()[..2 * n]);
            }
        }
        for (field, value) in msg.entries() {
            let prefix = field.len.prefix_len();
            if prefix > 0 {
                out.extend_from_slice(format!("{:0prefix$}", value.len()).as_bytes());
            }
            out.extend_from_slice(value);
        }
        out
    }

    #[test]
    fn iso8583_encode_errors() {
        let mut out = b"keep".to_vec();
        let mut msg = sign_on();
        for mti in [*b"080A", *b"1800", *b"2800", [0; 4]] {
            msg.set_mti(mti);
            assert_eq!(
                encode(&msg, BitmapEncoding::Binary, &mut out),
                Err(EncodeError::Mti(mti))
            );
        }
        msg.set_mti(*b"0800");
        let cases: [(u8, Vec<u8>, &str); 8] = [
            (11, b"00001".to_vec(), WRONG_LENGTH),
            (11, b"0000001".to_vec(), WRONG_LENGTH),
            (11, b"00000A".to_vec(), BAD_CHARACTER),
            (2, b"41111111111111111111".to_vec(), TOO_LONG),
            (54, vec![b'0'; 121], TOO_LONG),
            (35, b"4111^".to_vec(), BAD_CHARACTER),
            (43, cat(&[b"\x7f", &[b'x'; 39]]), BAD_CHARACTER),
            (37, vec![], WRONG_LENGTH),
        ];
        for (field, value, what) in cases {
            let mut bad = msg.clone();
            bad.set(field, &value);
            assert_eq!(
                encode(&bad, BitmapEncoding::HexAscii, &mut out),
                Err(EncodeError::Violation { field, what }),
                "{field} {value:?}"
            );
            assert!(!format!("{}", EncodeError::Violation { field, what }).is_empty());
        }
        assert_eq!(out, b"keep", "out untouched on error");
        encode(&msg, BitmapEncoding::Binary, &mut out).unwrap();
        assert_eq!(&out[..4], b"keep", "encode appends");
        assert_eq!(&out[4..], sign_on_binary());
    }

    #[test]
    fn iso8583_message_accessors() {
        let mut msg = Message::new(*b"0100");
        assert_eq!(msg.fields().count(), 0);
        assert_eq!(msg.get(2), None);
        assert_eq!(msg.get(0), None);
        assert_eq!(msg.get(1), None);
        assert_eq!(msg.get(200), None);
        msg.set(43, b"CORNER SHOP            LONDON         GB");
        msg.set(2, b"4111111111111111");
        msg.set(11, b"000001");
        assert_eq!(
            msg.fields().map(|(n, _)| n).collect::<Vec<_>>(),
            [2, 11, 43]
        );
        // Shorter in place, longer appended, both read back.
        msg.set(2, b"4000");
        assert_eq!(msg.get(2), Some(&b"4000"[..]));
        msg.set(2, b"5555555555554444");
        assert_eq!(msg.get_str(2), Some("5555555555554444"));
        msg.set(11, b"");
        assert_eq!(msg.get(11), Some(&b""[..]));
        msg.remove(11);
        msg.remove(11);
        msg.remove(99); // not in the profile: nothing to remove
        assert_eq!(msg.get(11), None);
        assert_eq!(msg.fields().map(|(n, _)| n).collect::<Vec<_>>(), [2, 43]);
        msg.set(39, &[0xFF, 0xFE]);
        assert_eq!(msg.get_str(39), None);
        assert_eq!(msg.get(39), Some(&[0xFF, 0xFE][..]));
        msg.set_mti(*b"0110");
        assert_eq!(msg.mti(), *b"0110");

        // Repeated growth does not grow the buffer without bound.
        for k in 0..10_000usize {
            msg.set(54, &vec![b'7'; k % 120]);
            msg.set(2, format!("{k:019}").as_bytes());
        }
        assert!(msg.data.len() <= 2 * msg.live_len() + COMPACT_SLACK + 120);
        assert_eq!(msg.get(2), Some(format!("{:019}", 9_999).as_bytes()));
        assert_eq!(
            msg.get(43),
            Some(&b"CORNER SHOP            LONDON         GB"[..])
        );
        assert_eq!(msg.get(54).map(<[u8]>::len), Some(9_999 % 120));
    }

    #[test]
    fn iso8583_debug_redacts_pan_and_track2() {
        let mut msg = Message::new(*b"0100");
        msg.set(2, b"4111111111111111");
        msg.set(35, b"4111111111111111=2512");
        msg.set(41, b"TERM0001");
        let shown = format!("{msg:?}");
        assert!(!shown.contains("411111"), "{shown}");
        assert!(shown.contains("TERM0001"), "{shown}");
        assert!(shown.contains("0100"), "{shown}");
    }

    #[test]
    #[should_panic(expected = "not in the corepay profile")]
    fn iso8583_set_unknown_field_panics() {
        Message::new(*b"0100").set(5, b"1");
    }

    #[test]
    #[should_panic(expected = "not in the corepay profile")]
    fn iso8583_set_bit_one_panics() {
        Message::new(*b"0100").set(1, b"1");
    }

    fn random_value(rng: &mut SmallRng, field: &FieldSpec) -> Vec<u8> {
        let len = match field.len {
            Len::Fixed(n) => usize::from(n),
            _ => rng.gen_range(0..=field.len.max()),
        };
        let alphabet: Vec<u8> = (0u8..=0x7F).filter(|&b| field.class.admits(b)).collect();
        (0..len)
            .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
            .collect()
    }

    fn random_message(rng: &mut SmallRng) -> Message {
        let mti = [
            b'0',
            rng.gen_range(b'0'..=b'9'),
            rng.gen_range(b'0'..=b'9'),
            rng.gen_range(b'0'..=b'9'),
        ];
        let mut msg = Message::new(mti);
        let density = rng.gen_range(0.0..1.0);
        for field in FIELDS {
            if rng.gen_bool(density) {
                msg.set(field.number, &random_value(rng, field));
            }
        }
        msg
    }

    #[test]
    fn iso8583_property_random_valid_messages_round_trip() {
        let mut rng = SmallRng::seed_from_u64(0x8583_0001);
        for _ in 0..3_000 {
            let msg = random_message(&mut rng);
            for encoding in BOTH {
                let bytes = encoded(&msg, encoding);
                assert!(bytes.len() <= spec::MAX_MESSAGE_LEN);
                let back = decode(&bytes, encoding).unwrap_or_else(|e| panic!("{e}: {msg:?}"));
                assert_eq!(back, msg);
                assert_eq!(encoded(&back, encoding), bytes);
                let partial = decode_partial(&bytes, encoding);
                assert_eq!(partial.mti, Some(msg.mti()));
                assert_eq!(partial.stan.as_ref().map(|s| &s[..]), msg.get(11));
                let secondary = match encoding {
                    BitmapEncoding::Binary => bytes[4] & 0x80 != 0,
                    BitmapEncoding::HexAscii => bytes[4] >= b'8',
                };
                assert_eq!(secondary, msg.fields().any(|(n, _)| n > 64));
            }
        }
    }

    /// Any input: no panic; if it decodes, it re-encodes to something that decodes to the
    /// same message, and `decode_partial` agrees with it.
    fn decode_is_total(bytes: &[u8]) {
        for encoding in BOTH {
            let partial = decode_partial(bytes, encoding);
            if let Ok(msg) = decode(bytes, encoding) {
                let again = encoded(&msg, encoding);
                assert_eq!(decode(&again, encoding).as_ref(), Ok(&msg));
                assert_eq!(partial.mti, Some(msg.mti()));
                assert_eq!(partial.stan.as_ref().map(|s| &s[..]), msg.get(11));
            }
        }
    }

    #[test]
    fn iso8583_property_random_bytes_never_panic() {
        let mut rng = SmallRng::seed_from_u64(0x8583_0002);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.5) && bytes.len() >= 4 {
                bytes[..4].copy_from_slice(b"0100"); // get past the MTI more often
            }
            decode_is_total(&bytes);
        }
        // Mutations of valid messages reach deep into the field loop.
        for _ in 0..20_000 {
            let msg = random_message(&mut rng);
            let encoding = BOTH[rng.gen_range(0..2)];
            let mut bytes = encoded(&msg, encoding);
            for _ in 0..rng.gen_range(1..4) {
                match rng.gen_range(0..4) {
                    0 if !bytes.is_empty() => {
                        let i = rng.gen_range(0..bytes.len());
                        bytes[i] = rng.gen();
                    }
                    1 if !bytes.is_empty() => {
                        let i = rng.gen_range(0..bytes.len());
                        bytes[i] ^= 1 << rng.gen_range(0..8);
                    }
                    2 => bytes.truncate(rng.gen_range(0..=bytes.len())),
                    _ => bytes.push(rng.gen()),
                }
            }
            decode_is_total(&bytes);
        }
    }
}
