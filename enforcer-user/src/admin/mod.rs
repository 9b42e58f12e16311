//! The admin API: newline-delimited JSON requests and responses on a Unix socket that only
//! root and members of the configured admin group may use (checked with peer credentials).
//! The CLI is its only client and never opens the store itself.

pub mod client;
mod handlers;
pub mod server;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A device named on the command line: its id or its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeviceRef {
    Id(u32),
    Name(String),
}

impl std::fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceRef::Id(id) => write!(f, "{id}"),
            DeviceRef::Name(name) => write!(f, "{name:?}"),
        }
    }
}

impl std::str::FromStr for DeviceRef {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text.parse::<u32>() {
            Ok(id) => DeviceRef::Id(id),
            Err(_) => DeviceRef::Name(text.to_owned()),
        })
    }
}

/// One (device, resource) pair of a batch grant request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantPair {
    pub device: DeviceRef,
    pub resource: String,
}

/// Sessions to revoke, with devices given by id or name; the daemon resolves the device and
/// passes an `engine::RevokeSelector` to the engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum RevokeRequest {
    Device { device: DeviceRef },
    User { issuer: String, subject: String },
    Resource { resource: String },
    Session { device: DeviceRef, resource: String },
}

/// One request to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum Request {
    Status,
    DeviceEnroll {
        name: String,
        owner: Option<String>,
        addresses: Vec<IpAddr>,
        mac: Option<String>,
    },
    DeviceList,
    DeviceShow {
        device: DeviceRef,
    },
    DeviceRemove {
        device: DeviceRef,
    },
    SessionList {
        device: Option<DeviceRef>,
    },
    SessionGrant {
        device: DeviceRef,
        resource: String,
        duration_secs: u64,
    },
    /// Grants every pair of `grants` for `duration_secs`, all or nothing, with one store
    /// commit; at most `engine::MAX_GRANT_BATCH` pairs.
    SessionGrantBatch {
        grants: Vec<GrantPair>,
        duration_secs: u64,
    },
    SessionRevoke {
        selector: RevokeRequest,
    },
    ResourceList,
    Explain {
        source: IpAddr,
        destination: IpAddr,
        /// IP protocol number.
        protocol: u8,
        port: Option<u16>,
    },
    Stats,
    Audit {
        limit: usize,
    },
    Reload,
}

/// Error categories, mapped to CLI exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or a value was invalid.
    Invalid,
    NotFound,
    /// The caller or the policy does not permit the operation.
    Denied,
    /// A conflict with existing state, such as a taken name or address.
    Conflict,
    /// The daemon failed (store, kernel map).
    Internal,
}

impl ErrorCode {
    /// Exit code of the CLI for this error.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorCode::Invalid => 2,
            ErrorCode::NotFound => 3,
            ErrorCode::Denied => 4,
            ErrorCode::Conflict => 5,
            ErrorCode::Internal => 1,
        }
    }
}

/// The daemon's response to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Response {
    Ok { result: serde_json::Value },
    Error { code: ErrorCode, message: String },
}

/// Exit code of the CLI when the daemon could not be reached.
pub const EXIT_UNREACHABLE: u8 = 6;
