//! Packet parser of the XDP program, shared by every bin of this crate through `#[path]`.
//!
//! Parsing runs in two steps, so that a program can stop at an unprotected destination before
//! it validates the rest of the packet:
//!
//! ```ignore
//! // In a bin under src/bin/; both modules must sit at the crate root.
//! #[path = "../packet.rs"]
//! mod packet;
//! #[path = "../parse.rs"]
//! mod parse;
//!
//! let network = match parse::network(&ctx, parse::Link::Ethernet) {
//!     Ok(Some(network)) => network, // IPv4 or IPv6: addresses are known
//!     Ok(None) => return XDP_PASS,  // not IP (ARP, LLDP, ...)
//!     Err(parse::Malformed) => return XDP_DROP,
//! };
//! let packet = parse::transport(&ctx, &network); // IP validation, extension headers, L4
//! ```
//!
//! Neither step touches a map or logs, so a parse-only program measures the parser alone.

use aya_ebpf::programs::XdpContext;
use common::{IPV6_EXT_MAX_DEPTH, VLAN_MAX_DEPTH, ip_protocol};

use crate::packet::{fits, forget, read};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ outer tag, still sent by some switches.
const ETH_P_QINQ_9100: u16 = 0x9100;

const TCP_FLAG_RST: u8 = 0x04;

/// Framing of the interface the program is attached to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Frames start with an Ethernet header, possibly followed by VLAN tags.
    Ethernet,
    /// Packets start at the IP header (tun, WireGuard).
    RawIp,
}

/// The packet cannot be parsed safely.
pub struct Malformed;

/// L2 and the addresses of the IP header: everything needed to find the resource prefix.
pub struct Network {
    /// Offset of the IP header, which is the length of the L2 header and its tags.
    pub l3: usize,
    /// 4 or 6, from the ethertype (Ethernet) or the version nibble (raw IP).
    pub version: u8,
    /// Source address: IPv4 in the first four bytes, or IPv6.
    pub src: [u8; 16],
    /// Destination address, laid out as `src`.
    pub dst: [u8; 16],
    /// Source MAC address; zero on raw-IP links.
    pub src_mac: [u8; 6],
    /// Destination MAC address, zero on raw-IP links.
    pub dst_mac: [u8; 6],
}

/// Position of a packet in its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram (also an IPv6 atomic fragment: offset 0 and no more fragments).
    Whole,
    /// Offset 0 with more fragments to follow: it carries the L4 header.
    First,
    /// Any later fragment: it carries no L4 header.
    Later,
}

/// Flow the classifier matches rules against. For an ICMP or ICMPv6 error it describes the
/// quoted packet's flow seen from the client, so the error is classified as that flow when a
/// rule matches it, and as a plain ICMP packet otherwise.
#[derive(Clone, Copy)]
pub struct Flow {
    pub protocol: u8,
    /// Whether the protocol carries ports (TCP, UDP, UDP-Lite, SCTP).
    pub has_ports: bool,
    pub src_port: u16,
    pub dst_port: u16,
}

/// A packet that parsed safely down to L4.
pub struct Packet {
    /// Offset one past the IP datagram (the IP header plus the length it declares); bytes
    /// after it are link padding.
    pub ip_end: usize,
    /// Offset of the upper-layer header (after IPv4 options or IPv6 extension headers).
    pub l4: usize,
    /// Upper-layer protocol of the packet itself.
    pub protocol: u8,
    pub fragment: Fragment,
    /// IPv4 identification or IPv6 fragment identification; 0 for whole datagrams.
    pub fragment_id: u32,
    /// IPv4 protocol, or the next header of the IPv6 fragment header: the value every
    /// fragment of one datagram carries.
    pub fragment_protocol: u8,
    /// Offset of the fragment data: the IPv4 payload, or what follows the IPv6 fragment
    /// header.
    pub fragment_start: usize,
    /// Byte offset of the fragment data in the original datagram's fragmentable part.
    pub fragment_offset: u16,
    pub flow: Flow,
    /// The packet is an ICMP or ICMPv6 error, and `flow` is the flow it quotes.
    pub icmp_error: bool,
    /// The packet is a TCP segment with RST set.
    pub tcp_reset: bool,
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    matches!(ethertype, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ_9100)
}

/// Parses L2 and reads the IP addresses. Returns `Ok(None)` for frames that are not IP, and
/// `Malformed` for a truncated header, more than `VLAN_MAX_DEPTH` tags, or a raw-IP packet
/// whose version is neither 4 nor 6.
#[inline(always)]
pub fn network(ctx: &XdpContext, link: Link) -> Result<Option<Network>, Malformed> {
    let mut src_mac = [0u8; 6];
    let mut dst_mac = [0u8; 6];
    let l3;
    let version;
    match link {
        Link::Ethernet => {
            let ethernet: [u8; ETH_HLEN] = read(ctx, 0).ok_or(Malformed)?;
            dst_mac.copy_from_slice(&ethernet[..6]);
            src_mac.copy_from_slice(&ethernet[6..12]);
            let mut ethertype = u16::from_be_bytes([ethernet[12], ethernet[13]]);
            let mut offset = ETH_HLEN;
            for _ in 0..VLAN_MAX_DEPTH {
                if !is_vlan(ethertype) {
                    break;
                }
                let tag: [u8; 4] = read(ctx, offset).ok_or(Malformed)?;
                ethertype = u16::from_be_bytes([tag[2], tag[3]]);
                offset += 4;
            }
            version = match ethertype {
                ETH_P_IPV4 => 4,
                ETH_P_IPV6 => 6,
                ethertype if is_vlan(ethertype) => return Err(Malformed),
                _ => return Ok(None),
            };
            l3 = forget(offset).ok_or(Malformed)?;
        }
        Link::RawIp => {
            // Both versions need at least 20 bytes.
            if !fits(ctx, 20) {
                return Err(Malformed);
            }
            let start: [u8; 2] = read(ctx, 0).ok_or(Malformed)?;
            version = match start[0] >> 4 {
                4 => 4,
                6 => 6,
                _ => return Err(Malformed),
            };
            l3 = 0;
        }
    }

    let (src, dst) = if version == 4 {
        if !fits(ctx, l3 + 20) {
            return Err(Malformed);
        }
        let src_v4: [u8; 4] = read(ctx, l3 + 12).ok_or(Malformed)?;
        let dst_v4: [u8; 4] = read(ctx, l3 + 16).ok_or(Malformed)?;
        (ipv4_address(src_v4), ipv4_address(dst_v4))
    } else {
        (
            read(ctx, l3 + 8).ok_or(Malformed)?,
            read(ctx, l3 + 24).ok_or(Malformed)?,
        )
    };
    Ok(Some(Network {
        l3,
        version,
        src,
        dst,
        src_mac,
        dst_mac,
    }))
}

/// Returns an IPv4 address laid out in 16 bytes, as `Network` stores it: the address, then
/// zeros. It is built as one 128-bit value because zeroing the 12 bytes after the address
/// compiles to a call of the byte-by-byte `memset` on the packet path.
#[inline(always)]
fn ipv4_address(address: [u8; 4]) -> [u8; 16] {
    (u32::from_ne_bytes(address) as u128).to_ne_bytes()
}

/// Validates the IP header and parses what follows it down to the L4 ports or ICMP type.
#[inline(always)]
pub fn transport(ctx: &XdpContext, network: &Network) -> Result<Packet, Malformed> {
    let mut packet = if network.version == 4 {
        ipv4(ctx, network.l3)?
    } else {
        ipv6(ctx, network.l3)?
    };
    if packet.fragment != Fragment::Later {
        upper_layer(ctx, &mut packet, network)?;
    }
    Ok(packet)
}

#[inline(always)]
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
            has_ports: false,
            src_port: 0,
            dst_port: 0,
        },
        icmp_error: false,
        tcp_reset: false,
    }
}

/// Validates version, IHL (options are skipped, not interpreted) and total length, and reads
/// the fragment fields.
#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Result<Packet, Malformed> {
    let header: [u8; 20] = read(ctx, l3).ok_or(Malformed)?;
    if header[0] >> 4 != 4 {
        return Err(Malformed);
    }
    let header_len = (header[0] & 0x0f) as usize * 4;
    let total_len = u16::from_be_bytes([header[2], header[3]]) as usize;
    if header_len < 20 || total_len < header_len {
        return Err(Malformed);
    }
    let ip_end = l3 + total_len;
    if !fits(ctx, ip_end) {
        return Err(Malformed);
    }

    let mut packet = new_packet(ip_end, l3 + header_len, header[9]);
    let fragment_field = u16::from_be_bytes([header[6], header[7]]);
    let more_fragments = fragment_field & 0x2000 != 0;
    packet.fragment = if fragment_field & 0x1fff != 0 {
        Fragment::Later
    } else if more_fragments {
        Fragment::First
    } else {
        Fragment::Whole
    };
    if packet.fragment != Fragment::Whole {
        packet.fragment_id = u16::from_be_bytes([header[4], header[5]]) as u32;
        packet.fragment_offset = (fragment_field & 0x1fff) << 3;
    }
    Ok(packet)
}

/// Validates version and payload length and walks the extension headers (see `extensions`).
#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Result<Packet, Malformed> {
    let header: [u8; 8] = read(ctx, l3).ok_or(Malformed)?;
    if header[0] >> 4 != 6 {
        return Err(Malformed);
    }
    let payload_len = u16::from_be_bytes([header[4], header[5]]) as usize;
    let ip_end = l3 + 40 + payload_len;
    if !fits(ctx, ip_end) {
        return Err(Malformed);
    }

    let chain = extensions(ctx, header[6], l3 + 40, ip_end)?;
    let mut packet = new_packet(
        ip_end,
        forget(chain.offset).ok_or(Malformed)?,
        chain.next_header,
    );
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
    /// Identification of the fragment header, when there is one.
    fragment_id: u32,
    /// Next header of the fragment header, when there is one.
    fragment_protocol: u8,
    /// Offset just past the fragment header, when there is one.
    fragment_start: usize,
    /// Fragment offset of the fragment header in bytes, when there is one.
    fragment_offset: u16,
}

/// Walks at most `IPV6_EXT_MAX_DEPTH` extension headers that start at `offset` with type
/// `next_header` and must end by `end`. Hop-by-hop options must come first, a second fragment
/// header is malformed, and a chain still going after the bound is malformed. A later
/// fragment ends the walk at its fragment header. Any other next header that is not an
/// extension header ends the walk and is the upper-layer protocol.
#[inline(always)]
fn extensions(
    ctx: &XdpContext,
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
            let fragment: [u8; 8] = read(ctx, offset).ok_or(Malformed)?;
            let field = u16::from_be_bytes([fragment[2], fragment[3]]);
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
        let extension: [u8; 2] = read(ctx, offset).ok_or(Malformed)?;
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

#[inline(always)]
fn is_icmp_error(version: u8, protocol: u8, icmp_type: u8) -> bool {
    match (version, protocol) {
        (4, ip_protocol::ICMP) => matches!(icmp_type, 3 | 4 | 5 | 11 | 12),
        (6, ip_protocol::ICMPV6) => matches!(icmp_type, 1..=4),
        _ => false,
    }
}

/// Requires the protocol's minimum header inside the datagram (this drops tiny first
/// fragments), reads ports, and classifies ICMP errors by the packet they quote.
#[inline(always)]
fn upper_layer(ctx: &XdpContext, packet: &mut Packet, network: &Network) -> Result<(), Malformed> {
    let (min_len, has_ports) = ip_protocol::l4_header(packet.protocol);
    if packet.l4 + min_len > packet.ip_end {
        return Err(Malformed);
    }
    if has_ports {
        let ports: [u8; 4] = read(ctx, packet.l4).ok_or(Malformed)?;
        packet.flow.has_ports = true;
        packet.flow.src_port = u16::from_be_bytes([ports[0], ports[1]]);
        packet.flow.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    }
    if packet.protocol == ip_protocol::TCP {
        let fields: [u8; 2] = read(ctx, packet.l4 + 12).ok_or(Malformed)?;
        let header_len = (fields[0] >> 4) as usize * 4;
        if header_len < 20 || packet.l4 + header_len > packet.ip_end {
            return Err(Malformed);
        }
        packet.tcp_reset = fields[1] & TCP_FLAG_RST != 0;
    }
    if matches!(packet.protocol, ip_protocol::ICMP | ip_protocol::ICMPV6) {
        let icmp: [u8; 8] = read(ctx, packet.l4).ok_or(Malformed)?;
        if is_icmp_error(network.version, packet.protocol, icmp[0]) {
            packet.icmp_error = true;
            packet.flow = quoted_flow(ctx, packet, network)?;
        }
    }
    Ok(())
}

/// Reads the flow of the packet quoted by an ICMP error and returns it reversed: the quoted
/// packet went from the resource to the client, the returned flow goes to the resource. A
/// quote whose addresses are not the outer ones swapped belongs to another flow and is
/// malformed.
#[inline(always)]
fn quoted_flow(ctx: &XdpContext, packet: &Packet, network: &Network) -> Result<Flow, Malformed> {
    let inner = packet.l4 + 8;
    let protocol;
    let inner_l4;
    let quoted_src: [u8; 16];
    let quoted_dst: [u8; 16];
    if network.version == 4 {
        if inner + 20 > packet.ip_end {
            return Err(Malformed);
        }
        let header: [u8; 20] = read(ctx, inner).ok_or(Malformed)?;
        let header_len = (header[0] & 0x0f) as usize * 4;
        let later_fragment = u16::from_be_bytes([header[6], header[7]]) & 0x1fff != 0;
        if header[0] >> 4 != 4 || header_len < 20 || later_fragment {
            return Err(Malformed);
        }
        protocol = header[9];
        inner_l4 = inner + header_len;
        quoted_src = ipv4_address([header[12], header[13], header[14], header[15]]);
        quoted_dst = ipv4_address([header[16], header[17], header[18], header[19]]);
    } else {
        if inner + 40 > packet.ip_end {
            return Err(Malformed);
        }
        let header: [u8; 8] = read(ctx, inner).ok_or(Malformed)?;
        if header[0] >> 4 != 6 {
            return Err(Malformed);
        }
        quoted_src = read(ctx, inner + 8).ok_or(Malformed)?;
        quoted_dst = read(ctx, inner + 24).ok_or(Malformed)?;
        // The quote is cut short, so its own payload length is not checked: the chain and
        // the ports must fit in the outer datagram.
        let chain = extensions(ctx, header[6], inner + 40, packet.ip_end)?;
        if chain.fragment == Fragment::Later {
            return Err(Malformed);
        }
        protocol = chain.next_header;
        inner_l4 = forget(chain.offset).ok_or(Malformed)?;
    }
    let mut same_flow = true;
    for index in 0..16 {
        same_flow &=
            quoted_src[index] == network.dst[index] && quoted_dst[index] == network.src[index];
    }
    if !same_flow {
        return Err(Malformed);
    }

    let (_, has_ports) = ip_protocol::l4_header(protocol);
    let mut flow = Flow {
        protocol,
        has_ports,
        src_port: 0,
        dst_port: 0,
    };
    if has_ports {
        if inner_l4 + 4 > packet.ip_end {
            return Err(Malformed);
        }
        let ports: [u8; 4] = read(ctx, inner_l4).ok_or(Malformed)?;
        flow.dst_port = u16::from_be_bytes([ports[0], ports[1]]);
        flow.src_port = u16::from_be_bytes([ports[2], ports[3]]);
    }
    Ok(flow)
}
