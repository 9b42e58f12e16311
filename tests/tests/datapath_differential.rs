//! Differential test: random and mutated packets through the real XDP program
//! (`BPF_PROG_TEST_RUN`) and through the reference classifier, which must agree on the XDP
//! action, on the reply bytes, on leaving passed packets untouched, and on the counter totals.
//! ICMP errors quote matching and mismatched addresses and ports, IPv6 extension headers and
//! mutated bytes, and two sessions cycle through live, expired and deleted during the run, so
//! later fragments meet sessions that ended after their first fragment passed.
//!
//! The generator is a seeded splitmix64. The seed is printed; replay a run with
//! `DATAPATH_SEED=<seed> cargo xtask test datapath_differential`, and change the packet count
//! with `DATAPATH_PACKETS`.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use common::{
    Action, DEVICE_FLAG_MAC_BOUND, DeviceEntry, FragmentKey, FragmentValue, PROTOCOL_ANY,
    PrefixRules, RULE_FLAG_ANY_PORT, RULE_FLAG_MONITOR, ResourceRule, SessionKey, SessionValue,
    counters, map_names,
};
use enforcer::dataplane::reference::{self, LinkKind, State, Tables, XdpAction};
use enforcer_tests::{
    datapath::{TestProgram, boot_ns_now},
    packets::*,
    require_root,
};

const DEFAULT_PACKETS: u64 = 1_000_000;
/// Safety bound on the run; at about 3 µs per packet a million packets take well under it.
const TIME_LIMIT: Duration = Duration::from_secs(600);
/// Packets between two resets of the fragment tables, so the kernel's LRU map never evicts.
const FRAGMENT_RESET_INTERVAL: u64 = 20_000;
/// Packets between two changes of the flipped sessions, so that later fragments arrive after
/// the session that let their first fragment pass has expired or been deleted.
const SESSION_FLIP_INTERVAL: u64 = 3_000;
/// Sessions that the run expires, deletes and renews in turn: device A's SSH and device B's
/// IPv6 any-protocol resource.
const FLIPPED_SESSIONS: [SessionKey; 2] = [
    SessionKey {
        device_id: 1,
        resource_id: 10,
    },
    SessionKey {
        device_id: 2,
        resource_id: 42,
    },
];

const DEVICE_A: [u8; 4] = [192, 0, 2, 10];
const DEVICE_C: [u8; 4] = [192, 0, 2, 11];
const UNKNOWN_V4: [u8; 4] = [192, 0, 2, 99];
const DEVICE_B: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
const UNKNOWN_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99,
];
const WRONG_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];

const DESTINATIONS_V4: [[u8; 4]; 5] = [
    [198, 51, 100, 1],
    [198, 51, 100, 200],
    [203, 0, 113, 5],
    [192, 0, 2, 1],
    [10, 0, 0, 1],
];
const DESTINATIONS_V6: [[u8; 16]; 3] = [
    [0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [
        0x20, 0x01, 0x0d, 0xb8, 1, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    ],
    [0x20, 0x01, 0x0d, 0xb8, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
];

/// splitmix64: small, fast, and fully determined by its seed.
struct Generator(u64);

impl Generator {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// Returns fewer than `bound` random bytes.
    fn bytes_below(&mut self, bound: u64) -> Vec<u8> {
        let len = self.below(bound);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn rule(
    resource_id: u32,
    protocol: u8,
    ports: (u16, u16),
    action: Action,
    flags: u8,
) -> ResourceRule {
    ResourceRule {
        resource_id,
        port_lo: ports.0,
        port_hi: ports.1,
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

fn setup() -> (TestProgram, Tables) {
    let mut program = TestProgram::load().unwrap();
    let mut tables = Tables::default();

    let ssh = rule(10, IPPROTO_TCP, (22, 22), Action::Reject, 0);
    let dns = rule(11, IPPROTO_UDP, (53, 53), Action::Drop, 0);
    let ping = rule(12, IPPROTO_ICMP, (0, 0), Action::Reject, RULE_FLAG_ANY_PORT);
    let sctp = rule(13, 132, (1000, 2000), Action::Reject, 0);
    let narrow = rule(20, PROTOCOL_ANY, (0, 0), Action::Drop, RULE_FLAG_ANY_PORT);
    let monitor = rule(
        30,
        PROTOCOL_ANY,
        (0, 0),
        Action::Reject,
        RULE_FLAG_ANY_PORT | RULE_FLAG_MONITOR,
    );
    let https = rule(40, IPPROTO_TCP, (443, 443), Action::Reject, 0);
    let udp_any = rule(41, IPPROTO_UDP, (0, 0), Action::Drop, RULE_FLAG_ANY_PORT);
    let v6_any = rule(42, PROTOCOL_ANY, (0, 0), Action::Reject, RULE_FLAG_ANY_PORT);
    let v6_monitor = rule(
        43,
        PROTOCOL_ANY,
        (0, 0),
        Action::Drop,
        RULE_FLAG_ANY_PORT | RULE_FLAG_MONITOR,
    );
    let prefixes: [(IpAddr, u8, PrefixRules); 5] = [
        (
            IpAddr::from([198, 51, 100, 0]),
            24,
            rules(&[ssh, dns, ping, sctp]),
        ),
        (
            IpAddr::from([198, 51, 100, 128]),
            25,
            rules(&[narrow, ssh, dns, ping, sctp]),
        ),
        (IpAddr::from([203, 0, 113, 0]), 24, rules(&[monitor])),
        (
            IpAddr::from([0x2001, 0x0db8, 0x0100, 0, 0, 0, 0, 0u16]),
            48,
            rules(&[https, udp_any, v6_any]),
        ),
        (
            IpAddr::from([0x2001, 0x0db8, 0x0100, 0x8000, 0, 0, 0, 0u16]),
            49,
            rules(&[v6_monitor, https, udp_any, v6_any]),
        ),
    ];
    for (address, prefix_len, list) in prefixes {
        program
            .set_prefix(address, prefix_len as u32, list)
            .unwrap();
        tables.prefixes.insert(address, prefix_len, list);
    }

    let bound = DeviceEntry {
        device_id: 1,
        flags: DEVICE_FLAG_MAC_BOUND,
        mac: CLIENT_MAC,
        _pad: [0; 2],
    };
    let devices = [
        (IpAddr::from(DEVICE_A), bound),
        (
            IpAddr::from(DEVICE_C),
            DeviceEntry {
                device_id: 3,
                ..Default::default()
            },
        ),
        (
            IpAddr::from(DEVICE_B),
            DeviceEntry {
                device_id: 2,
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
        (1, 10, live),
        (1, 11, expired),
        (1, 13, live),
        (3, 12, live),
        (3, 20, expired),
        (2, 40, live),
        (2, 41, expired),
        (2, 42, live),
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

/// Returns an upper-layer header and payload for `protocol`, sometimes an ICMP error quoting
/// a packet from `dst` back to `src`.
fn upper_layer(
    random: &mut Generator,
    protocol: u8,
    version: u8,
    src: &[u8],
    dst: &[u8],
) -> Vec<u8> {
    let random_port = random.next() as u16;
    let port = random.pick(&[22u16, 53, 443, 1500, 80, random_port]);
    let data = random.bytes_below(24);
    match protocol {
        IPPROTO_TCP => {
            let random_flags = random.next() as u8;
            let flags = random.pick(&[TCP_SYN, TCP_ACK, TCP_RST, TCP_FIN | TCP_ACK, random_flags]);
            tcp(
                40000,
                port,
                random.next() as u32,
                random.next() as u32,
                flags,
                &data,
            )
        }
        IPPROTO_UDP | 132 | 136 => {
            let mut datagram = udp(5000, port, &data);
            if protocol == 132 {
                datagram.extend_from_slice(&[0; 4]);
            }
            datagram
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 if random.chance(40) => {
            let error_type = if version == 4 {
                random.pick(&[3u8, 11, 12, 4, 5])
            } else {
                random.pick(&[1u8, 2, 3, 4])
            };
            let mut rest = vec![0u8; 4];
            rest.extend_from_slice(&quote(random, version, src, dst));
            icmp(error_type, random.below(16) as u8, &rest)
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => icmp(random.pick(&[8u8, 0, 128, 129]), 0, &data),
        _ => data,
    }
}

/// Returns the address an ICMP error's quote names in place of `expected`: mostly `expected`
/// itself, sometimes another known address, random bytes, or `expected` with one bit flipped.
fn quoted_address(random: &mut Generator, version: u8, expected: &[u8]) -> Vec<u8> {
    let mut address = expected.to_vec();
    match random.below(10) {
        0 => {
            address = if version == 4 {
                random
                    .pick(&[
                        DEVICE_A,
                        DEVICE_C,
                        UNKNOWN_V4,
                        DESTINATIONS_V4[0],
                        DESTINATIONS_V4[2],
                    ])
                    .to_vec()
            } else {
                random
                    .pick(&[DEVICE_B, UNKNOWN_V6, DESTINATIONS_V6[0], DESTINATIONS_V6[1]])
                    .to_vec()
            };
        }
        1 => address
            .iter_mut()
            .for_each(|byte| *byte = random.next() as u8),
        2 => {
            let index = random.below(address.len() as u64) as usize;
            address[index] ^= 1 << random.below(8);
        }
        _ => {}
    }
    address
}

/// Returns the quote of an ICMP error sent from `src` to `dst`: the start of a packet from
/// `dst` to `src`. Its addresses, ports, IPv6 extension headers and fragment offset sometimes
/// do not fit the outer packet, and it is cut at a random length and sometimes mutated.
fn quote(random: &mut Generator, version: u8, src: &[u8], dst: &[u8]) -> Vec<u8> {
    let quoted_src = quoted_address(random, version, dst);
    let quoted_dst = quoted_address(random, version, src);

    let random_protocol = random.next() as u8;
    let quoted_protocol = random.pick(&[
        IPPROTO_TCP,
        IPPROTO_UDP,
        IPPROTO_ICMP,
        IPPROTO_ICMPV6,
        132,
        random_protocol,
    ]);
    let random_port = random.next() as u16;
    let src_port = random.pick(&[22, 53, 443, 1500, 80, random_port]);
    let dst_port = if random.chance(80) {
        40000
    } else {
        random.next() as u16
    };
    let inner_l4 = udp(src_port, dst_port, b"");

    let mut inner = if version == 4 {
        let mut header = Ipv4::new(
            quoted_src[..4].try_into().expect("IPv4 address"),
            quoted_dst[..4].try_into().expect("IPv4 address"),
            quoted_protocol,
        );
        if random.chance(10) {
            header.fragment_offset = 3;
        }
        if random.chance(10) {
            header.options = vec![1; 4 * random.below(4) as usize];
        }
        header.packet(&inner_l4)
    } else {
        let (first, chain) = if random.chance(30) {
            extension_chain(random, quoted_protocol, 5)
        } else {
            (quoted_protocol, Vec::new())
        };
        let mut payload = chain;
        payload.extend_from_slice(&inner_l4);
        ipv6(
            quoted_src[..].try_into().expect("IPv6 address"),
            quoted_dst[..].try_into().expect("IPv6 address"),
            first,
            &payload,
        )
    };

    let min_len = inner.len() * 3 / 4;
    let quote_len = (random.below(inner.len() as u64 + 1) as usize).max(min_len);
    inner.truncate(quote_len);
    if random.chance(10) {
        mutate_bytes(random, &mut inner);
    }
    inner
}

/// Returns a random IPv6 extension header chain of fewer than `max_headers` headers that ends
/// in `protocol`, and the type of its first header (`protocol` itself for an empty chain).
/// Fragment headers have a zero or random offset, so some chains are later fragments.
fn extension_chain(random: &mut Generator, protocol: u8, max_headers: u64) -> (u8, Vec<u8>) {
    let mut chain: Vec<(u8, Vec<u8>)> = Vec::new();
    for _ in 0..random.below(max_headers) {
        let kind = random.pick(&[0u8, 43, 44, 60, 51, 60]);
        let header = match kind {
            44 => {
                let offset = if random.chance(50) {
                    0
                } else {
                    random.below(200) as u16
                };
                ipv6_fragment(0, offset, random.chance(60), random.below(32) as u32)
            }
            51 => vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            _ => ipv6_options(0),
        };
        chain.push((kind, header));
    }
    let mut bytes = Vec::new();
    for (index, (_, header)) in chain.iter().enumerate() {
        let mut header = header.clone();
        header[0] = chain.get(index + 1).map_or(protocol, |(kind, _)| *kind);
        bytes.extend_from_slice(&header);
    }
    let first = chain.first().map_or(protocol, |(kind, _)| *kind);
    (first, bytes)
}

fn ipv4_packet(random: &mut Generator) -> Vec<u8> {
    let src = random.pick(&[DEVICE_A, DEVICE_C, UNKNOWN_V4, [0, 0, 0, 0], [224, 0, 0, 1]]);
    let dst = random.pick(&DESTINATIONS_V4);
    let random_protocol = random.next() as u8;
    let protocol = random.pick(&[
        IPPROTO_TCP,
        IPPROTO_UDP,
        IPPROTO_ICMP,
        132,
        47,
        random_protocol,
    ]);
    let mut header = Ipv4::new(src, dst, protocol);
    if random.chance(20) {
        let words = random.below(11) as usize;
        header.options = vec![1; words * 4];
    }
    header.id = random.below(32) as u16;
    if random.chance(25) {
        header.more_fragments = random.chance(50);
        header.fragment_offset = if random.chance(50) {
            0
        } else {
            random.below(200) as u16
        };
    }
    let payload = if header.fragment_offset != 0 {
        random.bytes_below(64)
    } else {
        upper_layer(random, protocol, 4, &src, &dst)
    };
    header.packet(&payload)
}

fn ipv6_packet(random: &mut Generator) -> Vec<u8> {
    let src = random.pick(&[DEVICE_B, UNKNOWN_V6, [0; 16]]);
    let dst = random.pick(&DESTINATIONS_V6);
    let random_protocol = random.next() as u8;
    let protocol = random.pick(&[
        IPPROTO_TCP,
        IPPROTO_UDP,
        IPPROTO_ICMPV6,
        59,
        253,
        random_protocol,
    ]);

    let mut chain: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut later_fragment = false;
    for _ in 0..random.below(11) {
        let kind = random.pick(&[0u8, 43, 44, 60, 51, 60]);
        let header = match kind {
            44 => {
                let offset = if random.chance(50) {
                    0
                } else {
                    random.below(200) as u16
                };
                later_fragment |= offset != 0;
                ipv6_fragment(0, offset, random.chance(60), random.below(32) as u32)
            }
            51 => vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            _ => ipv6_options(0),
        };
        chain.push((kind, header));
    }
    let upper = if later_fragment {
        random.bytes_below(64)
    } else {
        upper_layer(random, protocol, 6, &src, &dst)
    };
    let mut payload = Vec::new();
    for (index, (_, header)) in chain.iter().enumerate() {
        let mut header = header.clone();
        header[0] = chain.get(index + 1).map_or(protocol, |(kind, _)| *kind);
        payload.extend_from_slice(&header);
    }
    payload.extend_from_slice(&upper);
    let first = chain.first().map_or(protocol, |(kind, _)| *kind);
    ipv6(src, dst, first, &payload)
}

/// Flips or overwrites up to three bytes.
fn mutate_bytes(random: &mut Generator, bytes: &mut [u8]) {
    if bytes.is_empty() {
        return;
    }
    for _ in 0..=random.below(3) {
        let index = random.below(bytes.len() as u64) as usize;
        if random.chance(50) {
            bytes[index] ^= 1 << random.below(8);
        } else {
            bytes[index] = random.next() as u8;
        }
    }
}

/// Flips, truncates, extends or overwrites bytes of a valid frame.
fn mutate(random: &mut Generator, frame: &mut Vec<u8>) {
    for _ in 0..=random.below(3) {
        match random.below(5) {
            0 | 1 => {
                let index = random.below(frame.len() as u64) as usize;
                frame[index] ^= 1 << random.below(8);
            }
            2 => {
                let index = random.below(frame.len() as u64) as usize;
                frame[index] = random.next() as u8;
            }
            3 => {
                let len = 14 + random.below(frame.len().saturating_sub(14) as u64 + 1) as usize;
                frame.truncate(len);
            }
            _ => {
                let extra = random.bytes_below(32);
                frame.extend_from_slice(&extra);
            }
        }
    }
}

/// Returns a frame and the entry point it goes to.
fn frame(random: &mut Generator) -> (LinkKind, Vec<u8>) {
    let version_6 = random.chance(40);
    let packet = if version_6 {
        ipv6_packet(random)
    } else {
        ipv4_packet(random)
    };
    let link = if random.chance(15) {
        LinkKind::RawIp
    } else {
        LinkKind::Ethernet
    };
    let mut frame = match link {
        LinkKind::RawIp => packet,
        LinkKind::Ethernet => {
            let tags: Vec<u16> = (0..random.pick(&[0, 0, 0, 1, 2, 3, 4]))
                .map(|_| random.pick(&[0x8100u16, 0x88a8, 0x9100]))
                .collect();
            let ethertype = match random.below(20) {
                0 => 0x0806,
                1 => random.next() as u16,
                _ if version_6 => 0x86dd,
                _ => 0x0800,
            };
            let mac = if random.chance(10) {
                WRONG_MAC
            } else {
                CLIENT_MAC
            };
            ethernet(mac, &tags, ethertype, &packet)
        }
    };
    if random.chance(40) {
        mutate(random, &mut frame);
    }
    // BPF_PROG_TEST_RUN rejects XDP input shorter than an Ethernet header.
    frame.resize(frame.len().max(14), 0);
    (link, frame)
}

/// Sets the flipped sessions to the `step`th state of the cycle live, expired, deleted, in the
/// kernel and in the reference tables alike.
fn flip_sessions(program: &mut TestProgram, tables: &mut Tables, step: u64) {
    let mut sessions: aya::maps::HashMap<_, SessionKey, SessionValue> =
        program.map(map_names::SESSIONS).unwrap();
    for key in FLIPPED_SESSIONS {
        match step % 3 {
            0 => {
                let live = SessionValue {
                    expires_at_boot_ns: boot_ns_now() + 3_600_000_000_000,
                };
                sessions.insert(key, live, 0).unwrap();
                tables.sessions.insert(key, live);
            }
            1 => {
                let expired = SessionValue {
                    expires_at_boot_ns: 1,
                };
                sessions.insert(key, expired, 0).unwrap();
                tables.sessions.insert(key, expired);
            }
            _ => {
                sessions.remove(&key).unwrap();
                tables.sessions.remove(&key);
            }
        }
    }
}

fn clear_fragments(program: &mut TestProgram, state: &mut State) {
    let mut map: aya::maps::HashMap<_, FragmentKey, FragmentValue> =
        program.map(map_names::FRAGMENTS).unwrap();
    let keys: Vec<FragmentKey> = map.keys().filter_map(Result::ok).collect();
    for key in keys {
        map.remove(&key).unwrap();
    }
    state.fragments.clear();
}

#[test]
fn kernel_and_reference_agree_on_random_packets() {
    require_root();
    let seed = std::env::var("DATAPATH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| boot_ns_now() ^ u64::from(std::process::id()));
    let packets: u64 = std::env::var("DATAPATH_PACKETS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(DEFAULT_PACKETS);
    println!(
        "generator: splitmix64, seed {seed}, {packets} packets (replay with DATAPATH_SEED={seed})"
    );

    let (mut program, mut tables) = setup();
    let mut state = State::default();
    let mut generator = Generator(seed);
    let mut expected_counters = [0u64; counters::COUNT as usize];
    let before = program.counters().unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while sent < packets && started.elapsed() < TIME_LIMIT {
        if sent % FRAGMENT_RESET_INTERVAL == 0 {
            clear_fragments(&mut program, &mut state);
        }
        if sent % SESSION_FLIP_INTERVAL == 0 {
            flip_sessions(&mut program, &mut tables, sent / SESSION_FLIP_INTERVAL);
        }
        let (link, frame) = frame(&mut generator);
        let kernel = program.run(link, &frame).unwrap();
        let model = reference::classify(&frame, link, &tables, &mut state, boot_ns_now());
        sent += 1;

        let context = format!("packet {sent} (seed {seed}, {link:?}): {frame:02x?}");
        assert_eq!(
            kernel.action,
            model.action.code(),
            "XDP action of {context}"
        );
        match model.action {
            XdpAction::Tx => assert_eq!(
                Some(kernel.output.as_slice()),
                model.reply.as_deref(),
                "reply of {context}"
            ),
            _ => assert_eq!(kernel.output, frame, "frame left untouched: {context}"),
        }
        expected_counters[model.verdict_counter as usize] += 1;
        for counter in model.side_counters {
            expected_counters[counter as usize] += 1;
        }
    }
    let elapsed = started.elapsed();
    println!("{sent} packets in {elapsed:?}, no disagreement");
    for (name, count) in counters::NAMES.iter().zip(expected_counters) {
        println!("  {name}: {count}");
    }
    assert_eq!(
        sent, packets,
        "the run stopped at the {TIME_LIMIT:?} safety bound"
    );

    let after = program.counters().unwrap();
    let punt_counters = [
        counters::PUNT_SENT,
        counters::PUNT_RATE_LIMITED,
        counters::PUNT_LOST,
    ];
    for counter in 0..counters::COUNT {
        if punt_counters.contains(&counter) {
            continue;
        }
        let index = counter as usize;
        assert_eq!(
            after[index] - before[index],
            expected_counters[index],
            "counter {}",
            counters::NAMES[index]
        );
    }
}
