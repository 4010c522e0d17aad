//! Request bodies (strict: unknown and duplicate fields are refused) and response objects.

use crate::domain::{format_amount, Currency};
use crate::ledger::*;
use serde::Deserialize;
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
    pub number: String,
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
    pub number: String,
    pub exp_month: u8,
    pub exp_year: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    pub amount: String,
    pub currency: String,
    pub card: CardInput,
    #[serde(default)]
    pub capture: bool,
    #[serde(default)]
    pub reference: Option<String>,
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

pub fn payment(view: &PaymentView) -> Value {
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
