//! The workload: provisioning through corepay's own bulk path, and the stream of
//! operations (authorize, sale, capture, void, refund, balance inquiry) drawn from the
//! scenario's mix, merchant skew and cross-shard share. Deterministic for a seed.

use crate::admin::Admin;
use crate::scenario::{Scenario, Target};
use corepay::domain::AccountId;
use corepay::gateway::service::provisioned_card_number;
use corepay::shard::routing::shard_of_account;
use std::collections::VecDeque;

/// Card expiry of every provisioned card.
pub const EXP_MONTH: u8 = 12;
pub const EXP_YEAR: u16 = 2030;
/// Payments kept for later captures, voids and refunds; the oldest are forgotten.
const POOL_MAX: usize = 100_000;

/// The operations of a mix, in report order.
pub const OPS: [&str; 6] = ["authorize", "sale", "capture", "void", "refund", "balance"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Authorize = 0,
    Sale = 1,
    Capture = 2,
    Void = 3,
    Refund = 4,
    Balance = 5,
}

/// A payment the load approved earlier, as each protocol names it.
#[derive(Clone, Debug)]
pub enum Original {
    /// `pay_<shard>_<seq>`.
    Http(String),
    /// The original's terminal, STAN and DE7, for DE90; its card and amount.
    Iso {
        mti: [u8; 4],
        terminal: [u8; 8],
        stan: [u8; 6],
        transmitted: [u8; 10],
        card: u64,
        amount: u64,
    },
}

#[derive(Clone, Debug)]
pub struct Op {
    pub kind: OpKind,
    pub merchant: usize,
    /// The card's account id.
    pub card: u64,
    pub amount: u64,
    pub original: Option<Original>,
}

/// What the load needs to know about the provisioned world.
#[derive(Clone, Debug)]
pub struct World {
    pub shards: u16,
    pub currency: String,
    pub currency_numeric: u16,
    pub exponent: u32,
    pub bin: String,
    /// Merchant id and API key (the key is only held in memory, never written out).
    pub merchants: Vec<(String, String)>,
    /// The shard of each merchant's settlement account.
    pub merchant_shard: Vec<u16>,
    /// Card account ids, by shard.
    pub cards_by_shard: Vec<Vec<u64>>,
    /// For balance inquiries over HTTP (account reads take the admin key).
    pub admin_key: String,
}

impl World {
    /// A world for a stateless responder: nothing provisioned, one shard.
    pub fn for_responder(s: &Scenario) -> World {
        let first = s.workload.first_account_id;
        World {
            shards: 1,
            currency: s.workload.currency.clone(),
            currency_numeric: 978,
            exponent: 2,
            bin: s.workload.card_bin.clone(),
            merchants: (0..s.workload.merchants)
                .map(|k| (format!("PERFM{k:03}"), "sk_responder".to_string()))
                .collect(),
            merchant_shard: vec![0; s.workload.merchants],
            cards_by_shard: vec![(first..first + s.workload.accounts).collect()],
            admin_key: "ak_responder".into(),
        }
    }

    pub fn card_number(&self, account: u64) -> String {
        provisioned_card_number(&self.bin, account)
    }
}

pub fn admin_key(s: &Scenario) -> Result<String, String> {
    s.admin_key
        .clone()
        .or_else(|| std::env::var("COREPAY_ADMIN_KEY").ok())
        .ok_or_else(|| "no admin key: set admin_key, --admin-key or COREPAY_ADMIN_KEY".into())
}

/// Provisions the card accounts (unless the first already exists) and creates this run's
/// merchants, each settling into an account on a chosen shard (merchant k on shard k mod S).
pub fn provision(s: &Scenario, admin: &mut Admin, log: bool) -> Result<World, String> {
    if s.target == Target::Responder {
        return Ok(World::for_responder(s));
    }
    let w = &s.workload;
    let currency = corepay::domain::Currency::from_alpha(&w.currency)
        .ok_or_else(|| format!("workload.currency: unknown {:?}", w.currency))?;
    let (status, ledger) = admin.get("/v1/ledger")?;
    if status != 200 {
        return Err(format!("GET /v1/ledger: {status} {ledger}"));
    }
    let shards = ledger["shards"].as_array().map_or(0, |a| a.len()) as u16;
    if shards == 0 {
        return Err("GET /v1/ledger lists no shards".into());
    }
    let (status, _) = admin.get(&format!("/v1/accounts/{}", w.first_account_id))?;
    if status == 404 {
        let started = std::time::Instant::now();
        let body = format!(
            r#"{{"first_account_id":{},"count":{},"currency":"{}","balance":"{}","card_bin":"{}","exp_month":{EXP_MONTH},"exp_year":{EXP_YEAR}}}"#,
            w.first_account_id, w.accounts, w.currency, w.balance, w.card_bin
        );
        let (status, v) = admin.post("/v1/provision", &body)?;
        if status != 200 {
            return Err(format!("POST /v1/provision: {status} {v}"));
        }
        if log {
            eprintln!(
                "provisioned {} accounts and cards in {:.1} s",
                w.accounts,
                started.elapsed().as_secs_f64()
            );
        }
    } else if status != 200 {
        return Err(format!("GET /v1/accounts/{}: {status}", w.first_account_id));
    }
    // Merchants are new every run: their API keys are shown only when created.
    let tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() % 100_000_000)
        .unwrap_or(0);
    let mut merchants = Vec::new();
    let mut merchant_shard = Vec::new();
    let mut next_id = 900_000_000_000 + tag as u64 * 1000;
    for k in 0..w.merchants {
        let want = (k % shards as usize) as u16;
        while shard_of_account(AccountId(next_id), shards).0 != want {
            next_id += 1;
        }
        let account = next_id;
        next_id += 1;
        let (status, v) = admin.post(
            "/v1/accounts",
            &format!(
                r#"{{"id":{account},"currency":"{}","initial_balance":"{}"}}"#,
                w.currency, w.balance
            ),
        )?;
        if status != 201 {
            return Err(format!("POST /v1/accounts: {status} {v}"));
        }
        let id = format!("P{:08}M{k:03}", tag);
        let (status, v) = admin.post(
            "/v1/merchants",
            &format!(r#"{{"id":"{id}","settlement_account_id":{account},"mcc":"5411"}}"#),
        )?;
        let key = v["api_key"].as_str().map(str::to_string);
        match (status, key) {
            (201, Some(key)) => merchants.push((id, key)),
            _ => return Err(format!("POST /v1/merchants: {status} {v}")),
        }
        merchant_shard.push(want);
    }
    let mut cards_by_shard = vec![Vec::new(); shards as usize];
    for id in w.first_account_id..w.first_account_id + w.accounts {
        cards_by_shard[shard_of_account(AccountId(id), shards).index()].push(id);
    }
    Ok(World {
        shards,
        currency: w.currency.clone(),
        currency_numeric: currency.numeric(),
        exponent: currency.exponent(),
        bin: w.card_bin.clone(),
        merchants,
        merchant_shard,
        cards_by_shard,
        admin_key: admin_key(s)?,
    })
}

/// xorshift64*: small, fast and deterministic; statistical quality is plenty for choosing
/// operations and cards.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        (((self.next() >> 11) as u128 * n as u128) >> 53) as u64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Draws operations; remembers approved payments for the operations that need one.
pub struct Generator {
    world: World,
    rng: Rng,
    weights: [u32; 6],
    total: u32,
    cross_shard: f64,
    hot_merchant: f64,
    max_amount: u64,
    authorized: VecDeque<(usize, Original)>,
    captured: VecDeque<(usize, Original)>,
}

impl Generator {
    pub fn new(s: &Scenario, world: World) -> Generator {
        let m = &s.mix;
        let weights = [m.authorize, m.sale, m.capture, m.void, m.refund, m.balance];
        Generator {
            world,
            rng: Rng::new(s.workload.seed),
            weights,
            total: weights.iter().sum(),
            cross_shard: s.workload.cross_shard,
            hot_merchant: s.workload.hot_merchant,
            max_amount: s.workload.max_amount_minor,
            authorized: VecDeque::new(),
            captured: VecDeque::new(),
        }
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    pub fn next_op(&mut self) -> Op {
        let mut pick = self.rng.below(self.total as u64) as u32;
        let mut kind = OpKind::Authorize;
        for (i, w) in self.weights.iter().enumerate() {
            if pick < *w {
                kind = [
                    OpKind::Authorize,
                    OpKind::Sale,
                    OpKind::Capture,
                    OpKind::Void,
                    OpKind::Refund,
                    OpKind::Balance,
                ][i];
                break;
            }
            pick -= w;
        }
        let pooled = match kind {
            OpKind::Capture | OpKind::Void => self.authorized.pop_front(),
            OpKind::Refund => self.captured.pop_front(),
            _ => None,
        };
        if let Some((merchant, original)) = pooled {
            let (card, amount) = match &original {
                Original::Iso { card, amount, .. } => (*card, *amount),
                Original::Http(_) => (0, 0),
            };
            return Op {
                kind,
                merchant,
                card,
                amount,
                original: Some(original),
            };
        }
        if matches!(kind, OpKind::Capture | OpKind::Void | OpKind::Refund) {
            // Nothing approved yet to act on: authorize instead (counted as authorize).
            kind = OpKind::Authorize;
        }
        let merchant = self.merchant();
        let card = self.card(merchant);
        let amount = 100 + self.rng.below(self.max_amount - 99);
        Op {
            kind,
            merchant,
            card,
            amount,
            original: None,
        }
    }

    fn merchant(&mut self) -> usize {
        let n = self.world.merchants.len();
        if n > 1 && self.rng.chance(self.hot_merchant) {
            0
        } else {
            self.rng.below(n as u64) as usize
        }
    }

    /// A card on the merchant's shard, or (with the cross-shard share) on another.
    fn card(&mut self, merchant: usize) -> u64 {
        let shards = self.world.shards as u64;
        let home = self.world.merchant_shard[merchant] as u64;
        let shard = if shards > 1 && self.rng.chance(self.cross_shard) {
            (home + 1 + self.rng.below(shards - 1)) % shards
        } else {
            home
        };
        let mut bucket = &self.world.cards_by_shard[shard as usize];
        if bucket.is_empty() {
            bucket = self
                .world
                .cards_by_shard
                .iter()
                .find(|b| !b.is_empty())
                .expect("at least one card");
        }
        bucket[self.rng.below(bucket.len() as u64) as usize]
    }

    /// An approved answer: remember what later operations can act on.
    pub fn approved(&mut self, kind: OpKind, merchant: usize, original: Original) {
        let pool = match kind {
            OpKind::Authorize => &mut self.authorized,
            OpKind::Sale | OpKind::Capture => &mut self.captured,
            _ => return,
        };
        if pool.len() >= POOL_MAX {
            pool.pop_front();
        }
        pool.push_back((merchant, original));
    }
}

/// Minor units as the currency's decimal text ("12.34").
pub fn amount_text(minor: u64, exponent: u32) -> String {
    if exponent == 0 {
        return minor.to_string();
    }
    let unit = 10u64.pow(exponent);
    format!(
        "{}.{:0width$}",
        minor / unit,
        minor % unit,
        width = exponent as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(shards: u16) -> World {
        let mut cards_by_shard = vec![Vec::new(); shards as usize];
        for id in 1000..2000u64 {
            cards_by_shard[shard_of_account(AccountId(id), shards).index()].push(id);
        }
        World {
            shards,
            currency: "EUR".into(),
            currency_numeric: 978,
            exponent: 2,
            bin: "400000".into(),
            merchants: (0..4).map(|k| (format!("M{k}"), "k".into())).collect(),
            merchant_shard: (0..4).map(|k| k % shards).collect(),
            cards_by_shard,
            admin_key: "ak".into(),
        }
    }

    #[test]
    fn cross_shard_share_and_hot_merchant_are_honoured() {
        let mut s = Scenario::default();
        s.workload.cross_shard = 0.3;
        s.workload.hot_merchant = 0.5;
        let w = world(2);
        let mut g = Generator::new(&s, w.clone());
        let (mut cross, mut hot, n) = (0, 0, 20_000);
        for _ in 0..n {
            let op = g.next_op();
            let card_shard = shard_of_account(AccountId(op.card), 2).0;
            cross += (card_shard != w.merchant_shard[op.merchant]) as u32;
            hot += (op.merchant == 0) as u32;
        }
        let (cross, hot) = (cross as f64 / n as f64, hot as f64 / n as f64);
        assert!((cross - 0.3).abs() < 0.02, "cross-shard share {cross}");
        // merchant 0 gets the hot half plus its uniform quarter of the rest.
        assert!((hot - 0.625).abs() < 0.02, "hot merchant share {hot}");
    }

    #[test]
    fn dependent_operations_use_approved_payments_once() {
        let s = Scenario {
            mix: crate::scenario::Mix::parse("capture=1").unwrap(),
            ..Scenario::default()
        };
        let mut g = Generator::new(&s, world(1));
        // Nothing approved: a capture becomes an authorization.
        assert_eq!(g.next_op().kind, OpKind::Authorize);
        g.approved(OpKind::Authorize, 2, Original::Http("pay_0_7".into()));
        let op = g.next_op();
        assert_eq!((op.kind, op.merchant), (OpKind::Capture, 2));
        assert!(matches!(op.original, Some(Original::Http(ref id)) if id == "pay_0_7"));
        assert_eq!(g.next_op().kind, OpKind::Authorize, "used once");
    }

    #[test]
    fn amounts_are_written_in_the_currency_exponent() {
        assert_eq!(amount_text(1234, 2), "12.34");
        assert_eq!(amount_text(5, 2), "0.05");
        assert_eq!(amount_text(7, 0), "7");
        assert_eq!(amount_text(1001, 3), "1.001");
    }
}
