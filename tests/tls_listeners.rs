//! TLS on both public listeners (issue 12): HTTPS on the merchant API, mutual TLS on the
//! ISO 8583 listener, refusals of what is not TLS, start-up errors naming the key, and
//! SIGHUP reloading certificates without dropping established connections. Real processes,
//! real sockets, certificates made here (rcgen, ECDSA P-256) and a real rustls client.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A certificate with its key, and where both were written.
struct Issued {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Issued {
    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
    /// Writes `<name>.pem` and `<name>.key` into `dir`; returns their paths.
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, self.cert.pem()).unwrap();
        std::fs::write(&k, self.key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn ca(name: &str) -> Issued {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let cert = p.self_signed(&key).unwrap();
    Issued { cert, key }
}

fn leaf(ca: &Issued, cn: &str, client: bool) -> Issued {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    Issued { cert, key }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS client trusting `ca`, offering `versions`, with a client certificate when given.
fn tls_connect(
    addr: SocketAddr,
    ca: &Issued,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client: Option<&Issued>,
    alpn: bool,
) -> std::io::Result<Tls> {
    let provider = corepay::tls::provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(vec![c.der()], c.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    if alpn {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

const V13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const V12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// One HTTP/1.1 request over any stream (keep-alive): (status, body).
fn http<S: Read + Write>(
    s: &mut S,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, Value)> {
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {bearer}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    s.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let v = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    Ok((status, v))
}

/// Everything the server sends until it closes (or 10 s pass).
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A TLS 1.0 ClientHello (one cipher suite, no extensions): what an old client sends.
fn tls10_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x01];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    body.extend_from_slice(&[0x01, 0x00]); // no compression
    let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

fn metric(s: &Server, name: &str, labels: &str) -> u64 {
    let body = raw_get(s.operator, "/metrics").unwrap().2;
    let prefix = format!("corepay_{name}{{{labels}}} ");
    body.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse::<u64>().unwrap())
        .sum()
}

/// Waits (up to 10 s) until a counter reaches `at_least`: the server counts a failed
/// handshake when it has read the client's alert, which can come after the client moved on.
fn wait_metric(s: &Server, name: &str, labels: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = metric(s, name, labels);
        if n >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{{labels}}} = {n}, expected at least {at_least}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn echo_0800(stan: &[u8; 6]) -> Message {
    let mut m = Message::new(*b"0800");
    m.set(7, b"1205120000");
    m.set(11, stan);
    m.set(70, b"301");
    m
}

/// An ISO 8583 exchange over a TLS stream: one 0800 out, one answer back.
fn iso_echo(s: &mut Tls, stan: &[u8; 6]) -> std::io::Result<Message> {
    iso_call(s, &echo_0800(stan))
}

/// A 0100 for 10.00 EUR from acquirer `de32`, terminal TERM0001, merchant `merchant`.
fn auth_0100(pan: &str, stan: &[u8; 6], de32: &[u8], merchant: &str) -> Message {
    let mut m = Message::new(*b"0100");
    m.set(2, pan.as_bytes());
    m.set(3, b"000000");
    m.set(4, b"000000001000");
    m.set(7, b"1205120000");
    m.set(11, stan);
    m.set(12, b"120000");
    m.set(13, b"1205");
    m.set(14, b"3012");
    m.set(32, de32);
    m.set(41, b"TERM0001");
    m.set(42, format!("{merchant:<15}").as_bytes());
    m.set(49, b"978");
    m
}

/// One message out over a TLS stream, one answer back.
fn iso_call(s: &mut Tls, m: &Message) -> std::io::Result<Message> {
    let mut body = Vec::new();
    encode(m, BitmapEncoding::Binary, &mut body).unwrap();
    let mut out = Vec::new();
    write_frame(Framing::Binary2, &body, &mut out);
    s.write_all(&out)?;
    s.flush()?;
    let mut header = [0u8; 2];
    s.read_exact(&mut header)?;
    let mut answer = vec![0u8; u16::from_be_bytes(header) as usize];
    s.read_exact(&mut answer)?;
    Ok(decode(&answer, BitmapEncoding::Binary).expect("an answer that decodes"))
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: Issued,
    server: Issued,
    acquirer: Issued,
    /// `[http.tls]` and `[iso8583.tls]` (mutual).
    config: String,
    /// Only `[iso8583.tls]`, mutual, with "CN=acquirer 0001" bound to DE32 4711.
    iso_only: String,
}

/// A CA, a server certificate for localhost and an acquirer's client certificate, written
/// out, and the TLS tables for both listeners (mutual on ISO 8583).
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("corepay test CA");
    let server = leaf(&ca, "corepay gateway", false);
    let acquirer = leaf(&ca, "acquirer 0001", true);
    let (cert, key) = server.write(dir.path(), "server");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let iso = format!(
        "[iso8583.tls]\ncert_file = \"{c}\"\nkey_file = \"{k}\"\nclient_ca_file = \"{ca}\"\n",
        c = cert.display(),
        k = key.display(),
        ca = ca_file.display()
    );
    let config = format!(
        "[http.tls]\ncert_file = \"{c}\"\nkey_file = \"{k}\"\n\n{iso}",
        c = cert.display(),
        k = key.display(),
    );
    let iso_only = format!(
        "{iso}\n[[iso8583.acquirers]]\nsubject = \"CN=acquirer 0001\"\ninstitution_ids = [\"4711\"]\n"
    );
    Pki {
        _dir: dir,
        ca,
        server,
        acquirer,
        config,
        iso_only,
    }
}

#[test]
fn https_serves_payments_and_drops_plain_text_and_old_versions_without_hurting_others() {
    let pki = pki();
    let s = Server::start_with(1, &pki.config);
    let mut admin = tls_connect(s.http, &pki.ca, V13, None, true).expect("a TLS 1.3 handshake");
    assert_eq!(
        admin.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(admin.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        admin.conn.peer_certificates().unwrap()[0],
        pki.server.der(),
        "the configured certificate"
    );
    // The admin plane is on the operator listener (plain, internal); the merchant listener
    // does not know its paths, over TLS or not.
    let (st, v) = http(&mut admin, "POST", "/v1/accounts", ADMIN_KEY, Some("{}")).unwrap();
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")));
    create_account(&s, 1, "EUR", "100.00");
    create_account(&s, 2, "EUR", "0.00");
    let number = card_number("411111111111111");
    create_card(&s, &number, 1);
    let key = create_merchant(&s, "m_tls", 2);

    // A merchant over TLS 1.2 (and no ALPN offered) pays.
    let mut m = tls_connect(s.http, &pki.ca, V12, None, false).expect("a TLS 1.2 handshake");
    assert_eq!(
        m.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let pay = payment_json("12.34", "EUR", &number, (12, 2030), true, "tls-1");
    let (st, v) = http(&mut m, "POST", "/v1/payments", &key, Some(&pay)).unwrap();
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["status"], "captured", "{v}");
    let pay_id = v["id"].as_str().unwrap().to_string();

    // Plain HTTP to the TLS port: no HTTP answer, the connection is dropped.
    let mut plain = TcpStream::connect(s.http).unwrap();
    plain
        .write_all(b"GET /v1/payments HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let got = read_to_close(&mut plain);
    assert!(
        !got.starts_with(b"HTTP/"),
        "plain text got an HTTP answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    // TLS 1.0: refused with an alert (content type 21), never a ServerHello.
    let mut old = TcpStream::connect(s.http).unwrap();
    old.write_all(&tls10_client_hello()).unwrap();
    let got = read_to_close(&mut old);
    assert!(
        got.is_empty() || got[0] == 0x15,
        "an old version got {:02x?}",
        &got[..got.len().min(16)]
    );
    // Garbage.
    let mut junk = TcpStream::connect(s.http).unwrap();
    junk.write_all(&[0xde; 300]).unwrap();
    read_to_close(&mut junk);
    // A client that does not trust our CA refuses us; a peer that says nothing is dropped
    // after request_timeout_ms (not tested here: 5 s).
    assert!(tls_connect(s.http, &ca("someone else"), V13, None, true).is_err());

    // The established connections were not hurt.
    let path = format!("/v1/payments/{pay_id}");
    let (st, v) = http(&mut m, "GET", &path, &key, None).unwrap();
    assert_eq!(st, 200, "{v}");
    let (st, v) = http(&mut admin, "GET", &path, &key, None).unwrap();
    assert_eq!((st, v["status"].as_str()), (200, Some("captured")));
    // Plain text, TLS 1.0, garbage and the distrusting client are counted.
    wait_metric(
        &s,
        "tls_handshakes_failed_total",
        "shard=\"0\",listener=\"http\"",
        4,
    );
    let log = s.log();
    assert!(!log.contains(&number), "a clear PAN in the log");
}

#[test]
fn iso8583_over_mutual_tls_serves_bound_acquirers_and_refuses_everyone_else() {
    let pki = pki();
    let s = Server::start_with(1, &pki.iso_only);
    create_account(&s, 1, "EUR", "100.00");
    create_account(&s, 2, "EUR", "0.00");
    let pan = card_number("411111111111111");
    create_card(&s, &pan, 1);
    create_merchant(&s, "m_iso", 2);

    let mut acq = tls_connect(s.iso, &pki.ca, V13, Some(&pki.acquirer), false)
        .expect("a mutual TLS handshake");
    let answer = iso_echo(&mut acq, b"000101").expect("an answer");
    assert_eq!(answer.mti(), *b"0810");
    assert_eq!(answer.get(39), Some(&b"00"[..]));
    assert_eq!(answer.get(11), Some(&b"000101"[..]));
    // Its bound institution id is served; another is answered 58, echoing the request.
    let ok = iso_call(&mut acq, &auth_0100(&pan, b"000102", b"4711", "m_iso")).unwrap();
    assert_eq!(ok.get(39), Some(&b"00"[..]), "{ok:?}");
    let no = iso_call(&mut acq, &auth_0100(&pan, b"000103", b"9999", "m_iso")).unwrap();
    assert_eq!(no.mti(), *b"0110");
    assert_eq!(no.get(39), Some(&b"58"[..]));
    assert_eq!(no.get(32), Some(&b"9999"[..]));
    assert_eq!(no.get(11), Some(&b"000103"[..]));
    // The subject and fingerprint are logged at connection; the refusal names both sides.
    use sha2::Digest;
    let fingerprint = hex::encode(sha2::Sha256::digest(pki.acquirer.der().as_ref()));
    let log = s.log();
    assert!(
        log.lines().any(|l| l.contains("iso8583.tls_client")
            && l.contains("CN=acquirer 0001")
            && l.contains(&fingerprint)),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("iso8583.acquirer_not_permitted")
                && l.contains("CN=acquirer 0001")
                && l.contains("9999")),
        "{log}"
    );
    assert!(!log.contains(&pan), "a clear PAN in the log");
    // A certificate from the same CA with no binding may send nothing financial.
    let stranger = leaf(&pki.ca, "acquirer 0002", true);
    let mut other = tls_connect(s.iso, &pki.ca, V13, Some(&stranger), false).unwrap();
    let no = iso_call(&mut other, &auth_0100(&pan, b"000104", b"4711", "m_iso")).unwrap();
    assert_eq!(no.get(39), Some(&b"58"[..]));
    assert_eq!(
        iso_echo(&mut other, b"000105").unwrap().get(39),
        Some(&b"00"[..])
    );

    // No client certificate, or one from another CA: the handshake fails, and nothing the
    // client sends is answered.
    let rogue_ca = ca("rogue CA");
    let rogue = leaf(&rogue_ca, "acquirer 0001", true);
    for (what, client) in [("no certificate", None), ("another CA's", Some(&rogue))] {
        match tls_connect(s.iso, &pki.ca, V13, client, false) {
            Err(_) => {}
            // TLS 1.3: the client finishes first and hears the refusal on its first read.
            Ok(mut c) => assert!(iso_echo(&mut c, b"000106").is_err(), "{what}: answered"),
        }
    }
    // Plain ISO 8583 to the TLS port.
    let mut plain = IsoClient::default_profile(s.iso);
    plain.send(&echo_0800(b"000107"));
    assert!(
        matches!(plain.read_frame(), Ok(None) | Err(_)),
        "plain text was answered"
    );
    // The acquirer's connection was not hurt; one payment was made, none for the refusals.
    let answer = iso_echo(&mut acq, b"000108").expect("still served");
    assert_eq!(answer.get(39), Some(&b"00"[..]));
    assert_eq!(get_account(&s, 1)["held"], "10.00");
    wait_metric(
        &s,
        "tls_handshakes_failed_total",
        "shard=\"0\",listener=\"iso8583\"",
        3,
    );
}

/// `corepay check-config` and `corepay serve` on a configuration: exit success, and the
/// last line of stderr.
fn check(config: &str, serve: bool) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text = format!(
        "[server]\ndata_dir = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{}\"\n\n\
         [iso8583]\nlisten = \"127.0.0.1:{}\"\n\n[operator]\nlisten = \"127.0.0.1:{}\"\n\n{config}",
        dir.path().join("data").display(),
        free_port(),
        free_port(),
        free_port()
    );
    std::fs::write(&path, text).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_corepay"));
    if serve {
        cmd.args(["serve", "--config"]).arg(&path);
    } else {
        cmd.arg("check-config").arg(&path);
    }
    let out = cmd.env("COREPAY_ADMIN_KEY", ADMIN_KEY).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("").to_string();
    (out.status.success(), last)
}

#[test]
fn tls_files_missing_unreadable_or_mismatched_are_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("corepay test CA");
    let (cert, key) = leaf(&ca, "gateway", false).write(dir.path(), "a");
    let (_, other_key) = leaf(&ca, "another", false).write(dir.path(), "b");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a PEM file\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let tls = |section: &str, cert: &Path, key: &Path, extra: &str| {
        format!(
            "[{section}]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}",
            cert.display(),
            key.display()
        )
    };
    let cases = [
        (
            tls("http.tls", &missing, &key, ""),
            "http.tls.cert_file",
            "missing.pem",
        ),
        (
            tls("http.tls", &junk, &key, ""),
            "http.tls.cert_file",
            "no PEM CERTIFICATE",
        ),
        (
            tls("http.tls", &cert, &junk, ""),
            "http.tls.key_file",
            "junk.pem",
        ),
        (
            tls("http.tls", &cert, &other_key, ""),
            "http.tls.key_file",
            "does not match",
        ),
        (
            format!("[http.tls]\nkey_file = \"{}\"\n", key.display()),
            "http.tls.cert_file",
            "required",
        ),
        (
            tls(
                "iso8583.tls",
                &cert,
                &key,
                &format!("client_ca_file = \"{}\"\n", missing.display()),
            ),
            "iso8583.tls.client_ca_file",
            "missing.pem",
        ),
        (
            tls("http.tls", &cert, &key, "ciphers = \"all\"\n"),
            "ciphers",
            "unknown field",
        ),
        (
            format!(
                "{}\n[[iso8583.acquirers]]\nsubject = \"CN=a\"\ninstitution_ids = [\"4711\"]\n",
                tls("iso8583.tls", &cert, &key, "")
            ),
            "iso8583.acquirers",
            "client_ca_file",
        ),
        (
            format!(
                "{}\n[[iso8583.acquirers]]\nsubject = \"CN=a\"\ninstitution_ids = [\"47x1\"]\n",
                tls(
                    "iso8583.tls",
                    &cert,
                    &key,
                    &format!("client_ca_file = \"{}\"\n", cert.display())
                )
            ),
            "iso8583.acquirers[0].institution_ids",
            "47x1",
        ),
    ];
    for (config, key_named, why) in &cases {
        let (ok, line) = check(config, false);
        assert!(!ok, "accepted:\n{config}");
        assert!(
            line.contains(key_named) && line.contains(why),
            "check-config said {line:?}, expected {key_named} and {why:?}"
        );
    }
    // serve refuses the same way, before it touches anything.
    let (ok, line) = check(&cases[3].0, true);
    assert!(
        !ok && line.contains("http.tls.key_file") && line.contains("does not match"),
        "{line}"
    );
    // And a good pair passes.
    let (ok, line) = check(&tls("http.tls", &cert, &key, ""), false);
    assert!(ok, "{line}");
}

#[test]
fn sighup_reloads_certificates_and_keeps_established_connections() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.server.write(dir.path(), "live");
    let config = format!(
        "[http.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let s = Server::start_with(1, &config);
    let pid = s.child.as_ref().unwrap().id() as i32;
    let mut before = tls_connect(s.http, &pki.ca, V13, None, true).unwrap();
    assert_eq!(
        before.conn.peer_certificates().unwrap()[0],
        pki.server.der()
    );
    assert_eq!(
        http(&mut before, "GET", "/v1/accounts/1", ADMIN_KEY, None)
            .unwrap()
            .0,
        404
    );

    let wait_log = |count: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.log().matches(what).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {what:?} in the log:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // A renewed certificate: new handshakes get it, the old connection goes on.
    let renewed = leaf(&pki.ca, "corepay gateway, renewed", false);
    renewed.write(dir.path(), "live");
    // SAFETY: a signal to the child process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    wait_log(1, "tls.reloaded");
    let mut after = tls_connect(s.http, &pki.ca, V13, None, true).unwrap();
    assert_eq!(after.conn.peer_certificates().unwrap()[0], renewed.der());
    assert_eq!(
        http(&mut after, "GET", "/v1/accounts/1", ADMIN_KEY, None)
            .unwrap()
            .0,
        404
    );
    assert_eq!(
        http(&mut before, "GET", "/v1/accounts/1", ADMIN_KEY, None)
            .unwrap()
            .0,
        404,
        "the connection made before the reload still works"
    );
    // A broken file on reload: said so, and the renewed certificate stays.
    std::fs::write(&cert, "oops\n").unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    wait_log(1, "tls.reload_failed");
    let log = s.log();
    let line = log
        .lines()
        .find(|l| l.contains("tls.reload_failed"))
        .unwrap();
    assert!(line.contains("http.tls.cert_file"), "{line}");
    let again = tls_connect(s.http, &pki.ca, V13, None, true).unwrap();
    assert_eq!(again.conn.peer_certificates().unwrap()[0], renewed.der());
    assert!(s.child.is_some(), "still running");
}
