//! HTTP/1.1 wire layer: request framing with strict limits, and response serialisation.
//!
//! Owns: turning the bytes of one connection into whole [`Request`]s (keep-alive and
//! pipelining included) and turning a status, headers and body into response bytes.
//! Never: routes, JSON, authentication, storage, clocks or the runtime. Timeouts are the
//! caller's, applied around [`RequestReader::next`]; TLS, if any, sits below `R`.
//!
//! Limits are enforced as bytes arrive, not after the fact: a head that has grown past
//! [`Limits::max_header_bytes`] without ending is refused at once, and a declared body larger
//! than [`Limits::max_body_bytes`] is refused before any of it is read. The read buffer of a
//! connection therefore never grows beyond `max_header_bytes + max_body_bytes`.
//!
//! We accept only `Content-Length` bodies. Any `Transfer-Encoding` is refused (chunked with
//! 411, everything else with 400), and so are the ambiguous framings request smuggling feeds
//! on: `Content-Length` together with `Transfer-Encoding`, or more than one `Content-Length`.

use futures_lite::{AsyncRead, AsyncReadExt};
use std::fmt;
use std::io;
use zeroize::Zeroize;

/// Upper bound on [`Limits::max_headers`]: the header slots live in a stack array of this size
/// (32 bytes each), so parsing never allocates.
pub const HEADER_SLOTS_MAX: usize = 128;

/// First size of a connection's read buffer; it grows on demand up to the limits' total.
const READ_BUF_INITIAL: usize = 4 * 1024;

/// Per-connection framing limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line, headers and the blank line), in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one request; at most [`HEADER_SLOTS_MAX`].
    pub max_headers: usize,
    /// Largest body, in bytes, as declared by `Content-Length`.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 8 * 1024,
            max_headers: 32,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// The request methods the API distinguishes; the router answers 405 for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// Any other (syntactically valid) method, including lower-case spellings.
    Other,
}

/// One complete request, with only the fields the gateway uses. Its body and
/// `Authorization` are wiped when it is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request method.
    pub method: Method,
    /// The request target without its query string (which is dropped).
    pub path: String,
    /// Raw value of `Authorization`.
    pub authorization: Option<String>,
    /// Raw bytes of `Idempotency-Key`; validating them is the caller's job.
    pub idempotency_key: Option<Vec<u8>>,
    /// Raw value of `Content-Type`.
    pub content_type: Option<String>,
    /// Whether the connection stays open after the response: HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive` (and no `close`).
    pub keep_alive: bool,
    /// The body (`Content-Length` bytes; empty without `Content-Length`).
    pub body: Vec<u8>,
}

impl Drop for Request {
    fn drop(&mut self) {
        self.body.zeroize();
        self.authorization.zeroize();
    }
}

/// Why no request could be read. Every variant but `Closed` and `Io` is the peer's fault and
/// has an answer ([`WireError::status`]); after any error but `Closed` the caller sends that
/// answer (if any) and closes the connection.
#[derive(Debug)]
pub enum WireError {
    /// Clean end of stream before the first byte of a new request.
    Closed,
    /// 431: the head exceeds [`Limits::max_header_bytes`].
    HeaderTooLarge,
    /// 431: more than [`Limits::max_headers`] header fields.
    TooManyHeaders,
    /// 413: `Content-Length` exceeds [`Limits::max_body_bytes`] (found before reading the body).
    BodyTooLarge,
    /// 411: `Transfer-Encoding: chunked` without `Content-Length`; we take no chunked bodies.
    LengthRequired,
    /// 400: malformed or ambiguous framing; the text says which rule was broken.
    BadRequest(&'static str),
    /// The stream failed.
    Io(io::Error),
}

impl WireError {
    /// The HTTP status to answer with, or 0 when there is nobody to answer (`Closed`, `Io`).
    pub fn status(&self) -> u16 {
        match self {
            WireError::Closed | WireError::Io(_) => 0,
            WireError::HeaderTooLarge | WireError::TooManyHeaders => 431,
            WireError::BodyTooLarge => 413,
            WireError::LengthRequired => 411,
            WireError::BadRequest(_) => 400,
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Closed => f.write_str("connection closed"),
            WireError::HeaderTooLarge => f.write_str("request head too large"),
            WireError::TooManyHeaders => f.write_str("too many header fields"),
            WireError::BodyTooLarge => f.write_str("request body too large"),
            WireError::LengthRequired => f.write_str("chunked body without Content-Length"),
            WireError::BadRequest(why) => write!(f, "bad request: {why}"),
            WireError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

/// Reads requests from one connection; keeps leftover bytes so pipelined requests work.
///
/// `next` is cancel-safe: if its future is dropped (say, by the caller's timeout), no bytes
/// and no parsed head are lost, and the next call carries on. After an error (other than
/// `Closed`) the reader is fused: every later call returns `Closed` without reading.
pub struct RequestReader<R> {
    io: R,
    limits: Limits,
    /// Zero-initialised read buffer; `buf.len()` is its current size, never above
    /// `max_header_bytes + max_body_bytes`.
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`: the current request, then any pipelined ones.
    start: usize,
    end: usize,
    /// How many bytes from `start` have been searched for the end of the head, so each byte
    /// is searched once and httparse only runs when the head may be complete.
    scanned: usize,
    /// The current request's head, once parsed, while its body arrives.
    head: Option<Head>,
    failed: bool,
}

/// What a connection left unread is wiped when it ends.
impl<R> Drop for RequestReader<R> {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

/// A parsed head waiting for its body.
struct Head {
    /// The request with an empty body.
    request: Request,
    head_len: usize,
    body_len: usize,
}

impl<R: AsyncRead + Unpin> RequestReader<R> {
    /// Wraps one connection (or its read half).
    ///
    /// Panics if the limits are unusable (`max_headers` outside `1..=HEADER_SLOTS_MAX`, or
    /// `max_header_bytes` zero): that is a configuration bug, not a peer's doing.
    pub fn new(io: R, limits: Limits) -> Self {
        assert!(limits.max_headers >= 1 && limits.max_headers <= HEADER_SLOTS_MAX);
        assert!(limits.max_header_bytes > 0);
        let capacity = limits
            .max_header_bytes
            .saturating_add(limits.max_body_bytes);
        RequestReader {
            io,
            limits,
            buf: vec![0; READ_BUF_INITIAL.min(capacity)],
            start: 0,
            end: 0,
            scanned: 0,
            head: None,
            failed: false,
        }
    }

    /// Next full request. After any Err other than Closed, the caller answers (status()) and
    /// closes the connection.
    pub async fn next(&mut self) -> Result<Request, WireError> {
        if self.failed {
            return Err(WireError::Closed);
        }
        let result = self.next_request().await;
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// The next request if it is already buffered in full (pipelined, or read with the one
    /// before), without reading. After an Err other than Closed, as for `next`.
    pub fn try_next(&mut self) -> Result<Option<Request>, WireError> {
        if self.failed {
            return Err(WireError::Closed);
        }
        let result = self.buffered_request();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Reads once (at least one byte) into the buffer: how a caller waits for a new request
    /// under a deadline of its own, in one read instead of a peek and then a read.
    /// Cancel-safe like `next`. `Closed` at a clean end of stream.
    pub async fn read_more(&mut self) -> Result<(), WireError> {
        if self.failed {
            return Err(WireError::Closed);
        }
        let result = self.fill().await;
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// The underlying stream, so the caller can write responses on it when `R` is the full
    /// stream. Reading from it directly would lose the buffered bytes' order.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// Whether bytes of a further (pipelined) request are already buffered, so the caller
    /// can hold its response back and write several in one go.
    pub fn has_buffered(&self) -> bool {
        self.end > self.start
    }

    async fn next_request(&mut self) -> Result<Request, WireError> {
        loop {
            if let Some(request) = self.buffered_request()? {
                return Ok(request);
            }
            self.fill().await?;
        }
    }

    fn buffered_request(&mut self) -> Result<Option<Request>, WireError> {
        if self.head.is_none() {
            self.head = self.parse_head()?;
        }
        if let Some(head) = &self.head {
            let total = head.head_len + head.body_len;
            if self.end - self.start >= total {
                return Ok(Some(self.take_request()));
            }
        }
        Ok(None)
    }

    /// Parses the head if it may be complete; `None` means more bytes are needed.
    fn parse_head(&mut self) -> Result<Option<Head>, WireError> {
        let pending = &self.buf[self.start..self.end];
        let from = self.scanned;
        self.scanned = pending.len();
        // Parse once on a new request's first bytes, so garbage (a TLS hello, say) is refused
        // at once; after that only when the head may have ended.
        if (from == 0 && !pending.is_empty()) || head_may_end(pending, from) {
            let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS_MAX];
            let mut parsed = httparse::Request::new(&mut slots[..self.limits.max_headers]);
            match parsed.parse(pending) {
                Ok(httparse::Status::Complete(head_len)) => {
                    if head_len > self.limits.max_header_bytes {
                        return Err(WireError::HeaderTooLarge);
                    }
                    return Head::from_parsed(&parsed, head_len, &self.limits).map(Some);
                }
                // Only leading blank lines can end in "\n\n" without ending the head.
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => return Err(WireError::TooManyHeaders),
                Err(e) => return Err(WireError::BadRequest(httparse_reason(e))),
            }
        }
        // The head is incomplete, so it is at least one byte longer than what we hold.
        if pending.len() >= self.limits.max_header_bytes {
            return Err(WireError::HeaderTooLarge);
        }
        Ok(None)
    }

    fn take_request(&mut self) -> Request {
        let Some(head) = self.head.take() else {
            unreachable!("take_request without a parsed head");
        };
        let body_start = self.start + head.head_len;
        let body_end = body_start + head.body_len;
        assert!(body_end <= self.end);
        let mut request = head.request;
        request.body = self.buf[body_start..body_end].to_vec();
        // The request's bytes (a card number, an API key) are wiped as they are taken.
        self.buf[self.start..body_end].zeroize();
        self.start = body_end;
        self.scanned = 0;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        request
    }

    /// Reads at least one more byte, making room first.
    async fn fill(&mut self) -> Result<(), WireError> {
        self.make_room();
        loop {
            match self.io.read(&mut self.buf[self.end..]).await {
                Ok(0) => return Err(self.eof()),
                Ok(n) => {
                    assert!(n <= self.buf.len() - self.end);
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WireError::Io(e)),
            }
        }
    }

    /// Ensures `buf[end..]` is not empty: moves the pending bytes to the front, then grows.
    fn make_room(&mut self) {
        if self.end < self.buf.len() {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            let old_end = self.end;
            self.end -= self.start;
            self.start = 0;
            self.buf[self.end..old_end].zeroize(); // the moved bytes' old copies
            if self.end < self.buf.len() {
                return;
            }
        }
        // What we hold is a strict prefix of the current request, so this never passes the
        // limits' total: an incomplete head is shorter than max_header_bytes (parse_head), a
        // body is waited for only once head + body fit (Head::from_parsed).
        let capacity = self.limits.max_header_bytes + self.limits.max_body_bytes;
        let needed = match &self.head {
            Some(head) => head.head_len + head.body_len,
            None => self.end + 1,
        };
        assert!(self.end < needed && needed <= capacity);
        let size = needed.max(self.buf.len() * 2).min(capacity);
        // A new buffer rather than a resize: the old one is wiped, not left to the allocator.
        let mut bigger = vec![0; size];
        bigger[..self.end].copy_from_slice(&self.buf[..self.end]);
        std::mem::swap(&mut self.buf, &mut bigger);
        bigger.zeroize();
    }

    fn eof(&self) -> WireError {
        let pending = &self.buf[self.start..self.end];
        // Blank lines between requests are allowed (RFC 9112 §2.2), also before the end.
        if self.head.is_none() && pending.iter().all(|&b| b == b'\r' || b == b'\n') {
            WireError::Closed
        } else {
            WireError::BadRequest("connection closed mid-request")
        }
    }
}

impl Head {
    fn from_parsed(
        parsed: &httparse::Request<'_, '_>,
        head_len: usize,
        limits: &Limits,
    ) -> Result<Head, WireError> {
        let method = match parsed.method {
            Some("GET") => Method::Get,
            Some("POST") => Method::Post,
            _ => Method::Other,
        };
        let target = parsed.path.unwrap_or("");
        let path = target.split_once('?').map_or(target, |(path, _)| path);

        let mut content_length = None;
        let mut chunked = false;
        let mut authorization = None;
        let mut idempotency_key = None;
        let mut content_type = None;
        let mut conn_close = false;
        let mut conn_keep_alive = false;
        for header in parsed.headers.iter() {
            let name = header.name;
            let value = header.value;
            if name.eq_ignore_ascii_case("content-length") {
                if content_length.is_some() {
                    return Err(WireError::BadRequest("duplicate Content-Length"));
                }
                content_length = Some(parse_content_length(value)?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Only a single, plain "chunked" is a coding we can name in the answer (411).
                if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                    return Err(WireError::BadRequest("unsupported Transfer-Encoding"));
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case("authorization") {
                // Duplicates are refused: which credential applies must never be a guess.
                if authorization.is_some() {
                    return Err(WireError::BadRequest("duplicate Authorization"));
                }
                authorization = Some(utf8(value, "non-UTF-8 Authorization")?);
            } else if name.eq_ignore_ascii_case("idempotency-key") {
                if idempotency_key.is_some() {
                    return Err(WireError::BadRequest("duplicate Idempotency-Key"));
                }
                idempotency_key = Some(value.to_vec());
            } else if name.eq_ignore_ascii_case("content-type") {
                if content_type.is_some() {
                    return Err(WireError::BadRequest("duplicate Content-Type"));
                }
                content_type = Some(utf8(value, "non-UTF-8 Content-Type")?);
            } else if name.eq_ignore_ascii_case("connection") {
                for option in value.split(|&b| b == b',') {
                    let option = option.trim_ascii();
                    conn_close |= option.eq_ignore_ascii_case(b"close");
                    conn_keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
                }
            }
        }

        let body_len = match (content_length, chunked) {
            (Some(_), true) => {
                return Err(WireError::BadRequest(
                    "Content-Length with Transfer-Encoding",
                ))
            }
            (None, true) => return Err(WireError::LengthRequired),
            (Some(length), false) => length,
            (None, false) => 0,
        };
        if body_len > limits.max_body_bytes {
            return Err(WireError::BodyTooLarge);
        }
        let keep_alive = match parsed.version {
            Some(1) => !conn_close,
            Some(0) => conn_keep_alive && !conn_close,
            _ => return Err(WireError::BadRequest("unsupported HTTP version")),
        };
        assert!(head_len <= limits.max_header_bytes);
        Ok(Head {
            request: Request {
                method,
                path: path.to_owned(),
                authorization,
                idempotency_key,
                content_type,
                keep_alive,
                body: Vec::new(),
            },
            head_len,
            body_len,
        })
    }
}

/// Whether `pending[from..]` ends a blank line ("\n\n" or "\n\r\n"), which every complete head
/// ends with. Looking only at new bytes keeps the work per connection linear in its bytes,
/// however the peer slices them.
fn head_may_end(pending: &[u8], from: usize) -> bool {
    (from.max(1)..pending.len()).any(|i| {
        pending[i] == b'\n'
            && (pending[i - 1] == b'\n'
                || (i >= 2 && pending[i - 1] == b'\r' && pending[i - 2] == b'\n'))
    })
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "unsupported HTTP version",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Status => "invalid status",
    }
}

/// `Content-Length` is 1*DIGIT (no sign, no list); values past `usize` saturate into 413.
fn parse_content_length(value: &[u8]) -> Result<usize, WireError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(WireError::BadRequest("invalid Content-Length"));
    }
    Ok(value.iter().fold(0usize, |n, &d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    }))
}

fn utf8(value: &[u8], why: &'static str) -> Result<String, WireError> {
    match std::str::from_utf8(value) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => Err(WireError::BadRequest(why)),
    }
}

/// Appends one complete response to `out` (the caller batches pipelined responses in one
/// write).
///
/// Panics if `content_type` or a header carries CR, LF or NUL, or a name is not a token:
/// those come from our own code, and a panic beats splitting the response.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    extra_headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) {
    assert!((100..=999).contains(&status));
    assert!(is_field_value(content_type));
    out.reserve(128 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, usize::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    push_decimal(out, body.len());
    let connection: &[u8] = if keep_alive {
        b"\r\nconnection: keep-alive\r\n"
    } else {
        b"\r\nconnection: close\r\n"
    };
    out.extend_from_slice(connection);
    for (name, value) in extra_headers {
        assert!(!name.is_empty() && name.bytes().all(is_token_byte));
        assert!(is_field_value(value));
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The reason phrase for `status`; empty (which HTTP/1.1 allows) for codes we never send.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_field_value(value: &str) -> bool {
    !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// An in-memory peer: hands out `data` in reads of at most `max_chunk` bytes, never
    /// across a cut, and returns `Pending` once when it reaches `stall_at`.
    struct Feed {
        data: Vec<u8>,
        pos: usize,
        max_chunk: usize,
        cuts: Vec<usize>,
        stall_at: Option<usize>,
    }

    impl Feed {
        fn new(data: impl AsRef<[u8]>) -> Feed {
            Feed {
                data: data.as_ref().to_vec(),
                pos: 0,
                max_chunk: usize::MAX,
                cuts: Vec::new(),
                stall_at: None,
            }
        }
        fn chunked(data: impl AsRef<[u8]>, max_chunk: usize) -> Feed {
            Feed {
                max_chunk,
                ..Feed::new(data)
            }
        }
        fn cut(data: impl AsRef<[u8]>, cuts: &[usize]) -> Feed {
            Feed {
                cuts: cuts.to_vec(),
                ..Feed::new(data)
            }
        }
    }

    impl AsyncRead for Feed {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let this = &mut *self;
            if this.stall_at == Some(this.pos) {
                this.stall_at = None;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut limit = this.data.len();
            for &c in this.cuts.iter().chain(this.stall_at.iter()) {
                if c > this.pos {
                    limit = limit.min(c);
                }
            }
            let n = buf.len().min(this.max_chunk).min(limit - this.pos);
            buf[..n].copy_from_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(n))
        }
    }

    struct Broken;

    impl AsyncRead for Broken {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }

    fn reader(feed: Feed) -> RequestReader<Feed> {
        RequestReader::new(feed, Limits::default())
    }

    /// Every request in `data`, then the error that ended the stream.
    fn read_all(feed: Feed, limits: Limits) -> (Vec<Request>, WireError) {
        let mut r = RequestReader::new(feed, limits);
        let mut requests = Vec::new();
        loop {
            match block_on(r.next()) {
                Ok(request) => requests.push(request),
                Err(e) => return (requests, e),
            }
        }
    }

    /// What the connection loop does: one read when idle, then every request that read
    /// brought in full, without reading again; a partial one waits for `next`.
    #[test]
    fn try_next_takes_only_what_is_buffered() {
        let two = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HT";
        let mut r = reader(Feed::cut(format!("{two}TP/1.1\r\n\r\n"), &[two.len()]));
        assert!(matches!(r.try_next(), Ok(None)), "nothing read yet");
        assert!(!r.has_buffered());
        block_on(r.read_more()).unwrap();
        assert_eq!(r.try_next().unwrap().unwrap().path, "/a");
        assert_eq!(r.try_next().unwrap().unwrap().path, "/b");
        assert!(matches!(r.try_next(), Ok(None)), "/c is incomplete");
        assert!(r.has_buffered());
        assert_eq!(block_on(r.next()).unwrap().path, "/c");
        assert!(matches!(block_on(r.read_more()), Err(WireError::Closed)));
    }

    #[test]
    fn try_next_fails_like_next_and_stays_failed() {
        let mut r = reader(Feed::new("\x16\x03\x01 not http\r\n\r\n"));
        block_on(r.read_more()).unwrap();
        assert!(matches!(r.try_next(), Err(WireError::BadRequest(_))));
        assert!(matches!(r.try_next(), Err(WireError::Closed)));
        assert!(matches!(block_on(r.read_more()), Err(WireError::Closed)));
    }

    fn one_error(data: impl AsRef<[u8]>) -> WireError {
        let (requests, e) = read_all(Feed::new(data), Limits::default());
        assert!(requests.is_empty(), "{requests:?}");
        e
    }

    fn get(path: &str) -> Request {
        Request {
            method: Method::Get,
            path: path.to_owned(),
            authorization: None,
            idempotency_key: None,
            content_type: None,
            keep_alive: true,
            body: Vec::new(),
        }
    }

    const PIPELINED: &[u8] = b"GET /v1/payments/pay_1 HTTP/1.1\r\nHost: a\r\n\r\n\
POST /v1/payments HTTP/1.1\r\nContent-Length: 12\r\nContent-Type: application/json\r\n\r\n\
{\"amount\":1}\
GET /v1/accounts/7?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n";

    fn pipelined_expected() -> Vec<Request> {
        vec![
            get("/v1/payments/pay_1"),
            {
                let mut r = get("/v1/payments");
                r.method = Method::Post;
                r.content_type = Some("application/json".to_owned());
                r.body = b"{\"amount\":1}".to_vec();
                r
            },
            {
                let mut r = get("/v1/accounts/7");
                r.keep_alive = false;
                r
            },
        ]
    }

    #[test]
    fn simple_get() {
        let mut r = reader(Feed::new("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(block_on(r.next()).unwrap(), get("/healthz"));
        assert!(!r.has_buffered());
        assert!(matches!(block_on(r.next()), Err(WireError::Closed)));
    }

    #[test]
    fn post_with_body_and_fields() {
        // The key carries a raw non-UTF-8 byte: it must pass through untouched.
        let bytes: &[u8] =
            b"POST /v1/payments HTTP/1.1\r\nhost: x\r\nAUTHORIZATION: Bearer sk_1\r\n\
idempotency-KEY: k\xff1\r\ncontent-type: application/json\r\nContent-length: 4\r\n\r\nabcd";
        let mut r = reader(Feed::new(bytes));
        let request = block_on(r.next()).unwrap();
        assert_eq!(
            request,
            Request {
                method: Method::Post,
                path: "/v1/payments".to_owned(),
                authorization: Some("Bearer sk_1".to_owned()),
                idempotency_key: Some(b"k\xff1".to_vec()),
                content_type: Some("application/json".to_owned()),
                keep_alive: true,
                body: b"abcd".to_vec(),
            }
        );
    }

    #[test]
    fn post_without_content_length_has_empty_body() {
        let mut r = reader(Feed::new("POST /v1/transfers HTTP/1.1\r\n\r\n"));
        let request = block_on(r.next()).unwrap();
        assert_eq!(request.method, Method::Post);
        assert!(request.body.is_empty());
    }

    #[test]
    fn other_methods() {
        let mut r = reader(Feed::new(
            "DELETE /a HTTP/1.1\r\n\r\nget /b HTTP/1.1\r\n\r\n",
        ));
        assert_eq!(block_on(r.next()).unwrap().method, Method::Other);
        assert_eq!(block_on(r.next()).unwrap().method, Method::Other);
    }

    #[test]
    fn two_pipelined_in_one_buffer() {
        let data = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let mut r = reader(Feed::new(data));
        assert_eq!(block_on(r.next()).unwrap(), get("/a"));
        assert!(r.has_buffered());
        assert_eq!(block_on(r.next()).unwrap(), get("/b"));
        assert!(!r.has_buffered());
        assert!(matches!(block_on(r.next()), Err(WireError::Closed)));
    }

    #[test]
    fn three_pipelined_in_one_buffer() {
        let mut r = reader(Feed::new(PIPELINED));
        for (i, want) in pipelined_expected().into_iter().enumerate() {
            assert_eq!(block_on(r.next()).unwrap(), want);
            assert_eq!(r.has_buffered(), i < 2);
        }
        assert!(matches!(block_on(r.next()), Err(WireError::Closed)));
    }

    #[test]
    fn pipelined_split_at_every_byte_boundary() {
        for cut in 0..=PIPELINED.len() {
            let (requests, end) = read_all(Feed::cut(PIPELINED, &[cut]), Limits::default());
            assert_eq!(requests, pipelined_expected(), "cut at {cut}");
            assert!(matches!(end, WireError::Closed), "cut at {cut}: {end:?}");
        }
        for a in 0..=PIPELINED.len() {
            for b in a..=PIPELINED.len() {
                let (requests, end) = read_all(Feed::cut(PIPELINED, &[a, b]), Limits::default());
                assert_eq!(requests, pipelined_expected(), "cuts at {a}, {b}");
                assert!(matches!(end, WireError::Closed));
            }
        }
    }

    #[test]
    fn pipelined_one_byte_at_a_time() {
        let (requests, end) = read_all(Feed::chunked(PIPELINED, 1), Limits::default());
        assert_eq!(requests, pipelined_expected());
        assert!(matches!(end, WireError::Closed));
    }

    #[test]
    fn many_pipelined_requests_through_a_small_buffer() {
        // Enough traffic to wrap, compact and grow the buffer many times, in odd slices.
        let mut data = Vec::new();
        let mut want = Vec::new();
        for i in 0..300 {
            let body = vec![b'a' + (i % 26) as u8; i * 7 % 3000];
            data.extend_from_slice(
                format!(
                    "POST /p/{i} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            data.extend_from_slice(&body);
            let mut r = get(&format!("/p/{i}"));
            r.method = Method::Post;
            r.body = body;
            want.push(r);
        }
        for chunk in [1, 7, 1000, 5000, usize::MAX] {
            let mut r = reader(Feed::chunked(&data, chunk));
            for w in &want {
                assert_eq!(&block_on(r.next()).unwrap(), w);
                assert!(r.buf.len() <= 8 * 1024 + 64 * 1024);
            }
            assert!(matches!(block_on(r.next()), Err(WireError::Closed)));
        }
    }

    #[test]
    fn keep_alive_rules() {
        let cases: &[(&str, bool)] = &[
            ("GET / HTTP/1.1\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            (
                "GET / HTTP/1.1\r\nconnection: Keep-Alive, CLOSE\r\n\r\n",
                false,
            ),
            ("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n", true),
            ("GET / HTTP/1.0\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
            ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (
                "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
                false,
            ),
            ("GET / HTTP/1.0\r\nConnection: close\r\n\r\n", false),
        ];
        for &(data, want) in cases {
            let request = block_on(reader(Feed::new(data)).next()).unwrap();
            assert_eq!(request.keep_alive, want, "{data:?}");
        }
    }

    #[test]
    fn query_string_is_dropped() {
        let mut r = reader(Feed::new(
            "GET /v1/payments/pay_1?expand=a&b=%3F HTTP/1.1\r\n\r\nGET /x? HTTP/1.1\r\n\r\n",
        ));
        assert_eq!(block_on(r.next()).unwrap().path, "/v1/payments/pay_1");
        assert_eq!(block_on(r.next()).unwrap().path, "/x");
    }

    #[test]
    fn leading_blank_lines_are_skipped() {
        let data =
            "POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi\r\n\r\nGET /b HTTP/1.1\r\n\r\n\r\n";
        let (requests, end) = read_all(Feed::chunked(data, 1), Limits::default());
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1], get("/b"));
        assert!(matches!(end, WireError::Closed), "{end:?}");
    }

    #[test]
    fn bare_lf_line_endings() {
        let mut r = reader(Feed::chunked("GET /a HTTP/1.1\nHost: x\n\n", 1));
        assert_eq!(block_on(r.next()).unwrap(), get("/a"));
    }

    #[test]
    fn closed_on_clean_eof() {
        assert!(matches!(one_error(""), WireError::Closed));
        assert!(matches!(one_error("\r\n"), WireError::Closed));
    }

    #[test]
    fn header_line_too_long() {
        let data = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(9000));
        assert!(matches!(one_error(&data), WireError::HeaderTooLarge));
        // Fed a byte at a time, it gives up as soon as the head passes the limit.
        let mut r = reader(Feed::chunked(&data, 1));
        assert!(matches!(block_on(r.next()), Err(WireError::HeaderTooLarge)));
        assert_eq!(r.get_mut().pos, 8 * 1024);
        assert!(r.buf.len() <= 8 * 1024 + 64 * 1024);
    }

    #[test]
    fn head_size_limit_is_exact() {
        let limits = Limits {
            max_header_bytes: 64,
            max_headers: 4,
            max_body_bytes: 0,
        };
        let head = |len: usize| {
            let fixed = "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
            format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(len - fixed))
        };
        for chunk in [1, 3, usize::MAX] {
            let (requests, end) = read_all(Feed::chunked(head(64), chunk), limits);
            assert_eq!(requests.len(), 1);
            assert!(matches!(end, WireError::Closed));
            let (requests, end) = read_all(Feed::chunked(head(65), chunk), limits);
            assert!(requests.is_empty());
            assert!(matches!(end, WireError::HeaderTooLarge), "{end:?}");
        }
    }

    #[test]
    fn too_many_headers() {
        let headers = |n: usize| {
            let mut s = String::from("GET / HTTP/1.1\r\n");
            for i in 0..n {
                s.push_str(&format!("X-{i}: v\r\n"));
            }
            s + "\r\n"
        };
        assert_eq!(
            block_on(reader(Feed::new(headers(32))).next()).unwrap(),
            get("/")
        );
        assert!(matches!(one_error(headers(33)), WireError::TooManyHeaders));
    }

    #[test]
    fn body_too_large_is_refused_before_the_body() {
        // No body bytes at all follow: the answer must not wait for them.
        let data = "POST /v1/payments HTTP/1.1\r\nContent-Length: 10485760\r\n\r\n";
        assert!(matches!(one_error(data), WireError::BodyTooLarge));
        let huge = "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n";
        assert!(matches!(one_error(huge), WireError::BodyTooLarge));
    }

    #[test]
    fn body_size_limit_is_exact() {
        let post = |len: usize| {
            let mut data = format!("POST / HTTP/1.1\r\nContent-Length: {len}\r\n\r\n").into_bytes();
            data.resize(data.len() + len, b'x');
            data
        };
        let (requests, end) = read_all(Feed::chunked(post(64 * 1024), 1000), Limits::default());
        assert_eq!(requests[0].body.len(), 64 * 1024);
        assert!(matches!(end, WireError::Closed));
        assert!(matches!(
            one_error(post(64 * 1024 + 1)),
            WireError::BodyTooLarge
        ));
    }

    #[test]
    fn transfer_encoding_rules() {
        let cl_and_te =
            "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(matches!(one_error(cl_and_te), WireError::BadRequest(_)));
        let te_and_cl =
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n";
        assert!(matches!(one_error(te_and_cl), WireError::BadRequest(_)));
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(matches!(one_error(chunked), WireError::LengthRequired));
        let upper = "POST / HTTP/1.1\r\ntransfer-encoding: CHUNKED\r\n\r\n";
        assert!(matches!(one_error(upper), WireError::LengthRequired));
        for te in ["gzip", "gzip, chunked", "chunked, chunked", "identity", ""] {
            let data = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert!(matches!(one_error(&data), WireError::BadRequest(_)), "{te}");
        }
        let twice =
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(one_error(twice), WireError::BadRequest(_)));
    }

    #[test]
    fn content_length_rules() {
        let two = "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
        assert!(matches!(one_error(two), WireError::BadRequest(_)));
        let same = "POST / HTTP/1.1\r\nContent-Length: 4\r\ncontent-length: 4\r\n\r\nabcd";
        assert!(matches!(one_error(same), WireError::BadRequest(_)));
        for cl in ["abc", "-1", "+4", "4, 4", "0x4", "4 4", "", "4.0"] {
            let data = format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\nabcd");
            assert!(
                matches!(one_error(&data), WireError::BadRequest(_)),
                "{cl:?}"
            );
        }
        // Surrounding whitespace is not part of the value.
        let padded = "POST / HTTP/1.1\r\nContent-Length:  4 \r\n\r\nabcd";
        assert_eq!(
            block_on(reader(Feed::new(padded)).next()).unwrap().body,
            b"abcd"
        );
    }

    #[test]
    fn malformed_heads() {
        let cases: &[&[u8]] = &[
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", // a TLS ClientHello
            b"HELLO\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET /a\0b HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX\0: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/0.9\r\n\r\n",
            b"GET / HTTP/1.1\rX: y\r\n\r\n",
        ];
        for &data in cases {
            for chunk in [1, usize::MAX] {
                let (requests, end) = read_all(Feed::chunked(data, chunk), Limits::default());
                assert!(requests.is_empty(), "{data:?}");
                assert!(matches!(end, WireError::BadRequest(_)), "{data:?}: {end:?}");
            }
        }
        let e = one_error("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(matches!(
            e,
            WireError::BadRequest("unsupported HTTP version")
        ));
    }

    #[test]
    fn garbage_is_refused_on_its_first_bytes() {
        // A TLS ClientHello on the plaintext port never sends a blank line; don't wait for one.
        let mut hello = vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        hello.resize(600, 0xab);
        let mut r = reader(Feed::chunked(&hello, 1));
        assert!(matches!(block_on(r.next()), Err(WireError::BadRequest(_))));
        assert_eq!(r.get_mut().pos, 1);
    }

    #[test]
    fn end_of_head_is_searched_in_new_bytes_only() {
        assert!(head_may_end(b"GET / HTTP/1.1\r\n\r\n", 0));
        assert!(head_may_end(b"GET / HTTP/1.1\r\n\r\n", 17));
        assert!(head_may_end(b"GET / HTTP/1.1\n\n", 15));
        assert!(!head_may_end(b"GET / HTTP/1.1\r\n\r\n", 18));
        assert!(!head_may_end(b"GET / HTTP/1.1\r\nX: y\r\n", 0));
        assert!(!head_may_end(b"\n", 0));
    }

    #[test]
    fn non_utf8_field_values() {
        let auth = b"GET / HTTP/1.1\r\nAuthorization: Bearer \xff\r\n\r\n";
        assert!(matches!(one_error(auth), WireError::BadRequest(_)));
        let ct = b"POST / HTTP/1.1\r\nContent-Type: \xc3(\r\n\r\n";
        assert!(matches!(one_error(ct), WireError::BadRequest(_)));
        // Headers we do not read may carry any obs-text.
        let other = b"GET / HTTP/1.1\r\nUser-Agent: \xff\r\n\r\n";
        assert_eq!(block_on(reader(Feed::new(other)).next()).unwrap(), get("/"));
    }

    #[test]
    fn duplicate_fields_we_read() {
        for name in ["Authorization", "Idempotency-Key", "Content-Type"] {
            let data = format!("POST / HTTP/1.1\r\n{name}: a\r\n{name}: b\r\n\r\n");
            assert!(
                matches!(one_error(&data), WireError::BadRequest(_)),
                "{name}"
            );
        }
    }

    #[test]
    fn eof_mid_request() {
        let cases = [
            "G",
            "GET / HTTP/1.1",
            "GET / HTTP/1.1\r\nHost: x\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\r",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcd",
        ];
        for data in cases {
            for chunk in [1, usize::MAX] {
                let (requests, end) = read_all(Feed::chunked(data, chunk), Limits::default());
                assert!(requests.is_empty());
                assert!(matches!(end, WireError::BadRequest(_)), "{data:?}: {end:?}");
            }
        }
        // A complete request, then half of the next one.
        let (requests, end) = read_all(
            Feed::new("GET /a HTTP/1.1\r\n\r\nGET /b HTT"),
            Limits::default(),
        );
        assert_eq!(requests, vec![get("/a")]);
        assert!(matches!(end, WireError::BadRequest(_)));
    }

    #[test]
    fn io_error_and_fused_after_errors() {
        let mut r = RequestReader::new(Broken, Limits::default());
        let e = block_on(r.next()).unwrap_err();
        assert!(matches!(&e, WireError::Io(err) if err.kind() == io::ErrorKind::ConnectionReset));
        assert_eq!(e.status(), 0);
        let mut r = reader(Feed::new("BAD\r\n\r\nGET / HTTP/1.1\r\n\r\n"));
        assert!(matches!(block_on(r.next()), Err(WireError::BadRequest(_))));
        assert!(matches!(block_on(r.next()), Err(WireError::Closed)));
    }

    #[test]
    fn next_is_cancel_safe() {
        // Drop the future at a stall (as a timeout would), then carry on: nothing read or
        // parsed may be lost. The stream ends right after the body, so a lost head could
        // never be found again.
        let data = "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n";
        let single = &data[..data.find("GET").unwrap()];
        for (data, want) in [(data, 2), (single, 1)] {
            for stall in 1..data.len() {
                let mut feed = Feed::chunked(data, 3);
                feed.stall_at = Some(stall);
                let mut r = reader(feed);
                let mut requests = Vec::new();
                let end = loop {
                    let next = match block_on(poll_once(r.next())) {
                        Some(done) => done,
                        None => block_on(r.next()),
                    };
                    match next {
                        Ok(request) => requests.push(request),
                        Err(e) => break e,
                    }
                };
                assert!(
                    matches!(end, WireError::Closed),
                    "stall at {stall}: {end:?}"
                );
                assert_eq!(requests.len(), want, "stall at {stall}");
                assert_eq!(requests[0].body, b"hello", "stall at {stall}");
                if want == 2 {
                    assert_eq!(requests[1], get("/b"), "stall at {stall}");
                }
            }
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(WireError::Closed.status(), 0);
        assert_eq!(WireError::HeaderTooLarge.status(), 431);
        assert_eq!(WireError::TooManyHeaders.status(), 431);
        assert_eq!(WireError::BodyTooLarge.status(), 413);
        assert_eq!(WireError::LengthRequired.status(), 411);
        assert_eq!(WireError::BadRequest("x").status(), 400);
        for status in [
            200, 201, 400, 401, 402, 403, 404, 405, 408, 409, 411, 413, 422, 429,
        ] {
            assert!(!reason(status).is_empty(), "{status}");
        }
        for status in [431, 500, 501, 503] {
            assert!(!reason(status).is_empty(), "{status}");
        }
        assert_eq!(reason(413), "Content Too Large");
        assert_eq!(reason(422), "Unprocessable Content");
        assert_eq!(reason(299), "");
    }

    #[test]
    fn write_response_exact_bytes() {
        let mut out = b"previous".to_vec();
        write_response(
            &mut out,
            402,
            &[("Idempotent-Replayed", "true"), ("retry-after", "1")],
            "application/json",
            b"{\"error\":{}}",
            true,
        );
        let want = "previousHTTP/1.1 402 Payment Required\r\n\
content-type: application/json\r\n\
content-length: 12\r\n\
connection: keep-alive\r\n\
Idempotent-Replayed: true\r\n\
retry-after: 1\r\n\
\r\n\
{\"error\":{}}";
        assert_eq!(String::from_utf8(out).unwrap(), want);

        let mut out = Vec::new();
        write_response(&mut out, 204, &[], "text/plain", b"", false);
        assert_eq!(
            out,
            b"HTTP/1.1 204 No Content\r\ncontent-type: text/plain\r\n\
content-length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn written_responses_parse_back() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            503,
            &[("Retry-After", "2")],
            "application/json",
            b"{}",
            false,
        );
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut slots);
        let head_len = match response.parse(&out).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(response.code, Some(503));
        assert_eq!(response.reason, Some("Service Unavailable"));
        assert_eq!(&out[head_len..], b"{}");
    }

    #[test]
    #[should_panic]
    fn write_response_refuses_header_injection() {
        write_response(
            &mut Vec::new(),
            200,
            &[("X", "a\r\nSet-Cookie: b")],
            "t",
            b"",
            true,
        );
    }
}
