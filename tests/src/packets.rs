//! Builders for the crafted frames of the data-path tests, with correct checksums unless a
//! test corrupts them on purpose.

use common::checksum;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Wraps `payload` in an Ethernet header with the given VLAN tag protocol identifiers
/// (0x8100, 0x88a8), outermost first.
pub fn ethernet(src_mac: [u8; 6], tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + 4 * tags.len() + payload.len());
    frame.extend_from_slice(&GATEWAY_MAC);
    frame.extend_from_slice(&src_mac);
    for (index, tpid) in tags.iter().enumerate() {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&(100 + index as u16).to_be_bytes());
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Fields of an IPv4 header that tests vary.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    /// Options, padded by the caller to a multiple of 4 bytes.
    pub options: Vec<u8>,
    pub id: u16,
    /// Fragment offset in 8-byte units.
    pub fragment_offset: u16,
    pub more_fragments: bool,
}

impl Ipv4 {
    pub fn new(src: [u8; 4], dst: [u8; 4], protocol: u8) -> Self {
        Self {
            src,
            dst,
            protocol,
            options: Vec::new(),
            id: 0x1234,
            fragment_offset: 0,
            more_fragments: false,
        }
    }

    /// Returns the header followed by `payload`.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let header_len = 20 + self.options.len();
        assert_eq!(header_len % 4, 0, "IPv4 options must be padded to 4 bytes");
        let mut packet = vec![0u8; header_len];
        packet[0] = 0x40 | (header_len / 4) as u8;
        packet[2..4].copy_from_slice(&((header_len + payload.len()) as u16).to_be_bytes());
        packet[4..6].copy_from_slice(&self.id.to_be_bytes());
        let flags = if self.more_fragments { 0x2000 } else { 0 };
        packet[6..8].copy_from_slice(&(flags | self.fragment_offset).to_be_bytes());
        packet[8] = 64;
        packet[9] = self.protocol;
        packet[12..16].copy_from_slice(&self.src);
        packet[16..20].copy_from_slice(&self.dst);
        packet[20..].copy_from_slice(&self.options);
        let sum = checksum::finish(checksum::add(0, &packet));
        packet[10..12].copy_from_slice(&sum.to_be_bytes());
        packet.extend_from_slice(payload);
        packet
    }
}

/// Returns an IPv6 header with `next_header` followed by `payload` (extension headers
/// included).
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; 40];
    packet[0] = 0x60;
    packet[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    packet[6] = next_header;
    packet[7] = 64;
    packet[8..24].copy_from_slice(&src);
    packet[24..40].copy_from_slice(&dst);
    packet.extend_from_slice(payload);
    packet
}

/// Returns an 8-byte hop-by-hop or destination options header (a PadN option).
pub fn ipv6_options(next_header: u8) -> Vec<u8> {
    vec![next_header, 0, 1, 4, 0, 0, 0, 0]
}

/// Returns an IPv6 fragment header; `offset` is in 8-byte units.
pub fn ipv6_fragment(next_header: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut header = vec![next_header, 0];
    header.extend_from_slice(&((offset << 3) | more as u16).to_be_bytes());
    header.extend_from_slice(&id.to_be_bytes());
    header
}

/// Returns a TCP segment with a 20-byte header; the checksum is left zero, which the XDP
/// program does not check.
pub fn tcp(src_port: u16, dst_port: u16, seq: u32, ack: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut segment = vec![0u8; 20];
    segment[0..2].copy_from_slice(&src_port.to_be_bytes());
    segment[2..4].copy_from_slice(&dst_port.to_be_bytes());
    segment[4..8].copy_from_slice(&seq.to_be_bytes());
    segment[8..12].copy_from_slice(&ack.to_be_bytes());
    segment[12] = 5 << 4;
    segment[13] = flags;
    segment[14..16].copy_from_slice(&8192u16.to_be_bytes());
    segment.extend_from_slice(data);
    segment
}

/// Returns a UDP datagram; the checksum is left zero.
pub fn udp(src_port: u16, dst_port: u16, data: &[u8]) -> Vec<u8> {
    let mut datagram = vec![0u8; 8];
    datagram[0..2].copy_from_slice(&src_port.to_be_bytes());
    datagram[2..4].copy_from_slice(&dst_port.to_be_bytes());
    datagram[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(data);
    datagram
}

/// Returns an ICMP or ICMPv6 message with a zero checksum; `rest` follows the 4-byte header.
pub fn icmp(icmp_type: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    let mut message = vec![icmp_type, code, 0, 0];
    message.extend_from_slice(rest);
    message
}

/// Returns whether `bytes` sum to 0xffff in one's complement after adding `seed`, which is
/// how a receiver validates an Internet checksum.
pub fn checksum_valid(seed: u32, bytes: &[u8]) -> bool {
    checksum::finish(checksum::add(seed, bytes)) == 0
}

/// Returns the pseudo-header sum of an IPv4 or IPv6 packet's upper layer.
pub fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8, length: usize) -> u32 {
    let sum = checksum::add(0, src);
    checksum::add(sum, dst) + protocol as u32 + length as u32
}
