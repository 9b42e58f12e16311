//! Types shared by the XDP program and user space: map names, keys, values, punt events and
//! counter indices. Every type is `#[repr(C)]` with explicit padding, so both sides agree on the
//! byte layout; the `user` feature implements `aya::Pod` for them.
#![no_std]

/// Maximum number of 802.1Q / 802.1ad tags the parser walks; a frame with more is malformed.
pub const VLAN_MAX_DEPTH: usize = 3;

/// Maximum number of IPv6 extension headers the parser walks; a longer chain is malformed.
pub const IPV6_EXT_MAX_DEPTH: usize = 8;

/// Maximum number of resource rules stored with one destination prefix, including the rules
/// inherited from covering prefixes.
pub const MAX_RULES_PER_PREFIX: usize = 16;

/// Device id that marks a source address with no enrolled device.
pub const UNKNOWN_DEVICE_ID: u32 = 0;

/// Resource id reported when a packet cannot be classified (for example a malformed packet).
pub const UNKNOWN_RESOURCE_ID: u32 = 0;

/// Names of the maps in the XDP object, as user space opens and pins them.
pub mod map_names {
    pub const DEVICES_V4: &str = "DEVICES_V4";
    pub const DEVICES_V6: &str = "DEVICES_V6";
    pub const PREFIXES_V4: &str = "PREFIXES_V4";
    pub const PREFIXES_V6: &str = "PREFIXES_V6";
    pub const SESSIONS: &str = "SESSIONS";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const PUNT_LIMITS: &str = "PUNT_LIMITS";
    pub const PUNTS: &str = "PUNTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const CONFIG: &str = "CONFIG";
}

/// Names of the XDP programs in the object.
pub mod program_names {
    /// Entry point for interfaces whose frames start with an Ethernet header.
    pub const ETHERNET: &str = "enforcer_eth";
    /// Entry point for raw-IP interfaces (tun, WireGuard), whose packets start at the IP header.
    pub const RAW_IP: &str = "enforcer_ip";
}

/// Value of `DEVICES_V4` (keyed by the IPv4 address in network order) and `DEVICES_V6`
/// (keyed by the IPv6 address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceEntry {
    pub device_id: u32,
    /// `DEVICE_FLAG_*` bits.
    pub flags: u32,
    /// Source MAC address the device must use when `DEVICE_FLAG_MAC_BOUND` is set.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The device's address is accepted only from `DeviceEntry::mac` (Ethernet interfaces only).
pub const DEVICE_FLAG_MAC_BOUND: u32 = 1;

/// Action for a packet to a protected resource that has no live session.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Drop silently.
    Drop = 0,
    /// Reply with a TCP RST, or ICMP / ICMPv6 "administratively prohibited", and drop.
    Reject = 1,
}

/// One resource rule attached to a destination prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResourceRule {
    pub resource_id: u32,
    /// First destination port matched, inclusive (TCP, UDP and SCTP only).
    pub port_lo: u16,
    /// Last destination port matched, inclusive.
    pub port_hi: u16,
    /// IP protocol number, or `PROTOCOL_ANY`.
    pub protocol: u8,
    /// `Action` as a byte.
    pub action: u8,
    /// `RULE_FLAG_*` bits.
    pub flags: u8,
    pub _pad: u8,
}

/// `ResourceRule::protocol` value that matches every IP protocol.
pub const PROTOCOL_ANY: u8 = 0;

/// Monitor mode: a packet without a live session passes but is still counted and punted.
pub const RULE_FLAG_MONITOR: u8 = 1;

/// The rule ignores ports, so it also matches protocols without ports (ICMP, GRE, ...).
pub const RULE_FLAG_ANY_PORT: u8 = 2;

/// Value of `PREFIXES_V4` and `PREFIXES_V6`, LPM tries keyed by destination prefix. Rules are
/// tried in order and the first match wins. User space stores the prefix's own rules first,
/// then the rules of every covering (less specific) prefix, most specific first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixRules {
    pub count: u32,
    pub rules: [ResourceRule; MAX_RULES_PER_PREFIX],
}

impl Default for PrefixRules {
    fn default() -> Self {
        Self {
            count: 0,
            rules: [ResourceRule::default(); MAX_RULES_PER_PREFIX],
        }
    }
}

/// Key of `SESSIONS`: the pair a session is granted for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub device_id: u32,
    pub resource_id: u32,
}

/// Value of `SESSIONS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SessionValue {
    /// The session is live while `bpf_ktime_get_boot_ns()` is below this value.
    pub expires_at_boot_ns: u64,
}

/// Reason a packet was denied (or, in monitor mode, would have been).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    UnknownDevice = 1,
    NoSession = 2,
    Expired = 3,
    Malformed = 4,
    WrongMac = 5,
    /// A later fragment whose first fragment was not allowed, was never seen, was recorded
    /// more than `FRAGMENT_TIMEOUT_NS` ago, or passed on a session that is no longer valid.
    Fragment = 6,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::UnknownDevice,
        Reason::NoSession,
        Reason::Expired,
        Reason::Malformed,
        Reason::WrongMac,
        Reason::Fragment,
    ];

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| *reason as u8 == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownDevice => "unknown_device",
            Reason::NoSession => "no_session",
            Reason::Expired => "expired",
            Reason::Malformed => "malformed",
            Reason::WrongMac => "wrong_mac",
            Reason::Fragment => "fragment",
        }
    }
}

/// Record sent on the `PUNTS` ring buffer to the reauth responder.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PuntEvent {
    pub timestamp_boot_ns: u64,
    pub device_id: u32,
    pub resource_id: u32,
    /// Source address: IPv4 in the first four bytes, or IPv6.
    pub src: [u8; 16],
    /// Destination address, laid out as `src`.
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// `Reason` as a byte.
    pub reason: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// 1 when the resource is in monitor mode and the packet passed.
    pub monitor: u8,
}

/// Key of `FRAGMENTS`: a datagram under reassembly, as receivers identify it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    /// Source address, laid out as in `PuntEvent`.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits).
    pub id: u32,
    /// IP protocol for IPv4, and 0 for IPv6: IPv6 receivers reassemble by addresses and
    /// identification alone and ignore the next header of later fragments (RFC 2460 4.5).
    pub protocol: u8,
    pub ip_version: u8,
    pub _pad: [u8; 2],
}

/// Time after which a `FRAGMENTS` record no longer applies: later fragments are dropped, and
/// a new first fragment is recorded afresh. It exceeds the reassembly timeouts of receivers
/// (60 s in RFC 2460 4.5 and in Linux's default `net.ipv6.ip6frag_time`, 30 s in
/// `net.ipv4.ipfrag_time`), so
/// a receiver has given up on a datagram before its record goes stale.
pub const FRAGMENT_TIMEOUT_NS: u64 = 120_000_000_000;

/// Value of `FRAGMENTS`: the classification of the datagram's first fragment. When several
/// first fragments of one datagram arrive within `FRAGMENT_TIMEOUT_NS` and are classified
/// differently, the record is a deny, because the receiver may keep any one of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentValue {
    /// Boot time of the last first fragment recorded for the datagram.
    pub recorded_at_boot_ns: u64,
    pub device_id: u32,
    pub resource_id: u32,
    /// 1 when the first fragment passed and no conflicting one was seen.
    pub allowed: u8,
    /// Verdict counter (`counters::PASS_*`) the first fragment bumped; every later fragment of
    /// an allowed datagram bumps it too.
    pub counter: u8,
    /// Bytes of fragment data the first fragment carried, the maximum over the first fragments
    /// recorded. A later fragment at a lower offset overlaps them and is dropped.
    pub first_len: u16,
    pub _pad: [u8; 4],
}

/// Value of the one-entry `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// Minimum time between two punts for the same (device, resource) pair.
    pub punt_interval_ns: u64,
    /// `CONFIG_FLAG_*` bits.
    pub flags: u64,
}

/// Punt interval used while `Config::punt_interval_ns` is zero.
pub const DEFAULT_PUNT_INTERVAL_NS: u64 = 1_000_000_000;

/// Every protected resource behaves as if in monitor mode.
pub const CONFIG_FLAG_MONITOR_ALL: u64 = 1;

/// Indices of the per-CPU `COUNTERS` array. Each packet bumps exactly one verdict counter;
/// the others count side effects.
pub mod counters {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed.
    pub const PASS_NOT_IP: u32 = 0;
    /// The destination is no resource: passed untouched.
    pub const PASS_UNPROTECTED: u32 = 1;
    /// Live session: passed.
    pub const PASS_SESSION: u32 = 2;
    /// No live session, but the resource is in monitor mode: passed.
    pub const PASS_MONITOR: u32 = 3;
    pub const DENY_UNKNOWN_DEVICE: u32 = 4;
    pub const DENY_NO_SESSION: u32 = 5;
    pub const DENY_EXPIRED: u32 = 6;
    pub const DENY_MALFORMED: u32 = 7;
    pub const DENY_WRONG_MAC: u32 = 8;
    pub const DENY_FRAGMENT: u32 = 9;
    /// A deny replied to with a TCP RST or an ICMP error sent with XDP_TX.
    pub const REJECT_SENT: u32 = 10;
    /// A deny whose action was reject, but no reply could be built: dropped instead.
    pub const REJECT_FAILED: u32 = 11;
    pub const PUNT_SENT: u32 = 12;
    pub const PUNT_RATE_LIMITED: u32 = 13;
    /// The ring buffer was full, so the punt was lost.
    pub const PUNT_LOST: u32 = 14;
    pub const COUNT: u32 = 15;

    /// Counter names for metrics and `enforcer stats`, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass_not_ip",
        "pass_unprotected",
        "pass_session",
        "pass_monitor",
        "deny_unknown_device",
        "deny_no_session",
        "deny_expired",
        "deny_malformed",
        "deny_wrong_mac",
        "deny_fragment",
        "reject_sent",
        "reject_failed",
        "punt_sent",
        "punt_rate_limited",
        "punt_lost",
    ];
}

/// IP protocol numbers (IANA) the data path treats specially.
pub mod ip_protocol {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTHENTICATION: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const DESTINATION_OPTIONS: u8 = 60;
    pub const SCTP: u8 = 132;
    pub const UDP_LITE: u8 = 136;

    /// Returns true for the IPv6 extension headers the parser walks: hop-by-hop options,
    /// routing, fragment, destination options and authentication.
    pub const fn is_ipv6_extension(next_header: u8) -> bool {
        matches!(
            next_header,
            HOP_BY_HOP | ROUTING | FRAGMENT | DESTINATION_OPTIONS | AUTHENTICATION
        )
    }

    /// Returns the minimum L4 header length the parser requires, and whether the protocol
    /// carries a source and destination port in its first four bytes.
    pub const fn l4_header(protocol: u8) -> (usize, bool) {
        match protocol {
            TCP => (20, true),
            UDP | UDP_LITE => (8, true),
            SCTP => (12, true),
            ICMP | ICMPV6 => (8, false),
            _ => (0, false),
        }
    }
}

/// The Internet checksum (RFC 1071) on byte slices, shared by the XDP program's reply builder
/// and user space.
pub mod checksum {
    /// Adds `bytes` as big-endian 16-bit words to the running sum `sum`; an odd last byte is
    /// padded with zero. The sum stays exact for inputs below 128 KiB.
    #[inline(always)]
    pub fn add(mut sum: u32, bytes: &[u8]) -> u32 {
        let mut index = 0;
        while index + 1 < bytes.len() {
            sum += u16::from_be_bytes([bytes[index], bytes[index + 1]]) as u32;
            index += 2;
        }
        if index < bytes.len() {
            sum += (bytes[index] as u32) << 8;
        }
        sum
    }

    /// Folds a running sum to 16 bits and returns its one's complement, ready to store.
    #[inline(always)]
    pub fn finish(sum: u32) -> u16 {
        // Two folds suffice for any u32: the first leaves at most 0x1fffe.
        let folded = (sum & 0xffff) + (sum >> 16);
        let folded = (folded & 0xffff) + (folded >> 16);
        !(folded as u16)
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: every type below is `#[repr(C)]`, `Copy`, made only of integers and byte arrays,
    // and has explicit padding fields, so any bit pattern is a valid value.
    unsafe impl aya::Pod for DeviceEntry {}
    unsafe impl aya::Pod for ResourceRule {}
    unsafe impl aya::Pod for PrefixRules {}
    unsafe impl aya::Pod for SessionKey {}
    unsafe impl aya::Pod for SessionValue {}
    unsafe impl aya::Pod for PuntEvent {}
    unsafe impl aya::Pod for FragmentKey {}
    unsafe impl aya::Pod for FragmentValue {}
    unsafe impl aya::Pod for Config {}
}
