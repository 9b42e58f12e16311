//! A pure-Rust model of the XDP program: the same parser, classification, verdicts, counters,
//! replies and punts, over plain tables instead of kernel maps.
//!
//! The differential test runs random and mutated packets through both this model and the
//! kernel program and requires the same verdict and reply, so the model doubles as the
//! specification of the data path. `enforcer explain` uses it to show why a packet would be
//! passed or denied. It takes no aya types and needs no privileges.
//!
//! Rules are tried in the order of [`PrefixRules`]: the most specific matching prefix's list,
//! which holds that prefix's own rules followed by those of every covering prefix, most
//! specific first. The first rule whose protocol and port range match wins.

use std::collections::HashMap;
use std::net::IpAddr;

use common::{
    Action, CONFIG_FLAG_MONITOR_ALL, Config, DEFAULT_PUNT_INTERVAL_NS, DEVICE_FLAG_MAC_BOUND,
    DeviceEntry, FRAGMENT_TIMEOUT_NS, FragmentKey, FragmentValue, IPV6_EXT_MAX_DEPTH,
    MAX_RULES_PER_PREFIX, PROTOCOL_ANY, PrefixRules, PuntEvent, RULE_FLAG_ANY_PORT,
    RULE_FLAG_MONITOR, Reason, ResourceRule, SessionKey, SessionValue, UNKNOWN_DEVICE_ID,
    UNKNOWN_RESOURCE_ID, VLAN_MAX_DEPTH, checksum, counters, ip_protocol,
};

/// Maximum bytes of a denied IPv6 packet quoted in an ICMPv6 error, as in the XDP program.
pub const ICMPV6_QUOTE_MAX: usize = 128;

const ETH_HLEN: usize = 14;
const HOP_LIMIT: u8 = 64;

/// Framing of the interface, which selects the XDP entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// Frames start with an Ethernet header (`enforcer_eth`).
    Ethernet,
    /// Packets start at the IP header (`enforcer_ip`), as on tun and WireGuard.
    RawIp,
}

/// The XDP action the program returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpAction {
    Drop,
    Pass,
    /// Send the rewritten frame back out of the interface: a reject reply.
    Tx,
}

impl XdpAction {
    /// Returns the kernel's `xdp_action` value.
    pub fn code(self) -> u32 {
        match self {
            XdpAction::Drop => 1,
            XdpAction::Pass => 2,
            XdpAction::Tx => 3,
        }
    }
}

/// Destination prefixes with longest-prefix match, as the `PREFIXES_V4` and `PREFIXES_V6`
/// LPM tries store them.
#[derive(Clone, Debug, Default)]
pub struct PrefixTable {
    /// Rules by (prefix length, address with the host bits cleared), per family.
    v4: HashMap<(u8, [u8; 4]), PrefixRules>,
    v6: HashMap<(u8, [u8; 16]), PrefixRules>,
}

impl PrefixTable {
    /// Stores `rules` for `address/prefix_len`; the length is capped at the family's width.
    pub fn insert(&mut self, address: IpAddr, prefix_len: u8, rules: PrefixRules) {
        match address {
            IpAddr::V4(v4) => {
                let prefix_len = prefix_len.min(32);
                self.v4
                    .insert((prefix_len, mask(v4.octets(), prefix_len)), rules);
            }
            IpAddr::V6(v6) => {
                let prefix_len = prefix_len.min(128);
                self.v6
                    .insert((prefix_len, mask(v6.octets(), prefix_len)), rules);
            }
        }
    }

    /// Returns the rules of the longest prefix containing `address`.
    pub fn lookup(&self, address: IpAddr) -> Option<&PrefixRules> {
        match address {
            IpAddr::V4(v4) => (0..=32u8)
                .rev()
                .find_map(|len| self.v4.get(&(len, mask(v4.octets(), len)))),
            IpAddr::V6(v6) => (0..=128u8)
                .rev()
                .find_map(|len| self.v6.get(&(len, mask(v6.octets(), len)))),
        }
    }
}

fn mask<const N: usize>(mut address: [u8; N], prefix_len: u8) -> [u8; N] {
    for (index, byte) in address.iter_mut().enumerate() {
        let bits = (prefix_len as usize).saturating_sub(index * 8).min(8);
        *byte &= (0xff00u16 >> bits) as u8;
    }
    address
}

/// What user space writes into the maps: devices, prefixes, sessions and the configuration.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    /// `DEVICES_V4` and `DEVICES_V6`: enrolled source addresses.
    pub devices: HashMap<IpAddr, DeviceEntry>,
    pub prefixes: PrefixTable,
    pub sessions: HashMap<SessionKey, SessionValue>,
    pub config: Config,
}

/// What the program itself writes: the verdicts of first fragments and the time of the last
/// punt per (device, resource). Unlike the kernel's LRU maps these never evict.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub fragments: HashMap<FragmentKey, FragmentValue>,
    pub punt_limits: HashMap<SessionKey, u64>,
}

/// The program's decision on one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: XdpAction,
    /// The one verdict counter the packet bumps (`counters::PASS_*` or `DENY_*`).
    pub verdict_counter: u32,
    /// Side-effect counters bumped as well (`REJECT_*`, `PUNT_*`), in order.
    pub side_counters: Vec<u32>,
    /// The reason of a deny, also for a monitor-mode pass.
    pub reason: Option<Reason>,
    /// The rewritten frame sent with XDP_TX.
    pub reply: Option<Vec<u8>>,
    /// The event sent to the punt ring buffer, unless rate-limited.
    pub punt: Option<PuntEvent>,
}

/// Classifies `frame` as the XDP entry point for `link` would at boot time `now_boot_ns`, and
/// updates `state` as the program updates its own maps.
pub fn classify(
    frame: &[u8],
    link: LinkKind,
    tables: &Tables,
    state: &mut State,
    now_boot_ns: u64,
) -> Outcome {
    let mut run = Run {
        tables,
        state,
        now_boot_ns,
        side_counters: Vec::new(),
        punt: None,
    };
    let (action, verdict_counter, reason, reply) = run.enforce(frame, link);
    Outcome {
        action,
        verdict_counter,
        side_counters: run.side_counters,
        reason,
        reply,
        punt: run.punt,
    }
}

struct Malformed;

/// L2 and the IP addresses.
struct Network {
    l3: usize,
    version: u8,
    src: [u8; 16],
    dst: [u8; 16],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

impl Network {
    fn address(bytes: &[u8; 16], version: u8) -> IpAddr {
        if version == 4 {
            IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
        } else {
            IpAddr::from(*bytes)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fragment {
    Whole,
    First,
    Later,
}

#[derive(Clone, Copy, Default)]
struct Flow {
    protocol: u8,
    has_ports: bool,
    src_port: u16,
    dst_port: u16,
}

struct Packet {
    ip_end: usize,
    l4: usize,
    protocol: u8,
    fragment: Fragment,
    fragment_id: u32,
    fragment_protocol: u8,
    /// Offset of the fragment data: the IPv4 payload, or what follows the IPv6 fragment
    /// header.
    fragment_start: usize,
    /// Byte offset of the fragment data in the original datagram's fragmentable part.
    fragment_offset: u16,
    flow: Flow,
    icmp_error: bool,
    tcp_reset: bool,
}

fn bytes<const N: usize>(frame: &[u8], offset: usize) -> Result<[u8; N], Malformed> {
    let slice = frame.get(offset..offset + N).ok_or(Malformed)?;
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    Ok(out)
}

fn be16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([bytes[offset], bytes[offset + 1]])
}

fn network(frame: &[u8], link: LinkKind) -> Result<Option<Network>, Malformed> {
    let mut src_mac = [0u8; 6];
    let mut dst_mac = [0u8; 6];
    let (l3, version) = match link {
        LinkKind::Ethernet => {
            let ethernet: [u8; ETH_HLEN] = bytes(frame, 0)?;
            dst_mac.copy_from_slice(&ethernet[..6]);
            src_mac.copy_from_slice(&ethernet[6..12]);
            let mut ethertype = be16(&ethernet, 12);
            let mut offset = ETH_HLEN;
            for _ in 0..VLAN_MAX_DEPTH {
                if !is_vlan(ethertype) {
                    break;
                }
                let tag: [u8; 4] = bytes(frame, offset)?;
                ethertype = be16(&tag, 2);
                offset += 4;
            }
            let version = match ethertype {
                0x0800 => 4,
                0x86dd => 6,
                ethertype if is_vlan(ethertype) => return Err(Malformed),
                _ => return Ok(None),
            };
            (offset, version)
        }
        LinkKind::RawIp => {
            let start: [u8; 20] = bytes(frame, 0)?;
            match start[0] >> 4 {
                4 => (0, 4),
                6 => (0, 6),
                _ => return Err(Malformed),
            }
        }
    };

    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    if version == 4 {
        let header: [u8; 20] = bytes(frame, l3)?;
        src[..4].copy_from_slice(&header[12..16]);
        dst[..4].copy_from_slice(&header[16..20]);
    } else {
        let header: [u8; 40] = bytes(frame, l3)?;
        src.copy_from_slice(&header[8..24]);
        dst.copy_from_slice(&header[24..40]);
    }
    Ok(Some(Network {
        l3,
        version,
        src,
        dst,
        src_mac,
        dst_mac,
    }))
}

fn is_vlan(ethertype: u16) -> bool {
    matches!(ethertype, 0x8100 | 0x88a8 | 0x9100)
}

fn new_packet(ip_end: usize, l4: usize, protocol: u8) -> Packet {
    Packet {
        ip_end,
        l4,
        protocol,
        fragment: Fragment::Whole,
        fragment_id: 0,
        fragment_protocol: protocol,
        fragment_start: l4,
        fragment_offset: 0,
        flow: Flow {
            protocol,
            ..Flow::default()
        },
        icmp_error: false,
        tcp_reset: false,
    }
}

fn transport(frame: &[u8], network: &Network) -> Result<Packet, Malformed> {
    let mut packet = if network.version == 4 {
        ipv4(frame, network.l3)?
    } else {
        ipv6(frame, network.l3)?
    };
    if packet.fragment != Fragment::Later {
        upper_layer(frame, &mut packet, network)?;
    }
    Ok(packet)
}

fn ipv4(frame: &[u8], l3: usize) -> Result<Packet, Malformed> {
    let header: [u8; 20] = bytes(frame, l3)?;
    if header[0] >> 4 != 4 {
        return Err(Malformed);
    }
    let header_len = (header[0] & 0x0f) as usize * 4;
    let total_len = be16(&header, 2) as usize;
    if header_len < 20 || total_len < header_len {
        return Err(Malformed);
    }
    let ip_end = l3 + total_len;
    if ip_end > frame.len() {
        return Err(Malformed);
    }

    let mut packet = new_packet(ip_end, l3 + header_len, header[9]);
    let fragment_field = be16(&header, 6);
    packet.fragment = if fragment_field & 0x1fff != 0 {
        Fragment::Later
    } else if fragment_field & 0x2000 != 0 {
        Fragment::First
    } else {
        Fragment::Whole
    };
    if packet.fragment != Fragment::Whole {
        packet.fragment_id = be16(&header, 4) as u32;
        packet.fragment_offset = (fragment_field & 0x1fff) << 3;
    }
    Ok(packet)
}

fn ipv6(frame: &[u8], l3: usize) -> Result<Packet, Malformed> {
    let header: [u8; 8] = bytes(frame, l3)?;
    if header[0] >> 4 != 6 {
        return Err(Malformed);
    }
    let ip_end = l3 + 40 + be16(&header, 4) as usize;
    if ip_end > frame.len() {
        return Err(Malformed);
    }

    let chain = extensions(frame, header[6], l3 + 40, ip_end)?;
    let mut packet = new_packet(ip_end, chain.offset, chain.next_header);
    packet.fragment = chain.fragment;
    if chain.fragment != Fragment::Whole {
        packet.fragment_id = chain.fragment_id;
        packet.fragment_protocol = chain.fragment_protocol;
        packet.fragment_start = chain.fragment_start;
        packet.fragment_offset = chain.fragment_offset;
    }
    Ok(packet)
}

/// An IPv6 extension header chain after its walk.
struct Chain {
    /// Upper-layer protocol; for a later fragment, the next header of the fragment header.
    next_header: u8,
    /// Offset of the upper-layer header, or of the fragment data of a later fragment.
    offset: usize,
    fragment: Fragment,
    fragment_id: u32,
    fragment_protocol: u8,
    /// Offset just past the fragment header, when there is one.
    fragment_start: usize,
    /// Fragment offset of the fragment header in bytes, when there is one.
    fragment_offset: u16,
}

/// Walks at most `IPV6_EXT_MAX_DEPTH` extension headers from `offset`, which must end by
/// `end`: hop-by-hop first only, one fragment header, and no chain longer than the bound. A
/// later fragment ends the walk at its fragment header.
fn extensions(
    frame: &[u8],
    mut next_header: u8,
    mut offset: usize,
    end: usize,
) -> Result<Chain, Malformed> {
    let mut chain = Chain {
        next_header,
        offset,
        fragment: Fragment::Whole,
        fragment_id: 0,
        fragment_protocol: next_header,
        fragment_start: offset,
        fragment_offset: 0,
    };
    let mut fragment_seen = false;
    for index in 0..IPV6_EXT_MAX_DEPTH {
        if !ip_protocol::is_ipv6_extension(next_header) {
            break;
        }
        if next_header == ip_protocol::HOP_BY_HOP && index != 0 {
            return Err(Malformed);
        }
        if next_header == ip_protocol::FRAGMENT {
            if fragment_seen || offset + 8 > end {
                return Err(Malformed);
            }
            fragment_seen = true;
            let fragment: [u8; 8] = bytes(frame, offset)?;
            let field = be16(&fragment, 2);
            next_header = fragment[0];
            offset += 8;
            chain.fragment_protocol = next_header;
            chain.fragment_start = offset;
            chain.fragment_offset = field & 0xfff8;
            chain.fragment_id =
                u32::from_be_bytes([fragment[4], fragment[5], fragment[6], fragment[7]]);
            if field & 0xfff8 != 0 {
                chain.fragment = Fragment::Later;
                break;
            }
            if field & 1 != 0 {
                chain.fragment = Fragment::First;
            }
            continue;
        }
        if offset + 2 > end {
            return Err(Malformed);
        }
        let extension: [u8; 2] = bytes(frame, offset)?;
        let length = if next_header == ip_protocol::AUTHENTICATION {
            (extension[1] as usize + 2) * 4
        } else {
            (extension[1] as usize + 1) * 8
        };
        next_header = extension[0];
        offset += length;
        if offset > end {
            return Err(Malformed);
        }
    }
    if chain.fragment != Fragment::Later && ip_protocol::is_ipv6_extension(next_header) {
        return Err(Malformed);
    }
    chain.next_header = next_header;
    chain.offset = offset;
    Ok(chain)
}

fn is_icmp_error(version: u8, protocol: u8, icmp_type: u8) -> bool {
    match (version, protocol) {
        (4, ip_protocol::ICMP) => matches!(icmp_type, 3 | 4 | 5 | 11 | 12),
        (6, ip_protocol::ICMPV6) => matches!(icmp_type, 1..=4),
        _ => false,
    }
}

fn upper_layer(frame: &[u8], packet: &mut Packet, network: &Network) -> Result<(), Malformed> {
    let (min_len, has_ports) = ip_protocol::l4_header(packet.protocol);
    if packet.l4 + min_len > packet.ip_end {
        return Err(Malformed);
    }
    if has_ports {
        let ports: [u8; 4] = bytes(frame, packet.l4)?;
        packet.flow.has_ports = true;
        packet.flow.src_port = be16(&ports, 0);
        packet.flow.dst_port = be16(&ports, 2);
    }
    if packet.protocol == ip_protocol::TCP {
        let fields: [u8; 2] = bytes(frame, packet.l4 + 12)?;
        let header_len = (fields[0] >> 4) as usize * 4;
        if header_len < 20 || packet.l4 + header_len > packet.ip_end {
            return Err(Malformed);
        }
        packet.tcp_reset = fields[1] & 0x04 != 0;
    }
    if matches!(packet.protocol, ip_protocol::ICMP | ip_protocol::ICMPV6) {
        let icmp: [u8; 8] = bytes(frame, packet.l4)?;
        if is_icmp_error(network.version, packet.protocol, icmp[0]) {
            packet.icmp_error = true;
            packet.flow = quoted_flow(frame, packet, network)?;
        }
    }
    Ok(())
}

/// Reads the reversed flow of the packet an ICMP error quotes, after the quoted IPv6 extension
/// headers. A quote whose addresses are not the outer ones swapped is malformed, and so is a
/// quoted later fragment.
fn quoted_flow(frame: &[u8], packet: &Packet, network: &Network) -> Result<Flow, Malformed> {
    let inner = packet.l4 + 8;
    let mut quoted_src = [0u8; 16];
    let mut quoted_dst = [0u8; 16];
    let (protocol, inner_l4) = if network.version == 4 {
        if inner + 20 > packet.ip_end {
            return Err(Malformed);
        }
        let header: [u8; 20] = bytes(frame, inner)?;
        let header_len = (header[0] & 0x0f) as usize * 4;
        let later_fragment = be16(&header, 6) & 0x1fff != 0;
        if header[0] >> 4 != 4 || header_len < 20 || later_fragment {
            return Err(Malformed);
        }
        quoted_src[..4].copy_from_slice(&header[12..16]);
        quoted_dst[..4].copy_from_slice(&header[16..20]);
        (header[9], inner + header_len)
    } else {
        if inner + 40 > packet.ip_end {
            return Err(Malformed);
        }
        let header: [u8; 8] = bytes(frame, inner)?;
        if header[0] >> 4 != 6 {
            return Err(Malformed);
        }
        quoted_src = bytes(frame, inner + 8)?;
        quoted_dst = bytes(frame, inner + 24)?;
        // The quote is cut short, so its payload length is not checked: the chain and the
        // ports must fit in the outer datagram.
        let chain = extensions(frame, header[6], inner + 40, packet.ip_end)?;
        if chain.fragment == Fragment::Later {
            return Err(Malformed);
        }
        (chain.next_header, chain.offset)
    };
    if quoted_src != network.dst || quoted_dst != network.src {
        return Err(Malformed);
    }

    let (_, has_ports) = ip_protocol::l4_header(protocol);
    let mut flow = Flow {
        protocol,
        has_ports,
        ..Flow::default()
    };
    if has_ports {
        if inner_l4 + 4 > packet.ip_end {
            return Err(Malformed);
        }
        let ports: [u8; 4] = bytes(frame, inner_l4)?;
        flow.dst_port = be16(&ports, 0);
        flow.src_port = be16(&ports, 2);
    }
    Ok(flow)
}

/// Returns whether the frame comes from the device's bound MAC address, when it has one. Raw-IP
/// links carry no MAC address, so no binding applies there.
fn mac_matches(link: LinkKind, device: &DeviceEntry, network: &Network) -> bool {
    let mac_bound = device.flags & DEVICE_FLAG_MAC_BOUND != 0;
    link != LinkKind::Ethernet || !mac_bound || device.mac == network.src_mac
}

/// Returns whether `rule` matches `flow`: same protocol (or `PROTOCOL_ANY`), and either
/// `RULE_FLAG_ANY_PORT` or a destination port inside the rule's inclusive range.
fn rule_matches(rule: &ResourceRule, flow: &Flow) -> bool {
    if rule.protocol != PROTOCOL_ANY && rule.protocol != flow.protocol {
        return false;
    }
    if rule.flags & RULE_FLAG_ANY_PORT != 0 {
        return true;
    }
    flow.has_ports && rule.port_lo <= flow.dst_port && flow.dst_port <= rule.port_hi
}

struct Decision {
    device_id: u32,
    resource_id: u32,
    /// The flow the rule matched, which the punt reports: for an ICMP error, the quoted flow
    /// or, when it matched as a plain ICMP packet, its protocol without ports.
    flow: Flow,
    reason: Option<Reason>,
    pass_counter: u32,
    action: Action,
    monitor: bool,
}

impl Decision {
    fn pass(counter: u32, device_id: u32, resource_id: u32) -> Self {
        Self {
            device_id,
            resource_id,
            flow: Flow::default(),
            reason: None,
            pass_counter: counter,
            action: Action::Drop,
            monitor: false,
        }
    }

    fn deny(
        reason: Reason,
        device_id: u32,
        rule: &ResourceRule,
        flow: Flow,
        monitor: bool,
    ) -> Self {
        Self {
            device_id,
            resource_id: rule.resource_id,
            flow,
            reason: Some(reason),
            pass_counter: counters::PASS_MONITOR,
            action: if rule.action == Action::Reject as u8 {
                Action::Reject
            } else {
                Action::Drop
            },
            monitor,
        }
    }
}

/// Returns the `DENY_*` counter of `reason`.
pub fn deny_counter(reason: Reason) -> u32 {
    match reason {
        Reason::UnknownDevice => counters::DENY_UNKNOWN_DEVICE,
        Reason::NoSession => counters::DENY_NO_SESSION,
        Reason::Expired => counters::DENY_EXPIRED,
        Reason::Malformed => counters::DENY_MALFORMED,
        Reason::WrongMac => counters::DENY_WRONG_MAC,
        Reason::Fragment => counters::DENY_FRAGMENT,
    }
}

type Verdict = (XdpAction, u32, Option<Reason>, Option<Vec<u8>>);

struct Run<'a> {
    tables: &'a Tables,
    state: &'a mut State,
    now_boot_ns: u64,
    side_counters: Vec<u32>,
    punt: Option<PuntEvent>,
}

impl Run<'_> {
    fn enforce(&mut self, frame: &[u8], link: LinkKind) -> Verdict {
        let network = match network(frame, link) {
            Ok(Some(network)) => network,
            Ok(None) => return (XdpAction::Pass, counters::PASS_NOT_IP, None, None),
            Err(Malformed) => return self.deny_malformed(None),
        };
        let destination = Network::address(&network.dst, network.version);
        let Some(rules) = self.tables.prefixes.lookup(destination) else {
            return (XdpAction::Pass, counters::PASS_UNPROTECTED, None, None);
        };
        let packet = match transport(frame, &network) {
            Ok(packet) => packet,
            Err(Malformed) => return self.deny_malformed(Some(&network)),
        };
        if packet.fragment == Fragment::Later {
            return self.later_fragment(link, &network, &packet);
        }

        let decision = self.decide(link, &network, &packet, rules);
        if packet.fragment == Fragment::First {
            self.record_fragment(&network, &packet, &decision);
        }
        let Some(reason) = decision.reason else {
            return (XdpAction::Pass, decision.pass_counter, None, None);
        };

        self.send_punt(
            &network,
            &decision.flow,
            (decision.device_id, decision.resource_id),
            reason,
            decision.monitor,
        );
        if decision.monitor {
            return (XdpAction::Pass, counters::PASS_MONITOR, Some(reason), None);
        }
        let counter = deny_counter(reason);
        if decision.action == Action::Drop || !reply_allowed(&network, &packet) {
            return (XdpAction::Drop, counter, Some(reason), None);
        }
        match build_reply(frame, &network, &packet) {
            Some(reply) => {
                self.side_counters.push(counters::REJECT_SENT);
                (XdpAction::Tx, counter, Some(reason), Some(reply))
            }
            None => {
                self.side_counters.push(counters::REJECT_FAILED);
                (XdpAction::Drop, counter, Some(reason), None)
            }
        }
    }

    fn decide(
        &self,
        link: LinkKind,
        network: &Network,
        packet: &Packet,
        rules: &PrefixRules,
    ) -> Decision {
        let count = (rules.count as usize).min(MAX_RULES_PER_PREFIX);
        let rules = &rules.rules[..count];
        // An ICMP error that matches no rule by its quoted flow is classified as the plain
        // ICMP packet it is.
        let plain_icmp = Flow {
            protocol: packet.protocol,
            ..Flow::default()
        };
        let quoted_match = rules
            .iter()
            .find(|rule| rule_matches(rule, &packet.flow))
            .map(|rule| (rule, packet.flow));
        let matched = quoted_match.or_else(|| {
            packet
                .icmp_error
                .then(|| rules.iter().find(|rule| rule_matches(rule, &plain_icmp)))
                .flatten()
                .map(|rule| (rule, plain_icmp))
        });
        let Some((rule, flow)) = matched else {
            return Decision::pass(
                counters::PASS_UNPROTECTED,
                UNKNOWN_DEVICE_ID,
                UNKNOWN_RESOURCE_ID,
            );
        };

        let monitor = rule.flags & RULE_FLAG_MONITOR != 0
            || self.tables.config.flags & CONFIG_FLAG_MONITOR_ALL != 0;
        let source = Network::address(&network.src, network.version);
        let deny = |reason, device_id| Decision::deny(reason, device_id, rule, flow, monitor);
        let Some(device) = self.tables.devices.get(&source) else {
            return deny(Reason::UnknownDevice, UNKNOWN_DEVICE_ID);
        };
        if !mac_matches(link, device, network) {
            return deny(Reason::WrongMac, device.device_id);
        }

        let key = SessionKey {
            device_id: device.device_id,
            resource_id: rule.resource_id,
        };
        let Some(session) = self.tables.sessions.get(&key) else {
            return deny(Reason::NoSession, device.device_id);
        };
        if self.now_boot_ns >= session.expires_at_boot_ns {
            return deny(Reason::Expired, device.device_id);
        }
        Decision::pass(counters::PASS_SESSION, device.device_id, rule.resource_id)
    }

    /// Records the verdict of a first fragment. A first fragment classified otherwise than a
    /// fresh record of the same datagram turns the record into a deny, because the receiver
    /// may keep either of them.
    fn record_fragment(&mut self, network: &Network, packet: &Packet, decision: &Decision) {
        let passed = decision.reason.is_none();
        let mut value = FragmentValue {
            recorded_at_boot_ns: self.now_boot_ns,
            device_id: decision.device_id,
            resource_id: decision.resource_id,
            allowed: (passed || decision.monitor) as u8,
            counter: if passed {
                decision.pass_counter as u8
            } else {
                counters::PASS_MONITOR as u8
            },
            first_len: (packet.ip_end - packet.fragment_start) as u16,
            _pad: [0; 4],
        };
        let key = fragment_key(network, packet);
        if let Some(earlier) = self.state.fragments.get(&key)
            && fragment_fresh(earlier, self.now_boot_ns)
        {
            let agrees = earlier.allowed == value.allowed
                && earlier.counter == value.counter
                && earlier.device_id == value.device_id
                && earlier.resource_id == value.resource_id;
            if !agrees {
                value.allowed = 0;
            }
            value.first_len = value.first_len.max(earlier.first_len);
        }
        self.state.fragments.insert(key, value);
    }

    /// Passes a later fragment only when its datagram's first fragment passed, was recorded
    /// less than `FRAGMENT_TIMEOUT_NS` ago, and that pass is still valid, and when it starts
    /// past the first fragment's data. Drops every other later fragment as `deny_fragment`,
    /// in monitor mode too.
    fn later_fragment(&mut self, link: LinkKind, network: &Network, packet: &Packet) -> Verdict {
        let recorded = self
            .state
            .fragments
            .get(&fragment_key(network, packet))
            .copied();
        let ids = match recorded {
            Some(value)
                if value.allowed != 0
                    && fragment_fresh(&value, self.now_boot_ns)
                    && packet.fragment_offset >= value.first_len
                    && self.first_fragment_holds(link, network, &value) =>
            {
                return (XdpAction::Pass, value.counter as u32, None, None);
            }
            Some(value) => (value.device_id, value.resource_id),
            None => (UNKNOWN_DEVICE_ID, UNKNOWN_RESOURCE_ID),
        };
        self.send_punt(network, &packet.flow, ids, Reason::Fragment, false);
        (
            XdpAction::Drop,
            counters::DENY_FRAGMENT,
            Some(Reason::Fragment),
            None,
        )
    }

    /// Returns whether a first fragment's pass applies to a later fragment now. A pass on a
    /// session needs the same device at the source address, its MAC binding and a live
    /// session. Unprotected and monitor-mode passes needed no session and still apply.
    fn first_fragment_holds(
        &self,
        link: LinkKind,
        network: &Network,
        recorded: &FragmentValue,
    ) -> bool {
        if recorded.counter as u32 != counters::PASS_SESSION {
            return true;
        }
        let source = Network::address(&network.src, network.version);
        let Some(device) = self.tables.devices.get(&source) else {
            return false;
        };
        if device.device_id != recorded.device_id || !mac_matches(link, device, network) {
            return false;
        }
        let key = SessionKey {
            device_id: recorded.device_id,
            resource_id: recorded.resource_id,
        };
        self.tables
            .sessions
            .get(&key)
            .is_some_and(|session| self.now_boot_ns < session.expires_at_boot_ns)
    }

    fn deny_malformed(&mut self, network: Option<&Network>) -> Verdict {
        let unknown = Network {
            l3: 0,
            version: 0,
            src: [0; 16],
            dst: [0; 16],
            src_mac: [0; 6],
            dst_mac: [0; 6],
        };
        let ids = (UNKNOWN_DEVICE_ID, UNKNOWN_RESOURCE_ID);
        self.send_punt(
            network.unwrap_or(&unknown),
            &Flow::default(),
            ids,
            Reason::Malformed,
            false,
        );
        (
            XdpAction::Drop,
            counters::DENY_MALFORMED,
            Some(Reason::Malformed),
            None,
        )
    }

    fn send_punt(
        &mut self,
        network: &Network,
        flow: &Flow,
        (device_id, resource_id): (u32, u32),
        reason: Reason,
        monitor: bool,
    ) {
        let key = SessionKey {
            device_id,
            resource_id,
        };
        let interval = match self.tables.config.punt_interval_ns {
            0 => DEFAULT_PUNT_INTERVAL_NS,
            interval => interval,
        };
        let last = self.state.punt_limits.get(&key).copied();
        if last.is_some_and(|last| self.now_boot_ns.wrapping_sub(last) < interval) {
            self.side_counters.push(counters::PUNT_RATE_LIMITED);
            return;
        }
        self.state.punt_limits.insert(key, self.now_boot_ns);
        self.side_counters.push(counters::PUNT_SENT);
        self.punt = Some(PuntEvent {
            timestamp_boot_ns: self.now_boot_ns,
            device_id,
            resource_id,
            src: network.src,
            dst: network.dst,
            src_port: flow.src_port,
            dst_port: flow.dst_port,
            protocol: flow.protocol,
            reason: reason as u8,
            ip_version: network.version,
            monitor: monitor as u8,
        });
    }
}

/// Returns the record key of a fragment. IPv6 receivers ignore the next header of later
/// fragments, so an IPv6 key does too.
fn fragment_key(network: &Network, packet: &Packet) -> FragmentKey {
    FragmentKey {
        src: network.src,
        dst: network.dst,
        id: packet.fragment_id,
        protocol: if network.version == 4 {
            packet.fragment_protocol
        } else {
            0
        },
        ip_version: network.version,
        _pad: [0; 2],
    }
}

/// Returns whether a record still applies at `now_boot_ns`. A record from the future does not.
fn fragment_fresh(recorded: &FragmentValue, now_boot_ns: u64) -> bool {
    now_boot_ns.wrapping_sub(recorded.recorded_at_boot_ns) < FRAGMENT_TIMEOUT_NS
}

/// Returns whether a reject may reply to the packet: never a RST (RFC 793), never an ICMP
/// error (RFC 1122 3.2.2), never a frame from or to a group MAC address, and never from or
/// to a multicast, broadcast, unspecified, loopback or class E address (RFC 1812 4.3.2.7).
fn reply_allowed(network: &Network, packet: &Packet) -> bool {
    if packet.tcp_reset || packet.icmp_error {
        return false;
    }
    let special = |address: &[u8; 16]| {
        if network.version == 4 {
            let v4 = std::net::Ipv4Addr::new(address[0], address[1], address[2], address[3]);
            // 240.0.0.0/4 (class E) contains the broadcast address.
            v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.octets()[0] >= 240
        } else {
            let v6 = std::net::Ipv6Addr::from(*address);
            v6.is_unspecified() || v6.is_loopback() || v6.is_multicast()
        }
    };
    // Bit 0 of the first MAC byte is the group (broadcast or multicast) bit.
    let group_mac = network.dst_mac[0] & 1 != 0 || network.src_mac[0] & 1 != 0;
    !group_mac && !special(&network.src) && !special(&network.dst)
}

fn build_reply(frame: &[u8], network: &Network, packet: &Packet) -> Option<Vec<u8>> {
    let mut reply = Vec::with_capacity(network.l3 + 40 + 8 + ICMPV6_QUOTE_MAX);
    if network.l3 > 0 {
        reply.extend_from_slice(&frame[6..12]);
        reply.extend_from_slice(&frame[0..6]);
        reply.extend_from_slice(&frame[12..network.l3]);
    }
    if packet.protocol == ip_protocol::TCP {
        let reset = tcp_reset(frame, network, packet);
        reply.extend_from_slice(&ip_header(network, ip_protocol::TCP, reset.len()));
        reply.extend_from_slice(&reset);
    } else {
        let datagram = &frame[network.l3..packet.ip_end];
        let (quote_len, protocol, icmp_type, icmp_code) = if network.version == 4 {
            let header_len = packet.l4 - network.l3;
            (datagram.len().min(header_len + 8), ip_protocol::ICMP, 3, 13)
        } else {
            let quote_len = datagram.len().min(ICMPV6_QUOTE_MAX);
            (quote_len, ip_protocol::ICMPV6, 1, 1)
        };
        let quote = &datagram[..quote_len];
        let mut icmp = vec![icmp_type, icmp_code, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quote);
        let mut sum = 0;
        if network.version == 6 {
            sum = pseudo_header_sum(network, protocol, icmp.len());
        }
        let sum = checksum::finish(checksum::add(sum, &icmp));
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        reply.extend_from_slice(&ip_header(network, protocol, icmp.len()));
        reply.extend_from_slice(&icmp);
    }
    Some(reply)
}

/// Returns the RST for the segment (RFC 793 reset generation): `seq = SEG.ACK` if the
/// segment had ACK, otherwise `seq = 0, ack = SEG.SEQ + SEG.LEN` with ACK set.
fn tcp_reset(frame: &[u8], network: &Network, packet: &Packet) -> [u8; 20] {
    let segment = &frame[packet.l4..packet.l4 + 20];
    let flags = segment[13];
    let header_len = (segment[12] >> 4) as usize * 4;
    let mut reset = [0u8; 20];
    reset[0..2].copy_from_slice(&segment[2..4]);
    reset[2..4].copy_from_slice(&segment[0..2]);
    if flags & 0x10 != 0 {
        reset[4..8].copy_from_slice(&segment[8..12]);
        reset[13] = 0x04;
    } else {
        let seq = u32::from_be_bytes([segment[4], segment[5], segment[6], segment[7]]);
        let mut segment_len = (packet.ip_end - packet.l4 - header_len) as u32;
        segment_len += (flags & 0x02 != 0) as u32 + (flags & 0x01 != 0) as u32;
        reset[8..12].copy_from_slice(&seq.wrapping_add(segment_len).to_be_bytes());
        reset[13] = 0x04 | 0x10;
    }
    reset[12] = 5 << 4;
    let sum = pseudo_header_sum(network, ip_protocol::TCP, 20);
    let sum = checksum::finish(checksum::add(sum, &reset));
    reset[16..18].copy_from_slice(&sum.to_be_bytes());
    reset
}

fn ip_header(network: &Network, protocol: u8, payload_len: usize) -> Vec<u8> {
    if network.version == 4 {
        let mut header = [0u8; 20];
        header[0] = 0x45;
        header[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
        header[8] = HOP_LIMIT;
        header[9] = protocol;
        header[12..16].copy_from_slice(&network.dst[..4]);
        header[16..20].copy_from_slice(&network.src[..4]);
        let sum = checksum::finish(checksum::add(0, &header));
        header[10..12].copy_from_slice(&sum.to_be_bytes());
        header.to_vec()
    } else {
        let mut header = [0u8; 40];
        header[0] = 0x60;
        header[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
        header[6] = protocol;
        header[7] = HOP_LIMIT;
        header[8..24].copy_from_slice(&network.dst);
        header[24..40].copy_from_slice(&network.src);
        header.to_vec()
    }
}

fn pseudo_header_sum(network: &Network, protocol: u8, length: usize) -> u32 {
    let address_len = if network.version == 4 { 4 } else { 16 };
    let sum = checksum::add(0, &network.dst[..address_len]);
    let sum = checksum::add(sum, &network.src[..address_len]);
    sum + protocol as u32 + length as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_table_longest_match_wins() {
        let mut table = PrefixTable::default();
        let mut wide = PrefixRules {
            count: 1,
            ..Default::default()
        };
        wide.rules[0].resource_id = 1;
        let mut narrow = wide;
        narrow.rules[0].resource_id = 2;
        table.insert("198.51.100.0".parse().unwrap(), 24, wide);
        table.insert("198.51.100.128".parse().unwrap(), 25, narrow);

        let low = table.lookup("198.51.100.1".parse().unwrap()).unwrap();
        assert_eq!(low.rules[0].resource_id, 1);
        let high = table.lookup("198.51.100.200".parse().unwrap()).unwrap();
        assert_eq!(high.rules[0].resource_id, 2);
        assert!(table.lookup("203.0.113.1".parse().unwrap()).is_none());
    }

    #[test]
    fn mask_clears_host_bits() {
        assert_eq!(mask([203, 0, 113, 255], 25), [203, 0, 113, 128]);
        assert_eq!(mask([203, 0, 113, 255], 0), [0, 0, 0, 0]);
        assert_eq!(mask([203, 0, 113, 255], 32), [203, 0, 113, 255]);
    }

    const CLIENT: [u8; 4] = [192, 0, 2, 10];
    const SERVER: [u8; 4] = [198, 51, 100, 1];
    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const SSH: u32 = 10;

    /// Tables with one TCP 22 rule on 198.51.100.0/24 and device 1 at 192.0.2.10, bound to
    /// `CLIENT_MAC`, with a session for it that expires at boot time `expires_at_boot_ns`.
    fn fragment_tables(expires_at_boot_ns: u64) -> Tables {
        let mut tables = Tables::default();
        let mut rules = PrefixRules {
            count: 1,
            ..Default::default()
        };
        rules.rules[0] = ResourceRule {
            resource_id: SSH,
            port_lo: 22,
            port_hi: 22,
            protocol: ip_protocol::TCP,
            ..Default::default()
        };
        tables
            .prefixes
            .insert(IpAddr::from([198, 51, 100, 0]), 24, rules);
        let device = DeviceEntry {
            device_id: 1,
            flags: DEVICE_FLAG_MAC_BOUND,
            mac: CLIENT_MAC,
            _pad: [0; 2],
        };
        tables.devices.insert(IpAddr::from(CLIENT), device);
        let key = SessionKey {
            device_id: 1,
            resource_id: SSH,
        };
        tables
            .sessions
            .insert(key, SessionValue { expires_at_boot_ns });
        tables
    }

    /// Returns an Ethernet frame with an IPv4 fragment from `CLIENT` to `SERVER`; offset 0
    /// carries a TCP header to port 22.
    fn fragment_frame(src_mac: [u8; 6], offset_units: u16, more: bool) -> Vec<u8> {
        let mut payload = vec![0u8; 24];
        if offset_units == 0 {
            payload[2..4].copy_from_slice(&22u16.to_be_bytes());
            payload[12] = 5 << 4;
        }
        let mut frame = vec![0u8; ETH_HLEN];
        frame[6..12].copy_from_slice(&src_mac);
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut header = [0u8; 20];
        header[0] = 0x45;
        header[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        header[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
        let field = offset_units | if more { 0x2000 } else { 0 };
        header[6..8].copy_from_slice(&field.to_be_bytes());
        header[8] = 64;
        header[9] = ip_protocol::TCP;
        header[12..16].copy_from_slice(&CLIENT);
        header[16..20].copy_from_slice(&SERVER);
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&payload);
        frame
    }

    /// Passes the first fragment at boot time 10 and returns the outcome of the later one,
    /// sent from `src_mac` at `now_boot_ns` with `tables`.
    fn later_fragment_outcome(tables: &Tables, src_mac: [u8; 6], now_boot_ns: u64) -> Outcome {
        let mut state = State::default();
        let first = fragment_frame(CLIENT_MAC, 0, true);
        let outcome = classify(&first, LinkKind::Ethernet, tables, &mut state, 10);
        assert_eq!(outcome.action, XdpAction::Pass, "first fragment");
        let later = fragment_frame(src_mac, 3, false);
        classify(&later, LinkKind::Ethernet, tables, &mut state, now_boot_ns)
    }

    #[test]
    fn later_fragment_passes_on_live_session() {
        let outcome = later_fragment_outcome(&fragment_tables(100), CLIENT_MAC, 50);
        assert_eq!(outcome.action, XdpAction::Pass);
        assert_eq!(outcome.verdict_counter, counters::PASS_SESSION);
    }

    #[test]
    fn later_fragment_denied_after_expiry() {
        let outcome = later_fragment_outcome(&fragment_tables(100), CLIENT_MAC, 100);
        assert_eq!(outcome.action, XdpAction::Drop);
        assert_eq!(outcome.verdict_counter, counters::DENY_FRAGMENT);
    }

    #[test]
    fn later_fragment_denied_after_revocation() {
        let live = fragment_tables(100);
        let mut state = State::default();
        let first = fragment_frame(CLIENT_MAC, 0, true);
        classify(&first, LinkKind::Ethernet, &live, &mut state, 10);
        let mut revoked = live.clone();
        revoked.sessions.clear();
        let later = fragment_frame(CLIENT_MAC, 3, false);
        let outcome = classify(&later, LinkKind::Ethernet, &revoked, &mut state, 20);
        assert_eq!(outcome.action, XdpAction::Drop);
        assert_eq!(outcome.verdict_counter, counters::DENY_FRAGMENT);
    }

    #[test]
    fn later_fragment_denied_from_wrong_mac() {
        let outcome = later_fragment_outcome(&fragment_tables(100), [2, 0, 0, 0, 0, 0xee], 50);
        assert_eq!(outcome.action, XdpAction::Drop);
        assert_eq!(outcome.verdict_counter, counters::DENY_FRAGMENT);
    }

    #[test]
    fn later_fragment_denied_after_conflicting_first() {
        let tables = fragment_tables(100);
        let mut state = State::default();
        let first = fragment_frame(CLIENT_MAC, 0, true);
        classify(&first, LinkKind::Ethernet, &tables, &mut state, 10);
        // The same datagram's first fragment again, to port 80, which no rule covers.
        let mut decoy = first.clone();
        decoy[ETH_HLEN + 20 + 2..ETH_HLEN + 20 + 4].copy_from_slice(&80u16.to_be_bytes());
        let outcome = classify(&decoy, LinkKind::Ethernet, &tables, &mut state, 20);
        assert_eq!(outcome.verdict_counter, counters::PASS_UNPROTECTED);
        let later = fragment_frame(CLIENT_MAC, 3, false);
        let outcome = classify(&later, LinkKind::Ethernet, &tables, &mut state, 30);
        assert_eq!(outcome.action, XdpAction::Drop);
        assert_eq!(outcome.verdict_counter, counters::DENY_FRAGMENT);
    }

    #[test]
    fn later_fragment_denied_when_overlapping_first() {
        // The first fragment carries 24 bytes of data, so offset 2 (16 bytes) overlaps it.
        let tables = fragment_tables(100);
        let mut state = State::default();
        let first = fragment_frame(CLIENT_MAC, 0, true);
        classify(&first, LinkKind::Ethernet, &tables, &mut state, 10);
        let overlapping = fragment_frame(CLIENT_MAC, 2, false);
        let outcome = classify(&overlapping, LinkKind::Ethernet, &tables, &mut state, 20);
        assert_eq!(outcome.action, XdpAction::Drop);
        assert_eq!(outcome.verdict_counter, counters::DENY_FRAGMENT);
    }

    #[test]
    fn later_fragment_denied_after_timeout() {
        let expires_at_boot_ns = 10 + 2 * FRAGMENT_TIMEOUT_NS;
        let tables = fragment_tables(expires_at_boot_ns);
        let in_time = later_fragment_outcome(&tables, CLIENT_MAC, 9 + FRAGMENT_TIMEOUT_NS);
        assert_eq!(in_time.action, XdpAction::Pass);
        let late = later_fragment_outcome(&tables, CLIENT_MAC, 10 + FRAGMENT_TIMEOUT_NS);
        assert_eq!(late.action, XdpAction::Drop);
        assert_eq!(late.verdict_counter, counters::DENY_FRAGMENT);
    }

    #[test]
    fn checksum_of_header_with_its_checksum_is_zero() {
        let network = Network {
            l3: 0,
            version: 4,
            src: [192, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [198, 51, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_mac: [0; 6],
            dst_mac: [0; 6],
        };
        let header = ip_header(&network, ip_protocol::TCP, 20);
        assert_eq!(checksum::finish(checksum::add(0, &header)), 0);
    }
}
