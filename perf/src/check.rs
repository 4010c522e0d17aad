//! The closing correctness check against corepay: every payment the load saw approved
//! can be read back, every currency sums to zero, and the gateway's own counters agree
//! with what the harness counted (so the harness cannot silently lie).

use crate::admin::{get_text, metric_sum, Admin};
use crate::engine::RunStats;
use crate::report::Check;
use crate::scenario::Scenario;
use crate::workload::World;
use std::net::SocketAddr;

/// The gateway's counters just before the load starts.
pub struct Before {
    payments: u64,
    http_2xx: Option<u64>,
}

pub fn before(admin: &mut Admin, metrics: Option<SocketAddr>) -> Result<Before, String> {
    Ok(Before {
        payments: payments(admin)?,
        http_2xx: metrics.map(http_2xx).transpose()?,
    })
}

fn payments(admin: &mut Admin) -> Result<u64, String> {
    let (status, v) = admin.get("/v1/ledger")?;
    if status != 200 {
        return Err(format!("GET /v1/ledger: {status} {v}"));
    }
    Ok(v["shards"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["payments"].as_u64()).sum())
        .unwrap_or(0))
}

fn http_2xx(addr: SocketAddr) -> Result<u64, String> {
    let text = get_text(addr, "/metrics")?;
    Ok(metric_sum(
        &text,
        "corepay_http_responses_total",
        "class=\"2xx\"",
    ))
}

/// Runs after the load, before any other request to the gateway (the 2xx cross-check
/// counts the check's own reads separately).
/// `merchant`: the merchant listener (and its TLS settings), where approved payments are
/// read back with their merchants' keys (the admin plane is on the operator listener).
pub fn after(
    admin: &mut Admin,
    merchant: &Scenario,
    metrics: Option<SocketAddr>,
    world: &World,
    stats: &RunStats,
    before: &Before,
) -> Result<Check, String> {
    let mut c = Check {
        harness_payments_created: stats.payments_created_all,
        harness_2xx: stats.http_2xx_all,
        ..Check::default()
    };
    if let (Some(addr), Some(b)) = (metrics, before.http_2xx) {
        let delta = http_2xx(addr)? - b;
        c.gateway_2xx_delta = Some(delta);
        if delta != stats.http_2xx_all {
            c.problems.push(format!(
                "the gateway answered {delta} requests with 2xx, the harness counted {}",
                stats.http_2xx_all
            ));
        }
    }
    let delta = payments(admin)? - before.payments;
    c.gateway_payments_delta = Some(delta);
    // ISO 8583 runs do not know their payment ids; HTTP runs count their creations.
    if stats.payments_created_all > 0 && delta != stats.payments_created_all {
        c.problems.push(format!(
            "the gateway stored {delta} payments, the harness saw {} created",
            stats.payments_created_all
        ));
    }
    let mut reader = Admin::new(merchant.addr, "");
    if let Some(ca) = &merchant.tls_ca_file {
        let config = crate::tls::client_config(ca, merchant.protocol)?;
        reader = reader.with_tls(config, &merchant.tls_server_name);
    }
    for (id, merchant) in &stats.approved_ids {
        let key = &world.merchants[*merchant].1;
        let (status, v) = reader.call("GET", &format!("/v1/payments/{id}"), key, None)?;
        c.approved_checked += 1;
        let declined = v["response_code"].as_str().is_some_and(|rc| rc != "00");
        if status != 200 || declined {
            c.approved_missing += 1;
            if c.approved_missing <= 5 {
                c.problems
                    .push(format!("approved payment {id} reads back {status} {v}"));
            }
        }
    }
    let (status, v) = admin.get("/v1/ledger")?;
    if status != 200 {
        return Err(format!("GET /v1/ledger: {status} {v}"));
    }
    c.conserved = true;
    for cur in v["currencies"].as_array().into_iter().flatten() {
        let name = cur["currency"].as_str().unwrap_or("?").to_string();
        let sum = cur["sum"].as_str().unwrap_or("?").to_string();
        let zero = sum
            .trim_start_matches('-')
            .chars()
            .all(|ch| ch == '0' || ch == '.');
        if !zero {
            c.conserved = false;
            c.problems.push(format!("{name} sums to {sum}, not zero"));
        }
        c.currency_sums.insert(name, sum);
    }
    Ok(c)
}
