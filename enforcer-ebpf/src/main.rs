//! The enforcer XDP program. For every packet on the client-facing interface it finds the
//! device (source address) and the resource (destination prefix, protocol and port), and
//! passes the packet only while the (device, resource) session is live.
//!
//! Order of the checks, which the reference classifier in user space mirrors:
//! 1. L2 and the IP addresses; not IP passes, an unreadable header is dropped as malformed.
//! 2. Destination prefix (LPM); no prefix passes untouched.
//! 3. Full parse (IP header, extension headers, L4); failure is dropped as malformed.
//! 4. Later fragments take the verdict recorded for their datagram's first fragment, while the
//!    device, its MAC binding and the session that let the first fragment pass are still valid.
//! 5. First matching rule of the prefix; no match passes untouched.
//! 6. Device by source address, then its MAC binding, then the session and its expiry.
//! 7. A deny is punted, then passed (monitor), dropped, or replied to (reject).
#![no_std]
#![no_main]

mod packet;
mod parse;
mod reply;

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::bpf_ktime_get_boot_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use common::{
    Action, CONFIG_FLAG_MONITOR_ALL, Config, DEFAULT_PUNT_INTERVAL_NS, DEVICE_FLAG_MAC_BOUND,
    DeviceEntry, FRAGMENT_TIMEOUT_NS, FragmentKey, FragmentValue, MAX_RULES_PER_PREFIX,
    PROTOCOL_ANY, PrefixRules, PuntEvent, RULE_FLAG_ANY_PORT, RULE_FLAG_MONITOR, Reason,
    ResourceRule, SessionKey, SessionValue, UNKNOWN_DEVICE_ID, UNKNOWN_RESOURCE_ID, counters,
};

use crate::parse::{Flow, Fragment, Link, Network, Packet};

#[map]
static DEVICES_V4: HashMap<[u8; 4], DeviceEntry> = HashMap::with_max_entries(65536, 0);

#[map]
static DEVICES_V6: HashMap<[u8; 16], DeviceEntry> = HashMap::with_max_entries(65536, 0);

#[map]
static PREFIXES_V4: LpmTrie<[u8; 4], PrefixRules> =
    LpmTrie::with_max_entries(16384, BPF_F_NO_PREALLOC);

#[map]
static PREFIXES_V6: LpmTrie<[u8; 16], PrefixRules> =
    LpmTrie::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// Sessions are a plain hash map: an LRU map would evict live sessions under pressure.
#[map]
static SESSIONS: HashMap<SessionKey, SessionValue> = HashMap::with_max_entries(1 << 20, 0);

/// Verdicts of first fragments. Eviction only makes later fragments of that datagram drop.
#[map]
static FRAGMENTS: LruHashMap<FragmentKey, FragmentValue> = LruHashMap::with_max_entries(65536, 0);

/// Boot time of the last punt per (device, resource).
#[map]
static PUNT_LIMITS: LruHashMap<SessionKey, u64> = LruHashMap::with_max_entries(65536, 0);

#[map]
static PUNTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Entry point for interfaces whose frames start with an Ethernet header.
#[xdp]
pub fn enforcer_eth(ctx: XdpContext) -> u32 {
    enforce(&ctx, Link::Ethernet)
}

/// Entry point for raw-IP interfaces (tun, WireGuard); no MAC binding applies.
#[xdp]
pub fn enforcer_ip(ctx: XdpContext) -> u32 {
    enforce(&ctx, Link::RawIp)
}

#[inline(always)]
fn count(counter: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: the per-CPU slot belongs to this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn verdict(counter: u32, action: u32) -> u32 {
    count(counter);
    action
}

#[inline(always)]
fn boot_ns() -> u64 {
    // SAFETY: the helper takes no arguments; it exists since Linux 5.8.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[inline(always)]
fn config() -> Config {
    CONFIG.get(0).copied().unwrap_or_default()
}

/// Outcome of classifying a packet that parsed.
struct Decision {
    device_id: u32,
    resource_id: u32,
    /// `None` for a pass.
    reason: Option<Reason>,
    /// Verdict counter of a pass.
    pass_counter: u32,
    action: Action,
    /// `RULE_FLAG_*` bits of the rule that matched; zero for a pass.
    rule_flags: u8,
    /// An ICMP error matched its rule as a plain ICMP packet, because no rule matched the flow
    /// it quotes.
    plain_icmp: bool,
}

impl Decision {
    #[inline(always)]
    fn pass(counter: u32, device_id: u32, resource_id: u32) -> Self {
        Self {
            device_id,
            resource_id,
            reason: None,
            pass_counter: counter,
            action: Action::Drop,
            rule_flags: 0,
            plain_icmp: false,
        }
    }

    #[inline(always)]
    fn deny(reason: Reason, device_id: u32, rule: &ResourceRule, plain_icmp: bool) -> Self {
        Self {
            device_id,
            resource_id: rule.resource_id,
            reason: Some(reason),
            pass_counter: counters::PASS_MONITOR,
            action: if rule.action == Action::Reject as u8 {
                Action::Reject
            } else {
                Action::Drop
            },
            rule_flags: rule.flags,
            plain_icmp,
        }
    }

    /// Returns whether a deny passes in monitor mode, by its rule or by the configuration.
    #[inline(always)]
    fn monitor(&self, config: &Config) -> bool {
        self.rule_flags & RULE_FLAG_MONITOR != 0 || config.flags & CONFIG_FLAG_MONITOR_ALL != 0
    }
}

#[inline(always)]
fn enforce(ctx: &XdpContext, link: Link) -> u32 {
    let network = match parse::network(ctx, link) {
        Ok(Some(network)) => network,
        Ok(None) => return verdict(counters::PASS_NOT_IP, XDP_PASS),
        Err(parse::Malformed) => return deny_malformed(None),
    };
    let Some(rules) = prefix_rules(&network) else {
        return verdict(counters::PASS_UNPROTECTED, XDP_PASS);
    };
    let packet = match parse::transport(ctx, &network) {
        Ok(packet) => packet,
        Err(parse::Malformed) => return deny_malformed(Some(&network)),
    };
    if packet.fragment == Fragment::Later {
        return later_fragment(link, &network, &packet);
    }

    let decision = decide(link, &network, &packet, rules);
    if packet.fragment == Fragment::First {
        record_fragment(&network, &packet, &decision);
    }
    let Some(reason) = decision.reason else {
        return verdict(decision.pass_counter, XDP_PASS);
    };

    // Only a deny needs the configuration and the reply checks, so a pass skips them.
    let config = config();
    let monitor = decision.monitor(&config);
    // The punt reports the flow the rule matched: the quoted one, or the ICMP packet itself.
    let flow = if decision.plain_icmp {
        plain_flow(&packet)
    } else {
        packet.flow
    };

    punt(
        &network,
        &flow,
        decision.device_id,
        decision.resource_id,
        reason,
        monitor,
        &config,
    );
    if monitor {
        return verdict(counters::PASS_MONITOR, XDP_PASS);
    }
    count(deny_counter(reason));
    if decision.action == Action::Drop || !reply::allowed(&network, &packet) {
        return XDP_DROP;
    }
    match reply::build(ctx, &network, &packet) {
        Ok(()) => verdict(counters::REJECT_SENT, XDP_TX),
        Err(reply::ReplyFailed) => verdict(counters::REJECT_FAILED, XDP_DROP),
    }
}

#[inline(always)]
fn deny_counter(reason: Reason) -> u32 {
    match reason {
        Reason::UnknownDevice => counters::DENY_UNKNOWN_DEVICE,
        Reason::NoSession => counters::DENY_NO_SESSION,
        Reason::Expired => counters::DENY_EXPIRED,
        Reason::Malformed => counters::DENY_MALFORMED,
        Reason::WrongMac => counters::DENY_WRONG_MAC,
        Reason::Fragment => counters::DENY_FRAGMENT,
    }
}

#[inline(always)]
fn prefix_rules(network: &Network) -> Option<&'static PrefixRules> {
    if network.version == 4 {
        let mut address = [0u8; 4];
        address.copy_from_slice(&network.dst[..4]);
        PREFIXES_V4.get(Key::new(32, address))
    } else {
        PREFIXES_V6.get(Key::new(128, network.dst))
    }
}

#[inline(always)]
fn device(network: &Network) -> Option<&'static DeviceEntry> {
    if network.version == 4 {
        let mut address = [0u8; 4];
        address.copy_from_slice(&network.src[..4]);
        // SAFETY: user space replaces entries whole, and the caller reads the fields at once.
        unsafe { DEVICES_V4.get(address) }
    } else {
        // SAFETY: as above.
        unsafe { DEVICES_V6.get(network.src) }
    }
}

#[inline(always)]
fn rule_matches(rule: &ResourceRule, flow: &Flow) -> bool {
    if rule.protocol != PROTOCOL_ANY && rule.protocol != flow.protocol {
        return false;
    }
    if rule.flags & RULE_FLAG_ANY_PORT != 0 {
        return true;
    }
    flow.has_ports && rule.port_lo <= flow.dst_port && flow.dst_port <= rule.port_hi
}

/// Returns whether the frame comes from the device's bound MAC address, when it has one. Raw-IP
/// links carry no MAC address, so no binding applies there.
#[inline(always)]
fn mac_matches(link: Link, device: &DeviceEntry, network: &Network) -> bool {
    let mac_bound = device.flags & DEVICE_FLAG_MAC_BOUND != 0;
    link != Link::Ethernet || !mac_bound || same_mac(&device.mac, &network.src_mac)
}

/// Returns the expiry of the (device, resource) session, or `None` when there is none.
#[inline(always)]
fn session_expiry(device_id: u32, resource_id: u32) -> Option<u64> {
    let key = SessionKey {
        device_id,
        resource_id,
    };
    // SAFETY: user space replaces entries whole, and the expiry is read at once.
    unsafe { SESSIONS.get(key) }.map(|session| session.expires_at_boot_ns)
}

/// Returns the flow of an ICMP or ICMPv6 packet seen as itself: its protocol and no ports.
#[inline(always)]
fn plain_flow(packet: &Packet) -> Flow {
    Flow {
        protocol: packet.protocol,
        has_ports: false,
        src_port: 0,
        dst_port: 0,
    }
}

#[inline(always)]
fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    let mut same = true;
    for index in 0..6 {
        same &= a[index] == b[index];
    }
    same
}

/// Classifies a packet whose destination has a prefix entry: first matching rule, device,
/// MAC binding, session. An ICMP error takes the first rule matching its quoted flow, or else
/// the first rule matching it as a plain ICMP packet.
#[inline(always)]
fn decide(link: Link, network: &Network, packet: &Packet, rules: &PrefixRules) -> Decision {
    let plain_icmp = plain_flow(packet);
    let mut matched: Option<ResourceRule> = None;
    let mut matched_plain: Option<ResourceRule> = None;
    for index in 0..MAX_RULES_PER_PREFIX {
        if index as u32 >= rules.count {
            break;
        }
        // The rule is copied out: a reference into the map value would differ by rule index,
        // and the verifier would walk the rest of the program once per index (over its
        // 1,000,000-instruction limit for `enforcer_ip` on Linux 6.18).
        let rule = rules.rules[index];
        if rule_matches(&rule, &packet.flow) {
            matched = Some(rule);
            break;
        }
        if packet.icmp_error && matched_plain.is_none() && rule_matches(&rule, &plain_icmp) {
            matched_plain = Some(rule);
        }
    }
    let plain = matched.is_none();
    let Some(rule) = matched.or(matched_plain) else {
        return Decision::pass(
            counters::PASS_UNPROTECTED,
            UNKNOWN_DEVICE_ID,
            UNKNOWN_RESOURCE_ID,
        );
    };

    let Some(device) = device(network) else {
        return Decision::deny(Reason::UnknownDevice, UNKNOWN_DEVICE_ID, &rule, plain);
    };
    let device_id = device.device_id;
    if !mac_matches(link, device, network) {
        return Decision::deny(Reason::WrongMac, device_id, &rule, plain);
    }

    match session_expiry(device_id, rule.resource_id) {
        None => Decision::deny(Reason::NoSession, device_id, &rule, plain),
        Some(expires_at_boot_ns) if boot_ns() >= expires_at_boot_ns => {
            Decision::deny(Reason::Expired, device_id, &rule, plain)
        }
        Some(_) => Decision::pass(counters::PASS_SESSION, device_id, rule.resource_id),
    }
}

#[inline(always)]
fn fragment_key(network: &Network, packet: &Packet) -> FragmentKey {
    // IPv6 receivers ignore the next header of later fragments, so the key does too.
    let protocol = if network.version == 4 {
        packet.fragment_protocol
    } else {
        0
    };
    FragmentKey {
        src: network.src,
        dst: network.dst,
        id: packet.fragment_id,
        protocol,
        ip_version: network.version,
        _pad: [0; 2],
    }
}

/// Returns whether a record written at `recorded_at_boot_ns` still applies at `now`. A record
/// from the future, which only a writer in user space can make, does not.
#[inline(always)]
fn fragment_fresh(recorded: &FragmentValue, now: u64) -> bool {
    now.wrapping_sub(recorded.recorded_at_boot_ns) < FRAGMENT_TIMEOUT_NS
}

/// Records the verdict of a first fragment. A receiver keeps one of several first fragments
/// of a datagram, and not always the one recorded last, so a first fragment classified
/// otherwise than a fresh record of the same datagram turns the record into a deny.
// NOTE: the conflict is not seen when `FRAGMENTS`, an LRU map, has evicted the earlier record
// because over 65,536 other first fragments arrived in between, nor when two CPUs record the
// same datagram at once.
#[inline(always)]
fn record_fragment(network: &Network, packet: &Packet, decision: &Decision) {
    let allowed = decision.reason.is_none() || decision.monitor(&config());
    let counter = if decision.reason.is_none() {
        decision.pass_counter
    } else {
        counters::PASS_MONITOR
    };
    let now = boot_ns();
    let mut value = FragmentValue {
        recorded_at_boot_ns: now,
        device_id: decision.device_id,
        resource_id: decision.resource_id,
        allowed: allowed as u8,
        counter: counter as u8,
        first_len: (packet.ip_end - packet.fragment_start) as u16,
        _pad: [0; 4],
    };
    let key = fragment_key(network, packet);
    // SAFETY: the value is copied out at once.
    if let Some(earlier) = unsafe { FRAGMENTS.get(key) }.copied() {
        if fragment_fresh(&earlier, now) {
            let agrees = earlier.allowed == value.allowed
                && earlier.counter == value.counter
                && earlier.device_id == value.device_id
                && earlier.resource_id == value.resource_id;
            if !agrees {
                value.allowed = 0;
            }
            if earlier.first_len > value.first_len {
                value.first_len = earlier.first_len;
            }
        }
    }
    // A full LRU map evicts; an error here leaves the later fragments to be dropped.
    let _ = FRAGMENTS.insert(key, value, 0);
}

/// Passes a later fragment only when its datagram's first fragment passed, was recorded less
/// than `FRAGMENT_TIMEOUT_NS` ago, and that pass is still valid (see `first_fragment_holds`).
/// The later fragment must also start past the first fragment's data, because a receiver that
/// lets overlapping data win would rewrite the headers the first fragment was classified by.
/// Every other later fragment is dropped as `deny_fragment`, in monitor mode too, because it
/// has no L4 header to reply to.
#[inline(always)]
fn later_fragment(link: Link, network: &Network, packet: &Packet) -> u32 {
    // SAFETY: the value is copied out at once.
    let recorded = unsafe { FRAGMENTS.get(fragment_key(network, packet)) }.copied();
    let now = boot_ns();
    let (device_id, resource_id) = match recorded {
        Some(value)
            if value.allowed != 0
                && fragment_fresh(&value, now)
                && packet.fragment_offset >= value.first_len
                && first_fragment_holds(link, network, &value, now) =>
        {
            return verdict(value.counter as u32, XDP_PASS);
        }
        Some(value) => (value.device_id, value.resource_id),
        None => (UNKNOWN_DEVICE_ID, UNKNOWN_RESOURCE_ID),
    };
    punt(
        network,
        &packet.flow,
        device_id,
        resource_id,
        Reason::Fragment,
        false,
        &config(),
    );
    verdict(counters::DENY_FRAGMENT, XDP_DROP)
}

/// Returns whether a first fragment's pass applies to a later fragment at `now`. A pass on a
/// session needs the same device at the source address, its MAC binding, and the session
/// still live, so an expiry or a revocation stops a datagram under way. Passes of unprotected
/// and monitor-mode packets needed no session and still apply.
// NOTE: a datagram whose first fragment passed in monitor mode keeps passing its later
// fragments after monitor mode is turned off, for up to `FRAGMENT_TIMEOUT_NS`.
#[inline(always)]
fn first_fragment_holds(link: Link, network: &Network, recorded: &FragmentValue, now: u64) -> bool {
    if recorded.counter as u32 != counters::PASS_SESSION {
        return true;
    }
    let Some(device) = device(network) else {
        return false;
    };
    if device.device_id != recorded.device_id || !mac_matches(link, device, network) {
        return false;
    }
    match session_expiry(recorded.device_id, recorded.resource_id) {
        Some(expires_at_boot_ns) => now < expires_at_boot_ns,
        None => false,
    }
}

#[inline(always)]
fn deny_malformed(network: Option<&Network>) -> u32 {
    let flow = Flow {
        protocol: 0,
        has_ports: false,
        src_port: 0,
        dst_port: 0,
    };
    let config = config();
    match network {
        Some(network) => punt(
            network,
            &flow,
            UNKNOWN_DEVICE_ID,
            UNKNOWN_RESOURCE_ID,
            Reason::Malformed,
            false,
            &config,
        ),
        None => {
            let unknown = Network {
                l3: 0,
                version: 0,
                src: [0; 16],
                dst: [0; 16],
                src_mac: [0; 6],
                dst_mac: [0; 6],
            };
            punt(
                &unknown,
                &flow,
                UNKNOWN_DEVICE_ID,
                UNKNOWN_RESOURCE_ID,
                Reason::Malformed,
                false,
                &config,
            )
        }
    }
    verdict(counters::DENY_MALFORMED, XDP_DROP)
}

/// Sends a punt event unless one for the same (device, resource) went out less than the punt
/// interval ago.
#[inline(always)]
fn punt(
    network: &Network,
    flow: &Flow,
    device_id: u32,
    resource_id: u32,
    reason: Reason,
    monitor: bool,
    config: &Config,
) {
    let now = boot_ns();
    let key = SessionKey {
        device_id,
        resource_id,
    };
    let interval = if config.punt_interval_ns == 0 {
        DEFAULT_PUNT_INTERVAL_NS
    } else {
        config.punt_interval_ns
    };
    match PUNT_LIMITS.get_ptr_mut(key) {
        Some(last) => {
            // SAFETY: the pointer is to this map value; a racing CPU writes a time as well.
            let last = unsafe { &mut *last };
            if now.wrapping_sub(*last) < interval {
                count(counters::PUNT_RATE_LIMITED);
                return;
            }
            *last = now;
        }
        None => {
            let _ = PUNT_LIMITS.insert(key, now, 0);
        }
    }

    let Some(mut entry) = PUNTS.reserve::<PuntEvent>(0) else {
        count(counters::PUNT_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved ring buffer record of `PuntEvent` size that this
    // program owns until submit. Fields are written one by one, so no copy of the whole event
    // lands on the 512-byte BPF stack, and every byte is written before submit.
    unsafe {
        (*event).timestamp_boot_ns = now;
        (*event).device_id = device_id;
        (*event).resource_id = resource_id;
        (*event).src = network.src;
        (*event).dst = network.dst;
        (*event).src_port = flow.src_port;
        (*event).dst_port = flow.dst_port;
        (*event).protocol = flow.protocol;
        (*event).reason = reason as u8;
        (*event).ip_version = network.version;
        (*event).monitor = monitor as u8;
    }
    entry.submit(0);
    count(counters::PUNT_SENT);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
