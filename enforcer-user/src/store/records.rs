//! Records kept in the store, serialized as JSON values so fields can be added without a
//! schema migration (new fields need `#[serde(default)]`).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::clock::Instant;

/// A user, keyed by the identity provider's (issuer, subject) pair.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserKey {
    pub issuer: String,
    pub subject: String,
}

/// A user as the store records it, refreshed at every sign-in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub key: UserKey,
    pub email: Option<String>,
    pub name: Option<String>,
    /// IdP groups from the last sign-in, matched against the policy's `groups`.
    #[serde(default)]
    pub groups: Vec<String>,
    pub first_seen_unix_ms: u64,
    pub last_seen_unix_ms: u64,
}

/// Origin of a device's enrollment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnrollmentSource {
    /// Listed in the policy file; removed from the policy, it is removed from the store.
    Policy,
    /// Enrolled through the admin API.
    Admin,
    /// Enrolled by the first sign-in of its owner from its address, when the policy's
    /// `enroll_on_first_sign_in` allows it.
    #[serde(rename = "sign_in")]
    SignIn,
}

/// An enrolled device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: u32,
    pub name: String,
    /// User (email or subject) who may sign in on it; `None` lets any user.
    pub owner: Option<String>,
    pub addresses: Vec<IpAddr>,
    /// Source MAC address the device must use, on Ethernet interfaces.
    pub mac: Option<[u8; 6]>,
    pub source: EnrollmentSource,
    pub enrolled_unix_ms: u64,
}

/// A device's last successful authentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRecord {
    pub user: UserKey,
    /// When the user authenticated (the ID token's `auth_time` when present).
    pub at: Instant,
    /// Authentication methods (RFC 8176 `amr`).
    #[serde(default)]
    pub amr: Vec<String>,
    /// Authentication context class (`acr`).
    pub acr: Option<String>,
}

/// Origin of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum GrantSource {
    /// Derived from the device's authentication at `SessionRecord::start`.
    SignIn,
    /// Granted through the admin API for a fixed duration.
    Admin { actor: String, duration_secs: u64 },
}

/// A committed (device, resource) session. Its expiry is computed from `start` and the
/// resource's current session duration (or the admin grant's own duration), so a policy
/// reload that changes a duration moves every session of that resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub device_id: u32,
    pub resource_id: u32,
    pub start: Instant,
    pub source: GrantSource,
    /// User whose sign-in created the session; a policy reload checks it again.
    pub user: Option<UserKey>,
    /// `amr` of that sign-in, checked again against step-up on reload.
    #[serde(default)]
    pub amr: Vec<String>,
    pub acr: Option<String>,
}

/// Kind of an audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    SignIn,
    /// A sign-in that opened nothing: unknown device, another owner's device, or a user whom
    /// no resource allows.
    SignInRejected,
    Grant,
    Revocation,
    Enrollment,
    Removal,
    PolicyChange,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::SignIn => "sign_in",
            AuditKind::SignInRejected => "sign_in_rejected",
            AuditKind::Grant => "grant",
            AuditKind::Revocation => "revocation",
            AuditKind::Enrollment => "enrollment",
            AuditKind::Removal => "removal",
            AuditKind::PolicyChange => "policy_change",
        }
    }
}

/// One entry of the append-only audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, from 1.
    pub seq: u64,
    pub at_unix_ms: u64,
    pub kind: AuditKind,
    /// Actor: `admin:uid=<uid>`, `user:<issuer>#<subject>`, `policy` or `signal:SIGHUP`.
    pub actor: String,
    pub device_id: Option<u32>,
    pub resource_id: Option<u32>,
    /// Human-readable detail; never a token or secret.
    pub detail: String,
}

/// An audit entry before the store gives it its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub kind: AuditKind,
    pub actor: String,
    pub device_id: Option<u32>,
    pub resource_id: Option<u32>,
    pub detail: String,
}
