//! A sink further behind than the store's change log keeps (`replication.max_retained_bytes`)
//! is re-seeded from the store when it returns (a full copy as of one LSN, then the change
//! log), never left with a gap: PostgreSQL (its progress row locked while thousands of
//! payments go by) and Redis (writes paused) come back to a change log that no longer has
//! what they need, are re-seeded, and `corepay reconcile` passes; a kill -9 while they
//! re-seed loses nothing; replication goes on normally after it. The log, `/metrics` and
//! PostgreSQL's `reseeds` table say which sink, from where and what happened. Real PostgreSQL
//! and Redis on this machine (scripts/services.sh starts them): without them this fails.
mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const REDIS_URL: &str = "redis://127.0.0.1:6379/";
/// Records written while the sinks are away, at least: change-log entries are about a
/// hundred bytes or more, so on each of the two shards this is well past the 64 KiB the
/// change log keeps here.
const RECORDS_WHILE_AWAY: u64 = 4_000;
/// How long replication (a re-seed included) may take to match the gateway.
const RECONCILE_WITHIN: Duration = Duration::from_secs(90);

fn total_durable(s: &Server) -> u64 {
    s.ledger()["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["wal_durable_lsn"].as_u64().unwrap())
        .sum()
}

/// `threads` clients making sales until `stop`; returns the ids of the approved ones.
fn sales(
    s: &Server,
    key: &str,
    pans: &[String],
    threads: usize,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    (0..threads)
        .map(|t| {
            let (addr, key, stop, count) = (s.http, key.to_string(), stop.clone(), count.clone());
            let pans = pans.to_vec();
            std::thread::spawn(move || {
                let mut m = Client::with_key(addr, &key);
                let mut ids = Vec::new();
                let mut i = t;
                while !stop.load(Ordering::SeqCst) {
                    let pan = &pans[i % pans.len()];
                    i += threads;
                    let body = format!(
                        r#"{{"amount":"1.{:02}","currency":"EUR","card":{{"number":"{pan}","exp_month":12,"exp_year":2030}},"capture":true}}"#,
                        i % 100
                    );
                    let r = m.request("POST", "/v1/payments", Some(&body), &[]);
                    match r.status {
                        201 => {
                            ids.push(r.body["id"].as_str().unwrap().to_string());
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        503 => std::thread::sleep(Duration::from_millis(10)),
                        other => panic!("a sale answered {other}: {}", r.body),
                    }
                }
                ids
            })
        })
        .collect()
}

/// A transfer from account 100 to 101, repeated (same id) while it is answered 503, as a
/// client would: a debug build can be slow to look up a transfer id in the store.
fn transfer(s: &Server, id: &str, amount: &str) {
    let body =
        format!(r#"{{"id":"{id}","from":100,"to":101,"amount":"{amount}","currency":"EUR"}}"#);
    for _ in 0..50 {
        let (status, t) = s.admin().post("/v1/transfers", &body);
        if status != 503 {
            assert_eq!(status, 201, "{t}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("transfer {id} answered 503 fifty times");
}

fn metric(s: &Server, name: &str, sink: &str) -> u64 {
    let (_, _, body) = raw_get(s.operator, "/metrics").expect("metrics");
    body.lines()
        .filter(|l| l.starts_with(&format!("corepay_{name}{{sink=\"{sink}\"")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn sinks_that_fell_behind_the_change_log_are_reseeded() {
    let schema = unique("corepay_test");
    let stream = unique("corepay:reseed");
    let config = format!(
        "[replication]\npostgres_url = \"{PG_URL}\"\npostgres_schema = \"{schema}\"\n\
         redis_url = \"{REDIS_URL}\"\nredis_stream = \"{stream}\"\nbatch_records = 200\n\
         max_retained_bytes = 65536\n"
    );
    let mut s = Server::start_with(2, &config);
    create_account(&s, 1, "EUR", "0.00");
    create_account(&s, 100, "EUR", "500.00");
    create_account(&s, 101, "EUR", "0.00");
    let mut pans = Vec::new();
    for i in 0..8u64 {
        let pan = card_number(&format!("4000007777{i:05}"));
        create_account(&s, 1000 + i, "EUR", "100000.00");
        create_card(&s, &pan, 1000 + i);
        pans.push(pan);
    }
    let key = create_merchant(&s, "RESEEDSHOP", 1);
    transfer(&s, "t-before", "3.00");
    wait_reconciled_within(&s, "before the outage", RECONCILE_WITHIN);

    // ---- the sinks go away: PostgreSQL's progress row locked, Redis writes paused.
    let mut pg = postgres::Client::connect(PG_URL, postgres::NoTls)
        .expect("PostgreSQL must be reachable (scripts/services.sh starts it)");
    let mut lock = pg.transaction().unwrap();
    lock.batch_execute(&format!(
        "LOCK TABLE \"{schema}\".progress IN ACCESS EXCLUSIVE MODE"
    ))
    .unwrap();
    let mut redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_connection()
        .expect("Redis must be reachable (scripts/services.sh starts it)");
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(120_000)
        .arg("WRITE")
        .exec(&mut redis)
        .unwrap();
    let unpause =
        |redis: &mut redis::Connection| redis::cmd("CLIENT").arg("UNPAUSE").exec(redis).unwrap();

    let start = total_durable(&s);
    let (stop, count) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients = sales(&s, &key, &pans, 6, stop.clone(), count.clone());
    let deadline = Instant::now() + Duration::from_secs(240);
    while total_durable(&s) < start + RECORDS_WHILE_AWAY {
        assert!(
            Instant::now() < deadline,
            "the load made only {} records",
            total_durable(&s) - start
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    let mut approved: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let lag = metric(&s, "replication_lag_records", "postgres");
    println!(
        "while away: {} sales approved, {} records; PostgreSQL lag {lag} records",
        approved.len(),
        total_durable(&s) - start
    );
    assert!(lag >= RECORDS_WHILE_AWAY / 2, "lag {lag} shows in /metrics");

    // ---- they return; the gateway is killed while re-seeding, and started again.
    lock.rollback().unwrap();
    unpause(&mut redis);
    let seen_before_kill = Instant::now();
    while !s.log().contains("re-seeding it from the store")
        && seen_before_kill.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        s.log().contains("re-seeding it from the store"),
        "no re-seed began:\n{}",
        s.log()
    );
    let done_before_kill = s.log().matches("re-seeded as of lsn").count();
    s.kill9();
    println!("killed with {done_before_kill} re-seeds done");
    s.spawn();
    wait_reconciled_within(&s, "after the re-seed", RECONCILE_WITHIN);

    let log = s.log();
    for sink in ["postgres", "redis"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("{sink} shard")) && l.contains("re-seeded as of lsn")),
            "{sink} was never re-seeded:\n{log}"
        );
        // /metrics counts this process's re-seeds (the kill may have come after some).
        let since_restart = &log[log.rfind("recovered ").expect("a start line")..];
        let here = since_restart
            .lines()
            .filter(|l| l.contains(&format!("{sink} shard")) && l.contains("re-seeded as of lsn"))
            .count() as u64;
        assert_eq!(
            metric(&s, "replication_reseeds_total", sink),
            here,
            "{sink}: /metrics counts the re-seeds since the restart"
        );
        assert_eq!(
            metric(&s, "replication_gap", sink),
            0,
            "{sink}: no gap left"
        );
    }
    let reseeds: i64 = pg
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".reseeds"), &[])
        .unwrap()
        .get(0);
    assert!(reseeds >= 1, "PostgreSQL records the re-seed");
    let summed: i64 = pg
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".journal WHERE kind = 'reseed'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(summed >= 2, "the missed journal entries were summed");
    // Every approved sale is in PostgreSQL (a re-seed copies every payment).
    let ids: Vec<String> = approved.clone();
    let found: i64 = pg
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".payments WHERE id = ANY($1)"),
            &[&ids],
        )
        .unwrap()
        .get(0);
    assert_eq!(found as usize, ids.len(), "every approved sale replicated");

    // ---- afterwards replication follows the change log again, record by record.
    let journal_before: i64 = pg
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".journal"), &[])
        .unwrap()
        .get(0);
    let (stop, count) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients = sales(&s, &key, &pans, 2, stop.clone(), count.clone());
    while count.load(Ordering::SeqCst) < 200 {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    let after: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    transfer(&s, "t-after", "2.00");
    wait_reconciled_within(&s, "after the re-seed, more load", RECONCILE_WITHIN);
    let journal_after: i64 = pg
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".journal"), &[])
        .unwrap()
        .get(0);
    assert!(
        journal_after >= journal_before + 2 * after.len() as i64,
        "each later sale has its own journal entries ({journal_before} → {journal_after})"
    );
    approved.extend(after);

    // Redis: the re-seed is an event, and no event is there twice.
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query(&mut redis)
        .unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut reseed_events = 0;
    for e in &entries.ids {
        let get = |k: &str| e.get::<String>(k);
        let id = get("event_id").expect("event_id");
        assert!(ids.insert(id.clone()), "event {id} published twice");
        if get("type").as_deref() == Some("replication.reseed") {
            reseed_events += 1;
            assert!(get("missing_from").is_some() && get("lsn").is_some());
        }
    }
    assert!(reseed_events >= 1, "the stream says it was re-seeded");
    println!(
        "{} sales, {} re-seeds recorded in PostgreSQL, {reseed_events} in the stream",
        approved.len(),
        reseeds
    );
    for k in [
        stream.clone(),
        format!("{stream}:progress:0"),
        format!("{stream}:progress:1"),
    ] {
        let _: () = redis::cmd("DEL").arg(&k).query(&mut redis).unwrap();
    }
    let _ = pg.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"));
    drop(count);
}
