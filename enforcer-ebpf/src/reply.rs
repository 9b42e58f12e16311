//! Rewrites a denied packet in place into its reject reply, which the program sends back with
//! XDP_TX. TCP gets a RST (RFC 793 reset generation). Everything else gets ICMP destination
//! unreachable "communication administratively prohibited" (type 3 code 13) or ICMPv6
//! destination unreachable "administratively prohibited" (type 1 code 1). L2 tags are kept and
//! the MAC addresses swapped.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_md,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use common::{checksum, ip_protocol};

use crate::{
    packet::{len, read, write},
    parse::{Network, Packet},
};

/// Maximum bytes of the denied IPv6 packet quoted in an ICMPv6 error. An ICMPv4 error quotes
/// the IPv4 header and 8 bytes, at most 68 bytes.
pub const ICMPV6_QUOTE_MAX: usize = 128;

const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;
const HOP_LIMIT: u8 = 64;

/// The reply could not be built; the caller drops the packet.
pub struct ReplyFailed;

/// Returns whether a reject may reply to `packet` at all. No reply goes to a RST (RFC 793), an
/// ICMP error (RFC 1122 3.2.2), a frame from or to a group (broadcast or multicast) MAC
/// address, or from or to a multicast, broadcast, unspecified, loopback or class E address
/// (RFC 1812 4.3.2.7).
#[inline(always)]
pub fn allowed(network: &Network, packet: &Packet) -> bool {
    if packet.tcp_reset || packet.icmp_error {
        return false;
    }
    // Bit 0 of the first byte is the group bit. Raw-IP links have zero MACs.
    if network.dst_mac[0] & 1 != 0 || network.src_mac[0] & 1 != 0 {
        return false;
    }
    if network.version == 4 {
        !special_ipv4(&network.src) && !special_ipv4(&network.dst)
    } else {
        !special_ipv6(&network.src) && !special_ipv6(&network.dst)
    }
}

#[inline(always)]
fn special_ipv4(address: &[u8; 16]) -> bool {
    let unspecified = address[0] == 0 && address[1] == 0 && address[2] == 0 && address[3] == 0;
    let loopback = address[0] == 127;
    // 224.0.0.0/4 is multicast, and 240.0.0.0/4 is class E, which contains the broadcast
    // address 255.255.255.255.
    let multicast_or_class_e = address[0] >= 0xe0;
    unspecified || loopback || multicast_or_class_e
}

#[inline(always)]
fn special_ipv6(address: &[u8; 16]) -> bool {
    let mut zero_prefix = true;
    for byte in &address[..15] {
        zero_prefix &= *byte == 0;
    }
    let unspecified_or_loopback = zero_prefix && address[15] <= 1;
    unspecified_or_loopback || address[0] == 0xff
}

/// Rewrites the packet into its reply. Call only when `allowed` returned true.
#[inline(always)]
pub fn build(ctx: &XdpContext, network: &Network, packet: &Packet) -> Result<(), ReplyFailed> {
    if packet.protocol == ip_protocol::TCP {
        tcp_reset(ctx, network, packet)
    } else {
        icmp_unreachable(ctx, network, packet)
    }
}

#[inline(always)]
fn adjust_tail(ctx: &XdpContext, new_len: usize) -> Result<(), ReplyFailed> {
    let delta = new_len as i32 - len(ctx) as i32;
    if delta == 0 {
        return Ok(());
    }
    // SAFETY: the context pointer is the program's own; the helper checks `delta` itself.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx as *mut xdp_md, delta) } != 0 {
        return Err(ReplyFailed);
    }
    Ok(())
}

/// Writes the swapped MAC addresses at the frame start, reading them `from` bytes in.
#[inline(always)]
fn swap_macs(ctx: &XdpContext, network: &Network, from: usize) -> Result<(), ReplyFailed> {
    if network.l3 == 0 {
        return Ok(());
    }
    let macs: [u8; 12] = read(ctx, from).ok_or(ReplyFailed)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..12]);
    swapped[6..].copy_from_slice(&macs[..6]);
    write(ctx, 0, swapped).ok_or(ReplyFailed)
}

#[inline(always)]
fn ip_header(network: &Network, protocol: u8, payload_len: usize) -> ([u8; 40], usize) {
    let mut header = [0u8; 40];
    if network.version == 4 {
        let total = (20 + payload_len) as u16;
        header[0] = 0x45;
        header[2..4].copy_from_slice(&total.to_be_bytes());
        header[8] = HOP_LIMIT;
        header[9] = protocol;
        header[12..16].copy_from_slice(&network.dst[..4]);
        header[16..20].copy_from_slice(&network.src[..4]);
        let sum = checksum::finish(checksum::add(0, &header[..20]));
        header[10..12].copy_from_slice(&sum.to_be_bytes());
        (header, 20)
    } else {
        header[0] = 0x60;
        header[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
        header[6] = protocol;
        header[7] = HOP_LIMIT;
        header[8..24].copy_from_slice(&network.dst);
        header[24..40].copy_from_slice(&network.src);
        (header, 40)
    }
}

/// Returns the pseudo-header sum of the reply, whose addresses are the swapped originals.
#[inline(always)]
fn pseudo_header_sum(network: &Network, protocol: u8, length: usize) -> u32 {
    let address_len = if network.version == 4 { 4 } else { 16 };
    let mut sum = checksum::add(0, &network.dst[..address_len]);
    sum = checksum::add(sum, &network.src[..address_len]);
    sum + protocol as u32 + length as u32
}

/// Replaces the packet by a RST: `seq = SEG.ACK` when the segment had ACK, otherwise
/// `seq = 0, ack = SEG.SEQ + SEG.LEN` with ACK set, where SYN and FIN each count one.
#[inline(always)]
fn tcp_reset(ctx: &XdpContext, network: &Network, packet: &Packet) -> Result<(), ReplyFailed> {
    let segment: [u8; 20] = read(ctx, packet.l4).ok_or(ReplyFailed)?;
    let flags = segment[13];
    let header_len = (segment[12] >> 4) as usize * 4;
    let mut reset = [0u8; 20];
    reset[0..2].copy_from_slice(&segment[2..4]);
    reset[2..4].copy_from_slice(&segment[0..2]);
    if flags & TCP_FLAG_ACK != 0 {
        reset[4..8].copy_from_slice(&segment[8..12]);
        reset[13] = TCP_FLAG_RST;
    } else {
        let seq = u32::from_be_bytes([segment[4], segment[5], segment[6], segment[7]]);
        let mut segment_len = (packet.ip_end - packet.l4 - header_len) as u32;
        segment_len += (flags & TCP_FLAG_SYN != 0) as u32 + (flags & TCP_FLAG_FIN != 0) as u32;
        reset[8..12].copy_from_slice(&seq.wrapping_add(segment_len).to_be_bytes());
        reset[13] = TCP_FLAG_RST | TCP_FLAG_ACK;
    }
    reset[12] = 5 << 4;
    let sum = pseudo_header_sum(network, ip_protocol::TCP, 20);
    let sum = checksum::finish(checksum::add(sum, &reset));
    reset[16..18].copy_from_slice(&sum.to_be_bytes());

    let (ip, ip_len) = ip_header(network, ip_protocol::TCP, 20);
    adjust_tail(ctx, network.l3 + ip_len + 20)?;
    swap_macs(ctx, network, 0)?;
    let l3 = network.l3;
    if ip_len == 20 {
        let mut ipv4 = [0u8; 20];
        ipv4.copy_from_slice(&ip[..20]);
        write(ctx, l3, ipv4).ok_or(ReplyFailed)?;
    } else {
        write(ctx, l3, ip).ok_or(ReplyFailed)?;
    }
    write(ctx, l3 + ip_len, reset).ok_or(ReplyFailed)
}

/// Turns the packet into an ICMP or ICMPv6 error that quotes its start. The frame is cut after
/// the quote and grown in front for the new IP and ICMP headers, and the L2 header moves to the
/// new frame start.
#[inline(always)]
fn icmp_unreachable(
    ctx: &XdpContext,
    network: &Network,
    packet: &Packet,
) -> Result<(), ReplyFailed> {
    let l3 = network.l3;
    let datagram_len = packet.ip_end - l3;
    let (quote_len, protocol, icmp_type, icmp_code) = if network.version == 4 {
        let header_len = packet.l4 - l3;
        (min(datagram_len, header_len + 8), ip_protocol::ICMP, 3, 13)
    } else {
        (
            min(datagram_len, ICMPV6_QUOTE_MAX),
            ip_protocol::ICMPV6,
            1,
            1,
        )
    };
    let (ip, ip_len) = ip_header(network, protocol, 8 + quote_len);
    let added = ip_len + 8;

    adjust_tail(ctx, l3 + quote_len)?;
    // SAFETY: as in `adjust_tail`; XDP guarantees 256 bytes of headroom, more than `added`.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx as *mut xdp_md, -(added as i32)) } != 0 {
        return Err(ReplyFailed);
    }
    move_l2(ctx, network, added)?;

    let mut icmp = [0u8; 8];
    icmp[0] = icmp_type;
    icmp[1] = icmp_code;
    let mut sum = checksum::add(0, &icmp);
    if network.version == 6 {
        sum += pseudo_header_sum(network, protocol, 8 + quote_len);
    }
    sum = sum_packet(ctx, l3 + added, quote_len, sum)?;
    icmp[2..4].copy_from_slice(&checksum::finish(sum).to_be_bytes());

    if ip_len == 20 {
        let mut ipv4 = [0u8; 20];
        ipv4.copy_from_slice(&ip[..20]);
        write(ctx, l3, ipv4).ok_or(ReplyFailed)?;
    } else {
        write(ctx, l3, ip).ok_or(ReplyFailed)?;
    }
    write(ctx, l3 + ip_len, icmp).ok_or(ReplyFailed)
}

#[inline(always)]
fn min(a: usize, b: usize) -> usize {
    if a < b { a } else { b }
}

/// Copies the L2 header from `from` bytes in to the frame start, swapping the MACs.
#[inline(always)]
fn move_l2(ctx: &XdpContext, network: &Network, from: usize) -> Result<(), ReplyFailed> {
    swap_macs(ctx, network, from)?;
    // Tags and the ethertype after the MACs: 2 + 4 * tags bytes, copied in 16-bit words.
    for word in 0..(1 + 2 * common::VLAN_MAX_DEPTH) {
        let index = 12 + word * 2;
        if index >= network.l3 {
            break;
        }
        let bytes: [u8; 2] = read(ctx, from + index).ok_or(ReplyFailed)?;
        write(ctx, index, bytes).ok_or(ReplyFailed)?;
    }
    Ok(())
}

/// Adds `length` packet bytes from `offset` to the running checksum `sum`.
#[inline(always)]
fn sum_packet(
    ctx: &XdpContext,
    offset: usize,
    length: usize,
    mut sum: u32,
) -> Result<u32, ReplyFailed> {
    for word in 0..ICMPV6_QUOTE_MAX / 2 {
        let position = word * 2;
        if position >= length {
            break;
        }
        if position + 1 < length {
            let bytes: [u8; 2] = read(ctx, offset + position).ok_or(ReplyFailed)?;
            sum += u16::from_be_bytes(bytes) as u32;
        } else {
            // A 1-byte packet read at the frame's last byte defeats the verifier's range
            // tracking, so the odd byte is copied out by the helper (Linux 5.18).
            let mut byte = 0u8;
            // SAFETY: the helper writes at most one byte into `byte` and checks the offset.
            let copied = unsafe {
                bpf_xdp_load_bytes(
                    ctx.ctx as *mut xdp_md,
                    (offset + position) as u32,
                    &mut byte as *mut u8 as *mut c_void,
                    1,
                )
            };
            if copied != 0 {
                return Err(ReplyFailed);
            }
            sum += (byte as u32) << 8;
        }
    }
    Ok(sum)
}
