//! `enforcer run`: opens the store, loads the policy, loads and attaches the XDP program,
//! reconciles the kernel maps and serves the portal until shutdown.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::{
    clock::{Clock, SystemClock},
    config::{Config, XdpAttachMode},
    dataplane::{Dataplane, DataplaneError},
    engine::{Engine, EngineError},
    http::{self, HttpError},
    policy::{Policy, PolicyLoadError},
    store::{Store, StoreError},
};

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
    #[error("failed to read the boot id from /proc/sys/kernel/random/boot_id: {0}")]
    BootId(#[source] std::io::Error),
    #[error("failed to install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// State shared by the portal, the admin API and the metrics listener.
#[derive(Clone)]
pub struct DaemonState {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub engine: Arc<Mutex<Engine<Dataplane>>>,
}

/// Runs the daemon until `shutdown` is cancelled or SIGTERM or SIGINT arrives. The XDP program
/// stays attached after it returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    let store = Arc::new(Store::open(&config.store.path)?);
    let policy = Policy::load(&config.policy)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new().map_err(DaemonError::BootId)?);

    let mut dataplane = Dataplane::load()?;
    dataplane.attach(&config.interface, xdp_flags(config.xdp_mode))?;
    tracing::info!(
        interface = %config.interface,
        mode = config.xdp_mode.as_str(),
        "attached XDP program"
    );

    let mut engine = Engine::new(
        store.clone(),
        dataplane,
        clock,
        policy,
        &config.policy.display().to_string(),
        config.link_kind,
    )?;
    engine.reconcile()?;
    let state = DaemonState {
        config: config.clone(),
        store,
        engine: Arc::new(Mutex::new(engine)),
    };

    let portal = http::serve(
        "portal",
        config.portal.listen,
        http::portal_router(state.clone()),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(interface = %config.interface, "enforcer started");

    wait_for_stop(&shutdown).await?;
    shutdown.cancel();
    if let Err(err) = portal.await {
        tracing::error!(error = %err, "portal task failed");
    }
    tracing::info!(interface = %config.interface, "enforcer stopped");
    Ok(())
}

async fn wait_for_stop(shutdown: &CancellationToken) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(|source| DaemonError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|source| DaemonError::Signal {
        signal: "SIGINT",
        source,
    })?;
    tokio::select! {
        _ = shutdown.cancelled() => tracing::info!("shutdown requested"),
        _ = terminate.recv() => tracing::info!("received SIGTERM"),
        _ = interrupt.recv() => tracing::info!("received SIGINT"),
    }
    Ok(())
}

fn xdp_flags(mode: XdpAttachMode) -> aya::programs::XdpMode {
    use aya::programs::XdpMode;
    match mode {
        XdpAttachMode::Auto => XdpMode::Default,
        XdpAttachMode::Native => XdpMode::Driver,
        XdpAttachMode::Skb => XdpMode::Skb,
        XdpAttachMode::Offload => XdpMode::Hardware,
    }
}
