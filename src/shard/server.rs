//! Start-up, the per-shard main loop, and shutdown.
//!
//! Start-up is all-or-nothing: lock the data directory, check the recorded shard count,
//! recover every shard's ledger from its WAL (single-threaded, before any executor runs),
//! rebuild the idempotency indexes, start one executor per shard, deliver every cross-shard
//! credit still in flight, and only then open the listeners.

use crate::config::Config;
use crate::domain::{Millis, ShardId};
use crate::gateway::idem_index::IdemIndex;
use crate::gateway::{system_clock, Gateway, GatewayConfig};
use crate::http::api::Api;
use crate::iso8583::flows::IsoApi;
use crate::ledger::Ledger;
use crate::secrets::PanKey;
use crate::service::Lifecycle;
use crate::shard::disk::DmaSegmentDir;
use crate::shard::iso_net::{IsoLimits, IsoServer};
use crate::shard::mesh::{start_receivers, Envelope, MeshPeers};
use crate::shard::net;
use crate::store::reader::{spawn_readers, StoreProgress, StoreReader, Stores};
use crate::store::writer::{RecoverError, Recovery, StoreWriter, WriterConfig};
use crate::store::{store_path, Store, StoreError};
use crate::wal::tap::DurableTap;
use crate::wal::{Recovered, SyncMode, WalConfig, WalWriter};
use crate::{error, info, warn};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why the gateway would not start, in one line.
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// How often each shard runs its housekeeping (`Gateway::tick`) and checks for shutdown.
const TICK: Duration = Duration::from_millis(20);
/// How long start-up waits for in-flight credits to be delivered.
const STARTUP_DRAIN: Duration = Duration::from_secs(30);
/// How long a shard waits at a start-up barrier for the others (joining the mesh, finishing
/// the drain of credits) before it gives up: a shard that failed to start must stop the
/// start, not leave the others waiting for it for ever.
const START_BARRIER: Duration = Duration::from_secs(45);
/// How long start-up waits for a listening port that is still taken.
const PORT_WAIT: Duration = Duration::from_secs(5);
/// Exit code when the WAL is poisoned (a failed write or fdatasync).
pub const EXIT_WAL_POISONED: i32 = 70;
/// Durable WAL batches a shard hands its store writer in memory, at most (bytes, batches):
/// about 4 s of batches at 1,000 one-record group commits a second. Beyond that the store
/// writer is behind anyway, and reads the rest back from the segments.
const TAP_MAX_BYTES: usize = 16 << 20;
const TAP_MAX_BATCHES: usize = 4096;

pub fn shard_wal_dir(data_dir: &Path, shard: u16) -> PathBuf {
    data_dir.join(format!("shard-{shard}")).join("wal")
}

/// Decodes one WAL record into a command.
pub use crate::ledger::command::decode_command;

/// One shard after recovery: its working ledger, the store writer that will feed its store,
/// the store, and where the WAL continues.
pub struct RecoveredShard {
    pub ledger: Ledger,
    pub writer: StoreWriter,
    pub store: Arc<Store>,
    pub recovery: Recovery,
}

/// Opens one shard's store at its checkpoint and replays the WAL after it (into the store),
/// then makes the shard's working ledger from the store's. A store that cannot be read is
/// rebuilt from the WAL when the WAL still holds every record (its first segment begins at
/// LSN 1; the damaged file is kept beside it), and refused in one line naming it otherwise.
pub fn recover_shard(
    config: &Config,
    shard: u16,
    shards: u16,
    progress: Arc<StoreProgress>,
    sinks: Vec<Arc<AtomicU64>>,
) -> Result<RecoveredShard, StartError> {
    match try_recover_shard(config, shard, shards, progress.clone(), sinks.clone()) {
        Err(RecoverError::Store(e)) => {
            let data_dir = &config.server.data_dir;
            let path = store_path(data_dir, shard);
            let wal = shard_wal_dir(data_dir, shard);
            if !wal_begins_at_first_record(&wal) {
                return Err(StartError(format!(
                    "shard {shard}: {e}; the WAL in {} no longer holds every record, so the \
                     store cannot be rebuilt from it: restore {} from a backup",
                    wal.display(),
                    path.display()
                )));
            }
            let aside = path.with_extension("redb.damaged");
            warn!("store.rebuild_from_wal":
                "shard {shard}: {e}; rebuilding it from the WAL (which holds every record); \
                 the damaged file is kept as {}",
                aside.display()
            );
            std::fs::rename(&path, &aside)
                .map_err(|e| StartError(format!("cannot move {} aside: {e}", path.display())))?;
            try_recover_shard(config, shard, shards, progress, sinks)
                .map_err(|e| StartError(format!("shard {shard}: {e}")))
        }
        other => other.map_err(|e| StartError(format!("shard {shard}: {e}"))),
    }
}

/// True when the WAL's oldest segment begins at LSN 1 (or there is no WAL yet).
fn wal_begins_at_first_record(dir: &Path) -> bool {
    let first = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| crate::wal::format::parse_segment_name(e.file_name().to_str()?))
        .min();
    first.is_none_or(|lsn| lsn.0 == 1)
}

fn try_recover_shard(
    config: &Config,
    shard: u16,
    shards: u16,
    progress: Arc<StoreProgress>,
    sinks: Vec<Arc<AtomicU64>>,
) -> Result<RecoveredShard, RecoverError> {
    let data_dir = &config.server.data_dir;
    let dir = shard_wal_dir(data_dir, shard);
    std::fs::create_dir_all(&dir).map_err(|e| {
        RecoverError::Other(StoreError(format!("cannot create {}: {e}", dir.display())))
    })?;
    let (window, writer_window, page_cache) = config.state.budget();
    let store = Arc::new(
        Store::open(&store_path(data_dir, shard), page_cache).map_err(RecoverError::Store)?,
    );
    let writer_config = WriterConfig {
        checkpoint_interval: Duration::from_millis(config.state.checkpoint_interval_ms),
        commit_interval: Duration::from_millis(config.state.commit_interval_ms),
        window: writer_window,
        recycle_wal: true,
        trickle_writeback: config.state.trickle_writeback,
        wal_segment_bytes: config.wal.segment_bytes,
        sinks,
        max_retained_bytes: config.replication.max_retained_bytes,
    };
    let (mut writer, recovery) = StoreWriter::recover(
        store.clone(),
        ShardId(shard),
        shards,
        &dir,
        writer_config,
        progress,
    )?;
    let (accounts, merchants) = (
        config.state.accounts_per_shard,
        config.state.merchants_per_shard,
    );
    // Reserve after the copy: a copy of a reserved table would touch all of it.
    let mut ledger = writer.ledger().clone_without_payments(window);
    writer.reserve(accounts, merchants);
    ledger.reserve(accounts, merchants);
    Ok(RecoveredShard {
        ledger,
        writer,
        store,
        recovery,
    })
}

/// Records the shard count on first start; refuses another count later.
fn check_shard_count(data_dir: &Path, shards: u16) -> Result<(), StartError> {
    let marker = data_dir.join("shards");
    match std::fs::read_to_string(&marker) {
        Ok(text) => {
            let recorded: u16 = text
                .trim()
                .parse()
                .map_err(|_| StartError(format!("{} is damaged: {text:?}", marker.display())))?;
            if recorded != shards {
                return Err(StartError(format!(
                    "data directory {} was created with {recorded} shards but {shards} are configured; \
                     set server.shards = {recorded} (the shard count cannot change)",
                    data_dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = data_dir.join("shards.tmp");
            std::fs::write(&tmp, format!("{shards}\n"))
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &marker))
                .and_then(|_| crate::wal::io::sync_dir(data_dir))
                .map_err(|e| StartError(format!("cannot write {}: {e}", marker.display())))
        }
        Err(e) => Err(StartError(format!("{}: {e}", marker.display()))),
    }
}

/// Takes an exclusive lock on the data directory for the life of the process.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, StartError> {
    use std::os::unix::io::AsRawFd;
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StartError(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StartError(format!(
            "{} is in use by another corepay process",
            data_dir.display()
        )));
    }
    Ok(file)
}

/// The admin key: configured, else COREPAY_ADMIN_KEY, else generated into data_dir/admin.key.
fn admin_key(config: &Config) -> Result<String, StartError> {
    if !config.secrets.admin_key.is_empty() {
        return Ok(config.secrets.admin_key.clone());
    }
    if let Ok(key) = std::env::var("COREPAY_ADMIN_KEY") {
        if key.len() < 16 {
            return Err(StartError(
                "COREPAY_ADMIN_KEY must be at least 16 characters".into(),
            ));
        }
        return Ok(key);
    }
    let path = config.server.data_dir.join("admin.key");
    match std::fs::read_to_string(&path) {
        Ok(key) => Ok(key.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key = format!("ak_{}", hex::encode(crate::secrets::random_bytes::<24>()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| StartError(format!("cannot create {}: {e}", path.display())))?;
            f.write_all(key.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| StartError(format!("cannot write {}: {e}", path.display())))?;
            info!("secrets.admin_key_generated": "generated an admin key in {} (mode 0600)", path.display());
            Ok(key)
        }
        Err(e) => Err(StartError(format!("{}: {e}", path.display()))),
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in every thread: the first two turn into `flag`,
/// SIGHUP reads the TLS certificates and keys again.
fn install_signal_thread(flag: Arc<AtomicBool>, life: Arc<Lifecycle>, tls: crate::tls::Listeners) {
    // SAFETY: sigset manipulation on a local, zero-initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::Builder::new()
            .name("corepay-signals".into())
            .spawn(move || loop {
                let mut sig: libc::c_int = 0;
                if libc::sigwait(&set, &mut sig) != 0 {
                    continue;
                }
                if sig == libc::SIGHUP {
                    let reloaded = tls.reload();
                    if reloaded.is_empty() {
                        info!("service.sighup": "SIGHUP: no TLS listener to reload");
                    }
                    for (section, result) in reloaded {
                        match result {
                            Ok(()) => info!("tls.reloaded":
                                "SIGHUP: {section} reloaded; new connections use it"),
                            Err(e) => error!("tls.reload_failed":
                                "SIGHUP: {e}; {section} keeps the certificate it had"),
                        }
                    }
                } else {
                    info!("service.signal": "signal {sig}: draining and stopping");
                    life.draining();
                    flag.store(true, Ordering::SeqCst);
                }
            })
            .expect("spawn the signal thread");
    }
}

/// Where each shard's blocking thread (its WAL fdatasync, see `shard::disk`) runs: never on
/// a shard's core when it can be helped, i.e. on `state.cores` (which `serve` fills with the
/// cores no shard owns when it is empty); else anywhere.
fn sync_thread_placement(config: &Config) -> glommio::PoolPlacement {
    use glommio::{CpuSet, PoolPlacement};
    let Ok(online) = CpuSet::online() else {
        return PoolPlacement::Unbound(1);
    };
    let set = online.filter(|l| config.state.cores.contains(&l.cpu));
    if set.is_empty() {
        PoolPlacement::Unbound(1)
    } else {
        PoolPlacement::Fenced(1, set)
    }
}

/// Shared by all shards: start-up barriers and the shutdown flag (start/stop only).
struct Shared {
    shutdown: Arc<AtomicBool>,
    drained: AtomicUsize,
    /// A shard failed: the others stop waiting for it at the start-up barriers.
    failed: AtomicBool,
    /// Phase, readiness and each shard's heartbeat (`/readyz`, `/healthz`, systemd).
    life: Arc<Lifecycle>,
    /// Shards whose own requests and credits are done at shutdown.
    stopped: AtomicUsize,
}

/// Runs the gateway until SIGTERM/SIGINT. Returns after a clean drain.
pub fn serve(mut config: Config) -> Result<(), StartError> {
    // Helper threads with no cores of their own stay off the shards' cores when others exist:
    // a store commit that lands on a shard's core delays every request of that shard.
    let shard_cores = config.shard_cores();
    let allowed = crate::affinity::allowed_cpus();
    config.state.cores =
        crate::affinity::helper_cores(&config.state.cores, shard_cores.as_deref(), &allowed);
    config.replication.cores =
        crate::affinity::helper_cores(&config.replication.cores, shard_cores.as_deref(), &allowed);
    if !config.state.cores.is_empty() {
        info!("service.helper_cores":
            "store threads on cores {:?}, replication on {:?}",
            config.state.cores, config.replication.cores
        );
    }
    // Before any other thread exists: every thread inherits the blocked signal mask, so that
    // SIGTERM reaches the signal thread and never kills the process through another thread.
    let shutdown = Arc::new(AtomicBool::new(false));
    let shards = config.shard_count();
    let life = Lifecycle::new(shards as usize);
    let tls = crate::tls::Listeners::load(&config).map_err(|e| StartError(e.to_string()))?;
    install_signal_thread(shutdown.clone(), life.clone(), tls.clone());
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| StartError(format!("cannot create {}: {e}", data_dir.display())))?;
    let _lock = lock_data_dir(&data_dir)?;
    check_shard_count(&data_dir, shards)?;
    let pan_file = (!config.secrets.pan_key_file.is_empty())
        .then(|| PathBuf::from(&config.secrets.pan_key_file));
    let pan_key = PanKey::load(pan_file.as_deref(), &data_dir).map_err(StartError)?;
    let admin_key = admin_key(&config)?;
    let sync = config.sync_mode().map_err(|e| StartError(e.to_string()))?;
    if sync == SyncMode::None {
        warn!("wal.sync_none": "wal.sync = \"none\": NOTHING IS FSYNCED. A crash loses acknowledged payments. Benchmarks only.");
    }

    let started = std::time::Instant::now();
    crate::service::status(&format!(
        "recovering {shards} shards: opening each store, replaying the WAL after its checkpoint"
    ));
    // Shards recover in parallel, one thread each, before any executor starts.
    let progress: Vec<Arc<StoreProgress>> = (0..shards)
        .map(|_| Arc::new(StoreProgress::default()))
        .collect();
    let cfg = &config;
    // Replication sinks read each shard's store change log; the writer keeps an entry until
    // every sink has stored it.
    let sink_statuses = crate::replication::new_statuses(&config.replication, shards);
    let results: Vec<Result<RecoveredShard, StartError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..shards)
            .map(|k| {
                let progress = progress[k as usize].clone();
                let sinks: Vec<Arc<AtomicU64>> = sink_statuses
                    .iter()
                    .map(|per_shard| per_shard[k as usize].stored.clone())
                    .collect();
                scope.spawn(move || recover_shard(cfg, k, shards, progress, sinks))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("recovery thread panicked"))
            .collect()
    });
    let mut ledgers = Vec::new();
    let mut recovered = Vec::new();
    let mut writers = Vec::new();
    let mut stores = Vec::new();
    for (k, result) in results.into_iter().enumerate() {
        let shard = result?;
        let rec = shard.recovery.wal;
        if rec.truncated_bytes > 0 {
            warn!("wal.torn_tail_zeroed":
                "shard {k}: zeroed {} bytes after the end of the log (a torn write, never \
                 acknowledged, or a recycled segment's old data)",
                rec.truncated_bytes
            );
        }
        let line = format!(
            "shard {k}: store checkpoint at lsn {}, replayed {} records after it, next lsn {}",
            shard.recovery.checkpoint.0, rec.records, rec.next_lsn.0
        );
        info!("recovery.shard_recovered": "{line}");
        crate::service::status(&format!("recovered {line}"));
        ledgers.push(shard.ledger);
        recovered.push(rec);
        writers.push(shard.writer);
        stores.push(shard.store);
    }

    // Idempotency keys start unindexed: a key not in memory is looked up in the stores.
    let retention = config.idempotency.retention_secs * 1000;
    let mut newest_record = Millis(0);
    for store in &stores {
        let newest = store
            .newest_idem_at()
            .map_err(|e| StartError(e.to_string()))?;
        newest_record = newest_record.max(newest.unwrap_or(Millis(0)));
    }
    let indexes: Vec<IdemIndex> = (0..shards)
        .map(|_| {
            let max = config.idempotency.max_keys_per_shard;
            IdemIndex::new(retention, max, true, newest_record)
        })
        .collect();
    info!("recovery.done":
        "recovered {shards} shards in {} ms",
        started.elapsed().as_millis()
    );

    // Every shard binds the public ports with SO_REUSEPORT, which would let a second
    // gateway silently share them: make sure nobody answers on them first. (A connect, not a
    // bind: a bind would also trip over the TIME_WAIT remains of our own last run.) A gateway
    // that was just killed may answer a moment longer, hence the bounded wait.
    for (key, addr) in [
        ("http.listen", &config.http.listen),
        ("iso8583.listen", &config.iso8583.listen),
        ("operator.listen", &config.operator.listen),
    ] {
        let mut target: std::net::SocketAddr = addr
            .parse()
            .map_err(|e| StartError(format!("{key} {addr}: {e}")))?;
        if target.ip().is_unspecified() {
            target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let deadline = std::time::Instant::now() + PORT_WAIT;
        let mut waited = false;
        while std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
            if !waited {
                info!("service.port_still_answered":
                    "{key} {addr}: still answered (a gateway just killed?): waiting up to {} s for it to go",
                    PORT_WAIT.as_secs()
                );
                waited = true;
            }
            if std::time::Instant::now() > deadline {
                return Err(StartError(format!(
                    "{key} {addr}: another process is listening on it"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // Each shard publishes its durable LSN here; replication reads up to it, never further.
    let durables: Vec<Arc<AtomicU64>> = recovered
        .iter()
        .map(|r| Arc::new(AtomicU64::new(r.next_lsn.0 - 1)))
        .collect();
    let replication = crate::replication::start(
        &config.replication,
        &stores,
        &progress,
        &durables,
        &sink_statuses,
    );
    // Each shard's store writer follows its durable LSN on a thread of its own; readers serve
    // its cold payments.
    let space = crate::store::space::watch(&data_dir, config.state.min_free_mb << 20);
    let store_stop = Arc::new(AtomicBool::new(false));
    let mut store_threads = Vec::new();
    // Each shard's WAL hands its durable batches to its store writer in memory.
    let taps: Vec<Arc<DurableTap>> = (0..writers.len())
        .map(|_| Arc::new(DurableTap::new(TAP_MAX_BYTES, TAP_MAX_BATCHES)))
        .collect();
    for (k, writer) in writers.into_iter().enumerate() {
        store_threads.push(writer.spawn(
            durables[k].clone(),
            Some(taps[k].clone()),
            store_stop.clone(),
            space.clone(),
            format!("corepay-store-{k}"),
            config.state.cores.clone(),
        ));
    }
    let store_handles = stores.clone();
    let readers_own_cores =
        crate::affinity::cores_of_their_own(&config.state.cores, config.shard_cores().as_deref());
    let readers: Vec<StoreReader> = stores
        .into_iter()
        .enumerate()
        .map(|(k, store)| {
            spawn_readers(
                store,
                progress[k].clone(),
                config.state.read_threads,
                Duration::from_millis(config.state.read_timeout_ms),
                &format!("corepay-store-{k}"),
                &config.state.cores,
                readers_own_cores,
            )
        })
        .collect();

    let shared = Arc::new(Shared {
        shutdown,
        drained: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        life: life.clone(),
        stopped: AtomicUsize::new(0),
    });
    let mesh = MeshBuilder::<Envelope, _>::full(shards as usize, config.mesh.ring_capacity);
    let mut handles = Vec::new();
    let stores: Vec<Stores> = (0..shards as usize)
        .map(|k| Stores {
            own: readers[k].clone(),
            all: readers.clone(),
            durables: durables.clone(),
            space: space.clone(),
        })
        .collect();
    // `corepay reconcile` against this running gateway: compared on a thread of its own.
    let reconcile: Reconcile = {
        let (config, stores) = (config.clone(), store_handles.clone());
        Arc::new(move || {
            crate::replication::reconcile::states(&stores)
                .and_then(|states| crate::replication::reconcile::compare(&config, &states))
        })
    };
    let sinks: crate::replication::SinkStatuses = Arc::new(replication.statuses.clone());
    let sync_placement = sync_thread_placement(&config);
    let parts = ledgers.into_iter().zip(recovered).zip(indexes).zip(stores);
    for (k, (((ledger, rec), idem), reader)) in parts.enumerate() {
        let placement = if config.server.pin_cores {
            Placement::Fixed(config.shard_core(k))
        } else {
            Placement::Unbound
        };
        let ctx = ShardCtx {
            config: config.clone(),
            shard: k as u16,
            shards,
            ledger,
            recovered: rec,
            idem,
            mesh: mesh.clone(),
            shared: shared.clone(),
            pan_key: pan_key.clone(),
            admin_key: admin_key.clone(),
            sync,
            durable: durables[k].clone(),
            tap: taps[k].clone(),
            reader,
            reconcile: reconcile.clone(),
            sinks: sinks.clone(),
            tls: tls.clone(),
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("corepay-shard-{k}"))
            .spin_before_park(Duration::from_micros(config.server.spin_before_park_us))
            .blocking_thread_pool_placement(sync_placement.clone())
            .spawn(move || async move {
                let shared = ctx.shared.clone();
                let result = run_shard(ctx).await;
                if let Err(e) = &result {
                    // Logged at once: the main thread may still be joining another shard.
                    error!("shard.failed": "shard {k}: {e}");
                    shared.failed.store(true, Ordering::SeqCst);
                }
                result
            })
            .map_err(|e| StartError(format!("cannot start shard {k}: {e}")))?;
        handles.push(handle);
    }
    let watchdog_stop = Arc::new(AtomicBool::new(false));
    let watchdog = crate::service::spawn_watchdog(life.clone(), watchdog_stop.clone());
    let mut failure = None;
    let drain = Duration::from_millis(config.server.drain_timeout_ms);
    for (k, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(StartError(format!("shard {k}: {e}"))),
            Err(e) => failure = Some(StartError(format!("shard {k} panicked: {e:?}"))),
        }
    }
    watchdog_stop.store(true, Ordering::SeqCst);
    if let Some(w) = watchdog {
        w.thread().unpark();
        let _ = w.join();
    }
    replication.finish(drain);
    // The shards have flushed their WALs: let each store apply the rest and checkpoint, so
    // the next start replays nothing.
    store_stop.store(true, Ordering::SeqCst);
    for t in store_threads {
        if t.join().is_err() {
            failure = Some(StartError("a store writer panicked".into()));
        }
    }
    match failure {
        Some(e) => Err(e),
        None => {
            info!("service.stopped": "stopped cleanly");
            Ok(())
        }
    }
}

/// Waits for `step`, which needs every shard, unless a shard has failed or START_BARRIER
/// passes first: then start-up fails with a reason instead of hanging.
async fn barrier<T>(
    failed: &AtomicBool,
    what: &str,
    limit: Duration,
    step: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    let deadline = std::time::Instant::now() + limit;
    futures_lite::future::or(async { Ok(step.await) }, async {
        loop {
            if failed.load(Ordering::SeqCst) {
                return Err(format!("stopped {what}: another shard failed to start"));
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "{what}: the other shards did not get there within {} s",
                    limit.as_secs()
                ));
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Runs the reconciliation with PostgreSQL (blocking: never on an executor thread).
pub type Reconcile = Arc<dyn Fn() -> Result<Vec<String>, String> + Send + Sync>;

struct ShardCtx {
    config: Config,
    shard: u16,
    shards: u16,
    ledger: Ledger,
    recovered: Recovered,
    idem: IdemIndex,
    mesh: MeshBuilder<Envelope, glommio::channels::channel_mesh::Full>,
    shared: Arc<Shared>,
    pan_key: PanKey,
    admin_key: String,
    sync: SyncMode,
    durable: Arc<AtomicU64>,
    tap: Arc<DurableTap>,
    reader: Stores,
    reconcile: Reconcile,
    /// Every replication runner's status, for /metrics.
    sinks: crate::replication::SinkStatuses,
    tls: crate::tls::Listeners,
}

async fn run_shard(ctx: ShardCtx) -> Result<(), String> {
    let ShardCtx {
        config,
        shard,
        shards,
        ledger,
        recovered,
        idem,
        mesh,
        shared,
        pan_key,
        admin_key,
        sync,
        durable,
        tap,
        reader,
        reconcile,
        sinks,
        tls,
    } = ctx;
    crate::logline::set_shard(shard);
    let (senders, receivers) = barrier(
        &shared.failed,
        "joining the mesh",
        START_BARRIER,
        mesh.join(),
    )
    .await?
    .map_err(|_| "cannot join the mesh".to_string())?;
    assert_eq!(
        senders.peer_id(),
        shard as usize,
        "mesh ids follow shard ids"
    );
    let peers = MeshPeers::new(senders, config.mesh.max_in_flight_per_peer);
    let dir = DmaSegmentDir::new(shard_wal_dir(&config.server.data_dir, shard));
    let wal_config = WalConfig {
        segment_bytes: config.wal.segment_bytes,
        sync,
        max_pending_bytes: config.wal.max_pending_bytes,
    };
    // Real-time priority only where the sync thread has cores no shard owns: sharing a core
    // with an executor, it would preempt the shard it serves.
    let own_cores =
        crate::affinity::cores_of_their_own(&config.state.cores, config.shard_cores().as_deref());
    if sync == SyncMode::Fdatasync && own_cores {
        let how = crate::shard::disk::raise_sync_thread_priority().await;
        info!("wal.sync_thread_priority": "shard {shard}: the WAL's sync thread runs at {how}");
    }
    let wal = WalWriter::open(dir, &recovered, wal_config)
        .await
        .map_err(|e| e.to_string())?;
    wal.set_tap(tap);
    let gconfig = GatewayConfig {
        shard: ShardId(shard),
        shards,
        hold_ttl_millis: config.payments.hold_ttl_secs * 1000,
        idempotency_retention_millis: config.idempotency.retention_secs * 1000,
        idempotency_max_keys: config.idempotency.max_keys_per_shard,
        credit_resend_millis: 200,
        pan_key,
        admission: config.admission.settings(),
        ack_before_durable: false,
    };
    let gateway = Gateway::new(
        gconfig,
        ledger,
        wal.clone(),
        peers,
        idem,
        system_clock,
        Some(reader),
    );
    start_receivers(receivers, gateway.clone());
    let published = wal.clone();
    glommio::spawn_local(async move {
        let mut seen = published.durable_lsn();
        durable.store(seen.0, Ordering::SeqCst);
        while let Ok(lsn) = published.wait_durable_past(seen).await {
            durable.store(lsn.0, Ordering::SeqCst);
            seen = lsn;
        }
    })
    .detach();
    let flusher_wal = wal.clone();
    let flusher = glommio::spawn_local(async move {
        if let Err(e) = flusher_wal.run_flusher().await {
            error!("wal.poisoned": "shard {shard}: WAL poisoned: {e}; exiting so that recovery can run");
            std::process::exit(EXIT_WAL_POISONED);
        }
    });

    // Deliver every credit still in flight before anyone can see a half-moved sum.
    let deadline = std::time::Instant::now() + STARTUP_DRAIN;
    while !gateway.outbox_empty() {
        gateway.tick().await;
        if std::time::Instant::now() > deadline {
            return Err("in-flight credits were not acknowledged within 30 s".into());
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    shared.drained.fetch_add(1, Ordering::SeqCst);
    barrier(&shared.failed, "draining credits", START_BARRIER, async {
        while shared.drained.load(Ordering::SeqCst) < shards as usize {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    })
    .await?;

    let api = std::rc::Rc::new(Api::new(
        gateway.clone(),
        &admin_key,
        crate::http::api::Plane::Merchant,
    ));
    let http = net::HttpServer::bind(&config.http, api, tls.http)
        .map_err(|e| format!("http.listen {}: {e}", config.http.listen))?;
    let iso_limits = IsoLimits::from_config(&config.iso8583).map_err(|e| e.to_string())?;
    let bitmap = config
        .iso8583
        .bitmap_encoding()
        .map_err(|e| e.to_string())?;
    let iso_api = std::rc::Rc::new(
        IsoApi::new(gateway.clone(), bitmap).with_acquirers(&config.iso8583.acquirers),
    );
    let iso = IsoServer::bind(&config.iso8583.listen, iso_limits, iso_api, tls.iso8583)
        .map_err(|e| format!("iso8583.listen {}: {e}", config.iso8583.listen))?;
    let operator = if shard == 0 {
        let op = net::OperatorServer::bind(
            &config.operator.listen,
            &config.http,
            gateway.clone(),
            shared.life.clone(),
            &admin_key,
            reconcile,
            sinks,
        )
        .map_err(|e| format!("operator.listen {}: {e}", config.operator.listen))?;
        Some(op)
    } else {
        None
    };
    shared.life.listening(
        shard as usize,
        &format!(
            "serving: {shards} shards, http {}, iso8583 {}, operator {}",
            config.http.listen, config.iso8583.listen, config.operator.listen
        ),
    );
    if shard == 0 {
        info!("service.serving":
            "corepay serving: {shards} shards, http {}, iso8583 {}, operator {}, data {}",
            config.http.listen,
            config.iso8583.listen,
            config.operator.listen,
            config.server.data_dir.display()
        );
    }

    let wedge_at = crate::service::wedge_at(shard);
    while !shared.shutdown.load(Ordering::SeqCst) {
        if wedge_at.is_some_and(|at| std::time::Instant::now() >= at) {
            // The fault hook (tests only): this executor never runs again.
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let asked = std::time::Instant::now();
        glommio::timer::sleep(TICK).await;
        let late = asked.elapsed().saturating_sub(TICK);
        let late = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        crate::metrics::record_tick_lateness(late);
        // How late a timer task ran is how long anything that became ready waited for this
        // executor: admission's queue-delay signal (a dedicated 1 ms probe cost 1,000
        // wake-ups a second on an idle shard, for no better decision).
        gateway.observe_queue_delay(late);
        shared.life.beat(shard as usize);
        gateway.tick().await;
    }

    // Drain: refuse new work, let in-flight requests and credits finish, flush, stop.
    gateway.stop_accepting();
    http.stop();
    iso.stop();
    let deadline =
        std::time::Instant::now() + Duration::from_millis(config.server.drain_timeout_ms);
    while (http.active_requests() + iso.active_requests() > 0 || !gateway.outbox_empty())
        && std::time::Instant::now() < deadline
    {
        shared.life.beat(shard as usize);
        gateway.tick().await;
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // Stay reachable until every shard is done: their in-flight requests may still be
    // waiting on this one (card lookups, idempotency keys, commands, credit acks).
    shared.stopped.fetch_add(1, Ordering::SeqCst);
    while shared.stopped.load(Ordering::SeqCst) < shards as usize
        && std::time::Instant::now() < deadline
    {
        shared.life.beat(shard as usize);
        gateway.tick().await;
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    if !gateway.outbox_empty() {
        warn!("shard.credits_unacknowledged": "shard {shard}: credits still unacknowledged at exit; they are re-sent at the next start");
    }
    wal.shutdown();
    flusher.await;
    drop(operator);
    info!("shard.stopped": "shard {shard}: stopped at lsn {}", wal.durable_lsn().0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    fn on_executor<T, F>(make: impl FnOnce() -> F + Send + 'static) -> T
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + 'static,
    {
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(make)
            .expect("an executor")
            .join()
            .expect("it ran")
    }

    #[test]
    fn a_start_barrier_passes_when_its_step_completes() {
        let r = on_executor(|| {
            Box::pin(async {
                let failed = AtomicBool::new(false);
                barrier(&failed, "step", Duration::from_secs(5), async { 7 }).await
            })
        });
        assert_eq!(r, Ok(7));
    }

    /// A shard that failed to start ends the others' wait at once; a shard that never
    /// arrives ends it at the limit. Either way start-up fails with a reason, never hangs.
    #[test]
    fn a_start_barrier_gives_up_on_a_failed_or_missing_shard() {
        let (failed_fast, took) = on_executor(|| {
            Box::pin(async {
                let failed = AtomicBool::new(true);
                let started = std::time::Instant::now();
                let r = barrier(
                    &failed,
                    "joining the mesh",
                    Duration::from_secs(60),
                    futures_lite::future::pending::<()>(),
                )
                .await;
                (r, started.elapsed())
            })
        });
        assert_eq!(
            failed_fast,
            Err("stopped joining the mesh: another shard failed to start".to_string())
        );
        assert!(took < Duration::from_secs(30), "waited {took:?}");
        let timed_out = on_executor(|| {
            Box::pin(async {
                let failed = AtomicBool::new(false);
                barrier(
                    &failed,
                    "draining credits",
                    Duration::from_millis(50),
                    futures_lite::future::pending::<()>(),
                )
                .await
            })
        });
        assert_eq!(
            timed_out,
            Err("draining credits: the other shards did not get there within 0 s".to_string())
        );
    }
}
