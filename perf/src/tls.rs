//! TLS for the load (`--tls CAFILE`): a rustls client that trusts only the given CA, as a
//! merchant's or acquirer's client would; ALPN http/1.1 over HTTP.

use crate::scenario::Protocol;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;

pub fn client_config(
    ca_file: &str,
    protocol: Protocol,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls {ca_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("--tls {ca_file}: no PEM CERTIFICATE in it"));
    }
    for c in certs {
        roots.add(c).map_err(|e| format!("--tls {ca_file}: {e}"))?;
    }
    let provider = corepay::tls::provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("--tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if protocol == Protocol::Http {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Arc::new(config))
}

/// The name the server's certificate must carry (a DNS name or an IP address); checked by
/// `Scenario::validate`.
pub fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_string()).expect("validated with the scenario")
}

/// `corepay-perf handshakes --addr A --tls CAFILE [--tls-name N] [--count N] [--threads T]`:
/// `count` fresh TLS connections, each a full handshake and nothing else, from `threads`
/// blocking clients at once, as fast as the server takes them (a reconnect storm after a
/// network blip). Prints handshakes per second and the handshake time's percentiles; run it
/// beside an open-loop `run --tls` to see what the burst does to requests in flight.
pub fn cmd_handshakes(a: &crate::cli::Args) -> Result<i32, String> {
    let addr: std::net::SocketAddr = a.parsed("addr")?.ok_or("handshakes: --addr ADDR")?;
    let ca = a.get("tls").ok_or("handshakes: --tls CAFILE")?.to_string();
    let name = a.get("tls-name").unwrap_or("localhost").to_string();
    let count: u64 = a.parsed("count")?.unwrap_or(2000);
    let threads: u64 = a.parsed("threads")?.unwrap_or(4).max(1);
    let core: Option<usize> = a.parsed("core")?;
    a.finish()?;
    rustls::pki_types::ServerName::try_from(name.as_str())
        .map_err(|_| format!("--tls-name {name:?}: a DNS name or an IP address"))?;
    let config = client_config(&ca, Protocol::Http)?;
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (config, name) = (config.clone(), name.clone());
            std::thread::spawn(move || {
                if let Some(core) = core {
                    pin(core);
                }
                let mut times = Vec::new();
                let mut failed = 0u64;
                for _ in (t..count).step_by(threads as usize) {
                    let at = std::time::Instant::now();
                    match handshake(addr, &config, &name) {
                        Ok(()) => times.push(at.elapsed().as_micros() as u64),
                        Err(_) => failed += 1,
                    }
                }
                (times, failed)
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut failed = 0;
    for w in workers {
        let (t, f) = w.join().map_err(|_| "a handshake thread panicked")?;
        times.extend(t);
        failed += f;
    }
    let secs = started.elapsed().as_secs_f64();
    times.sort_unstable();
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1)))
            .map_or(0.0, |&us| us as f64 / 1000.0)
    };
    println!(
        "handshakes {addr}: {} done, {failed} failed in {secs:.2} s = {:.0}/s; handshake p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        times.len(),
        times.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
    Ok(i32::from(failed > 0))
}

/// One full handshake (and a close_notify) on a new connection.
fn handshake(
    addr: std::net::SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<()> {
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    tcp.set_nodelay(true)?;
    let conn = rustls::ClientConnection::new(config.clone(), server_name(name))
        .map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    s.conn.send_close_notify();
    let _ = s.conn.complete_io(&mut s.sock);
    Ok(())
}

fn pin(core: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
