//! Crafted packets through the real XDP program with `BPF_PROG_TEST_RUN`: each case checks
//! the XDP action, the verdict counter, the reply bytes (parsed back, checksums verified), and
//! that the reference classifier returns the same verdict and the same reply.

use std::net::IpAddr;

use common::{
    Action, CONFIG_FLAG_MONITOR_ALL, Config, DEVICE_FLAG_MAC_BOUND, DeviceEntry, PROTOCOL_ANY,
    PrefixRules, RULE_FLAG_ANY_PORT, RULE_FLAG_MONITOR, Reason, ResourceRule, SessionKey,
    SessionValue, counters,
};
use enforcer::dataplane::reference::{self, LinkKind, State, Tables, XdpAction};
use enforcer_tests::{
    datapath::{TestProgram, boot_ns_now, drain_punts},
    packets::*,
    require_root,
};

const DEVICE_A: [u8; 4] = [192, 0, 2, 10];
const DEVICE_A_ID: u32 = 1;
const DEVICE_B: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
const DEVICE_B_ID: u32 = 2;
const UNKNOWN_V4: [u8; 4] = [192, 0, 2, 99];
const UNKNOWN_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99,
];
const WRONG_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];

/// 198.51.100.0/24: TCP 22 (reject, live session for A), UDP 53 (drop, expired for A),
/// ICMP (reject, no session).
const SERVER: [u8; 4] = [198, 51, 100, 1];
/// Inside 198.51.100.128/25, whose own rule (any protocol, drop) comes before the inherited
/// ones.
const SERVER_NARROW: [u8; 4] = [198, 51, 100, 200];
/// 203.0.113.0/24: any protocol, monitor mode.
const MONITORED: [u8; 4] = [203, 0, 113, 5];
/// Not protected.
const PORTAL: [u8; 4] = [192, 0, 2, 1];
/// 2001:db8:100::/48: any protocol, reject, live session for B.
const SERVER_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

const SSH: u32 = 10;
const DNS: u32 = 11;
const PING: u32 = 12;
const NARROW_ANY: u32 = 20;
const MONITOR_ANY: u32 = 30;
const V6_ANY: u32 = 40;

fn rule(resource_id: u32, protocol: u8, ports: (u16, u16), action: Action) -> ResourceRule {
    ResourceRule {
        resource_id,
        port_lo: ports.0,
        port_hi: ports.1,
        protocol,
        action: action as u8,
        ..Default::default()
    }
}

fn any_port(mut rule: ResourceRule) -> ResourceRule {
    rule.flags |= RULE_FLAG_ANY_PORT;
    rule
}

fn rules(list: &[ResourceRule]) -> PrefixRules {
    let mut rules = PrefixRules {
        count: list.len() as u32,
        ..Default::default()
    };
    rules.rules[..list.len()].copy_from_slice(list);
    rules
}

/// Builds the tables once and writes the same entries into the kernel maps.
fn setup() -> (TestProgram, Tables) {
    let mut program = TestProgram::load().unwrap();
    let mut tables = Tables::default();

    let ssh = rule(SSH, IPPROTO_TCP, (22, 22), Action::Reject);
    let dns = rule(DNS, IPPROTO_UDP, (53, 53), Action::Drop);
    let ping = any_port(rule(PING, IPPROTO_ICMP, (0, 0), Action::Reject));
    let narrow = any_port(rule(NARROW_ANY, PROTOCOL_ANY, (0, 0), Action::Drop));
    let mut monitor = any_port(rule(MONITOR_ANY, PROTOCOL_ANY, (0, 0), Action::Drop));
    monitor.flags |= RULE_FLAG_MONITOR;
    let v6 = any_port(rule(V6_ANY, PROTOCOL_ANY, (0, 0), Action::Reject));
    let prefixes: [(IpAddr, u8, PrefixRules); 4] = [
        (
            IpAddr::from([198, 51, 100, 0]),
            24,
            rules(&[ssh, dns, ping]),
        ),
        (
            IpAddr::from([198, 51, 100, 128]),
            25,
            rules(&[narrow, ssh, dns, ping]),
        ),
        (IpAddr::from([203, 0, 113, 0]), 24, rules(&[monitor])),
        (
            IpAddr::from([0x2001, 0x0db8, 0x0100, 0, 0, 0, 0, 0u16]),
            48,
            rules(&[v6]),
        ),
    ];
    for (address, prefix_len, list) in prefixes {
        program
            .set_prefix(address, prefix_len as u32, list)
            .unwrap();
        tables.prefixes.insert(address, prefix_len, list);
    }

    let devices = [
        (
            IpAddr::from(DEVICE_A),
            DeviceEntry {
                device_id: DEVICE_A_ID,
                flags: DEVICE_FLAG_MAC_BOUND,
                mac: CLIENT_MAC,
                _pad: [0; 2],
            },
        ),
        (
            IpAddr::from(DEVICE_B),
            DeviceEntry {
                device_id: DEVICE_B_ID,
                ..Default::default()
            },
        ),
    ];
    for (address, device) in devices {
        program.set_device(address, device).unwrap();
        tables.devices.insert(address, device);
    }

    let live = SessionValue {
        expires_at_boot_ns: boot_ns_now() + 3_600_000_000_000,
    };
    let expired = SessionValue {
        expires_at_boot_ns: 1,
    };
    let sessions = [
        (DEVICE_A_ID, SSH, live),
        (DEVICE_A_ID, DNS, expired),
        (DEVICE_B_ID, V6_ANY, live),
    ];
    for (device_id, resource_id, value) in sessions {
        let key = SessionKey {
            device_id,
            resource_id,
        };
        program.set_session(key, value).unwrap();
        tables.sessions.insert(key, value);
    }
    (program, tables)
}

/// One crafted frame and what the program must do with it.
struct Case {
    name: &'static str,
    link: LinkKind,
    frame: Vec<u8>,
    action: XdpAction,
    counter: u32,
}

fn case(name: &'static str, frame: Vec<u8>, action: XdpAction, counter: u32) -> Case {
    Case {
        name,
        link: LinkKind::Ethernet,
        frame,
        action,
        counter,
    }
}

fn eth_v4(src_mac: [u8; 6], tags: &[u16], packet: Vec<u8>) -> Vec<u8> {
    ethernet(src_mac, tags, 0x0800, &packet)
}

fn eth_v6(packet: Vec<u8>) -> Vec<u8> {
    ethernet(CLIENT_MAC, &[], 0x86dd, &packet)
}

fn v4_tcp(src: [u8; 4], dst: [u8; 4], port: u16, flags: u8) -> Vec<u8> {
    Ipv4::new(src, dst, IPPROTO_TCP).packet(&tcp(40000, port, 1000, 2000, flags, b""))
}

fn ssh_from_a() -> Vec<u8> {
    eth_v4(CLIENT_MAC, &[], v4_tcp(DEVICE_A, SERVER, 22, TCP_ACK))
}

fn with_options(options: Vec<u8>) -> Vec<u8> {
    let mut header = Ipv4::new(DEVICE_A, SERVER, IPPROTO_TCP);
    header.options = options;
    eth_v4(
        CLIENT_MAC,
        &[],
        header.packet(&tcp(40000, 22, 1, 2, TCP_ACK, b"")),
    )
}

fn v4_fragment(src: [u8; 4], id: u16, offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut header = Ipv4::new(src, SERVER, IPPROTO_TCP);
    header.id = id;
    header.fragment_offset = offset;
    header.more_fragments = more;
    eth_v4(CLIENT_MAC, &[], header.packet(payload))
}

fn v6_tcp_chain(src: [u8; 16], chain: &[(u8, Vec<u8>)], segment: Vec<u8>) -> Vec<u8> {
    // `chain` lists (header type, header bytes); each header's next-header byte is patched.
    let mut payload = Vec::new();
    let first = chain.first().map_or(IPPROTO_TCP, |(kind, _)| *kind);
    for (index, (_, header)) in chain.iter().enumerate() {
        let mut header = header.clone();
        header[0] = chain.get(index + 1).map_or(IPPROTO_TCP, |(kind, _)| *kind);
        payload.extend_from_slice(&header);
    }
    payload.extend_from_slice(&segment);
    eth_v6(ipv6(src, SERVER_V6, first, &payload))
}

fn quoted_v4(protocol: u8, src_port: u16, dst_port: u16) -> Vec<u8> {
    // A packet the resource sent to device A, as an ICMP error quotes it: header + 8 bytes.
    let inner = Ipv4::new(SERVER, DEVICE_A, protocol).packet(&udp(src_port, dst_port, b""));
    let mut rest = vec![0u8; 4];
    rest.extend_from_slice(&inner[..28]);
    eth_v4(
        CLIENT_MAC,
        &[],
        Ipv4::new(DEVICE_A, SERVER, IPPROTO_ICMP).packet(&icmp(3, 3, &rest)),
    )
}

/// Returns an ICMPv6 error from device B quoting a TCP packet that the resource sent to B,
/// with the extension headers `chain` whose first type is `next_header`.
fn icmpv6_error_quoting(next_header: u8, chain: &[u8]) -> Vec<u8> {
    let mut quoted_payload = chain.to_vec();
    quoted_payload.extend_from_slice(&tcp(443, 40000, 5, 6, 0, b"")[..8]);
    let inner = ipv6(SERVER_V6, DEVICE_B, next_header, &quoted_payload);
    let mut rest = vec![0u8; 4];
    rest.extend_from_slice(&inner);
    eth_v6(ipv6(
        DEVICE_B,
        SERVER_V6,
        IPPROTO_ICMPV6,
        &icmp(1, 4, &rest),
    ))
}

fn truncate(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

fn cases() -> Vec<Case> {
    use XdpAction::{Drop, Pass, Tx};
    let dest_options = (60u8, ipv6_options(0));
    let mut list = vec![
        case(
            "tcp with live session",
            ssh_from_a(),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "not ip",
            ethernet(CLIENT_MAC, &[], 0x0806, &[0u8; 28]),
            Pass,
            counters::PASS_NOT_IP,
        ),
        case(
            "unprotected destination",
            eth_v4(CLIENT_MAC, &[], v4_tcp(UNKNOWN_V4, PORTAL, 443, TCP_SYN)),
            Pass,
            counters::PASS_UNPROTECTED,
        ),
        case(
            "truncated tcp to unprotected destination",
            truncate(
                eth_v4(CLIENT_MAC, &[], v4_tcp(UNKNOWN_V4, PORTAL, 443, TCP_SYN)),
                40,
            ),
            Pass,
            counters::PASS_UNPROTECTED,
        ),
        case(
            "ipv4 options ihl 6",
            with_options(vec![1, 1, 1, 0]),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "ipv4 options ihl 15",
            with_options(vec![1; 40]),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "ipv4 ihl below 5",
            {
                let mut frame = ssh_from_a();
                frame[14] = 0x44;
                frame
            },
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "ipv4 total length beyond frame",
            {
                let mut frame = ssh_from_a();
                frame[16..18].copy_from_slice(&200u16.to_be_bytes());
                frame
            },
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "ipv4 header truncated",
            truncate(ssh_from_a(), 14 + 19),
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "tcp header truncated",
            {
                let packet = Ipv4::new(DEVICE_A, SERVER, IPPROTO_TCP).packet(&[0u8; 12]);
                eth_v4(CLIENT_MAC, &[], packet)
            },
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "tcp data offset below 5",
            {
                let mut frame = ssh_from_a();
                frame[14 + 20 + 12] = 4 << 4;
                frame
            },
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "udp header truncated",
            eth_v4(
                CLIENT_MAC,
                &[],
                Ipv4::new(DEVICE_A, SERVER, IPPROTO_UDP).packet(&[0u8; 6]),
            ),
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "icmp header truncated",
            eth_v4(
                CLIENT_MAC,
                &[],
                Ipv4::new(DEVICE_A, SERVER, IPPROTO_ICMP).packet(&[8, 0, 0, 0]),
            ),
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "vlan tag truncated",
            truncate(eth_v4(CLIENT_MAC, &[0x8100], Vec::new()), 16),
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "one vlan tag",
            eth_v4(CLIENT_MAC, &[0x8100], v4_tcp(DEVICE_A, SERVER, 22, TCP_ACK)),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "two vlan tags",
            eth_v4(
                CLIENT_MAC,
                &[0x88a8, 0x8100],
                v4_tcp(DEVICE_A, SERVER, 22, TCP_ACK),
            ),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "three vlan tags",
            eth_v4(
                CLIENT_MAC,
                &[0x88a8, 0x8100, 0x8100],
                v4_tcp(DEVICE_A, SERVER, 22, TCP_ACK),
            ),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "three vlan tags unknown device rejected",
            eth_v4(
                CLIENT_MAC,
                &[0x88a8, 0x8100, 0x8100],
                v4_tcp(UNKNOWN_V4, SERVER, 22, TCP_SYN),
            ),
            Tx,
            counters::DENY_UNKNOWN_DEVICE,
        ),
        case(
            "four vlan tags",
            eth_v4(
                CLIENT_MAC,
                &[0x88a8, 0x8100, 0x8100, 0x8100],
                v4_tcp(DEVICE_A, SERVER, 22, TCP_ACK),
            ),
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "wrong mac rejected",
            eth_v4(WRONG_MAC, &[], v4_tcp(DEVICE_A, SERVER, 22, TCP_ACK)),
            Tx,
            counters::DENY_WRONG_MAC,
        ),
        case(
            "unknown device syn rejected",
            eth_v4(
                CLIENT_MAC,
                &[],
                Ipv4::new(UNKNOWN_V4, SERVER, IPPROTO_TCP)
                    .packet(&tcp(40000, 22, 7777, 0, TCP_SYN, b"")),
            ),
            Tx,
            counters::DENY_UNKNOWN_DEVICE,
        ),
        case(
            "unknown device data with fin rejected",
            eth_v4(
                CLIENT_MAC,
                &[],
                Ipv4::new(UNKNOWN_V4, SERVER, IPPROTO_TCP)
                    .packet(&tcp(40000, 22, 7777, 0, TCP_FIN, b"hello")),
            ),
            Tx,
            counters::DENY_UNKNOWN_DEVICE,
        ),
        case(
            "unknown device rst dropped without reply",
            eth_v4(CLIENT_MAC, &[], v4_tcp(UNKNOWN_V4, SERVER, 22, TCP_RST)),
            Drop,
            counters::DENY_UNKNOWN_DEVICE,
        ),
        case(
            "expired session dropped",
            eth_v4(
                CLIENT_MAC,
                &[],
                Ipv4::new(DEVICE_A, SERVER, IPPROTO_UDP).packet(&udp(5000, 53, b"q")),
            ),
            Drop,
            counters::DENY_EXPIRED,
        ),
        case(
            "icmp echo without session rejected",
            eth_v4(
                CLIENT_MAC,
                &[],
                Ipv4::new(DEVICE_A, SERVER, IPPROTO_ICMP).packet(&icmp(8, 0, &[0, 1, 0, 1])),
            ),
            Tx,
            counters::DENY_NO_SESSION,
        ),
        case(
            "udp to unmatched port passes",
            eth_v4(
                CLIENT_MAC,
                &[],
                Ipv4::new(UNKNOWN_V4, SERVER, IPPROTO_UDP).packet(&udp(5000, 5353, b"")),
            ),
            Pass,
            counters::PASS_UNPROTECTED,
        ),
        case(
            "most specific prefix rule wins",
            eth_v4(
                CLIENT_MAC,
                &[],
                v4_tcp(DEVICE_A, SERVER_NARROW, 22, TCP_ACK),
            ),
            Drop,
            counters::DENY_NO_SESSION,
        ),
        case(
            "monitor mode passes",
            eth_v4(CLIENT_MAC, &[], v4_tcp(UNKNOWN_V4, MONITORED, 80, TCP_SYN)),
            Pass,
            counters::PASS_MONITOR,
        ),
        case(
            "icmp error quoting allowed flow",
            quoted_v4(IPPROTO_TCP, 22, 40000),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "icmp error quoting denied flow",
            quoted_v4(IPPROTO_UDP, 53, 5000),
            Drop,
            counters::DENY_EXPIRED,
        ),
        case(
            "icmp error quote truncated",
            {
                let inner = Ipv4::new(SERVER, DEVICE_A, IPPROTO_UDP).packet(&udp(53, 1, b""));
                let mut rest = vec![0u8; 4];
                rest.extend_from_slice(&inner[..22]);
                let packet = Ipv4::new(DEVICE_A, SERVER, IPPROTO_ICMP).packet(&icmp(3, 3, &rest));
                eth_v4(CLIENT_MAC, &[], packet)
            },
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "ipv4 first fragment allowed",
            v4_fragment(
                DEVICE_A,
                77,
                0,
                true,
                &tcp(40000, 22, 1, 2, TCP_ACK, &[0; 16]),
            ),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "ipv4 later fragment of allowed datagram",
            v4_fragment(DEVICE_A, 77, 5, false, &[0; 24]),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "ipv4 later fragment of allowed datagram from wrong mac",
            {
                let mut frame = v4_fragment(DEVICE_A, 77, 6, false, &[0; 24]);
                frame[6..12].copy_from_slice(&WRONG_MAC);
                frame
            },
            Drop,
            counters::DENY_FRAGMENT,
        ),
        case(
            "ipv4 later fragment never seen",
            v4_fragment(DEVICE_A, 78, 5, false, &[0; 24]),
            Drop,
            counters::DENY_FRAGMENT,
        ),
        case(
            "ipv4 first fragment denied",
            v4_fragment(
                UNKNOWN_V4,
                79,
                0,
                true,
                &tcp(40000, 22, 1, 2, TCP_ACK, &[0; 16]),
            ),
            Tx,
            counters::DENY_UNKNOWN_DEVICE,
        ),
        case(
            "ipv4 later fragment of denied datagram",
            v4_fragment(UNKNOWN_V4, 79, 5, false, &[0; 24]),
            Drop,
            counters::DENY_FRAGMENT,
        ),
        case(
            "ipv4 tiny first fragment",
            v4_fragment(
                DEVICE_A,
                80,
                0,
                true,
                &tcp(40000, 22, 1, 2, TCP_ACK, b"")[..8],
            ),
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "ipv6 tcp with live session",
            v6_tcp_chain(DEVICE_B, &[], tcp(40000, 443, 1, 2, TCP_ACK, b"")),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "ipv6 hop-by-hop and fragment before tcp",
            v6_tcp_chain(
                DEVICE_B,
                &[
                    (0, ipv6_options(0)),
                    (44, ipv6_fragment(0, 0, true, 0xabcd)),
                ],
                tcp(40000, 443, 1, 2, TCP_ACK, &[0; 16]),
            ),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "ipv6 later fragment of allowed datagram",
            eth_v6(ipv6(
                DEVICE_B,
                SERVER_V6,
                44,
                &[ipv6_fragment(IPPROTO_TCP, 5, false, 0xabcd), vec![0; 16]].concat(),
            )),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "ipv6 later fragment never seen",
            eth_v6(ipv6(
                DEVICE_B,
                SERVER_V6,
                44,
                &[ipv6_fragment(IPPROTO_TCP, 5, false, 0xabce), vec![0; 16]].concat(),
            )),
            Drop,
            counters::DENY_FRAGMENT,
        ),
        case(
            "ipv6 tiny first fragment",
            eth_v6(ipv6(
                DEVICE_B,
                SERVER_V6,
                44,
                &[ipv6_fragment(IPPROTO_TCP, 0, true, 0xabcf), vec![0; 8]].concat(),
            )),
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "ipv6 unknown next header from known device",
            eth_v6(ipv6(DEVICE_B, SERVER_V6, 253, &[0; 8])),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "ipv6 unknown next header from unknown device",
            eth_v6(ipv6(UNKNOWN_V6, SERVER_V6, 253, &[0; 8])),
            Tx,
            counters::DENY_UNKNOWN_DEVICE,
        ),
        case(
            "ipv6 tcp from unknown device rejected",
            v6_tcp_chain(UNKNOWN_V6, &[], tcp(40000, 443, 99, 0, TCP_SYN, b"")),
            Tx,
            counters::DENY_UNKNOWN_DEVICE,
        ),
        case(
            "ipv6 chain at the walk bound",
            v6_tcp_chain(
                DEVICE_B,
                &vec![dest_options.clone(); common::IPV6_EXT_MAX_DEPTH],
                tcp(40000, 443, 1, 2, TCP_ACK, b""),
            ),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "ipv6 chain longer than the walk bound",
            v6_tcp_chain(
                DEVICE_B,
                &vec![dest_options.clone(); common::IPV6_EXT_MAX_DEPTH + 1],
                tcp(40000, 443, 1, 2, TCP_ACK, b""),
            ),
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "ipv6 hop-by-hop after another header",
            v6_tcp_chain(
                DEVICE_B,
                &[dest_options.clone(), (0, ipv6_options(0))],
                tcp(40000, 443, 1, 2, TCP_ACK, b""),
            ),
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "ipv6 extension header truncated",
            truncate(
                v6_tcp_chain(
                    DEVICE_B,
                    std::slice::from_ref(&dest_options),
                    tcp(40000, 443, 1, 2, TCP_ACK, b""),
                ),
                14 + 40 + 4,
            ),
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "ipv6 header truncated",
            truncate(eth_v6(ipv6(DEVICE_B, SERVER_V6, 59, &[])), 14 + 30),
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "icmpv6 error quoting extension headers",
            icmpv6_error_quoting(
                0,
                &[
                    ipv6_options(60),
                    ipv6_options(43),
                    vec![44, 0, 0, 0, 0, 0, 0, 0],
                    ipv6_fragment(IPPROTO_TCP, 0, true, 0x5151),
                ]
                .concat(),
            ),
            Pass,
            counters::PASS_SESSION,
        ),
        case(
            "icmpv6 error quoting later fragment",
            icmpv6_error_quoting(44, &ipv6_fragment(IPPROTO_TCP, 3, true, 0x5152)),
            Drop,
            counters::DENY_MALFORMED,
        ),
        case(
            "icmpv6 error quoting allowed flow",
            {
                let inner = ipv6(
                    SERVER_V6,
                    DEVICE_B,
                    IPPROTO_TCP,
                    &tcp(443, 40000, 5, 6, 0, b""),
                );
                let mut rest = vec![0u8; 4];
                rest.extend_from_slice(&inner[..48]);
                eth_v6(ipv6(
                    DEVICE_B,
                    SERVER_V6,
                    IPPROTO_ICMPV6,
                    &icmp(1, 4, &rest),
                ))
            },
            Pass,
            counters::PASS_SESSION,
        ),
    ];
    list.push(Case {
        name: "raw ip ignores mac binding",
        link: LinkKind::RawIp,
        frame: v4_tcp(DEVICE_A, SERVER, 22, TCP_ACK),
        action: XdpAction::Pass,
        counter: counters::PASS_SESSION,
    });
    list.push(Case {
        name: "raw ip unknown device rejected",
        link: LinkKind::RawIp,
        frame: Ipv4::new(UNKNOWN_V4, SERVER, IPPROTO_TCP)
            .packet(&tcp(40000, 22, 5, 0, TCP_SYN, b"")),
        action: XdpAction::Tx,
        counter: counters::DENY_UNKNOWN_DEVICE,
    });
    list.push(Case {
        name: "raw ip icmpv6 reject",
        link: LinkKind::RawIp,
        frame: ipv6(UNKNOWN_V6, SERVER_V6, IPPROTO_UDP, &udp(5000, 9, b"data")),
        action: XdpAction::Tx,
        counter: counters::DENY_UNKNOWN_DEVICE,
    });
    list
}

#[test]
fn verifier_accepts_both_entry_points() {
    require_root();
    let mut program = TestProgram::load().unwrap();
    for link in [LinkKind::Ethernet, LinkKind::RawIp] {
        let instructions = program.verified_instructions(link).unwrap();
        println!("{link:?}: {instructions} verified instructions");
        assert!(
            instructions < 500_000,
            "{link:?} verified {instructions} instructions, over half the 1M limit"
        );
    }
}

#[test]
fn crafted_packets_match_expected_verdicts() {
    require_root();
    let (mut program, tables) = setup();
    let mut state = State::default();
    for case in cases() {
        let before = program.counters().unwrap();
        let result = program.run(case.link, &case.frame).unwrap();
        let after = program.counters().unwrap();
        let expected =
            reference::classify(&case.frame, case.link, &tables, &mut state, boot_ns_now());

        assert_eq!(
            result.action,
            case.action.code(),
            "{}: XDP action",
            case.name
        );
        let bumped = after[case.counter as usize] - before[case.counter as usize];
        assert_eq!(
            bumped,
            1,
            "{}: counter {}",
            case.name,
            counters::NAMES[case.counter as usize]
        );
        assert_eq!(
            expected.action, case.action,
            "{}: reference action",
            case.name
        );
        assert_eq!(
            expected.verdict_counter, case.counter,
            "{}: reference counter",
            case.name
        );
        if case.action == XdpAction::Tx {
            assert_eq!(
                expected.reply.as_deref(),
                Some(result.output.as_slice()),
                "{}: reference reply bytes",
                case.name
            );
            check_reply(&case, &result.output);
        }
    }
}

/// Parses a reply back and checks its addresses, checksums and transport fields.
fn check_reply(case: &Case, reply: &[u8]) {
    let (original_l3, reply_l3) = match case.link {
        LinkKind::Ethernet => {
            assert_eq!(
                reply[0..6],
                case.frame[6..12],
                "{}: destination MAC",
                case.name
            );
            assert_eq!(reply[6..12], case.frame[0..6], "{}: source MAC", case.name);
            let l2_len = l2_len(&case.frame);
            assert_eq!(
                reply[12..l2_len],
                case.frame[12..l2_len],
                "{}: VLAN tags and ethertype",
                case.name
            );
            (l2_len, l2_len)
        }
        LinkKind::RawIp => (0, 0),
    };
    let original = &case.frame[original_l3..];
    let packet = &reply[reply_l3..];
    if packet[0] >> 4 == 4 {
        check_ipv4_reply(case, original, packet);
    } else {
        check_ipv6_reply(case, original, packet);
    }
}

fn l2_len(frame: &[u8]) -> usize {
    let mut offset = 12;
    while matches!(
        u16::from_be_bytes([frame[offset], frame[offset + 1]]),
        0x8100 | 0x88a8
    ) {
        offset += 4;
    }
    offset + 2
}

fn check_ipv4_reply(case: &Case, original: &[u8], packet: &[u8]) {
    let name = case.name;
    assert_eq!(packet[0], 0x45, "{name}: IPv4 version and IHL");
    assert!(
        checksum_valid(0, &packet[..20]),
        "{name}: IPv4 header checksum"
    );
    assert_eq!(packet[12..16], original[16..20], "{name}: reply source");
    assert_eq!(
        packet[16..20],
        original[12..16],
        "{name}: reply destination"
    );
    let total = u16::from_be_bytes([packet[2], packet[3]]) as usize;
    assert_eq!(total, packet.len(), "{name}: IPv4 total length");
    let original_header = (original[0] & 0x0f) as usize * 4;
    let payload = &packet[20..];
    let pseudo = pseudo_header(&packet[12..16], &packet[16..20], packet[9], payload.len());
    if original[9] == IPPROTO_TCP {
        assert_eq!(packet[9], IPPROTO_TCP, "{name}: reply protocol");
        check_reset_fields(
            name,
            &original[original_header..],
            payload,
            original_total(original) - original_header,
        );
        assert!(checksum_valid(pseudo, payload), "{name}: TCP checksum");
    } else {
        assert_eq!(packet[9], IPPROTO_ICMP, "{name}: reply protocol");
        assert_eq!(payload[0..2], [3, 13], "{name}: ICMP type and code");
        assert!(checksum_valid(0, payload), "{name}: ICMP checksum");
        let quote_len = (original_header + 8).min(original.len());
        assert_eq!(
            payload[8..],
            original[..quote_len],
            "{name}: quoted header and 8 bytes"
        );
    }
}

fn original_total(original: &[u8]) -> usize {
    if original[0] >> 4 == 4 {
        u16::from_be_bytes([original[2], original[3]]) as usize
    } else {
        40 + u16::from_be_bytes([original[4], original[5]]) as usize
    }
}

fn check_ipv6_reply(case: &Case, original: &[u8], packet: &[u8]) {
    let name = case.name;
    assert_eq!(packet[0] >> 4, 6, "{name}: IPv6 version");
    assert_eq!(packet[8..24], original[24..40], "{name}: reply source");
    assert_eq!(packet[24..40], original[8..24], "{name}: reply destination");
    let payload_len = u16::from_be_bytes([packet[4], packet[5]]) as usize;
    assert_eq!(
        payload_len + 40,
        packet.len(),
        "{name}: IPv6 payload length"
    );
    let payload = &packet[40..];
    let pseudo = pseudo_header(&packet[8..24], &packet[24..40], packet[6], payload.len());
    if packet[6] == IPPROTO_TCP {
        // The cases only reject IPv6 TCP without extension headers.
        check_reset_fields(
            name,
            &original[40..],
            payload,
            original_total(original) - 40,
        );
        assert!(checksum_valid(pseudo, payload), "{name}: TCP checksum");
    } else {
        assert_eq!(packet[6], IPPROTO_ICMPV6, "{name}: reply next header");
        assert_eq!(payload[0..2], [1, 1], "{name}: ICMPv6 type and code");
        assert!(checksum_valid(pseudo, payload), "{name}: ICMPv6 checksum");
        let quote_len = original.len().min(128);
        assert_eq!(payload[8..], original[..quote_len], "{name}: quoted packet");
    }
}

/// Checks the RST against RFC 793: ports swapped, `seq = SEG.ACK` for a segment with ACK,
/// otherwise `seq = 0` and `ack = SEG.SEQ + SEG.LEN` with SYN and FIN counted.
fn check_reset_fields(name: &str, segment: &[u8], reset: &[u8], segment_total: usize) {
    assert_eq!(reset.len(), 20, "{name}: RST length");
    assert_eq!(reset[0..2], segment[2..4], "{name}: RST source port");
    assert_eq!(reset[2..4], segment[0..2], "{name}: RST destination port");
    let flags = segment[13];
    let be32 = |bytes: &[u8]| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if flags & TCP_ACK != 0 {
        assert_eq!(reset[13], TCP_RST, "{name}: RST flags");
        assert_eq!(be32(&reset[4..8]), be32(&segment[8..12]), "{name}: RST seq");
    } else {
        let header_len = (segment[12] >> 4) as usize * 4;
        let data_len = segment_total - header_len;
        let syn_fin = (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
        let expected_ack = be32(&segment[4..8]).wrapping_add(data_len as u32 + syn_fin);
        assert_eq!(reset[13], TCP_RST | TCP_ACK, "{name}: RST flags");
        assert_eq!(be32(&reset[4..8]), 0, "{name}: RST seq");
        assert_eq!(be32(&reset[8..12]), expected_ack, "{name}: RST ack");
    }
}

#[test]
fn punts_rate_limited_per_pair() {
    require_root();
    let (mut program, _tables) = setup();
    let mut punts = program.take_punts().unwrap();
    // An hour-long interval, so the test does not depend on how fast the runs follow.
    program
        .set_config(Config {
            punt_interval_ns: 3_600_000_000_000,
            flags: 0,
        })
        .unwrap();
    let denied = eth_v4(CLIENT_MAC, &[], v4_tcp(UNKNOWN_V4, SERVER, 22, TCP_ACK));
    let other_pair = eth_v4(
        CLIENT_MAC,
        &[],
        Ipv4::new(DEVICE_A, SERVER, IPPROTO_UDP).packet(&udp(5000, 53, b"")),
    );

    for _ in 0..3 {
        program.run(LinkKind::Ethernet, &denied).unwrap();
    }
    program.run(LinkKind::Ethernet, &other_pair).unwrap();
    let events = drain_punts(&mut punts);
    let unknown_device = events
        .iter()
        .filter(|event| event.device_id == 0 && event.resource_id == SSH)
        .count();
    assert_eq!(
        unknown_device, 1,
        "punts for (unknown device, ssh): {events:?}"
    );
    let expired = events
        .iter()
        .filter(|event| event.device_id == DEVICE_A_ID && event.resource_id == DNS)
        .count();
    assert_eq!(expired, 1, "punts for (device A, dns): {events:?}");
    let event = events
        .iter()
        .find(|event| event.resource_id == DNS)
        .expect("punt for the expired session");
    assert_eq!(event.reason, Reason::Expired as u8, "punt reason");
    assert_eq!(event.dst_port, 53, "punt destination port");
    assert_eq!(event.src_port, 5000, "punt source port");
    assert_eq!(event.protocol, IPPROTO_UDP, "punt protocol");
    assert_eq!(event.ip_version, 4, "punt IP version");
    assert_eq!(event.src[..4], DEVICE_A, "punt source address");
    assert_eq!(event.dst[..4], SERVER, "punt destination address");
    let limited = program.counters().unwrap()[counters::PUNT_RATE_LIMITED as usize];
    assert_eq!(limited, 2, "punt_rate_limited counter");

    // A 1 ns interval lets every deny through.
    program
        .set_config(Config {
            punt_interval_ns: 1,
            flags: 0,
        })
        .unwrap();
    for _ in 0..3 {
        program.run(LinkKind::Ethernet, &denied).unwrap();
    }
    let events = drain_punts(&mut punts);
    assert_eq!(events.len(), 3, "punts with a 1 ns interval: {events:?}");
}

#[test]
fn monitor_all_passes_and_punts() {
    require_root();
    let (mut program, _tables) = setup();
    let mut punts = program.take_punts().unwrap();
    program
        .set_config(Config {
            punt_interval_ns: 0,
            flags: CONFIG_FLAG_MONITOR_ALL,
        })
        .unwrap();
    let denied = eth_v4(CLIENT_MAC, &[], v4_tcp(UNKNOWN_V4, SERVER, 22, TCP_SYN));
    let result = program.run(LinkKind::Ethernet, &denied).unwrap();
    assert_eq!(result.action, XdpAction::Pass.code(), "XDP action");
    assert_eq!(result.output, denied, "frame left untouched");
    let malformed = truncate(ssh_from_a(), 14 + 19);
    let result = program.run(LinkKind::Ethernet, &malformed).unwrap();
    assert_eq!(
        result.action,
        XdpAction::Drop.code(),
        "malformed still dropped"
    );
    let events = drain_punts(&mut punts);
    let monitor_event = events
        .iter()
        .find(|event| event.resource_id == SSH)
        .expect("punt for the monitored deny");
    assert_eq!(monitor_event.monitor, 1, "monitor flag");
    assert_eq!(monitor_event.reason, Reason::UnknownDevice as u8, "reason");
}

/// An ICMP error whose quoted flow matches no rule is denied by the ICMP rule it matches as a
/// plain ICMP packet, and its punt reports that match: protocol ICMP and no ports.
#[test]
fn icmp_error_fallback_punts_icmp() {
    require_root();
    let (mut program, tables) = setup();
    let mut punts = program.take_punts().unwrap();
    let mut state = State::default();
    let frame = quoted_v4(IPPROTO_TCP, 80, 40000);
    let result = program.run(LinkKind::Ethernet, &frame).unwrap();
    let model = reference::classify(
        &frame,
        LinkKind::Ethernet,
        &tables,
        &mut state,
        boot_ns_now(),
    );
    assert_eq!(result.action, XdpAction::Drop.code(), "XDP action");
    assert_eq!(model.action, XdpAction::Drop, "reference action");
    assert_eq!(model.reason, Some(Reason::NoSession), "reference reason");

    let events = drain_punts(&mut punts);
    assert_eq!(events.len(), 1, "punts: {events:?}");
    let event = events[0];
    assert_eq!(event.resource_id, PING, "punt resource");
    assert_eq!(event.device_id, DEVICE_A_ID, "punt device");
    assert_eq!(event.protocol, IPPROTO_ICMP, "punt protocol");
    assert_eq!(event.src_port, 0, "punt source port");
    assert_eq!(event.dst_port, 0, "punt destination port");
    let model_event = model.punt.expect("reference punt");
    assert_eq!(
        model_event.protocol, IPPROTO_ICMP,
        "reference punt protocol"
    );
    assert_eq!(model_event.src_port, 0, "reference punt source port");
    assert_eq!(model_event.dst_port, 0, "reference punt destination port");
}
