//! The ISO 8583 listener over real sockets against the real binary: both length headers and
//! both bitmap encodings, many requests in flight on one connection answered out of order
//! and matched by STAN, back-pressure at the in-flight limit, 30+ malformed frames (each
//! answered with 30 or its connection closed, never another connection), bounded memory
//! under garbage, many connections at once, the connection limit, idle close, and drain.
mod common;
use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr};

const PROFILE_ASCII_HEX: &str = "[iso8583]\nheader = \"ascii4\"\nbitmap = \"hex\"\n";

/// Sign-on, echo and sign-off on one connection: 0810, 39 = 00, 7/11/70 echoed.
fn network_management(addr: SocketAddr, framing: Framing, bitmap: BitmapEncoding) {
    let mut c = IsoClient::connect(addr, framing, bitmap);
    for (n, code) in [(1, b"001"), (2, b"301"), (3, b"301"), (4, b"002")] {
        let request = network_request(n, code);
        let response = c.call(&request);
        assert_network_answer(&request, &response);
    }
}

#[test]
fn iso8583_network_management_with_every_header_and_bitmap() {
    for (framing, bitmap, config) in [
        (Framing::Binary2, BitmapEncoding::Binary, ""),
        (
            Framing::Binary2,
            BitmapEncoding::HexAscii,
            "[iso8583]\nbitmap = \"hex\"\n",
        ),
        (
            Framing::Ascii4,
            BitmapEncoding::Binary,
            "[iso8583]\nheader = \"ascii4\"\n",
        ),
        (Framing::Ascii4, BitmapEncoding::HexAscii, PROFILE_ASCII_HEX),
    ] {
        let s = Server::start_with(2, config);
        network_management(s.iso, framing, bitmap);
        // Several connections, so that both shards' listeners answer.
        for _ in 0..6 {
            let mut c = IsoClient::connect(s.iso, framing, bitmap);
            let request = network_request(77, b"301");
            let response = c.call(&request);
            assert_network_answer(&request, &response);
        }
        // The HTTP API is served next to it.
        assert_eq!(raw_get(s.operator, "/healthz").unwrap().0, 200);
    }
}

/// Sends `count` echoes with distinct STANs on one connection without waiting, then reads
/// `count` answers: every STAN is answered exactly once, in whatever order.
fn pipelined_echoes(c: &mut IsoClient, first_stan: u32, count: u32) {
    let mut out = Vec::new();
    let mut sent = HashMap::new();
    for n in first_stan..first_stan + count {
        let request = network_request(n, b"301");
        c.frame_message(&request, &mut out);
        sent.insert(stan(n), request);
    }
    // Written from another thread, as a real client would: the answers flow back while the
    // requests are still being sent, so neither side's socket buffer has to hold them all.
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&out));
    let mut answered = HashMap::new();
    for _ in 0..count {
        let response = c.read();
        let key: [u8; 6] = response.get(11).expect("DE11 echoed").try_into().unwrap();
        let request = sent
            .get(&key)
            .unwrap_or_else(|| panic!("unknown STAN {key:?}"));
        assert_network_answer(request, &response);
        assert!(
            answered.insert(key, ()).is_none(),
            "STAN {key:?} answered twice"
        );
    }
    assert_eq!(answered.len(), sent.len());
    writer.join().unwrap().expect("all requests sent");
}

#[test]
fn iso8583_many_requests_in_flight_are_matched_by_stan() {
    let s = Server::start(2);
    let mut c = s.iso();
    pipelined_echoes(&mut c, 100_000, 150);
    // The connection keeps serving afterwards.
    let request = network_request(1, b"301");
    assert_network_answer(&request, &c.call(&request));
}

#[test]
fn iso8583_in_flight_limit_is_back_pressure_not_loss() {
    let s = Server::start_with(2, "[iso8583]\nmax_in_flight_per_connection = 4\n");
    let mut c = s.iso();
    pipelined_echoes(&mut c, 200_000, 50);
    // And again, larger than any socket buffer holds at once.
    pipelined_echoes(&mut c, 300_000, 2000);
}

#[test]
fn iso8583_many_connections_at_once() {
    let s = Server::start(2);
    let addr = s.iso;
    let threads: Vec<_> = (0..20u32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = IsoClient::default_profile(addr);
                for i in 0..50u32 {
                    let request = network_request(t * 1000 + i, b"301");
                    assert_network_answer(&request, &c.call(&request));
                }
                // Half of them also pipeline.
                if t % 2 == 0 {
                    pipelined_echoes(&mut c, 500_000 + t * 1000, 100);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread failed");
    }
}

// ---- malformed frames -----------------------------------------------------------------------

/// Which server a case is sent to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Profile {
    /// binary2 header, binary bitmaps (the defaults).
    Default,
    /// ascii4 header, hex bitmaps.
    AsciiHex,
}

/// What the server must do.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Answer with this MTI and 39 = 30; DE11 echoed when given (and then required).
    Format30 {
        mti: &'static [u8; 4],
        stan: Option<&'static [u8; 6]>,
    },
    /// Close the connection without an answer.
    Closed,
    /// Either: answers with 39 = 30 (any number) and/or a close.
    Format30OrClosed,
    /// An 0810 / 00 to a valid echo sent after the case's bytes (STAN 424242).
    Echo,
}

struct Case {
    name: &'static str,
    profile: Profile,
    /// Exactly the bytes sent, headers included.
    bytes: Vec<u8>,
    /// Shut the write half after sending (the server sees EOF).
    then_close: bool,
    expect: Expect,
}

const STAN_A: &[u8; 6] = b"123456";

fn binary2(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(Framing::Binary2, body, &mut out);
    out
}

fn ascii4(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(Framing::Ascii4, body, &mut out);
    out
}

/// An 8-byte binary bitmap with `fields` set (1..=64).
fn bitmap(fields: &[u8]) -> [u8; 8] {
    let mut bits = 0u64;
    for &f in fields {
        assert!((1..=64).contains(&f));
        bits |= 1 << (64 - u32::from(f));
    }
    bits.to_be_bytes()
}

fn body(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A valid 0800 echo body (binary bitmaps) with DE11 = `stan`.
fn echo_body(stan: &[u8; 6], encoding: BitmapEncoding) -> Vec<u8> {
    let mut m = Message::new(*b"0800");
    m.set(7, b"0101120000");
    m.set(11, stan);
    m.set(70, b"301");
    let mut out = Vec::new();
    encode(&m, encoding, &mut out).unwrap();
    out
}

fn cases() -> Vec<Case> {
    use Expect::*;
    use Profile::*;
    let case = |name, profile, bytes, expect| Case {
        name,
        profile,
        bytes,
        then_close: false,
        expect,
    };
    let closing = |name, profile, bytes, expect| Case {
        name,
        profile,
        bytes,
        then_close: true,
        expect,
    };
    let valid = echo_body(STAN_A, BitmapEncoding::Binary);
    let mut rng = SmallRng::seed_from_u64(0x8583);
    let noise: Vec<u8> = (0..300).map(|_| rng.gen()).collect();
    let high_noise: Vec<u8> = (0..64).map(|_| rng.gen::<u8>() | 0x80).collect();
    let bm_7_11 = bitmap(&[7, 11]);
    let bm_2_3_4_11 = bitmap(&[2, 3, 4, 11]);
    let bm_2_4_11 = bitmap(&[2, 4, 11]);
    vec![
        // Frames that cannot be split: closed.
        case(
            "length 0xFFFF over the 8 KiB maximum",
            Default,
            b"\xFF\xFF0800".to_vec(),
            Closed,
        ),
        case(
            "length one over the maximum",
            Default,
            b"\x20\x01".to_vec(),
            Closed,
        ),
        closing(
            "one header byte then close",
            Default,
            b"\x00".to_vec(),
            Closed,
        ),
        closing(
            "length says 100, 10 bytes sent, then close",
            Default,
            body(&[b"\x00\x64", b"0800012345"]),
            Closed,
        ),
        case("ascii header 12a4", AsciiHex, b"12a40800".to_vec(), Closed),
        case(
            "ascii header with a sign",
            AsciiHex,
            b"-0010800".to_vec(),
            Closed,
        ),
        case(
            "ascii header 9999 over the maximum",
            AsciiHex,
            b"9999".to_vec(),
            Closed,
        ),
        // Bodies whose MTI cannot be read: nothing can be answered, closed.
        case("frame shorter than an MTI", Default, binary2(b"08"), Closed),
        case(
            "MTI 01a0",
            Default,
            binary2(&body(&[b"01a0", &bm_7_11])),
            Closed,
        ),
        case(
            "MTI with a space",
            Default,
            binary2(b"08 0\0\0\0\0\0\0\0\0"),
            Closed,
        ),
        case(
            "random bytes in a valid frame",
            Default,
            binary2(&high_noise),
            Closed,
        ),
        closing(
            "random bytes without framing",
            Default,
            noise,
            Format30OrClosed,
        ),
        // Intact frames with bad content: 30, MTI + 10, STAN where it can be read.
        case(
            "MTI only",
            Default,
            binary2(b"0800"),
            Format30 {
                mti: b"0810",
                stan: None,
            },
        ),
        case(
            "primary bitmap truncated",
            Default,
            binary2(b"0800\x82\x20"),
            Format30 {
                mti: b"0810",
                stan: None,
            },
        ),
        case(
            "bit 1 set, secondary bitmap missing",
            Default,
            binary2(&body(&[b"0800", &bitmap(&[1, 7, 11])])),
            Format30 {
                mti: b"0810",
                stan: None,
            },
        ),
        case(
            "bitmap names absent fields",
            Default,
            binary2(&body(&[
                b"0800",
                &bitmap(&[7, 11, 41, 42]),
                b"0101120000",
                STAN_A,
            ])),
            Format30 {
                mti: b"0810",
                stan: Some(STAN_A),
            },
        ),
        case(
            "bitmap names a field outside the profile",
            Default,
            binary2(&body(&[
                b"0800",
                &bitmap(&[5, 7, 11]),
                b"000000000000",
                b"0101120000",
                STAN_A,
            ])),
            Format30 {
                mti: b"0810",
                stan: None,
            },
        ),
        case(
            "secondary bitmap names an unknown field",
            Default,
            binary2(&body(&[
                b"0800",
                &bitmap(&[1, 7, 11]),
                &bitmap(&[70 - 64, 100 - 64]),
                b"0101120000",
                STAN_A,
                b"301",
                b"07abcdefg",
            ])),
            Format30 {
                mti: b"0810",
                stan: Some(STAN_A),
            },
        ),
        case(
            "all 128 bits set",
            Default,
            binary2(&body(&[b"0100", &[0xFF; 16], &[b'0'; 200]])),
            Format30 {
                mti: b"0110",
                stan: None,
            },
        ),
        case(
            "non-numeric STAN",
            Default,
            binary2(&body(&[b"0800", &bm_7_11, b"0101120000", b"12A456"])),
            Format30 {
                mti: b"0810",
                stan: None,
            },
        ),
        case(
            "non-numeric transmission date-time",
            Default,
            binary2(&body(&[b"0800", &bm_7_11, b"01011200XX", STAN_A])),
            Format30 {
                mti: b"0810",
                stan: Some(STAN_A),
            },
        ),
        case(
            "non-numeric amount",
            Default,
            binary2(&body(&[
                b"0100",
                &bm_2_4_11,
                b"164242424242424242",
                b"00000000010A",
                STAN_A,
            ])),
            Format30 {
                mti: b"0110",
                stan: Some(STAN_A),
            },
        ),
        case(
            "PAN LLVAR longer than its maximum of 19",
            Default,
            binary2(&body(&[
                b"0100",
                &bm_2_3_4_11,
                b"20",
                &[b'4'; 20],
                b"000000",
                b"000000001000",
                STAN_A,
            ])),
            Format30 {
                mti: b"0110",
                stan: Some(STAN_A),
            },
        ),
        case(
            "PAN LLVAR longer than the frame",
            Default,
            binary2(&body(&[b"0100", &bm_2_3_4_11, b"19", b"42424"])),
            Format30 {
                mti: b"0110",
                stan: None,
            },
        ),
        case(
            "LLVAR length prefix not digits",
            Default,
            binary2(&body(&[
                b"0100",
                &bm_2_3_4_11,
                b"1x",
                &[b'4'; 16],
                b"000000",
                b"000000001000",
                STAN_A,
            ])),
            Format30 {
                mti: b"0110",
                stan: None,
            },
        ),
        case(
            "LLLVAR DE54 longer than its maximum of 120",
            Default,
            binary2(&body(&[
                b"0100",
                &bitmap(&[11, 54]),
                STAN_A,
                b"121",
                &[b'A'; 121],
            ])),
            Format30 {
                mti: b"0110",
                stan: Some(STAN_A),
            },
        ),
        case(
            "fixed field cut by the end of the frame",
            Default,
            binary2(&body(&[b"0800", &bm_7_11, b"0101120000", b"123"])),
            Format30 {
                mti: b"0810",
                stan: None,
            },
        ),
        case(
            "control byte in an ans field",
            Default,
            binary2(&body(&[b"0100", &bitmap(&[11, 41]), STAN_A, b"TERM\x0001"])),
            Format30 {
                mti: b"0110",
                stan: Some(STAN_A),
            },
        ),
        case(
            "trailing bytes after the last field",
            Default,
            binary2(&body(&[&valid, b"XYZ"])),
            Format30 {
                mti: b"0810",
                stan: Some(STAN_A),
            },
        ),
        case(
            "unknown MTI 0300",
            Default,
            binary2(&body(&[b"0300", &bm_7_11, b"0101120000", STAN_A])),
            Format30 {
                mti: b"0310",
                stan: Some(STAN_A),
            },
        ),
        case(
            "MTI of ISO 8583:1993 (version 1)",
            Default,
            binary2(&body(&[b"1800", &bm_7_11, b"0101120000", STAN_A])),
            // Our profile cannot write a 1993 answer: a 30 or a close.
            Format30OrClosed,
        ),
        case(
            "a response MTI sent as a request",
            Default,
            binary2(&body(&[b"0810", &bm_7_11, b"0101120000", STAN_A])),
            Format30OrClosed,
        ),
        case(
            "binary bitmap sent to a hex-bitmap server",
            AsciiHex,
            ascii4(&valid),
            Format30 {
                mti: b"0810",
                stan: None,
            },
        ),
        case(
            "hex bitmap with non-hex characters",
            AsciiHex,
            ascii4(&body(&[
                b"0800",
                b"022000000000000G",
                b"0101120000",
                STAN_A,
            ])),
            Format30 {
                mti: b"0810",
                stan: None,
            },
        ),
        // Keep-alives are skipped; the next message is answered.
        case(
            "zero-length keep-alive frames",
            Default,
            b"\x00\x00\x00\x00\x00\x00".to_vec(),
            Echo,
        ),
        case(
            "ascii keep-alive frames",
            AsciiHex,
            b"000000000000".to_vec(),
            Echo,
        ),
    ]
}

fn client_for(s: &Server, profile: Profile) -> IsoClient {
    match profile {
        Profile::Default => IsoClient::connect(s.iso, Framing::Binary2, BitmapEncoding::Binary),
        Profile::AsciiHex => IsoClient::connect(s.iso, Framing::Ascii4, BitmapEncoding::HexAscii),
    }
}

/// Sends one case on a new connection and checks what the server did.
fn run_case(s: &Server, case: &Case) {
    let name = case.name;
    let mut c = client_for(s, case.profile);
    // A server that closes early may reset the connection under a long write: that is a close.
    let _ = c.send_raw(&case.bytes);
    if case.then_close {
        let _ = c.stream.shutdown(Shutdown::Write);
    }
    match case.expect {
        Expect::Closed => {
            let got = c.read_frame().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, None, "{name}: answered instead of closed");
        }
        Expect::Format30 { mti, stan } => {
            let body = c
                .read_frame()
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .unwrap_or_else(|| panic!("{name}: closed instead of answered 30"));
            let r = decode(&body, c.bitmap)
                .unwrap_or_else(|e| panic!("{name}: answer does not decode: {e}"));
            assert_eq!(&r.mti(), mti, "{name}: {r:?}");
            assert_eq!(r.get(39), Some(&b"30"[..]), "{name}: {r:?}");
            if let Some(stan) = stan {
                assert_eq!(r.get(11), Some(&stan[..]), "{name}: STAN not echoed: {r:?}");
            }
            assert_eq!(r.get(2), None, "{name}: DE2 echoed");
        }
        Expect::Format30OrClosed => {
            while let Some(body) = c.read_frame().unwrap_or_else(|e| panic!("{name}: {e}")) {
                let r = decode(&body, c.bitmap)
                    .unwrap_or_else(|e| panic!("{name}: answer does not decode: {e}"));
                assert_eq!(r.get(39), Some(&b"30"[..]), "{name}: {r:?}");
                if !case.then_close {
                    break;
                }
            }
        }
        Expect::Echo => {
            let request = network_request(424_242, b"301");
            let response = c.call(&request);
            assert_network_answer(&request, &response);
        }
    }
}

/// A fresh connection still gets 0810 / 00.
fn still_serving(s: &Server, profile: Profile, name: &str) {
    let mut c = client_for(s, profile);
    let request = network_request(999_999, b"301");
    c.send(&request);
    let response = c
        .read_frame()
        .unwrap_or_else(|e| panic!("after {name}: {e}"))
        .unwrap_or_else(|| panic!("after {name}: a new connection was closed"));
    assert_network_answer(&request, &decode(&response, c.bitmap).unwrap());
}

#[test]
fn iso8583_malformed_frames_are_answered_30_or_closed_and_memory_stays_flat() {
    let table = cases();
    assert!(table.len() >= 25, "{} cases", table.len());
    let mut names: Vec<&str> = table.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), table.len(), "case names are unique");

    let mut default = Server::start(2);
    let mut ascii_hex = Server::start_with(2, PROFILE_ASCII_HEX);
    for case in &table {
        let s = match case.profile {
            Profile::Default => &default,
            Profile::AsciiHex => &ascii_hex,
        };
        run_case(s, case);
        still_serving(s, case.profile, case.name);
    }
    assert!(ascii_hex.alive(), "the ascii/hex server died");

    // Memory: a warm-up round, then ten times as many garbage connections.
    let garbage: Vec<&Case> = table
        .iter()
        .filter(|c| c.profile == Profile::Default)
        .collect();
    let pid = default.pid();
    for case in garbage.iter().cycle().take(200) {
        run_case(&default, case);
    }
    still_serving(&default, Profile::Default, "the warm-up round");
    let before = vm_rss_kib(pid);
    for case in garbage.iter().cycle().take(2000) {
        run_case(&default, case);
    }
    still_serving(&default, Profile::Default, "2000 garbage connections");
    let after = vm_rss_kib(pid);
    eprintln!("VmRSS {before} KiB -> {after} KiB");
    assert!(default.alive(), "the server died; log:\n{}", default.log());
    assert!(
        after < before + 8 * 1024,
        "VmRSS grew from {before} KiB to {after} KiB over 2000 garbage connections"
    );
}

// ---- limits and lifecycle -------------------------------------------------------------------

#[test]
fn iso8583_connections_over_the_per_shard_limit_are_closed() {
    // Two shards, one connection each: of ten held open, at most two are served.
    let s = Server::start_with(2, "[iso8583]\nmax_connections_per_shard = 1\n");
    let mut clients: Vec<IsoClient> = (0..10).map(|_| s.iso()).collect();
    let mut served = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        let request = network_request(i as u32, b"301");
        let mut out = Vec::new();
        c.frame_message(&request, &mut out);
        if c.send_raw(&out).is_err() {
            continue;
        }
        if let Ok(Some(body)) = c.read_frame() {
            assert_network_answer(&request, &decode(&body, c.bitmap).unwrap());
            served += 1;
        }
    }
    assert!((1..=2).contains(&served), "{served} connections served");
    // Closing the served ones frees their places.
    drop(clients);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut c = s.iso();
        let request = network_request(1, b"301");
        let mut out = Vec::new();
        c.frame_message(&request, &mut out);
        if c.send_raw(&out).is_ok() {
            if let Ok(Some(body)) = c.read_frame() {
                assert_network_answer(&request, &decode(&body, c.bitmap).unwrap());
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no connection was served after the others closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn iso8583_idle_connection_is_closed() {
    let s = Server::start_with(2, "[iso8583]\nidle_timeout_ms = 1000\n");
    let mut c = s.iso();
    let request = network_request(1, b"301");
    assert_network_answer(&request, &c.call(&request));
    // Silence: the server closes.
    assert_eq!(c.read_frame().unwrap(), None);
    // A new connection is served.
    let mut c = s.iso();
    assert_network_answer(&request, &c.call(&request));
}

#[test]
fn iso8583_sigterm_drains_and_exits_cleanly() {
    let mut s = Server::start(2);
    let mut c = s.iso();
    let request = network_request(1, b"001");
    assert_network_answer(&request, &c.call(&request));
    pipelined_echoes(&mut c, 10, 20);
    let status = s.terminate();
    assert!(status.success(), "exit status {status}; log:\n{}", s.log());
    // The connection was closed by the exit.
    assert_eq!(c.read_frame().unwrap_or(None), None);
}
