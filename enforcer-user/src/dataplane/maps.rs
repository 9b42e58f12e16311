//! The kernel maps as the session engine uses them: a trait with the kernel implementation in
//! `Dataplane` and an in-memory one for unit tests.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use common::{DeviceEntry, PrefixRules, SessionKey, SessionValue};
use ipnet::IpNet;

use super::DataplaneError;

/// Read and write access to the device, prefix and session maps.
pub trait KernelMaps {
    fn set_device(&mut self, address: IpAddr, entry: DeviceEntry) -> Result<(), DataplaneError>;
    fn remove_device(&mut self, address: IpAddr) -> Result<(), DataplaneError>;
    fn devices(&self) -> Result<Vec<(IpAddr, DeviceEntry)>, DataplaneError>;

    fn set_prefix(&mut self, prefix: IpNet, rules: PrefixRules) -> Result<(), DataplaneError>;
    fn remove_prefix(&mut self, prefix: IpNet) -> Result<(), DataplaneError>;
    fn prefixes(&self) -> Result<Vec<(IpNet, PrefixRules)>, DataplaneError>;

    fn set_session(&mut self, key: SessionKey, value: SessionValue) -> Result<(), DataplaneError>;
    /// Writes every entry of `entries`; on failure some of them may be written.
    fn set_sessions(
        &mut self,
        entries: &[(SessionKey, SessionValue)],
    ) -> Result<(), DataplaneError> {
        for (key, value) in entries {
            self.set_session(*key, *value)?;
        }
        Ok(())
    }
    fn remove_session(&mut self, key: SessionKey) -> Result<(), DataplaneError>;
    fn sessions(&self) -> Result<Vec<(SessionKey, SessionValue)>, DataplaneError>;
    /// Returns the session of `key`, without dumping the map as `sessions` does.
    fn session(&self, key: SessionKey) -> Result<Option<SessionValue>, DataplaneError>;

    /// Maximum number of entries of the `SESSIONS` map.
    fn session_capacity(&self) -> u32;

    /// Writes the program's global settings (`CONFIG` map).
    fn set_config(&mut self, config: common::Config) -> Result<(), DataplaneError>;
}

/// Maps held in memory with the kernel's semantics for a full hash map: inserting a new key
/// beyond capacity fails, replacing an existing key succeeds.
#[derive(Clone, Debug, Default)]
pub struct MemoryMaps {
    pub devices: BTreeMap<IpAddr, DeviceEntry>,
    pub prefixes: BTreeMap<IpNet, PrefixRules>,
    pub sessions: BTreeMap<SessionKey, SessionValue>,
    /// Maximum number of sessions; 0 means the kernel default of `SESSIONS`.
    pub session_capacity: u32,
    pub config: Option<common::Config>,
}

/// Default capacity of `SESSIONS` in the XDP object.
pub const DEFAULT_SESSION_CAPACITY: u32 = 1 << 20;

impl KernelMaps for MemoryMaps {
    fn set_device(&mut self, address: IpAddr, entry: DeviceEntry) -> Result<(), DataplaneError> {
        self.devices.insert(address, entry);
        Ok(())
    }

    fn remove_device(&mut self, address: IpAddr) -> Result<(), DataplaneError> {
        self.devices.remove(&address);
        Ok(())
    }

    fn devices(&self) -> Result<Vec<(IpAddr, DeviceEntry)>, DataplaneError> {
        Ok(self.devices.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn set_prefix(&mut self, prefix: IpNet, rules: PrefixRules) -> Result<(), DataplaneError> {
        self.prefixes.insert(prefix, rules);
        Ok(())
    }

    fn remove_prefix(&mut self, prefix: IpNet) -> Result<(), DataplaneError> {
        self.prefixes.remove(&prefix);
        Ok(())
    }

    fn prefixes(&self) -> Result<Vec<(IpNet, PrefixRules)>, DataplaneError> {
        Ok(self.prefixes.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn set_session(&mut self, key: SessionKey, value: SessionValue) -> Result<(), DataplaneError> {
        if !self.sessions.contains_key(&key)
            && self.sessions.len() >= self.session_capacity() as usize
        {
            return Err(DataplaneError::MapFull {
                name: common::map_names::SESSIONS,
                capacity: self.session_capacity(),
            });
        }
        self.sessions.insert(key, value);
        Ok(())
    }

    fn remove_session(&mut self, key: SessionKey) -> Result<(), DataplaneError> {
        self.sessions.remove(&key);
        Ok(())
    }

    fn sessions(&self) -> Result<Vec<(SessionKey, SessionValue)>, DataplaneError> {
        Ok(self.sessions.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn session(&self, key: SessionKey) -> Result<Option<SessionValue>, DataplaneError> {
        Ok(self.sessions.get(&key).copied())
    }

    fn set_config(&mut self, config: common::Config) -> Result<(), DataplaneError> {
        self.config = Some(config);
        Ok(())
    }

    fn session_capacity(&self) -> u32 {
        if self.session_capacity == 0 {
            DEFAULT_SESSION_CAPACITY
        } else {
            self.session_capacity
        }
    }
}

/// Splits a prefix into the LPM key parts the kernel uses.
pub fn prefix_parts(prefix: IpNet) -> (IpAddr, u32) {
    (prefix.network(), u32::from(prefix.prefix_len()))
}

/// Rebuilds a prefix from an IPv4 LPM key.
pub fn prefix_v4(length: u32, octets: [u8; 4]) -> Option<IpNet> {
    IpNet::new(IpAddr::V4(Ipv4Addr::from(octets)), length as u8).ok()
}

/// Rebuilds a prefix from an IPv6 LPM key.
pub fn prefix_v6(length: u32, octets: [u8; 16]) -> Option<IpNet> {
    IpNet::new(IpAddr::V6(Ipv6Addr::from(octets)), length as u8).ok()
}
