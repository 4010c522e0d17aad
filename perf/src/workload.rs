//! The workload: provisioning through corepay's own bulk path, and the stream of
//! operations (authorize, sale, capture, void, refund, balance inquiry, and the cold read
//! and refund of payments approved long ago) drawn from the scenario's mix, merchant skew
//! and cross-shard share. Deterministic for a seed (and the order of answers).

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
/// Payments kept for cold operations, per queue (refundable, read-only): 24 bytes each, so
/// at most 48 MiB of the harness's memory however long a soak runs. The oldest leave first.
const COLD_MAX: usize = 1 << 20;

/// The operations of a mix, in report order.
pub const OPS: [&str; 8] = [
    "authorize",
    "sale",
    "capture",
    "void",
    "refund",
    "balance",
    "cold_read",
    "cold_refund",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Authorize = 0,
    Sale = 1,
    Capture = 2,
    Void = 3,
    Refund = 4,
    Balance = 5,
    /// `GET /v1/payments/{id}` of a payment approved at least `cold_after` approvals ago.
    ColdRead = 6,
    /// `POST /v1/payments/{id}/refunds` (the whole captured amount) of a captured payment
    /// approved at least `cold_after` approvals ago; each such payment is refunded once.
    ColdRefund = 7,
}

impl OpKind {
    const ALL: [OpKind; 8] = [
        OpKind::Authorize,
        OpKind::Sale,
        OpKind::Capture,
        OpKind::Void,
        OpKind::Refund,
        OpKind::Balance,
        OpKind::ColdRead,
        OpKind::ColdRefund,
    ];

    /// Acts on a payment that should have left the gateway's memory.
    pub fn is_cold(self) -> bool {
        matches!(self, OpKind::ColdRead | OpKind::ColdRefund)
    }
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
    weights: [u32; 8],
    total: u32,
    cross_shard: f64,
    hot_merchant: f64,
    max_amount: u64,
    authorized: VecDeque<(usize, Original)>,
    captured: VecDeque<(usize, Original)>,
    /// Payments set aside for cold operations (None: the mix has none).
    cold: Option<ColdPool>,
    /// Cold operations drawn when no payment was old enough (sent as authorizations).
    cold_fallbacks: u64,
}

impl Generator {
    pub fn new(s: &Scenario, world: World) -> Generator {
        let m = &s.mix;
        let weights = [
            m.authorize,
            m.sale,
            m.capture,
            m.void,
            m.refund,
            m.balance,
            m.cold_read,
            m.cold_refund,
        ];
        let cold = (m.cold_read + m.cold_refund > 0).then(|| ColdPool::new(s.workload.cold_after));
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
            cold,
            cold_fallbacks: 0,
        }
    }

    /// Cold operations that found no payment old enough and went out as authorizations.
    pub fn cold_fallbacks(&self) -> u64 {
        self.cold_fallbacks
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    pub fn next_op(&mut self) -> Op {
        let mut pick = self.rng.below(self.total as u64) as u32;
        let mut kind = OpKind::Authorize;
        for (i, w) in self.weights.iter().enumerate() {
            if pick < *w {
                kind = OpKind::ALL[i];
                break;
            }
            pick -= w;
        }
        let pooled = match kind {
            OpKind::Capture | OpKind::Void => self.authorized.pop_front(),
            OpKind::Refund => self.captured.pop_front(),
            OpKind::ColdRead => {
                let (cold, rng) = (&mut self.cold, &mut self.rng);
                cold.as_mut().and_then(|c| c.read(rng))
            }
            OpKind::ColdRefund => self.cold.as_mut().and_then(ColdPool::refund),
            _ => None,
        };
        if kind.is_cold() && pooled.is_none() {
            self.cold_fallbacks += 1;
        }
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
        if !matches!(kind, OpKind::Authorize | OpKind::Sale | OpKind::Balance) {
            // Nothing approved (or nothing old enough) to act on: authorize instead
            // (counted as authorize).
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

    /// An approved answer: remember what later operations can act on. With cold
    /// operations in the mix, some approvals are set aside for them instead (never acted on
    /// by the hot operations, so a cold refund never meets a payment refunded already).
    pub fn approved(&mut self, kind: OpKind, merchant: usize, original: Original) {
        if let Some(cold) = &mut self.cold {
            if !cold.offer(kind, merchant, &original) {
                return;
            }
        }
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

/// A payment set aside for cold operations: its id `pay_<shard>_<seq>`, its merchant, and
/// how many approved payment creations preceded its own approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Aged {
    ordinal: u64,
    seq: u64,
    shard: u16,
    merchant: u32,
}

impl Aged {
    fn original(&self) -> (usize, Original) {
        (
            self.merchant as usize,
            Original::Http(format!("pay_{}_{}", self.shard, self.seq)),
        )
    }
}

/// Payments approved long ago, for cold reads and refunds.
///
/// Every `stride`-th approval (of a creation or a capture) is set aside here, in approval
/// order, instead of the hot pools; it becomes *old enough* once `after` more payment
/// creations have been approved. The stride keeps the immature part of a queue within half
/// of `COLD_MAX` (so the queue always holds old-enough payments once the run is long
/// enough), and is at least 2, so the hot operations keep at least half the approvals.
struct ColdPool {
    after: u64,
    stride: u64,
    /// Approved payment creations so far (authorizations and sales).
    approvals: u64,
    /// Approvals offered (creations and captures) since the last one set aside.
    offered: u64,
    /// Captured payments (sales, captured authorizations): cold refunds and cold reads.
    refundable: VecDeque<Aged>,
    /// Authorizations: cold reads only (a hold may expire; reading it is still cold).
    readable: VecDeque<Aged>,
}

impl ColdPool {
    fn new(after: u64) -> ColdPool {
        assert!(after >= 1, "cold_after is at least 1 (Scenario::validate)");
        let stride = (2 * after).div_ceil(COLD_MAX as u64).max(2);
        ColdPool {
            after,
            stride,
            approvals: 0,
            offered: 0,
            refundable: VecDeque::new(),
            readable: VecDeque::new(),
        }
    }

    /// Takes an approval for cold operations (false) or leaves it to the hot pools (true).
    fn offer(&mut self, kind: OpKind, merchant: usize, original: &Original) -> bool {
        if matches!(kind, OpKind::Authorize | OpKind::Sale) {
            self.approvals += 1;
        }
        if !matches!(kind, OpKind::Authorize | OpKind::Sale | OpKind::Capture) {
            return true;
        }
        let Original::Http(id) = original else {
            return true;
        };
        let Some((shard, seq)) = parse_payment_id(id) else {
            return true;
        };
        self.offered += 1;
        if self.offered < self.stride {
            return true;
        }
        self.offered = 0;
        let queue = if kind == OpKind::Authorize {
            &mut self.readable
        } else {
            &mut self.refundable
        };
        if queue.len() >= COLD_MAX {
            queue.pop_front();
        }
        debug_assert!(queue.back().is_none_or(|b| b.ordinal <= self.approvals));
        queue.push_back(Aged {
            ordinal: self.approvals,
            seq,
            shard,
            merchant: merchant as u32,
        });
        false
    }

    /// How many payments at the front of `q` are old enough.
    fn mature(&self, q: &VecDeque<Aged>) -> usize {
        q.partition_point(|a| a.ordinal + self.after <= self.approvals)
    }

    /// The oldest captured payment old enough, taken (each is refunded once).
    fn refund(&mut self) -> Option<(usize, Original)> {
        if self.mature(&self.refundable) == 0 {
            return None;
        }
        self.refundable.pop_front().map(|a| a.original())
    }

    /// Any payment old enough, chosen uniformly (reads leave it in place).
    fn read(&mut self, rng: &mut Rng) -> Option<(usize, Original)> {
        let (r, a) = (self.mature(&self.refundable), self.mature(&self.readable));
        if r + a == 0 {
            return None;
        }
        let i = rng.below((r + a) as u64) as usize;
        let aged = if i < r {
            self.refundable[i]
        } else {
            self.readable[i - r]
        };
        Some(aged.original())
    }
}

/// `pay_<shard>_<seq>` (corepay's payment ids) as (shard, seq).
fn parse_payment_id(id: &str) -> Option<(u16, u64)> {
    let (shard, seq) = id.strip_prefix("pay_")?.split_once('_')?;
    let parsed = (shard.parse().ok()?, seq.parse().ok()?);
    // Only ids that are written back exactly as they were read.
    (format!("pay_{}_{}", parsed.0, parsed.1) == id).then_some(parsed)
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

    fn http(id: &str) -> Original {
        Original::Http(id.to_string())
    }

    fn id_of(op: &Op) -> &str {
        match &op.original {
            Some(Original::Http(id)) => id,
            other => panic!("{:?} without an HTTP original: {other:?}", op.kind),
        }
    }

    #[test]
    fn cold_operations_take_only_payments_approved_long_enough_ago() {
        let mut s = Scenario {
            mix: crate::scenario::Mix::parse("cold_refund=1").unwrap(),
            ..Scenario::default()
        };
        s.workload.cold_after = 3;
        let mut g = Generator::new(&s, world(1));
        // Nothing approved yet: a cold refund goes out as an authorization, counted.
        assert_eq!(g.next_op().kind, OpKind::Authorize);
        assert_eq!(g.cold_fallbacks(), 1);
        // Sales 1..=6 approved: every second one (stride 2) is set aside for cold
        // operations, the others stay with the hot refunds.
        for n in 1..=6 {
            g.approved(OpKind::Sale, n % 4, http(&format!("pay_0_{n}")));
        }
        assert_eq!(g.captured.len(), 3, "the hot pool keeps the others");
        // Set aside: pay_0_2 (after 2 approvals), pay_0_4 (4), pay_0_6 (6). With 6
        // approvals and cold_after 3, pay_0_2 is old enough, pay_0_4 is not (4 + 3 > 6).
        let op = g.next_op();
        assert_eq!(
            (op.kind, id_of(&op), op.merchant),
            (OpKind::ColdRefund, "pay_0_2", 2)
        );
        assert_eq!(g.next_op().kind, OpKind::Authorize, "each refunded once");
        assert_eq!(g.cold_fallbacks(), 2);
        // One more approval ages pay_0_4 past the mark.
        g.approved(OpKind::Authorize, 1, http("pay_0_7"));
        let op = g.next_op();
        assert_eq!((op.kind, id_of(&op)), (OpKind::ColdRefund, "pay_0_4"));
        // Hot refunds never see a payment set aside.
        let hot: Vec<String> = g
            .captured
            .iter()
            .map(|(_, o)| match o {
                Original::Http(id) => id.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(hot, ["pay_0_1", "pay_0_3", "pay_0_5"]);
    }

    #[test]
    fn cold_reads_choose_among_old_payments_and_leave_them_in_place() {
        let mut s = Scenario {
            mix: crate::scenario::Mix::parse("cold_read=1").unwrap(),
            ..Scenario::default()
        };
        s.workload.cold_after = 100;
        let mut g = Generator::new(&s, world(2));
        for n in 1..=400u64 {
            let kind = if n % 3 == 0 {
                OpKind::Authorize
            } else {
                OpKind::Sale
            };
            g.approved(kind, 0, http(&format!("pay_1_{n}")));
        }
        // Set aside every second approval; old enough: approved within the first 300.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let op = g.next_op();
            assert_eq!(op.kind, OpKind::ColdRead);
            let n: u64 = id_of(&op)["pay_1_".len()..].parse().unwrap();
            assert!(
                n <= 300 && n & 1 == 0,
                "pay_1_{n} is not an old, set-aside payment"
            );
            seen.insert(n);
        }
        assert_eq!(
            seen.len(),
            150,
            "reads spread over every old payment, both queues"
        );
        assert_eq!(g.cold_fallbacks(), 0);
    }

    #[test]
    fn without_cold_operations_nothing_is_set_aside() {
        let mut g = Generator::new(&Scenario::default(), world(1));
        for n in 1..=10 {
            g.approved(OpKind::Sale, 0, http(&format!("pay_0_{n}")));
        }
        assert_eq!(g.captured.len(), 10);
        assert!(g.cold.is_none());
    }

    #[test]
    fn payment_ids_round_trip_or_are_not_used_cold() {
        assert_eq!(parse_payment_id("pay_3_123456789"), Some((3, 123_456_789)));
        assert_eq!(parse_payment_id("pay_0_0"), Some((0, 0)));
        assert_eq!(parse_payment_id("pay_0_007"), None);
        assert_eq!(parse_payment_id("pay_x_1"), None);
        assert_eq!(parse_payment_id("pi_1_2"), None);
        assert_eq!(parse_payment_id("pay_1"), None);
        // The stride keeps the immature part of a queue within half of it.
        assert_eq!(ColdPool::new(3).stride, 2);
        assert_eq!(ColdPool::new(1_000_000).stride, 2);
        assert_eq!(ColdPool::new(10_000_000).stride, 20);
        let p = ColdPool::new(10_000_000);
        assert!(p.after / p.stride <= COLD_MAX as u64 / 2);
    }

    #[test]
    fn amounts_are_written_in_the_currency_exponent() {
        assert_eq!(amount_text(1234, 2), "12.34");
        assert_eq!(amount_text(5, 2), "0.05");
        assert_eq!(amount_text(7, 0), "7");
        assert_eq!(amount_text(1001, 3), "1.001");
    }
}
