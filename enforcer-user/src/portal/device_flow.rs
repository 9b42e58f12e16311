//! `POST /device` and `GET /device`: the device authorization grant (RFC 8628) for devices
//! without a browser. The portal polls the IdP in the background, and keeps each grant in
//! progress in the store, so that polling resumes after a daemon restart.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{ConnectInfo, Query, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use tracing::{info, warn};

use super::{
    DeviceGrantSlot, Format, LoginQuery, OriginKey, Portal, PortalError, PortalState, SessionView,
    login_origin, reject_cross_site, render, respond, sign_in_failed,
};
use crate::{
    idp::{DeviceAuthorization, IdentityProvider, LoginOptions, LoginOrigin, pending::unix_ms},
    store::PendingDeviceGrant,
};

/// Progress of a device authorization grant started from a device.
#[derive(Clone, Debug)]
pub enum DeviceGrant {
    Waiting {
        verification_uri: String,
        verification_uri_complete: Option<String>,
        user_code: String,
        expires_at: SystemTime,
    },
    Granted(Vec<SessionView>),
    Failed(String),
}

impl DeviceGrant {
    fn waiting(authorization: &DeviceAuthorization) -> Self {
        DeviceGrant::Waiting {
            verification_uri: authorization.verification_uri().to_owned(),
            verification_uri_complete: authorization.verification_uri_complete().map(str::to_owned),
            user_code: authorization.user_code().to_owned(),
            expires_at: authorization.expires_at(),
        }
    }
}

/// Returns the store key of `origin`'s device grant.
fn store_key(origin: LoginOrigin) -> String {
    match OriginKey::from(origin) {
        OriginKey::Device(device_id) => format!("device:{device_id}"),
        OriginKey::Address(address) => format!("address:{address}"),
    }
}

pub(super) async fn start(
    State(portal): PortalState,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Result<Response, PortalError> {
    let format = Format::from_headers(&headers);
    reject_cross_site(&headers, format)?;
    let origin = login_origin(&portal, address, format)?;
    let base_url = portal.base_url(&headers);

    // One grant per device (or address) is in progress at a time, and `max_pending_logins`
    // on the gateway, because each one polls the IdP.
    let _starting = match portal.reserve_device_grant(origin.into()) {
        DeviceGrantSlot::Reserved(guard) => guard,
        DeviceGrantSlot::Waiting(waiting) => {
            return Ok(respond(
                format,
                render::device_grant(format, Some(&waiting), &base_url),
            ));
        }
        DeviceGrantSlot::Starting => {
            let mut rejected = PortalError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "a device sign-in from this address is being started; run `curl {base_url}/device` in a second to see its code"
                ),
                format,
            );
            rejected.retry_after = Some(Duration::from_secs(1));
            return Err(rejected);
        }
        DeviceGrantSlot::FullUnenrolled { limit } => {
            return Err(over_limit(
                origin,
                format!(
                    "unenrolled addresses already have {limit} device sign-ins in progress, half of `max_pending_logins`; try again in a minute"
                ),
                format,
            ));
        }
        DeviceGrantSlot::Full { limit } => {
            return Err(over_limit(
                origin,
                format!(
                    "the gateway already has {limit} device sign-ins in progress; try again in a minute"
                ),
                format,
            ));
        }
    };

    let mfa = query.mfa(&portal, origin);
    let idp = portal.idp(format)?;
    let authorization = idp
        .start_device_authorization(LoginOptions { mfa })
        .await
        .map_err(|err| sign_in_failed(origin, err, format))?;

    let record = PendingDeviceGrant {
        key: store_key(origin),
        device_id: origin.device_id,
        source_address: origin.address,
        response: authorization.response_json(),
        requested_unix_ms: unix_ms(authorization.requested_at),
        expires_unix_ms: unix_ms(authorization.expires_at()),
        mfa,
    };
    if let Err(err) = portal.store().put_device_grant(&record) {
        // Polling still works until a restart, so the sign-in goes on.
        warn!(%origin, error = %err, "failed to store the device authorization grant; a restart loses it");
    }
    let waiting = DeviceGrant::waiting(&authorization);
    portal.set_device_grant(origin.into(), waiting.clone());
    info!(%origin, "started a device authorization grant");
    spawn_poller(&portal, idp, origin, authorization);
    Ok(respond(
        format,
        render::device_grant(format, Some(&waiting), &base_url),
    ))
}

/// Returns the 429 of a device sign-in over a limit of grants in progress, and logs it.
fn over_limit(origin: LoginOrigin, message: String, format: Format) -> PortalError {
    warn!(%origin, reason = %message, "rejected a device sign-in over the limit of grants in progress");
    let mut rejected = PortalError::new(StatusCode::TOO_MANY_REQUESTS, message, format);
    rejected.retry_after = Some(Duration::from_secs(60));
    rejected
}

pub(super) async fn status(
    State(portal): PortalState,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let format = Format::from_headers(&headers);
    let origin = login_origin(&portal, address, format)?;
    let grant = portal.device_grant(origin.into());
    Ok(respond(
        format,
        render::device_grant(format, grant.as_ref(), &portal.base_url(&headers)),
    ))
}

/// Polls the IdP for `authorization` in the background, grants the sessions when the user
/// approves, and removes the stored grant when polling ends.
fn spawn_poller(
    portal: &Arc<Portal>,
    idp: Arc<IdentityProvider>,
    origin: LoginOrigin,
    authorization: DeviceAuthorization,
) {
    let portal = Arc::clone(portal);
    tokio::spawn(async move {
        let outcome = match idp.finish_device_authorization(&authorization).await {
            Ok(authentication) => match portal.gateway.grant(origin, &authentication) {
                Ok(granted) => {
                    info!(%origin, subject = %authentication.subject, sessions = granted.sessions.len(), enrolled_device = granted.enrolled_device.as_deref(), "device authorization granted sessions");
                    DeviceGrant::Granted(granted.sessions)
                }
                Err(rejected) => {
                    warn!(%origin, reason = %rejected, "device authorization verified but no session granted");
                    DeviceGrant::Failed(rejected.reason)
                }
            },
            Err(err) => {
                warn!(%origin, error = %err, "device authorization failed");
                DeviceGrant::Failed(err.to_string())
            }
        };
        if let Err(err) = portal.store().remove_device_grant(&store_key(origin)) {
            warn!(%origin, error = %err, "failed to remove the finished device authorization grant; the next start drops it");
        }
        portal.set_device_grant(origin.into(), outcome);
    });
}

/// Resumes polling for every device authorization grant that the store keeps from before a
/// restart, and drops the expired ones. Returns how many it resumed.
pub fn resume(portal: &Arc<Portal>, idp: &Arc<IdentityProvider>) -> usize {
    let grants = match portal.store().device_grants() {
        Ok(grants) => grants,
        Err(err) => {
            warn!(error = %err, "failed to read the stored device authorization grants; users must start them again");
            return 0;
        }
    };
    let now_ms = unix_ms(SystemTime::now());
    let mut resumed = 0;
    for grant in grants {
        let origin = LoginOrigin {
            device_id: grant.device_id,
            address: grant.source_address,
        };
        let authorization = (grant.expires_unix_ms > now_ms)
            .then(|| {
                DeviceAuthorization::resume(
                    grant.response,
                    UNIX_EPOCH + Duration::from_millis(grant.requested_unix_ms),
                    grant.mfa,
                )
            })
            .transpose();
        match authorization {
            Ok(Some(authorization)) => {
                portal.set_device_grant(origin.into(), DeviceGrant::waiting(&authorization));
                info!(%origin, "resumed a device authorization grant after a restart");
                spawn_poller(portal, Arc::clone(idp), origin, authorization);
                resumed += 1;
            }
            Ok(None) => {
                info!(%origin, "dropped a device authorization grant that expired during a restart");
                remove(portal, &grant.key);
            }
            Err(err) => {
                warn!(%origin, error = %err, "dropped an unreadable stored device authorization grant");
                remove(portal, &grant.key);
            }
        }
    }
    resumed
}

fn remove(portal: &Portal, key: &str) {
    if let Err(err) = portal.store().remove_device_grant(key) {
        warn!(key, error = %err, "failed to remove a stored device authorization grant");
    }
}
