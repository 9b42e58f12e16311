//! Map contents for the benchmarks and the loaded programs that hold them.
//!
//! Probe addresses, the ones in the frames that are measured, come from the documentation
//! ranges: devices 192.0.2.0/24 and 203.0.113.0/24 (IPv6 2001:db8:1::/64), resources
//! 198.51.100.1 to .9 (2001:db8:2::1 and ::9). Filler entries, which exist only to size the maps
//! and never appear in a frame, come from the benchmarking range 198.18.0.0/15 (IPv6
//! 2001:db8:e000::/36 and 2001:db8:f000::/36).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, HashMap, LpmTrie, Map, MapData, lpm_trie::Key},
    programs::Xdp,
};
use common::{
    Config, DeviceEntry, PrefixRules, ResourceRule, SessionKey, SessionValue, map_names,
    program_names,
};
use enforcer::dataplane::{bench_objects, xdp_object};

/// Number of enrolled probe devices; each has one IPv4 and one IPv6 address.
pub const PROBE_DEVICES: usize = 512;
/// Number of IPv4 probe resources with live sessions, 198.51.100.1 to .8.
pub const PROBE_RESOURCES: usize = 8;
/// Index of the probe device that sends the hot flow.
pub const HOT_DEVICE: usize = 10;
/// Number of filler devices per address family.
const FILLER_DEVICES: usize = 8192;
/// Maximum number of IPv4 filler prefixes: the /30 prefixes of 198.18.0.0/16.
const MAX_FILLER_PREFIXES: usize = 16384;
/// Probe prefixes per trie: IPv4 has 8 live and 1 expired resource, IPv6 1 live and 1 expired.
const PROBE_PREFIXES_V4: usize = PROBE_RESOURCES + 1;
/// Probe sessions that are not in the cold set: IPv6 live, IPv4 expired and IPv6 expired.
const EXTRA_PROBE_SESSIONS: usize = 3;
/// Smallest session and prefix count a fixture accepts.
pub const MIN_SESSIONS: usize = 16;
pub const MIN_PREFIXES: usize = 10;

/// TCP destination port of every resource rule and every probe frame.
pub const RESOURCE_PORT: u16 = 443;

const EXPIRED_RESOURCE_V4: u32 = 9;
const LIVE_RESOURCE_V6: u32 = 10;
const EXPIRED_RESOURCE_V6: u32 = 11;
const FILLER_DEVICE_ID_BASE: u32 = 10_000;
const FILLER_RESOURCE_V4_BASE: u32 = 100_000;
const FILLER_RESOURCE_V6_BASE: u32 = 200_000;

/// How long live sessions stay live, counted from the fill.
const LIVE_FOR: Duration = Duration::from_secs(24 * 3600);
/// Minimum time between two punts of the same pair, as a production configuration would set.
const PUNT_INTERVAL: Duration = Duration::from_secs(1);

pub fn probe_device_v4(index: usize) -> Ipv4Addr {
    if index < 256 {
        Ipv4Addr::new(192, 0, 2, index as u8)
    } else {
        Ipv4Addr::new(203, 0, 113, (index - 256) as u8)
    }
}

pub fn probe_device_v6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, index as u16)
}

/// Address of the IPv4 probe resource `index` (0-based), 198.51.100.1 upwards.
pub fn probe_resource_v4(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 1 + index as u8)
}

pub const EXPIRED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
pub const LIVE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
pub const EXPIRED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 9);
/// Destinations that match no resource.
pub const UNPROTECTED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
pub const UNPROTECTED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 1);
/// Sources that belong to no enrolled device.
pub const UNKNOWN_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);
pub const UNKNOWN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 4, 0, 0, 0, 0, 1);

fn filler_device_v4(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, (index >> 8) as u8, index as u8)
}

fn filler_device_v6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xe000, 0, 0, 0, 0, index as u16)
}

/// Network address of the IPv4 filler prefix `index`, a /30 in 198.18.0.0/16.
pub fn filler_prefix_v4(index: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 4 * index as u32)
}

fn filler_prefix_v6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xf000, index as u16, 0, 0, 0, 0)
}

/// One session as addresses: device address, resource address and port, the form an
/// nftables set stores.
#[derive(Clone, Copy, Debug)]
pub struct SessionTuple {
    pub device: Ipv4Addr,
    pub resource: Ipv4Addr,
    pub port: u16,
}

/// The sessions and prefixes of one benchmark configuration.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub sessions: usize,
    pub prefixes: usize,
}

impl Plan {
    pub fn new(sessions: usize, prefixes: usize) -> anyhow::Result<Self> {
        if sessions < MIN_SESSIONS {
            bail!("{sessions} sessions requested; the fixture needs at least {MIN_SESSIONS}");
        }
        if !(MIN_PREFIXES..=MAX_FILLER_PREFIXES + PROBE_PREFIXES_V4).contains(&prefixes) {
            bail!(
                "{prefixes} prefixes requested; the fixture supports {MIN_PREFIXES} to {}",
                MAX_FILLER_PREFIXES + PROBE_PREFIXES_V4
            );
        }
        Ok(Self { sessions, prefixes })
    }

    /// Live IPv4 probe sessions, the pairs the cold set cycles through.
    pub fn cold_pairs(&self) -> usize {
        (self.sessions - EXTRA_PROBE_SESSIONS).min(PROBE_DEVICES * PROBE_RESOURCES)
    }

    /// Probe device and probe resource (both 0-based) of cold pair `index`.
    pub fn cold_pair(&self, index: usize) -> (usize, usize) {
        let pair = index % self.cold_pairs();
        (pair % PROBE_DEVICES, pair / PROBE_DEVICES)
    }

    fn filler_sessions(&self) -> usize {
        self.sessions - self.cold_pairs() - EXTRA_PROBE_SESSIONS
    }

    /// Returns every session of the plan as an address tuple, probe sessions first.
    pub fn session_tuples(&self) -> Vec<SessionTuple> {
        let mut tuples = Vec::with_capacity(self.sessions);
        for index in 0..self.cold_pairs() {
            let (device, resource) = self.cold_pair(index);
            tuples.push(SessionTuple {
                device: probe_device_v4(device),
                resource: probe_resource_v4(resource),
                port: RESOURCE_PORT,
            });
        }
        for index in 0..self.filler_sessions() {
            tuples.push(SessionTuple {
                device: filler_device_v4(index % FILLER_DEVICES),
                resource: filler_prefix_v4(index / FILLER_DEVICES),
                port: RESOURCE_PORT,
            });
        }
        tuples
    }

    /// Returns the IPv4 prefixes of the plan as (network address, length): probe /32s, then
    /// filler /30s.
    pub fn prefixes_v4(&self) -> Vec<(Ipv4Addr, u32)> {
        let mut prefixes: Vec<(Ipv4Addr, u32)> = (0..PROBE_RESOURCES)
            .map(|index| (probe_resource_v4(index), 32))
            .collect();
        prefixes.push((EXPIRED_V4, 32));
        for index in 0..self.prefixes - PROBE_PREFIXES_V4 {
            prefixes.push((filler_prefix_v4(index), 30));
        }
        prefixes
    }
}

/// An enforcer object loaded with the maps of one plan.
pub struct EnforcerFixture {
    pub plan: Plan,
    pub ebpf: Ebpf,
    /// Time to write every session with `BPF_MAP_UPDATE_BATCH` into the empty map.
    pub session_fill: Duration,
    /// Whether the kernel accepted batched writes; without them sessions are written one by one.
    pub batched: bool,
}

impl EnforcerFixture {
    /// Loads the enforcer with map sizes for `plan` and fills the maps.
    pub fn load(plan: Plan) -> anyhow::Result<Self> {
        Self::load_with_punt_interval(plan, PUNT_INTERVAL)
    }

    /// Loads the enforcer as `load` does, with `punt_interval` between two punts of a pair.
    pub fn load_with_punt_interval(plan: Plan, punt_interval: Duration) -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::SESSIONS, plan.sessions as u32)
            .map_max_entries(map_names::PREFIXES_V4, plan.prefixes as u32)
            .map_max_entries(map_names::PREFIXES_V6, plan.prefixes as u32)
            .load(xdp_object()?)
            .context("failed to load the enforcer object")?;
        load_program(&mut ebpf, program_names::ETHERNET)?;

        let now = boot_time_ns()?;
        fill_devices(&mut ebpf)?;
        fill_prefixes(&mut ebpf, &plan)?;
        set_config(&mut ebpf, punt_interval)?;
        let (keys, values) = session_entries(&plan, now);
        let started = Instant::now();
        let batched = write_hash(&mut ebpf, map_names::SESSIONS, &keys, &values)?;
        let session_fill = started.elapsed();
        Ok(Self {
            plan,
            ebpf,
            session_fill,
            batched,
        })
    }

    pub fn program(&self) -> anyhow::Result<&Xdp> {
        program(&self.ebpf, program_names::ETHERNET)
    }

    /// Key of the hot flow's session.
    pub fn hot_session_key() -> SessionKey {
        SessionKey {
            device_id: probe_device_id(HOT_DEVICE),
            resource_id: 1,
        }
    }

    /// Writes `count` existing sessions again one `BPF_MAP_UPDATE_ELEM` call at a time and
    /// returns the elapsed time.
    pub fn rewrite_sessions_one_by_one(&mut self, count: usize) -> anyhow::Result<Duration> {
        let now = boot_time_ns()?;
        let (keys, values) = session_entries(&self.plan, now);
        let mut map: HashMap<&mut MapData, SessionKey, SessionValue> =
            map_mut(&mut self.ebpf, map_names::SESSIONS)?;
        let started = Instant::now();
        for (key, value) in keys.iter().zip(&values).take(count) {
            map.insert(key, value, 0)
                .with_context(|| format!("failed to write session {key:?}"))?;
        }
        Ok(started.elapsed())
    }

    /// Removes the hot flow's session, as a revocation does.
    pub fn remove_hot_session(&mut self) -> anyhow::Result<()> {
        let mut map: HashMap<&mut MapData, SessionKey, SessionValue> =
            map_mut(&mut self.ebpf, map_names::SESSIONS)?;
        map.remove(&Self::hot_session_key())
            .context("failed to remove the hot session")
    }

    /// Restores the hot flow's session after `remove_hot_session`.
    pub fn restore_hot_session(&mut self) -> anyhow::Result<()> {
        let expires_at_boot_ns = boot_time_ns()? + LIVE_FOR.as_nanos() as u64;
        let mut map: HashMap<&mut MapData, SessionKey, SessionValue> =
            map_mut(&mut self.ebpf, map_names::SESSIONS)?;
        map.insert(
            Self::hot_session_key(),
            SessionValue { expires_at_boot_ns },
            0,
        )
        .context("failed to restore the hot session")
    }
}

/// A single-program benchmark object: the floor, the clock probe or the parser alone.
pub struct ProbeFixture {
    pub ebpf: Ebpf,
    program: &'static str,
}

impl ProbeFixture {
    /// Loads the floor, the program that passes every frame without reading it.
    pub fn floor() -> anyhow::Result<Self> {
        Self::load(bench_objects::floor_object()?, bench_objects::FLOOR_PROGRAM)
    }

    /// Loads the clock probe, the program that reads the boot clock once and passes the frame.
    pub fn clock() -> anyhow::Result<Self> {
        Self::load(bench_objects::clock_object()?, bench_objects::CLOCK_PROGRAM)
    }

    /// Loads the parser alone, the program that parses as the enforcer does and looks up no map.
    pub fn parse() -> anyhow::Result<Self> {
        Self::load(bench_objects::parse_object()?, bench_objects::PARSE_PROGRAM)
    }

    fn load(object: &[u8], program: &'static str) -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(object)
            .with_context(|| format!("failed to load the object of {program}"))?;
        load_program(&mut ebpf, program)?;
        Ok(Self { ebpf, program })
    }

    pub fn program(&self) -> anyhow::Result<&Xdp> {
        program(&self.ebpf, self.program)
    }
}

fn probe_device_id(index: usize) -> u32 {
    1 + index as u32
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} is missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))?;
    program
        .load()
        .with_context(|| format!("the verifier rejected program {name}"))
}

pub fn program<'a>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a Xdp> {
    ebpf.program(name)
        .with_context(|| format!("program {name} is missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))
}

fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("map {name} is missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

fn fill_devices(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let mut keys_v4 = Vec::new();
    let mut keys_v6 = Vec::new();
    let mut entries = Vec::new();
    for index in 0..PROBE_DEVICES {
        keys_v4.push(probe_device_v4(index).octets());
        keys_v6.push(probe_device_v6(index).octets());
        entries.push(device_entry(probe_device_id(index)));
    }
    for index in 0..FILLER_DEVICES {
        keys_v4.push(filler_device_v4(index).octets());
        keys_v6.push(filler_device_v6(index).octets());
        entries.push(device_entry(FILLER_DEVICE_ID_BASE + index as u32));
    }
    write_hash(ebpf, map_names::DEVICES_V4, &keys_v4, &entries)?;
    write_hash(ebpf, map_names::DEVICES_V6, &keys_v6, &entries)?;
    Ok(())
}

fn device_entry(device_id: u32) -> DeviceEntry {
    DeviceEntry {
        device_id,
        ..Default::default()
    }
}

fn tcp_rules(resource_id: u32) -> PrefixRules {
    let mut rules = PrefixRules {
        count: 1,
        ..Default::default()
    };
    rules.rules[0] = ResourceRule {
        resource_id,
        port_lo: RESOURCE_PORT,
        port_hi: RESOURCE_PORT,
        protocol: libc::IPPROTO_TCP as u8,
        ..Default::default()
    };
    rules
}

fn fill_prefixes(ebpf: &mut Ebpf, plan: &Plan) -> anyhow::Result<()> {
    // Prefixes are few next to sessions, so they are written one call at a time.
    let mut trie_v4: LpmTrie<&mut MapData, [u8; 4], PrefixRules> =
        map_mut(ebpf, map_names::PREFIXES_V4)?;
    for (index, (address, len)) in plan.prefixes_v4().into_iter().enumerate() {
        let resource_id = if index < PROBE_PREFIXES_V4 {
            1 + index as u32
        } else {
            FILLER_RESOURCE_V4_BASE + (index - PROBE_PREFIXES_V4) as u32
        };
        trie_v4
            .insert(&Key::new(len, address.octets()), tcp_rules(resource_id), 0)
            .with_context(|| format!("failed to write prefix {address}/{len}"))?;
    }

    let mut trie_v6: LpmTrie<&mut MapData, [u8; 16], PrefixRules> =
        map_mut(ebpf, map_names::PREFIXES_V6)?;
    let mut prefixes_v6 = vec![
        (LIVE_V6, 128, LIVE_RESOURCE_V6),
        (EXPIRED_V6, 128, EXPIRED_RESOURCE_V6),
    ];
    for index in 0..plan.prefixes - prefixes_v6.len() {
        let resource_id = FILLER_RESOURCE_V6_BASE + index as u32;
        prefixes_v6.push((filler_prefix_v6(index), 64, resource_id));
    }
    for (address, len, resource_id) in prefixes_v6 {
        trie_v6
            .insert(&Key::new(len, address.octets()), tcp_rules(resource_id), 0)
            .with_context(|| format!("failed to write prefix {address}/{len}"))?;
    }
    Ok(())
}

/// Sets the punt interval when the object has a `CONFIG` map.
fn set_config(ebpf: &mut Ebpf, punt_interval: Duration) -> anyhow::Result<()> {
    if ebpf.map(map_names::CONFIG).is_none() {
        return Ok(());
    }
    let mut config: Array<&mut MapData, Config> = map_mut(ebpf, map_names::CONFIG)?;
    let value = Config {
        punt_interval_ns: punt_interval.as_nanos() as u64,
        flags: 0,
    };
    config
        .set(0, value, 0)
        .context("failed to write the CONFIG map")
}

fn session_entries(plan: &Plan, now_boot_ns: u64) -> (Vec<SessionKey>, Vec<SessionValue>) {
    let live = SessionValue {
        expires_at_boot_ns: now_boot_ns + LIVE_FOR.as_nanos() as u64,
    };
    let expired = SessionValue {
        expires_at_boot_ns: now_boot_ns - 1,
    };
    let mut keys = Vec::with_capacity(plan.sessions);
    let mut values = Vec::with_capacity(plan.sessions);
    for index in 0..plan.cold_pairs() {
        let (device, resource) = plan.cold_pair(index);
        keys.push(SessionKey {
            device_id: probe_device_id(device),
            resource_id: 1 + resource as u32,
        });
        values.push(live);
    }
    let hot_device = probe_device_id(HOT_DEVICE);
    for (resource_id, value) in [
        (LIVE_RESOURCE_V6, live),
        (EXPIRED_RESOURCE_V4, expired),
        (EXPIRED_RESOURCE_V6, expired),
    ] {
        keys.push(SessionKey {
            device_id: hot_device,
            resource_id,
        });
        values.push(value);
    }
    for index in 0..plan.filler_sessions() {
        keys.push(SessionKey {
            device_id: FILLER_DEVICE_ID_BASE + (index % FILLER_DEVICES) as u32,
            resource_id: FILLER_RESOURCE_V4_BASE + (index / FILLER_DEVICES) as u32,
        });
        values.push(live);
    }
    (keys, values)
}

/// Writes `keys` and `values` into the hash map `name`, batched when the kernel supports it.
/// Returns whether the writes were batched.
fn write_hash<K: Pod, V: Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    keys: &[K],
    values: &[V],
) -> anyhow::Result<bool> {
    let fd = match ebpf.map(name) {
        Some(Map::HashMap(data)) => data.fd().as_fd(),
        Some(_) => bail!("map {name} is not a BPF_MAP_TYPE_HASH"),
        None => bail!("map {name} is missing from the object"),
    };
    match enforcer::dataplane::batch::update_batch(fd, keys, values) {
        Ok(()) => return Ok(true),
        Err((err, _)) if err.raw_os_error() == Some(libc::EINVAL) => {}
        Err((err, _)) => {
            return Err(err).with_context(|| format!("BPF_MAP_UPDATE_BATCH failed on {name}"));
        }
    }

    let mut map: HashMap<&mut MapData, K, V> = map_mut(ebpf, name)?;
    for (key, value) in keys.iter().zip(values) {
        map.insert(key, value, 0)
            .with_context(|| format!("failed to write an entry of {name}"))?;
    }
    Ok(false)
}

/// Reads `CLOCK_BOOTTIME`, the clock of `bpf_ktime_get_boot_ns()`, in nanoseconds.
pub fn boot_time_ns() -> anyhow::Result<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return Err(io::Error::last_os_error()).context("clock_gettime(CLOCK_BOOTTIME) failed");
    }
    Ok(now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
}

/// Address of the device that sends probe traffic, as an `IpAddr` of the requested family.
pub fn hot_device(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(probe_device_v6(HOT_DEVICE))
    } else {
        IpAddr::V4(probe_device_v4(HOT_DEVICE))
    }
}
