//! Routes of the merchant and admin API: authentication, validation, the call into the
//! gateway, and the mapping of outcomes to status codes and error objects.
//!
//! Never: touches the ledger or the WAL directly, or keeps a PAN beyond the call that hashes
//! it. Every failure is an answer with an error object; nothing here panics on input.

use crate::domain::{parse_amount, parse_signed_amount, AccountId, AmountError, Currency};
use crate::gateway::msg::Provision;
use crate::gateway::service::{Answer, NewPayment};
use crate::gateway::{Gateway, Peers, ServiceError};
use crate::http::json;
use crate::http::wire::{Method, Request};
use crate::ledger::*;
use crate::secrets;
use crate::wal::SegmentDir;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::rc::Rc;

/// Longest Idempotency-Key accepted.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;
/// Largest bulk provisioning request.
pub const PROVISION_MAX: u64 = 10_000_000;

/// A response before framing.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub replayed: bool,
    pub retry_after: Option<u32>,
    pub allow: Option<&'static str>,
    pub content_type: &'static str,
}

impl Response {
    fn json(status: u16, value: &impl serde::Serialize) -> Response {
        // Room for a payment's answer at once (serde_json::to_vec starts at 128 and doubles):
        // 525 fewer instructions per HTTP authorization (`corepay-perf instructions`).
        let mut body = Vec::with_capacity(JSON_BODY_CAPACITY);
        serde_json::to_writer(&mut body, value).expect("JSON values serialise");
        Response {
            status,
            body,
            replayed: false,
            retry_after: None,
            allow: None,
            content_type: "application/json",
        }
    }

    /// A plain-text answer (the operator's own endpoints).
    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            body: body.into_bytes(),
            replayed: false,
            retry_after: None,
            allow: None,
            content_type,
        }
    }

    /// `{"error": {type, code, decline_code, message, param}}`.
    pub fn error(
        status: u16,
        kind: &str,
        code: &str,
        message: &str,
        param: Option<&str>,
    ) -> Response {
        let mut r = Response::json(
            status,
            &json!({"error": {"type": kind, "code": code, "decline_code": null, "message": message, "param": param}}),
        );
        if status == 503 || status == 429 {
            r.retry_after = Some(1);
        }
        r
    }

    fn invalid(param: &str, code: &str, message: &str) -> Response {
        Response::error(422, "invalid_request_error", code, message, Some(param))
    }
}

type Result<T> = std::result::Result<T, Response>;

/// What an answer's body is allocated with: a payment or a decline (a few hundred bytes)
/// fits without growing.
const JSON_BODY_CAPACITY: usize = 768;

/// 401 for a missing, malformed or unknown API key (one answer for all three).
fn unauthorized() -> Response {
    Response::error(
        401,
        "authentication_error",
        "unauthorized",
        "Missing or invalid API key.",
        None,
    )
}

/// Who is calling.
enum Caller {
    Admin,
    Merchant(MerchantFacts),
}

/// What one connection remembers between its requests: the last API key it presented and
/// whom that key proved it to be. A key's owner never changes, so the key is hashed and
/// checked once per connection and key instead of once per request; the merchant's facts
/// (its status among them) are still read on every request. The key stays in this
/// connection's memory only, as its requests' bytes do, and is never written anywhere.
#[derive(Default)]
pub struct Session {
    proven: Option<(String, Proven)>,
}

#[derive(Clone)]
enum Proven {
    Admin,
    Merchant(MerchantId),
}

impl Session {
    fn recall(&self, key: &str) -> Option<Proven> {
        let (known, who) = self.proven.as_ref()?;
        let same = known.len() == key.len()
            && known
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same.then(|| who.clone())
    }
}

/// Which listener an `Api` answers on. Endpoints that move money or create what holds it
/// (accounts, cards, merchants, transfers, the ledger, provisioning) are the admin plane:
/// served only on the operator listener (internal by default); payments only on the merchant
/// listener. Each answers the other's paths 404, as if they did not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    Merchant,
    Admin,
}

/// True for the admin plane's paths (`/v1/accounts…`, `/v1/cards…`, …).
pub fn is_admin_path(path: &str) -> bool {
    let mut segments = path.split('/').skip(1);
    segments.next() == Some("v1")
        && matches!(
            segments.next(),
            Some("accounts" | "cards" | "merchants" | "transfers" | "ledger" | "provision")
        )
}

/// The API of one shard, on one plane.
pub struct Api<D: SegmentDir, P: Peers> {
    pub gateway: Rc<Gateway<D, P>>,
    admin_key_hash: [u8; 32],
    plane: Plane,
}

impl<D: SegmentDir + 'static, P: Peers + 'static> Api<D, P> {
    pub fn new(gateway: Rc<Gateway<D, P>>, admin_key: &str, plane: Plane) -> Api<D, P> {
        Api {
            gateway,
            admin_key_hash: secrets::hash_api_key(admin_key),
            plane,
        }
    }

    /// Answers one request of a connection without a session (each request authenticated
    /// in full).
    pub async fn handle(&self, req: &Request) -> Response {
        self.handle_in(req, &mut Session::default()).await
    }

    /// Answers one request of the connection whose `session` this is.
    pub async fn handle_in(&self, req: &Request, session: &mut Session) -> Response {
        self.gateway.requests.set(self.gateway.requests.get() + 1);
        match self.route(req, session).await {
            Ok(r) | Err(r) => r,
        }
    }

    async fn route(&self, req: &Request, session: &mut Session) -> Result<Response> {
        let path = req.path.trim_end_matches('/');
        if is_admin_path(path) != (self.plane == Plane::Admin) {
            return Err(not_found());
        }
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let (get, post) = (req.method == Method::Get, req.method == Method::Post);
        let not_allowed = |allow: &'static str| {
            let mut r = Response::error(
                405,
                "invalid_request_error",
                "method_not_allowed",
                "Method not allowed.",
                None,
            );
            r.allow = Some(allow);
            Err(r)
        };
        match segments.as_slice() {
            ["v1", "payments"] if post => self.create_payment(req, session).await,
            ["v1", "payments", id] if get => self.get_payment(req, id, session).await,
            ["v1", "payments", id, "capture"] if post => self.capture(req, id, session).await,
            ["v1", "payments", id, "void"] if post => self.void(req, id, session).await,
            ["v1", "payments", id, "refunds"] if post => self.refund(req, id, session).await,
            ["v1", "accounts"] if post => self.create_account(req, session).await,
            ["v1", "accounts", id] if get => self.get_account(req, id, session).await,
            ["v1", "accounts", id, "status"] if post => {
                self.set_account_status(req, id, session).await
            }
            ["v1", "cards"] if post => self.create_card(req, session).await,
            ["v1", "cards", id, "status"] if post => self.set_card_status(req, id, session).await,
            ["v1", "merchants"] if post => self.create_merchant(req, session).await,
            ["v1", "merchants", id, "status"] if post => {
                self.set_merchant_status(req, id, session).await
            }
            ["v1", "transfers"] if post => self.transfer(req, session).await,
            ["v1", "ledger"] if get => self.ledger_totals(req, session).await,
            ["v1", "provision"] if post => self.provision(req, session).await,
            ["v1", "payments"]
            | ["v1", "accounts"]
            | ["v1", "cards"]
            | ["v1", "merchants"]
            | ["v1", "transfers"]
            | ["v1", "provision"]
            | ["v1", "payments", _, _]
            | ["v1", "accounts", _, "status"]
            | ["v1", "cards", _, "status"]
            | ["v1", "merchants", _, "status"] => not_allowed("POST"),
            ["v1", "payments", _] | ["v1", "accounts", _] | ["v1", "ledger"] => not_allowed("GET"),
            _ => Err(not_found()),
        }
    }

    // ---- authentication ------------------------------------------------------------------

    /// True when `key` is the admin key (the operator's own endpoints check it too).
    pub fn is_admin_key(&self, key: &str) -> bool {
        secrets::hash_api_key(key) == self.admin_key_hash
    }

    fn bearer(req: &Request) -> Result<&str> {
        let value = req.authorization.as_deref().ok_or_else(unauthorized)?;
        let key = value
            .strip_prefix("Bearer ")
            .ok_or_else(unauthorized)?
            .trim();
        if key.is_empty() || key.len() > 256 {
            return Err(unauthorized());
        }
        Ok(key)
    }

    async fn caller(&self, req: &Request, session: &mut Session) -> Result<Caller> {
        let key = Self::bearer(req)?;
        match session.recall(key) {
            Some(Proven::Admin) => return Ok(Caller::Admin),
            Some(Proven::Merchant(id)) => {
                return match self.gateway.merchant(id).await.map_err(service_error)? {
                    Some(m) => Ok(Caller::Merchant(m)),
                    None => Err(unauthorized()),
                };
            }
            None => {}
        }
        if self.is_admin_key(key) {
            session.proven = Some((key.to_string(), Proven::Admin));
            return Ok(Caller::Admin);
        }
        match self
            .gateway
            .authenticate(key)
            .await
            .map_err(service_error)?
        {
            Some(m) => {
                session.proven = Some((key.to_string(), Proven::Merchant(m.id.clone())));
                Ok(Caller::Merchant(m))
            }
            None => Err(unauthorized()),
        }
    }

    async fn admin(&self, req: &Request, session: &mut Session) -> Result<()> {
        match self.caller(req, session).await? {
            Caller::Admin => Ok(()),
            Caller::Merchant(_) => Err(forbidden()),
        }
    }

    async fn merchant(&self, req: &Request, session: &mut Session) -> Result<MerchantFacts> {
        match self.caller(req, session).await? {
            Caller::Merchant(m) => Ok(m),
            Caller::Admin => Err(forbidden()),
        }
    }

    /// The idempotency tag of a merchant request: key scoped to the merchant, body hashed
    /// (keyed: the body may hold a card number) with the path.
    fn idem(&self, req: &Request, merchant: &MerchantFacts) -> Result<Option<IdemTag>> {
        let Some(key) = req.idempotency_key.as_deref() else {
            return Ok(None);
        };
        let ok = !key.is_empty()
            && key.len() <= IDEMPOTENCY_KEY_MAX
            && key.iter().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(Response::error(
                400,
                "invalid_request_error",
                "idempotency_key_invalid",
                "Idempotency-Key must be 1 to 255 printable ASCII characters.",
                Some("Idempotency-Key"),
            ));
        }
        Ok(Some(IdemTag {
            key: secrets::hash16(&[b"merchant", merchant.id.0.as_bytes(), key]),
            body: self.body_hash(req),
        }))
    }

    fn body_hash(&self, req: &Request) -> Hash16 {
        self.gateway
            .config
            .pan_key
            .mac16(&[req.path.as_bytes(), &req.body])
    }

    // ---- merchant endpoints ----------------------------------------------------------------

    async fn create_payment(&self, req: &Request, session: &mut Session) -> Result<Response> {
        let merchant = self.merchant(req, session).await?;
        let idem = self.idem(req, &merchant)?;
        let body: json::CreatePayment = parse_body(req)?;
        let currency = currency(&body.currency)?;
        let amount = amount(&body.amount, currency, "amount")?;
        let number = body.card.number;
        if number.len() < secrets::PAN_MIN
            || number.len() > secrets::PAN_MAX
            || !number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Response::invalid(
                "card[number]",
                "invalid_number",
                "Card number must be 12 to 19 digits.",
            ));
        }
        expiry(body.card.exp_month, body.card.exp_year, "card")?;
        let reference = body.reference.unwrap_or_default();
        if reference.len() > REFERENCE_MAX {
            return Err(Response::invalid(
                "reference",
                "reference_too_long",
                "reference is at most 64 characters.",
            ));
        }
        let p = NewPayment {
            amount,
            currency,
            pan: number,
            exp_month: body.card.exp_month,
            exp_year: body.card.exp_year,
            capture: body.capture,
            reference,
        };
        let answer = self
            .gateway
            .create_payment(&merchant, p, idem)
            .await
            .map_err(service_error)?;
        Ok(answer_response(answer, 201))
    }

    async fn get_payment(
        &self,
        req: &Request,
        id: &str,
        session: &mut Session,
    ) -> Result<Response> {
        let merchant = self.merchant(req, session).await?;
        let Some(id) = json::parse_payment_id(id) else {
            return Err(missing("payment"));
        };
        match self
            .gateway
            .payment(&merchant, id)
            .await
            .map_err(service_error)?
        {
            Some(view) => Ok(Response::json(200, &json::payment(&view))),
            None => Err(missing("payment")),
        }
    }

    /// The optional `{"amount": "..."}` body of capture and refund; `currency` from the payment.
    async fn optional_amount(
        &self,
        req: &Request,
        merchant: &MerchantFacts,
        id: PaymentRef,
    ) -> Result<Option<i64>> {
        let body: json::OptionalAmount = if req.body.is_empty() {
            Default::default()
        } else {
            parse_body(req)?
        };
        let Some(text) = body.amount else {
            return Ok(None);
        };
        let view = self
            .gateway
            .payment(merchant, id)
            .await
            .map_err(service_error)?;
        let view = view.ok_or_else(|| missing("payment"))?;
        amount(&text, view.currency, "amount").map(Some)
    }

    async fn capture(&self, req: &Request, id: &str, session: &mut Session) -> Result<Response> {
        let merchant = self.merchant(req, session).await?;
        let idem = self.idem(req, &merchant)?;
        let id = json::parse_payment_id(id).ok_or_else(|| missing("payment"))?;
        let amount = self.optional_amount(req, &merchant, id).await?;
        let answer = self
            .gateway
            .capture(&merchant, id, amount, idem)
            .await
            .map_err(service_error)?;
        Ok(answer_response(answer, 200))
    }

    async fn void(&self, req: &Request, id: &str, session: &mut Session) -> Result<Response> {
        let merchant = self.merchant(req, session).await?;
        let idem = self.idem(req, &merchant)?;
        let id = json::parse_payment_id(id).ok_or_else(|| missing("payment"))?;
        if !req.body.is_empty() {
            let _: json::OptionalAmount = parse_body(req)?;
        }
        let answer = self
            .gateway
            .void(&merchant, id, idem)
            .await
            .map_err(service_error)?;
        Ok(answer_response(answer, 200))
    }

    async fn refund(&self, req: &Request, id: &str, session: &mut Session) -> Result<Response> {
        let merchant = self.merchant(req, session).await?;
        let idem = self.idem(req, &merchant)?;
        let id = json::parse_payment_id(id).ok_or_else(|| missing("payment"))?;
        let amount = self.optional_amount(req, &merchant, id).await?;
        let answer = self
            .gateway
            .refund(&merchant, id, amount, idem)
            .await
            .map_err(service_error)?;
        Ok(answer_response(answer, 200))
    }

    // ---- admin endpoints -------------------------------------------------------------------

    async fn create_account(&self, req: &Request, session: &mut Session) -> Result<Response> {
        self.admin(req, session).await?;
        let body: json::CreateAccount = parse_body(req)?;
        let currency = currency(&body.currency)?;
        let initial = match &body.initial_balance {
            Some(t) => {
                parse_amount(t, currency, true).map_err(|e| amount_error(e, "initial_balance"))?
            }
            None => 0,
        };
        let floor = match &body.floor {
            Some(t) => parse_signed_amount(t, currency).map_err(|e| amount_error(e, "floor"))?,
            None => 0,
        };
        if floor > initial {
            return Err(Response::invalid(
                "floor",
                "floor_above_balance",
                "floor must not exceed initial_balance.",
            ));
        }
        let limit = match &body.amount_limit {
            Some(t) => Some(amount(t, currency, "amount_limit")?),
            None => None,
        };
        let outcome = self
            .gateway
            .create_account(
                AccountId(body.id),
                currency,
                initial,
                floor,
                limit,
                body.daily_count_limit,
            )
            .await
            .map_err(service_error)?;
        Ok(outcome_response(outcome, 201))
    }

    async fn get_account(
        &self,
        req: &Request,
        id: &str,
        session: &mut Session,
    ) -> Result<Response> {
        self.admin(req, session).await?;
        let id = id.parse::<u64>().map_err(|_| missing("account"))?;
        match self
            .gateway
            .account(AccountId(id))
            .await
            .map_err(service_error)?
        {
            Some(view) => Ok(Response::json(200, &json::account(&view))),
            None => Err(missing("account")),
        }
    }

    async fn set_account_status(
        &self,
        req: &Request,
        id: &str,
        session: &mut Session,
    ) -> Result<Response> {
        self.admin(req, session).await?;
        let id = id.parse::<u64>().map_err(|_| missing("account"))?;
        let status = status(req)?;
        let outcome = self
            .gateway
            .set_account_status(AccountId(id), status)
            .await
            .map_err(service_error)?;
        Ok(outcome_response(outcome, 200))
    }

    async fn create_card(&self, req: &Request, session: &mut Session) -> Result<Response> {
        self.admin(req, session).await?;
        let body: json::CreateCard = parse_body(req)?;
        if !secrets::luhn_valid(&body.number) {
            return Err(Response::invalid(
                "number",
                "invalid_number",
                "Card number must be 12 to 19 digits and pass the Luhn check.",
            ));
        }
        expiry(body.exp_month, body.exp_year, "")?;
        let outcome = self
            .gateway
            .create_card(
                body.number,
                body.exp_month,
                body.exp_year,
                AccountId(body.account_id),
            )
            .await
            .map_err(service_error)?;
        if outcome == Outcome::Rejected(Reject::AccountNotFound) {
            return Err(Response::error(
                404,
                "invalid_request_error",
                "resource_missing",
                "No such account.",
                Some("account_id"),
            ));
        }
        Ok(outcome_response(outcome, 201))
    }

    async fn set_card_status(
        &self,
        req: &Request,
        id: &str,
        session: &mut Session,
    ) -> Result<Response> {
        self.admin(req, session).await?;
        let id = json::parse_card_id(id).ok_or_else(|| missing("card"))?;
        let status = status(req)?;
        let outcome = self
            .gateway
            .set_card_status(id, status)
            .await
            .map_err(service_error)?;
        Ok(outcome_response(outcome, 200))
    }

    async fn create_merchant(&self, req: &Request, session: &mut Session) -> Result<Response> {
        self.admin(req, session).await?;
        let body: json::CreateMerchant = parse_body(req)?;
        let id = MerchantId::parse(&body.id).ok_or_else(|| {
            Response::invalid(
                "id",
                "invalid_merchant_id",
                "id is 1 to 15 printable ASCII characters.",
            )
        })?;
        let mcc = (body.mcc.len() == 4 && body.mcc.bytes().all(|b| b.is_ascii_digit()))
            .then(|| body.mcc.parse::<u16>().ok())
            .flatten()
            .ok_or_else(|| Response::invalid("mcc", "invalid_mcc", "mcc is four digits."))?;
        let settlement = AccountId(body.settlement_account_id);
        let (outcome, key) = self
            .gateway
            .create_merchant(id, settlement, mcc)
            .await
            .map_err(service_error)?;
        match (outcome, key) {
            (
                Outcome::Merchant {
                    id,
                    settlement,
                    mcc,
                    status,
                },
                Some(key),
            ) => Ok(Response::json(
                201,
                &json!({"id": id.0, "object": "merchant", "settlement_account_id": settlement.0,
                        "mcc": format!("{mcc:04}"), "status": status.as_str(), "api_key": key}),
            )),
            (Outcome::Rejected(Reject::AccountNotFound), _) => Err(Response::error(
                404,
                "invalid_request_error",
                "resource_missing",
                "No such account.",
                Some("settlement_account_id"),
            )),
            (outcome, _) => Ok(outcome_response(outcome, 201)),
        }
    }

    async fn set_merchant_status(
        &self,
        req: &Request,
        id: &str,
        session: &mut Session,
    ) -> Result<Response> {
        self.admin(req, session).await?;
        let id = MerchantId::parse(id).ok_or_else(|| missing("merchant"))?;
        let status = status(req)?;
        let outcome = self
            .gateway
            .set_merchant_status(id, status)
            .await
            .map_err(service_error)?;
        Ok(outcome_response(outcome, 200))
    }

    async fn transfer(&self, req: &Request, session: &mut Session) -> Result<Response> {
        self.admin(req, session).await?;
        let body: json::CreateTransfer = parse_body(req)?;
        if body.id.is_empty()
            || body.id.len() > 64
            || !body.id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Response::invalid(
                "id",
                "invalid_id",
                "id is 1 to 64 printable ASCII characters.",
            ));
        }
        let currency = currency(&body.currency)?;
        let amount = amount(&body.amount, currency, "amount")?;
        let body_hash = self.body_hash(req);
        let answer = self
            .gateway
            .transfer(
                body.id,
                AccountId(body.from),
                AccountId(body.to),
                amount,
                currency,
                body_hash,
            )
            .await
            .map_err(service_error)?;
        Ok(answer_response(answer, 201))
    }

    async fn ledger_totals(&self, req: &Request, session: &mut Session) -> Result<Response> {
        self.admin(req, session).await?;
        let stats = self.gateway.all_stats().await.map_err(service_error)?;
        let mut currencies = std::collections::BTreeMap::<u16, [i64; 4]>::new();
        let shards: Vec<Value> = stats
            .iter()
            .map(|s| {
                for &(c, accounts, treasury, sent, received) in &s.totals {
                    let t = currencies.entry(c).or_default();
                    t[0] += accounts;
                    t[1] += treasury;
                    t[2] += sent;
                    t[3] += received;
                }
                json!({"shard": s.shard, "accounts": s.accounts, "cards": s.cards, "merchants": s.merchants,
                       "payments": s.payments, "outbox": s.outbox, "wal_last_lsn": s.wal_last_lsn,
                       "wal_durable_lsn": s.wal_durable_lsn, "idempotency_records": s.idempotency_records})
            })
            .collect();
        let currencies: Vec<Value> = currencies
            .into_iter()
            .map(|(numeric, [accounts, treasury, sent, received])| {
                let c = Currency::from_numeric(numeric).expect("ledgers hold known currencies");
                let fmt = |v| crate::domain::format_amount(v, c);
                json!({"currency": c.alpha(), "accounts": fmt(accounts), "treasury": fmt(treasury),
                       "in_flight": fmt(sent - received),
                       "sum": fmt(accounts + treasury + sent - received)})
            })
            .collect();
        Ok(Response::json(
            200,
            &json!({"currencies": currencies, "shards": shards}),
        ))
    }

    async fn provision(&self, req: &Request, session: &mut Session) -> Result<Response> {
        self.admin(req, session).await?;
        let body: json::Provision = parse_body(req)?;
        let currency = currency(&body.currency)?;
        let balance =
            parse_amount(&body.balance, currency, true).map_err(|e| amount_error(e, "balance"))?;
        if body.count == 0 || body.count > PROVISION_MAX {
            return Err(Response::invalid(
                "count",
                "invalid_count",
                "count is 1 to 10000000.",
            ));
        }
        if body.card_bin.len() != 6 || !body.card_bin.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Response::invalid(
                "card_bin",
                "invalid_bin",
                "card_bin is six digits.",
            ));
        }
        expiry(body.exp_month, body.exp_year, "")?;
        let p = Provision {
            first: body.first_account_id,
            count: body.count,
            currency,
            balance,
            bin: body.card_bin,
            exp_month: body.exp_month,
            exp_year: body.exp_year,
        };
        let (accounts, cards) = self.gateway.provision_all(p).await.map_err(service_error)?;
        Ok(Response::json(
            200,
            &json!({"accounts": accounts, "cards": cards}),
        ))
    }
}

// ---- mapping ---------------------------------------------------------------------------

fn not_found() -> Response {
    Response::error(
        404,
        "invalid_request_error",
        "not_found",
        "No such endpoint.",
        None,
    )
}

fn forbidden() -> Response {
    Response::error(
        403,
        "permission_error",
        "forbidden",
        "This key may not use this endpoint.",
        None,
    )
}

fn missing(what: &str) -> Response {
    Response::error(
        404,
        "invalid_request_error",
        "resource_missing",
        &format!("No such {what}."),
        None,
    )
}

fn service_error(e: ServiceError) -> Response {
    match e {
        ServiceError::Unavailable => Response::error(
            503,
            "api_error",
            "system_unavailable",
            "The system is busy or shutting down; retry later.",
            None,
        ),
        ServiceError::IdempotencyInFlight => Response::error(
            409,
            "idempotency_error",
            "idempotency_key_in_use",
            "A request with this Idempotency-Key is still being processed.",
            Some("Idempotency-Key"),
        ),
        ServiceError::IdempotencyMismatch => Response::error(
            422,
            "idempotency_error",
            "idempotency_key_reused",
            "This Idempotency-Key was used with a different request.",
            Some("Idempotency-Key"),
        ),
    }
}

fn answer_response(answer: Answer, created: u16) -> Response {
    let mut r = outcome_response(answer.outcome, created);
    r.replayed = answer.replayed;
    r
}

fn outcome_response(outcome: Outcome, created: u16) -> Response {
    match outcome {
        Outcome::Payment(view) => match view.decline {
            None => Response::json(created, &json::payment(&view)),
            Some(d) => Response::json(402, &json::declined(&view, d)),
        },
        Outcome::Account(view) => Response::json(created, &json::account(&view)),
        Outcome::Card {
            id,
            account,
            bin,
            last4,
        } => Response::json(created, &json::card(id, account, &bin, &last4)),
        Outcome::Merchant {
            id,
            settlement,
            mcc,
            status,
        } => Response::json(
            created,
            &json!({"id": id.0, "object": "merchant", "settlement_account_id": settlement.0,
                    "mcc": format!("{mcc:04}"), "status": status.as_str()}),
        ),
        Outcome::Transfer(view) => Response::json(created, &json::transfer(&view)),
        Outcome::Rejected(r) => reject_response(r),
        Outcome::Done => Response::json(200, &json!({})),
    }
}

fn reject_response(r: Reject) -> Response {
    let decline = |d: Decline| {
        let value = json!({"error": {"type": "card_error", "code": "card_declined",
            "decline_code": d.http_code(), "message": d.message(), "param": null, "response_code": d.iso_code()}});
        Response::json(402, &value)
    };
    match r {
        Reject::AccountExists | Reject::CardExists | Reject::MerchantExists => Response::error(
            409,
            "invalid_request_error",
            "resource_exists",
            "It already exists.",
            Some("id"),
        ),
        Reject::AccountNotFound => missing("account"),
        Reject::CardNotFound => missing("card"),
        Reject::MerchantNotFound => missing("merchant"),
        Reject::PaymentNotFound => missing("payment"),
        Reject::InvalidState => Response::error(
            422,
            "invalid_request_error",
            "invalid_state",
            "The payment's state does not allow this operation.",
            None,
        ),
        Reject::AmountTooLarge => Response::invalid(
            "amount",
            "amount_too_large",
            "The amount exceeds what remains on the payment.",
        ),
        Reject::CurrencyMismatch => Response::invalid(
            "currency",
            "currency_mismatch",
            "The accounts' currencies differ.",
        ),
        Reject::SameAccount => Response::invalid("to", "same_account", "from and to must differ."),
        Reject::InsufficientFunds => decline(Decline::InsufficientFunds),
        Reject::AccountNotActive => decline(Decline::NotPermittedCardholder),
    }
}

fn parse_body<T: DeserializeOwned>(req: &Request) -> Result<T> {
    // Content-Type is not checked: every body is JSON, and a client that labels it otherwise
    // (curl -d says form-urlencoded) still gets a precise answer about the JSON itself.
    serde_json::from_slice(&req.body).map_err(|e| {
        let message = e.to_string();
        // serde quotes a field name in backticks only in these messages; elsewhere the
        // backticks quote the offending value ("invalid type: integer `25`"), never a param.
        let names_field = ["unknown field", "duplicate field", "missing field"]
            .iter()
            .any(|p| message.starts_with(p));
        let param = names_field
            .then(|| message.split('`').nth(1).map(str::to_string))
            .flatten();
        let mut r = Response::error(
            400,
            "invalid_request_error",
            "parameter_invalid",
            &message,
            param.as_deref(),
        );
        if req.body.is_empty() {
            r = Response::error(
                400,
                "invalid_request_error",
                "body_missing",
                "A JSON body is required.",
                None,
            );
        }
        r
    })
}

fn currency(text: &str) -> Result<Currency> {
    json::currency(text).ok_or_else(|| {
        Response::invalid(
            "currency",
            "invalid_currency",
            "currency is an ISO 4217 code corepay supports.",
        )
    })
}

fn amount(text: &str, currency: Currency, param: &str) -> Result<i64> {
    parse_amount(text, currency, false).map_err(|e| amount_error(e, param))
}

fn amount_error(e: AmountError, param: &str) -> Response {
    let (code, message) = match e {
        AmountError::Syntax => (
            "amount_invalid",
            "Amounts are decimal strings such as \"12.34\".",
        ),
        AmountError::TooPrecise => (
            "amount_too_precise",
            "More decimal places than the currency has.",
        ),
        AmountError::NotPositive => (
            "amount_not_positive",
            "The amount must be greater than zero.",
        ),
        AmountError::TooLarge => ("amount_too_large", "The amount is too large."),
    };
    Response::invalid(param, code, message)
}

fn expiry(month: u8, year: u16, prefix: &str) -> Result<()> {
    let name = |f: &str| {
        if prefix.is_empty() {
            f.to_string()
        } else {
            format!("{prefix}[{f}]")
        }
    };
    if !(1..=12).contains(&month) {
        return Err(Response::invalid(
            &name("exp_month"),
            "invalid_expiry_month",
            "exp_month is 1 to 12.",
        ));
    }
    if !(2000..=2099).contains(&year) {
        return Err(Response::invalid(
            &name("exp_year"),
            "invalid_expiry_year",
            "exp_year is a four-digit year.",
        ));
    }
    Ok(())
}

fn status(req: &Request) -> Result<Status> {
    let body: json::SetStatus = parse_body(req)?;
    Status::parse(&body.status).ok_or_else(|| {
        Response::invalid(
            "status",
            "invalid_status",
            "status is active, blocked or closed.",
        )
    })
}
