//! The `corepay` binary: parses the command line and wires the modules. Nothing else.

use corepay::config::Config;
use corepay::shard::server::{decode_command, serve};
use corepay::wal::{dump_records, verify, FsSource};
use mimalloc::MiMalloc;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

const USAGE: &str = "\
usage:
  corepay serve [--config FILE]   run the gateway (embedded default: ./data, HTTP 127.0.0.1:8080,
                                  operator 127.0.0.1:9464)
  corepay check-config FILE       validate a configuration file
  corepay reconcile [--config FILE]  compare PostgreSQL with the WAL; exit 0 only when equal
  corepay wal verify DIR          check every WAL under DIR (a data dir or one shard's wal dir)
  corepay wal dump DIR            print every record under DIR, one per line
  corepay --version";

fn main() -> ExitCode {
    // A broken invariant on any shard stops the whole process: a half-alive gateway that
    // still reports ready is worse than a restart, and recovery replays the WAL.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if corepay::store::catching_foreign_panic() {
            return; // opening a damaged store file: turned into an error by the caller
        }
        default_hook(info);
        std::process::abort();
    }));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["serve"] => run_serve(None),
        ["serve", "--config", file] | ["serve", "-c", file] => run_serve(Some(Path::new(file))),
        ["reconcile"] => run_reconcile(None),
        ["reconcile", "--config", file] | ["reconcile", "-c", file] => {
            run_reconcile(Some(Path::new(file)))
        }
        ["check-config", file] => Config::load(Path::new(file))
            .and_then(|c| corepay::tls::Listeners::load(&c).map(drop))
            .map(|_| println!("{file}: ok"))
            .map_err(|e| e.to_string()),
        ["wal", "verify", dir] => wal_verify(Path::new(dir)),
        ["wal", "dump", dir] => wal_dump(Path::new(dir)),
        ["--version"] | ["-V"] => {
            println!("corepay {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        ["--help"] | ["-h"] | ["help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corepay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_serve(file: Option<&Path>) -> Result<(), String> {
    corepay::logline::init();
    let config = match file {
        Some(f) => Config::load(f).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    serve(config).map_err(|e| e.to_string())
}

/// Compares PostgreSQL with the WAL; exit 0 only when they match.
fn run_reconcile(file: Option<&Path>) -> Result<(), String> {
    let config = match file {
        Some(f) => Config::load(f).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if gateway_running(&config.server.data_dir) {
        return reconcile_live(&config);
    }
    let diffs = corepay::replication::reconcile::reconcile(&config)?;
    if diffs.is_empty() {
        println!("reconcile: PostgreSQL matches the gateway");
        return Ok(());
    }
    for d in &diffs {
        println!("{d}");
    }
    Err(format!("reconcile: {} differences", diffs.len()))
}

/// True when a gateway holds the data directory's lock.
fn gateway_running(data_dir: &Path) -> bool {
    use std::os::unix::io::AsRawFd;
    let Ok(file) = std::fs::File::open(data_dir.join("LOCK")) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; closing it releases a lock we took.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    rc != 0
}

/// Asks the running gateway to reconcile (its stores are open in it): GET /reconcile on the
/// operator listener with the admin key.
fn reconcile_live(config: &Config) -> Result<(), String> {
    use std::io::{Read, Write};
    let key = if !config.secrets.admin_key.is_empty() {
        config.secrets.admin_key.clone()
    } else if let Ok(key) = std::env::var("COREPAY_ADMIN_KEY") {
        key
    } else {
        let path = config.server.data_dir.join("admin.key");
        std::fs::read_to_string(&path)
            .map(|k| k.trim().to_string())
            .map_err(|e| format!("the admin key: {}: {e}", path.display()))?
    };
    let mut addr: std::net::SocketAddr = config
        .operator
        .listen
        .parse()
        .map_err(|e| format!("operator.listen {}: {e}", config.operator.listen))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut stream = std::net::TcpStream::connect(addr)
        .map_err(|e| format!("the gateway runs but its operator listener {addr}: {e}"))?;
    write!(
        stream,
        "GET /reconcile HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("unexpected answer from {addr}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    print!("{body}");
    match status {
        200 => Ok(()),
        409 => Err(format!("reconcile: {} differences", body.lines().count())),
        _ => Err(format!("reconcile: the gateway answered {status}")),
    }
}

/// The WAL directories under `dir`: `dir/shard-K/wal` for a data directory, else `dir`.
fn wal_dirs(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut shards: Vec<(u16, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let k = name.strip_prefix("shard-")?.parse().ok()?;
            Some((k, e.path().join("wal")))
        })
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Ok(vec![dir.to_path_buf()]);
    }
    Ok(shards.into_iter().map(|(_, p)| p).collect())
}

fn wal_verify(dir: &Path) -> Result<(), String> {
    let mut failed = false;
    for wal in wal_dirs(dir)? {
        match verify(&FsSource::new(&wal)) {
            Ok(r) => println!(
                "{}: ok: {} segments, {} batches, {} records, lsn {}..{}, {} bytes to zero after the end",
                wal.display(),
                r.segments,
                r.batches,
                r.records,
                r.first_lsn.map_or(0, |l| l.0),
                r.last_lsn.map_or(0, |l| l.0),
                r.torn_tail_bytes
            ),
            Err(e) => {
                failed = true;
                println!("{}: CORRUPT: {e}", wal.display());
            }
        }
    }
    if failed {
        Err("corruption found; the gateway will refuse to start on it. Keep a copy of the directory, \
             then restore the shard from a replica or truncate the segment at the offset named above"
            .into())
    } else {
        Ok(())
    }
}

fn wal_dump(dir: &Path) -> Result<(), String> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for wal in wal_dirs(dir)? {
        dump_records(
            &FsSource::new(&wal),
            |segment, offset, lsn, kind, version, payload| {
                let text = match decode_command(kind, version, payload) {
                    Ok(cmd) => format!("{cmd:?}"),
                    Err(e) => format!("<{e}>"),
                };
                let _ = writeln!(
                    out,
                    "{} {segment}@{offset} lsn={} {text}",
                    wal.display(),
                    lsn.0
                );
            },
        )
        .map_err(|e| format!("{}: {e}", wal.display()))?;
    }
    out.flush().map_err(|e| e.to_string())
}
