//! Start of the portal inside `enforcer run`: reads the `[idp]` and `[responder]` tables,
//! discovers the IdP (retrying in the background while it is unreachable), feeds the reauth
//! responder from the punt ring buffer and returns the portal's routes.

use std::{sync::Arc, time::Duration};

use axum::Router;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Portal, gateway::DaemonGateway};
use crate::{
    daemon::{DaemonError, DaemonState, IdpHealth},
    idp::{IdentityProvider, IdpConfig, IdpError, PendingLogins},
    responder::{Responder, ResponderConfig},
    store::unix_ms_now,
};

/// Interval of the purge of expired pending sign-ins and idle prompts.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// Maximum wait between two discovery attempts while the IdP is unreachable.
const MAX_DISCOVERY_BACKOFF: Duration = Duration::from_secs(60);

/// Parses a configuration table into `T`, naming the section in the error.
fn section<T: serde::de::DeserializeOwned>(table: &toml::Table, name: &str) -> Result<T, IdpError> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|err| IdpError::Config(format!("invalid [{name}] section: {err}")))
}

/// Checks the `[idp]` and `[responder]` sections and reads their secrets, so that an error in
/// them stops `enforcer run` before it attaches the XDP program.
pub fn check(config: &crate::config::Config) -> Result<(), DaemonError> {
    if config.idp.is_empty() {
        return Ok(());
    }
    let idp: IdpConfig = section(&config.idp, "idp")?;
    idp.validate()?;
    idp.load_client_secret()?;
    let mut responder = config.responder.clone();
    if !responder.contains_key("portal_url") {
        responder.insert("portal_url".into(), "http://portal.invalid/".into());
    }
    let responder: ResponderConfig = section(&responder, "responder")?;
    if let Some(webhook) = &responder.webhook {
        webhook.load_secret()?;
    }
    Ok(())
}

/// Starts the portal's background tasks and returns its routes, or no routes when the
/// configuration has no `[idp]` section.
pub async fn start(
    state: &DaemonState,
    shutdown: CancellationToken,
) -> Result<Router, DaemonError> {
    if state.config.idp.is_empty() {
        warn!("the configuration has no [idp] section, so the portal offers no sign-in");
        return Ok(Router::new());
    }
    let config: IdpConfig = section(&state.config.idp, "idp")?;
    config.validate()?;
    let secret = config.load_client_secret()?;

    let mut responder_config = state.config.responder.clone();
    if !responder_config.contains_key("portal_url") {
        responder_config.insert(
            "portal_url".into(),
            format!("http://{}/", state.config.portal.listen).into(),
        );
    }
    let responder_config: ResponderConfig = section(&responder_config, "responder")?;
    let (responder, webhook) = Responder::new(responder_config)?;
    if let Some(webhook) = webhook {
        tokio::spawn(webhook.run(|_, _| {}));
    }

    let gateway = Arc::new(DaemonGateway {
        state: state.clone(),
        responder: responder.clone(),
    });
    let pending = PendingLogins::with_limits(state.store.clone(), config.pending_limits());
    let portal = Portal::without_idp(pending.clone(), gateway);
    portal.set_responder(responder.clone());

    tokio::spawn(discover(
        config,
        secret,
        portal.clone(),
        state.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(read_punts(
        state.clone(),
        responder.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(purge(pending, responder, shutdown));
    Ok(super::router(portal))
}

fn set_health(state: &DaemonState, result: Result<(), &IdpError>) {
    let health = IdpHealth {
        reachable: Some(result.is_ok()),
        checked_unix_ms: Some(unix_ms_now()),
        error: result.err().map(ToString::to_string),
    };
    *state.idp.lock().unwrap_or_else(|p| p.into_inner()) = health;
}

/// Discovers the IdP, retrying with exponential backoff (1 s doubling to 60 s) until it
/// succeeds or shutdown.
async fn discover(
    config: IdpConfig,
    secret: openidconnect::ClientSecret,
    portal: Arc<Portal>,
    state: DaemonState,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match IdentityProvider::discover(config.clone(), secret.clone()).await {
            Ok(idp) => {
                set_health(&state, Ok(()));
                let idp = Arc::new(idp);
                // Stored grants resume before the portal accepts sign-ins, so that a device
                // whose grant survived the restart cannot start a second one in between.
                let resumed = super::device_flow::resume(&portal, &idp);
                if resumed > 0 {
                    info!(
                        resumed,
                        "resumed device authorization grants from the store"
                    );
                }
                portal.set_idp(Arc::clone(&idp));
                return;
            }
            Err(err) => {
                error!(issuer = %config.issuer, error = %err, retry_in = ?backoff, "IdP discovery failed; sign-ins are unavailable until it succeeds");
                set_health(&state, Err(&err));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_DISCOVERY_BACKOFF);
    }
}

async fn read_punts(state: DaemonState, responder: Arc<Responder>, shutdown: CancellationToken) {
    let reader = state.punts.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(mut reader) = reader else {
        warn!("the XDP program has no punt ring buffer, so no sign-in prompts are sent");
        return;
    };
    info!("reading punts for sign-in prompts");
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            batch = reader.next_batch() => batch,
        };
        match batch {
            Ok(punts) => {
                let now = std::time::Instant::now();
                for punt in &punts {
                    responder.record_punt(punt, now);
                }
            }
            Err(err) => {
                error!(error = %err, "failed to read the punt ring buffer; sign-in prompts stop");
                return;
            }
        }
    }
}

async fn purge(pending: PendingLogins, responder: Arc<Responder>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Err(err) = pending.expire(std::time::SystemTime::now()) {
            warn!(error = %err, "failed to purge expired pending sign-ins");
        }
        responder.expire(std::time::Instant::now());
    }
}
