//! The XDP attach mode in effect on an interface, read back from the kernel over rtnetlink
//! (`RTM_GETLINK` and its `IFLA_XDP` attributes), so that status shows what the kernel did
//! rather than what the config requested.

use std::{ffi::CString, io, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

/// XDP attach mode of a program on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    /// Driver mode (`xdp` in `ip -d link`).
    Native,
    /// Generic mode, run on socket buffers (`xdpgeneric` in `ip -d link`).
    Generic,
    /// Offloaded to the network card (`xdpoffload` in `ip -d link`).
    Offload,
}

impl AttachedMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
            AttachedMode::Offload => "offload",
        }
    }
}

// Constants from include/uapi/linux/rtnetlink.h, netlink.h and if_link.h.
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_ATTACHED_HW: u8 = 3;
const XDP_ATTACHED_MULTI: u8 = 4;
/// Size of `struct nlmsghdr` and of `struct ifinfomsg`, both already 4-byte aligned.
const NLMSG_HEADER_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// Returns the mode in which `program_id` is attached to `interface`, or `None` when that
/// program is not attached there.
pub fn attached_mode(interface: &str, program_id: u32) -> io::Result<Option<AttachedMode>> {
    let name = CString::new(interface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL"))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let reply = request_link(ifindex)?;
    let xdp = parse_link_reply(&reply)?;
    Ok(mode_of(&xdp, program_id))
}

/// Sends `RTM_GETLINK` for `ifindex` and returns the first reply message.
fn request_link(ifindex: u32) -> io::Result<Vec<u8>> {
    // SAFETY: plain socket(2) call, and the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };

    let mut request = [0u8; NLMSG_HEADER_LEN + IFINFOMSG_LEN];
    let length = request.len() as u32;
    request[0..4].copy_from_slice(&length.to_ne_bytes());
    request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    request[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC (0), then the interface index at offset 4.
    let index = ifindex as i32;
    request[NLMSG_HEADER_LEN + 4..NLMSG_HEADER_LEN + 8].copy_from_slice(&index.to_ne_bytes());

    // SAFETY: a zeroed sockaddr_nl addresses the kernel, and `request` is valid for its length.
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut reply = vec![0u8; 64 * 1024];
    // SAFETY: `reply` is writable for its whole length.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    reply.truncate(received as usize);
    Ok(reply)
}

/// Attributes of the `IFLA_XDP` nest that decide the mode.
#[derive(Debug, Default, PartialEq, Eq)]
struct XdpAttributes {
    attached: u8,
    prog_id: Option<u32>,
    drv_prog_id: Option<u32>,
    skb_prog_id: Option<u32>,
    hw_prog_id: Option<u32>,
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("invalid RTM_NEWLINK reply: {message}"),
    )
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Iterates over the `(type, payload)` pairs of a netlink attribute stream.
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let length = usize::from(read_u16(bytes, 0)?);
        let kind = read_u16(bytes, 2)? & NLA_TYPE_MASK;
        if length < 4 || length > bytes.len() {
            return None;
        }
        let payload = &bytes[4..length];
        let aligned = (length + 3) & !3;
        bytes = bytes.get(aligned..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

fn parse_link_reply(reply: &[u8]) -> io::Result<XdpAttributes> {
    let length = read_u32(reply, 0).ok_or_else(|| invalid("shorter than a header"))? as usize;
    let kind = read_u16(reply, 4).ok_or_else(|| invalid("shorter than a header"))?;
    let message = reply
        .get(..length)
        .ok_or_else(|| invalid("truncated message"))?;
    if kind == NLMSG_ERROR {
        let errno = read_u32(message, NLMSG_HEADER_LEN).ok_or_else(|| invalid("short error"))?;
        return Err(io::Error::from_raw_os_error(-(errno as i32)));
    }
    if kind != RTM_NEWLINK {
        return Err(invalid(&format!("unexpected message type {kind}")));
    }
    let link_attributes = message
        .get(NLMSG_HEADER_LEN + IFINFOMSG_LEN..)
        .ok_or_else(|| invalid("missing ifinfomsg"))?;
    let mut xdp = XdpAttributes::default();
    let Some((_, nest)) = attributes(link_attributes).find(|(kind, _)| *kind == IFLA_XDP) else {
        return Ok(xdp);
    };
    for (kind, payload) in attributes(nest) {
        let id = read_u32(payload, 0);
        match kind {
            IFLA_XDP_ATTACHED => xdp.attached = payload.first().copied().unwrap_or(0),
            IFLA_XDP_PROG_ID => xdp.prog_id = id,
            IFLA_XDP_DRV_PROG_ID => xdp.drv_prog_id = id,
            IFLA_XDP_SKB_PROG_ID => xdp.skb_prog_id = id,
            IFLA_XDP_HW_PROG_ID => xdp.hw_prog_id = id,
            _ => {}
        }
    }
    Ok(xdp)
}

fn mode_of(xdp: &XdpAttributes, program_id: u32) -> Option<AttachedMode> {
    let single = xdp.prog_id == Some(program_id);
    match xdp.attached {
        XDP_ATTACHED_DRV if single => Some(AttachedMode::Native),
        XDP_ATTACHED_SKB if single => Some(AttachedMode::Generic),
        XDP_ATTACHED_HW if single => Some(AttachedMode::Offload),
        XDP_ATTACHED_MULTI => {
            if xdp.drv_prog_id == Some(program_id) {
                Some(AttachedMode::Native)
            } else if xdp.skb_prog_id == Some(program_id) {
                Some(AttachedMode::Generic)
            } else if xdp.hw_prog_id == Some(program_id) {
                Some(AttachedMode::Offload)
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(payload);
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes
    }

    fn reply(xdp_nest: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body.extend(attribute(3, b"g0\0"));
        body.extend(attribute(IFLA_XDP | 0x8000, xdp_nest));
        let mut message = Vec::new();
        message.extend_from_slice(&((NLMSG_HEADER_LEN + body.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        message.extend_from_slice(&[0u8; 10]);
        message.extend(body);
        message
    }

    #[test]
    fn reply_with_generic_program() {
        let mut nest = attribute(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_SKB]);
        nest.extend(attribute(IFLA_XDP_PROG_ID, &7u32.to_ne_bytes()));
        let xdp = parse_link_reply(&reply(&nest)).unwrap();
        assert_eq!(mode_of(&xdp, 7), Some(AttachedMode::Generic));
        assert_eq!(mode_of(&xdp, 8), None);
    }

    #[test]
    fn reply_with_two_programs() {
        let mut nest = attribute(IFLA_XDP_ATTACHED, &[XDP_ATTACHED_MULTI]);
        nest.extend(attribute(IFLA_XDP_DRV_PROG_ID, &7u32.to_ne_bytes()));
        nest.extend(attribute(IFLA_XDP_SKB_PROG_ID, &9u32.to_ne_bytes()));
        let xdp = parse_link_reply(&reply(&nest)).unwrap();
        assert_eq!(mode_of(&xdp, 7), Some(AttachedMode::Native));
        assert_eq!(mode_of(&xdp, 9), Some(AttachedMode::Generic));
    }

    #[test]
    fn reply_without_program() {
        let nest = attribute(IFLA_XDP_ATTACHED, &[0]);
        let xdp = parse_link_reply(&reply(&nest)).unwrap();
        assert_eq!(mode_of(&xdp, 7), None);
    }
}
