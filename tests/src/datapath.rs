//! The XDP object loaded straight through aya for the data-path tests: both entry points
//! verified, typed map writes, `BPF_PROG_TEST_RUN` of one packet, and the punt ring buffer.

use std::net::IpAddr;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{TestRun, TestRunOptions, Xdp},
};
use common::{
    Config, DeviceEntry, PrefixRules, PuntEvent, SessionKey, SessionValue, counters, map_names,
    program_names,
};
use enforcer::dataplane::{reference::LinkKind, xdp_object};

/// Output buffer size for test runs: the largest test frame plus the room a reply adds.
const OUTPUT_MAX: usize = 4096;

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug)]
pub struct RunResult {
    /// XDP action the program returned.
    pub action: u32,
    /// The frame as the program left it.
    pub output: Vec<u8>,
}

/// The loaded object with both entry points verified.
pub struct TestProgram {
    ebpf: Ebpf,
}

impl TestProgram {
    /// Loads the object and both entry points into the kernel.
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(xdp_object()?).context("failed to load the XDP object")?;
        for name in [program_names::ETHERNET, program_names::RAW_IP] {
            program(&mut ebpf, name)?
                .load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        Ok(Self { ebpf })
    }

    /// Returns the entry point for `link`.
    pub fn program(&mut self, link: LinkKind) -> anyhow::Result<&mut Xdp> {
        program(&mut self.ebpf, entry_point(link))
    }

    /// Returns the instruction count the verifier processed for `link`'s entry point.
    pub fn verified_instructions(&mut self, link: LinkKind) -> anyhow::Result<u32> {
        let info = self.program(link)?.info()?;
        info.verified_instruction_count()
            .ok_or_else(|| anyhow!("the kernel does not report verified instruction counts"))
    }

    /// Runs `frame` once through the entry point for `link`.
    pub fn run(&mut self, link: LinkKind, frame: &[u8]) -> anyhow::Result<RunResult> {
        let mut output = vec![0u8; OUTPUT_MAX];
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.data_out = Some(&mut output);
        let result = self
            .program(link)?
            .test_run(options)
            .with_context(|| format!("BPF_PROG_TEST_RUN failed on a {}-byte frame", frame.len()))?;
        output.truncate(result.data_size_out as usize);
        Ok(RunResult {
            action: result.return_value,
            output,
        })
    }

    pub fn set_device(&mut self, address: IpAddr, device: DeviceEntry) -> anyhow::Result<()> {
        match address {
            IpAddr::V4(v4) => {
                let mut map: HashMap<&mut MapData, [u8; 4], DeviceEntry> =
                    self.map(map_names::DEVICES_V4)?;
                map.insert(v4.octets(), device, 0)?;
            }
            IpAddr::V6(v6) => {
                let mut map: HashMap<&mut MapData, [u8; 16], DeviceEntry> =
                    self.map(map_names::DEVICES_V6)?;
                map.insert(v6.octets(), device, 0)?;
            }
        }
        Ok(())
    }

    pub fn set_prefix(
        &mut self,
        address: IpAddr,
        prefix_len: u32,
        rules: PrefixRules,
    ) -> anyhow::Result<()> {
        match address {
            IpAddr::V4(v4) => {
                let mut map: LpmTrie<&mut MapData, [u8; 4], PrefixRules> =
                    self.map(map_names::PREFIXES_V4)?;
                map.insert(&Key::new(prefix_len, v4.octets()), rules, 0)?;
            }
            IpAddr::V6(v6) => {
                let mut map: LpmTrie<&mut MapData, [u8; 16], PrefixRules> =
                    self.map(map_names::PREFIXES_V6)?;
                map.insert(&Key::new(prefix_len, v6.octets()), rules, 0)?;
            }
        }
        Ok(())
    }

    pub fn set_session(&mut self, key: SessionKey, value: SessionValue) -> anyhow::Result<()> {
        let mut map: HashMap<&mut MapData, SessionKey, SessionValue> =
            self.map(map_names::SESSIONS)?;
        map.insert(key, value, 0)?;
        Ok(())
    }

    pub fn set_config(&mut self, config: Config) -> anyhow::Result<()> {
        let mut map: Array<&mut MapData, Config> = self.map(map_names::CONFIG)?;
        map.set(0, config, 0)?;
        Ok(())
    }

    /// Returns every counter summed over all CPUs.
    pub fn counters(&mut self) -> anyhow::Result<[u64; counters::COUNT as usize]> {
        let map: PerCpuArray<&mut MapData, u64> = self.map(map_names::COUNTERS)?;
        let mut totals = [0u64; counters::COUNT as usize];
        for (index, total) in totals.iter_mut().enumerate() {
            *total = map.get(&(index as u32), 0)?.iter().sum();
        }
        Ok(totals)
    }

    /// Takes the punt ring buffer out of the object, for reading events.
    pub fn take_punts(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(map_names::PUNTS)
            .ok_or_else(|| anyhow!("map {} is missing", map_names::PUNTS))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Returns map `name` as the aya map type `T`.
    pub fn map<'a, T>(&'a mut self, name: &'static str) -> anyhow::Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} is missing"))?;
        Ok(T::try_from(map)?)
    }
}

/// Reads every punt event waiting in `ring`.
pub fn drain_punts(ring: &mut RingBuf<MapData>) -> Vec<PuntEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<PuntEvent>() {
            // SAFETY: the kernel wrote a whole `PuntEvent` (repr(C), any bit pattern valid)
            // and the length was checked; the read is unaligned-safe.
            events.push(unsafe { item.as_ptr().cast::<PuntEvent>().read_unaligned() });
        }
    }
    events
}

fn entry_point(link: LinkKind) -> &'static str {
    match link {
        LinkKind::Ethernet => program_names::ETHERNET,
        LinkKind::RawIp => program_names::RAW_IP,
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} is missing from the XDP object"))?;
    Ok(program.try_into()?)
}

/// Returns CLOCK_BOOTTIME in nanoseconds, the clock of session expiries.
pub fn boot_ns_now() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to write.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    assert_eq!(result, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
