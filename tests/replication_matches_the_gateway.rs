//! After mixed load on several shards, PostgreSQL matches the gateway exactly (`corepay
//! reconcile` finds no difference, journal sums are zero) and the Redis stream holds each
//! event once, across a kill -9 of the gateway in the middle. Real PostgreSQL and Redis on
//! this machine (scripts/services.sh starts them): if they cannot be reached, this fails.
mod common;
use common::*;
use std::time::Duration;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const REDIS_URL: &str = "redis://127.0.0.1:6379/";

fn load(s: &Server, key: &str, pans: &[String], round: u32) {
    let mut m = Client::with_key(s.http, key);
    for (i, pan) in pans.iter().enumerate() {
        let body = format!(
            r#"{{"amount":"{}.00","currency":"EUR","card":{{"number":"{pan}","exp_month":12,"exp_year":2030}},"capture":{}}}"#,
            10 + i,
            i % 2 == 0
        );
        let (status, p) = m.post("/v1/payments", &body);
        assert_eq!(status, 201, "{p}");
        let id = p["id"].as_str().unwrap().to_string();
        if i % 2 == 1 {
            let (status, c) = m.post(
                &format!("/v1/payments/{id}/capture"),
                r#"{"amount":"5.00"}"#,
            );
            assert_eq!(status, 200, "{c}");
        }
        let (status, r) = m.post(
            &format!("/v1/payments/{id}/refunds"),
            r#"{"amount":"1.00"}"#,
        );
        assert_eq!(status, 200, "{r}");
        if round % 2 == 0 {
            let (status, v) = m.post(
                "/v1/payments",
                &body.replace("\"capture\":true", "\"capture\":false"),
            );
            assert!(status == 201, "{v}");
            let vid = v["id"].as_str().unwrap();
            if v["status"] == "authorized" {
                let (status, _) = m.post(&format!("/v1/payments/{vid}/void"), "");
                assert_eq!(status, 200);
            }
        }
    }
    let transfer =
        format!(r#"{{"id":"t-{round}","from":100,"to":101,"amount":"1.00","currency":"EUR"}}"#);
    let (status, t) = s.admin().post("/v1/transfers", &transfer);
    assert_eq!(status, 201, "{t}");
}

#[test]
fn postgres_and_redis_match_the_gateway_through_a_crash() {
    let schema = unique("corepay_test");
    let stream = unique("corepay:test");
    let config = format!(
        "[replication]\npostgres_url = \"{PG_URL}\"\npostgres_schema = \"{schema}\"\n\
         redis_url = \"{REDIS_URL}\"\nredis_stream = \"{stream}\"\nbatch_records = 50\n"
    );
    let mut s = Server::start_with(3, &config);
    create_account(&s, 1, "EUR", "0.00");
    create_account(&s, 2, "EUR", "0.00");
    create_account(&s, 100, "EUR", "500.00");
    create_account(&s, 101, "EUR", "0.00");
    let mut pans = Vec::new();
    for i in 0..6u64 {
        let pan = card_number(&format!("4000005555{i:05}"));
        create_account(&s, 1000 + i, "EUR", "10000.00");
        create_card(&s, &pan, 1000 + i);
        pans.push(pan);
    }
    let key = create_merchant(&s, "REPLSHOP", 1);

    for round in 0..4 {
        load(&s, &key, &pans, round);
        if round == 1 {
            s.kill9();
            s.spawn();
        }
    }
    wait_reconciled_within(&s, "after the load", Duration::from_secs(60));

    // Redis: every event once, and the stream names every payment.
    let client = redis::Client::open(REDIS_URL).expect("a Redis URL");
    let mut conn = client
        .get_connection()
        .expect("Redis must be reachable (scripts/services.sh starts it)");
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query::<redis::streams::StreamRangeReply>(&mut conn)
        .expect("XRANGE")
        .ids
        .into_iter()
        .map(|e| {
            let fields = e
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap_or_default()))
                .collect();
            (e.id, fields)
        })
        .collect();
    assert!(
        entries.len() > 50,
        "events were published: {}",
        entries.len()
    );
    let mut ids = std::collections::HashSet::new();
    for (_, fields) in &entries {
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
        let event_id = get("event_id").expect("every event has an event_id");
        assert!(
            ids.insert(event_id.to_string()),
            "event {event_id} published twice"
        );
        for pan in &pans {
            assert!(
                fields.iter().all(|(_, v)| !v.contains(pan.as_str())),
                "a PAN in an event"
            );
        }
    }
    // SIGTERM with the sink threads running: a clean drain, exit 0 (a signal delivered to a
    // sink thread once killed the process).
    assert!(s.terminate().success(), "{}", s.log());
    assert!(s.log().contains("stopped cleanly"));
    for key in [stream.clone()]
        .into_iter()
        .chain((0..3).map(|k| format!("{stream}:progress:{k}")))
    {
        let _: () = redis::cmd("DEL").arg(&key).query(&mut conn).unwrap_or(());
    }
    let mut pg =
        postgres::Client::connect(PG_URL, postgres::NoTls).expect("PostgreSQL must be reachable");
    pg.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}
