//! The sign-in portal, served over HTTP on the gateway and reachable without a session. It
//! identifies the device by the request's source address, shows its sessions and pending
//! prompts, runs the browser sign-in and the device authorization grant, and shows the user
//! which resources are open again. Browsers get HTML, other clients (curl) plain text.

mod render;

pub mod daemon;
mod device_flow;
mod events;
pub mod gateway;

use std::{
    collections::{HashMap, HashSet, VecDeque},
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
        Authentication, CallbackParams, IdentityProvider, IdpError, LoginOptions, LoginOrigin,
        PendingLogins,
    },
    responder::Responder,
};

pub use device_flow::DeviceGrant;
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

/// Sessions opened by a sign-in, and the device it enrolled, if it enrolled one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Granted {
    pub sessions: Vec<SessionView>,
    /// Name of the device the sign-in enrolled, for a first sign-in from its address.
    pub enrolled_device: Option<String>,
}

/// The session side of the gateway, which the portal calls. The daemon implements it with
/// the store and the session engine, which check device ownership, enrollment, each
/// resource's duration and step-up requirement, and audit the outcome.
pub trait Gateway: Send + Sync + 'static {
    /// Returns the device enrolled with `address`.
    fn device_for_address(&self, address: IpAddr) -> Option<u32>;

    /// Checks whether `address`, which has no enrolled device, may enroll one by its first
    /// sign-in. The error is the message shown to the user, naming the fix.
    fn check_enrollment(&self, address: IpAddr) -> Result<(), String> {
        Err(format!(
            "no device is enrolled with address {address}; ask an administrator to enroll it"
        ))
    }

    fn device_status(&self, device_id: u32) -> DeviceStatus;

    /// Records `authentication` as the last sign-in of `origin`'s device, enrolling a device
    /// first when `origin` has none, and returns the sessions it opened.
    fn grant(
        &self,
        origin: LoginOrigin,
        authentication: &Authentication,
    ) -> Result<Granted, GrantRejected>;
}

/// Shared state of the portal's handlers.
pub struct Portal {
    /// Set once discovery succeeds; until then sign-ins fail with 503.
    idp: OnceLock<Arc<IdentityProvider>>,
    responder: OnceLock<Arc<Responder>>,
    pub pending: PendingLogins,
    pub gateway: Arc<dyn Gateway>,
    device_grants: Mutex<DeviceGrants>,
}

/// Device authorization grants by origin, behind one lock so that the limits are checked
/// and a slot is taken in one step.
#[derive(Default)]
struct DeviceGrants {
    /// The latest grant of each origin: waiting for its user, or finished.
    grants: HashMap<OriginKey, DeviceGrant>,
    /// Origins whose grant the portal is requesting from the IdP, which count as waiting.
    starting: HashSet<OriginKey>,
    /// Origins of finished grants in `grants`, oldest first. Only the newest
    /// `max_pending_logins` outcomes are kept, because every address that may start a grant
    /// would otherwise leave one behind for the life of the daemon.
    finished: VecDeque<OriginKey>,
}

impl DeviceGrants {
    /// Returns how many grants of the origins that `include` selects are waiting or starting.
    fn waiting(&self, include: impl Fn(&OriginKey) -> bool) -> usize {
        let waiting = self
            .grants
            .iter()
            .filter(|(key, grant)| include(key) && matches!(grant, DeviceGrant::Waiting { .. }))
            .count();
        waiting + self.starting.iter().filter(|key| include(key)).count()
    }
}

/// Outcome of `Portal::reserve_device_grant`.
pub(crate) enum DeviceGrantSlot<'a> {
    /// The origin may start a grant. The slot is released when the guard drops, also when
    /// the request is cancelled.
    Reserved(StartingGuard<'a>),
    /// The origin already has this grant waiting for its user.
    Waiting(DeviceGrant),
    /// The origin's grant is being requested from the IdP by another request.
    Starting,
    /// The gateway has `limit` grants waiting or starting.
    Full { limit: usize },
    /// Unenrolled addresses have `limit` grants waiting or starting, their share of the
    /// gateway's limit (`PendingLimits::unenrolled`).
    FullUnenrolled { limit: usize },
}

/// Reservation of an origin's grant while the portal requests it from the IdP.
pub(crate) struct StartingGuard<'a> {
    portal: &'a Portal,
    key: OriginKey,
}

impl Drop for StartingGuard<'_> {
    fn drop(&mut self) {
        self.portal.lock_device_grants().starting.remove(&self.key);
    }
}

/// Key of per-device state of the portal: the enrolled device, or the address of an
/// unenrolled one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum OriginKey {
    Device(u32),
    Address(IpAddr),
}

impl From<LoginOrigin> for OriginKey {
    fn from(origin: LoginOrigin) -> Self {
        match origin.device_id {
            Some(device_id) => OriginKey::Device(device_id),
            None => OriginKey::Address(origin.address),
        }
    }
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
            device_grants: Mutex::default(),
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

    fn store(&self) -> &Arc<crate::store::Store> {
        self.pending.store()
    }

    fn idp(&self, format: Format) -> Result<Arc<IdentityProvider>, PortalError> {
        self.idp.get().cloned().ok_or_else(|| {
            PortalError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the identity provider is not reachable yet; try again in a minute".into(),
                format,
            )
        })
    }

    fn responder(&self, format: Format) -> Result<Arc<Responder>, PortalError> {
        self.responder.get().cloned().ok_or_else(|| {
            PortalError::new(
                StatusCode::NOT_FOUND,
                "this gateway runs no reauth responder".into(),
                format,
            )
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

    fn lock_device_grants(&self) -> std::sync::MutexGuard<'_, DeviceGrants> {
        self.device_grants
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn device_grant(&self, key: OriginKey) -> Option<DeviceGrant> {
        self.lock_device_grants().grants.get(&key).cloned()
    }

    /// Takes the slot of a new device authorization grant for `key`, unless `key` has one
    /// waiting or starting, or the gateway has `max_pending_logins` waiting or starting
    /// (unenrolled addresses half of that). The check and the reservation happen under one
    /// lock, so concurrent requests cannot pass the limits.
    pub(crate) fn reserve_device_grant(&self, key: OriginKey) -> DeviceGrantSlot<'_> {
        let limits = self.pending.limits();
        let mut grants = self.lock_device_grants();
        if let Some(waiting @ DeviceGrant::Waiting { .. }) = grants.grants.get(&key) {
            return DeviceGrantSlot::Waiting(waiting.clone());
        }
        if grants.starting.contains(&key) {
            return DeviceGrantSlot::Starting;
        }
        let unenrolled = |key: &OriginKey| matches!(key, OriginKey::Address(_));
        if unenrolled(&key) && grants.waiting(unenrolled) >= limits.unenrolled() {
            return DeviceGrantSlot::FullUnenrolled {
                limit: limits.unenrolled(),
            };
        }
        if grants.waiting(|_| true) >= limits.total {
            return DeviceGrantSlot::Full {
                limit: limits.total,
            };
        }
        grants.starting.insert(key);
        DeviceGrantSlot::Reserved(StartingGuard { portal: self, key })
    }

    /// Records `key`'s grant. A finished one drops the oldest finished outcome beyond
    /// `max_pending_logins`, so a user whose result was dropped finds the device's sessions on
    /// the status page instead.
    fn set_device_grant(&self, key: OriginKey, grant: DeviceGrant) {
        let max_finished = self.pending.limits().total;
        let mut grants = self.lock_device_grants();
        grants.finished.retain(|finished| *finished != key);
        if !matches!(grant, DeviceGrant::Waiting { .. }) {
            grants.finished.push_back(key);
        }
        grants.grants.insert(key, grant);
        while grants.finished.len() > max_finished {
            if let Some(oldest) = grants.finished.pop_front() {
                grants.grants.remove(&oldest);
            }
        }
    }
}

/// Builds the portal's routes; serve them with `into_make_service_with_connect_info`, so
/// handlers see the source address.
pub fn router(portal: Arc<Portal>) -> Router {
    Router::new()
        .route("/", get(status))
        .route("/login", get(login).post(login))
        .route("/callback", get(callback))
        .route("/device", get(device_flow::status).post(device_flow::start))
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
    /// Sent as `Retry-After`, in seconds.
    retry_after: Option<Duration>,
}

impl PortalError {
    fn new(status: StatusCode, message: String, format: Format) -> Self {
        Self {
            status,
            message,
            format,
            retry_after: None,
        }
    }
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        let body = render::error(self.format, &self.message);
        let mut response = (self.status, content_type(self.format), body).into_response();
        if let Some(retry_after) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(retry_after.as_secs().max(1)),
            );
        }
        response
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

/// Rejects a request that a browser sent on behalf of another site (`Sec-Fetch-Site:
/// cross-site`), such as an image, a form or a script of a page that targets the portal.
/// The portal identifies the device by its source address alone, so without this check any
/// page the user visits could start sign-ins that use up the device's limit, or snooze its
/// prompts.
///
/// NOTE: browsers without Fetch Metadata headers, and clients such as curl, send no
/// `Sec-Fetch-Site` and are not checked.
pub(crate) fn reject_cross_site(headers: &HeaderMap, format: Format) -> Result<(), PortalError> {
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if cross_site {
        // Debug only, because any page can send these as often as it likes.
        debug!("rejected a portal request that another site sent");
        return Err(PortalError::new(
            StatusCode::FORBIDDEN,
            "this request was sent by another site; open the portal and start it there".into(),
            format,
        ));
    }
    Ok(())
}

/// Returns the source address of a request as the data path matches it. A socket bound to
/// `[::]` reports an IPv4 client as IPv4-mapped (`::ffff:192.0.2.7`), but devices, the kernel
/// device map and `enroll_from` use the IPv4 address.
fn source_address(address: SocketAddr) -> IpAddr {
    address.ip().to_canonical()
}

/// Returns the enrolled device of the request's source address, or 403 for an address with
/// none. Prompts, events and snoozes need an enrolled device.
fn identify(portal: &Portal, address: SocketAddr, format: Format) -> Result<u32, PortalError> {
    let address = source_address(address);
    portal
        .gateway
        .device_for_address(address)
        .ok_or_else(|| {
            let message = match portal.gateway.check_enrollment(address) {
                Ok(()) => format!(
                    "no device is enrolled with address {address} yet; sign in at the portal to enroll it"
                ),
                Err(message) => message,
            };
            PortalError::new(StatusCode::FORBIDDEN, message, format)
        })
}

/// Returns the origin of a sign-in: the enrolled device of the source address, or the
/// address alone when the policy lets it enroll on its first sign-in. Any other address
/// gets 403 with the message of `Gateway::check_enrollment`.
fn login_origin(
    portal: &Portal,
    address: SocketAddr,
    format: Format,
) -> Result<LoginOrigin, PortalError> {
    let address = source_address(address);
    if let Some(device_id) = portal.gateway.device_for_address(address) {
        return Ok(LoginOrigin {
            device_id: Some(device_id),
            address,
        });
    }
    match portal.gateway.check_enrollment(address) {
        Ok(()) => Ok(LoginOrigin {
            device_id: None,
            address,
        }),
        Err(message) => Err(PortalError::new(StatusCode::FORBIDDEN, message, format)),
    }
}

/// Returns the status of `origin`'s device, or the page of an address that enrolls on its
/// first sign-in.
fn origin_status(portal: &Portal, origin: LoginOrigin) -> DeviceStatus {
    match origin.device_id {
        Some(device_id) => portal.gateway.device_status(device_id),
        None => DeviceStatus {
            name: format!(
                "not enrolled yet ({}); signing in enrolls this device to you",
                origin.address
            ),
            ..DeviceStatus::default()
        },
    }
}

async fn status(
    State(portal): PortalState,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let format = Format::from_headers(&headers);
    let origin = login_origin(&portal, address, format)?;
    let status = origin_status(&portal, origin);
    let grant = portal.device_grant(origin.into());
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

impl LoginQuery {
    /// Returns whether the sign-in must be multi-factor: the user asked for it, or a
    /// resource waiting for `origin` requires step-up.
    fn mfa(&self, portal: &Portal, origin: LoginOrigin) -> bool {
        let requested = self.mfa.as_deref().is_some_and(|value| value != "0");
        requested || origin_status(portal, origin).pending_requires_mfa
    }
}

async fn login(
    State(portal): PortalState,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Result<Response, PortalError> {
    let format = Format::from_headers(&headers);
    reject_cross_site(&headers, format)?;
    let origin = login_origin(&portal, address, format)?;
    let mfa = query.mfa(&portal, origin);
    let request = portal
        .idp(format)?
        .begin_login(&portal.pending, origin, LoginOptions { mfa })
        .map_err(|err| login_failed(origin, err, format))?;
    Ok(Redirect::to(request.url.as_str()).into_response())
}

/// Maps a failure to start a sign-in to 429 with `Retry-After` when `origin` or the gateway
/// has too many in progress, or else to 503.
fn login_failed(origin: LoginOrigin, err: IdpError, format: Format) -> PortalError {
    if let IdpError::TooManyPendingLogins { retry_after, .. }
    | IdpError::TooManyUnenrolledLogins { retry_after, .. } = &err
    {
        warn!(%origin, error = %err, "rejected a sign-in over the limit of sign-ins in progress");
        let mut rejected = PortalError::new(StatusCode::TOO_MANY_REQUESTS, err.to_string(), format);
        rejected.retry_after = Some(*retry_after);
        return rejected;
    }
    warn!(%origin, error = %err, "failed to start a sign-in");
    PortalError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string(), format)
}

async fn callback(
    State(portal): PortalState,
    ConnectInfo(address): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<CallbackParams>,
) -> Result<Response, PortalError> {
    let format = Format::from_headers(&headers);
    let origin = login_origin(&portal, address, format)?;
    // The benchmark times a sign-in from this line to the first passing packet.
    debug!(device_id = origin.device_id, address = %origin.address, "sign-in callback received");
    let authentication = portal
        .idp(format)?
        .complete_login(&portal.pending, origin, &params)
        .await
        .map_err(|err| sign_in_failed(origin, err, format))?;
    let granted = grant(&portal, origin, &authentication, format)?;
    Ok(respond(
        format,
        render::granted(format, &authentication, &granted, SystemTime::now()),
    ))
}

fn sign_in_failed(origin: LoginOrigin, err: IdpError, format: Format) -> PortalError {
    warn!(%origin, error = %err, "sign-in rejected");
    let status = match err {
        IdpError::Unreachable { .. } | IdpError::InvalidDocument { .. } => StatusCode::BAD_GATEWAY,
        IdpError::Store(_) | IdpError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::FORBIDDEN,
    };
    PortalError::new(status, err.to_string(), format)
}

fn grant(
    portal: &Portal,
    origin: LoginOrigin,
    authentication: &Authentication,
    format: Format,
) -> Result<Granted, PortalError> {
    match portal.gateway.grant(origin, authentication) {
        Ok(granted) => {
            info!(
                %origin,
                issuer = %authentication.issuer,
                subject = %authentication.subject,
                sessions = granted.sessions.len(),
                enrolled_device = granted.enrolled_device.as_deref(),
                multi_factor = authentication.multi_factor,
                "sign-in granted sessions"
            );
            Ok(granted)
        }
        Err(rejected) => {
            warn!(%origin, subject = %authentication.subject, reason = %rejected, "sign-in verified but no session granted");
            Err(PortalError::new(
                StatusCode::FORBIDDEN,
                rejected.reason,
                format,
            ))
        }
    }
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
    reject_cross_site(&headers, format)?;
    let device_id = identify(&portal, address, format)?;
    let responder = portal.responder(format)?;
    let until = responder.snooze(
        device_id,
        Duration::from_secs(query.minutes.saturating_mul(60)),
        std::time::Instant::now(),
    );
    Ok(respond(format, render::snoozed(format, until)))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::idp::PendingLimits;

    struct NoDevices;

    impl Gateway for NoDevices {
        fn device_for_address(&self, _address: IpAddr) -> Option<u32> {
            None
        }

        fn device_status(&self, device_id: u32) -> DeviceStatus {
            DeviceStatus {
                device_id,
                ..DeviceStatus::default()
            }
        }

        fn grant(
            &self,
            _origin: LoginOrigin,
            _authentication: &Authentication,
        ) -> Result<Granted, GrantRejected> {
            Err(GrantRejected {
                reason: "no devices".into(),
            })
        }
    }

    fn portal(total: usize) -> (Arc<Portal>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("create a scratch folder");
        let store = crate::store::Store::open(&dir.path().join("store.redb")).expect("store");
        let limits = PendingLimits {
            per_device: 1,
            total,
        };
        let pending = PendingLogins::with_limits(Arc::new(store), limits);
        (Portal::without_idp(pending, Arc::new(NoDevices)), dir)
    }

    fn address_key(index: u32) -> OriginKey {
        OriginKey::Address(IpAddr::V4(Ipv4Addr::from(0xc000_0200 + index)))
    }

    #[test]
    fn unenrolled_device_grants_take_half() {
        let (portal, _dir) = portal(4);
        let first = portal.reserve_device_grant(address_key(1));
        let second = portal.reserve_device_grant(address_key(2));
        assert!(matches!(first, DeviceGrantSlot::Reserved(_)));
        assert!(matches!(second, DeviceGrantSlot::Reserved(_)));
        let over = portal.reserve_device_grant(address_key(3));
        assert!(matches!(over, DeviceGrantSlot::FullUnenrolled { limit: 2 }));

        let device = portal.reserve_device_grant(OriginKey::Device(7));
        assert!(
            matches!(device, DeviceGrantSlot::Reserved(_)),
            "enrolled devices keep their share"
        );
        drop(first);
        let after = portal.reserve_device_grant(address_key(3));
        assert!(
            matches!(after, DeviceGrantSlot::Reserved(_)),
            "a dropped reservation frees its slot"
        );
    }

    #[test]
    fn finished_device_grants_stay_bounded() {
        let (portal, _dir) = portal(5);
        let waiting = DeviceGrant::Waiting {
            verification_uri: "http://idp/device".into(),
            verification_uri_complete: None,
            user_code: "ABCD-EFGH".into(),
            expires_at: SystemTime::now() + Duration::from_secs(600),
        };
        portal.set_device_grant(address_key(0), waiting);
        for index in 1..=50 {
            portal.set_device_grant(address_key(index), DeviceGrant::Failed("denied".into()));
        }

        let grants = portal.lock_device_grants();
        assert_eq!(
            grants.grants.len(),
            6,
            "the waiting grant and the 5 newest finished ones"
        );
        assert!(matches!(
            grants.grants.get(&address_key(0)),
            Some(DeviceGrant::Waiting { .. })
        ));
        assert!(grants.grants.contains_key(&address_key(50)));
        assert!(!grants.grants.contains_key(&address_key(45)));
    }
}
