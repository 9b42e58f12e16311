//! OpenID Connect sign-in: the IdP configuration, discovery, the authorization code flow
//! with PKCE and forced re-authentication, the device authorization grant, ID token
//! validation, and the pending sign-ins kept in the store.

mod client;
mod config;
mod error;
pub mod pending;
mod verify;

use std::time::SystemTime;

pub use client::{
    AuthorizationRequest, CallbackParams, CheckReport, DeviceAuthorization, IdentityProvider,
    LoginOptions,
};
pub use config::IdpConfig;
pub use error::IdpError;
pub use pending::{LoginOrigin, PendingLimits, PendingLogins};
pub use verify::is_multi_factor;

/// A verified authentication of a user by the IdP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authentication {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// When the user authenticated at the IdP (`auth_time`).
    pub auth_time: SystemTime,
    pub amr: Vec<String>,
    pub acr: Option<String>,
    /// The authentication used a second factor, by `amr` or `acr`.
    pub multi_factor: bool,
}
