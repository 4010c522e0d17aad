//! `corepay-perf drive`: authorizations through corepay's own request path in this process,
//! with no socket, no kernel and no other thread: the HTTP parse (`RequestReader`), the API
//! (`Api::handle_in`, one connection's `Session`), or the ISO 8583 flows (`IsoApi`), the
//! gateway, the ledger, the WAL writer's encoding and group commit (on `wal::sim`'s
//! in-memory disk), and the answer's bytes. Nothing in it waits for time or I/O, so under
//! callgrind it counts the same instructions every run: `instructions` runs it for two
//! request counts and takes the difference per request.

use crate::cli::Args;
use corepay::domain::{AccountId, Currency, Millis, ShardId};
use corepay::gateway::idem_index::IdemIndex;
use corepay::gateway::{Gateway, GatewayConfig, Peers};
use corepay::http::api::{Api, Session};
use corepay::http::wire::{self, Limits, RequestReader};
use corepay::iso8583::codec::{decode, encode, BitmapEncoding, Message};
use corepay::iso8583::flows::IsoApi;
use corepay::ledger::{Ledger, MerchantId, Outcome};
use corepay::shard::iso_net::FrameHandler;
use corepay::shard::mesh::Alone;
use corepay::wal::sim::SimDisk;
use corepay::wal::{recover, SyncMode, WalConfig, WalWriter};
use std::rc::Rc;

/// Card accounts the authorizations go to, in turn.
const CARDS: u64 = 256;
const MERCHANT: &str = "SHOP1";
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

pub fn cmd_drive(a: &Args) -> Result<i32, String> {
    let protocol = a.get("protocol").unwrap_or("http").to_string();
    let requests: u64 = a.parsed("requests")?.unwrap_or(1000);
    a.finish()?;
    if requests == 0 || requests > MAX_REQUESTS {
        return Err(format!("--requests: 1 to {MAX_REQUESTS}"));
    }
    if protocol != "http" && protocol != "iso8583" {
        return Err(format!("--protocol: http or iso8583, not {protocol:?}"));
    }
    let ex = glommio::LocalExecutorBuilder::default()
        .make()
        .map_err(|e| format!("executor: {e}"))?;
    let approved = ex.run(drive(protocol.clone(), requests))?;
    println!("drive: {approved} of {requests} {protocol} authorizations approved");
    Ok(if approved == requests { 0 } else { 1 })
}

async fn drive(protocol: String, requests: u64) -> Result<u64, String> {
    let disk = SimDisk::new();
    let recovered = recover(&disk, |_, _, _, _| {}).map_err(|e| e.to_string())?;
    let wal_config = WalConfig {
        segment_bytes: 64 * 1024 * 1024,
        sync: SyncMode::Fdatasync,
        max_pending_bytes: 8 * 1024 * 1024,
    };
    let wal = WalWriter::open(disk, &recovered, wal_config)
        .await
        .map_err(|e| e.to_string())?;
    let gw = Gateway::new(
        GatewayConfig::for_tests(ShardId(0), 1),
        Ledger::new(ShardId(0), 1),
        wal.clone(),
        Alone,
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

    let eur = Currency::from_alpha("EUR").expect("EUR");
    let ok = |o: Result<Outcome, _>| match o {
        Ok(Outcome::Rejected(r)) => Err(format!("provisioning rejected: {r:?}")),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("provisioning failed: {e:?}")),
    };
    ok(gw.create_account(AccountId(1), eur, 0, 0, None, None).await)?;
    for i in 0..CARDS {
        let id = AccountId(100 + i);
        ok(gw
            .create_account(id, eur, 1_000_000_000, 0, None, None)
            .await)?;
        ok(gw.create_card(pan(i), 12, 2030, id).await)?;
    }
    let (_, key) = gw
        .create_merchant(MerchantId(MERCHANT.into()), AccountId(1), 5411)
        .await
        .map_err(|e| format!("merchant: {e:?}"))?;
    let key = key.ok_or("the merchant got no API key")?;

    if protocol == "http" {
        http(&gw, &key, requests).await
    } else {
        iso(&gw, requests).await
    }
}

async fn http<D, P>(gw: &Rc<Gateway<D, P>>, key: &str, requests: u64) -> Result<u64, String>
where
    D: corepay::wal::SegmentDir + 'static,
    P: Peers + 'static,
{
    let api = Api::new(gw.clone(), ADMIN_KEY);
    // One connection, every request pipelined on it, as the harness sends them.
    let mut bytes = Vec::new();
    for k in 0..requests.max(BUILT) {
        let body = format!(
            r#"{{"amount":"{}.{:02}","currency":"EUR","card":{{"number":"{}","exp_month":12,"exp_year":2030}},"capture":false,"reference":"inproc-{k}"}}"#,
            1 + k % 90,
            k % 100,
            pan(k % CARDS)
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

async fn iso<D, P>(gw: &Rc<Gateway<D, P>>, requests: u64) -> Result<u64, String>
where
    D: corepay::wal::SegmentDir + 'static,
    P: Peers + 'static,
{
    let api = IsoApi::new(gw.clone(), BitmapEncoding::Binary);
    let mut frames = Vec::with_capacity(requests.max(BUILT) as usize);
    for k in 0..requests.max(BUILT) {
        let mut m = Message::new(*b"0100");
        m.set(2, pan(k % CARDS).as_bytes());
        m.set(3, b"000000");
        m.set(4, format!("{:012}", 100 + k % 9000).as_bytes());
        m.set(7, b"0115120000");
        m.set(11, format!("{:06}", k % 999_999 + 1).as_bytes());
        m.set(12, b"120000");
        m.set(13, b"0115");
        m.set(14, b"3012");
        m.set(32, b"4711");
        m.set(41, b"TERM0001");
        m.set(42, format!("{MERCHANT:<15}").as_bytes());
        m.set(49, b"978");
        let mut frame = Vec::new();
        encode(&m, BitmapEncoding::Binary, &mut frame).map_err(|e| format!("{e:?}"))?;
        frames.push(frame);
    }
    let mut answers = Vec::with_capacity(requests as usize);
    for frame in &frames[..requests as usize] {
        let answer = FrameHandler::handle(&api, frame)
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
        let protocol = protocol.to_string();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || drive(protocol, requests))
            .expect("an executor")
            .join()
            .expect("it ran")
            .expect("the drive ran")
    }

    /// The path `instructions` counts is the real one: every authorization it drives is
    /// approved, over HTTP and over ISO 8583.
    #[test]
    fn every_driven_authorization_is_approved() {
        assert_eq!(drive_on_executor("http", 50), 50);
        assert_eq!(drive_on_executor("iso8583", 50), 50);
    }
}
