//! The sign-in portal, served over HTTP on the gateway and reachable without a session. It
//! identifies the device by the request's source address, shows its sessions and pending
//! prompts, runs the browser sign-in and the device authorization grant, and shows the user
//! which resources are open again. Browsers get HTML, other clients (curl) plain text.

mod render;

pub mod daemon;
mod events;
pub mod gateway;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    extract::{ConnectInfo, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use serde::Deserialize;
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::{
    idp::{
        Authentication, CallbackParams, IdentityProvider, IdpError, LoginOptions, PendingLogins,
    },
    responder::Responder,
};

pub use render::Format;

/// A session of a device to one resource, as the portal shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    pub resource: String,
    pub expires_at: SystemTime,
}

/// Device summary shown by the portal.
#[derive(Clone, Debug, Default)]
pub struct DeviceStatus {
    pub device_id: u32,
    pub name: String,
    pub sessions: Vec<SessionView>,
    /// Resources the device tried to reach without a live session.
    pub pending: Vec<String>,
    /// Some pending resource requires multi-factor authentication.
    pub pending_requires_mfa: bool,
}

/// The gateway refused to grant sessions for a verified authentication.
#[derive(Debug, Error)]
#[error("{reason}")]
pub struct GrantRejected {
    /// Why, in words the user can act on (for example "device laptop-7 belongs to another
    /// user").
    pub reason: String,
}

/// The session side of the gateway, which the portal calls. The daemon implements it with
/// the store and the session engine, which check device ownership, enrollment, each
/// resource's duration and step-up requirement, and audit the outcome.
pub trait Gateway: Send + Sync + 'static {
    /// Returns the device enrolled with `address`.
    fn device_for_address(&self, address: IpAddr) -> Option<u32>;

    fn device_status(&self, device_id: u32) -> DeviceStatus;

    /// Records `authentication` as the device's last sign-in and returns the sessions it
    /// opened.
    fn grant(
        &self,
        device_id: u32,
        authentication: &Authentication,
    ) -> Result<Vec<SessionView>, GrantRejected>;
}

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

/// Shared state of the portal's handlers.
pub struct Portal {
    /// Set once discovery succeeds; until then sign-ins fail with 503.
    idp: OnceLock<Arc<IdentityProvider>>,
    responder: OnceLock<Arc<Responder>>,
    pub pending: PendingLogins,
    pub gateway: Arc<dyn Gateway>,
    device_grants: Mutex<HashMap<u32, DeviceGrant>>,
}

impl Portal {
    pub fn new(
        idp: Arc<IdentityProvider>,
        pending: PendingLogins,
        gateway: Arc<dyn Gateway>,
    ) -> Arc<Self> {
        let portal = Self::without_idp(pending, gateway);
        portal.set_idp(idp);
        portal
    }

    /// Creates a portal whose IdP is set later with `set_idp`, so the portal answers while
    /// the IdP is unreachable at start.
    pub fn without_idp(pending: PendingLogins, gateway: Arc<dyn Gateway>) -> Arc<Self> {
        Arc::new(Self {
            idp: OnceLock::new(),
            responder: OnceLock::new(),
            pending,
            gateway,
            device_grants: Mutex::new(HashMap::new()),
        })
    }

    /// Sets the discovered IdP; later calls are ignored.
    pub fn set_idp(&self, idp: Arc<IdentityProvider>) {
        let _ = self.idp.set(idp);
    }

    /// Sets the reauth responder that feeds `/events` and `/snooze`; later calls are ignored.
    pub fn set_responder(&self, responder: Arc<Responder>) {
        let _ = self.responder.set(responder);
    }

    fn idp(&self, format: Format) -> Result<Arc<IdentityProvider>, PortalError> {
        self.idp.get().cloned().ok_or_else(|| PortalError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the identity provider is not reachable yet; try again in a minute".into(),
            format,
        })
    }

    fn responder(&self, format: Format) -> Result<Arc<Responder>, PortalError> {
        self.responder.get().cloned().ok_or_else(|| PortalError {
            status: StatusCode::NOT_FOUND,
            message: "this gateway runs no reauth responder".into(),
            format,
        })
    }

    /// Returns the portal's URL without a trailing slash for commands printed to curl users:
    /// the responder's `portal_url`, or the request's `Host` header when no responder runs.
    fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(responder) = self.responder.get() {
            return responder.portal_url().trim_end_matches('/').to_owned();
        }
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or("localhost");
        format!("http://{host}")
    }

    fn device_grant(&self, device_id: u32) -> Option<DeviceGrant> {
        self.device_grants
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&device_id)
            .cloned()
    }

    fn set_device_grant(&self, device_id: u32, grant: DeviceGrant) {
        self.device_grants
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(device_id, grant);
    }
}

/// Builds the portal's routes; serve them with `into_make_service_with_connect_info`, so
/// handlers see the source address.
pub fn router(portal: Arc<Portal>) -> Router {
    Router::new()
        .route("/", get(status))
        .route("/login", get(login).post(login))
        .route("/callback", get(callback))
        .route("/device", get(device_status).post(device_start))
        .route("/events", get(events::stream))
        .route("/snooze", axum::routing::post(snooze))
        .with_state(portal)
}

/// Serves the portal on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    portal: Arc<Portal>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(portal).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

type PortalState = State<Arc<Portal>>;

/// A failed portal request: the status code and the message shown to the user.
pub(crate) struct PortalError {
    status: StatusCode,
    message: String,
    format: Format,
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        let body = render::error(self.format, &self.message);
        (self.status, content_type(self.format), body).into_response()
    }
}

fn content_type(format: Format) -> [(header::HeaderName, &'static str); 2] {
    let value = match format {
        Format::Html => "text/html; charset=utf-8",
        Format::Text => "text/plain; charset=utf-8",
    };
    [
        (header::CONTENT_TYPE, value),
        (header::CACHE_CONTROL, "no-store"),
    ]
}

fn respond(format: Format, body: String) -> Response {
    (content_type(format), body).into_response()
}

// NOTE: an address with no enrolled device is rejected here, before any sign-in, so the audit
// log has no entry for it because no user is known yet. Enrollment on first sign-in, when the
// policy allows it, needs a device record created by the session engine, which has no such
// operation yet.
fn identify(portal: &Portal, address: SocketAddr, format: Format) -> Result<u32, PortalError> {
    portal
        .gateway
        .device_for_address(address.ip())
        .ok_or_else(|| PortalError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "no device is enrolled with address {}; ask an administrator to enroll it",
                address.ip()
            ),
            format,
        })
}

async fn status(
    State(portal): PortalState,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let format = Format::from_headers(&headers);
    let device_id = identify(&portal, address, format)?;
    let status = portal.gateway.device_status(device_id);
    let grant = portal.device_grant(device_id);
    Ok(respond(
        format,
        render::status(
            format,
            &status,
            grant.as_ref(),
            SystemTime::now(),
            &portal.base_url(&headers),
        ),
    ))
}

#[derive(Deserialize)]
struct LoginQuery {
    #[serde(default)]
    mfa: Option<String>,
}

async fn login(
    State(portal): PortalState,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Result<Response, PortalError> {
    let format = Format::from_headers(&headers);
    let device_id = identify(&portal, address, format)?;
    let status = portal.gateway.device_status(device_id);
    let mfa = status.pending_requires_mfa || query.mfa.is_some_and(|value| value != "0");
    let request = portal
        .idp(format)?
        .begin_login(&portal.pending, device_id, LoginOptions { mfa })
        .map_err(|err| {
            warn!(device_id, error = %err, "failed to start a sign-in");
            PortalError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: err.to_string(),
                format,
            }
        })?;
    Ok(Redirect::to(request.url.as_str()).into_response())
}

async fn callback(
    State(portal): PortalState,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<CallbackParams>,
) -> Result<Response, PortalError> {
    let format = Format::from_headers(&headers);
    let device_id = identify(&portal, address, format)?;
    // The benchmark times a sign-in from this line to the first passing packet.
    debug!(device_id, "sign-in callback received");
    let authentication = portal
        .idp(format)?
        .complete_login(&portal.pending, device_id, &params)
        .await
        .map_err(|err| sign_in_failed(device_id, err, format))?;
    let sessions = grant(&portal, device_id, &authentication, format)?;
    Ok(respond(
        format,
        render::granted(format, &authentication, &sessions, SystemTime::now()),
    ))
}

fn sign_in_failed(device_id: u32, err: IdpError, format: Format) -> PortalError {
    warn!(device_id, error = %err, "sign-in rejected");
    let status = match err {
        IdpError::Unreachable { .. } | IdpError::InvalidDocument { .. } => StatusCode::BAD_GATEWAY,
        IdpError::Store(_) | IdpError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::FORBIDDEN,
    };
    PortalError {
        status,
        message: err.to_string(),
        format,
    }
}

fn grant(
    portal: &Portal,
    device_id: u32,
    authentication: &Authentication,
    format: Format,
) -> Result<Vec<SessionView>, PortalError> {
    match portal.gateway.grant(device_id, authentication) {
        Ok(sessions) => {
            info!(
                device_id,
                issuer = %authentication.issuer,
                subject = %authentication.subject,
                sessions = sessions.len(),
                multi_factor = authentication.multi_factor,
                "sign-in granted sessions"
            );
            Ok(sessions)
        }
        Err(rejected) => {
            warn!(device_id, subject = %authentication.subject, reason = %rejected, "sign-in verified but no session granted");
            Err(PortalError {
                status: StatusCode::FORBIDDEN,
                message: rejected.reason,
                format,
            })
        }
    }
}

async fn device_start(
    State(portal): PortalState,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Result<Response, PortalError> {
    let format = Format::from_headers(&headers);
    let device_id = identify(&portal, address, format)?;
    if let Some(DeviceGrant::Waiting { .. }) = portal.device_grant(device_id) {
        let grant = portal.device_grant(device_id);
        return Ok(respond(
            format,
            render::device_grant(format, grant.as_ref(), &portal.base_url(&headers)),
        ));
    }
    let status = portal.gateway.device_status(device_id);
    let mfa = status.pending_requires_mfa || query.mfa.is_some_and(|value| value != "0");
    let idp = portal.idp(format)?;
    let authorization = idp
        .start_device_authorization(LoginOptions { mfa })
        .await
        .map_err(|err| sign_in_failed(device_id, err, format))?;
    let waiting = DeviceGrant::Waiting {
        verification_uri: authorization.verification_uri().to_owned(),
        verification_uri_complete: authorization.verification_uri_complete().map(str::to_owned),
        user_code: authorization.user_code().to_owned(),
        expires_at: SystemTime::now() + authorization.expires_in(),
    };
    portal.set_device_grant(device_id, waiting.clone());
    info!(device_id, "started a device authorization grant");

    let poller = Arc::clone(&portal);
    tokio::spawn(async move {
        let outcome = match idp.finish_device_authorization(&authorization).await {
            Ok(authentication) => match poller.gateway.grant(device_id, &authentication) {
                Ok(sessions) => {
                    info!(device_id, subject = %authentication.subject, sessions = sessions.len(), "device authorization granted sessions");
                    DeviceGrant::Granted(sessions)
                }
                Err(rejected) => {
                    warn!(device_id, reason = %rejected, "device authorization verified but no session granted");
                    DeviceGrant::Failed(rejected.reason)
                }
            },
            Err(err) => {
                warn!(device_id, error = %err, "device authorization failed");
                DeviceGrant::Failed(err.to_string())
            }
        };
        poller.set_device_grant(device_id, outcome);
    });
    Ok(respond(
        format,
        render::device_grant(format, Some(&waiting), &portal.base_url(&headers)),
    ))
}

async fn device_status(
    State(portal): PortalState,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let format = Format::from_headers(&headers);
    let device_id = identify(&portal, address, format)?;
    let grant = portal.device_grant(device_id);
    Ok(respond(
        format,
        render::device_grant(format, grant.as_ref(), &portal.base_url(&headers)),
    ))
}

#[derive(Deserialize)]
struct SnoozeQuery {
    minutes: u64,
}

async fn snooze(
    State(portal): PortalState,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<SnoozeQuery>,
) -> Result<Response, PortalError> {
    let format = Format::from_headers(&headers);
    let device_id = identify(&portal, address, format)?;
    let responder = portal.responder(format)?;
    let until = responder.snooze(
        device_id,
        Duration::from_secs(query.minutes.saturating_mul(60)),
        std::time::Instant::now(),
    );
    Ok(respond(format, render::snoozed(format, until)))
}
