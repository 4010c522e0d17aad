//! Malformed requests of every kind, over real sockets: each gets the right status and an
//! error object, and the server keeps serving (on the same connection while keep-alive
//! applies, and always on a new one).
mod common;
use common::*;
use serde_json::Value;
use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

const EXP: (u8, u16) = (12, 2030);

/// How the request's bytes are sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Send {
    /// All at once.
    All,
    /// All at once, then the write half is shut (the peer sees EOF).
    ThenClose,
    /// From another thread while the answer is read (a client that sends a huge body whole);
    /// the write may fail once the server has answered and closed.
    Background,
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    send: Send,
    status: u16,
    /// The error object's `code`, when the case pins it.
    code: Option<&'static str>,
    /// The error object's `param`: None = not checked, Some((field, true)) = null or `field`,
    /// Some((field, false)) = exactly `field`.
    param: Option<(&'static str, bool)>,
    /// Whether the connection stays open for the next request.
    keep_alive: bool,
    allow: Option<&'static str>,
}

fn case(name: &'static str, bytes: Vec<u8>, status: u16, keep_alive: bool) -> Case {
    Case {
        name,
        bytes,
        send: Send::All,
        status,
        code: None,
        param: None,
        keep_alive,
        allow: None,
    }
}

impl Case {
    fn code(mut self, code: &'static str) -> Case {
        self.code = Some(code);
        self
    }
    fn param(mut self, field: &'static str) -> Case {
        self.param = Some((field, false));
        self
    }
    /// serde does not always name the field; when it does not, param must be null (and never
    /// the offending value).
    fn param_or_null(mut self, field: &'static str) -> Case {
        self.param = Some((field, true));
        self
    }
    fn allow(mut self, allow: &'static str) -> Case {
        self.allow = Some(allow);
        self
    }
    fn send(mut self, send: Send) -> Case {
        self.send = send;
        self
    }
}

/// One HTTP/1.1 request: Host, optional bearer, extra header lines, and a Content-Length body.
fn request(
    method: &str,
    path: &str,
    bearer: Option<&str>,
    headers: &[&str],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: corepay\r\n").into_bytes();
    if let Some(key) = bearer {
        out.extend_from_slice(format!("Authorization: Bearer {key}\r\n").as_bytes());
    }
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(body) = body {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.unwrap_or_default());
    out
}

/// The fixture: a gateway with a request timeout short enough to test, a merchant, a card and
/// one authorized payment to read back after every case.
struct Fixture {
    s: Server,
    key: String,
    number: String,
    payment: Value,
}

impl Fixture {
    fn new() -> Fixture {
        let s = Server::start_with(2, "[http]\nrequest_timeout_ms = 500\n");
        let acct = account_on_shard(1, 2, 1000);
        create_account(&s, acct, "EUR", "100.00");
        let number = card_number("400000000000777");
        create_card(&s, &number, acct);
        let settle = account_on_shard(0, 2, 5000);
        create_account(&s, settle, "EUR", "0.00");
        let key = create_merchant(&s, "SHOP1", settle);
        let (status, payment) = Client::with_key(s.http, &key).post(
            "/v1/payments",
            &payment_json("1.00", "EUR", &number, EXP, false, "fixture"),
        );
        assert_eq!(status, 201, "{payment}");
        Fixture {
            s,
            key,
            number,
            payment,
        }
    }

    fn payment_id(&self) -> &str {
        self.payment["id"].as_str().unwrap()
    }

    fn good_body(&self) -> Vec<u8> {
        payment_json("1.00", "EUR", &self.number, EXP, false, "ref").into_bytes()
    }

    /// A good payment body with `from` replaced by `to` (which must change it).
    fn body(&self, from: &str, to: &str) -> Vec<u8> {
        let good = String::from_utf8(self.good_body()).unwrap();
        let changed = good.replacen(from, to, 1);
        assert_ne!(changed, good, "{from} not in the body");
        changed.into_bytes()
    }

    /// POST /v1/payments with a good body changed by `body(from, to)`.
    fn pay(&self, from: &str, to: &str) -> Vec<u8> {
        self.post_payment(self.body(from, to))
    }

    fn post_payment(&self, body: Vec<u8>) -> Vec<u8> {
        request("POST", "/v1/payments", Some(&self.key), &[], Some(&body))
    }

    /// A normal request on `c`: the fixture's payment reads back unchanged.
    fn assert_serves(&self, c: &mut Client, what: &str) {
        let bytes = request(
            "GET",
            &format!("/v1/payments/{}", self.payment_id()),
            Some(&self.key),
            &[],
            None,
        );
        if let Err(e) = c.send_raw(&bytes) {
            panic!("{what}: cannot send a normal request: {e}");
        }
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("{what}: no answer to a normal request: {e}"));
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        assert_eq!(r.body, self.payment, "{what}");
    }

    fn cases(&self) -> Vec<Case> {
        let key = self.key.as_str();
        let id = self.payment_id().to_string();
        let get = |path: &str| request("GET", path, Some(key), &[], None);
        let post = |path: &str, body: &[u8]| request("POST", path, Some(key), &[], Some(body));
        let with_headers = |headers: &[&str]| {
            request(
                "GET",
                &format!("/v1/payments/{id}"),
                Some(key),
                headers,
                None,
            )
        };
        let good = self.good_body();
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"xyz");
        let mut twice = good.clone();
        twice.extend_from_slice(&good);
        let mut bad_utf8 = self.pay("\"ref\"", "\"r\u{e9}f\"");
        let at = bad_utf8.iter().position(|&b| b == 0xc3).unwrap();
        bad_utf8[at] = 0xff;
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes();
        let long_header = format!("X-Filler: {}", "a".repeat(9000));
        let many: Vec<String> = (0..40).map(|i| format!("X-H{i}: v")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let long_key = format!("Idempotency-Key: {}", "k".repeat(256));
        let auth_post = |auth: &str| {
            let mut r = format!("POST /v1/payments HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: ")
                .into_bytes();
            r.extend_from_slice(format!("{}\r\n\r\n", good.len()).as_bytes());
            r.extend_from_slice(&good);
            r
        };
        let head = |lines: &str| {
            format!("POST /v1/payments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n{lines}\r\n")
                .into_bytes()
        };

        vec![
            // ---- JSON bodies: answered, and the connection stays usable ----
            case(
                "json_truncated",
                self.post_payment(br#"{"amount":"1.00","#.to_vec()),
                400,
                true,
            )
            .code("parameter_invalid"),
            case(
                "json_not_json",
                self.post_payment(b"hello".to_vec()),
                400,
                true,
            )
            .code("parameter_invalid"),
            case(
                "json_trailing_garbage",
                self.post_payment(trailing),
                400,
                true,
            )
            .code("parameter_invalid"),
            case("json_two_objects", self.post_payment(twice), 400, true),
            case("json_array", self.post_payment(b"[]".to_vec()), 400, true),
            case("json_null", self.post_payment(b"null".to_vec()), 400, true),
            case("json_empty_body", self.post_payment(Vec::new()), 400, true).code("body_missing"),
            case("json_nul_byte", self.pay("\"ref\"", "\"r\0f\""), 400, true),
            case("json_invalid_utf8", bad_utf8, 400, true),
            case("json_nested_5000_deep", self.post_payment(deep), 400, true),
            case(
                "json_unknown_field",
                self.pay(r#""amount""#, r#""tip":"1.00","amount""#),
                400,
                true,
            )
            .code("parameter_invalid")
            .param("tip"),
            case(
                "json_unknown_card_field",
                self.pay(r#""exp_month""#, r#""cvv":"123","exp_month""#),
                400,
                true,
            )
            .param("cvv"),
            case(
                "json_duplicate_field",
                self.pay(r#""amount":"1.00""#, r#""amount":"1.00","amount":"2.00""#),
                400,
                true,
            )
            .param("amount"),
            case(
                "json_missing_amount",
                self.pay(r#""amount":"1.00","#, ""),
                400,
                true,
            )
            .param("amount"),
            case(
                "json_missing_card_number",
                self.pay(&format!(r#""number":"{}","#, self.number), ""),
                400,
                true,
            )
            .param("number"),
            case(
                "json_missing_card",
                self.post_payment(br#"{"amount":"1.00","currency":"EUR"}"#.to_vec()),
                400,
                true,
            )
            .param("card"),
            case(
                "json_capture_is_a_string",
                self.pay(r#""capture":false"#, r#""capture":"yes""#),
                400,
                true,
            )
            .param_or_null("capture"),
            case(
                "json_exp_month_is_a_string",
                self.pay(r#""exp_month":12"#, r#""exp_month":"12""#),
                400,
                true,
            )
            .param_or_null("exp_month"),
            case(
                "json_exp_month_overflows",
                self.pay(r#""exp_month":12"#, r#""exp_month":300"#),
                400,
                true,
            ),
            case(
                "json_exp_year_negative",
                self.pay(r#""exp_year":2030"#, r#""exp_year":-1"#),
                400,
                true,
            ),
            case(
                "amount_is_a_json_number",
                self.pay(r#""amount":"1.00""#, r#""amount":1.00"#),
                400,
                true,
            )
            .param_or_null("amount"),
            case(
                "amount_is_a_huge_json_number",
                self.pay(r#""amount":"1.00""#, r#""amount":1e400"#),
                400,
                true,
            ),
            case(
                "currency_is_a_number",
                self.pay(r#""currency":"EUR""#, r#""currency":978"#),
                400,
                true,
            )
            .param_or_null("currency"),
            // ---- semantic validation: 422 naming the field ----
            case("amount_negative", self.pay("\"1.00\"", "\"-1\""), 422, true)
                .code("amount_not_positive")
                .param("amount"),
            case("amount_zero", self.pay("\"1.00\"", "\"0.00\""), 422, true)
                .code("amount_not_positive")
                .param("amount"),
            case(
                "amount_too_precise",
                self.pay("\"1.00\"", "\"1.005\""),
                422,
                true,
            )
            .code("amount_too_precise")
            .param("amount"),
            case(
                "amount_exponent",
                self.pay("\"1.00\"", "\"1e400\""),
                422,
                true,
            )
            .code("amount_invalid")
            .param("amount"),
            case("amount_empty", self.pay("\"1.00\"", "\"\""), 422, true)
                .code("amount_invalid")
                .param("amount"),
            case(
                "amount_leading_space",
                self.pay("\"1.00\"", "\" 1\""),
                422,
                true,
            )
            .code("amount_invalid")
            .param("amount"),
            case(
                "amount_decimal_comma",
                self.pay("\"1.00\"", "\"1,00\""),
                422,
                true,
            )
            .code("amount_invalid")
            .param("amount"),
            case("amount_letters", self.pay("\"1.00\"", "\"abc\""), 422, true)
                .code("amount_invalid")
                .param("amount"),
            case(
                "amount_plus_sign",
                self.pay("\"1.00\"", "\"+1.00\""),
                422,
                true,
            )
            .code("amount_invalid")
            .param("amount"),
            case(
                "amount_too_large",
                self.pay("\"1.00\"", "\"99999999999999999999999999\""),
                422,
                true,
            )
            .code("amount_too_large")
            .param("amount"),
            case(
                "currency_unknown",
                self.pay("\"EUR\"", "\"XYZ\""),
                422,
                true,
            )
            .code("invalid_currency")
            .param("currency"),
            case(
                "currency_too_long",
                self.pay("\"EUR\"", "\"EURO\""),
                422,
                true,
            )
            .code("invalid_currency")
            .param("currency"),
            case(
                "card_number_too_short",
                self.pay(&self.number, "4242"),
                422,
                true,
            )
            .code("invalid_number")
            .param("card[number]"),
            case(
                "card_number_letters",
                self.pay(&self.number, "4242abcd42424242"),
                422,
                true,
            )
            .code("invalid_number")
            .param("card[number]"),
            case(
                "card_number_too_long",
                self.pay(&self.number, "42424242424242424242"),
                422,
                true,
            )
            .code("invalid_number"),
            case(
                "exp_month_13",
                self.pay(r#""exp_month":12"#, r#""exp_month":13"#),
                422,
                true,
            )
            .code("invalid_expiry_month")
            .param("card[exp_month]"),
            case(
                "exp_month_0",
                self.pay(r#""exp_month":12"#, r#""exp_month":0"#),
                422,
                true,
            )
            .code("invalid_expiry_month"),
            case(
                "exp_year_two_digits",
                self.pay(r#""exp_year":2030"#, r#""exp_year":30"#),
                422,
                true,
            )
            .code("invalid_expiry_year")
            .param("card[exp_year]"),
            case(
                "reference_too_long",
                self.pay("\"ref\"", &format!("\"{}\"", "r".repeat(65))),
                422,
                true,
            )
            .code("reference_too_long")
            .param("reference"),
            case(
                "capture_amount_is_a_number",
                post(&format!("/v1/payments/{id}/capture"), br#"{"amount":5}"#),
                400,
                true,
            )
            .param_or_null("amount"),
            case(
                "capture_unknown_field",
                post(
                    &format!("/v1/payments/{id}/capture"),
                    br#"{"amount":"1.00","final":true}"#,
                ),
                400,
                true,
            )
            .param("final"),
            case(
                "capture_amount_too_precise",
                post(
                    &format!("/v1/payments/{id}/capture"),
                    br#"{"amount":"0.001"}"#,
                ),
                422,
                true,
            )
            .code("amount_too_precise")
            .param("amount"),
            case(
                "refund_bad_json",
                post(&format!("/v1/payments/{id}/refunds"), b"{amount: 1}"),
                400,
                true,
            ),
            case(
                "void_with_a_body",
                post(&format!("/v1/payments/{id}/void"), br#"{"reason":"x"}"#),
                400,
                true,
            )
            .param("reason"),
            // ---- routes, methods and keys ----
            case(
                "payment_id_bad_format",
                get("/v1/payments/pay_x"),
                404,
                true,
            )
            .code("resource_missing"),
            case(
                "payment_id_leading_zero",
                get("/v1/payments/pay_0_01"),
                404,
                true,
            ),
            case(
                "payment_id_overflows",
                get("/v1/payments/pay_0_99999999999999999999999"),
                404,
                true,
            ),
            case(
                "payment_id_negative",
                get("/v1/payments/pay_-1_1"),
                404,
                true,
            ),
            case("unknown_route", get("/v2/payments"), 404, true).code("not_found"),
            case(
                "unknown_route_deeper",
                get("/v1/payments/a/b/c/d"),
                404,
                true,
            ),
            case(
                "delete_payment",
                request(
                    "DELETE",
                    &format!("/v1/payments/{id}"),
                    Some(key),
                    &[],
                    None,
                ),
                405,
                true,
            )
            .code("method_not_allowed")
            .allow("GET"),
            case("get_on_create_payment", get("/v1/payments"), 405, true).allow("POST"),
            case(
                "lower_case_post",
                request("post", "/v1/payments", Some(key), &[], Some(&good)),
                405,
                true,
            )
            .allow("POST"),
            case("no_authorization", auth_post(""), 401, true).code("unauthorized"),
            case(
                "basic_authorization",
                auth_post("Authorization: Basic dXNlcjpwYXNz\r\n"),
                401,
                true,
            )
            .code("unauthorized"),
            case(
                "unknown_bearer_key",
                auth_post("Authorization: Bearer sk_live_nobody\r\n"),
                401,
                true,
            )
            .code("unauthorized"),
            case(
                "empty_bearer_key",
                auth_post("Authorization: Bearer \r\n"),
                401,
                true,
            ),
            case(
                "admin_key_on_merchant_path",
                auth_post(&format!("Authorization: Bearer {ADMIN_KEY}\r\n")),
                403,
                true,
            )
            .code("forbidden"),
            // The admin plane is not on the merchant listener at all, whoever asks.
            case(
                "admin_path_on_the_merchant_listener",
                request("GET", "/v1/accounts/1000", Some(key), &[], None),
                404,
                true,
            )
            .code("not_found"),
            case(
                "admin_key_and_admin_path_on_the_merchant_listener",
                request("POST", "/v1/accounts", Some(ADMIN_KEY), &[], Some(b"{}")),
                404,
                true,
            )
            .code("not_found"),
            case(
                "idempotency_key_too_long",
                request("POST", "/v1/payments", Some(key), &[&long_key], Some(&good)),
                400,
                true,
            )
            .code("idempotency_key_invalid")
            .param("Idempotency-Key"),
            // ---- framing: answered, then the connection is closed ----
            case("header_too_long", with_headers(&[&long_header]), 431, false),
            case("forty_headers", with_headers(&many), 431, false),
            case(
                "body_of_10_mb",
                head("Content-Length: 10485760\r\n"),
                413,
                false,
            ),
            case(
                "body_of_10_mb_sent_whole",
                {
                    let mut r = head("Content-Length: 10485760\r\n");
                    r.resize(r.len() + 10 * 1024 * 1024, b'1');
                    r
                },
                413,
                false,
            )
            .send(Send::Background),
            case(
                "body_just_over_64_kib",
                head("Content-Length: 65537\r\n"),
                413,
                false,
            ),
            case(
                "content_length_with_chunked",
                head("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
                400,
                false,
            ),
            case(
                "chunked_alone",
                head("Transfer-Encoding: chunked\r\n"),
                411,
                false,
            ),
            case(
                "transfer_encoding_gzip",
                head("Transfer-Encoding: gzip\r\n"),
                400,
                false,
            ),
            case(
                "two_content_lengths",
                head("Content-Length: 2\r\nContent-Length: 2\r\n"),
                400,
                false,
            ),
            case(
                "negative_content_length",
                head("Content-Length: -1\r\n"),
                400,
                false,
            ),
            case(
                "content_length_not_a_number",
                head("Content-Length: ten\r\n"),
                400,
                false,
            ),
            case(
                "two_authorization_headers",
                head("Authorization: Bearer x\r\nContent-Length: 0\r\n"),
                400,
                false,
            ),
            case(
                "garbage_request_line",
                b"HELLO\r\n\r\n".to_vec(),
                400,
                false,
            ),
            case(
                "http_2_preface",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                400,
                false,
            ),
            case(
                "http_1_2",
                b"GET / HTTP/1.2\r\nHost: x\r\n\r\n".to_vec(),
                400,
                false,
            ),
            case(
                "nul_in_request_line",
                b"GET /v1/pay\0ments HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                400,
                false,
            ),
            case(
                "nul_in_header_value",
                b"GET /v1/payments/pay_0_1 HTTP/1.1\r\nHost: x\0y\r\n\r\n".to_vec(),
                400,
                false,
            ),
            case(
                "space_before_colon",
                b"GET /v1/payments/pay_0_1 HTTP/1.1\r\nHost : x\r\n\r\n".to_vec(),
                400,
                false,
            ),
            case(
                "tls_client_hello",
                vec![
                    0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
                ],
                400,
                false,
            ),
            case(
                "body_shorter_than_content_length_then_close",
                {
                    let mut r = head("Content-Length: 100\r\n");
                    r.extend_from_slice(br#"{"amount":"#);
                    r
                },
                400,
                false,
            )
            .send(Send::ThenClose),
            case(
                "head_cut_off_then_close",
                b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Le".to_vec(),
                400,
                false,
            )
            .send(Send::ThenClose),
            case(
                "slow_headers",
                b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Type: applic".to_vec(),
                408,
                false,
            )
            .code("request_timeout"),
            case(
                "slow_body",
                {
                    let mut r = head("Content-Length: 100\r\n");
                    r.extend_from_slice(br#"{"amount":"#);
                    r
                },
                408,
                false,
            )
            .code("request_timeout"),
        ]
    }

    /// Sends one case on a new connection and checks the answer and what follows.
    fn run(&self, c: &Case) {
        let mut conn = Client::connect(self.s.http);
        conn.stream
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut writer = None;
        if c.send == Send::Background {
            let mut w = conn.stream.get_ref().try_clone().unwrap();
            let bytes = c.bytes.clone();
            writer = Some(std::thread::spawn(move || {
                let _ = w.write_all(&bytes);
            }));
        } else {
            conn.send_raw(&c.bytes)
                .unwrap_or_else(|e| panic!("{}: send: {e}", c.name));
        }
        if c.send == Send::ThenClose {
            conn.stream.get_ref().shutdown(Shutdown::Write).unwrap();
        }
        let r = conn.read_response();
        if let Some(w) = writer {
            // The server closed: the rest of the body cannot be sent; stop sending it.
            let _ = conn.stream.get_ref().shutdown(Shutdown::Both);
            w.join().unwrap();
        }
        let r = r.unwrap_or_else(|e| panic!("{}: no answer: {e}", c.name));
        assert_eq!(r.status, c.status, "{}: {}", c.name, r.body);
        assert!(!r.raw.is_empty(), "{}: an answer without a body", c.name);
        let e = &r.body["error"];
        assert!(e.is_object(), "{}: no error object: {:?}", c.name, r.raw);
        for field in ["type", "code", "message"] {
            assert!(
                e[field].as_str().is_some_and(|t| !t.is_empty()),
                "{}: error.{field} missing: {e}",
                c.name
            );
        }
        assert!(
            e.get("param").is_some() && e.get("decline_code").is_some(),
            "{}: {e}",
            c.name
        );
        if let Some(code) = c.code {
            assert_eq!(e["code"], code, "{}: {e}", c.name);
        }
        match c.param {
            Some((field, false)) => assert_eq!(e["param"], field, "{}: {e}", c.name),
            Some((field, true)) => assert!(
                e["param"].is_null() || e["param"] == field,
                "{}: param must be null or name the field {field:?}, not a value: {e}",
                c.name
            ),
            None => {}
        }
        assert_eq!(r.header("Allow"), c.allow, "{}", c.name);
        assert!(
            !String::from_utf8_lossy(&r.raw).contains(&self.number),
            "{}: the PAN is echoed",
            c.name
        );
        let connection = r.header("Connection").unwrap_or("").to_ascii_lowercase();
        if c.keep_alive {
            assert_eq!(connection, "keep-alive", "{}", c.name);
            self.assert_serves(&mut conn, &format!("{} (same connection)", c.name));
        } else {
            assert_eq!(connection, "close", "{}", c.name);
            // Nothing more comes on this connection.
            let _ = conn.stream.get_mut().write_all(b"GET / HTTP/1.1\r\n\r\n");
            assert!(
                conn.read_response().is_err(),
                "{}: the connection stayed open",
                c.name
            );
        }
        self.assert_serves(
            &mut self.s.client(),
            &format!("{} (new connection)", c.name),
        );
    }
}

#[test]
fn every_malformed_request_is_answered_and_the_server_keeps_serving() {
    let mut f = Fixture::new();
    let payments_before = payments_count(&f.s);
    let cases = f.cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut names = std::collections::HashSet::new();
    let mut failed = Vec::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case name {}", c.name);
        // Every case runs, so one failure does not hide the others.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.run(c))).is_err() {
            failed.push(c.name);
        }
    }
    assert!(failed.is_empty(), "failed cases (see above): {failed:?}");
    // Nothing malformed created a payment or moved money.
    assert_eq!(payments_count(&f.s), payments_before);
    assert_eq!(
        balance_held(&f.s, account_on_shard(1, 2, 1000)),
        ("100.00".to_string(), "1.00".to_string())
    );
    assert_conservation(&f.s);
    let (status, _, metrics) = raw_get(f.s.operator, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200);
    assert!(!metrics.is_empty());
    assert!(
        f.s.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the server died; log:\n{}",
        f.s.log()
    );
}

/// A bad request in the middle of a pipeline is answered in its place; the requests around it
/// are answered too.
#[test]
fn a_bad_body_inside_a_pipeline_is_answered_in_order() {
    let f = Fixture::new();
    let read = request(
        "GET",
        &format!("/v1/payments/{}", f.payment_id()),
        Some(&f.key),
        &[],
        None,
    );
    let mut bytes = read.clone();
    bytes.extend(f.post_payment(b"{\"amount\":".to_vec()));
    bytes.extend(f.post_payment(f.body("\"1.00\"", "\"1.005\"")));
    bytes.extend(read.clone());
    let mut c = f.s.client();
    c.send_raw(&bytes).unwrap();
    let statuses: Vec<u16> = (0..4).map(|_| c.read_response().unwrap().status).collect();
    assert_eq!(statuses, [200, 400, 422, 200]);
    f.assert_serves(&mut c, "after the pipeline");
}

/// Many connections at once each sending garbage do not stop the server answering others.
#[test]
fn garbage_from_many_connections_at_once() {
    let mut f = Fixture::new();
    let addr = f.s.http;
    let threads: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                for j in 0..10u8 {
                    let mut c = Client::connect(addr);
                    let garbage: Vec<u8> = (0..200u16).map(|k| (k as u8) ^ (i * 31 + j)).collect();
                    let _ = c.send_raw(&garbage);
                    // An answer or a close, never a hang.
                    if let Ok(r) = c.read_response() {
                        assert_eq!(r.status, 400);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    f.assert_serves(&mut f.s.client(), "after the garbage");
    assert!(f.s.child.as_mut().unwrap().try_wait().unwrap().is_none());
}

fn payments_count(s: &Server) -> u64 {
    s.ledger()["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sh| sh["payments"].as_u64().unwrap())
        .sum()
}

/// A complete request followed by the start of the next one (a pipelining client whose second
/// request spans two TCP segments): the first is answered at once, without waiting for the
/// second to complete, and the second is answered when its rest arrives.
#[test]
fn a_complete_request_is_answered_while_the_next_one_is_still_arriving() {
    let s = Server::start_with(2, "[http]\nrequest_timeout_ms = 3000\n");
    let read = format!("GET /v1/ledger HTTP/1.1\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n");
    let (start, rest) = read.split_at(20);
    let mut c = Client::connect(s.operator);
    c.send_raw(format!("{read}{start}").as_bytes()).unwrap();
    let first = c.read_response().expect("the first answer");
    assert_eq!(first.status, 200, "{}", first.body);
    // Only now does the client send the rest of its second request.
    c.send_raw(rest.as_bytes()).unwrap();
    let second = c.read_response().expect("the second answer");
    assert_eq!(
        second.status, 200,
        "the second request was not waited for: {}",
        second.body
    );
}
