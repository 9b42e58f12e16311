//! Frames fed to the programs: Ethernet, optionally one 802.1Q tag, IPv4 or IPv6, and a TCP
//! SYN with valid IPv4 header and TCP checksums, so the network stack accepts them in
//! live-frames mode.

use std::net::IpAddr;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const TCP_HEADER_LEN: usize = 20;

/// VLAN id of tagged frames.
const VLAN_ID: u16 = 100;

/// Source MAC of every frame (locally administered).
pub const SOURCE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// Link-layer framing of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Untagged,
    /// One 802.1Q tag between the MAC addresses and the IP ethertype.
    Vlan,
}

/// One TCP SYN from `src` to `dst`.
#[derive(Clone, Copy, Debug)]
pub struct TcpSyn {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub framing: Framing,
    pub dst_mac: [u8; 6],
}

impl TcpSyn {
    /// Builds the frame.
    ///
    /// # Panics
    /// When `src` and `dst` are not of the same address family.
    pub fn frame(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(128);
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&SOURCE_MAC);
        if self.framing == Framing::Vlan {
            frame.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            frame.extend_from_slice(&VLAN_ID.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
                let header = ipv4_header(src.octets(), dst.octets());
                frame.extend_from_slice(&header);
                let pseudo = pseudo_header_sum(&src.octets(), &dst.octets());
                frame.extend_from_slice(&self.tcp_header(pseudo));
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                frame.extend_from_slice(&ipv6_header(src.octets(), dst.octets()));
                let pseudo = pseudo_header_sum(&src.octets(), &dst.octets());
                frame.extend_from_slice(&self.tcp_header(pseudo));
            }
            _ => panic!(
                "source {} and destination {} are of different address families",
                self.src, self.dst
            ),
        }
        frame
    }

    fn tcp_header(&self, pseudo_sum: u32) -> [u8; TCP_HEADER_LEN] {
        let mut tcp = [0u8; TCP_HEADER_LEN];
        tcp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
        tcp[12] = (TCP_HEADER_LEN as u8 / 4) << 4;
        tcp[13] = 0x02;
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        let sum = pseudo_sum + IPPROTO_TCP as u32 + TCP_HEADER_LEN as u32 + ones_sum(&tcp);
        tcp[16..18].copy_from_slice(&fold(sum).to_be_bytes());
        tcp
    }
}

fn ipv4_header(src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
    let mut header = [0u8; 20];
    header[0] = 0x45;
    let total_len = (20 + TCP_HEADER_LEN) as u16;
    header[2..4].copy_from_slice(&total_len.to_be_bytes());
    header[6] = 0x40;
    header[8] = 64;
    header[9] = IPPROTO_TCP;
    header[12..16].copy_from_slice(&src);
    header[16..20].copy_from_slice(&dst);
    let checksum = fold(ones_sum(&header));
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
    header
}

fn ipv6_header(src: [u8; 16], dst: [u8; 16]) -> [u8; 40] {
    let mut header = [0u8; 40];
    header[0] = 0x60;
    header[4..6].copy_from_slice(&(TCP_HEADER_LEN as u16).to_be_bytes());
    header[6] = IPPROTO_TCP;
    header[7] = 64;
    header[8..24].copy_from_slice(&src);
    header[24..40].copy_from_slice(&dst);
    header
}

/// Sum of the addresses as 16-bit words, the address part of the TCP pseudo-header.
fn pseudo_header_sum(src: &[u8], dst: &[u8]) -> u32 {
    ones_sum(src) + ones_sum(dst)
}

fn ones_sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|pair| u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

/// Folds a one's-complement sum to 16 bits and complements it.
fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn syn(framing: Framing) -> TcpSyn {
        TcpSyn {
            src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            dst: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            src_port: 40000,
            dst_port: 443,
            framing,
            dst_mac: [0xff; 6],
        }
    }

    #[test]
    fn ipv4_header_checksum_verifies() {
        let frame = syn(Framing::Untagged).frame();
        assert_eq!(fold(ones_sum(&frame[14..34])), 0);
    }

    #[test]
    fn tcp_checksum_verifies() {
        let frame = syn(Framing::Untagged).frame();
        let sum = pseudo_header_sum(&frame[26..30], &frame[30..34])
            + IPPROTO_TCP as u32
            + TCP_HEADER_LEN as u32
            + ones_sum(&frame[34..54]);
        assert_eq!(fold(sum), 0);
    }

    #[test]
    fn vlan_frame_carries_tag() {
        let frame = syn(Framing::Vlan).frame();
        assert_eq!(frame.len(), 58);
        assert_eq!(&frame[12..14], &ETH_P_8021Q.to_be_bytes());
        assert_eq!(&frame[16..18], &ETH_P_IPV4.to_be_bytes());
    }
}
