//! `enforcer explain`: classifies a packet the way the XDP program does, over the current map
//! contents, and says which device and resource match, whether a session is live and the
//! verdict.
//!
//! NOTE: this classifier mirrors the XDP program's lookup (longest prefix, then the first rule
//! whose protocol and port match). It reads parsed header fields, so it does not explain
//! malformed packets, fragments or VLAN tags; the data path's reference classifier, once it
//! exists in `dataplane::reference`, is the one to plug in here.

use std::net::IpAddr;

use common::{
    Action, DEVICE_FLAG_MAC_BOUND, PROTOCOL_ANY, PrefixRules, RULE_FLAG_ANY_PORT,
    RULE_FLAG_MONITOR, ResourceRule, SessionKey,
};
use ipnet::IpNet;
use serde::Serialize;

use crate::{
    clock::{Instant, expiry_wall_ns},
    dataplane::{DataplaneError, maps::KernelMaps},
};

/// The packet to explain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub protocol: u8,
    pub port: Option<u16>,
}

/// Verdict the program would reach, named as its counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    PassUnprotected,
    PassSession,
    PassMonitor,
    DenyUnknownDevice,
    DenyNoSession,
    DenyExpired,
}

impl Verdict {
    pub fn passes(self) -> bool {
        matches!(
            self,
            Verdict::PassUnprotected | Verdict::PassSession | Verdict::PassMonitor
        )
    }
}

/// The matched resource rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatchedRule {
    pub resource_id: u32,
    pub prefix: IpNet,
    pub action: &'static str,
    pub monitor: bool,
}

/// The session of the matched pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionState {
    pub expires_at_boot_ns: u64,
    pub expires_unix_ns: u64,
    pub live: bool,
}

/// Result of `explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub device_id: Option<u32>,
    /// The device entry requires a source MAC, which `explain` cannot check.
    pub mac_bound: bool,
    pub rule: Option<MatchedRule>,
    pub session: Option<SessionState>,
    pub verdict: Verdict,
}

/// Classifies `packet` over the contents of `maps` at `now`.
pub fn explain(
    maps: &impl KernelMaps,
    packet: &Packet,
    now: &Instant,
) -> Result<Explanation, DataplaneError> {
    let device = maps
        .devices()?
        .into_iter()
        .find(|(address, _)| *address == packet.source)
        .map(|(_, entry)| entry);
    let mut explanation = Explanation {
        device_id: device.map(|entry| entry.device_id),
        mac_bound: device.is_some_and(|entry| entry.flags & DEVICE_FLAG_MAC_BOUND != 0),
        rule: None,
        session: None,
        verdict: Verdict::PassUnprotected,
    };

    let prefixes = maps.prefixes()?;
    let Some((prefix, rules)) = longest_match(&prefixes, packet.destination) else {
        return Ok(explanation);
    };
    let Some(rule) = first_matching_rule(&rules, packet) else {
        return Ok(explanation);
    };
    let monitor = rule.flags & RULE_FLAG_MONITOR != 0;
    explanation.rule = Some(MatchedRule {
        resource_id: rule.resource_id,
        prefix,
        action: if rule.action == Action::Reject as u8 {
            "reject"
        } else {
            "drop"
        },
        monitor,
    });
    let deny = |verdict| {
        if monitor {
            Verdict::PassMonitor
        } else {
            verdict
        }
    };

    let Some(device) = device else {
        explanation.verdict = deny(Verdict::DenyUnknownDevice);
        return Ok(explanation);
    };
    let key = SessionKey {
        device_id: device.device_id,
        resource_id: rule.resource_id,
    };
    let session = maps
        .sessions()?
        .into_iter()
        .find(|(candidate, _)| *candidate == key)
        .map(|(_, value)| value);
    let Some(session) = session else {
        explanation.verdict = deny(Verdict::DenyNoSession);
        return Ok(explanation);
    };
    let live = now.boot_ns < session.expires_at_boot_ns;
    explanation.session = Some(SessionState {
        expires_at_boot_ns: session.expires_at_boot_ns,
        expires_unix_ns: expiry_wall_ns(session.expires_at_boot_ns, now),
        live,
    });
    explanation.verdict = if live {
        Verdict::PassSession
    } else {
        deny(Verdict::DenyExpired)
    };
    Ok(explanation)
}

fn longest_match(
    prefixes: &[(IpNet, PrefixRules)],
    address: IpAddr,
) -> Option<(IpNet, PrefixRules)> {
    prefixes
        .iter()
        .filter(|(prefix, _)| prefix.contains(&address))
        .max_by_key(|(prefix, _)| prefix.prefix_len())
        .copied()
}

fn first_matching_rule(rules: &PrefixRules, packet: &Packet) -> Option<ResourceRule> {
    let count = (rules.count as usize).min(rules.rules.len());
    rules.rules[..count].iter().copied().find(|rule| {
        if rule.protocol != PROTOCOL_ANY && rule.protocol != packet.protocol {
            return false;
        }
        if rule.flags & RULE_FLAG_ANY_PORT != 0 {
            return true;
        }
        packet
            .port
            .is_some_and(|port| rule.port_lo <= port && port <= rule.port_hi)
    })
}

#[cfg(test)]
mod tests {
    use common::{DeviceEntry, SessionValue};

    use super::*;
    use crate::dataplane::maps::MemoryMaps;

    fn maps() -> MemoryMaps {
        let mut maps = MemoryMaps::default();
        maps.devices.insert(
            "192.0.2.10".parse().unwrap(),
            DeviceEntry {
                device_id: 1,
                ..DeviceEntry::default()
            },
        );
        let mut rules = PrefixRules {
            count: 1,
            ..PrefixRules::default()
        };
        rules.rules[0] = ResourceRule {
            resource_id: 7,
            port_lo: 443,
            port_hi: 443,
            protocol: 6,
            action: Action::Reject as u8,
            flags: 0,
            _pad: 0,
        };
        maps.prefixes
            .insert("198.51.100.0/24".parse().unwrap(), rules);
        maps
    }

    fn now(boot_ns: u64) -> Instant {
        Instant {
            wall_unix_ns: 1_000_000_000_000,
            boot_ns,
            boot_id: "a".to_owned(),
        }
    }

    fn packet(source: &str, port: u16) -> Packet {
        Packet {
            source: source.parse().unwrap(),
            destination: "198.51.100.5".parse().unwrap(),
            protocol: 6,
            port: Some(port),
        }
    }

    #[test]
    fn other_port_is_unprotected() {
        let result = explain(&maps(), &packet("192.0.2.10", 80), &now(5)).unwrap();
        assert_eq!(result.verdict, Verdict::PassUnprotected);
        assert_eq!(result.rule, None);
    }

    #[test]
    fn unknown_source_is_denied() {
        let result = explain(&maps(), &packet("192.0.2.99", 443), &now(5)).unwrap();
        assert_eq!(result.verdict, Verdict::DenyUnknownDevice);
    }

    #[test]
    fn missing_session_is_denied() {
        let result = explain(&maps(), &packet("192.0.2.10", 443), &now(5)).unwrap();
        assert_eq!(result.verdict, Verdict::DenyNoSession);
        assert_eq!(result.rule.unwrap().resource_id, 7);
    }

    #[test]
    fn live_session_passes_until_expiry() {
        let mut maps = maps();
        let key = SessionKey {
            device_id: 1,
            resource_id: 7,
        };
        maps.sessions.insert(
            key,
            SessionValue {
                expires_at_boot_ns: 100,
            },
        );
        let before = explain(&maps, &packet("192.0.2.10", 443), &now(99)).unwrap();
        let at = explain(&maps, &packet("192.0.2.10", 443), &now(100)).unwrap();
        assert_eq!(before.verdict, Verdict::PassSession);
        assert_eq!(at.verdict, Verdict::DenyExpired);
    }
}
