//! `enforcer explain`: reports which device and resource a packet matches, whether its session is
//! live and until when, and the verdict.
//!
//! The verdict comes from the data path's reference classifier (`dataplane::reference`), run
//! on a packet built from the request over the current map contents. The matched device, rule
//! and session are looked up here with the same rules (longest prefix, then the first rule
//! whose protocol and port match) so they can be shown.
//!
//! NOTE: the packet is built as raw IP, so the source-MAC check of MAC-bound devices is not
//! part of the verdict; `Explanation::mac_bound` says when it would apply.

use std::net::IpAddr;

use common::{
    Action, DEVICE_FLAG_MAC_BOUND, PROTOCOL_ANY, PrefixRules, RULE_FLAG_ANY_PORT,
    RULE_FLAG_MONITOR, ResourceRule, SessionKey, checksum, ip_protocol,
};
use ipnet::IpNet;
use serde::Serialize;

use crate::{
    clock::{Instant, expiry_wall_ns},
    dataplane::{DataplaneError, maps::KernelMaps, reference},
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
    PassNotIp,
    PassUnprotected,
    PassSession,
    PassMonitor,
    DenyUnknownDevice,
    DenyNoSession,
    DenyExpired,
    DenyMalformed,
    DenyWrongMac,
    DenyFragment,
}

impl Verdict {
    pub fn passes(self) -> bool {
        matches!(
            self,
            Verdict::PassNotIp
                | Verdict::PassUnprotected
                | Verdict::PassSession
                | Verdict::PassMonitor
        )
    }

    /// Returns the verdict of a `common::counters` verdict counter.
    pub fn from_counter(counter: u32) -> Option<Self> {
        use common::counters::*;
        Some(match counter {
            PASS_NOT_IP => Verdict::PassNotIp,
            PASS_UNPROTECTED => Verdict::PassUnprotected,
            PASS_SESSION => Verdict::PassSession,
            PASS_MONITOR => Verdict::PassMonitor,
            DENY_UNKNOWN_DEVICE => Verdict::DenyUnknownDevice,
            DENY_NO_SESSION => Verdict::DenyNoSession,
            DENY_EXPIRED => Verdict::DenyExpired,
            DENY_MALFORMED => Verdict::DenyMalformed,
            DENY_WRONG_MAC => Verdict::DenyWrongMac,
            DENY_FRAGMENT => Verdict::DenyFragment,
            _ => return None,
        })
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
    /// Action of the program on the packet: `pass`, `drop` or `reject` (a reply sent with
    /// XDP_TX).
    pub action: &'static str,
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
        action: "pass",
    };
    let prefixes = maps.prefixes()?;
    let sessions = maps.sessions()?;
    let outcome = reference_outcome(maps, &prefixes, &sessions, packet, now)?;
    explanation.verdict =
        Verdict::from_counter(outcome.verdict_counter).unwrap_or(Verdict::DenyMalformed);
    explanation.action = match outcome.action {
        reference::XdpAction::Pass => "pass",
        reference::XdpAction::Drop => "drop",
        reference::XdpAction::Tx => "reject",
    };

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
    let Some(device) = device else {
        return Ok(explanation);
    };
    let key = SessionKey {
        device_id: device.device_id,
        resource_id: rule.resource_id,
    };
    if let Some((_, session)) = sessions.iter().find(|(candidate, _)| *candidate == key) {
        explanation.session = Some(SessionState {
            expires_at_boot_ns: session.expires_at_boot_ns,
            expires_unix_ns: expiry_wall_ns(session.expires_at_boot_ns, now),
            live: now.boot_ns < session.expires_at_boot_ns,
        });
    }
    Ok(explanation)
}

/// Runs the reference classifier on a raw-IP packet built from `packet`.
fn reference_outcome(
    maps: &impl KernelMaps,
    prefixes: &[(IpNet, PrefixRules)],
    sessions: &[(SessionKey, common::SessionValue)],
    packet: &Packet,
    now: &Instant,
) -> Result<reference::Outcome, DataplaneError> {
    let mut tables = reference::Tables {
        devices: maps.devices()?.into_iter().collect(),
        sessions: sessions.iter().copied().collect(),
        ..reference::Tables::default()
    };
    for (prefix, rules) in prefixes {
        tables
            .prefixes
            .insert(prefix.network(), prefix.prefix_len(), *rules);
    }
    let frame = build_packet(packet);
    let mut state = reference::State::default();
    Ok(reference::classify(
        &frame,
        reference::LinkKind::RawIp,
        &tables,
        &mut state,
        now.boot_ns,
    ))
}

/// Builds a raw IPv4 or IPv6 packet with a minimal L4 header for `packet`: TCP SYN, UDP,
/// SCTP, ICMP or ICMPv6 echo request, or 8 zero bytes for other protocols. A source and
/// destination of different families give an IPv6 packet with the IPv4 address mapped.
pub fn build_packet(packet: &Packet) -> Vec<u8> {
    let port = packet.port.unwrap_or(0).to_be_bytes();
    let l4: Vec<u8> = match packet.protocol {
        ip_protocol::TCP => {
            let mut tcp = vec![0u8; 20];
            tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
            tcp[2..4].copy_from_slice(&port);
            tcp[12] = 5 << 4;
            tcp[13] = 0x02;
            tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
            tcp
        }
        ip_protocol::UDP | ip_protocol::UDP_LITE => {
            let mut udp = vec![0u8; 8];
            udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
            udp[2..4].copy_from_slice(&port);
            udp[4..6].copy_from_slice(&8u16.to_be_bytes());
            udp
        }
        ip_protocol::SCTP => {
            let mut sctp = vec![0u8; 12];
            sctp[0..2].copy_from_slice(&40000u16.to_be_bytes());
            sctp[2..4].copy_from_slice(&port);
            sctp
        }
        ip_protocol::ICMP => vec![8, 0, 0, 0, 0, 1, 0, 1],
        ip_protocol::ICMPV6 => vec![128, 0, 0, 0, 0, 1, 0, 1],
        _ => vec![0u8; 8],
    };
    match (packet.source, packet.destination) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut header = vec![0u8; 20];
            header[0] = 0x45;
            header[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            header[6] = 0x40;
            header[8] = 64;
            header[9] = packet.protocol;
            header[12..16].copy_from_slice(&src.octets());
            header[16..20].copy_from_slice(&dst.octets());
            let sum = checksum::finish(checksum::add(0, &header));
            header[10..12].copy_from_slice(&sum.to_be_bytes());
            header.extend_from_slice(&l4);
            header
        }
        (src, dst) => {
            let v6 = |address: IpAddr| match address {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            let mut header = vec![0u8; 40];
            header[0] = 0x60;
            header[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            header[6] = packet.protocol;
            header[7] = 64;
            header[8..24].copy_from_slice(&v6(src).octets());
            header[24..40].copy_from_slice(&v6(dst).octets());
            header.extend_from_slice(&l4);
            header
        }
    }
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
