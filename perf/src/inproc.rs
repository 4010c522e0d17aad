//! `corepay-perf drive`: authorizations through corepay's own request path in this process,
//! with no socket, no kernel and no other thread: the HTTP parse (`RequestReader`), the API
//! (`Api::handle_in`, one connection's `Session`), or the ISO 8583 flows (`IsoApi`), the
//! gateway, the ledger, the WAL writer's encoding and group commit (onto `NullDisk`, which
//! keeps nothing), and the answer's bytes. Nothing in it waits for time or I/O, so under
//! callgrind it counts the same instructions every run: `instructions` runs it for two
//! request counts and takes the difference per request.

use crate::cli::Args;
use corepay::domain::{AccountId, Currency, Millis, ShardId};
use corepay::gateway::idem_index::IdemIndex;
use corepay::gateway::msg::{Reply, Request};
use corepay::gateway::{Gateway, GatewayConfig, Peers};
use corepay::http::api::{Api, Session};
use corepay::http::wire::{self, Limits, RequestReader};
use corepay::iso8583::codec::{decode, encode, BitmapEncoding, Message};
use corepay::iso8583::flows::IsoApi;
use corepay::ledger::{Ledger, MerchantId, Outcome};
use corepay::shard::iso_net::FrameHandler;
use corepay::shard::mesh::Alone;
use corepay::shard::routing::{shard_of_account, shard_of_card, shard_of_merchant};
use corepay::wal::sim::SimDisk;
use corepay::wal::{recover, SegmentDir, SegmentFile, SyncMode, WalConfig, WalWriter};
use std::cell::RefCell;
use std::pin::Pin;
use std::rc::{Rc, Weak};

/// Card accounts the authorizations go to, in turn.
const CARDS: u64 = 256;
const ADMIN_KEY: &str = "ak_corepay_inproc_driver_0001";
/// Most requests one run drives (the idempotency index is sized for them, with no store).
const MAX_REQUESTS: u64 = 65_536;
/// Requests built in every run, however many are driven (at least this many): building
/// them is then the same work in every run, and `instructions`' difference leaves it out.
const BUILT: u64 = 1200;

/// A fixed clock: the same run, the same instructions (2027-01-15, before 12/2030).
fn clock() -> Millis {
    Millis(1_800_000_000_000)
}

fn pan(i: u64) -> String {
    corepay::secrets::with_luhn_digit(&format!("40000000{i:07}"))
}

/// What one `drive` run does.
#[derive(Clone, Debug)]
pub struct Drive {
    pub protocol: String,
    pub requests: u64,
    /// Shards, each on an executor (thread) of its own, joined by the real ring mesh
    /// (`shard::mesh`); the requests arrive on shard 0.
    pub shards: u16,
    /// Percent of authorizations whose card and account live on another shard than the
    /// connection's (the merchant lives on the connection's shard).
    pub cross_pct: u64,
    /// Connections driven at once on shard 0, each with its share of the requests.
    pub connections: u64,
}

pub fn cmd_drive(a: &Args) -> Result<i32, String> {
    let d = Drive {
        protocol: a.get("protocol").unwrap_or("http").to_string(),
        requests: a.parsed("requests")?.unwrap_or(1000),
        shards: a.parsed("shards")?.unwrap_or(1),
        cross_pct: a.parsed("cross-pct")?.unwrap_or(0),
        connections: a.parsed("connections")?.unwrap_or(1),
    };
    a.finish()?;
    if d.requests == 0 || d.requests > MAX_REQUESTS {
        return Err(format!("--requests: 1 to {MAX_REQUESTS}"));
    }
    if d.protocol != "http" && d.protocol != "iso8583" {
        return Err(format!("--protocol: http or iso8583, not {:?}", d.protocol));
    }
    if !(1..=2).contains(&d.shards) {
        return Err("--shards: 1 or 2".into());
    }
    if d.cross_pct > 100 || (d.shards == 1 && d.cross_pct > 0) {
        return Err("--cross-pct: 0 to 100, and 0 with one shard".into());
    }
    if d.connections == 0 || d.connections > 64 || !d.requests.is_multiple_of(d.connections) {
        return Err("--connections: 1 to 64, dividing --requests".into());
    }
    let approved = run_drive(&d)?;
    println!(
        "drive: {approved} of {} {} authorizations approved ({} shard(s), {}% cross-shard, {} connection(s))",
        d.requests, d.protocol, d.shards, d.cross_pct, d.connections
    );
    Ok(if approved == d.requests { 0 } else { 1 })
}

/// Runs `d` on fresh executors; the authorizations approved.
pub fn run_drive(d: &Drive) -> Result<u64, String> {
    if d.shards == 1 {
        let d = d.clone();
        return glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let gw = gateway(ShardId(0), 1, Alone).await?;
                drive(&gw, &d).await
            })
            .map_err(|e| format!("executor: {e}"))?
            .join()
            .map_err(|e| format!("executor: {e:?}"))?;
    }
    // Two shards on this one thread, each hop a task on the callee's gateway: see `Hop`.
    let d = d.clone();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let all: Shards = Rc::new(RefCell::new(Vec::new()));
            let mut gws = Vec::new();
            for shard in 0..2 {
                let peers = Hop {
                    me: ShardId(shard),
                    all: all.clone(),
                };
                let gw = gateway(ShardId(shard), 2, peers).await?;
                all.borrow_mut().push(Rc::downgrade(&gw));
                gws.push(gw);
            }
            drive(&gws[0], &d).await
        })
        .map_err(|e| format!("executor: {e}"))?
        .join()
        .map_err(|e| format!("executor: {e:?}"))?
}

type Shards = Rc<RefCell<Vec<Weak<Gateway<NullDisk, Hop>>>>>;

/// `Peers` between gateways on one executor, for counting instructions: a call runs as a
/// task on the callee's gateway (`Gateway::handle`) whose reply goes back to the caller, and
/// a post is applied in order by a task (`Gateway::handle_in_order`), as `shard::mesh`'s
/// receive loops do. What it leaves out is the ring itself: the SPSC push and pop and the
/// wake of a parked executor, timed by the `ring` group of benches/primitives.rs. (Two
/// executors under callgrind deadlock: valgrind runs one thread at a time, and a parked
/// executor blocks inside `io_uring_enter` without letting the other run.)
struct Hop {
    me: ShardId,
    all: Shards,
}

impl Hop {
    fn peer(&self, to: ShardId) -> Option<Rc<Gateway<NullDisk, Hop>>> {
        assert_ne!(to, self.me, "calls to oneself skip the ring");
        self.all.borrow().get(to.index()).and_then(Weak::upgrade)
    }
}

impl Peers for Hop {
    fn call(&self, to: ShardId, req: Request) -> impl std::future::Future<Output = Reply> {
        let peer = self.peer(to);
        async move {
            match peer {
                Some(gw) => glommio::spawn_local(async move { gw.handle(req).await }).await,
                None => Reply::Unavailable,
            }
        }
    }
    fn post(&self, to: ShardId, req: Request) {
        if let Some(gw) = self.peer(to) {
            glommio::spawn_local(async move {
                assert!(gw.handle_in_order(&req), "only credits and acks are posted");
            })
            .detach();
        }
    }
    fn spawn(&self, fut: Pin<Box<dyn std::future::Future<Output = ()>>>) {
        glommio::spawn_local(fut).detach();
    }
    async fn sleep(&self, d: std::time::Duration) {
        glommio::timer::sleep(d).await;
    }
}

/// A disk that takes every write and sync at once and keeps nothing: what the WAL writer
/// hands a real disk costs user space no more than a submission (the kernel does the rest,
/// and callgrind counts user space only). `wal::sim`'s disk would be counted instead: its
/// sector bookkeeping and copies cost more instructions than the gateway's own WAL code.
#[derive(Clone, Copy)]
pub struct NullDisk;

impl SegmentFile for NullDisk {
    async fn write_at(&self, _data: &[u8], _pos: u64) -> std::io::Result<()> {
        Ok(())
    }
    async fn sync(&self) -> std::io::Result<()> {
        // A real sync completes later: the appends made meanwhile join the next batch.
        futures_lite::future::yield_now().await;
        Ok(())
    }
}

impl SegmentDir for NullDisk {
    type File = NullDisk;
    async fn create(&self, _name: &str, _len: u64) -> std::io::Result<(NullDisk, bool)> {
        Ok((NullDisk, false))
    }
    async fn open(&self, _name: &str) -> std::io::Result<NullDisk> {
        Ok(NullDisk)
    }
}

/// A gateway whose WAL writes to `NullDisk`, with its flusher running.
async fn gateway<P: Peers + 'static>(
    shard: ShardId,
    shards: u16,
    peers: P,
) -> Result<Rc<Gateway<NullDisk, P>>, String> {
    // An empty log, as recovery reports it.
    let recovered = recover(&SimDisk::new(), |_, _, _, _| {}).map_err(|e| e.to_string())?;
    let disk = NullDisk;
    let wal_config = WalConfig {
        segment_bytes: 64 * 1024 * 1024,
        sync: SyncMode::Fdatasync,
        max_pending_bytes: 8 * 1024 * 1024,
    };
    let wal = WalWriter::open(disk, &recovered, wal_config)
        .await
        .map_err(|e| e.to_string())?;
    let gw = Gateway::new(
        GatewayConfig::for_tests(shard, shards),
        Ledger::new(shard, shards),
        wal.clone(),
        peers,
        // ISO 8583 requests are keyed (acquirer, terminal, STAN, DE7): room for every one.
        IdemIndex::new(86_400_000, MAX_REQUESTS as usize, false, Millis(0)),
        clock,
        None,
    );
    let flusher = wal.clone();
    glommio::spawn_local(async move {
        let _ = flusher.run_flusher().await;
    })
    .detach();
    Ok(gw)
}

/// The cards the authorizations use, in turn, each with its account: with one shard,
/// `pan(0..CARDS)` on accounts `100..`; with two, cards whose card record and account both
/// live on shard 1 ("cross-shard") at `cross_pct` of the places, spread evenly, the others
/// both on shard 0.
fn cards(shards: u16, cross_pct: u64) -> Vec<(String, AccountId)> {
    if shards == 1 {
        return (0..CARDS).map(|i| (pan(i), AccountId(100 + i))).collect();
    }
    let key = GatewayConfig::for_tests(ShardId(0), shards).pan_key;
    let (mut pans, mut accounts) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let mut i = 0;
    let short = |n: usize| n < CARDS as usize;
    while pans.iter().any(|v| short(v.len())) || accounts.iter().any(|v| short(v.len())) {
        let p = pan(i);
        pans[shard_of_card(&key.hash_pan(&p), shards).index()].push(p);
        let a = AccountId(100 + i);
        accounts[shard_of_account(a, shards).index()].push(a);
        i += 1;
    }
    (0..CARDS as usize)
        .map(|i| {
            // Bresenham: place i is cross-shard when it carries the count over a percent.
            let cross = (i as u64 + 1) * cross_pct / 100 > i as u64 * cross_pct / 100;
            let s = usize::from(cross);
            (pans[s][i].clone(), accounts[s][i])
        })
        .collect()
}

/// A merchant id that lives on shard 0.
fn merchant(shards: u16) -> String {
    (1..)
        .map(|n| format!("SHOP{n}"))
        .find(|m| shard_of_merchant(&MerchantId(m.as_str().into()), shards) == ShardId(0))
        .expect("some merchant id hashes to shard 0")
}

async fn drive<D, P>(gw: &Rc<Gateway<D, P>>, d: &Drive) -> Result<u64, String>
where
    D: corepay::wal::SegmentDir + 'static,
    P: Peers + 'static,
{
    let eur = Currency::from_alpha("EUR").expect("EUR");
    let ok = |o: Result<Outcome, _>| match o {
        Ok(Outcome::Rejected(r)) => Err(format!("provisioning rejected: {r:?}")),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("provisioning failed: {e:?}")),
    };
    ok(gw.create_account(AccountId(1), eur, 0, 0, None, None).await)?;
    let cards = cards(d.shards, d.cross_pct);
    for (pan, id) in &cards {
        ok(gw
            .create_account(*id, eur, 1_000_000_000, 0, None, None)
            .await)?;
        ok(gw.create_card(pan.as_str().into(), 12, 2030, *id).await)?;
    }
    let merchant = merchant(d.shards);
    let (_, key) = gw
        .create_merchant(MerchantId(merchant.as_str().into()), AccountId(1), 5411)
        .await
        .map_err(|e| format!("merchant: {e:?}"))?;
    let key = key.ok_or("the merchant got no API key")?;
    let pans: Vec<String> = cards.into_iter().map(|(pan, _)| pan).collect();

    let each = d.requests / d.connections;
    let built = BUILT.max(d.requests) / d.connections;
    let mut tasks = Vec::new();
    for c in 0..d.connections {
        let (gw, key, pans, merchant) = (gw.clone(), key.clone(), pans.clone(), merchant.clone());
        let protocol = d.protocol.clone();
        tasks.push(glommio::spawn_local(async move {
            // Each connection has its own cards' turn and STANs.
            let first = c * built;
            if protocol == "http" {
                http(&gw, &key, &pans, first, built, each).await
            } else {
                iso(&gw, &merchant, &pans, first, built, each).await
            }
        }));
    }
    let mut approved = 0;
    for t in tasks {
        approved += t.await?;
    }
    Ok(approved)
}

/// `requests` of the `built` requests `first..first + built`, on one connection.
async fn http<D, P>(
    gw: &Rc<Gateway<D, P>>,
    key: &str,
    pans: &[String],
    first: u64,
    built: u64,
    requests: u64,
) -> Result<u64, String>
where
    D: corepay::wal::SegmentDir + 'static,
    P: Peers + 'static,
{
    let api = Api::new(gw.clone(), ADMIN_KEY, corepay::http::api::Plane::Merchant);
    // One connection, every request pipelined on it, as the harness sends them.
    let mut bytes = Vec::new();
    for k in first..first + built {
        let body = format!(
            r#"{{"amount":"{}.{:02}","currency":"EUR","card":{{"number":"{}","exp_month":12,"exp_year":2030}},"capture":false,"reference":"inproc-{k}"}}"#,
            1 + k % 90,
            k % 100,
            pans[(k % CARDS) as usize]
        );
        bytes.extend_from_slice(
            format!(
                "POST /v1/payments HTTP/1.1\r\nHost: corepay\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let mut reader = RequestReader::new(futures_lite::io::Cursor::new(bytes), Limits::default());
    let mut session = Session::default();
    let mut out = Vec::with_capacity(2048);
    let mut approved = 0;
    for _ in 0..requests {
        let req = reader.next().await.map_err(|e| format!("request: {e}"))?;
        let r = api.handle_in(&req, &mut session).await;
        out.clear();
        wire::write_response(&mut out, r.status, &[], "application/json", &r.body, true);
        if r.status == 201 {
            approved += 1;
        }
    }
    Ok(approved)
}

/// `requests` of the `built` 0100s `first..first + built`, on one connection.
async fn iso<D, P>(
    gw: &Rc<Gateway<D, P>>,
    merchant: &str,
    pans: &[String],
    first: u64,
    built: u64,
    requests: u64,
) -> Result<u64, String>
where
    D: corepay::wal::SegmentDir + 'static,
    P: Peers + 'static,
{
    let api = IsoApi::new(gw.clone(), BitmapEncoding::Binary);
    let peer = api.peer(None);
    let mut frames = Vec::with_capacity(built as usize);
    for k in first..first + built {
        let mut m = Message::new(*b"0100");
        m.set(2, pans[(k % CARDS) as usize].as_bytes());
        m.set(3, b"000000");
        m.set(4, format!("{:012}", 100 + k % 9000).as_bytes());
        m.set(7, b"0115120000");
        m.set(11, format!("{:06}", k % 999_999 + 1).as_bytes());
        m.set(12, b"120000");
        m.set(13, b"0115");
        m.set(14, b"3012");
        m.set(32, b"4711");
        m.set(41, b"TERM0001");
        m.set(42, format!("{merchant:<15}").as_bytes());
        m.set(49, b"978");
        let mut frame = Vec::new();
        encode(&m, BitmapEncoding::Binary, &mut frame).map_err(|e| format!("{e:?}"))?;
        frames.push(frame);
    }
    let mut answers = Vec::with_capacity(requests as usize);
    for frame in &frames[..requests as usize] {
        let answer = FrameHandler::handle(&api, frame, &peer)
            .await
            .ok_or("a 0100 closed the connection")?;
        answers.push(answer);
    }
    // Checked after the loop, for every answer (part of the count: a small decode each).
    let mut approved = 0;
    for answer in &answers {
        let m = decode(answer, BitmapEncoding::Binary).map_err(|e| format!("{e:?}"))?;
        if m.get(39) == Some(b"00".as_slice()) {
            approved += 1;
        }
    }
    Ok(approved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive_on_executor(protocol: &str, requests: u64) -> u64 {
        run_drive(&Drive {
            protocol: protocol.to_string(),
            requests,
            shards: 1,
            cross_pct: 0,
            connections: 1,
        })
        .expect("the drive ran")
    }

    /// The path `instructions` counts is the real one: every authorization it drives is
    /// approved, over HTTP and over ISO 8583.
    #[test]
    fn every_driven_authorization_is_approved() {
        assert_eq!(drive_on_executor("http", 50), 50);
        assert_eq!(drive_on_executor("iso8583", 50), 50);
    }

    /// With two shards, the cross-shard share is what was asked for, and every
    /// authorization, over the rings or not, is approved.
    #[test]
    fn two_shards_drive_cross_shard_authorizations() {
        let shards = 2;
        let cards = cards(shards, 30);
        let key = GatewayConfig::for_tests(ShardId(0), shards).pan_key;
        let cross = cards
            .iter()
            .filter(|(pan, account)| {
                let card = shard_of_card(&key.hash_pan(pan), shards);
                assert_eq!(card, shard_of_account(*account, shards));
                card == ShardId(1)
            })
            .count();
        assert_eq!(cross, 256 * 30 / 100, "30% of 256 places, rounded down");
        assert_eq!(
            shard_of_merchant(&MerchantId(merchant(shards).into()), shards),
            ShardId(0)
        );
        for protocol in ["http", "iso8583"] {
            let d = Drive {
                protocol: protocol.into(),
                requests: 64,
                shards,
                cross_pct: 30,
                connections: 8,
            };
            assert_eq!(run_drive(&d), Ok(64), "{protocol}");
        }
    }
}
