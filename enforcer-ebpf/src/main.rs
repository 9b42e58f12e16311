//! The enforcer XDP program. For every packet on the client-facing interface it finds the
//! device (source address) and the resource (destination prefix, protocol and port), and
//! passes the packet only while the (device, resource) session is live.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_boot_ns,
    macros::{map, xdp},
    maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use common::{
    DeviceEntry, MAX_RULES_PER_PREFIX, PROTOCOL_ANY, PrefixRules, RULE_FLAG_ANY_PORT,
    RULE_FLAG_MONITOR, ResourceRule, SessionKey, SessionValue, counters,
};

#[map]
static DEVICES_V4: HashMap<[u8; 4], DeviceEntry> = HashMap::with_max_entries(65536, 0);

#[map]
static DEVICES_V6: HashMap<[u8; 16], DeviceEntry> = HashMap::with_max_entries(65536, 0);

#[map]
static PREFIXES_V4: LpmTrie<[u8; 4], PrefixRules> =
    LpmTrie::with_max_entries(16384, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

#[map]
static PREFIXES_V6: LpmTrie<[u8; 16], PrefixRules> =
    LpmTrie::with_max_entries(16384, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

#[map]
static SESSIONS: HashMap<SessionKey, SessionValue> = HashMap::with_max_entries(1 << 20, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[xdp]
pub fn enforcer_eth(ctx: XdpContext) -> u32 {
    try_enforce(&ctx).unwrap_or(XDP_ABORTED)
}

/// Returns a pointer to a `T` at `offset` bytes into the packet, or `None` when the packet is
/// too short to hold it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that the packet holds a `T` at `offset`; the read is unaligned
    // because packet headers carry no alignment guarantee.
    ptr_at::<T>(ctx, offset).map(|ptr| unsafe { ptr.read_unaligned() })
}

#[inline(always)]
fn verdict(counter: u32, action: u32) -> Result<u32, ()> {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: the per-CPU slot belongs to this CPU for the duration of the program.
        unsafe { *slot += 1 };
    }
    Ok(action)
}

/// Destination of a parsed packet, enough to classify it.
struct Flow {
    protocol: u8,
    dst_port: Option<u16>,
}

#[inline(always)]
fn try_enforce(ctx: &XdpContext) -> Result<u32, ()> {
    let Some(ethertype) = read::<[u8; 2]>(ctx, 12) else {
        return verdict(counters::PASS_NOT_IP, XDP_PASS);
    };
    match u16::from_be_bytes(ethertype) {
        ETH_P_IPV4 => enforce_ipv4(ctx, ETH_HLEN),
        ETH_P_IPV6 => enforce_ipv6(ctx, ETH_HLEN),
        _ => verdict(counters::PASS_NOT_IP, XDP_PASS),
    }
}

#[inline(always)]
fn enforce_ipv4(ctx: &XdpContext, l3: usize) -> Result<u32, ()> {
    let Some(header) = read::<[u8; 20]>(ctx, l3) else {
        return verdict(counters::DENY_MALFORMED, XDP_DROP);
    };
    let src: [u8; 4] = [header[12], header[13], header[14], header[15]];
    let dst: [u8; 4] = [header[16], header[17], header[18], header[19]];
    let Some(rules) = PREFIXES_V4.get(Key::new(32, dst)) else {
        return verdict(counters::PASS_UNPROTECTED, XDP_PASS);
    };

    let ihl = (header[0] & 0x0f) as usize * 4;
    if header[0] >> 4 != 4 || ihl < 20 {
        return verdict(counters::DENY_MALFORMED, XDP_DROP);
    }
    let protocol = header[9];
    let Some(flow) = parse_l4(ctx, l3 + ihl, protocol) else {
        return verdict(counters::DENY_MALFORMED, XDP_DROP);
    };

    // SAFETY: map values are only read; user space replaces them whole.
    let device = unsafe { DEVICES_V4.get(src) }.copied();
    enforce(rules, device, &flow)
}

#[inline(always)]
fn enforce_ipv6(ctx: &XdpContext, l3: usize) -> Result<u32, ()> {
    let Some(header) = read::<[u8; 40]>(ctx, l3) else {
        return verdict(counters::DENY_MALFORMED, XDP_DROP);
    };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&header[8..24]);
    dst.copy_from_slice(&header[24..40]);
    let Some(rules) = PREFIXES_V6.get(Key::new(128, dst)) else {
        return verdict(counters::PASS_UNPROTECTED, XDP_PASS);
    };

    // NOTE: extension headers are not walked yet, so any chain is treated as malformed.
    let Some(flow) = parse_l4(ctx, l3 + 40, header[6]) else {
        return verdict(counters::DENY_MALFORMED, XDP_DROP);
    };

    // SAFETY: as in `enforce_ipv4`.
    let device = unsafe { DEVICES_V6.get(src) }.copied();
    enforce(rules, device, &flow)
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, l4: usize, protocol: u8) -> Option<Flow> {
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports = read::<[u8; 4]>(ctx, l4)?;
            Some(Flow {
                protocol,
                dst_port: Some(u16::from_be_bytes([ports[2], ports[3]])),
            })
        }
        0 | 43 | 44 | 60 | 51 => None,
        _ => Some(Flow {
            protocol,
            dst_port: None,
        }),
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
    match flow.dst_port {
        Some(port) => rule.port_lo <= port && port <= rule.port_hi,
        None => false,
    }
}

#[inline(always)]
fn enforce(rules: &PrefixRules, device: Option<DeviceEntry>, flow: &Flow) -> Result<u32, ()> {
    let mut matched: Option<ResourceRule> = None;
    for index in 0..MAX_RULES_PER_PREFIX {
        if index as u32 >= rules.count {
            break;
        }
        let rule = rules.rules[index];
        if rule_matches(&rule, flow) {
            matched = Some(rule);
            break;
        }
    }
    let Some(rule) = matched else {
        return verdict(counters::PASS_UNPROTECTED, XDP_PASS);
    };

    let monitor = rule.flags & RULE_FLAG_MONITOR != 0;
    let Some(device) = device else {
        return deny(counters::DENY_UNKNOWN_DEVICE, monitor);
    };
    let key = SessionKey {
        device_id: device.device_id,
        resource_id: rule.resource_id,
    };
    // SAFETY: as in `enforce_ipv4`.
    let Some(session) = (unsafe { SESSIONS.get(key) }).copied() else {
        return deny(counters::DENY_NO_SESSION, monitor);
    };
    // SAFETY: the helper takes no arguments and exists since Linux 5.8.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if now < session.expires_at_boot_ns {
        return verdict(counters::PASS_SESSION, XDP_PASS);
    }
    deny(counters::DENY_EXPIRED, monitor)
}

#[inline(always)]
fn deny(counter: u32, monitor: bool) -> Result<u32, ()> {
    if monitor {
        return verdict(counters::PASS_MONITOR, XDP_PASS);
    }
    verdict(counter, XDP_DROP)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
