//! A blocking HTTP/1.1 client for setup and checks (provisioning, reading payments, the
//! ledger and /metrics). Not on the measured path: the load itself goes through `engine`.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A connection, plain or TLS.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

pub struct Admin {
    addr: SocketAddr,
    key: String,
    stream: Option<Box<dyn Stream>>,
    buf: Vec<u8>,
    /// Some: connections speak TLS, checking the server's certificate for this name.
    tls: Option<(std::sync::Arc<rustls::ClientConfig>, String)>,
}

impl Admin {
    pub fn new(addr: SocketAddr, key: &str) -> Admin {
        Admin {
            addr,
            key: key.to_string(),
            stream: None,
            buf: Vec::new(),
            tls: None,
        }
    }

    /// Connections speak TLS (the merchant listener with `--tls`).
    pub fn with_tls(mut self, config: std::sync::Arc<rustls::ClientConfig>, name: &str) -> Admin {
        self.tls = Some((config, name.to_string()));
        self
    }

    pub fn get(&mut self, path: &str) -> Result<(u16, Value), String> {
        let key = self.key.clone();
        self.call("GET", path, &key, None)
    }

    pub fn post(&mut self, path: &str, body: &str) -> Result<(u16, Value), String> {
        let key = self.key.clone();
        self.call("POST", path, &key, Some(body))
    }

    /// One request; a connection that died since the last call is reopened once.
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<&str>,
    ) -> Result<(u16, Value), String> {
        let (status, body) = match self.exchange(method, path, key, body) {
            Ok(r) => r,
            Err(_) => {
                self.stream = None;
                self.exchange(method, path, key, body)
                    .map_err(|e| format!("{method} {path} at {}: {e}", self.addr))?
            }
        };
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        };
        Ok((status, value))
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(120)))?;
            self.stream = Some(match &self.tls {
                None => Box::new(s),
                Some((config, name)) => {
                    let conn = rustls::ClientConnection::new(
                        config.clone(),
                        crate::tls::server_name(name),
                    )
                    .map_err(std::io::Error::other)?;
                    Box::new(rustls::StreamOwned::new(conn, s))
                }
            });
            self.buf.clear();
        }
        let stream = self.stream.as_mut().unwrap();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: corepay\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes())?;
        stream.flush()?;
        read_response(stream, &mut self.buf)
    }
}

/// Reads one Content-Length response; `buf` keeps what follows it.
pub fn read_response(stream: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<(u16, Vec<u8>)> {
    let mut chunk = [0u8; 16384];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp
            .parse(buf)
            .map_err(|e| std::io::Error::other(format!("bad response: {e}")))?
        {
            let status = resp.code.unwrap_or(0);
            let len = content_length(resp.headers);
            if buf.len() >= head + len {
                let body = buf[head..head + len].to_vec();
                buf.drain(..head + len);
                return Ok((status, body));
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub fn content_length(headers: &[httparse::Header]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// GET a plain-text page (Prometheus /metrics) with no key.
pub fn get_text(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let req = format!("GET {path} HTTP/1.1\r\nHost: corepay\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let (status, body) =
        read_response(&mut s, &mut buf).map_err(|e| format!("{addr}{path}: {e}"))?;
    if status != 200 {
        return Err(format!("{addr}{path}: status {status}"));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Σ of a Prometheus metric over all its label sets, optionally filtered by a label text.
pub fn metric_sum(text: &str, name: &str, label_filter: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(label_filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Σ of a Prometheus metric over all its label sets; None when the page has no such metric
/// (an older gateway), unlike `metric_sum`'s 0.
pub fn metric_total(text: &str, name: &str) -> Option<u64> {
    let mut found = false;
    let sum = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .inspect(|_| found = true)
        .sum();
    found.then_some(sum)
}
