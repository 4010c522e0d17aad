//! TLS for the merchant (HTTP) and acquirer (ISO 8583) listeners, with rustls.
//!
//! What a listener with a `tls` table accepts: TLS 1.3 and 1.2 only, with the `ring`
//! provider's cipher suites (ECDHE key exchange and AEAD ciphers only: AES-GCM and
//! ChaCha20-Poly1305); no 0-RTT (`max_early_data_size` 0: early data can be replayed, and a
//! replayed authorization is a second payment); ALPN `http/1.1` on the merchant listener;
//! with `client_ca_file`, only clients whose certificate that CA signed (mutual TLS).
//!
//! Files are read at start, where a missing, unreadable or mismatched certificate or key
//! stops the gateway with one line naming the key, and again on SIGHUP (`reload`): new
//! handshakes take the new files, established connections keep the session they have. A
//! reload that fails keeps what was loaded and says why.
//!
//! Knows nothing of sockets: `crate::shard` wraps each accepted stream (futures-rustls, on
//! the shard's own executor).

use crate::config::{ConfigError, Tls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::sync::{Arc, RwLock};

/// The application protocol the merchant listener speaks (ALPN, RFC 7301).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The cryptography behind every TLS session: *ring*. rustls 0.23.48 deprecates it for
/// lacking post-quantum key exchange (X25519MLKEM768, which aws-lc-rs offers); aws-lc-rs
/// builds a C library with cmake for minutes on these 2-core machines. Key exchange here is
/// X25519, P-256 and P-384: moving to aws-lc-rs is a change of this one function.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One listener's TLS settings, as last loaded.
#[derive(Debug)]
pub struct Reloadable {
    /// The configuration table, e.g. "http.tls": errors name its keys.
    section: &'static str,
    files: Tls,
    alpn: Option<&'static [u8]>,
    current: RwLock<Arc<ServerConfig>>,
}

impl Reloadable {
    /// Reads `files` and builds the server's settings, or says which key is wrong.
    pub fn load(
        section: &'static str,
        files: &Tls,
        alpn: Option<&'static [u8]>,
    ) -> Result<Arc<Reloadable>, ConfigError> {
        let config = server_config(section, files, alpn)?;
        Ok(Arc::new(Reloadable {
            section,
            files: files.clone(),
            alpn,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// The settings a new handshake uses.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .expect("a reload never panics holding the lock")
            .clone()
    }

    /// Reads the files again; on an error the settings loaded before stay.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let config = server_config(self.section, &self.files, self.alpn)?;
        *self
            .current
            .write()
            .expect("a reload never panics holding the lock") = Arc::new(config);
        Ok(())
    }

    pub fn section(&self) -> &'static str {
        self.section
    }

    /// True when clients must present a certificate.
    pub fn mutual(&self) -> bool {
        !self.files.client_ca_file.is_empty()
    }
}

fn bad(section: &str, key: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{section}.{key}: {why}"))
}

fn read_certs(
    section: &str,
    key: &str,
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(section, key, format!("{path}: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            section,
            key,
            format!("{path}: no PEM CERTIFICATE in it"),
        ));
    }
    Ok(certs)
}

/// Builds the settings of one listener from its files.
pub fn server_config(
    section: &str,
    files: &Tls,
    alpn: Option<&[u8]>,
) -> Result<ServerConfig, ConfigError> {
    for (key, value) in [
        ("cert_file", &files.cert_file),
        ("key_file", &files.key_file),
    ] {
        if value.is_empty() {
            return Err(bad(section, key, "required when the table is present"));
        }
    }
    let certs = read_certs(section, "cert_file", &files.cert_file)?;
    let key_path = &files.key_file;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| bad(section, "key_file", format!("{key_path}: {e}")))?;
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| bad(section, "key_file", format!("{key_path}: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(certs.clone(), signing);
    match certified.keys_match() {
        // Unknown: the key type cannot tell its public key; the handshake still checks.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(bad(
                section,
                "key_file",
                format!(
                    "{key_path}: does not match the certificate in {}",
                    files.cert_file
                ),
            ))
        }
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConfigError(format!("{section}: {e}")))?;
    let builder = if files.client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let path = &files.client_ca_file;
        let mut roots = RootCertStore::empty();
        for ca in read_certs(section, "client_ca_file", path)? {
            roots
                .add(ca)
                .map_err(|e| bad(section, "client_ca_file", format!("{path}: {e}")))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| bad(section, "client_ca_file", format!("{path}: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad(section, "cert_file", format!("{}: {e}", files.cert_file)))?;
    config.max_early_data_size = 0;
    config.send_half_rtt_data = false;
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Ok(config)
}

/// A certificate's subject as RFC 4514 text (e.g. "CN=acquirer 0001, O=Bank"), or None when
/// the DER does not parse.
pub fn subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.subject().to_string())
}

/// The TLS settings of both public listeners (None where the table is absent).
#[derive(Clone, Debug, Default)]
pub struct Listeners {
    pub http: Option<Arc<Reloadable>>,
    pub iso8583: Option<Arc<Reloadable>>,
}

impl Listeners {
    /// Reads every configured certificate and key; the first problem, naming its key.
    pub fn load(config: &crate::config::Config) -> Result<Listeners, ConfigError> {
        let http = match &config.http.tls {
            Some(t) => Some(Reloadable::load("http.tls", t, Some(ALPN_HTTP1))?),
            None => None,
        };
        let iso8583 = match &config.iso8583.tls {
            Some(t) => Some(Reloadable::load("iso8583.tls", t, None)?),
            None => None,
        };
        Ok(Listeners { http, iso8583 })
    }

    /// Reads every listener's files again (SIGHUP): one result per configured listener.
    pub fn reload(&self) -> Vec<(&'static str, Result<(), ConfigError>)> {
        [&self.http, &self.iso8583]
            .into_iter()
            .flatten()
            .map(|r| (r.section(), r.reload()))
            .collect()
    }
}
