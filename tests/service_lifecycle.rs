//! The gateway under a service manager (issue 11): systemd's notify protocol spoken over a
//! real datagram socket, /readyz and /healthz, and restarts right after a kill -9.

mod common;

use common::{assert_conservation, create_account, get_account, raw_get, Server};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Datagrams received until `until` matches one (or the deadline passes): each datagram is
/// one notification, lines `KEY=value`.
fn receive_until(
    sock: &UnixDatagram,
    within: Duration,
    until: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let done = until(&msg);
                got.push(msg);
                if done {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    got
}

/// Starts `s`'s gateway (its config written) under a notify socket at `sock` in its
/// directory, with `WATCHDOG_USEC` 0.4 s and `env` added; its log goes to `log`.
fn spawn_notified(s: &mut Server, sock: &str, env: &[(&str, &str)], log: &str) -> UnixDatagram {
    s.terminate();
    s.write_config();
    let sock_path = s.dir.join(sock);
    let socket = UnixDatagram::bind(&sock_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let log = std::fs::File::create(s.dir.join(log)).unwrap();
    // WATCHDOG_PID must name the gateway itself: the shell's pid, kept by exec.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "WATCHDOG_PID=$$ exec '{}' serve --config '{}'",
            env!("CARGO_BIN_EXE_corepay"),
            s.config_path().display()
        ))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    s.child = Some(child);
    socket
}

#[test]
fn speaks_systemds_notify_protocol_ready_watchdog_and_stopping() {
    let mut s = Server::start(2);
    let sock = spawn_notified(&mut s, "notify.sock", &[], "notify-server.log");
    let pid = s.child.as_ref().unwrap().id() as i32;

    let got = receive_until(&sock, Duration::from_secs(60), |m| m.contains("READY=1"));
    let ready = got.iter().position(|m| m.contains("READY=1"));
    let ready = ready.unwrap_or_else(|| panic!("no READY=1; got {got:?}"));
    // READY=1 only once every shard listens: /readyz agrees at once, and both shards'
    // recoveries were reported before it.
    assert_eq!(raw_get(s.operator, "/readyz").unwrap().0, 200);
    assert!(
        got[..ready]
            .iter()
            .any(|m| m.contains("STATUS=recovering 2 shards")),
        "{got:?}"
    );
    for k in 0..2 {
        let line = format!("STATUS=recovered shard {k}:");
        assert!(
            got[..ready].iter().any(|m| m.contains(&line)),
            "{line} in {got:?}"
        );
    }
    assert!(got[ready].contains("STATUS=serving: 2 shards"), "{got:?}");
    let (status, _, body) = raw_get(s.operator, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");

    // WATCHDOG_USEC = 0.4 s: a ping every 0.1 s while every shard progresses.
    let pings = receive_until(&sock, Duration::from_millis(1000), |_| false);
    let n = pings.iter().filter(|m| m.trim() == "WATCHDOG=1").count();
    assert!(n >= 4, "expected pings every 100 ms, got {pings:?}");

    // SIGTERM: STOPPING=1 before the process exits, and a clean exit.
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let got = receive_until(&sock, Duration::from_secs(30), |m| m.contains("STOPPING=1"));
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    let mut child = s.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "corepay did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn restarts_at_once_after_kill_9_many_times_without_losing_a_change() {
    let mut s = Server::start(2);
    for round in 0..8u64 {
        // Acknowledged (durable) before the kill.
        create_account(&s, 7_000 + round, "EUR", "10.00");
        // kill -9 and start again straight away, while the kernel tears the old sockets
        // down: the start waits for them (bounded) instead of failing.
        let t0 = Instant::now();
        s.restart();
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "restart {round} took {:?}",
            t0.elapsed()
        );
        assert_eq!(raw_get(s.operator, "/readyz").unwrap().0, 200);
    }
    for round in 0..8u64 {
        assert_eq!(get_account(&s, 7_000 + round)["balance"], "10.00");
    }
    assert_conservation(&s);
}

#[test]
fn a_wedged_shard_stops_the_watchdog_pings_and_healthz_names_it() {
    let mut s = Server::start(2);
    // Shard 1 blocks its executor for good 1.5 s after it starts serving.
    let wedge = [("COREPAY_FAILPOINT_WEDGE_SHARD", "1:1500")];
    let sock = spawn_notified(&mut s, "notify-wedge.sock", &wedge, "wedge-server.log");
    let got = receive_until(&sock, Duration::from_secs(60), |m| m.contains("READY=1"));
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    let pings = receive_until(&sock, Duration::from_millis(600), |_| false);
    assert!(
        pings.iter().any(|m| m.trim() == "WATCHDOG=1"),
        "pings while both shards run: {pings:?}"
    );

    // Shard 0 still answers the operator listener; it names the wedged shard.
    let deadline = Instant::now() + Duration::from_secs(30);
    let why = loop {
        let (status, _, body) = raw_get(s.operator, "/healthz").unwrap();
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "shard 1 never reported as stuck");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(why.contains("shard 1 has made no progress"), "{why}");
    // Whatever was sent before is drained; from now on, no ping.
    let _ = receive_until(&sock, Duration::from_millis(300), |_| false);
    let after = receive_until(&sock, Duration::from_millis(1200), |_| false);
    assert!(
        !after.iter().any(|m| m.contains("WATCHDOG=1")),
        "pinged while a shard is wedged: {after:?}"
    );
    let log = std::fs::read_to_string(s.dir.join("wedge-server.log")).unwrap();
    assert!(
        log.contains("\"event\":\"service.shard_not_progressing\""),
        "{log}"
    );
}
