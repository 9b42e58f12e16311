//! Real traffic through a gateway namespace: a client namespace reaches a resource namespace
//! over two veth pairs, with the XDP program on the gateway's client-facing veth in native or
//! generic mode. TCP, UDP and ICMP pass with a session. Without one, the client sees the RST or
//! the ICMP error of a reject, or nothing for a drop. Monitor mode passes, and punts reach user
//! space.

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use aya::programs::XdpMode;
use common::{
    Action, DeviceEntry, PrefixRules, PuntEvent, RULE_FLAG_ANY_PORT, RULE_FLAG_MONITOR, Reason,
    ResourceRule, SessionKey, SessionValue, counters,
};
use enforcer::dataplane::reference::LinkKind;
use enforcer_tests::{
    Netns, address,
    datapath::{TestProgram, boot_ns_now, drain_punts},
    packets::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    require_root, veth,
};

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
const RESOURCE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const MONITORED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
const RESOURCE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
const DEVICE_ID: u32 = 7;

const SSH: u32 = 1;
const HTTP: u32 = 2;
const MDNS: u32 = 3;
const DNS: u32 = 4;
const PING: u32 = 5;
const MONITOR: u32 = 6;
const SSH_V6: u32 = 7;

/// Bound on every connect and receive; a dropped packet shows up as this timeout.
const TIMEOUT: Duration = Duration::from_millis(1500);

struct Lab {
    client: Netns,
    gateway: Netns,
    resource: Netns,
}

fn lab() -> Lab {
    let client = Netns::new("dpc").unwrap();
    let gateway = Netns::new("dpg").unwrap();
    let resource = Netns::new("dpr").unwrap();
    veth(&client, "c0", &gateway, "g0").unwrap();
    veth(&gateway, "g1", &resource, "r0").unwrap();
    address(&client, "c0", "192.0.2.2/24").unwrap();
    address(&client, "c0", "2001:db8:1::2/64").unwrap();
    address(&gateway, "g0", "192.0.2.1/24").unwrap();
    address(&gateway, "g0", "2001:db8:1::1/64").unwrap();
    address(&gateway, "g1", "198.51.100.1/24").unwrap();
    address(&gateway, "g1", "2001:db8:2::1/64").unwrap();
    address(&resource, "r0", "198.51.100.2/24").unwrap();
    address(&resource, "r0", "198.51.100.3/24").unwrap();
    address(&resource, "r0", "2001:db8:2::2/64").unwrap();
    let routes: [(&Netns, &[&str]); 4] = [
        (
            &client,
            &["ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1"],
        ),
        (
            &client,
            &[
                "ip",
                "-6",
                "route",
                "add",
                "2001:db8:2::/64",
                "via",
                "2001:db8:1::1",
            ],
        ),
        (
            &resource,
            &["ip", "route", "add", "192.0.2.0/24", "via", "198.51.100.1"],
        ),
        (
            &resource,
            &[
                "ip",
                "-6",
                "route",
                "add",
                "2001:db8:1::/64",
                "via",
                "2001:db8:2::1",
            ],
        ),
    ];
    for (netns, route) in routes {
        netns.exec(route).unwrap();
    }
    gateway
        .exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        .unwrap();
    gateway
        .exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])
        .unwrap();
    Lab {
        client,
        gateway,
        resource,
    }
}

fn rule(resource_id: u32, protocol: u8, port: u16, action: Action, flags: u8) -> ResourceRule {
    ResourceRule {
        resource_id,
        port_lo: port,
        port_hi: port,
        protocol,
        action: action as u8,
        flags,
        _pad: 0,
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

fn configure(program: &mut TestProgram) {
    let resource = rules(&[
        rule(SSH, IPPROTO_TCP, 22, Action::Reject, 0),
        rule(HTTP, IPPROTO_TCP, 80, Action::Drop, 0),
        rule(MDNS, IPPROTO_UDP, 5353, Action::Reject, 0),
        rule(DNS, IPPROTO_UDP, 53, Action::Drop, 0),
        rule(PING, IPPROTO_ICMP, 0, Action::Reject, RULE_FLAG_ANY_PORT),
    ]);
    program
        .set_prefix(IpAddr::V4(RESOURCE_V4), 32, resource)
        .unwrap();
    let monitored = rules(&[rule(
        MONITOR,
        0,
        0,
        Action::Drop,
        RULE_FLAG_ANY_PORT | RULE_FLAG_MONITOR,
    )]);
    program
        .set_prefix(IpAddr::V4(MONITORED_V4), 32, monitored)
        .unwrap();
    let resource_v6 = rules(&[rule(SSH_V6, IPPROTO_TCP, 22, Action::Reject, 0)]);
    program
        .set_prefix(IpAddr::V6(RESOURCE_V6), 128, resource_v6)
        .unwrap();
    let device = DeviceEntry {
        device_id: DEVICE_ID,
        ..Default::default()
    };
    program.set_device(IpAddr::V4(CLIENT_V4), device).unwrap();
    program.set_device(IpAddr::V6(CLIENT_V6), device).unwrap();
}

fn grant(program: &mut TestProgram, resource_id: u32) {
    let key = SessionKey {
        device_id: DEVICE_ID,
        resource_id,
    };
    let value = SessionValue {
        expires_at_boot_ns: boot_ns_now() + 3_600_000_000_000,
    };
    program.set_session(key, value).unwrap();
}

/// Listeners in the resource namespace: TCP 22 and 80 on both families, and an IPv4 UDP echo on
/// 53 and 5353. They stop when the returned flag is set.
fn start_services(resource: &Netns) -> (Arc<AtomicBool>, Vec<thread::JoinHandle<()>>) {
    let _inside = resource.enter().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for port in [22, 80] {
        // A dual-stack socket: it also accepts IPv4 connections.
        let listener = TcpListener::bind(format!("[::]:{port}")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = stop.clone();
        handles.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Accepted connections are dropped at once; the handshake is what counts.
                let _ = listener.accept();
                thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    for port in [53, 5353] {
        let socket = UdpSocket::bind(format!("0.0.0.0:{port}")).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = stop.clone();
        handles.push(thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((len, peer)) = socket.recv_from(&mut buffer) {
                    let _ = socket.send_to(&buffer[..len], peer);
                }
            }
        }));
    }
    (stop, handles)
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Connected,
    /// The connection was refused: the client saw a RST.
    Refused,
    /// The client saw an ICMP "administratively prohibited" (EHOSTUNREACH).
    Unreachable,
    /// Nothing came back within `TIMEOUT`.
    TimedOut,
    Other(String),
}

fn tcp_connect(client: &Netns, target: IpAddr, port: u16) -> Outcome {
    let _inside = client.enter().unwrap();
    match TcpStream::connect_timeout(&SocketAddr::new(target, port), TIMEOUT) {
        Ok(_) => Outcome::Connected,
        Err(err) if err.kind() == ErrorKind::ConnectionRefused => Outcome::Refused,
        Err(err) if err.kind() == ErrorKind::HostUnreachable => Outcome::Unreachable,
        Err(err) if err.kind() == ErrorKind::TimedOut => Outcome::TimedOut,
        Err(err) => Outcome::Other(err.to_string()),
    }
}

fn udp_exchange(client: &Netns, target: IpAddr, port: u16) -> Outcome {
    let _inside = client.enter().unwrap();
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    socket.connect(SocketAddr::new(target, port)).unwrap();
    socket.send(b"enforcer").unwrap();
    let mut buffer = [0u8; 64];
    match socket.recv(&mut buffer) {
        Ok(len) if &buffer[..len] == b"enforcer" => Outcome::Connected,
        Ok(len) => Outcome::Other(format!("unexpected reply of {len} bytes")),
        Err(err) if err.kind() == ErrorKind::HostUnreachable => Outcome::Unreachable,
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Outcome::TimedOut
        }
        Err(err) => Outcome::Other(err.to_string()),
    }
}

/// Runs one real ping; returns its exit success and its output.
fn ping(client: &Netns, target: IpAddr) -> (bool, String) {
    let output = client
        .try_exec(&["ping", "-c", "1", "-W", "1", &target.to_string()])
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), text)
}

fn punted(events: &[PuntEvent], resource_id: u32, reason: Reason) -> bool {
    events.iter().any(|event| {
        event.device_id == DEVICE_ID
            && event.resource_id == resource_id
            && event.reason == reason as u8
    })
}

fn enforce_real_traffic(mode: XdpMode, attached_as: &str) {
    require_root();
    let lab = lab();
    let (stop, services) = start_services(&lab.resource);

    let (tcp_before, udp_before) = (
        tcp_connect(&lab.client, IpAddr::V4(RESOURCE_V4), 22),
        udp_exchange(&lab.client, IpAddr::V4(RESOURCE_V4), 53),
    );
    assert_eq!(tcp_before, Outcome::Connected, "TCP before attaching");
    assert_eq!(udp_before, Outcome::Connected, "UDP before attaching");

    // Native XDP_TX on a veth hands the frame to the peer's NAPI queue, which exists only
    // while the peer runs native XDP. A second instance of the program, with empty maps and
    // so passing everything, provides it on the client side.
    let mut peer = TestProgram::load().unwrap();
    if mode == XdpMode::Driver {
        let _inside = lab.client.enter().unwrap();
        peer.program(LinkKind::Ethernet)
            .unwrap()
            .attach("c0", XdpMode::Driver)
            .unwrap();
    }

    let mut program = TestProgram::load().unwrap();
    let mut punts = program.take_punts().unwrap();
    configure(&mut program);
    {
        let _inside = lab.gateway.enter().unwrap();
        program
            .program(LinkKind::Ethernet)
            .unwrap()
            .attach("g0", mode)
            .unwrap();
    }
    let link = lab
        .gateway
        .exec(&["ip", "-d", "link", "show", "g0"])
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains(&format!("{attached_as} ")),
        "g0 should show `{attached_as}`: {link}"
    );

    // Without sessions a reject sends a reply and a drop stays silent.
    let v4 = IpAddr::V4(RESOURCE_V4);
    let outcome = tcp_connect(&lab.client, v4, 22);
    assert_eq!(outcome, Outcome::Refused, "TCP reject");
    assert_eq!(
        tcp_connect(&lab.client, v4, 80),
        Outcome::TimedOut,
        "TCP drop"
    );
    assert_eq!(
        udp_exchange(&lab.client, v4, 5353),
        Outcome::Unreachable,
        "UDP reject"
    );
    assert_eq!(
        udp_exchange(&lab.client, v4, 53),
        Outcome::TimedOut,
        "UDP drop"
    );
    let (ping_passed, ping_output) = ping(&lab.client, v4);
    assert!(!ping_passed, "ping without session: {ping_output}");
    assert!(
        ping_output.contains("Packet filtered"),
        "ping must report the ICMP administratively-prohibited reply: {ping_output}"
    );
    let v6 = IpAddr::V6(RESOURCE_V6);
    assert_eq!(
        tcp_connect(&lab.client, v6, 22),
        Outcome::Refused,
        "IPv6 TCP reject"
    );

    // Monitor mode passes without a session.
    let monitored = IpAddr::V4(MONITORED_V4);
    assert_eq!(
        tcp_connect(&lab.client, monitored, 22),
        Outcome::Connected,
        "monitor mode"
    );

    let events = drain_punts(&mut punts);
    for (resource_id, name) in [
        (SSH, "TCP reject"),
        (HTTP, "TCP drop"),
        (MDNS, "UDP reject"),
        (DNS, "UDP drop"),
        (PING, "ping"),
        (SSH_V6, "IPv6 TCP reject"),
    ] {
        assert!(
            punted(&events, resource_id, Reason::NoSession),
            "{name}: no punt event with reason no_session in {events:?}"
        );
    }
    let monitor_event = events
        .iter()
        .find(|event| event.resource_id == MONITOR)
        .expect("a punt event for the monitored resource");
    assert_eq!(monitor_event.monitor, 1, "monitor flag of the punt event");
    let ssh_event = events
        .iter()
        .find(|event| event.resource_id == SSH)
        .expect("a punt event for TCP 22");
    assert_eq!(ssh_event.dst[..4], RESOURCE_V4.octets(), "punt destination");
    assert_eq!(ssh_event.src[..4], CLIENT_V4.octets(), "punt source");
    assert_eq!(ssh_event.dst_port, 22, "punt destination port");
    assert_eq!(ssh_event.protocol, IPPROTO_TCP, "punt protocol");

    // With sessions everything passes.
    for resource_id in [SSH, HTTP, MDNS, DNS, PING, SSH_V6] {
        grant(&mut program, resource_id);
    }
    assert_eq!(
        tcp_connect(&lab.client, v4, 22),
        Outcome::Connected,
        "TCP 22 with session"
    );
    assert_eq!(
        tcp_connect(&lab.client, v4, 80),
        Outcome::Connected,
        "TCP 80 with session"
    );
    assert_eq!(
        udp_exchange(&lab.client, v4, 5353),
        Outcome::Connected,
        "UDP 5353 with session"
    );
    assert_eq!(
        udp_exchange(&lab.client, v4, 53),
        Outcome::Connected,
        "UDP 53 with session"
    );
    let (ping_passed, ping_output) = ping(&lab.client, v4);
    assert!(ping_passed, "ping with session: {ping_output}");
    assert_eq!(
        tcp_connect(&lab.client, v6, 22),
        Outcome::Connected,
        "IPv6 TCP with session"
    );

    let totals = program.counters().unwrap();
    for counter in [
        counters::PASS_SESSION,
        counters::PASS_MONITOR,
        counters::DENY_NO_SESSION,
        counters::REJECT_SENT,
        counters::PUNT_SENT,
    ] {
        assert!(
            totals[counter as usize] > 0,
            "counter {} stayed zero",
            counters::NAMES[counter as usize]
        );
    }
    assert_eq!(
        totals[counters::REJECT_FAILED as usize],
        0,
        "reject_failed counter"
    );

    stop.store(true, Ordering::Relaxed);
    for service in services {
        service.join().unwrap();
    }
}

#[test]
fn netns_traffic_enforced_in_generic_mode() {
    enforce_real_traffic(XdpMode::Skb, "xdpgeneric");
}

#[test]
fn netns_traffic_enforced_in_native_mode() {
    enforce_real_traffic(XdpMode::Driver, "xdp");
}
