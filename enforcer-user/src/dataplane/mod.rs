//! The kernel side as user space sees it: the embedded XDP object, loading and attaching it,
//! and typed access to its maps.

pub mod batch;
pub mod bench_objects;
pub mod maps;
pub mod pins;
pub mod punts;
pub mod reference;
pub mod xdp_mode;

use std::{net::IpAddr, os::fd::AsFd as _};

use ipnet::IpNet;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
    programs::{Xdp, XdpMode},
};
use common::{
    DeviceEntry, PrefixRules, SessionKey, SessionValue, counters, map_names, program_names,
};

/// The XDP object built by `build.rs`; empty when the eBPF build was skipped.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));

/// Errors from loading the program or from its maps.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this enforcer binary was built without its XDP program (AYA_BUILD_SKIP was set or bpf-linker was missing); run scripts/setup.sh and rebuild"
    )]
    MissingObject,
    #[error("failed to load the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("failed to load or attach XDP program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name} is missing from the XDP object")]
    MissingMap { name: &'static str },
    #[error(
        "map {name} is full ({capacity} entries); remove expired sessions or raise the map size in enforcer-ebpf"
    )]
    MapFull { name: &'static str, capacity: u32 },
    #[error("failed to pin or open pin {path}: {message}; check that bpffs is mounted there")]
    Pin {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(
        "pin folder {path} is not on a bpffs mount; mount one with `mount -t bpf bpf /sys/fs/bpf` or set pin_root to a folder under bpffs"
    )]
    NotBpffs { path: std::path::PathBuf },
    #[error(
        "the XDP link pinned at {path} runs program {program} (id {program_id}), not enforcer; remove the pin or run `enforcer detach`"
    )]
    ForeignLink {
        path: std::path::PathBuf,
        program_id: u32,
        program: String,
    },
    #[error(
        "the XDP program pinned in {folder} keeps enforcing, but this enforcer's program does not load against its pinned maps ({reason}), most likely because a map layout changed between releases; to replace it, run `enforcer detach` with the same --config and then `enforcer run` (nothing is enforced in between)"
    )]
    IncompatiblePins {
        folder: std::path::PathBuf,
        reason: String,
    },
    #[error("failed to access map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Returns the embedded XDP object, or an error when the binary was built without it.
pub fn xdp_object() -> Result<&'static [u8], DataplaneError> {
    if XDP_OBJECT.is_empty() {
        return Err(DataplaneError::MissingObject);
    }
    Ok(XDP_OBJECT)
}

/// The XDP program and its maps, either loaded by this process or adopted from bpffs pins.
pub struct Dataplane {
    /// The loaded object; `None` when the program was adopted from pins.
    ebpf: Option<Ebpf>,
    /// Maps by name, taken out of the object or opened from pins.
    maps: std::collections::HashMap<&'static str, Map>,
    /// Entry point in use.
    program_name: &'static str,
}

/// Every map name of the object, so maps can be taken out of it and pinned.
pub const MAP_NAMES: [&str; 10] = [
    map_names::DEVICES_V4,
    map_names::DEVICES_V6,
    map_names::PREFIXES_V4,
    map_names::PREFIXES_V6,
    map_names::SESSIONS,
    map_names::FRAGMENTS,
    map_names::PUNT_LIMITS,
    map_names::PUNTS,
    map_names::COUNTERS,
    map_names::CONFIG,
];

impl Dataplane {
    /// Loads the object and verifies the Ethernet entry point, without attaching it.
    pub fn load() -> Result<Self, DataplaneError> {
        Self::load_program(program_names::ETHERNET)
    }

    /// Loads the object and verifies the entry point `program_name`, without attaching it.
    pub fn load_program(program_name: &'static str) -> Result<Self, DataplaneError> {
        Self::load_with(program_name, None)
    }

    /// Loads as `load_program`, with the `SESSIONS` map sized to `session_capacity` entries
    /// when given.
    pub fn load_with(
        program_name: &'static str,
        session_capacity: Option<u32>,
    ) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        if let Some(capacity) = session_capacity {
            loader.map_max_entries(map_names::SESSIONS, capacity);
        }
        let mut ebpf = loader.load(xdp_object()?)?;
        program_mut(&mut ebpf, program_name)?
            .load()
            .map_err(|source| DataplaneError::Program {
                name: program_name,
                source,
            })?;
        let mut maps = std::collections::HashMap::new();
        for name in MAP_NAMES {
            if let Some(map) = ebpf.take_map(name) {
                maps.insert(name, map);
            }
        }
        Ok(Self {
            ebpf: Some(ebpf),
            maps,
            program_name,
        })
    }

    /// Attaches the loaded entry point to `interface` in `mode`. The program detaches when
    /// `self` drops; `pins::attach_or_adopt` attaches it so it outlives the process.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<(), DataplaneError> {
        let name = self.program_name;
        self.program()?
            .attach(interface, mode)
            .map_err(|source| DataplaneError::Program { name, source })?;
        Ok(())
    }

    /// Returns the loaded Ethernet entry point, for example to run it with `BPF_PROG_TEST_RUN`.
    pub fn ethernet_program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        self.program()
    }

    /// Returns the loaded entry point; fails when the program was adopted from pins.
    pub fn program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        let name = self.program_name;
        let ebpf = self.ebpf.as_mut().ok_or(DataplaneError::Program {
            name,
            source: aya::programs::ProgramError::NotLoaded,
        })?;
        program_mut(ebpf, name)
    }

    pub fn program_name(&self) -> &'static str {
        self.program_name
    }

    /// Maps `address` to `device`.
    pub fn set_device(
        &mut self,
        address: IpAddr,
        device: DeviceEntry,
    ) -> Result<(), DataplaneError> {
        match address {
            IpAddr::V4(v4) => {
                let mut map: HashMap<&mut MapData, [u8; 4], DeviceEntry> =
                    self.map_mut(map_names::DEVICES_V4)?;
                map.insert(v4.octets(), device, 0)
                    .map_err(|source| map_error(map_names::DEVICES_V4, source))
            }
            IpAddr::V6(v6) => {
                let mut map: HashMap<&mut MapData, [u8; 16], DeviceEntry> =
                    self.map_mut(map_names::DEVICES_V6)?;
                map.insert(v6.octets(), device, 0)
                    .map_err(|source| map_error(map_names::DEVICES_V6, source))
            }
        }
    }

    /// Stores `rules` for the destination prefix `address/prefix_len`.
    pub fn set_prefix(
        &mut self,
        address: IpAddr,
        prefix_len: u32,
        rules: PrefixRules,
    ) -> Result<(), DataplaneError> {
        match address {
            IpAddr::V4(v4) => {
                let mut map: LpmTrie<&mut MapData, [u8; 4], PrefixRules> =
                    self.map_mut(map_names::PREFIXES_V4)?;
                map.insert(&Key::new(prefix_len, v4.octets()), rules, 0)
                    .map_err(|source| map_error(map_names::PREFIXES_V4, source))
            }
            IpAddr::V6(v6) => {
                let mut map: LpmTrie<&mut MapData, [u8; 16], PrefixRules> =
                    self.map_mut(map_names::PREFIXES_V6)?;
                map.insert(&Key::new(prefix_len, v6.octets()), rules, 0)
                    .map_err(|source| map_error(map_names::PREFIXES_V6, source))
            }
        }
    }

    /// Inserts or replaces the session of `key`.
    pub fn set_session(
        &mut self,
        key: SessionKey,
        value: SessionValue,
    ) -> Result<(), DataplaneError> {
        let mut map: HashMap<&mut MapData, SessionKey, SessionValue> =
            self.map_mut(map_names::SESSIONS)?;
        map.insert(key, value, 0)
            .map_err(|source| map_error(map_names::SESSIONS, source))
    }

    /// Returns every counter summed over all CPUs, indexed as `common::counters`.
    pub fn counters(&self) -> Result<[u64; counters::COUNT as usize], DataplaneError> {
        let map: PerCpuArray<&MapData, u64> = self.map_ref(map_names::COUNTERS)?;
        let mut totals = [0u64; counters::COUNT as usize];
        for (index, total) in totals.iter_mut().enumerate() {
            let values = map
                .get(&(index as u32), 0)
                .map_err(|source| map_error(map_names::COUNTERS, source))?;
            *total = values.iter().sum();
        }
        Ok(totals)
    }

    fn map_ref<'a, T>(&'a self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .maps
            .get(name)
            .ok_or(DataplaneError::MissingMap { name })?;
        T::try_from(map).map_err(|source| map_error(name, source))
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .maps
            .get_mut(name)
            .ok_or(DataplaneError::MissingMap { name })?;
        T::try_from(map).map_err(|source| map_error(name, source))
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataplaneError> {
    let program = ebpf.program_mut(name).ok_or(DataplaneError::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    program
        .try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

fn map_error(name: &'static str, source: aya::maps::MapError) -> DataplaneError {
    DataplaneError::Map { name, source }
}

/// Maps an insert error to `MapFull` when the kernel returned E2BIG, which a hash map returns
/// when it has no room for a new key.
fn insert_error(name: &'static str, capacity: u32, source: aya::maps::MapError) -> DataplaneError {
    if let aya::maps::MapError::SyscallError(syscall) = &source
        && syscall.io_error.raw_os_error() == Some(libc::E2BIG)
    {
        return DataplaneError::MapFull { name, capacity };
    }
    map_error(name, source)
}

/// Treats a missing key as success, so removals are idempotent.
fn ignore_missing(
    name: &'static str,
    result: Result<(), aya::maps::MapError>,
) -> Result<(), DataplaneError> {
    match result {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(syscall))
            if syscall.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(source) => Err(map_error(name, source)),
    }
}

fn device_key_error(name: &'static str, source: aya::maps::MapError) -> DataplaneError {
    map_error(name, source)
}

impl maps::KernelMaps for Dataplane {
    fn set_device(&mut self, address: IpAddr, entry: DeviceEntry) -> Result<(), DataplaneError> {
        Dataplane::set_device(self, address, entry)
    }

    fn remove_device(&mut self, address: IpAddr) -> Result<(), DataplaneError> {
        match address {
            IpAddr::V4(v4) => {
                let mut map: HashMap<&mut MapData, [u8; 4], DeviceEntry> =
                    self.map_mut(map_names::DEVICES_V4)?;
                ignore_missing(map_names::DEVICES_V4, map.remove(&v4.octets()))
            }
            IpAddr::V6(v6) => {
                let mut map: HashMap<&mut MapData, [u8; 16], DeviceEntry> =
                    self.map_mut(map_names::DEVICES_V6)?;
                ignore_missing(map_names::DEVICES_V6, map.remove(&v6.octets()))
            }
        }
    }

    fn devices(&self) -> Result<Vec<(IpAddr, DeviceEntry)>, DataplaneError> {
        let mut devices = Vec::new();
        let v4: HashMap<&MapData, [u8; 4], DeviceEntry> = self.map_ref(map_names::DEVICES_V4)?;
        for entry in v4.iter() {
            let (key, value) =
                entry.map_err(|source| device_key_error(map_names::DEVICES_V4, source))?;
            devices.push((IpAddr::from(key), value));
        }
        let v6: HashMap<&MapData, [u8; 16], DeviceEntry> = self.map_ref(map_names::DEVICES_V6)?;
        for entry in v6.iter() {
            let (key, value) =
                entry.map_err(|source| device_key_error(map_names::DEVICES_V6, source))?;
            devices.push((IpAddr::from(key), value));
        }
        Ok(devices)
    }

    fn set_prefix(&mut self, prefix: IpNet, rules: PrefixRules) -> Result<(), DataplaneError> {
        let (address, length) = maps::prefix_parts(prefix);
        Dataplane::set_prefix(self, address, length, rules)
    }

    fn remove_prefix(&mut self, prefix: IpNet) -> Result<(), DataplaneError> {
        match prefix {
            IpNet::V4(v4) => {
                let mut map: LpmTrie<&mut MapData, [u8; 4], PrefixRules> =
                    self.map_mut(map_names::PREFIXES_V4)?;
                let key = Key::new(u32::from(v4.prefix_len()), v4.network().octets());
                ignore_missing(map_names::PREFIXES_V4, map.remove(&key))
            }
            IpNet::V6(v6) => {
                let mut map: LpmTrie<&mut MapData, [u8; 16], PrefixRules> =
                    self.map_mut(map_names::PREFIXES_V6)?;
                let key = Key::new(u32::from(v6.prefix_len()), v6.network().octets());
                ignore_missing(map_names::PREFIXES_V6, map.remove(&key))
            }
        }
    }

    fn prefixes(&self) -> Result<Vec<(IpNet, PrefixRules)>, DataplaneError> {
        let mut prefixes = Vec::new();
        let v4: LpmTrie<&MapData, [u8; 4], PrefixRules> = self.map_ref(map_names::PREFIXES_V4)?;
        for entry in v4.iter() {
            let (key, value) = entry.map_err(|source| map_error(map_names::PREFIXES_V4, source))?;
            if let Some(prefix) = maps::prefix_v4(key.prefix_len(), key.data()) {
                prefixes.push((prefix, value));
            }
        }
        let v6: LpmTrie<&MapData, [u8; 16], PrefixRules> = self.map_ref(map_names::PREFIXES_V6)?;
        for entry in v6.iter() {
            let (key, value) = entry.map_err(|source| map_error(map_names::PREFIXES_V6, source))?;
            if let Some(prefix) = maps::prefix_v6(key.prefix_len(), key.data()) {
                prefixes.push((prefix, value));
            }
        }
        Ok(prefixes)
    }

    fn set_session(&mut self, key: SessionKey, value: SessionValue) -> Result<(), DataplaneError> {
        let capacity = maps::KernelMaps::session_capacity(self);
        let mut map: HashMap<&mut MapData, SessionKey, SessionValue> =
            self.map_mut(map_names::SESSIONS)?;
        map.insert(key, value, 0)
            .map_err(|source| insert_error(map_names::SESSIONS, capacity, source))
    }

    fn set_sessions(
        &mut self,
        entries: &[(SessionKey, SessionValue)],
    ) -> Result<(), DataplaneError> {
        let capacity = maps::KernelMaps::session_capacity(self);
        let fd = match self.maps.get(map_names::SESSIONS) {
            Some(Map::HashMap(data)) => data.fd().as_fd(),
            Some(_) | None => {
                return Err(DataplaneError::MissingMap {
                    name: map_names::SESSIONS,
                });
            }
        };
        let written = match batch::update_sessions(fd, entries) {
            Ok(()) => return Ok(()),
            Err((err, _)) if err.raw_os_error() == Some(libc::E2BIG) => {
                return Err(DataplaneError::MapFull {
                    name: map_names::SESSIONS,
                    capacity,
                });
            }
            Err((err, written)) if err.raw_os_error() == Some(libc::EINVAL) => written,
            Err((err, _)) => {
                return Err(map_error(
                    map_names::SESSIONS,
                    aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_update_batch",
                        io_error: err,
                    }),
                ));
            }
        };
        // NOTE: EINVAL also stands for an invalid entry, which the single writes report.
        for (key, value) in &entries[written..] {
            self.set_session(*key, *value)?;
        }
        Ok(())
    }

    fn remove_session(&mut self, key: SessionKey) -> Result<(), DataplaneError> {
        let mut map: HashMap<&mut MapData, SessionKey, SessionValue> =
            self.map_mut(map_names::SESSIONS)?;
        ignore_missing(map_names::SESSIONS, map.remove(&key))
    }

    fn sessions(&self) -> Result<Vec<(SessionKey, SessionValue)>, DataplaneError> {
        if let Some(Map::HashMap(data)) = self.maps.get(map_names::SESSIONS) {
            match batch::lookup_sessions(data.fd().as_fd()) {
                Ok(sessions) => return Ok(sessions),
                // Without batch operations, the entries are read one by one below.
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {}
                Err(err) => {
                    return Err(map_error(
                        map_names::SESSIONS,
                        aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                            call: "bpf_map_lookup_batch",
                            io_error: err,
                        }),
                    ));
                }
            }
        }
        let map: HashMap<&MapData, SessionKey, SessionValue> = self.map_ref(map_names::SESSIONS)?;
        let mut sessions = Vec::new();
        for entry in map.iter() {
            sessions.push(entry.map_err(|source| map_error(map_names::SESSIONS, source))?);
        }
        Ok(sessions)
    }

    fn session(&self, key: SessionKey) -> Result<Option<SessionValue>, DataplaneError> {
        let map: HashMap<&MapData, SessionKey, SessionValue> = self.map_ref(map_names::SESSIONS)?;
        match map.get(&key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(aya::maps::MapError::SyscallError(syscall))
                if syscall.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(None)
            }
            Err(source) => Err(map_error(map_names::SESSIONS, source)),
        }
    }

    fn set_config(&mut self, config: common::Config) -> Result<(), DataplaneError> {
        // An XDP object without CONFIG takes its built-in punt interval, so the write is
        // skipped.
        if !self.maps.contains_key(map_names::CONFIG) {
            return Ok(());
        }
        let mut map: aya::maps::Array<&mut MapData, common::Config> =
            self.map_mut(map_names::CONFIG)?;
        map.set(0, config, 0)
            .map_err(|source| map_error(map_names::CONFIG, source))
    }

    fn session_capacity(&self) -> u32 {
        self.maps
            .get(map_names::SESSIONS)
            .and_then(|map| match map {
                aya::maps::Map::HashMap(data) => data.info().ok().map(|info| info.max_entries()),
                _ => None,
            })
            .unwrap_or(maps::DEFAULT_SESSION_CAPACITY)
    }
}
