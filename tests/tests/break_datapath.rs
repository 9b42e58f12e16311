//! Hostile packets through the real XDP program with `BPF_PROG_TEST_RUN`. Each test states the
//! verdict the data-path invariants require. Tests named `*_held` check a case the program
//! already handles. The others reproduce findings that are now fixed.

use std::net::IpAddr;

use common::{
    Action, CONFIG_FLAG_MONITOR_ALL, Config, DeviceEntry, FRAGMENT_TIMEOUT_NS, FragmentKey,
    FragmentValue, PROTOCOL_ANY, PrefixRules, RULE_FLAG_ANY_PORT, Reason, ResourceRule, SessionKey,
    SessionValue, counters, map_names,
};
use enforcer::dataplane::reference::LinkKind;
use enforcer_tests::{
    datapath::{TestProgram, boot_ns_now, drain_punts},
    packets::*,
    require_root,
};
use xdp_action::*;

/// XDP action numbers from `enum xdp_action` in the Linux UAPI.
mod xdp_action {
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const XDP_TX: u32 = 3;
}

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_GRE: u8 = 47;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_SCTP: u8 = 132;

/// Device with a live session for `SSH` only, bound to `CLIENT_MAC`.
const DEVICE_A: [u8; 4] = [192, 0, 2, 10];
const DEVICE_A_ID: u32 = 1;
/// Device without any session.
const DEVICE_C: [u8; 4] = [192, 0, 2, 30];
const DEVICE_C_ID: u32 = 3;
/// Another client whose flow device A quotes in a forged ICMP error.
const VICTIM: [u8; 4] = [192, 0, 2, 20];
/// IPv6 device with a session for `V6_SSH` only.
const DEVICE_B: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
const DEVICE_B_ID: u32 = 2;
/// IPv6 device without any session.
const DEVICE_C_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x30,
];

/// 198.51.100.0/24: TCP 22 (reject), ICMP any (reject), UDP 1-65535 (reject), SCTP 22
/// (reject).
const SERVER: [u8; 4] = [198, 51, 100, 1];
/// 203.0.113.0/24: any protocol, reject.
const SERVER_ANY: [u8; 4] = [203, 0, 113, 5];
/// 2001:db8:100::/48: TCP 22 (reject), any other protocol (reject).
const SERVER_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// Not protected.
const OUTSIDE: [u8; 4] = [192, 0, 2, 1];
const OUTSIDE_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

const SSH: u32 = 10;
const PING: u32 = 12;
const UDP_ALL: u32 = 13;
const SCTP_SSH: u32 = 14;
const ANY: u32 = 30;
const V6_SSH: u32 = 40;
const V6_ANY: u32 = 41;

fn rule(resource_id: u32, protocol: u8, ports: (u16, u16), any_port: bool) -> ResourceRule {
    ResourceRule {
        resource_id,
        port_lo: ports.0,
        port_hi: ports.1,
        protocol,
        action: Action::Reject as u8,
        flags: if any_port { RULE_FLAG_ANY_PORT } else { 0 },
        ..Default::default()
    }
}

fn rules(list: &[ResourceRule]) -> PrefixRules {
    let mut rules = PrefixRules {
        count: list.len() as u32,
        ..Default::default()
    };
    rules.rules[..list.len()].copy_from_slice(list);
    rules
}

fn live() -> SessionValue {
    SessionValue {
        expires_at_boot_ns: boot_ns_now() + 3_600_000_000_000,
    }
}

fn setup() -> TestProgram {
    require_root();
    let mut program = TestProgram::load().unwrap();
    let server_rules = rules(&[
        rule(SSH, IPPROTO_TCP, (22, 22), false),
        rule(PING, IPPROTO_ICMP, (0, 0), true),
        rule(UDP_ALL, IPPROTO_UDP, (1, 65535), false),
        rule(SCTP_SSH, IPPROTO_SCTP, (22, 22), false),
    ]);
    program
        .set_prefix(IpAddr::from([198, 51, 100, 0]), 24, server_rules)
        .unwrap();
    program
        .set_prefix(
            IpAddr::from([203, 0, 113, 0]),
            24,
            rules(&[rule(ANY, PROTOCOL_ANY, (0, 0), true)]),
        )
        .unwrap();
    program
        .set_prefix(
            IpAddr::from([0x2001, 0x0db8, 0x0100, 0, 0, 0, 0, 0u16]),
            48,
            rules(&[
                rule(V6_SSH, IPPROTO_TCP, (22, 22), false),
                rule(V6_ANY, PROTOCOL_ANY, (0, 0), true),
            ]),
        )
        .unwrap();

    let bound = DeviceEntry {
        device_id: DEVICE_A_ID,
        flags: common::DEVICE_FLAG_MAC_BOUND,
        mac: CLIENT_MAC,
        _pad: [0; 2],
    };
    program.set_device(IpAddr::from(DEVICE_A), bound).unwrap();
    let unbound = |device_id| DeviceEntry {
        device_id,
        ..Default::default()
    };
    program
        .set_device(IpAddr::from(DEVICE_C), unbound(DEVICE_C_ID))
        .unwrap();
    program
        .set_device(IpAddr::from(DEVICE_B), unbound(DEVICE_B_ID))
        .unwrap();
    program
        .set_session(
            SessionKey {
                device_id: DEVICE_A_ID,
                resource_id: SSH,
            },
            live(),
        )
        .unwrap();
    program
        .set_session(
            SessionKey {
                device_id: DEVICE_B_ID,
                resource_id: V6_SSH,
            },
            live(),
        )
        .unwrap();
    program
}

fn eth4(payload: &[u8]) -> Vec<u8> {
    ethernet(CLIENT_MAC, &[], ETH_P_IPV4, payload)
}

fn eth6(payload: &[u8]) -> Vec<u8> {
    ethernet(CLIENT_MAC, &[], ETH_P_IPV6, payload)
}

/// Runs `frame` on the entry point for `link` and returns the action and the counters that
/// moved.
fn run(program: &mut TestProgram, link: LinkKind, frame: &[u8]) -> (u32, Vec<usize>) {
    let before = program.counters().unwrap();
    let result = program.run(link, frame).unwrap();
    let after = program.counters().unwrap();
    let moved = (0..after.len())
        .filter(|&index| after[index] != before[index])
        .collect();
    (result.action, moved)
}

fn run_eth(program: &mut TestProgram, frame: &[u8]) -> (u32, Vec<usize>) {
    run(program, LinkKind::Ethernet, frame)
}

/// Prints `frame` in hex, so a failing case can be replayed with other tools.
fn print_frame(frame: &[u8]) {
    let hex: String = frame.iter().map(|byte| format!("{byte:02x}")).collect();
    eprintln!("frame {hex}");
}

fn has(moved: &[usize], counter: u32) -> bool {
    moved.contains(&(counter as usize))
}

fn tcp_syn(dst_port: u16) -> Vec<u8> {
    tcp(40000, dst_port, 1000, 0, TCP_SYN, &[])
}

// Findings: each test below failed before its fix.

/// A reject must send no reply to a frame sent to the Ethernet broadcast address (RFC 1812
/// 4.3.2.7), even when its IP destination is unicast.
#[test]
fn reject_to_broadcast_mac() {
    let mut program = setup();
    let ip = Ipv4::new(DEVICE_C, SERVER, IPPROTO_TCP).packet(&tcp_syn(22));
    let mut frame = eth4(&ip);
    frame[..6].copy_from_slice(&[0xff; 6]);
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert!(has(&moved, counters::DENY_NO_SESSION), "moved {moved:?}");
    assert_eq!(action, XDP_DROP, "a RST went out for a broadcast frame");
}

/// A reject must send no reply to a frame sent to an Ethernet multicast address.
#[test]
fn reject_to_multicast_mac() {
    let mut program = setup();
    let ip = Ipv4::new(DEVICE_C, SERVER, IPPROTO_ICMP).packet(&icmp(8, 0, &[0, 1, 0, 1]));
    let mut frame = eth4(&ip);
    frame[..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]);
    print_frame(&frame);
    let (action, _) = run_eth(&mut program, &frame);
    assert_eq!(
        action, XDP_DROP,
        "an ICMP error went out for a multicast frame"
    );
}

/// A source MAC with the group bit set turns the reply into a broadcast on the client segment.
#[test]
fn reject_from_broadcast_source_mac() {
    let mut program = setup();
    let ip = Ipv4::new(DEVICE_C, SERVER, IPPROTO_TCP).packet(&tcp_syn(22));
    let frame = ethernet([0xff; 6], &[], ETH_P_IPV4, &ip);
    print_frame(&frame);
    let result = program.run(LinkKind::Ethernet, &frame).unwrap();
    if result.action == XDP_TX {
        panic!("reply sent to destination MAC {:02x?}", &result.output[..6]);
    }
    assert_eq!(result.action, XDP_DROP);
}

/// An ICMP error is classified by the flow it quotes. So a device without a session gets an
/// ICMP packet through a prefix whose ICMP rule requires one, when the quote names a flow that
/// no rule covers (here TCP port 80).
#[test]
fn icmp_error_skips_icmp_rule() {
    let mut program = setup();
    let quoted_tcp = tcp(80, 40000, 1, 0, TCP_SYN | TCP_ACK, &[]);
    let quoted = Ipv4::new(SERVER, DEVICE_C, IPPROTO_TCP).packet(&quoted_tcp[..8]);
    let mut rest = vec![0, 0, 0, 0];
    rest.extend_from_slice(&quoted);
    rest.extend_from_slice(b"arbitrary payload carried past the ICMP rule");
    let ip = Ipv4::new(DEVICE_C, SERVER, IPPROTO_ICMP).packet(&icmp(3, 3, &rest));
    let frame = eth4(&ip);
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_ne!(
        action, XDP_PASS,
        "ICMP to an ICMP-protected resource passed, moved {moved:?}"
    );
}

/// Device A has a session for SSH. It forges an ICMP "fragmentation needed" about the flow
/// between the server's port 22 and another client, and the program passes it as A's SSH
/// traffic although the quote names neither A nor A's flow.
#[test]
fn icmp_error_quotes_other_client() {
    let mut program = setup();
    let quoted_tcp = tcp(22, 50000, 1, 0, TCP_ACK, &[]);
    let quoted = Ipv4::new(SERVER, VICTIM, IPPROTO_TCP).packet(&quoted_tcp[..8]);
    let mut rest = vec![0, 0, 0x02, 0x44]; // next-hop MTU 580
    rest.extend_from_slice(&quoted);
    let ip = Ipv4::new(DEVICE_A, SERVER, IPPROTO_ICMP).packet(&icmp(3, 4, &rest));
    let frame = eth4(&ip);
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_ne!(
        action, XDP_PASS,
        "an ICMP error quoting another client's flow passed, moved {moved:?}"
    );
}

/// The quoted packet's source is another protected address than the outer destination.
#[test]
fn icmp_error_quotes_other_resource() {
    let mut program = setup();
    let quoted_tcp = tcp(22, 40000, 1, 0, TCP_ACK, &[]);
    let quoted = Ipv4::new(SERVER_ANY, DEVICE_A, IPPROTO_TCP).packet(&quoted_tcp[..8]);
    let mut rest = vec![0, 0, 0, 0];
    rest.extend_from_slice(&quoted);
    let ip = Ipv4::new(DEVICE_A, SERVER, IPPROTO_ICMP).packet(&icmp(3, 3, &rest));
    let frame = eth4(&ip);
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_ne!(
        action, XDP_PASS,
        "an ICMP error quoting another resource's address passed, moved {moved:?}"
    );
}

/// Sends the first fragment of a TCP segment from device A to SSH, which passes on A's live
/// session, and returns a later fragment of the same datagram.
fn first_fragment_passed(program: &mut TestProgram, id: u16) -> Ipv4 {
    let segment = tcp(40000, 22, 1000, 0, TCP_ACK, &[0x41; 40]);
    let mut first = Ipv4::new(DEVICE_A, SERVER, IPPROTO_TCP);
    first.id = id;
    first.more_fragments = true;
    let frame = eth4(&first.packet(&segment[..32]));
    print_frame(&frame);
    let (action, moved) = run_eth(program, &frame);
    assert_eq!(action, XDP_PASS, "first fragment, moved {moved:?}");
    let mut later = first;
    later.fragment_offset = 4;
    later.more_fragments = false;
    later
}

fn later_payload() -> Vec<u8> {
    tcp(40000, 22, 1000, 0, TCP_ACK, &[0x41; 40])[32..].to_vec()
}

/// A first fragment sent while the session was live must not let later fragments through
/// after the session expires.
#[test]
fn fragment_outlives_session() {
    let mut program = setup();
    let later = first_fragment_passed(&mut program, 0x7777);
    let frame = eth4(&later.packet(&later_payload()));
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(action, XDP_PASS, "later fragment on a live session");
    assert!(has(&moved, counters::PASS_SESSION), "moved {moved:?}");

    program
        .set_session(
            SessionKey {
                device_id: DEVICE_A_ID,
                resource_id: SSH,
            },
            SessionValue {
                expires_at_boot_ns: 1,
            },
        )
        .unwrap();
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(
        action, XDP_DROP,
        "a later fragment passed after the session expired, moved {moved:?}"
    );
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");
}

/// A revocation deletes the session; later fragments of a datagram that passed before it
/// must stop at once.
#[test]
fn fragment_outlives_revocation() {
    let mut program = setup();
    let later = first_fragment_passed(&mut program, 0x7778);
    let mut sessions: aya::maps::HashMap<_, SessionKey, SessionValue> =
        program.map(map_names::SESSIONS).unwrap();
    sessions
        .remove(&SessionKey {
            device_id: DEVICE_A_ID,
            resource_id: SSH,
        })
        .unwrap();
    let frame = eth4(&later.packet(&later_payload()));
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(
        action, XDP_DROP,
        "a later fragment passed after the session was revoked, moved {moved:?}"
    );
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");
}

/// Device A is bound to `CLIENT_MAC`. A later fragment of A's allowed datagram from another
/// MAC address must not pass on the first fragment's verdict.
#[test]
fn fragment_from_wrong_mac() {
    let mut program = setup();
    let later = first_fragment_passed(&mut program, 0x7779);
    let frame = ethernet(
        [2, 0, 0, 0, 0, 0xee],
        &[],
        ETH_P_IPV4,
        &later.packet(&later_payload()),
    );
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(
        action, XDP_DROP,
        "a later fragment from the wrong MAC passed, moved {moved:?}"
    );
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");

    // From the bound MAC the same fragment still passes.
    let frame = eth4(&later.packet(&later_payload()));
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(action, XDP_PASS, "moved {moved:?}");
}

/// The source address moves to another device after the first fragment passed: the later
/// fragment must not pass on the old device's session.
#[test]
fn fragment_after_address_moves() {
    let mut program = setup();
    let later = first_fragment_passed(&mut program, 0x777a);
    let moved_device = DeviceEntry {
        device_id: DEVICE_C_ID,
        ..Default::default()
    };
    program
        .set_device(IpAddr::from(DEVICE_A), moved_device)
        .unwrap();
    let frame = eth4(&later.packet(&later_payload()));
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(
        action, XDP_DROP,
        "a later fragment passed for another device, moved {moved:?}"
    );
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");
}

/// Expires device A's SSH session.
fn expire_ssh(program: &mut TestProgram) {
    let key = SessionKey {
        device_id: DEVICE_A_ID,
        resource_id: SSH,
    };
    let expired = SessionValue {
        expires_at_boot_ns: 1,
    };
    program.set_session(key, expired).unwrap();
}

/// A second first fragment with the same id, to a port no rule covers, passes unprotected.
/// A receiver may keep the first copy of a duplicate fragment, and with it the SSH header. The second record must not let the SSH datagram's later
/// fragments through after the session expires.
#[test]
fn second_first_fragment_replaces_record() {
    let mut program = setup();
    let later = first_fragment_passed(&mut program, 0x7790);
    let decoy = tcp(40000, 80, 1000, 0, TCP_ACK, &[0x41; 40]);
    let mut first = later.clone();
    first.fragment_offset = 0;
    first.more_fragments = true;
    let frame = eth4(&first.packet(&decoy[..32]));
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(action, XDP_PASS, "decoy first fragment, moved {moved:?}");
    assert!(has(&moved, counters::PASS_UNPROTECTED), "moved {moved:?}");

    expire_ssh(&mut program);
    let frame = eth4(&later.packet(&later_payload()));
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(
        action, XDP_DROP,
        "a later fragment passed after the session expired, moved {moved:?}"
    );
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");
}

/// IPv6 receivers reassemble by (source, destination, identification) and take the upper
/// layer from the first fragment, whatever next header later fragments carry. A decoy first
/// fragment with another next header must not give the SSH datagram an unconditional record.
#[test]
fn ipv6_first_fragment_under_other_next_header() {
    let mut program = setup();
    // 2001:db8:200::/48 protects TCP 22 only, so UDP to it passes unprotected.
    let ssh_only = [0x20, 0x01, 0x0d, 0xb8, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    program
        .set_prefix(
            IpAddr::from(ssh_only),
            48,
            rules(&[rule(V6_SSH, IPPROTO_TCP, (22, 22), false)]),
        )
        .unwrap();
    let id = 0x5151;
    let fragment = |next_header: u8, offset: u16, more: bool, data: &[u8]| {
        let mut payload = ipv6_fragment(next_header, offset, more, id);
        payload.extend_from_slice(data);
        eth6(&ipv6(DEVICE_B, ssh_only, IPPROTO_FRAGMENT, &payload))
    };

    let segment = tcp(40000, 22, 1000, 0, TCP_ACK, &[0x41; 12]);
    let (action, moved) = run_eth(&mut program, &fragment(IPPROTO_TCP, 0, true, &segment));
    assert_eq!(action, XDP_PASS, "SSH first fragment, moved {moved:?}");
    assert!(has(&moved, counters::PASS_SESSION), "moved {moved:?}");
    let decoy = udp(5000, 53, &[0x42; 24]);
    let (action, moved) = run_eth(&mut program, &fragment(IPPROTO_UDP, 0, true, &decoy));
    assert_eq!(action, XDP_PASS, "UDP first fragment, moved {moved:?}");
    assert!(has(&moved, counters::PASS_UNPROTECTED), "moved {moved:?}");

    let key = SessionKey {
        device_id: DEVICE_B_ID,
        resource_id: V6_SSH,
    };
    let expired = SessionValue {
        expires_at_boot_ns: 1,
    };
    program.set_session(key, expired).unwrap();
    for next_header in [IPPROTO_UDP, IPPROTO_TCP] {
        let frame = fragment(next_header, 4, false, &[0x43; 16]);
        print_frame(&frame);
        let (action, moved) = run_eth(&mut program, &frame);
        assert_eq!(
            action, XDP_DROP,
            "next header {next_header}: a later fragment passed after the session expired, \
             moved {moved:?}"
        );
        assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");
    }
}

/// A first fragment that passed in monitor mode needs no session, so its record lets later
/// fragments through after monitor mode ends. That must stop once the record is older than
/// any receiver's reassembly timeout.
#[test]
fn monitor_fragment_record_times_out() {
    let mut program = setup();
    let monitor_all = Config {
        flags: CONFIG_FLAG_MONITOR_ALL,
        ..Default::default()
    };
    program.set_config(monitor_all).unwrap();
    let segment = tcp(40000, 22, 1000, 0, TCP_ACK, &[0x41; 40]);
    let mut first = Ipv4::new(DEVICE_C, SERVER, IPPROTO_TCP);
    first.id = 0x7791;
    first.more_fragments = true;
    let (action, moved) = run_eth(&mut program, &eth4(&first.packet(&segment[..32])));
    assert_eq!(
        action, XDP_PASS,
        "monitored first fragment, moved {moved:?}"
    );
    assert!(has(&moved, counters::PASS_MONITOR), "moved {moved:?}");
    program.set_config(Config::default()).unwrap();

    let mut later = first.clone();
    later.fragment_offset = 4;
    later.more_fragments = false;
    let frame = eth4(&later.packet(&segment[32..]));
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(action, XDP_PASS, "later fragment in time, moved {moved:?}");

    let mut records: aya::maps::HashMap<_, FragmentKey, FragmentValue> =
        program.map(map_names::FRAGMENTS).unwrap();
    let keys: Vec<FragmentKey> = records.keys().map(Result::unwrap).collect();
    assert_eq!(keys.len(), 1, "fragment records {keys:?}");
    let mut value = records.get(&keys[0], 0).unwrap();
    // Modular, like the program's age check, so it also works less than 120 s after boot.
    value.recorded_at_boot_ns = boot_ns_now().wrapping_sub(FRAGMENT_TIMEOUT_NS + 1);
    records.insert(keys[0], value, 0).unwrap();
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(
        action, XDP_DROP,
        "a later fragment passed on a timed-out record, moved {moved:?}"
    );
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");
}

/// A later fragment that overlaps the first one can rewrite, on receivers that let new data
/// win, the bytes the first fragment was classified by. Behind a destination options header
/// after the fragment header, offset 1 is the TCP header: the decoy to port 80 passes
/// unprotected and the overlap turns it into port 22.
#[test]
fn later_fragment_overlaps_first() {
    let mut program = setup();
    let ssh_only = [0x20, 0x01, 0x0d, 0xb8, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    program
        .set_prefix(
            IpAddr::from(ssh_only),
            48,
            rules(&[rule(V6_SSH, IPPROTO_TCP, (22, 22), false)]),
        )
        .unwrap();
    let fragment = |offset: u16, more: bool, data: &[u8]| {
        let mut payload = ipv6_fragment(IPPROTO_DSTOPTS, offset, more, 0x6161);
        payload.extend_from_slice(data);
        eth6(&ipv6(DEVICE_C_V6, ssh_only, IPPROTO_FRAGMENT, &payload))
    };
    let mut first = ipv6_options(IPPROTO_TCP);
    first.extend_from_slice(&tcp(40000, 80, 1000, 0, TCP_SYN, &[0x41; 4]));
    let (action, moved) = run_eth(&mut program, &fragment(0, true, &first));
    assert_eq!(action, XDP_PASS, "decoy first fragment, moved {moved:?}");
    assert!(has(&moved, counters::PASS_UNPROTECTED), "moved {moved:?}");
    let overlap = tcp(40000, 22, 1000, 0, TCP_SYN, &[0x41; 4]);
    let frame = fragment(1, false, &overlap);
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(
        action, XDP_DROP,
        "an overlapping later fragment passed, moved {moved:?}"
    );
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");
    // The fragment that starts where the first one ends still passes.
    let frame = fragment(4, false, &[0x42; 8]);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(action, XDP_PASS, "adjacent later fragment, moved {moved:?}");

    // IPv4: offset 1 rewrites the TCP data offset and flags of an allowed first fragment.
    let later = first_fragment_passed(&mut program, 0x6162);
    let mut overlapping = later.clone();
    overlapping.fragment_offset = 1;
    let frame = eth4(&overlapping.packet(&[0x50, 0x02, 0x20, 0x00, 0, 0, 0, 0]));
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(
        action, XDP_DROP,
        "an overlapping IPv4 fragment passed, moved {moved:?}"
    );
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");
    let (action, moved) = run_eth(&mut program, &eth4(&later.packet(&later_payload())));
    assert_eq!(action, XDP_PASS, "adjacent IPv4 fragment, moved {moved:?}");
}

/// An ICMPv6 error quoting a packet with extension headers is classified by the quoted flow
/// after them, not dropped as malformed.
#[test]
fn icmpv6_error_quotes_extension_headers() {
    let mut program = setup();
    let quoted_tcp = tcp(22, 40000, 1, 0, TCP_ACK, &[]);
    let error_for = |next_header: u8, chain: &[u8]| {
        let mut quoted_payload = chain.to_vec();
        quoted_payload.extend_from_slice(&quoted_tcp[..8]);
        let quoted = ipv6(SERVER_V6, DEVICE_B, next_header, &quoted_payload);
        let mut rest = vec![0; 4];
        rest.extend_from_slice(&quoted);
        eth6(&ipv6(
            DEVICE_B,
            SERVER_V6,
            IPPROTO_ICMPV6,
            &icmp(1, 4, &rest),
        ))
    };
    let mut routing = vec![IPPROTO_FRAGMENT, 2, 0, 1, 0, 0, 0, 0];
    routing.extend_from_slice(&OUTSIDE_V6);
    let chain = [
        ipv6_options(IPPROTO_DSTOPTS),
        ipv6_options(IPPROTO_ROUTING),
        routing,
        ipv6_fragment(IPPROTO_TCP, 0, true, 5),
    ]
    .concat();
    let frame = error_for(IPPROTO_HOPOPTS, &chain);
    print_frame(&frame);
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(action, XDP_PASS, "quoted SSH flow of B, moved {moved:?}");
    assert!(has(&moved, counters::PASS_SESSION), "moved {moved:?}");

    // The same chain quoting port 23 is V6_ANY, where B has no session.
    let mut other_port = frame.clone();
    let port_offset = other_port.len() - 8;
    other_port[port_offset..port_offset + 2].copy_from_slice(&23u16.to_be_bytes());
    let (action, moved) = run_eth(&mut program, &other_port);
    assert_eq!(action, XDP_DROP, "quoted port 23, moved {moved:?}");
    assert!(has(&moved, counters::DENY_NO_SESSION), "moved {moved:?}");

    let malformed: Vec<(&str, u8, Vec<u8>)> = vec![
        (
            "quoted later fragment",
            IPPROTO_FRAGMENT,
            ipv6_fragment(IPPROTO_TCP, 8, false, 6),
        ),
        (
            "quoted hop-by-hop after destination options",
            IPPROTO_DSTOPTS,
            [ipv6_options(IPPROTO_HOPOPTS), ipv6_options(IPPROTO_TCP)].concat(),
        ),
        (
            "quoted chain longer than the walk bound",
            IPPROTO_DSTOPTS,
            [
                vec![ipv6_options(IPPROTO_DSTOPTS); common::IPV6_EXT_MAX_DEPTH],
                vec![ipv6_options(IPPROTO_TCP)],
            ]
            .concat()
            .concat(),
        ),
        (
            "quoted header running past the error",
            IPPROTO_DSTOPTS,
            vec![IPPROTO_TCP, 0x10, 1, 4, 0, 0, 0, 0],
        ),
    ];
    for (name, next_header, chain) in malformed {
        let frame = error_for(next_header, &chain);
        let (action, moved) = run_eth(&mut program, &frame);
        assert_eq!(action, XDP_DROP, "{name}");
        assert!(
            has(&moved, counters::DENY_MALFORMED),
            "{name}: moved {moved:?}"
        );
    }
}

/// A reject must send no reply to a loopback or class E source (RFC 1812 4.3.2.7 and
/// 5.3.7), because such a source is not a unique host.
#[test]
fn reject_to_martian_source() {
    let mut program = setup();
    for src in [[127, 0, 0, 1], [240, 0, 0, 1]] {
        let ip = Ipv4::new(src, SERVER, IPPROTO_TCP).packet(&tcp_syn(22));
        let frame = eth4(&ip);
        print_frame(&frame);
        let (action, moved) = run_eth(&mut program, &frame);
        assert!(has(&moved, counters::DENY_UNKNOWN_DEVICE), "source {src:?}");
        assert_eq!(action, XDP_DROP, "a RST went out to source {src:?}");
    }

    let mut loopback = [0u8; 16];
    loopback[15] = 1;
    let ip = ipv6(loopback, SERVER_V6, IPPROTO_TCP, &tcp_syn(22));
    let (action, moved) = run_eth(&mut program, &eth6(&ip));
    assert!(has(&moved, counters::DENY_UNKNOWN_DEVICE), "source ::1");
    assert_eq!(action, XDP_DROP, "a RST went out to source ::1");
}

/// An ICMPv6 error from device B must quote a packet from the server to B.
#[test]
fn icmpv6_error_quotes_other_client() {
    let mut program = setup();
    let quoted_tcp = tcp(22, 40000, 1, 0, TCP_ACK, &[]);
    let quoted = ipv6(SERVER_V6, OUTSIDE_V6, IPPROTO_TCP, &quoted_tcp[..8]);
    let mut rest = vec![0; 4];
    rest.extend_from_slice(&quoted);
    let error = ipv6(DEVICE_B, SERVER_V6, IPPROTO_ICMPV6, &icmp(1, 4, &rest));
    let (action, moved) = run_eth(&mut program, &eth6(&error));
    assert_eq!(action, XDP_DROP, "moved {moved:?}");
    assert!(has(&moved, counters::DENY_MALFORMED), "moved {moved:?}");

    // The same error quoting B's own SSH flow passes on B's session.
    let quoted = ipv6(SERVER_V6, DEVICE_B, IPPROTO_TCP, &quoted_tcp[..8]);
    let mut rest = vec![0; 4];
    rest.extend_from_slice(&quoted);
    let error = ipv6(DEVICE_B, SERVER_V6, IPPROTO_ICMPV6, &icmp(1, 4, &rest));
    let (action, moved) = run_eth(&mut program, &eth6(&error));
    assert_eq!(action, XDP_PASS, "moved {moved:?}");
    assert!(has(&moved, counters::PASS_SESSION), "moved {moved:?}");
}

// Hostile cases the program handles.

#[test]
fn vlan_stacks_held() {
    let mut program = setup();
    let allowed = Ipv4::new(DEVICE_A, SERVER, IPPROTO_TCP).packet(&tcp_syn(22));
    let denied = Ipv4::new(DEVICE_C, SERVER, IPPROTO_TCP).packet(&tcp_syn(22));
    for tags in [
        &[0x88a8u16, 0x8100, 0x9100][..],
        &[0x9100, 0x9100, 0x8100],
        &[0x8100, 0x88a8, 0x8100],
    ] {
        let frame = ethernet(CLIENT_MAC, tags, ETH_P_IPV4, &allowed);
        assert_eq!(run_eth(&mut program, &frame).0, XDP_PASS, "tags {tags:x?}");
        let frame = ethernet(CLIENT_MAC, tags, ETH_P_IPV4, &denied);
        let (action, moved) = run_eth(&mut program, &frame);
        assert_eq!(action, XDP_TX, "tags {tags:x?}");
        assert!(has(&moved, counters::DENY_NO_SESSION));
    }
    for tags in [
        &[0x8100u16, 0x88a8, 0x9100, 0x8100][..],
        &[0x88a8, 0x88a8, 0x88a8, 0x88a8],
    ] {
        let frame = ethernet(CLIENT_MAC, tags, ETH_P_IPV4, &denied);
        let (action, moved) = run_eth(&mut program, &frame);
        assert_eq!(action, XDP_DROP, "tags {tags:x?}");
        assert!(has(&moved, counters::DENY_MALFORMED), "tags {tags:x?}");
    }

    // A wrong MAC behind three tags is still caught.
    let frame = ethernet(
        [2, 0, 0, 0, 0, 0xee],
        &[0x88a8, 0x8100, 0x8100],
        ETH_P_IPV4,
        &allowed,
    );
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(action, XDP_TX);
    assert!(has(&moved, counters::DENY_WRONG_MAC));
}

#[test]
fn ipv4_lengths_held() {
    let mut program = setup();
    let good = Ipv4::new(DEVICE_C, SERVER, IPPROTO_TCP).packet(&tcp_syn(22));
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut longer = good.clone();
    longer[2..4].copy_from_slice(&((good.len() + 1) as u16).to_be_bytes());
    cases.push(("total length above the frame", longer));
    let mut shorter = good.clone();
    shorter[2..4].copy_from_slice(&30u16.to_be_bytes());
    cases.push(("total length cutting the TCP header", shorter));
    let mut below_header = good.clone();
    below_header[2..4].copy_from_slice(&19u16.to_be_bytes());
    cases.push(("total length below the header", below_header));
    let mut ihl = good.clone();
    ihl[0] = 0x4f;
    cases.push(("IHL 15 beyond the datagram", ihl));
    let mut tcp_offset = good.clone();
    tcp_offset[20 + 12] = 0xf0;
    cases.push(("TCP data offset 15", tcp_offset));
    let mut tcp_offset_low = good.clone();
    tcp_offset_low[20 + 12] = 0x40;
    cases.push(("TCP data offset 4", tcp_offset_low));
    for (name, packet) in cases {
        let (action, moved) = run_eth(&mut program, &eth4(&packet));
        assert_eq!(action, XDP_DROP, "{name}");
        assert!(
            has(&moved, counters::DENY_MALFORMED),
            "{name}: moved {moved:?}"
        );
    }

    // Padding after the datagram is ignored, not read as payload.
    let mut padded = eth4(&good);
    padded.extend_from_slice(&[0; 20]);
    let (action, moved) = run_eth(&mut program, &padded);
    assert_eq!(action, XDP_TX);
    assert!(has(&moved, counters::DENY_NO_SESSION));
}

#[test]
fn ipv4_fragments_held() {
    let mut program = setup();
    let segment = tcp(40000, 22, 1000, 0, TCP_ACK, &[0x41; 40]);

    // A later fragment before its first fragment is dropped.
    let mut later = Ipv4::new(DEVICE_A, SERVER, IPPROTO_TCP);
    later.id = 0x1001;
    later.fragment_offset = 4;
    let (action, moved) = run_eth(&mut program, &eth4(&later.packet(&segment[32..])));
    assert_eq!(action, XDP_DROP);
    assert!(has(&moved, counters::DENY_FRAGMENT));

    // Device A's allowed first fragment does not let device C's later fragment with the same
    // id through.
    let mut first = Ipv4::new(DEVICE_A, SERVER, IPPROTO_TCP);
    first.id = 0x1002;
    first.more_fragments = true;
    assert_eq!(
        run_eth(&mut program, &eth4(&first.packet(&segment[..32]))).0,
        XDP_PASS
    );
    let mut other = Ipv4::new(DEVICE_C, SERVER, IPPROTO_TCP);
    other.id = 0x1002;
    other.fragment_offset = 4;
    let (action, _) = run_eth(&mut program, &eth4(&other.packet(&segment[32..])));
    assert_eq!(action, XDP_DROP, "fragment id reused by another device");

    // The same id with another protocol is another datagram.
    let mut udp_later = later.clone();
    udp_later.id = 0x1002;
    udp_later.src = DEVICE_A;
    udp_later.protocol = IPPROTO_UDP;
    let (action, _) = run_eth(&mut program, &eth4(&udp_later.packet(&segment[32..])));
    assert_eq!(action, XDP_DROP, "fragment id reused with another protocol");

    let mut ssh_first = Ipv4::new(DEVICE_C, SERVER, IPPROTO_TCP);
    ssh_first.id = 0x1003;
    ssh_first.more_fragments = true;
    run_eth(&mut program, &eth4(&ssh_first.packet(&segment[..32])));
    let mut ssh_later = ssh_first.clone();
    ssh_later.more_fragments = false;
    ssh_later.fragment_offset = 1;
    let (action, moved) = run_eth(&mut program, &eth4(&ssh_later.packet(&segment[8..])));
    assert_eq!(
        action, XDP_DROP,
        "overlapping later fragment of a denied datagram"
    );
    assert!(has(&moved, counters::DENY_FRAGMENT));

    // A tiny first fragment that cuts the TCP header is malformed.
    let (action, moved) = run_eth(&mut program, &eth4(&ssh_first.packet(&segment[..16])));
    assert_eq!(action, XDP_DROP);
    assert!(has(&moved, counters::DENY_MALFORMED));
}

#[test]
fn ipv6_header_chains_held() {
    let mut program = setup();
    let syn = tcp_syn(22);
    let with = |headers: &[Vec<u8>]| {
        let mut payload: Vec<u8> = headers.concat();
        payload.extend_from_slice(&syn);
        payload
    };
    let malformed: Vec<(&str, u8, Vec<u8>)> = vec![
        (
            "hop-by-hop after destination options",
            IPPROTO_DSTOPTS,
            with(&[ipv6_options(IPPROTO_HOPOPTS), ipv6_options(IPPROTO_TCP)]),
        ),
        (
            "two fragment headers",
            IPPROTO_FRAGMENT,
            with(&[
                ipv6_fragment(IPPROTO_FRAGMENT, 0, false, 1),
                ipv6_fragment(IPPROTO_TCP, 0, false, 2),
            ]),
        ),
        (
            "fragment header inside destination options, repeated",
            IPPROTO_DSTOPTS,
            with(&[
                ipv6_options(IPPROTO_FRAGMENT),
                ipv6_fragment(IPPROTO_DSTOPTS, 0, false, 3),
                ipv6_options(IPPROTO_FRAGMENT),
                ipv6_fragment(IPPROTO_TCP, 0, false, 4),
            ]),
        ),
        (
            "AH whose length runs past the datagram",
            IPPROTO_AH,
            with(&[vec![IPPROTO_TCP, 0xff, 0, 0, 0, 0, 0, 0]]),
        ),
        (
            "nine destination options headers",
            IPPROTO_DSTOPTS,
            with(
                &[
                    vec![ipv6_options(IPPROTO_DSTOPTS); 8],
                    vec![ipv6_options(IPPROTO_TCP)],
                ]
                .concat(),
            ),
        ),
    ];
    for (name, next_header, payload) in malformed {
        let frame = eth6(&ipv6(DEVICE_B, SERVER_V6, next_header, &payload));
        let (action, moved) = run_eth(&mut program, &frame);
        assert_eq!(action, XDP_DROP, "{name}");
        assert!(
            has(&moved, counters::DENY_MALFORMED),
            "{name}: moved {moved:?}"
        );
    }

    // AH with an odd 4-byte length (12 bytes), then TCP 22: allowed for B.
    let mut ah = vec![IPPROTO_TCP, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1];
    ah.extend_from_slice(&syn);
    let frame = eth6(&ipv6(DEVICE_B, SERVER_V6, IPPROTO_AH, &ah));
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(action, XDP_PASS);
    assert!(has(&moved, counters::PASS_SESSION));

    // Routing header type 0 then TCP 23: no session for V6_ANY, so it is rejected.
    let mut routing = vec![IPPROTO_TCP, 2, 0, 1, 0, 0, 0, 0];
    routing.extend_from_slice(&OUTSIDE_V6);
    routing.extend_from_slice(&tcp_syn(23));
    let frame = eth6(&ipv6(DEVICE_B, SERVER_V6, IPPROTO_ROUTING, &routing));
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(action, XDP_TX);
    assert!(has(&moved, counters::DENY_NO_SESSION));

    // Jumbogram: payload length 0 with a hop-by-hop jumbo option.
    let mut jumbo = vec![IPPROTO_TCP, 0, 0xc2, 4, 0, 0, 0x01, 0x00];
    jumbo.extend_from_slice(&syn);
    let mut packet = ipv6(DEVICE_B, SERVER_V6, IPPROTO_HOPOPTS, &jumbo);
    packet[4..6].copy_from_slice(&[0, 0]);
    let (action, moved) = run_eth(&mut program, &eth6(&packet));
    assert_eq!(action, XDP_DROP);
    assert!(has(&moved, counters::DENY_MALFORMED));

    // A later IPv6 fragment whose first fragment was never seen.
    let mut fragment = ipv6_fragment(IPPROTO_TCP, 8, false, 99);
    fragment.extend_from_slice(&[0; 16]);
    let frame = eth6(&ipv6(DEVICE_B, SERVER_V6, IPPROTO_FRAGMENT, &fragment));
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(action, XDP_DROP);
    assert!(has(&moved, counters::DENY_FRAGMENT));
}

#[test]
fn no_reply_to_errors_held() {
    let mut program = setup();

    // RST without a session: denied, no reply.
    let rst = Ipv4::new(DEVICE_C, SERVER, IPPROTO_TCP).packet(&tcp(1, 22, 5, 0, TCP_RST, &[]));
    let (action, moved) = run_eth(&mut program, &eth4(&rst));
    assert_eq!(action, XDP_DROP);
    assert!(has(&moved, counters::DENY_NO_SESSION));

    // ICMP error quoting SSH from a device without a session: denied, no reply.
    let quoted = Ipv4::new(SERVER, DEVICE_C, IPPROTO_TCP).packet(&tcp(22, 1, 0, 0, 0, &[])[..8]);
    let mut rest = vec![0; 4];
    rest.extend_from_slice(&quoted);
    let error = Ipv4::new(DEVICE_C, SERVER, IPPROTO_ICMP).packet(&icmp(3, 3, &rest));
    let (action, moved) = run_eth(&mut program, &eth4(&error));
    assert_eq!(action, XDP_DROP);
    assert!(has(&moved, counters::DENY_NO_SESSION));

    // ICMPv6 error quoting TCP from the server to B on port 23 (V6_ANY, no session).
    let quoted_tcp = tcp(23, 1, 0, 0, 0, &[]);
    let quoted = ipv6(SERVER_V6, DEVICE_B, IPPROTO_TCP, &quoted_tcp[..8]);
    let mut rest = vec![0; 4];
    rest.extend_from_slice(&quoted);
    let error = ipv6(DEVICE_B, SERVER_V6, IPPROTO_ICMPV6, &icmp(1, 4, &rest));
    let (action, moved) = run_eth(&mut program, &eth6(&error));
    assert_eq!(action, XDP_DROP);
    assert!(has(&moved, counters::DENY_NO_SESSION), "moved {moved:?}");

    // ICMP error quoting a truncated header.
    let mut rest = vec![0; 4];
    rest.extend_from_slice(&quoted[..30]);
    let error = ipv6(DEVICE_B, SERVER_V6, IPPROTO_ICMPV6, &icmp(1, 4, &rest));
    let (action, moved) = run_eth(&mut program, &eth6(&error));
    assert_eq!(action, XDP_DROP);
    assert!(has(&moved, counters::DENY_MALFORMED));

    // Unspecified, broadcast and multicast IP sources get no reply.
    for src in [[0, 0, 0, 0], [255, 255, 255, 255], [224, 0, 0, 1]] {
        let ip = Ipv4::new(src, SERVER, IPPROTO_TCP).packet(&tcp_syn(22));
        let (action, moved) = run_eth(&mut program, &eth4(&ip));
        assert_eq!(action, XDP_DROP, "source {src:?}");
        assert!(has(&moved, counters::DENY_UNKNOWN_DEVICE), "source {src:?}");
    }
}

#[test]
fn protocols_without_ports_held() {
    let mut program = setup();

    // UDP to port 0 is outside UDP 1-65535 and passes unprotected, as the rules define.
    let udp0 = Ipv4::new(DEVICE_C, SERVER, IPPROTO_UDP).packet(&udp(1, 0, &[]));
    let (action, moved) = run_eth(&mut program, &eth4(&udp0));
    assert_eq!(action, XDP_PASS);
    assert!(has(&moved, counters::PASS_UNPROTECTED));
    let udp1 = Ipv4::new(DEVICE_C, SERVER, IPPROTO_UDP).packet(&udp(1, 1, &[]));
    assert_eq!(run_eth(&mut program, &eth4(&udp1)).0, XDP_TX);

    // SCTP to port 22, and SCTP shorter than its common header.
    let mut sctp = udp(1, 22, &[0; 4]);
    sctp[4..].fill(0);
    let packet = Ipv4::new(DEVICE_C, SERVER, IPPROTO_SCTP).packet(&sctp);
    assert_eq!(run_eth(&mut program, &eth4(&packet)).0, XDP_TX);
    let packet = Ipv4::new(DEVICE_C, SERVER, IPPROTO_SCTP).packet(&sctp[..8]);
    let (action, moved) = run_eth(&mut program, &eth4(&packet));
    assert_eq!(action, XDP_DROP);
    assert!(has(&moved, counters::DENY_MALFORMED));

    // IPIP and GRE to an any-protocol prefix without a session are rejected.
    let inner = Ipv4::new(DEVICE_C, SERVER, IPPROTO_TCP).packet(&tcp_syn(22));
    for protocol in [IPPROTO_IPIP, IPPROTO_GRE] {
        let outer = Ipv4::new(DEVICE_C, SERVER_ANY, protocol).packet(&inner);
        let (action, moved) = run_eth(&mut program, &eth4(&outer));
        assert_eq!(action, XDP_TX, "protocol {protocol}");
        assert!(has(&moved, counters::DENY_NO_SESSION));
        // Outer destination not protected: passes untouched, the inner one is not looked at.
        let outer = Ipv4::new(DEVICE_C, OUTSIDE, protocol).packet(&inner);
        let (action, moved) = run_eth(&mut program, &eth4(&outer));
        assert_eq!(action, XDP_PASS);
        assert!(has(&moved, counters::PASS_UNPROTECTED));
    }
}

#[test]
fn raw_ip_and_expiry_held() {
    let mut program = setup();
    let syn = tcp_syn(22);
    let allowed = ipv6(DEVICE_B, SERVER_V6, IPPROTO_TCP, &syn);
    assert_eq!(run(&mut program, LinkKind::RawIp, &allowed).0, XDP_PASS);
    let denied = ipv6(DEVICE_B, SERVER_V6, IPPROTO_TCP, &tcp_syn(23));
    let (action, moved) = run(&mut program, LinkKind::RawIp, &denied);
    assert_eq!(action, XDP_TX);
    assert!(has(&moved, counters::DENY_NO_SESSION));
    let mut wrong_version = allowed.clone();
    wrong_version[0] = 0x50;
    assert_eq!(
        run(&mut program, LinkKind::RawIp, &wrong_version).0,
        XDP_DROP
    );

    // A session that expires at the moment it is written is expired by the time it is read.
    program
        .set_session(
            SessionKey {
                device_id: DEVICE_C_ID,
                resource_id: SSH,
            },
            SessionValue {
                expires_at_boot_ns: boot_ns_now(),
            },
        )
        .unwrap();
    let ip = Ipv4::new(DEVICE_C, SERVER, IPPROTO_TCP).packet(&syn);
    let (action, moved) = run_eth(&mut program, &eth4(&ip));
    assert_eq!(action, XDP_TX);
    assert!(has(&moved, counters::DENY_EXPIRED));
}

#[test]
fn fragment_edge_cases_held() {
    let mut program = setup();
    let segment = tcp(40000, 22, 1000, 0, TCP_ACK, &[0x41; 40]);

    // DF with MF set is still a first fragment: recorded, and its later fragment passes.
    let mut first = Ipv4::new(DEVICE_A, SERVER, IPPROTO_TCP);
    first.id = 0x2001;
    first.more_fragments = true;
    let mut packet = first.packet(&segment[..32]);
    packet[6] |= 0x40;
    let (action, moved) = run_eth(&mut program, &eth4(&packet));
    assert_eq!(action, XDP_PASS, "DF and MF, moved {moved:?}");
    assert!(has(&moved, counters::PASS_SESSION), "moved {moved:?}");
    let mut later = first.clone();
    later.fragment_offset = 4;
    later.more_fragments = false;
    let mut packet = later.packet(&segment[32..]);
    packet[6] |= 0x40;
    let (action, moved) = run_eth(&mut program, &eth4(&packet));
    assert_eq!(action, XDP_PASS, "later fragment with DF, moved {moved:?}");

    // DF and MF without a session: denied like any first fragment, and so is the later one.
    let mut denied = first.clone();
    denied.src = DEVICE_C;
    let mut packet = denied.packet(&segment[..32]);
    packet[6] |= 0x40;
    let (action, moved) = run_eth(&mut program, &eth4(&packet));
    assert_eq!(
        action, XDP_TX,
        "DF and MF without a session, moved {moved:?}"
    );
    assert!(has(&moved, counters::DENY_NO_SESSION), "moved {moved:?}");
    let mut denied_later = later.clone();
    denied_later.src = DEVICE_C;
    let (action, moved) = run_eth(&mut program, &eth4(&denied_later.packet(&segment[32..])));
    assert_eq!(action, XDP_DROP, "moved {moved:?}");
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");

    // An IPv6 atomic fragment (offset 0, M clear) is a whole packet: classified by its ports,
    // and it records nothing a later fragment with its id could use.
    let atomic = |id: u32, port: u16| {
        let mut payload = ipv6_fragment(IPPROTO_TCP, 0, false, id);
        payload.extend_from_slice(&tcp_syn(port));
        eth6(&ipv6(DEVICE_B, SERVER_V6, IPPROTO_FRAGMENT, &payload))
    };
    let (action, moved) = run_eth(&mut program, &atomic(0x3001, 22));
    assert_eq!(action, XDP_PASS, "atomic fragment to SSH, moved {moved:?}");
    assert!(has(&moved, counters::PASS_SESSION), "moved {moved:?}");
    let (action, moved) = run_eth(&mut program, &atomic(0x3002, 23));
    assert_eq!(
        action, XDP_TX,
        "atomic fragment to port 23, moved {moved:?}"
    );
    assert!(has(&moved, counters::DENY_NO_SESSION), "moved {moved:?}");
    let mut payload = ipv6_fragment(IPPROTO_TCP, 4, false, 0x3001);
    payload.extend_from_slice(&[0; 16]);
    let frame = eth6(&ipv6(DEVICE_B, SERVER_V6, IPPROTO_FRAGMENT, &payload));
    let (action, moved) = run_eth(&mut program, &frame);
    assert_eq!(
        action, XDP_DROP,
        "later fragment after an atomic one, moved {moved:?}"
    );
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");

    // IPv6 fragment headers behind hop-by-hop, destination options and routing headers.
    let mut routing = vec![IPPROTO_FRAGMENT, 2, 0, 0, 0, 0, 0, 0];
    routing.extend_from_slice(&OUTSIDE_V6);
    let unfragmentable = [
        ipv6_options(IPPROTO_DSTOPTS),
        ipv6_options(IPPROTO_ROUTING),
        routing,
    ]
    .concat();
    let fragment = |offset: u16, more: bool, data: &[u8]| {
        let mut payload = unfragmentable.clone();
        payload.extend_from_slice(&ipv6_fragment(IPPROTO_TCP, offset, more, 0x3003));
        payload.extend_from_slice(data);
        eth6(&ipv6(DEVICE_B, SERVER_V6, IPPROTO_HOPOPTS, &payload))
    };
    let (action, moved) = run_eth(&mut program, &fragment(0, true, &segment[..32]));
    assert_eq!(
        action, XDP_PASS,
        "first fragment behind a chain, moved {moved:?}"
    );
    assert!(has(&moved, counters::PASS_SESSION), "moved {moved:?}");
    let later = fragment(4, false, &segment[32..]);
    let (action, moved) = run_eth(&mut program, &later);
    assert_eq!(
        action, XDP_PASS,
        "later fragment behind a chain, moved {moved:?}"
    );
    let key = SessionKey {
        device_id: DEVICE_B_ID,
        resource_id: V6_SSH,
    };
    let mut sessions: aya::maps::HashMap<_, SessionKey, SessionValue> =
        program.map(map_names::SESSIONS).unwrap();
    sessions.remove(&key).unwrap();
    let (action, moved) = run_eth(&mut program, &later);
    assert_eq!(
        action, XDP_DROP,
        "later fragment after revocation, moved {moved:?}"
    );
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");
}

#[test]
fn fragment_punts_held() {
    let mut program = setup();
    let mut punts = program.take_punts().unwrap();
    let later = first_fragment_passed(&mut program, 0x2101);
    expire_ssh(&mut program);
    let (action, moved) = run_eth(&mut program, &eth4(&later.packet(&later_payload())));
    assert_eq!(action, XDP_DROP, "moved {moved:?}");
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");
    assert!(has(&moved, counters::PUNT_SENT), "moved {moved:?}");
    let events = drain_punts(&mut punts);
    assert_eq!(events.len(), 1, "punts {events:?}");
    let event = events[0];
    assert_eq!(event.reason, Reason::Fragment as u8, "punt reason");
    assert_eq!(event.device_id, DEVICE_A_ID, "punt device id");
    assert_eq!(event.resource_id, SSH, "punt resource id");
    assert_eq!(event.protocol, IPPROTO_TCP, "punt protocol");
    assert_eq!(event.dst_port, 0, "a later fragment has no ports");
    assert_eq!(event.monitor, 0, "punt monitor flag");
    assert_eq!(event.src[..4], DEVICE_A, "punt source address");
    assert_eq!(event.dst[..4], SERVER, "punt destination address");

    // A later fragment never seen with a first fragment is punted with unknown ids.
    let mut orphan = Ipv4::new(DEVICE_C, SERVER, IPPROTO_UDP);
    orphan.id = 0x2102;
    orphan.fragment_offset = 8;
    let (action, moved) = run_eth(&mut program, &eth4(&orphan.packet(&[0; 16])));
    assert_eq!(action, XDP_DROP, "moved {moved:?}");
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");
    let events = drain_punts(&mut punts);
    assert_eq!(events.len(), 1, "punts {events:?}");
    assert_eq!(events[0].reason, Reason::Fragment as u8, "punt reason");
    assert_eq!(events[0].device_id, 0, "punt device id");
    assert_eq!(events[0].resource_id, 0, "punt resource id");
    assert_eq!(events[0].protocol, IPPROTO_UDP, "punt protocol");
}

#[test]
fn nested_icmp_errors_held() {
    let mut program = setup();
    // An error about an error from the server to device C, quoting TCP port 22 in turn.
    let innermost = Ipv4::new(DEVICE_C, SERVER, IPPROTO_TCP).packet(&tcp_syn(22)[..8]);
    let mut inner_rest = vec![0; 4];
    inner_rest.extend_from_slice(&innermost);
    let inner_error = Ipv4::new(SERVER, DEVICE_C, IPPROTO_ICMP).packet(&icmp(3, 3, &inner_rest));
    for (device, counter) in [
        (DEVICE_C, counters::DENY_NO_SESSION),
        (DEVICE_A, counters::DENY_NO_SESSION),
    ] {
        let mut quoted = inner_error.clone();
        quoted[16..20].copy_from_slice(&device);
        let mut rest = vec![0; 4];
        rest.extend_from_slice(&quoted[..28]);
        let error = Ipv4::new(device, SERVER, IPPROTO_ICMP).packet(&icmp(3, 1, &rest));
        let (action, moved) = run_eth(&mut program, &eth4(&error));
        assert_eq!(action, XDP_DROP, "device {device:?}, moved {moved:?}");
        assert!(has(&moved, counter), "device {device:?}, moved {moved:?}");
    }

    // An ICMPv6 error quoting an ICMPv6 error is matched as ICMPv6 by V6_ANY, where B has no
    // session.
    let innermost = ipv6(DEVICE_B, SERVER_V6, IPPROTO_TCP, &tcp_syn(22)[..8]);
    let mut inner_rest = vec![0; 4];
    inner_rest.extend_from_slice(&innermost);
    let inner_error = ipv6(
        SERVER_V6,
        DEVICE_B,
        IPPROTO_ICMPV6,
        &icmp(1, 1, &inner_rest),
    );
    let mut rest = vec![0; 4];
    rest.extend_from_slice(&inner_error[..48]);
    let error = ipv6(DEVICE_B, SERVER_V6, IPPROTO_ICMPV6, &icmp(1, 4, &rest));
    let (action, moved) = run_eth(&mut program, &eth6(&error));
    assert_eq!(action, XDP_DROP, "moved {moved:?}");
    assert!(has(&moved, counters::DENY_NO_SESSION), "moved {moved:?}");
}

#[test]
fn fragmented_icmpv6_errors_held() {
    let mut program = setup();
    let quoted_tcp = tcp(22, 40000, 1, 0, TCP_ACK, &[]);
    let quoted = ipv6(SERVER_V6, DEVICE_B, IPPROTO_TCP, &quoted_tcp);
    let mut rest = vec![0; 4];
    rest.extend_from_slice(&quoted);
    let message = icmp(1, 4, &rest);
    let fragment = |offset: u16, more: bool, data: &[u8]| {
        let mut payload = ipv6_options(IPPROTO_FRAGMENT);
        payload.extend_from_slice(&ipv6_fragment(IPPROTO_ICMPV6, offset, more, 0x4001));
        payload.extend_from_slice(data);
        eth6(&ipv6(DEVICE_B, SERVER_V6, IPPROTO_DSTOPTS, &payload))
    };

    // A later fragment of an ICMPv6 error before its first fragment.
    let (action, moved) = run_eth(&mut program, &fragment(7, false, &message[56..]));
    assert_eq!(action, XDP_DROP, "moved {moved:?}");
    assert!(has(&moved, counters::DENY_FRAGMENT), "moved {moved:?}");

    // The first fragment quotes B's SSH flow and passes on B's session; its later one too.
    let (action, moved) = run_eth(&mut program, &fragment(0, true, &message[..56]));
    assert_eq!(action, XDP_PASS, "moved {moved:?}");
    assert!(has(&moved, counters::PASS_SESSION), "moved {moved:?}");
    let (action, moved) = run_eth(&mut program, &fragment(7, false, &message[56..]));
    assert_eq!(action, XDP_PASS, "moved {moved:?}");

    // A first fragment that cuts the quote before its ports is malformed.
    let (action, moved) = run_eth(&mut program, &fragment(0, true, &message[..48]));
    assert_eq!(action, XDP_DROP, "moved {moved:?}");
    assert!(has(&moved, counters::DENY_MALFORMED), "moved {moved:?}");

    // A quote cut inside its fragment header, and a quoted atomic fragment.
    let cut = |chain: &[u8], next_header: u8| {
        let mut payload = chain.to_vec();
        payload.extend_from_slice(&quoted_tcp[..8]);
        let quoted = ipv6(SERVER_V6, DEVICE_B, next_header, &payload);
        let mut rest = vec![0; 4];
        rest.extend_from_slice(&quoted);
        rest
    };
    let mut rest = cut(&ipv6_options(IPPROTO_FRAGMENT), IPPROTO_DSTOPTS);
    rest.truncate(4 + 40 + 8 + 4);
    let error = ipv6(DEVICE_B, SERVER_V6, IPPROTO_ICMPV6, &icmp(1, 4, &rest));
    let (action, moved) = run_eth(&mut program, &eth6(&error));
    assert_eq!(
        action, XDP_DROP,
        "quote cut in its fragment header, moved {moved:?}"
    );
    assert!(has(&moved, counters::DENY_MALFORMED), "moved {moved:?}");
    let rest = cut(&ipv6_fragment(IPPROTO_TCP, 0, false, 9), IPPROTO_FRAGMENT);
    let error = ipv6(DEVICE_B, SERVER_V6, IPPROTO_ICMPV6, &icmp(1, 4, &rest));
    let (action, moved) = run_eth(&mut program, &eth6(&error));
    assert_eq!(action, XDP_PASS, "quoted atomic fragment, moved {moved:?}");
    assert!(has(&moved, counters::PASS_SESSION), "moved {moved:?}");
}
