//! The Redis sink: every payment and transfer state change, XADDed to one stream.
//!
//! Each record yields zero or more events (`events_of`); event `n` of the record at (`shard`,
//! `lsn`) carries `event_id` = "<shard>-<lsn>-<n>", stable across retries, so consumers
//! de-duplicate on it. A batch's XADDs and the shard's progress key (`<stream>:progress:<shard>`,
//! the last LSN stored) go in one MULTI/EXEC, with the progress key WATCHed: a batch is stored
//! entirely or not at all, and records at or below the stored progress are skipped, so every
//! event is stored exactly once even when a reply is lost and the runner retries.
//!
//! Events never carry a PAN: the card is "<BIN>******<last4>", which is all a record has.

use super::{Record, Seed, Sink, SinkError};
use crate::domain::{format_amount, Lsn, Millis, ShardId};
use crate::ledger::command::{PaymentStatus, PaymentView};
use crate::ledger::effects::{Effects, JournalAccount};
use std::time::Duration;

/// How long connecting, and each reply, may take before the sink gives up (and the runner backs
/// off): a hung Redis must not hang the replication thread.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One event: (field, value) pairs in XADD order.
pub type Event = Vec<(&'static str, String)>;

pub struct RedisSink {
    url: String,
    stream: String,
    /// Approximate bound on the stream's length (`MAXLEN ~`); 0: unbounded.
    maxlen: usize,
    conn: Option<redis::Connection>,
    timeout: Duration,
}

impl RedisSink {
    /// A sink publishing to `stream` at `url` ("redis://host:port/db"); connects lazily.
    pub fn new(url: &str, stream: &str, maxlen: usize) -> RedisSink {
        RedisSink {
            url: url.to_string(),
            stream: stream.to_string(),
            maxlen,
            conn: None,
            timeout: TIMEOUT,
        }
    }

    /// The key holding the last LSN of `shard` stored in the stream.
    pub fn progress_key(&self, shard: ShardId) -> String {
        format!("{}:progress:{}", self.stream, shard.0)
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, SinkError> {
        if self.conn.is_none() {
            let fail = |e: redis::RedisError| {
                SinkError(format!("redis: connect to {}: {e}", redact(&self.url)))
            };
            let client = redis::Client::open(self.url.as_str()).map_err(fail)?;
            let conn = client
                .get_connection_with_timeout(self.timeout)
                .map_err(fail)?;
            conn.set_read_timeout(Some(self.timeout)).map_err(fail)?;
            conn.set_write_timeout(Some(self.timeout)).map_err(fail)?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// Runs `f` on the connection; any error drops the connection (the next call reconnects).
    fn with_conn<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut redis::Connection) -> Result<T, String>,
    ) -> Result<T, SinkError> {
        let conn = self.connection()?;
        let result = f(conn);
        if result.is_err() {
            self.conn = None;
        }
        result.map_err(|e| SinkError(format!("redis: {what}: {e}")))
    }
}

impl Sink for RedisSink {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn progress(&mut self, shard: ShardId) -> Result<Lsn, SinkError> {
        let key = self.progress_key(shard);
        self.with_conn("read progress", |conn| {
            let stored: Option<u64> = redis::cmd("GET")
                .arg(&key)
                .query(conn)
                .map_err(|e| format!("GET {key}: {e}"))?;
            Ok(Lsn(stored.unwrap_or(0)))
        })
    }

    /// A stream is a feed of changes, not a copy of state: a re-seed publishes one
    /// `replication.reseed` event (`reseed_event`) and moves the progress, in one MULTI/EXEC.
    fn reseed(&mut self, seed: &mut Seed<'_>) -> Result<(), SinkError> {
        let key = self.progress_key(seed.shard);
        let (stream, maxlen) = (self.stream.clone(), self.maxlen);
        let event = reseed_event(seed);
        let at = seed.at.0;
        self.with_conn("store a re-seed", |conn| {
            store_with_progress(conn, &key, &stream, maxlen, at, |_| vec![event])
        })
    }

    fn apply(&mut self, shard: ShardId, batch: &[Record]) -> Result<(), SinkError> {
        let Some(last) = batch.last() else {
            return Ok(());
        };
        let last = last.lsn;
        let key = self.progress_key(shard);
        let (stream, maxlen) = (self.stream.clone(), self.maxlen);
        self.with_conn("store batch", |conn| {
            store_with_progress(conn, &key, &stream, maxlen, last.0, |stored| {
                batch
                    .iter()
                    .filter(|r| r.lsn.0 > stored)
                    .flat_map(events_of)
                    .collect()
            })
        })
    }
}

/// XADDs `events(stored)` to `stream` and sets the progress `key` to `last`, in one
/// MULTI/EXEC with the key WATCHed: if anyone stores this shard's progress before our EXEC,
/// the transaction aborts instead of storing events twice. `stored` is the progress read
/// under the WATCH; nothing is done when it already reached `last` (a retry after a lost
/// reply).
fn store_with_progress(
    conn: &mut redis::Connection,
    key: &str,
    stream: &str,
    maxlen: usize,
    last: u64,
    events: impl FnOnce(u64) -> Vec<Event>,
) -> Result<(), String> {
    let (stored, kind): (Option<u64>, String) = redis::pipe()
        .cmd("WATCH")
        .arg(key)
        .ignore()
        .cmd("GET")
        .arg(key)
        .cmd("TYPE")
        .arg(stream)
        .query(conn)
        .map_err(|e| format!("WATCH/GET {key}: {e}"))?;
    let stored = stored.unwrap_or(0);
    if stored >= last {
        redis::cmd("UNWATCH")
            .exec(conn)
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    // Inside MULTI a wrong-type XADD fails alone while the progress SET succeeds: refuse
    // before, rather than lose events.
    if kind != "stream" && kind != "none" {
        return Err(format!("key {stream} is a {kind}, not a stream"));
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for event in events(stored) {
        let xadd = pipe.cmd("XADD").arg(stream);
        if maxlen > 0 {
            xadd.arg("MAXLEN").arg("~").arg(maxlen);
        }
        xadd.arg("*");
        for (field, value) in &event {
            xadd.arg(*field).arg(value);
        }
        xadd.ignore();
    }
    pipe.cmd("SET").arg(key).arg(last).ignore();
    let reply: redis::Value = pipe.query(conn).map_err(|e| e.to_string())?;
    if reply == redis::Value::Nil {
        return Err(format!(
            "{key} changed during the transaction (another writer?): aborted, nothing stored"
        ));
    }
    Ok(())
}

/// The event a re-seed publishes in place of the events of records `missing_from..=lsn`,
/// which the stream will never carry: a consumer that sees it rebuilds what it derives from
/// the stream from PostgreSQL or the API. Its event id "<shard>-<lsn>-reseed" is stable
/// across retries.
pub fn reseed_event(seed: &Seed<'_>) -> Event {
    vec![
        ("event_id", format!("{}-{}-reseed", seed.shard.0, seed.at.0)),
        ("type", "replication.reseed".to_string()),
        ("missing_from", seed.missing_from.0.to_string()),
        ("time", rfc3339(seed.time.0)),
        ("time_ms", seed.time.0.to_string()),
        ("shard", seed.shard.0.to_string()),
        ("lsn", seed.at.0.to_string()),
    ]
}

/// The events one record publishes, in order; event `n` gets `event_id` "<shard>-<lsn>-<n>".
///
/// Payment rows become `payment.*` events when the record changed them (a rejected command's
/// record rewrites its payment row unchanged; those publish nothing where the effects can
/// tell, see `payment_event_type`); a transfer that moved money becomes `transfer.created`.
pub fn events_of(record: &Record) -> Vec<Event> {
    let fx = &record.effects;
    let mut events: Vec<Event> = Vec::new();
    let mut push = |ty: &str, body: Vec<(&'static str, String)>| {
        let n = events.len();
        let mut event: Event = vec![
            (
                "event_id",
                format!("{}-{}-{}", record.shard.0, record.lsn.0, n),
            ),
            ("type", ty.to_string()),
        ];
        event.extend(body);
        if let Some(Millis(ms)) = record.time {
            event.push(("time", rfc3339(ms)));
            event.push(("time_ms", ms.to_string()));
        }
        event.push(("shard", record.shard.0.to_string()));
        event.push(("lsn", record.lsn.0.to_string()));
        events.push(event);
    };
    if fx.kind == "transfer" {
        if let Some(body) = transfer_fields(fx) {
            push("transfer.created", body);
        }
        return events;
    }
    for p in &fx.payments {
        if let Some(ty) = payment_event_type(fx, p) {
            push(ty, payment_fields(fx.kind, p));
        }
    }
    events
}

/// The event type for a payment row of a record of `fx.kind`, or None when the row did not
/// change. Money-moving operations changed the row exactly when they wrote journal entries.
/// A void or an authorization reduction moves no money (only the hold): their rows are
/// published when the status fits; a rejected one on a payment already in that status (a
/// second void) cannot be told apart from the effects and is published again, under its own
/// event id.
fn payment_event_type(fx: &Effects, p: &PaymentView) -> Option<&'static str> {
    let moved = !fx.journal.is_empty();
    match (fx.kind, p.status) {
        ("authorize" | "sale", PaymentStatus::Declined) => Some("payment.declined"),
        ("authorize", PaymentStatus::Authorized) => Some("payment.authorized"),
        ("sale", PaymentStatus::Captured) => Some("payment.captured"),
        ("capture", PaymentStatus::Captured | PaymentStatus::PartiallyCaptured) if moved => {
            Some("payment.captured")
        }
        ("void", PaymentStatus::Voided) => Some("payment.voided"),
        ("reduce_authorization", PaymentStatus::Authorized) => {
            Some("payment.authorization_reduced")
        }
        ("refund" | "credit", PaymentStatus::Refunded | PaymentStatus::PartiallyRefunded)
            if moved =>
        {
            Some("payment.refunded")
        }
        ("expire", PaymentStatus::Expired) => Some("payment.expired"),
        _ => None,
    }
}

fn payment_fields(kind: &str, p: &PaymentView) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("operation", kind.to_string()),
        ("status", p.status.as_str().to_string()),
        ("payment_id", format!("pay_{}_{}", p.id.shard.0, p.id.seq)),
        ("merchant_id", p.merchant.0.to_string()),
        ("amount", format_amount(p.amount, p.currency)),
        (
            "amount_captured",
            format_amount(p.amount_captured, p.currency),
        ),
        (
            "amount_refunded",
            format_amount(p.amount_refunded, p.currency),
        ),
        ("currency", p.currency.alpha().to_string()),
    ];
    if let Some(card) = masked_card(&p.bin, &p.last4) {
        f.push(("card", card));
    }
    let code = p.decline.map_or("00", |d| d.iso_code());
    f.push(("response_code", code.to_string()));
    if let Some(approval) = &p.approval_code {
        f.push(("approval_code", approval.to_string()));
    }
    if !p.reference.is_empty() {
        f.push(("reference", p.reference.to_string()));
    }
    f
}

/// A transfer's fields from its journal: the debited account is the source; the credited
/// account is the destination when it lives on the same shard (otherwise the money is in
/// flight to another shard, and `to_account` is absent). None when nothing moved (a refused
/// transfer, or a retry answered from the existing transfer).
fn transfer_fields(fx: &Effects) -> Option<Vec<(&'static str, String)>> {
    let account = |amount_positive: bool| {
        fx.journal.iter().find_map(|e| match e.account {
            JournalAccount::Account(id) if (e.amount > 0) == amount_positive => {
                Some((id, e.amount, e.currency))
            }
            _ => None,
        })
    };
    let (from, debit, currency) = account(false)?;
    let id = fx
        .reference
        .as_deref()
        .map(|r| r.strip_prefix("transfer:").unwrap_or(r).to_string())
        .unwrap_or_default();
    let mut f = vec![
        ("operation", "transfer".to_string()),
        ("transfer_id", id),
        ("from_account", from.0.to_string()),
    ];
    if let Some((to, _, _)) = account(true) {
        f.push(("to_account", to.0.to_string()));
    }
    f.push(("amount", format_amount(-debit, currency)));
    f.push(("currency", currency.alpha().to_string()));
    Some(f)
}

/// "424242******4242": the BIN, stars, the last four; 16 characters for a 6-digit BIN. At most
/// 8 leading and 4 trailing characters are shown, so at least 4 are always masked.
fn masked_card(bin: &str, last4: &str) -> Option<String> {
    if bin.is_empty() && last4.is_empty() {
        return None;
    }
    let bin: String = bin.chars().take(8).collect();
    let skip = last4.chars().count().saturating_sub(4);
    let last4: String = last4.chars().skip(skip).collect();
    let stars = 16usize.saturating_sub(bin.len() + last4.len()).max(4);
    Some(format!("{bin}{}{last4}", "*".repeat(stars)))
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds: "2027-01-15T08:00:00.000Z".
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, Currency};
    use crate::ledger::command::*;
    use crate::ledger::effects::apply_with_effects;
    use crate::ledger::state::Ledger;
    use crate::shard::routing::shard_of_account;
    use std::collections::HashMap;
    use std::time::{SystemTime, UNIX_EPOCH};

    const SHARDS: u16 = 2;
    const SHARD: ShardId = ShardId(0);
    const NOW: u64 = 1_800_000_000_000;
    /// The PAN the test cards stand for: it must never appear in an event.
    const PAN: &str = "4242424242424242";

    fn redis_url() -> String {
        std::env::var("COREPAY_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_string())
    }

    /// A stream (and its progress keys) of its own, deleted when the test ends, pass or fail.
    struct TestStream {
        name: String,
        conn: redis::Connection,
    }

    impl TestStream {
        fn new(test: &str) -> TestStream {
            let url = redis_url();
            let conn = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot reach Redis at {url} (COREPAY_TEST_REDIS_URL): {e}; \
                         start it with scripts/services.sh"
                    )
                });
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let name = format!("corepay-test:{test}:{}:{nanos}", std::process::id());
            TestStream { name, conn }
        }

        fn sink(&self, maxlen: usize) -> RedisSink {
            RedisSink::new(&redis_url(), &self.name, maxlen)
        }

        fn len(&mut self) -> usize {
            redis::cmd("XLEN")
                .arg(&self.name)
                .query(&mut self.conn)
                .unwrap()
        }

        /// Every entry's fields, oldest first.
        fn entries(&mut self) -> Vec<HashMap<String, String>> {
            let reply: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(&self.name)
                .arg("-")
                .arg("+")
                .query(&mut self.conn)
                .unwrap();
            reply
                .into_iter()
                .map(|(_, kv)| kv.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect())
                .collect()
        }
    }

    impl Drop for TestStream {
        fn drop(&mut self) {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.name))
                .query(&mut self.conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _ = redis::cmd("DEL").arg(keys).exec(&mut self.conn);
            }
        }
    }

    fn eur() -> Currency {
        Currency::from_alpha("EUR").unwrap()
    }

    /// The first `n` account ids that live on `shard`.
    fn accounts_on(shard: ShardId, n: usize) -> Vec<AccountId> {
        (1..)
            .map(AccountId)
            .filter(|&a| shard_of_account(a, SHARDS) == shard)
            .take(n)
            .collect()
    }

    /// Builds records from commands applied to a real ledger of shard 0.
    struct Builder {
        ledger: Ledger,
        records: Vec<Record>,
        card_account: AccountId,
        merchant: MerchantFacts,
        now: u64,
    }

    impl Builder {
        fn new() -> Builder {
            let ids = accounts_on(SHARD, 3);
            let mut b = Builder {
                ledger: Ledger::new(SHARD, SHARDS),
                records: Vec::new(),
                card_account: ids[0],
                merchant: MerchantFacts {
                    id: MerchantId("M1".into()),
                    settlement: ids[1],
                    settlement_shard: SHARD,
                    currency: eur(),
                    mcc: 5411,
                    status: Status::Active,
                },
                now: NOW,
            };
            for (i, &id) in ids.iter().enumerate() {
                let cmd = Command::CreateAccount {
                    id,
                    currency: eur(),
                    initial: if i == 0 { 100_000 } else { 50_000 },
                    floor: 0,
                    amount_limit: None,
                    daily_count_limit: None,
                };
                assert!(matches!(b.exec(cmd), Outcome::Account(_)));
            }
            b
        }

        fn exec(&mut self, cmd: Command) -> Outcome {
            let lsn = Lsn(self.records.len() as u64 + 1);
            let time = match &cmd {
                Command::Authorize { now, .. }
                | Command::Capture { now, .. }
                | Command::Void { now, .. }
                | Command::ReduceAuthorization { now, .. }
                | Command::RefundLocal { now, .. }
                | Command::Transfer { now, .. } => Some(*now),
                Command::ExpireHolds { now, .. } => Some(*now),
                _ => None,
            };
            let (outcome, effects) = apply_with_effects(&mut self.ledger, lsn, &cmd);
            self.records.push(Record {
                shard: SHARD,
                lsn,
                time,
                effects,
            });
            outcome
        }

        fn tick(&mut self) -> Millis {
            self.now += 1_000;
            Millis(self.now)
        }

        fn authorize(&mut self, amount: i64, capture: bool, expires_in: u64) -> (u64, PaymentView) {
            let now = self.tick();
            let cmd = Command::Authorize {
                merchant: self.merchant.clone(),
                card: Some(CardFacts {
                    id: 1,
                    home: SHARD,
                    account: self.card_account,
                    bin: PAN[..6].into(),
                    last4: PAN[12..].into(),
                    exp_month: 12,
                    exp_year: 2030,
                    status: Status::Active,
                }),
                presented: PresentedCard {
                    bin: PAN[..6].into(),
                    last4: PAN[12..].into(),
                    exp_month: 12,
                    exp_year: 2030,
                },
                pre_decline: None,
                amount,
                currency: eur(),
                capture,
                reference: "order-1".into(),
                now,
                expires_at: Millis(now.0 + expires_in),
                idem: None,
            };
            let Outcome::Payment(view) = self.exec(cmd) else {
                panic!("authorize answers a payment")
            };
            (view.id.seq, *view)
        }

        fn merchant_id(&self) -> MerchantId {
            self.merchant.id.clone()
        }
    }

    /// Every kind of state change, plus commands that change nothing; returns the records and
    /// the (type, payment or transfer id) of the events they must publish, in order.
    fn scenario() -> (Vec<Record>, Vec<(&'static str, String)>) {
        let mut b = Builder::new();
        let m = b.merchant_id();
        let pay = |seq: u64| format!("pay_0_{seq}");
        let mut want = Vec::new();

        let (p1, v) = b.authorize(10_00, false, 3_600_000);
        assert_eq!(v.status, PaymentStatus::Authorized);
        want.push(("payment.authorized", pay(p1)));
        let now = b.tick();
        b.exec(Command::Capture {
            payment: p1,
            merchant: m.clone(),
            amount: Some(6_00),
            now,
            idem: None,
        });
        want.push(("payment.captured", pay(p1)));
        let now = b.tick();
        b.exec(Command::RefundLocal {
            payment: p1,
            merchant: m.clone(),
            amount: 2_00,
            now,
            idem: None,
        });
        want.push(("payment.refunded", pay(p1)));

        let (p2, _) = b.authorize(3_00, false, 3_600_000);
        want.push(("payment.authorized", pay(p2)));
        let now = b.tick();
        b.exec(Command::Void {
            payment: p2,
            merchant: m.clone(),
            now,
            idem: None,
        });
        want.push(("payment.voided", pay(p2)));
        // Rejected: capture of a voided payment changes nothing.
        let now = b.tick();
        let out = b.exec(Command::Capture {
            payment: p2,
            merchant: m.clone(),
            amount: None,
            now,
            idem: None,
        });
        assert_eq!(out, Outcome::Rejected(Reject::InvalidState));

        let (p3, v) = b.authorize(100_000_000, false, 3_600_000);
        assert_eq!(v.decline, Some(crate::ledger::Decline::InsufficientFunds));
        want.push(("payment.declined", pay(p3)));

        let (p4, _) = b.authorize(7_50, true, 3_600_000);
        want.push(("payment.captured", pay(p4)));

        let (p5, _) = b.authorize(4_00, false, 3_600_000);
        want.push(("payment.authorized", pay(p5)));
        let now = b.tick();
        b.exec(Command::ReduceAuthorization {
            payment: p5,
            merchant: m.clone(),
            amount: 2_50,
            now,
            idem: None,
        });
        want.push(("payment.authorization_reduced", pay(p5)));

        let (p6, _) = b.authorize(1_00, false, 10);
        want.push(("payment.authorized", pay(p6)));
        let now = b.tick();
        let payments = b.ledger.holds_due_in_memory(now, usize::MAX);
        b.exec(Command::ExpireHolds { now, payments });
        want.push(("payment.expired", pay(p6)));

        // A refund whose money came back from another shard: the credit records it.
        let card_account = b.card_account;
        b.exec(Command::ApplyCredit {
            from: ShardId(1),
            seq: 1,
            credit: Credit {
                account: card_account,
                amount: 7_50,
                currency: eur(),
                purpose: CreditPurpose::RefundReturn { payment_seq: p4 },
            },
        });
        want.push(("payment.refunded", pay(p4)));

        let ids = accounts_on(SHARD, 3);
        let remote = accounts_on(ShardId(1), 1)[0];
        let transfer = |b: &mut Builder, id: &str, to: AccountId| {
            let now = b.tick();
            b.exec(Command::Transfer {
                id: id.into(),
                from: ids[2],
                to,
                to_shard: shard_of_account(to, SHARDS),
                amount: 12_34,
                currency: eur(),
                now,
                idem: None,
            })
        };
        assert!(matches!(
            transfer(&mut b, "t1", ids[0]),
            Outcome::Transfer(_)
        ));
        want.push(("transfer.created", "t1".into()));
        // A retry answered from the existing transfer moves nothing.
        assert!(matches!(
            transfer(&mut b, "t1", ids[0]),
            Outcome::Transfer(_)
        ));
        assert!(matches!(
            transfer(&mut b, "t2", remote),
            Outcome::Transfer(_)
        ));
        want.push(("transfer.created", "t2".into()));
        // Refused (same account): nothing.
        assert_eq!(
            transfer(&mut b, "t3", ids[2]),
            Outcome::Rejected(Reject::SameAccount)
        );
        (b.records, want)
    }

    fn id_of(e: &HashMap<String, String>) -> String {
        e.get("payment_id")
            .or_else(|| e.get("transfer_id"))
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn a_reseed_is_one_event_and_moves_the_progress_once() {
        let mut t = TestStream::new("reseed");
        let mut sink = t.sink(0);
        assert_eq!(sink.progress(SHARD).unwrap(), Lsn(0));
        let mut none = |_: usize| Ok(Vec::new());
        let mut seed = Seed {
            shard: SHARD,
            at: Lsn(500),
            missing_from: Lsn(1),
            time: Millis(NOW),
            accounts: Vec::new(),
            cards: Vec::new(),
            merchants: Vec::new(),
            positions: Vec::new(),
            payments: &mut none,
        };
        sink.reseed(&mut seed).unwrap();
        assert_eq!(sink.progress(SHARD).unwrap(), Lsn(500));
        // Retried after a lost reply: nothing more.
        sink.reseed(&mut seed).unwrap();
        assert_eq!(t.len(), 1);
        let e = &t.entries()[0];
        assert_eq!(e["type"], "replication.reseed");
        assert_eq!(e["event_id"], "0-500-reseed");
        assert_eq!(e["missing_from"], "1");
        assert_eq!(e["lsn"], "500");
        // Records up to the re-seed are not published again.
        let (records, _) = scenario();
        let old: Vec<Record> = records.iter().filter(|r| r.lsn.0 <= 500).cloned().collect();
        if !old.is_empty() {
            sink.apply(SHARD, &old).unwrap();
        }
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn events_cover_every_state_change_and_only_those() {
        let (records, want) = scenario();
        let events: Vec<HashMap<String, String>> = records
            .iter()
            .flat_map(events_of)
            .map(|e| e.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            .collect();
        let got: Vec<(String, String)> = events
            .iter()
            .map(|e| (e["type"].clone(), id_of(e)))
            .collect();
        let want: Vec<(String, String)> =
            want.into_iter().map(|(t, i)| (t.to_string(), i)).collect();
        assert_eq!(got, want);
        for e in &events {
            for v in e.values() {
                assert!(!v.contains(PAN), "full PAN in {e:?}");
            }
        }
    }

    #[test]
    fn card_masking_and_time_format() {
        assert_eq!(masked_card("424242", "4242").unwrap(), "424242******4242");
        assert_eq!(masked_card("42424242", "4242").unwrap(), "42424242****4242");
        assert_eq!(masked_card(PAN, PAN).unwrap(), "42424242****4242");
        assert_eq!(masked_card("", ""), None);
        assert_eq!(rfc3339(1_800_000_000_000), "2027-01-15T08:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
    }

    #[test]
    fn apply_stores_each_event_once_with_its_progress() {
        let mut t = TestStream::new("once");
        let mut sink = t.sink(10_000);
        assert_eq!(sink.name(), "redis");
        assert_eq!(sink.progress(SHARD).unwrap(), Lsn(0));
        let (records, want) = scenario();
        let split = records.len() / 2;

        sink.apply(SHARD, &records[..split]).unwrap();
        assert_eq!(sink.progress(SHARD).unwrap(), records[split - 1].lsn);
        let first = t.len();
        assert!(first > 0 && first < want.len());
        // The same batch again: nothing new, progress unchanged.
        sink.apply(SHARD, &records[..split]).unwrap();
        assert_eq!(t.len(), first);
        // An overlapping batch (a retry after a lost reply): only the new suffix is stored.
        sink.apply(SHARD, &records[split - 2..]).unwrap();
        let last = records.last().unwrap().lsn;
        assert_eq!(sink.progress(SHARD).unwrap(), last);
        // A fresh sink (a restart) reads the same progress; other shards are independent.
        let mut restarted = t.sink(10_000);
        assert_eq!(restarted.progress(SHARD).unwrap(), last);
        assert_eq!(restarted.progress(ShardId(1)).unwrap(), Lsn(0));
        restarted.apply(SHARD, &records).unwrap();

        let entries = t.entries();
        let got: Vec<(String, String)> = entries
            .iter()
            .map(|e| (e["type"].clone(), id_of(e)))
            .collect();
        let want: Vec<(String, String)> =
            want.into_iter().map(|(t, i)| (t.to_string(), i)).collect();
        assert_eq!(got, want, "each event exactly once, in order");
        let mut ids: Vec<&String> = entries.iter().map(|e| &e["event_id"]).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), entries.len(), "event ids are unique");

        for e in &entries {
            for v in e.values() {
                assert!(!v.contains(PAN), "full PAN in {e:?}");
            }
            let (shard, lsn) = (&e["shard"], &e["lsn"]);
            assert!(
                e["event_id"].starts_with(&format!("{shard}-{lsn}-")),
                "{e:?}"
            );
            assert!(
                e.contains_key("time") && e.contains_key("time_ms") || e["operation"] == "credit",
                "{e:?}"
            );
        }
        let by_type = |ty: &str| {
            entries
                .iter()
                .filter(|e| e["type"] == ty)
                .collect::<Vec<_>>()
        };

        let auth = by_type("payment.authorized")[0];
        assert_eq!(auth["payment_id"], "pay_0_1");
        assert_eq!(auth["merchant_id"], "M1");
        assert_eq!(auth["amount"], "10.00");
        assert_eq!(auth["amount_captured"], "0.00");
        assert_eq!(auth["currency"], "EUR");
        assert_eq!(auth["card"], "424242******4242");
        assert_eq!(auth["response_code"], "00");
        assert_eq!(auth["status"], "authorized");
        assert_eq!(auth["reference"], "order-1");
        assert!(auth.contains_key("approval_code"));
        assert_eq!(auth["time"], rfc3339(NOW + 1_000));
        assert_eq!(auth["time_ms"], (NOW + 1_000).to_string());
        assert_eq!(auth["event_id"], format!("0-{}-0", auth["lsn"]));

        let captured = by_type("payment.captured");
        assert_eq!(captured[0]["status"], "partially_captured");
        assert_eq!(captured[0]["amount_captured"], "6.00");
        assert_eq!(captured[1]["operation"], "sale");
        assert_eq!(captured[1]["amount_captured"], "7.50");

        let refunded = by_type("payment.refunded");
        assert_eq!(refunded[0]["status"], "partially_refunded");
        assert_eq!(refunded[0]["amount_refunded"], "2.00");
        assert_eq!(refunded[1]["operation"], "credit");
        assert_eq!(refunded[1]["status"], "refunded");
        assert_eq!(refunded[1]["amount_refunded"], "7.50");

        let declined = by_type("payment.declined")[0];
        assert_eq!(declined["response_code"], "51");
        assert!(!declined.contains_key("approval_code"));
        assert_eq!(by_type("payment.voided")[0]["status"], "voided");
        assert_eq!(
            by_type("payment.authorization_reduced")[0]["amount"],
            "2.50"
        );
        assert_eq!(by_type("payment.expired")[0]["status"], "expired");

        let transfers = by_type("transfer.created");
        let ids = accounts_on(SHARD, 3);
        assert_eq!(transfers[0]["transfer_id"], "t1");
        assert_eq!(transfers[0]["amount"], "12.34");
        assert_eq!(transfers[0]["currency"], "EUR");
        assert_eq!(transfers[0]["from_account"], ids[2].0.to_string());
        assert_eq!(transfers[0]["to_account"], ids[0].0.to_string());
        assert_eq!(transfers[1]["transfer_id"], "t2");
        assert!(
            !transfers[1].contains_key("to_account"),
            "remote credit: {:?}",
            transfers[1]
        );
    }

    #[test]
    fn maxlen_bounds_the_stream() {
        let mut t = TestStream::new("maxlen");
        let mut sink = t.sink(10);
        let mut b = Builder::new();
        for _ in 0..300 {
            b.authorize(1_00, true, 1_000);
        }
        for chunk in b.records.chunks(50) {
            sink.apply(SHARD, chunk).unwrap();
        }
        assert_eq!(sink.progress(SHARD).unwrap(), b.records.last().unwrap().lsn);
        let len = t.len();
        // `MAXLEN ~` trims whole stream nodes (100 entries by default): approximately 10.
        assert!(len <= 10 + 100, "stream length {len} (of 300 events)");
        let newest = t.entries().pop().unwrap();
        assert_eq!(newest["lsn"], b.records.last().unwrap().lsn.0.to_string());
    }

    #[test]
    fn unreachable_redis_is_an_error_and_a_non_stream_key_is_refused() {
        let mut down = RedisSink::new("redis://127.0.0.1:1/", "s", 10);
        let err = down.progress(SHARD).unwrap_err();
        assert!(err.0.contains("127.0.0.1:1"), "{err}");
        assert!(down.conn.is_none());

        let mut t = TestStream::new("wrongtype");
        redis::cmd("SET")
            .arg(&t.name)
            .arg("x")
            .exec(&mut t.conn)
            .unwrap();
        let mut sink = t.sink(10);
        let (records, _) = scenario();
        let err = sink.apply(SHARD, &records).unwrap_err();
        assert!(err.0.contains("not a stream"), "{err}");
        assert!(sink.conn.is_none(), "errors drop the connection");
        assert_eq!(sink.progress(SHARD).unwrap(), Lsn(0), "nothing stored");
    }
}
