//! Errors of the identity provider client. Each rejection of a sign-in has its own variant,
//! so callers, logs and tests can tell exactly which check failed.

use std::{net::IpAddr, time::Duration};

use thiserror::Error;

use super::pending::LoginOrigin;

/// An IdP configuration, discovery, sign-in or token validation failure.
#[derive(Debug, Error)]
pub enum IdpError {
    #[error("invalid IdP configuration: {0}")]
    Config(String),

    #[error(
        "failed to read the client secret from {path}: {reason}; create the file or set `client_secret_env`"
    )]
    SecretFile {
        path: String,
        reason: std::io::Error,
    },

    #[error(
        "the client secret file {path} has mode {mode:o}, so other users can read or change it; run `chmod 600 {path}` and rotate the secret at the identity provider"
    )]
    SecretFileMode { path: String, mode: u32 },

    #[error(
        "the client secret environment variable {name} is not set or empty; export it before starting the daemon"
    )]
    SecretEnv { name: String },

    #[error("failed to fetch {url}: {reason}; check that the IdP is reachable from the gateway")]
    Unreachable { url: String, reason: String },

    #[error(
        "the IdP answered {url} with HTTP status {status}, so it serves no discovery document for issuer {issuer}; check `issuer` in [idp], which must be exactly the issuer the IdP publishes, path included"
    )]
    NoDiscovery {
        url: String,
        status: u16,
        issuer: String,
    },

    #[error("invalid document at {url}: {reason}")]
    InvalidDocument { url: String, reason: String },

    #[error(
        "the IdP's discovery document names issuer {discovered:?} but {configured:?} is configured; they must match exactly, so set `issuer` to {discovered:?} if that IdP is the right one"
    )]
    IssuerMismatch {
        configured: String,
        discovered: String,
    },

    #[error(
        "the IdP supports none of the accepted algorithms {accepted:?} (it offers {offered:?}); add one it offers to `algorithms`"
    )]
    NoCommonAlgorithm {
        accepted: Vec<String>,
        offered: Vec<String>,
    },

    #[error(
        "the IdP publishes no device authorization endpoint, so devices without a browser cannot sign in"
    )]
    DeviceFlowUnsupported,

    #[error("unknown or already used sign-in state; start the sign-in again from the portal")]
    UnknownState,

    #[error("the sign-in expired {expired_for:?} ago; start it again from the portal")]
    ExpiredState { expired_for: Duration },

    #[error(
        "the sign-in callback came from {actual} but {} started it; finish the sign-in on the device that started it",
        started_by(*expected, *expected_address)
    )]
    DeviceMismatch {
        expected: Option<u32>,
        expected_address: Option<IpAddr>,
        actual: LoginOrigin,
    },

    #[error(
        "{} already has {limit} sign-ins in progress; finish one of them or try again in {} s",
        origin.map_or_else(|| "the gateway".to_owned(), |origin| origin.to_string()),
        retry_after.as_secs()
    )]
    TooManyPendingLogins {
        /// The origin over its own limit, or `None` when the gateway is over its total.
        origin: Option<LoginOrigin>,
        limit: usize,
        /// Time until the first of those sign-ins expires.
        retry_after: Duration,
    },

    #[error(
        "unenrolled addresses already have {limit} sign-ins in progress, half of `max_pending_logins`; try again in {} s",
        retry_after.as_secs()
    )]
    TooManyUnenrolledLogins {
        limit: usize,
        /// Time until the first of those sign-ins expires.
        retry_after: Duration,
    },

    #[error("the callback names issuer {found:?} but {expected:?} is configured")]
    CallbackIssuerMismatch { expected: String, found: String },

    #[error("the IdP returned an error to the callback: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    AuthorizationDenied {
        error: String,
        description: Option<String>,
    },

    #[error("the callback has no authorization code")]
    MissingCode,

    #[error("the IdP rejected the token request: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    TokenRejected {
        error: String,
        description: Option<String>,
    },

    #[error("the token response has no ID token; include the `openid` scope")]
    MissingIdToken,

    #[error(
        "ID token rejected: algorithm {alg:?} is not accepted; only asymmetric algorithms {accepted:?} are"
    )]
    DisallowedAlgorithm { alg: String, accepted: Vec<String> },

    #[error("ID token rejected: invalid signature: {0}")]
    InvalidSignature(String),

    #[error(
        "ID token rejected: signing key {kid:?} is not in the IdP's key set, and the keys were refetched {refetched_ago:?} ago (at most one refetch every {min_interval:?})"
    )]
    UnknownSigningKey {
        kid: String,
        refetched_ago: Duration,
        min_interval: Duration,
    },

    #[error("ID token rejected: wrong issuer: {0}")]
    WrongIssuer(String),

    #[error("ID token rejected: wrong audience: {0}")]
    WrongAudience(String),

    #[error("ID token rejected: expired or not yet valid: {0}")]
    Expired(String),

    #[error("ID token rejected: nonce: {0}")]
    Nonce(String),

    #[error(
        "ID token rejected: {0}; the IdP did not perform a fresh sign-in, so its SSO session cannot renew access"
    )]
    StaleAuthentication(String),

    #[error("ID token rejected: {0}")]
    InvalidToken(String),

    #[error(
        "the resource requires multi-factor authentication but the sign-in used amr {amr:?} and acr {acr:?}; sign in again with a second factor"
    )]
    MfaRequired {
        amr: Vec<String>,
        acr: Option<String>,
    },

    #[error("the device authorization expired before the user approved it; start again")]
    DeviceCodeExpired,

    #[error("the user denied the device authorization")]
    DeviceAccessDenied,

    #[error("store error for pending sign-ins: {0}")]
    Store(String),
}

fn started_by(device_id: Option<u32>, address: Option<IpAddr>) -> String {
    match (device_id, address) {
        (Some(device_id), _) => format!("device {device_id}"),
        (None, Some(address)) => format!("unenrolled address {address}"),
        (None, None) => "an unenrolled address".to_owned(),
    }
}

impl IdpError {
    pub(crate) fn store(err: impl std::fmt::Display) -> Self {
        IdpError::Store(err.to_string())
    }
}
