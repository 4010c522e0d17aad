//! Domain newtypes that cross module boundaries: identifiers, currencies and money.
//!
//! Owns: the integer representation of money (`i64` minor units) and its conversion to and
//! from the decimal strings merchants send. Never: floats, I/O, clocks.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An account id as merchants and operators name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountId(pub u64);

/// Index of a shard, `0..shards`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(pub u16);

/// Log sequence number inside one shard's WAL; the first record is 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Lsn(pub u64);

/// Milliseconds since the Unix epoch. The state machine never reads a clock: time is an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Millis(pub u64);

/// Upper bound on shards; ids and routing tables are sized by it.
pub const SHARDS_MAX: usize = 256;

impl ShardId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An ISO 4217 currency known to corepay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Currency(u16);

/// (alpha code, numeric code, exponent). A short, explicit table: adding a currency is a
/// one-line change, and an unknown code is refused rather than guessed.
const CURRENCIES: &[(&str, u16, u8)] = &[
    ("EUR", 978, 2),
    ("USD", 840, 2),
    ("GBP", 826, 2),
    ("CHF", 756, 2),
    ("SEK", 752, 2),
    ("JPY", 392, 0),
    ("KRW", 410, 0),
    ("BHD", 48, 3),
    ("KWD", 414, 3),
    ("JOD", 400, 3),
];

impl Currency {
    pub fn from_alpha(code: &str) -> Option<Currency> {
        CURRENCIES
            .iter()
            .find(|(a, _, _)| a.eq_ignore_ascii_case(code))
            .map(|&(_, n, _)| Currency(n))
    }

    pub fn from_numeric(numeric: u16) -> Option<Currency> {
        CURRENCIES
            .iter()
            .find(|(_, n, _)| *n == numeric)
            .map(|&(_, n, _)| Currency(n))
    }

    pub fn numeric(self) -> u16 {
        self.0
    }

    fn entry(self) -> &'static (&'static str, u16, u8) {
        let entry = CURRENCIES.iter().find(|(_, n, _)| *n == self.0);
        entry.expect("Currency is only constructed from the table")
    }

    pub fn alpha(self) -> &'static str {
        self.entry().0
    }

    /// Digits after the decimal point (ISO 4217 minor unit).
    pub fn exponent(self) -> u32 {
        self.entry().2 as u32
    }
}

/// Why a decimal amount string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmountError {
    /// Not a plain decimal number ("abc", "1e5", "", " 1").
    Syntax,
    /// More fraction digits than the currency has.
    TooPrecise,
    /// Negative, or zero where zero is not allowed.
    NotPositive,
    /// Larger than `AMOUNT_MAX_MINOR`.
    TooLarge,
}

/// Largest amount accepted anywhere, in minor units: 12 digits, the width of ISO 8583 DE4.
pub const AMOUNT_MAX_MINOR: i64 = 999_999_999_999;

/// Characters in the longest amount string we parse; anything longer is a syntax error
/// before rust_decimal sees it.
const AMOUNT_TEXT_MAX: usize = 32;

/// Parses a merchant's decimal string ("12.34") into minor units of `currency`.
/// Accepts only `[0-9]+(\.[0-9]+)?`; no sign, exponent, spaces or separators.
pub fn parse_amount(text: &str, currency: Currency, allow_zero: bool) -> Result<i64, AmountError> {
    if text.is_empty() || text.len() > AMOUNT_TEXT_MAX {
        return Err(AmountError::Syntax);
    }
    if text.starts_with('-') {
        return Err(AmountError::NotPositive);
    }
    let mut parts = text.splitn(2, '.');
    let int_part = parts.next().unwrap_or("");
    let frac_part = parts.next();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int_part) || frac_part.is_some_and(|f| !digits(f)) {
        return Err(AmountError::Syntax);
    }
    let value = Decimal::from_str(text).map_err(|_| AmountError::TooLarge)?;
    let value = value.normalize();
    if value.scale() > currency.exponent() {
        return Err(AmountError::TooPrecise);
    }
    let minor = value
        .checked_mul(Decimal::from(10i64.pow(currency.exponent())))
        .ok_or(AmountError::TooLarge)?;
    let minor: i64 = minor.try_into().map_err(|_| AmountError::TooLarge)?;
    if minor > AMOUNT_MAX_MINOR {
        return Err(AmountError::TooLarge);
    }
    if minor < 0 || (minor == 0 && !allow_zero) {
        return Err(AmountError::NotPositive);
    }
    Ok(minor)
}

/// Parses a floor, which may be negative (a credit line): "-500.00".
pub fn parse_signed_amount(text: &str, currency: Currency) -> Result<i64, AmountError> {
    match text.strip_prefix('-') {
        Some(rest) => parse_amount(rest, currency, true).map(|v| -v),
        None => parse_amount(text, currency, true),
    }
}

/// Formats minor units as the currency's decimal string: 1234 EUR -> "12.34", -5 -> "-0.05".
pub fn format_amount(minor: i64, currency: Currency) -> String {
    let exp = currency.exponent();
    let mut d = Decimal::from(minor);
    d.set_scale(exp).expect("exponent is at most 3");
    d.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::from_alpha("EUR").unwrap()
    }

    #[test]
    fn amounts_parse_in_the_currency_exponent() {
        assert_eq!(parse_amount("12.34", eur(), false), Ok(1234));
        assert_eq!(parse_amount("12", eur(), false), Ok(1200));
        assert_eq!(parse_amount("12.5", eur(), false), Ok(1250));
        assert_eq!(
            parse_amount("1.005", eur(), false),
            Err(AmountError::TooPrecise)
        );
        assert_eq!(parse_amount("1.000", eur(), false), Ok(100));
        let jpy = Currency::from_alpha("JPY").unwrap();
        assert_eq!(parse_amount("500", jpy, false), Ok(500));
        assert_eq!(
            parse_amount("500.1", jpy, false),
            Err(AmountError::TooPrecise)
        );
        let bhd = Currency::from_alpha("BHD").unwrap();
        assert_eq!(parse_amount("1.005", bhd, false), Ok(1005));
    }

    #[test]
    fn bad_amounts_are_refused_with_a_reason() {
        for bad in [
            "", "abc", "1e400", "1e5", " 1", "1 ", "+1", "1.", ".5", "1,00", "0x10", "1.2.3",
        ] {
            assert_eq!(
                parse_amount(bad, eur(), false),
                Err(AmountError::Syntax),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_amount("-1", eur(), false),
            Err(AmountError::NotPositive)
        );
        assert_eq!(
            parse_amount("0", eur(), false),
            Err(AmountError::NotPositive)
        );
        assert_eq!(parse_amount("0.00", eur(), true), Ok(0));
        assert_eq!(
            parse_amount("10000000000.00", eur(), false),
            Err(AmountError::TooLarge)
        );
        assert_eq!(
            parse_amount("99999999999999999999999999999", eur(), false),
            Err(AmountError::TooLarge)
        );
        assert_eq!(
            parse_amount(&"9".repeat(40), eur(), false),
            Err(AmountError::Syntax)
        );
    }

    #[test]
    fn amounts_format_back_to_the_same_text() {
        assert_eq!(format_amount(1234, eur()), "12.34");
        assert_eq!(format_amount(5, eur()), "0.05");
        assert_eq!(format_amount(-5, eur()), "-0.05");
        assert_eq!(format_amount(0, eur()), "0.00");
        assert_eq!(format_amount(7, Currency::from_alpha("JPY").unwrap()), "7");
        assert_eq!(parse_signed_amount("-500.00", eur()), Ok(-50000));
    }

    #[test]
    fn currencies_round_trip_between_codes() {
        for &(alpha, numeric, _) in CURRENCIES {
            let c = Currency::from_alpha(alpha).unwrap();
            assert_eq!(c.numeric(), numeric);
            assert_eq!(Currency::from_numeric(numeric), Some(c));
            assert_eq!(c.alpha(), alpha);
        }
        assert_eq!(Currency::from_alpha("XXX"), None);
    }
}
