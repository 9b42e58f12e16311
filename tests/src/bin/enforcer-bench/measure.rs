//! Variants, their validation and their interleaved measurement with `BPF_PROG_TEST_RUN`.

use std::time::Instant;

use anyhow::{Context as _, bail};
use aya::{
    maps::{MapData, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use common::{counters, map_names};
use enforcer_tests::Netns;

use crate::fixture::{EnforcerFixture, ProbeFixture};

/// XDP actions from `enum xdp_action` in the kernel's `uapi/linux/bpf.h`.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Frames handed to the kernel per batch in live-frames mode (the kernel's default is 64).
const LIVE_BATCH: u32 = 64;

/// Which loaded program a variant runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramRef {
    Floor,
    Clock,
    Parse,
    Enforcer(usize),
}

/// How a variant feeds its frames.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// One frame, `BPF_PROG_TEST_RUN` repeating it `repeat` times.
    Hot { repeat: u32 },
    /// One test run with repeat 1 per frame, cycling `passes` times through the frame set, so
    /// consecutive packets belong to different flows.
    Cold { passes: usize },
    /// Like `Cold` over two frames, timing only the first: the cost of a packet that follows
    /// the second one.
    Alternate { passes: usize },
}

/// Injection into the network stack of a namespace with `BPF_F_TEST_XDP_LIVE_FRAMES`: frames
/// the program passes go through the stack of `netns` as if received on `ifindex`.
#[derive(Clone, Copy, Debug)]
pub struct Live {
    pub netns: usize,
    pub ifindex: u32,
}

/// The verdict a variant must produce, checked once before measuring.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    pub action: u32,
    /// Index in `common::counters` the packet must bump; `None` for programs without counters.
    pub counter: Option<u32>,
}

/// One measured configuration.
pub struct Variant {
    pub group: &'static str,
    pub name: String,
    pub program: ProgramRef,
    pub frames: Vec<Vec<u8>>,
    pub mode: Mode,
    pub live: Option<Live>,
    pub expect: Expect,
    /// Index of the variant this one is compared with, measured in the same rounds.
    pub floor: Option<usize>,
    /// Nanoseconds per packet, one sample per round.
    pub samples: Vec<f64>,
    /// Why the variant's verdict was wrong, if it was.
    pub invalid: Option<String>,
}

/// Everything the variants refer to.
pub struct Bench {
    pub floor: ProbeFixture,
    pub clock: ProbeFixture,
    pub parse: ProbeFixture,
    pub enforcers: Vec<EnforcerFixture>,
    pub namespaces: Vec<Netns>,
    pub variants: Vec<Variant>,
}

/// The `struct xdp_md` context of live-frames runs (Linux `uapi/linux/bpf.h`).
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

impl XdpMd {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `XdpMd` is `#[repr(C)]` and made of six `u32` with no padding, so all of its
        // bytes are initialized.
        unsafe {
            std::slice::from_raw_parts(
                (self as *const XdpMd).cast::<u8>(),
                std::mem::size_of::<XdpMd>(),
            )
        }
    }
}

impl Bench {
    /// Adds `variant` and returns its index.
    pub fn push(&mut self, variant: Variant) -> usize {
        self.variants.push(variant);
        self.variants.len() - 1
    }

    fn xdp(&self, program: ProgramRef) -> anyhow::Result<&Xdp> {
        match program {
            ProgramRef::Floor => self.floor.program(),
            ProgramRef::Clock => self.clock.program(),
            ProgramRef::Parse => self.parse.program(),
            ProgramRef::Enforcer(index) => self.enforcers[index].program(),
        }
    }

    /// Runs every frame of every variant once, without live frames, and records variants
    /// whose action or verdict counter differs from the expected one.
    pub fn validate(&mut self) -> anyhow::Result<()> {
        for index in 0..self.variants.len() {
            let problem = self.check_verdict(index)?;
            self.variants[index].invalid = problem;
        }
        Ok(())
    }

    fn check_verdict(&self, index: usize) -> anyhow::Result<Option<String>> {
        let variant = &self.variants[index];
        let before = self.counters(variant.program)?;
        let xdp = self.xdp(variant.program)?;

        // Alternate mode times only its first frame, so only that one has an expected verdict.
        let checked = match variant.mode {
            Mode::Alternate { .. } => &variant.frames[..1],
            _ => &variant.frames[..],
        };
        for frame in checked {
            let result = xdp
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    repeat: 1,
                    ..Default::default()
                })
                .with_context(|| format!("test run of {} failed", variant.name))?;
            if result.return_value != variant.expect.action {
                return Ok(Some(format!(
                    "returned XDP action {}, expected {}",
                    result.return_value, variant.expect.action
                )));
            }
        }
        let Some(counter) = variant.expect.counter else {
            return Ok(None);
        };
        let after = self.counters(variant.program)?;
        let moved: Vec<usize> = (0..counters::COUNT as usize)
            .filter(|&index| after[index] != before[index])
            .collect();
        let expected = checked.len() as u64;
        if after[counter as usize] - before[counter as usize] != expected {
            let names: Vec<&str> = moved.iter().map(|&i| counters::NAMES[i]).collect();
            return Ok(Some(format!(
                "counted as {}, expected {}",
                names.join(", "),
                counters::NAMES[counter as usize]
            )));
        }
        Ok(None)
    }

    /// Returns the verdict counters of `program` summed over CPUs; zeros for the probes.
    pub fn counters(&self, program: ProgramRef) -> anyhow::Result<[u64; counters::COUNT as usize]> {
        let mut totals = [0u64; counters::COUNT as usize];
        let ProgramRef::Enforcer(index) = program else {
            return Ok(totals);
        };
        let map = self.enforcers[index]
            .ebpf
            .map(map_names::COUNTERS)
            .context("map COUNTERS is missing from the enforcer object")?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).context("map COUNTERS is not a per-CPU array")?;
        for (slot, total) in totals.iter_mut().enumerate() {
            let values = array
                .get(&(slot as u32), 0)
                .with_context(|| format!("failed to read counter {slot}"))?;
            *total = values.iter().sum();
        }
        Ok(totals)
    }

    /// Measures every variant once per round, starting each round at a different variant so
    /// that no variant always runs right after the same neighbour.
    pub fn run_rounds(&mut self, rounds: usize) -> anyhow::Result<()> {
        let count = self.variants.len();
        let started = Instant::now();
        for round in 0..rounds {
            for step in 0..count {
                let index = (step + round * 7) % count;
                let sample = self.measure(index)?;
                self.variants[index].samples.push(sample);
            }
            eprintln!(
                "enforcer-bench: round {}/{rounds} done after {:.1} s",
                round + 1,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// Injects the first frame of live variant `index` once into its namespace's stack.
    pub fn inject_once(&self, index: usize) -> anyhow::Result<()> {
        let variant = &self.variants[index];
        let live = variant
            .live
            .with_context(|| format!("{} is not a live-frames variant", variant.name))?;
        let xdp = self.xdp(variant.program)?;
        let _inside = self.namespaces[live.netns].enter()?;
        let context = XdpMd {
            data_end: variant.frames[0].len() as u32,
            ingress_ifindex: live.ifindex,
            ..Default::default()
        };
        run(xdp, &variant.frames[0], 1, Some(context.as_bytes()), true)
            .with_context(|| format!("live injection of {} failed", variant.name))?;
        Ok(())
    }

    /// Returns the nanoseconds per packet of one measurement of variant `index`.
    fn measure(&self, index: usize) -> anyhow::Result<f64> {
        let variant = &self.variants[index];
        let xdp = self.xdp(variant.program)?;
        let _inside = match variant.live {
            Some(live) => Some(self.namespaces[live.netns].enter()?),
            None => None,
        };
        let context = variant.live.map(|live| XdpMd {
            data_end: variant.frames[0].len() as u32,
            ingress_ifindex: live.ifindex,
            ..Default::default()
        });
        let context = context.as_ref().map(XdpMd::as_bytes);

        match variant.mode {
            Mode::Hot { repeat } => {
                let nanos = run(
                    xdp,
                    &variant.frames[0],
                    repeat,
                    context,
                    variant.live.is_some(),
                )
                .with_context(|| format!("test run of {} failed", variant.name))?;
                Ok(nanos as f64)
            }
            Mode::Cold { passes } => {
                if variant.live.is_some() {
                    bail!(
                        "{}: cold mode with live frames is not supported",
                        variant.name
                    );
                }
                let mut total = 0u64;
                for _ in 0..passes {
                    for frame in &variant.frames {
                        total += run(xdp, frame, 1, None, false)
                            .with_context(|| format!("test run of {} failed", variant.name))?;
                    }
                }
                Ok(total as f64 / (passes * variant.frames.len()) as f64)
            }
            Mode::Alternate { passes } => {
                let [timed, other] = variant.frames.as_slice() else {
                    bail!("{}: alternate mode needs exactly two frames", variant.name);
                };
                let mut total = 0u64;
                for _ in 0..passes {
                    total += run(xdp, timed, 1, None, false)
                        .with_context(|| format!("test run of {} failed", variant.name))?;
                    run(xdp, other, 1, None, false)
                        .with_context(|| format!("test run of {} failed", variant.name))?;
                }
                Ok(total as f64 / passes as f64)
            }
        }
    }
}

/// Runs `frame` `repeat` times and returns the kernel's mean time per run in nanoseconds. The
/// kernel times only the program runs and pauses its timer while the thread is rescheduled.
fn run(
    xdp: &Xdp,
    frame: &[u8],
    repeat: u32,
    context: Option<&[u8]>,
    live: bool,
) -> anyhow::Result<u64> {
    let attrs = if live {
        TestRunAttrs::new().xdp_live_frames(LIVE_BATCH)
    } else {
        TestRunAttrs::new()
    };
    let result = xdp.test_run(TestRunOptions {
        data_in: Some(frame),
        ctx_in: context,
        repeat,
        attrs,
        ..Default::default()
    })?;
    Ok(result.duration.as_nanos() as u64)
}

/// Median, minimum and maximum of a sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        } else {
            sorted[middle]
        };
        Self {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }
}

impl Variant {
    /// Summary of the per-round differences between this variant and its floor.
    pub fn over_floor(&self, floor: &Variant) -> Summary {
        let differences: Vec<f64> = self
            .samples
            .iter()
            .zip(&floor.samples)
            .map(|(sample, floor)| sample - floor)
            .collect();
        Summary::of(&differences)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_odd_sample() {
        let summary = Summary::of(&[5.0, 1.0, 3.0]);
        assert_eq!(summary.median, 3.0);
        assert_eq!(summary.min, 1.0);
        assert_eq!(summary.max, 5.0);
    }

    #[test]
    fn summary_even_sample() {
        let summary = Summary::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(summary.median, 2.5);
    }
}
