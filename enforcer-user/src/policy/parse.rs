//! Turns policy text into a `Policy`, collecting every error with its line.

use std::{collections::HashSet, net::IpAddr, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{
    DEFAULT_MAX_DEVICES_PER_USER, DEFAULT_MFA_AMR, Destination, EnrollmentSettings, ExpiryAction,
    MAX_SESSION, Policy, PolicyDevice, PolicyError, Protocol, Resource,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    settings: RawSettings,
    #[serde(default, rename = "resource")]
    resources: Vec<RawResource>,
    #[serde(default, rename = "device")]
    devices: Vec<RawDevice>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    mfa_amr: Option<Vec<String>>,
    #[serde(default)]
    mfa_acr: Vec<String>,
    punt_interval: Option<Spanned<String>>,
    #[serde(default)]
    enroll_on_first_sign_in: bool,
    #[serde(default)]
    enroll_from: Vec<Spanned<String>>,
    enroll_max_devices_per_user: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    name: Spanned<String>,
    destinations: Spanned<Vec<RawDestination>>,
    session: Spanned<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    step_up: bool,
    on_expiry: Option<Spanned<String>>,
    #[serde(default)]
    monitor: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    prefix: Spanned<String>,
    protocol: Option<Spanned<toml::Value>>,
    ports: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: Spanned<String>,
    owner: Option<String>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    mac: Option<Spanned<String>>,
}

/// Collects errors with the line each refers to.
struct Errors<'a> {
    file: &'a str,
    /// Byte offset at which each line after the first starts, so that a line lookup is a
    /// binary search rather than a count over the text before it.
    line_starts: Vec<usize>,
    list: Vec<PolicyError>,
}

impl Errors<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|start| *start <= offset) + 1
    }

    fn push<T>(&mut self, at: &Spanned<T>, message: String) {
        let line = self.line_of(at.span().start);
        self.list.push(PolicyError {
            file: self.file.to_owned(),
            line,
            message,
        });
    }
}

/// Parses and validates policy text. `file` names the source in error messages.
pub fn parse(file: &str, text: &str) -> Result<Policy, Vec<PolicyError>> {
    let mut errors = Errors {
        file,
        line_starts: text.match_indices('\n').map(|(at, _)| at + 1).collect(),
        list: Vec::new(),
    };
    let raw: RawPolicy = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(err) => {
            let line = err.span().map_or(1, |span| errors.line_of(span.start));
            return Err(vec![PolicyError {
                file: file.to_owned(),
                line,
                message: err.message().to_owned(),
            }]);
        }
    };

    let punt_interval = match &raw.settings.punt_interval {
        Some(value) => parse_duration(&mut errors, value, "punt_interval").unwrap_or_default(),
        None => Duration::from_secs(1),
    };
    let mut names = HashSet::new();
    let resources = raw
        .resources
        .iter()
        .filter_map(|resource| {
            if !names.insert(resource.name.get_ref().clone()) {
                errors.push(
                    &resource.name,
                    format!(
                        "resource name {:?} is used twice; give each resource a unique name",
                        resource.name.get_ref()
                    ),
                );
            }
            parse_resource(&mut errors, resource)
        })
        .collect();
    let devices = parse_devices(&mut errors, &raw.devices);
    let enrollment = parse_enrollment(&mut errors, &raw.settings);
    if raw.resources.is_empty() {
        // A policy without resources protects nothing, and loading it would also drop every
        // session. An empty file is most often a write that has not finished.
        errors.list.push(PolicyError {
            file: file.to_owned(),
            line: 1,
            message: if has_no_content(text) {
                "the policy file is empty, or holds only comments; write at least one [[resource]], or restore the file from its last good copy".to_owned()
            } else {
                "the policy defines no [[resource]], so it would protect nothing and drop every session; add at least one [[resource]]".to_owned()
            },
        });
    }

    if !errors.list.is_empty() {
        return Err(errors.list);
    }
    let mfa_amr = raw.settings.mfa_amr.unwrap_or_else(|| {
        DEFAULT_MFA_AMR
            .iter()
            .map(|value| value.to_string())
            .collect()
    });
    Ok(Policy {
        resources,
        devices,
        mfa_amr,
        mfa_acr: raw.settings.mfa_acr,
        punt_interval,
        enrollment,
    })
}

fn parse_enrollment(errors: &mut Errors<'_>, raw: &RawSettings) -> EnrollmentSettings {
    let mut from = Vec::new();
    for text in &raw.enroll_from {
        match text.get_ref().parse::<IpNet>() {
            Ok(net) => from.push(net.trunc()),
            Err(_) => errors.push(
                text,
                format!(
                    "enroll_from prefix {:?} is invalid: use a CIDR prefix such as 192.0.2.0/24 or 2001:db8::/32",
                    text.get_ref()
                ),
            ),
        }
    }
    if !raw.enroll_on_first_sign_in
        && let Some(first) = raw.enroll_from.first()
    {
        errors.push(
            first,
            "enroll_from is set but enroll_on_first_sign_in is not; set enroll_on_first_sign_in = true or remove enroll_from".to_owned(),
        );
    }
    let mut max_devices_per_user = DEFAULT_MAX_DEVICES_PER_USER;
    if let Some(limit) = &raw.enroll_max_devices_per_user {
        match usize::try_from(*limit.get_ref()) {
            Ok(value) if value >= 1 => max_devices_per_user = value,
            _ => errors.push(
                limit,
                format!(
                    "enroll_max_devices_per_user = {} is invalid: use a whole number of at least 1",
                    limit.get_ref()
                ),
            ),
        }
        if !raw.enroll_on_first_sign_in {
            errors.push(
                limit,
                "enroll_max_devices_per_user is set but enroll_on_first_sign_in is not; set enroll_on_first_sign_in = true or remove enroll_max_devices_per_user".to_owned(),
            );
        }
    }
    EnrollmentSettings {
        on_first_sign_in: raw.enroll_on_first_sign_in,
        from,
        max_devices_per_user,
    }
}

fn parse_resource(errors: &mut Errors<'_>, raw: &RawResource) -> Option<Resource> {
    let before = errors.list.len();
    let name = raw.name.get_ref();
    if !is_valid_name(name) {
        errors.push(
            &raw.name,
            format!(
                "resource name {name:?} is invalid: use 1 to 64 letters, digits, '-', '_' or '.'"
            ),
        );
    }
    let session = parse_duration(errors, &raw.session, "session");
    if let Some(session) = session
        && (session.is_zero() || session > MAX_SESSION)
    {
        errors.push(
            &raw.session,
            format!(
                "session {:?} is out of range: use a duration from 1s to 366d",
                raw.session.get_ref()
            ),
        );
    }
    if raw.destinations.get_ref().is_empty() {
        errors.push(
            &raw.destinations,
            format!("resource {name:?} has no destinations; add at least one prefix"),
        );
    }
    let destinations: Vec<Destination> = raw
        .destinations
        .get_ref()
        .iter()
        .filter_map(|destination| parse_destination(errors, destination))
        .collect();
    let on_expiry = match raw.on_expiry.as_ref() {
        None => ExpiryAction::Reject,
        Some(value) => match value.get_ref().as_str() {
            "reject" => ExpiryAction::Reject,
            "drop" => ExpiryAction::Drop,
            other => {
                errors.push(
                    value,
                    format!("on_expiry {other:?} is invalid: use \"reject\" or \"drop\""),
                );
                ExpiryAction::Reject
            }
        },
    };
    if errors.list.len() > before {
        return None;
    }
    Some(Resource {
        name: name.clone(),
        destinations,
        session: session?,
        users: raw.users.clone(),
        groups: raw.groups.clone(),
        step_up: raw.step_up,
        on_expiry,
        monitor: raw.monitor,
    })
}

fn parse_destination(errors: &mut Errors<'_>, raw: &RawDestination) -> Option<Destination> {
    let line = errors.line_of(raw.prefix.span().start);
    let prefix = parse_prefix(errors, &raw.prefix)?;
    let protocol = match &raw.protocol {
        None => Protocol::Any,
        Some(value) => parse_protocol(errors, value)?,
    };
    let ports = match &raw.ports {
        None => None,
        Some(value) => {
            if !protocol.has_ports() {
                errors.push(
                    value,
                    format!(
                        "ports are set but protocol {} has no ports: use protocol \"tcp\", \"udp\" or \"sctp\", or remove ports",
                        protocol.name()
                    ),
                );
                return None;
            }
            Some(parse_ports(errors, value)?)
        }
    };
    Some(Destination {
        prefix,
        protocol,
        ports,
        line,
    })
}

fn parse_prefix(errors: &mut Errors<'_>, raw: &Spanned<String>) -> Option<IpNet> {
    let text = raw.get_ref();
    let prefix: IpNet = match text.parse::<IpNet>() {
        Ok(prefix) => prefix,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(address) => IpNet::from(address),
            Err(_) => {
                errors.push(
                    raw,
                    format!(
                        "prefix {text:?} is invalid: use an address or CIDR prefix such as \"198.51.100.0/24\" or \"2001:db8::/32\""
                    ),
                );
                return None;
            }
        },
    };
    if prefix.trunc() != prefix {
        errors.push(
            raw,
            format!(
                "prefix {text:?} has host bits set: use {} for the network",
                prefix.trunc()
            ),
        );
        return None;
    }
    Some(prefix)
}

fn parse_protocol(errors: &mut Errors<'_>, raw: &Spanned<toml::Value>) -> Option<Protocol> {
    let protocol = match raw.get_ref() {
        toml::Value::String(name) => match name.as_str() {
            "any" => Some(Protocol::Any),
            "tcp" => Some(Protocol::Number(Protocol::TCP)),
            "udp" => Some(Protocol::Number(Protocol::UDP)),
            "sctp" => Some(Protocol::Number(Protocol::SCTP)),
            "icmp" => Some(Protocol::Number(1)),
            "icmpv6" => Some(Protocol::Number(58)),
            _ => None,
        },
        toml::Value::Integer(number) => u8::try_from(*number)
            .ok()
            .filter(|number| *number != 0)
            .map(Protocol::Number),
        _ => None,
    };
    if protocol.is_none() {
        errors.push(
            raw,
            format!(
                "protocol {} is invalid: use \"tcp\", \"udp\", \"sctp\", \"icmp\", \"icmpv6\", \"any\" or an IP protocol number from 1 to 255",
                raw.get_ref()
            ),
        );
    }
    protocol
}

fn parse_ports(errors: &mut Errors<'_>, raw: &Spanned<toml::Value>) -> Option<(u16, u16)> {
    let range = match raw.get_ref() {
        toml::Value::Integer(port) => u16::try_from(*port).ok().map(|port| (port, port)),
        toml::Value::String(text) => match text.split_once('-') {
            Some((lo, hi)) => lo.trim().parse().ok().zip(hi.trim().parse().ok()),
            None => text.trim().parse().ok().map(|port| (port, port)),
        },
        _ => None,
    };
    match range {
        Some((lo, hi)) if lo <= hi => Some((lo, hi)),
        _ => {
            errors.push(
                raw,
                format!(
                    "ports {} is invalid: use a port such as 443 or an inclusive range such as \"8000-8100\" with ports from 0 to 65535, lowest first",
                    raw.get_ref()
                ),
            );
            None
        }
    }
}

fn parse_duration(errors: &mut Errors<'_>, raw: &Spanned<String>, key: &str) -> Option<Duration> {
    match humantime::parse_duration(raw.get_ref()) {
        Ok(duration) => Some(duration),
        Err(err) => {
            errors.push(
                raw,
                format!(
                    "{key} {:?} is invalid ({err}): use a duration such as \"30m\", \"8h\" or \"7d\"",
                    raw.get_ref()
                ),
            );
            None
        }
    }
}

fn parse_devices(errors: &mut Errors<'_>, raw: &[RawDevice]) -> Vec<PolicyDevice> {
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    let mut devices = Vec::new();
    for device in raw {
        let before = errors.list.len();
        let name = device.name.get_ref();
        if let Err(message) = check_device_name(name) {
            errors.push(&device.name, message);
        }
        if !names.insert(name.clone()) {
            errors.push(
                &device.name,
                format!("device name {name:?} is used twice; give each device a unique name"),
            );
        }
        let mut parsed = Vec::new();
        for address in &device.addresses {
            match address.get_ref().parse::<IpAddr>() {
                Ok(ip) if !addresses.insert(ip) => errors.push(
                    address,
                    format!("address {ip} belongs to two devices; an address identifies one device"),
                ),
                Ok(ip) => parsed.push(ip),
                Err(_) => errors.push(
                    address,
                    format!(
                        "address {:?} is invalid: use a single IPv4 or IPv6 address without a prefix length",
                        address.get_ref()
                    ),
                ),
            }
        }
        let mac = device.mac.as_ref().and_then(|mac| {
            let parsed = parse_mac(mac.get_ref());
            if parsed.is_none() {
                errors.push(
                    mac,
                    format!(
                        "mac {:?} is invalid: use six hex bytes such as \"02:00:5e:00:53:01\"",
                        mac.get_ref()
                    ),
                );
            }
            parsed
        });
        if errors.list.len() == before {
            devices.push(PolicyDevice {
                name: name.clone(),
                owner: device.owner.clone(),
                addresses: parsed,
                mac,
            });
        }
    }
    devices
}

/// Parses a MAC address written as six colon- or dash-separated hex bytes.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Checks a device name: 1 to 64 letters, digits, '-', '_' or '.', and not only digits,
/// because the CLI reads a number as a device id. The error is the message for the user.
pub fn check_device_name(name: &str) -> Result<(), String> {
    if !is_valid_name(name) {
        return Err(format!(
            "device name {name:?} is invalid: use 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    if name.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!(
            "device name {name:?} is invalid: a name of digits only would be read as a device id; add a letter, such as \"device-{name}\""
        ));
    }
    Ok(())
}

/// Returns whether `text` contains nothing but a byte order mark, whitespace and comments, as a
/// truncated copy or a template does.
fn has_no_content(text: &str) -> bool {
    text.trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .all(|line| line.is_empty() || line.starts_with('#'))
}

fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends one resource to `text`, which a policy needs; lines of `text` keep their numbers.
    fn with_resource(text: &str) -> String {
        format!(
            "{text}\n[[resource]]\nname = \"wiki\"\ndestinations = [{{ prefix = \"203.0.113.7\" }}]\nsession = \"1h\"\nusers = [\"alice@example.com\"]\n"
        )
    }

    #[test]
    fn blank_or_comment_file_is_empty() {
        for text in [
            "\u{feff}",
            "\u{feff}\r\n \r\n",
            "# only\n  # comments\r\n",
            "\t\r\n",
        ] {
            let errors = parse("policy.toml", text).expect_err("an empty policy is invalid");
            assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
            assert!(
                errors[0].message.contains("the policy file is empty"),
                "{text:?}: {errors:?}"
            );
        }
        let errors = parse("policy.toml", "[settings]\n").expect_err("no resources");
        assert!(
            errors[0].message.contains("defines no [[resource]]"),
            "{errors:?}"
        );
    }

    #[test]
    fn empty_file_is_rejected() {
        let errors = parse("policy.toml", "\n  \n").expect_err("an empty policy is invalid");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 1);
        assert!(
            errors[0].message.contains("the policy file is empty"),
            "{errors:?}"
        );
    }

    #[test]
    fn policy_without_resources_is_rejected() {
        let text = "[[device]]\nname = \"kiosk\"\naddresses = [\"192.0.2.20\"]\n";
        let errors = parse("policy.toml", text).expect_err("a policy without resources is invalid");
        assert!(
            errors[0].message.contains("defines no [[resource]]"),
            "{errors:?}"
        );
    }

    const GOOD: &str = r#"
[settings]
punt_interval = "2s"

[[resource]]
name = "payroll"
destinations = [
    { prefix = "198.51.100.0/24", protocol = "tcp", ports = 443 },
    { prefix = "2001:db8:10::/48", protocol = "udp", ports = "8000-8100" },
]
session = "8h"
users = ["alice@example.com"]
groups = ["finance"]
step_up = true
on_expiry = "drop"

[[resource]]
name = "wiki"
destinations = [{ prefix = "203.0.113.7" }]
session = "7d"
groups = ["staff"]
monitor = true

[[device]]
name = "alice-laptop"
owner = "alice@example.com"
addresses = ["192.0.2.10", "2001:db8::10"]
mac = "02:00:5e:00:53:01"
"#;

    fn errors_of(text: &str) -> Vec<PolicyError> {
        parse("policy.toml", text).unwrap_err()
    }

    #[test]
    fn valid_policy_parses_every_field() {
        let policy = parse("policy.toml", GOOD).unwrap();
        assert_eq!(policy.punt_interval, Duration::from_secs(2));
        let payroll = policy.resource("payroll").unwrap();
        assert_eq!(payroll.session, Duration::from_secs(8 * 3600));
        assert_eq!(payroll.on_expiry, ExpiryAction::Drop);
        assert!(payroll.step_up);
        assert_eq!(payroll.destinations[0].ports, Some((443, 443)));
        assert_eq!(payroll.destinations[1].ports, Some((8000, 8100)));
        assert_eq!(payroll.destinations[1].line, 9);
        let wiki = policy.resource("wiki").unwrap();
        assert_eq!(wiki.destinations[0].prefix.to_string(), "203.0.113.7/32");
        assert_eq!(wiki.destinations[0].protocol, Protocol::Any);
        assert_eq!(wiki.on_expiry, ExpiryAction::Reject);
        assert!(wiki.monitor);
        assert_eq!(policy.devices[0].mac, Some([2, 0, 0x5e, 0, 0x53, 1]));
        assert_eq!(policy.devices[0].addresses.len(), 2);
    }

    #[test]
    fn host_bits_error_names_line_and_fix() {
        let text = GOOD.replace("198.51.100.0/24", "198.51.100.1/24");
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 8);
        assert!(
            errors[0].message.contains("198.51.100.0/24"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn every_error_is_reported() {
        let text = GOOD
            .replace("\"8h\"", "\"8 hours-ish\"")
            .replace("\"drop\"", "\"deny\"")
            .replace("\"8000-8100\"", "\"8100-8000\"");
        let errors = errors_of(&text);
        let lines: Vec<usize> = errors.iter().map(|error| error.line).collect();
        assert_eq!(lines, vec![11, 9, 15]);
        assert!(errors[1].message.contains("lowest first"), "{}", errors[1]);
        assert!(
            errors[2].message.contains("\"reject\" or \"drop\""),
            "{}",
            errors[2]
        );
    }

    #[test]
    fn ports_without_port_protocol_are_invalid() {
        let text = GOOD.replace(
            "prefix = \"203.0.113.7\"",
            "prefix = \"203.0.113.7\", ports = 22",
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("has no ports"), "{}", errors[0]);
    }

    #[test]
    fn duplicate_resource_name_is_invalid() {
        let text = GOOD.replace("name = \"wiki\"", "name = \"payroll\"");
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 18);
    }

    #[test]
    fn unknown_key_names_its_line() {
        let text = GOOD.replace("monitor = true", "monitr = true");
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("monitr"), "{}", errors[0]);
        assert!(errors[0].line >= 18, "{}", errors[0]);
    }

    #[test]
    fn address_on_two_devices_is_invalid() {
        let text = format!("{GOOD}\n[[device]]\nname = \"spare\"\naddresses = [\"192.0.2.10\"]\n");
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("192.0.2.10"), "{}", errors[0]);
    }

    #[test]
    fn zero_session_is_out_of_range() {
        let text = GOOD.replace("\"7d\"", "\"0s\"");
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("out of range"), "{}", errors[0]);
    }

    #[test]
    fn example_policy_parses() {
        let policy = parse("policy.toml", include_str!("../../../examples/policy.toml")).unwrap();
        assert_eq!(policy.resources.len(), 2);
    }

    #[test]
    fn mac_parses_both_separators() {
        assert_eq!(
            parse_mac("02-00-5e-00-53-01"),
            Some([2, 0, 0x5e, 0, 0x53, 1])
        );
        assert_eq!(parse_mac("02:00:5e:00:53"), None);
        assert_eq!(parse_mac("02:00:5e:00:53:01:02"), None);
    }

    #[test]
    fn enrollment_off_by_default() {
        let policy = parse("policy.toml", GOOD).unwrap();
        assert!(!policy.enrollment.on_first_sign_in);
        let address: IpAddr = "192.0.2.50".parse().unwrap();
        let err = policy.check_enrollment(address).unwrap_err();
        assert!(err.contains("enroll_on_first_sign_in = true"), "{err}");
    }

    #[test]
    fn enrollment_limited_to_prefixes() {
        let text = "[settings]\nenroll_on_first_sign_in = true\nenroll_from = [\"192.0.2.0/25\", \"2001:db8::/64\"]\n";
        let policy = parse("policy.toml", &with_resource(text)).unwrap();
        let inside: IpAddr = "192.0.2.50".parse().unwrap();
        let inside_v6: IpAddr = "2001:db8::50".parse().unwrap();
        let outside: IpAddr = "192.0.2.200".parse().unwrap();
        assert_eq!(policy.check_enrollment(inside), Ok(()));
        assert_eq!(policy.check_enrollment(inside_v6), Ok(()));
        let err = policy.check_enrollment(outside).unwrap_err();
        assert!(
            err.contains("outside `enroll_from` (192.0.2.0/25, 2001:db8::/64)"),
            "{err}"
        );
    }

    #[test]
    fn enrollment_without_prefixes_allows_any() {
        let text = "[settings]\nenroll_on_first_sign_in = true\n";
        let policy = parse("policy.toml", &with_resource(text)).unwrap();
        let address: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(policy.check_enrollment(address), Ok(()));
    }

    #[test]
    fn enrollment_rejects_bad_prefix() {
        let text = "[settings]\nenroll_on_first_sign_in = true\nenroll_from = [\"192.0.2.0/33\"]\n";
        let errors = errors_of(&with_resource(text));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 3);
        assert!(
            errors[0].message.contains("192.0.2.0/33"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn numeric_device_name_is_rejected() {
        let text = "[[device]]\nname = \"42\"\naddresses = [\"192.0.2.9\"]\n";
        let errors = errors_of(&with_resource(text));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, 2);
        assert!(
            errors[0].message.contains("read as a device id"),
            "{}",
            errors[0].message
        );
        assert_eq!(check_device_name("laptop-42"), Ok(()));
        assert!(check_device_name("").is_err());
        assert!(check_device_name("two words").is_err());
    }

    #[test]
    fn enrollment_device_limit_parses() {
        let policy = parse(
            "p.toml",
            &with_resource("[settings]\nenroll_on_first_sign_in = true\n"),
        )
        .expect("policy parses");
        assert_eq!(
            policy.enrollment.max_devices_per_user,
            DEFAULT_MAX_DEVICES_PER_USER
        );
        let text = "[settings]\nenroll_on_first_sign_in = true\nenroll_max_devices_per_user = 3\n";
        let policy = parse("p.toml", &with_resource(text)).expect("policy parses");
        assert_eq!(policy.enrollment.max_devices_per_user, 3);

        for value in ["0", "-1"] {
            let text = format!(
                "[settings]\nenroll_on_first_sign_in = true\nenroll_max_devices_per_user = {value}\n"
            );
            let errors = parse("p.toml", &with_resource(&text)).expect_err("the limit is invalid");
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].line, 3);
            assert!(
                errors[0].message.contains("at least 1"),
                "{}",
                errors[0].message
            );
        }

        let errors = parse("p.toml", "[settings]\nenroll_max_devices_per_user = 3\n")
            .expect_err("the limit needs the setting");
        assert!(
            errors[0].message.contains("enroll_on_first_sign_in = true"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn enrollment_prefixes_need_setting() {
        let text = "[settings]\nenroll_from = [\"192.0.2.0/24\"]\n";
        let errors = errors_of(&with_resource(text));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.contains("enroll_on_first_sign_in = true"),
            "{}",
            errors[0].message
        );
    }
}
