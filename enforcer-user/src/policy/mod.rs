//! The policy file (TOML): protected resources, who may reach them and for how long, and
//! pre-enrolled devices. Parsing checks every value and reports its line, the value and what
//! would be valid, so an invalid file never replaces a running policy.

mod compile;
mod parse;
mod warnings;

use std::{net::IpAddr, path::Path, time::Duration};

use ipnet::IpNet;

pub use compile::{CompiledPrefix, compile_prefixes};
pub use parse::{check_device_name, parse, parse_mac};

/// Maximum session duration a resource may set.
pub const MAX_SESSION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Default `amr` values (RFC 8176) that satisfy a resource with `step_up = true`.
pub const DEFAULT_MFA_AMR: &[&str] = &["mfa", "hwk", "otp", "swk", "sms", "fpt", "face"];

/// An error in the policy file, with the 1-based line it refers to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Errors from loading the policy file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("failed to read policy file {path}: {source}; check the `policy` path in the config")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid policy ({} error(s)):\n{}", .0.len(), join_errors(.0))]
    Invalid(Vec<PolicyError>),
}

fn join_errors(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(|error| format!("  {error}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Action on a packet whose session is missing or expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpiryAction {
    Reject,
    Drop,
}

impl ExpiryAction {
    pub fn to_kernel(self) -> common::Action {
        match self {
            ExpiryAction::Reject => common::Action::Reject,
            ExpiryAction::Drop => common::Action::Drop,
        }
    }
}

/// IP protocol matched by a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Protocol {
    Any,
    Number(u8),
}

impl Protocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;

    /// Returns whether packets of this protocol carry ports a rule can match.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Number(Self::TCP | Self::UDP | Self::SCTP))
    }

    pub fn number(self) -> u8 {
        match self {
            Protocol::Any => common::PROTOCOL_ANY,
            Protocol::Number(number) => number,
        }
    }

    pub fn name(self) -> String {
        match self {
            Protocol::Any => "any".to_owned(),
            Protocol::Number(6) => "tcp".to_owned(),
            Protocol::Number(17) => "udp".to_owned(),
            Protocol::Number(132) => "sctp".to_owned(),
            Protocol::Number(1) => "icmp".to_owned(),
            Protocol::Number(58) => "icmpv6".to_owned(),
            Protocol::Number(number) => number.to_string(),
        }
    }
}

/// One destination of a resource: a prefix, a protocol and an inclusive port range.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Destination {
    pub prefix: IpNet,
    pub protocol: Protocol,
    /// `None` matches every port, and also packets without ports.
    pub ports: Option<(u16, u16)>,
    /// Line in the policy file, for errors found when compiling.
    #[serde(skip)]
    pub line: usize,
}

impl Destination {
    /// Returns whether a packet to `address`, `protocol` and `port` matches this destination.
    pub fn matches(&self, address: IpAddr, protocol: u8, port: Option<u16>) -> bool {
        if !self.prefix.contains(&address) {
            return false;
        }
        if let Protocol::Number(number) = self.protocol
            && number != protocol
        {
            return false;
        }
        match (self.ports, port) {
            (None, _) => true,
            (Some((lo, hi)), Some(port)) => lo <= port && port <= hi,
            (Some(_), None) => false,
        }
    }
}

/// A protected resource.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Resource {
    pub name: String,
    pub destinations: Vec<Destination>,
    #[serde(with = "duration_secs")]
    pub session: Duration,
    /// Users (email or subject) allowed. With `groups` also empty, no user is allowed.
    pub users: Vec<String>,
    /// IdP groups allowed.
    pub groups: Vec<String>,
    /// The authentication must include a multi-factor method (`Policy::mfa_amr`).
    pub step_up: bool,
    pub on_expiry: ExpiryAction,
    /// Packets without a live session pass but are counted and punted.
    pub monitor: bool,
}

/// Identity of the user behind an authentication, as the policy matches it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal<'a> {
    pub subject: &'a str,
    pub email: Option<&'a str>,
    pub groups: &'a [String],
}

impl Resource {
    /// Returns whether the policy lets `principal` reach this resource at all.
    pub fn allows(&self, principal: &Principal<'_>) -> bool {
        let named = self.users.iter().any(|user| {
            user == principal.subject || principal.email.is_some_and(|email| email == user)
        });
        named
            || self
                .groups
                .iter()
                .any(|group| principal.groups.contains(group))
    }
}

/// A device listed in the policy, enrolled at start and on reload.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PolicyDevice {
    pub name: String,
    /// User (email or subject) who may sign in on this device; `None` lets anyone.
    pub owner: Option<String>,
    pub addresses: Vec<IpAddr>,
    pub mac: Option<[u8; 6]>,
}

/// A parsed, validated policy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    pub resources: Vec<Resource>,
    pub devices: Vec<PolicyDevice>,
    /// `amr` values that count as multi-factor for `step_up` resources.
    pub mfa_amr: Vec<String>,
    /// `acr` values that count as multi-factor for `step_up` resources.
    pub mfa_acr: Vec<String>,
    /// Minimum time between two punts for the same (device, resource) pair.
    #[serde(with = "duration_secs")]
    pub punt_interval: Duration,
    /// Enrollment of unknown source addresses by their first sign-in.
    pub enrollment: EnrollmentSettings,
}

/// `enroll_on_first_sign_in`, `enroll_from` and `enroll_max_devices_per_user` of
/// `[settings]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EnrollmentSettings {
    /// A sign-in from an address with no enrolled device enrolls a device owned by the
    /// signed-in user.
    pub on_first_sign_in: bool,
    /// Source prefixes allowed to enroll that way; empty allows every address.
    pub from: Vec<IpNet>,
    /// Maximum devices that one user may enroll that way (`enroll_max_devices_per_user`).
    pub max_devices_per_user: usize,
}

impl Default for EnrollmentSettings {
    fn default() -> Self {
        Self {
            on_first_sign_in: false,
            from: Vec::new(),
            max_devices_per_user: DEFAULT_MAX_DEVICES_PER_USER,
        }
    }
}

/// Default of `enroll_max_devices_per_user`. Without a limit, one user with many source
/// addresses (an IPv6 prefix has plenty) could fill the kernel device map, 65536 entries per
/// address family, and the session map, and so lock every other device out.
pub const DEFAULT_MAX_DEVICES_PER_USER: usize = 10;

impl Policy {
    /// Reads and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyLoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyLoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        parse(&path.display().to_string(), &text).map_err(PolicyLoadError::Invalid)
    }

    /// Checks that a sign-in from `address`, which no enrolled device has, may enroll one.
    /// The error gives the reason and what an administrator can change.
    pub fn check_enrollment(&self, address: IpAddr) -> Result<(), String> {
        let settings = &self.enrollment;
        if !settings.on_first_sign_in {
            return Err(format!(
                "no device is enrolled with address {address}; ask an administrator to enroll it (`enforcer device enroll`), or to set `enroll_on_first_sign_in = true` in the policy's [settings]"
            ));
        }
        if !settings.from.is_empty() && !settings.from.iter().any(|net| net.contains(&address)) {
            let allowed: Vec<String> = settings.from.iter().map(ToString::to_string).collect();
            return Err(format!(
                "no device is enrolled with address {address}, and it is outside `enroll_from` ({}), so it cannot enroll on its first sign-in; ask an administrator to enroll it or to add its prefix to `enroll_from`",
                allowed.join(", ")
            ));
        }
        Ok(())
    }

    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|resource| resource.name == name)
    }

    /// Returns whether an authentication with these `amr` and `acr` values satisfies step-up
    /// MFA.
    pub fn is_multi_factor(&self, amr: &[String], acr: Option<&str>) -> bool {
        amr.iter().any(|method| self.mfa_amr.contains(method))
            || acr.is_some_and(|acr| self.mfa_acr.iter().any(|value| value == acr))
    }
}

mod duration_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(value.as_secs())
    }
}
