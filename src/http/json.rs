//! Request bodies (strict: unknown and duplicate fields are refused) and response objects.

use crate::domain::{format_amount, Currency};
use crate::ledger::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    pub id: u64,
    pub currency: String,
    #[serde(default)]
    pub initial_balance: Option<String>,
    #[serde(default)]
    pub floor: Option<String>,
    #[serde(default)]
    pub amount_limit: Option<String>,
    #[serde(default)]
    pub daily_count_limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStatus {
    pub status: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCard {
    pub number: crate::secrets::Pan,
    pub exp_month: u8,
    pub exp_year: u16,
    pub account_id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMerchant {
    pub id: String,
    pub settlement_account_id: u64,
    pub mcc: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTransfer {
    pub id: String,
    pub from: u64,
    pub to: u64,
    pub amount: String,
    pub currency: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardInput {
    pub number: crate::secrets::Pan,
    pub exp_month: u8,
    pub exp_year: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    // Inline strings: parsing a payment allocates nothing for them (`CompactString`).
    pub amount: CompactString,
    pub currency: CompactString,
    pub card: CardInput,
    #[serde(default)]
    pub capture: bool,
    #[serde(default)]
    pub reference: Option<CompactString>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OptionalAmount {
    #[serde(default)]
    pub amount: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provision {
    pub first_account_id: u64,
    pub count: u64,
    pub currency: String,
    pub balance: String,
    pub card_bin: String,
    pub exp_month: u8,
    pub exp_year: u16,
}

pub fn payment_id(id: PaymentRef) -> String {
    format!("pay_{}_{}", id.shard.0, id.seq)
}

/// Parses `pay_<shard>_<seq>` strictly (no signs, no leading zeros beyond "0").
pub fn parse_payment_id(text: &str) -> Option<PaymentRef> {
    let rest = text.strip_prefix("pay_")?;
    let (shard, seq) = rest.split_once('_')?;
    let number = |s: &str| -> Option<u64> {
        let ok = !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit());
        let ok = ok && (s == "0" || !s.starts_with('0'));
        ok.then(|| s.parse().ok()).flatten()
    };
    let shard = u16::try_from(number(shard)?).ok()?;
    Some(PaymentRef {
        shard: crate::domain::ShardId(shard),
        seq: number(seq)?,
    })
}

pub fn card_id(id: u64) -> String {
    format!("card_{id}")
}

pub fn parse_card_id(text: &str) -> Option<u64> {
    let digits = text.strip_prefix("card_")?;
    (digits.len() <= 19 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// A payment as the API shows it. Serialised straight from the view, not through a
/// `serde_json::Value` (a map of owned strings per answer): the fields are in alphabetical
/// order, as a `Value` writes them, so the bytes are the same (a test checks).
#[derive(Serialize)]
pub struct PaymentJson<'a> {
    amount: String,
    amount_captured: String,
    amount_refunded: String,
    approval_code: Option<&'a str>,
    card: CardJson<'a>,
    created_at: u64,
    currency: &'static str,
    decline_code: Option<&'static str>,
    id: String,
    merchant_id: &'a str,
    object: &'static str,
    reference: &'a str,
    response_code: &'static str,
    status: &'static str,
}

#[derive(Serialize)]
struct CardJson<'a> {
    bin: &'a str,
    last4: &'a str,
}

pub fn payment(view: &PaymentView) -> PaymentJson<'_> {
    let c = view.currency;
    PaymentJson {
        amount: format_amount(view.amount, c),
        amount_captured: format_amount(view.amount_captured, c),
        amount_refunded: format_amount(view.amount_refunded, c),
        approval_code: view.approval_code.as_deref(),
        card: CardJson {
            bin: &view.bin,
            last4: &view.last4,
        },
        created_at: view.created_at.0 / 1000,
        currency: c.alpha(),
        decline_code: view.decline.map(|d| d.http_code()),
        id: payment_id(view.id),
        merchant_id: &view.merchant.0,
        object: "payment",
        reference: &view.reference,
        response_code: view.decline.map(|d| d.iso_code()).unwrap_or("00"),
        status: view.status.as_str(),
    }
}

/// A declined payment's 402 body: the error object with the payment beside it (fields in
/// alphabetical order, as `payment`).
#[derive(Serialize)]
pub struct DeclinedJson<'a> {
    error: DeclineErrorJson,
    payment: PaymentJson<'a>,
}

#[derive(Serialize)]
struct DeclineErrorJson {
    code: &'static str,
    decline_code: &'static str,
    message: &'static str,
    param: Option<&'static str>,
    response_code: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
}

pub fn declined(view: &PaymentView, d: Decline) -> DeclinedJson<'_> {
    DeclinedJson {
        error: DeclineErrorJson {
            code: "card_declined",
            decline_code: d.http_code(),
            message: d.message(),
            param: None,
            response_code: d.iso_code(),
            kind: "card_error",
        },
        payment: payment(view),
    }
}

pub fn account(view: &AccountView) -> Value {
    let c = view.currency;
    json!({
        "id": view.id.0,
        "object": "account",
        "currency": c.alpha(),
        "balance": format_amount(view.balance, c),
        "held": format_amount(view.held, c),
        "available": format_amount(view.balance - view.held, c),
        "floor": format_amount(view.floor, c),
        "status": view.status.as_str(),
    })
}

pub fn transfer(view: &TransferView) -> Value {
    json!({
        "id": view.id,
        "object": "transfer",
        "from": view.from.0,
        "to": view.to.0,
        "amount": format_amount(view.amount, view.currency),
        "currency": view.currency.alpha(),
        "created_at": view.created_at.0 / 1000,
    })
}

pub fn card(id: u64, account: crate::domain::AccountId, bin: &str, last4: &str) -> Value {
    json!({ "id": card_id(id), "object": "card", "bin": bin, "last4": last4, "account_id": account.0 })
}

pub fn currency(text: &str) -> Option<Currency> {
    if text.len() != 3 {
        return None;
    }
    Currency::from_alpha(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Millis, ShardId};

    fn view(decline: Option<Decline>, approval: Option<&str>) -> PaymentView {
        PaymentView {
            id: PaymentRef {
                shard: ShardId(1),
                seq: 42,
            },
            merchant: MerchantId("SHOP\"1".into()),
            status: PaymentStatus::Authorized,
            amount: 12_345,
            amount_captured: 0,
            amount_refunded: 0,
            currency: Currency::from_alpha("EUR").unwrap(),
            bin: "424242".into(),
            last4: "4242".into(),
            approval_code: approval.map(CompactString::from),
            decline,
            reference: "order \\ 7".into(),
            created_at: Millis(1_700_000_000_123),
        }
    }

    /// What the answers were before they were typed: a `json!` map (sorted keys).
    fn as_value(view: &PaymentView) -> Value {
        let c = view.currency;
        json!({
            "id": payment_id(view.id),
            "object": "payment",
            "status": view.status.as_str(),
            "amount": format_amount(view.amount, c),
            "amount_captured": format_amount(view.amount_captured, c),
            "amount_refunded": format_amount(view.amount_refunded, c),
            "currency": c.alpha(),
            "card": { "bin": view.bin, "last4": view.last4 },
            "approval_code": view.approval_code,
            "response_code": view.decline.map(|d| d.iso_code()).unwrap_or("00"),
            "decline_code": view.decline.map(|d| d.http_code()),
            "merchant_id": view.merchant.0,
            "reference": view.reference,
            "created_at": view.created_at.0 / 1000,
        })
    }

    #[test]
    fn typed_payment_answers_are_byte_for_byte_the_json_map_answers() {
        for v in [
            view(None, Some("A1B2C3")),
            view(Some(Decline::InsufficientFunds), None),
        ] {
            let typed = serde_json::to_vec(&payment(&v)).unwrap();
            let map = serde_json::to_vec(&as_value(&v)).unwrap();
            assert_eq!(
                String::from_utf8(typed).unwrap(),
                String::from_utf8(map).unwrap()
            );
            if let Some(d) = v.decline {
                let typed = serde_json::to_vec(&declined(&v, d)).unwrap();
                let map = serde_json::to_vec(&json!({"error": {"type": "card_error",
                    "code": "card_declined", "decline_code": d.http_code(),
                    "message": d.message(), "param": null, "response_code": d.iso_code()},
                    "payment": as_value(&v)}))
                .unwrap();
                assert_eq!(
                    String::from_utf8(typed).unwrap(),
                    String::from_utf8(map).unwrap()
                );
            }
        }
    }
}
