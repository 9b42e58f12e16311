//! `enforcer run`: opens the store, loads the policy, attaches or adopts the pinned XDP
//! program, reconciles the kernel maps and serves the admin API, the portal and metrics until
//! SIGTERM, SIGINT or the shutdown token. The program stays attached after it returns.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    admin::server::{self as admin_server, AdminError},
    clock::{Clock, SystemClock},
    config::{Config, LinkKind, XdpAttachMode},
    dataplane::{
        Dataplane, DataplaneError,
        pins::{self, Attachment},
        punts::PuntReader,
    },
    engine::{Engine, EngineError, ReloadReport},
    http::{self, HttpError},
    policy::{Policy, PolicyLoadError},
    store::{Store, StoreError},
};

/// Interval of the sweep that removes long-expired sessions.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Policy(#[from] PolicyLoadError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Idp(#[from] crate::idp::IdpError),
    #[error(transparent)]
    Webhook(#[from] crate::responder::WebhookError),
    #[error(
        "another enforcer daemon is already running on the pins in {folder} (lock file {lock}); stop it first, or give this daemon its own interface or pin_root"
    )]
    AlreadyRunning { folder: PathBuf, lock: PathBuf },
    #[error("failed to lock {lock} for the pins in {folder}: {source}")]
    PinLock {
        folder: PathBuf,
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon's start task failed: {0}")]
    StartFailed(String),
    #[error("failed to read the boot id from /proc/sys/kernel/random/boot_id: {0}")]
    BootId(#[source] std::io::Error),
    #[error("failed to install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Errors from a policy reload; the previous policy stays in force after each.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] PolicyLoadError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Reachability of the identity provider, updated by the IdP client.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IdpHealth {
    /// `None` until the IdP client has checked once.
    pub reachable: Option<bool>,
    pub checked_unix_ms: Option<u64>,
    pub error: Option<String>,
}

/// State shared by the portal, the admin API and the metrics listener.
#[derive(Clone)]
pub struct DaemonState {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub engine: Arc<Mutex<Engine<Dataplane>>>,
    pub attachment: Arc<Attachment>,
    pub idp: Arc<Mutex<IdpHealth>>,
    /// Reader of the punt ring buffer; the reauth responder takes it once at start. `None`
    /// when the XDP program has no `PUNTS` map.
    pub punts: Arc<Mutex<Option<PuntReader>>>,
    /// Exclusive lock on the pins, held for the daemon's lifetime.
    _pin_lock: Arc<std::fs::File>,
}

/// Takes an exclusive, non-blocking lock that names the pin folder. bpffs holds no regular
/// files, so the lock file lives in /run/lock and is released when the process exits.
fn lock_pins(folder: &Path) -> Result<std::fs::File, DaemonError> {
    use std::os::fd::AsRawFd as _;

    let name: String = folder
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let lock = Path::new("/run/lock").join(format!("enforcer{name}.lock"));
    let lock_error = |source| DaemonError::PinLock {
        folder: folder.to_path_buf(),
        lock: lock.clone(),
        source,
    };
    std::fs::create_dir_all("/run/lock").map_err(lock_error)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(lock_error)?;
    // SAFETY: the descriptor belongs to `file`, which outlives the call.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(DaemonError::AlreadyRunning {
                folder: folder.to_path_buf(),
                lock,
            });
        }
        return Err(lock_error(err));
    }
    Ok(file)
}

impl DaemonState {
    /// Locks the engine. A panic while it was held leaves the maps as the last completed
    /// write left them, so the lock is taken over rather than propagating the panic.
    pub fn lock_engine(&self) -> MutexGuard<'_, Engine<Dataplane>> {
        self.engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn idp_health(&self) -> IdpHealth {
        self.idp
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the policy file again and applies it; an invalid file changes nothing.
    pub fn reload(&self, actor: &str) -> Result<ReloadReport, ReloadError> {
        let policy = Policy::load(&self.config.policy).inspect_err(|err| {
            tracing::error!(policy = %self.config.policy.display(), error = %err, "rejected policy reload");
        })?;
        log_warnings(&policy, &self.config.policy);
        let report = self.lock_engine().reload(policy, actor)?;
        Ok(report)
    }
}

/// Logs the policy's warnings, one line each; they do not stop the policy from loading.
fn log_warnings(policy: &Policy, path: &std::path::Path) {
    for warning in policy.warnings(&path.display().to_string()) {
        tracing::warn!("{warning}");
    }
}

/// Returns the kernel counters by name, or an error message when the map is unreadable.
pub fn counters_json(dataplane: &Dataplane) -> Value {
    match dataplane.counters() {
        Ok(values) => {
            let mut counters = serde_json::Map::new();
            for (name, value) in common::counters::NAMES.iter().zip(values) {
                counters.insert((*name).to_owned(), json!(value));
            }
            Value::Object(counters)
        }
        Err(err) => json!({ "error": err.to_string() }),
    }
}

/// Opens the store, loads the policy, attaches or adopts the program and reconciles the maps.
pub fn start(config: Config) -> Result<DaemonState, DaemonError> {
    let config = Arc::new(config);
    // The store's lock covers one store file only. This lock covers the pins, so a second
    // daemon with another store cannot adopt the running program and rewrite its maps.
    let pin_lock = lock_pins(&config.pin_folder())?;
    let store = Arc::new(Store::open(&config.store.path)?);
    let policy = Policy::load(&config.policy)?;
    log_warnings(&policy, &config.policy);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new().map_err(DaemonError::BootId)?);

    let program = match config.link_kind {
        LinkKind::Ethernet => common::program_names::ETHERNET,
        LinkKind::RawIp => common::program_names::RAW_IP,
    };
    let (dataplane, attachment) = pins::attach_or_adopt(
        &config.pin_folder(),
        &config.interface,
        xdp_mode(config.xdp_mode),
        program,
        config.session_capacity,
    )?;
    tracing::info!(
        interface = %config.interface,
        mode = attachment.mode_name(),
        requested_mode = config.xdp_mode.as_str(),
        program_id = attachment.program_id,
        adopted = attachment.adopted,
        pins = %attachment.pin_folder.display(),
        "{}",
        if attachment.adopted { "adopted pinned XDP program" } else { "attached XDP program" }
    );

    let mut dataplane = dataplane;
    let punts = dataplane.take_punts()?;
    let mut engine = Engine::new(
        store.clone(),
        dataplane,
        clock,
        policy,
        &config.policy.display().to_string(),
        config.link_kind,
    )?;
    engine.reconcile()?;
    Ok(DaemonState {
        _pin_lock: Arc::new(pin_lock),
        config,
        store,
        engine: Arc::new(Mutex::new(engine)),
        attachment: Arc::new(attachment),
        idp: Arc::default(),
        punts: Arc::new(Mutex::new(punts)),
    })
}

/// Runs the daemon until `shutdown` is cancelled or SIGTERM or SIGINT arrives; SIGHUP reloads
/// the policy. The XDP program stays attached after it returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let admin_gid = match &config.admin.group {
        Some(group) => Some(admin_server::resolve_group(group)?),
        None => None,
    };
    // Configuration errors stop the daemon before it attaches the program, so that a first
    // start with a bad secret does not leave XDP enforcing with no portal to sign in at.
    crate::portal::daemon::check(&config)?;
    let state = tokio::task::spawn_blocking(move || start(config))
        .await
        .map_err(|err| DaemonError::StartFailed(err.to_string()))??;
    serve(state, admin_gid, shutdown).await
}

/// Serves a started daemon until shutdown.
pub async fn serve(
    state: DaemonState,
    admin_gid: Option<u32>,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let config = state.config.clone();
    let mut tasks = Vec::new();
    tasks.push(admin_server::serve(
        state.clone(),
        &config.admin.socket,
        admin_gid,
        shutdown.clone(),
    )?);
    tasks.push(
        http::serve(
            "portal",
            config.portal.listen,
            http::portal_router(state.clone())
                .merge(crate::portal::daemon::start(&state, shutdown.clone()).await?),
            shutdown.clone(),
        )
        .await?,
    );
    if let Some(metrics) = &config.metrics {
        tasks.push(
            http::serve(
                "metrics",
                metrics.listen,
                http::metrics_router(state.clone()),
                shutdown.clone(),
            )
            .await?,
        );
    }
    tasks.push(tokio::spawn(sweep_loop(state.clone(), shutdown.clone())));
    tracing::info!(interface = %config.interface, "enforcer started");

    wait_for_stop(&state, &shutdown).await?;
    shutdown.cancel();
    for task in tasks {
        if let Err(err) = task.await {
            tracing::error!(error = %err, "daemon task failed");
        }
    }
    tracing::info!(interface = %config.interface, "enforcer stopped; the XDP program stays attached");
    Ok(())
}

async fn sweep_loop(state: DaemonState, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let state = state.clone();
        let swept = tokio::task::spawn_blocking(move || state.lock_engine().sweep()).await;
        match swept {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "failed to sweep expired sessions"),
            Err(err) => tracing::error!(error = %err, "sweep task failed"),
        }
    }
}

async fn wait_for_stop(
    state: &DaemonState,
    shutdown: &CancellationToken,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| DaemonError::Signal {
            signal: name,
            source,
        })
    };
    let mut terminate = install(SignalKind::terminate(), "SIGTERM")?;
    let mut interrupt = install(SignalKind::interrupt(), "SIGINT")?;
    let mut hangup = install(SignalKind::hangup(), "SIGHUP")?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                tracing::info!("shutdown requested");
                return Ok(());
            }
            _ = terminate.recv() => {
                tracing::info!("received SIGTERM");
                return Ok(());
            }
            _ = interrupt.recv() => {
                tracing::info!("received SIGINT");
                return Ok(());
            }
            _ = hangup.recv() => {
                tracing::info!("received SIGHUP; reloading the policy");
                let state = state.clone();
                let result = tokio::task::spawn_blocking(move || state.reload("signal:SIGHUP")).await;
                if let Ok(Err(err)) = result {
                    tracing::error!(error = %err, "policy reload failed; the previous policy stays in force");
                }
            }
        }
    }
}

fn xdp_mode(mode: XdpAttachMode) -> aya::programs::XdpMode {
    use aya::programs::XdpMode;
    match mode {
        XdpAttachMode::Auto => XdpMode::Default,
        XdpAttachMode::Native => XdpMode::Driver,
        XdpAttachMode::Skb => XdpMode::Skb,
        XdpAttachMode::Offload => XdpMode::Hardware,
    }
}
