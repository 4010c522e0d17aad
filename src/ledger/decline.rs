//! Decline reasons: business outcomes, not errors.
//!
//! One stable, numbered enum, ordered by the precedence in which the ledger checks them, with
//! exactly one mapping to ISO 8583 DE39 and one to the HTTP error object's codes.

use serde::{Deserialize, Serialize};

/// Why an operation was not approved. `00 approved` is the absence of a `Decline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decline {
    /// 05: the issuer will not say why (closed account).
    DoNotHonour,
    /// 12: the operation does not fit the payment's state or the account's currency.
    InvalidTransaction,
    /// 13: the amount is larger than what remains to capture or refund.
    InvalidAmount,
    /// 14: unknown card or failed Luhn check.
    InvalidCard,
    /// 25: the original transaction is not known.
    OriginalNotFound,
    /// 30: the request could not be understood.
    FormatError,
    /// 51: available balance would go below the account's floor.
    InsufficientFunds,
    /// 54: the card is past its expiry, or the expiry given does not match.
    ExpiredCard,
    /// 57: the cardholder's account is blocked.
    NotPermittedCardholder,
    /// 58: the merchant is blocked.
    NotPermittedMerchant,
    /// 61: above the account's per-transaction amount limit.
    ExceedsAmountLimit,
    /// 62: the card is blocked.
    RestrictedCard,
    /// 65: above the account's daily authorization count.
    ExceedsFrequency,
    /// 91: overloaded or shutting down; try again.
    SystemUnavailable,
    /// 94: a duplicate transmission.
    Duplicate,
    /// 96: an internal failure.
    SystemMalfunction,
}

impl Decline {
    pub const ALL: [Decline; 16] = [
        Decline::DoNotHonour,
        Decline::InvalidTransaction,
        Decline::InvalidAmount,
        Decline::InvalidCard,
        Decline::OriginalNotFound,
        Decline::FormatError,
        Decline::InsufficientFunds,
        Decline::ExpiredCard,
        Decline::NotPermittedCardholder,
        Decline::NotPermittedMerchant,
        Decline::ExceedsAmountLimit,
        Decline::RestrictedCard,
        Decline::ExceedsFrequency,
        Decline::SystemUnavailable,
        Decline::Duplicate,
        Decline::SystemMalfunction,
    ];

    /// ISO 8583 DE39 response code.
    pub fn iso_code(self) -> &'static str {
        match self {
            Decline::DoNotHonour => "05",
            Decline::InvalidTransaction => "12",
            Decline::InvalidAmount => "13",
            Decline::InvalidCard => "14",
            Decline::OriginalNotFound => "25",
            Decline::FormatError => "30",
            Decline::InsufficientFunds => "51",
            Decline::ExpiredCard => "54",
            Decline::NotPermittedCardholder => "57",
            Decline::NotPermittedMerchant => "58",
            Decline::ExceedsAmountLimit => "61",
            Decline::RestrictedCard => "62",
            Decline::ExceedsFrequency => "65",
            Decline::SystemUnavailable => "91",
            Decline::Duplicate => "94",
            Decline::SystemMalfunction => "96",
        }
    }

    /// The `decline_code` of the HTTP error object.
    pub fn http_code(self) -> &'static str {
        match self {
            Decline::DoNotHonour => "do_not_honor",
            Decline::InvalidTransaction => "invalid_transaction",
            Decline::InvalidAmount => "invalid_amount",
            Decline::InvalidCard => "incorrect_number",
            Decline::OriginalNotFound => "original_not_found",
            Decline::FormatError => "format_error",
            Decline::InsufficientFunds => "insufficient_funds",
            Decline::ExpiredCard => "expired_card",
            Decline::NotPermittedCardholder => "account_blocked",
            Decline::NotPermittedMerchant => "merchant_blocked",
            Decline::ExceedsAmountLimit => "amount_limit_exceeded",
            Decline::RestrictedCard => "restricted_card",
            Decline::ExceedsFrequency => "frequency_limit_exceeded",
            Decline::SystemUnavailable => "system_unavailable",
            Decline::Duplicate => "duplicate_transaction",
            Decline::SystemMalfunction => "processing_error",
        }
    }

    /// A one-line human message.
    pub fn message(self) -> &'static str {
        match self {
            Decline::DoNotHonour => "The card was declined.",
            Decline::InvalidTransaction => {
                "The operation is not valid for this payment or account."
            }
            Decline::InvalidAmount => "The amount exceeds what remains on the payment.",
            Decline::InvalidCard => "The card number is not valid.",
            Decline::OriginalNotFound => "The original transaction was not found.",
            Decline::FormatError => "The request could not be understood.",
            Decline::InsufficientFunds => "The account has insufficient funds.",
            Decline::ExpiredCard => "The card has expired or the expiry does not match.",
            Decline::NotPermittedCardholder => "The account is blocked.",
            Decline::NotPermittedMerchant => "The merchant is not permitted to take this payment.",
            Decline::ExceedsAmountLimit => "The amount exceeds the account's limit.",
            Decline::RestrictedCard => "The card is restricted.",
            Decline::ExceedsFrequency => "The account's daily authorization limit is reached.",
            Decline::SystemUnavailable => "The system is unavailable; retry later.",
            Decline::Duplicate => "Duplicate transmission.",
            Decline::SystemMalfunction => "An internal error occurred.",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_decline_has_a_distinct_iso_and_http_code() {
        let iso: HashSet<_> = Decline::ALL.iter().map(|d| d.iso_code()).collect();
        let http: HashSet<_> = Decline::ALL.iter().map(|d| d.http_code()).collect();
        assert_eq!(iso.len(), Decline::ALL.len());
        assert_eq!(http.len(), Decline::ALL.len());
        assert!(!iso.contains("00"), "00 is approval, never a decline");
        for d in Decline::ALL {
            assert_eq!(d.iso_code().len(), 2);
            assert!(d.iso_code().bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
