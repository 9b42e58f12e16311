//! Reader of the `PUNTS` ring buffer: events the XDP program sends when it denies a packet
//! (or, in monitor mode, would have), for the reauth responder.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{MapData, RingBuf};
use common::{PuntEvent, Reason, map_names};
use tokio::io::unix::AsyncFd;

use super::{Dataplane, DataplaneError, map_error};

/// A decoded punt event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Punt {
    pub timestamp_boot_ns: u64,
    pub device_id: u32,
    pub resource_id: u32,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub source_port: u16,
    pub destination_port: u16,
    pub protocol: u8,
    /// `None` when the program sent a reason this build does not know.
    pub reason: Option<&'static str>,
    pub monitor: bool,
}

impl Punt {
    /// Decodes a ring buffer record; returns `None` when it is shorter than a `PuntEvent`.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<PuntEvent>() {
            return None;
        }
        // SAFETY: the length was checked, `PuntEvent` is plain old data for which any bit
        // pattern is valid, and the read is unaligned because ring buffer records are 8-byte
        // aligned only.
        let event: PuntEvent = unsafe { bytes.as_ptr().cast::<PuntEvent>().read_unaligned() };
        let address = |raw: [u8; 16]| -> IpAddr {
            if event.ip_version == 4 {
                IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
            } else {
                IpAddr::V6(Ipv6Addr::from(raw))
            }
        };
        Some(Self {
            timestamp_boot_ns: event.timestamp_boot_ns,
            device_id: event.device_id,
            resource_id: event.resource_id,
            source: address(event.src),
            destination: address(event.dst),
            source_port: event.src_port,
            destination_port: event.dst_port,
            protocol: event.protocol,
            reason: Reason::from_u8(event.reason).map(Reason::as_str),
            monitor: event.monitor != 0,
        })
    }
}

/// Async reader of the punt ring buffer.
pub struct PuntReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl PuntReader {
    /// Waits for the next batch of punts and returns it; never returns an empty batch.
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<Punt>> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut batch = Vec::new();
            while let Some(item) = ring.next() {
                match Punt::decode(&item) {
                    Some(punt) => batch.push(punt),
                    None => tracing::warn!(bytes = item.len(), "ignored a truncated punt record"),
                }
            }
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}

impl Dataplane {
    /// Takes the `PUNTS` ring buffer out of the dataplane as an async reader. Returns `None`
    /// when the program has no such map, or when it was taken before.
    pub fn take_punts(&mut self) -> Result<Option<PuntReader>, DataplaneError> {
        let Some(map) = self.maps.remove(map_names::PUNTS) else {
            return Ok(None);
        };
        let ring: RingBuf<MapData> =
            RingBuf::try_from(map).map_err(|source| map_error(map_names::PUNTS, source))?;
        // SAFETY: the ring buffer owns its map descriptor, which stays open and unchanged
        // until the `AsyncFd` drops it together with the ring buffer.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|err| DataplaneError::Pin {
                path: std::path::PathBuf::from(map_names::PUNTS),
                message: format!("failed to register the ring buffer with tokio: {err}"),
            })?;
        Ok(Some(PuntReader { ring }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(event: &PuntEvent) -> Vec<u8> {
        // SAFETY: `PuntEvent` is `#[repr(C)]` plain old data, so viewing it as bytes is valid.
        unsafe {
            std::slice::from_raw_parts(
                (event as *const PuntEvent).cast::<u8>(),
                std::mem::size_of::<PuntEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn ipv4_punt_decodes() {
        let mut event = PuntEvent {
            device_id: 3,
            resource_id: 9,
            dst_port: 443,
            protocol: 6,
            reason: Reason::Expired as u8,
            ip_version: 4,
            ..PuntEvent::default()
        };
        event.src[..4].copy_from_slice(&[192, 0, 2, 10]);
        event.dst[..4].copy_from_slice(&[198, 51, 100, 5]);
        let punt = Punt::decode(&bytes_of(&event)).unwrap();
        assert_eq!(punt.source, "192.0.2.10".parse::<IpAddr>().unwrap());
        assert_eq!(punt.destination, "198.51.100.5".parse::<IpAddr>().unwrap());
        assert_eq!(punt.reason, Some("expired"));
        assert_eq!(punt.destination_port, 443);
    }

    #[test]
    fn truncated_punt_is_rejected() {
        let bytes = bytes_of(&PuntEvent::default());
        assert_eq!(Punt::decode(&bytes[..bytes.len() - 1]), None);
    }
}
