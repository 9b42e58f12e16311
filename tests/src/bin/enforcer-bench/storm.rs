//! The punt storm: the cost of allowed traffic while every other packet hits an expired
//! session and is punted, and the punt events per second that reach user space.
//!
//! The storm fixture sets the punt interval to 1 ns, so every denied packet makes a punt
//! rather than being rate-limited per pair: the heaviest punt load the program can produce.
//! A reader thread drains the `PUNTS` ring buffer for the whole run, as the reauth responder
//! would. The baseline sends the same two frames through a second fixture with the default
//! punt interval. There the expired frame takes the same path, but its punt is rate-limited,
//! so the two variants differ only in the ring buffer write and the reader's work.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    maps::RingBuf,
    programs::{TestRun as _, TestRunOptions},
};
use common::{counters, map_names};

use crate::{
    Settings,
    fixture::{EnforcerFixture, Plan},
    measure::{Bench, Expect, Mode, ProgramRef, Variant, XDP_PASS},
    variants::{Case, REPEAT_MODE_MAC, Shape, case_frame},
};

/// Punt interval of the storm fixture: short enough that no punt is rate-limited.
const STORM_PUNT_INTERVAL: Duration = Duration::from_nanos(1);
/// Upper bound on the reader thread's life, in case the bench stops without joining it.
const MAX_READER_LIFE: Duration = Duration::from_secs(1800);
/// Pause of the reader when the ring buffer is empty.
const READER_IDLE: Duration = Duration::from_micros(100);

/// Indices of the storm's variants.
pub struct StormLayout {
    pub fixture: usize,
    /// Allowed frames alternating with expired-session frames whose punts are rate-limited.
    pub calm: usize,
    /// Allowed frames alternating with frames of an expired session.
    pub storm: usize,
    reader: PuntReader,
}

/// Punt throughput of a burst of denied packets.
#[derive(Clone, Copy, Debug)]
pub struct PuntRate {
    pub packets: u64,
    pub elapsed: Duration,
    /// Events the reader took from the ring buffer during the burst.
    pub read: u64,
    pub sent: u64,
    pub lost: u64,
    pub rate_limited: u64,
}

/// Loads the storm fixture with the sizes of `plan` and adds the storm variants, or returns
/// `None` when the enforcer object has no punt ring buffer.
pub fn add_storm(
    bench: &mut Bench,
    settings: &Settings,
    plan: Plan,
) -> anyhow::Result<Option<StormLayout>> {
    let mut fixture = EnforcerFixture::load_with_punt_interval(plan, STORM_PUNT_INTERVAL)?;
    let Some(ring) = fixture.ebpf.take_map(map_names::PUNTS) else {
        return Ok(None);
    };
    let reader = PuntReader::start(ring)?;
    bench.enforcers.push(fixture);
    let fixture = bench.enforcers.len() - 1;
    let limited = EnforcerFixture::load(plan)?;
    bench.enforcers.push(limited);
    let limited = bench.enforcers.len() - 1;

    let hit = case_frame(Case::Hit, Shape::Ipv4, REPEAT_MODE_MAC);
    let expired = case_frame(Case::Expired, Shape::Ipv4, REPEAT_MODE_MAC);
    let mode = Mode::Alternate {
        passes: settings.storm_passes,
    };
    let floor = bench.push(storm_variant(
        "floor, allowed after allowed",
        ProgramRef::Floor,
        vec![hit.clone(), hit.clone()],
        mode,
        Expect {
            action: XDP_PASS,
            counter: None,
        },
        None,
    ));
    let hit_expect = Expect {
        action: XDP_PASS,
        counter: Some(counters::PASS_SESSION),
    };
    bench.push(storm_variant(
        "hit, every other packet also a hit",
        ProgramRef::Enforcer(fixture),
        vec![hit.clone(), hit.clone()],
        mode,
        hit_expect,
        Some(floor),
    ));
    let calm = bench.push(storm_variant(
        "hit, every other packet an expired session (punt rate-limited)",
        ProgramRef::Enforcer(limited),
        vec![hit.clone(), expired.clone()],
        mode,
        hit_expect,
        Some(floor),
    ));
    let storm = bench.push(storm_variant(
        "hit, every other packet an expired session (punted)",
        ProgramRef::Enforcer(fixture),
        vec![hit, expired],
        mode,
        hit_expect,
        Some(floor),
    ));
    Ok(Some(StormLayout {
        fixture,
        calm,
        storm,
        reader,
    }))
}

fn storm_variant(
    name: &str,
    program: ProgramRef,
    frames: Vec<Vec<u8>>,
    mode: Mode,
    expect: Expect,
    floor: Option<usize>,
) -> Variant {
    Variant {
        group: "punt storm",
        name: name.to_owned(),
        program,
        frames,
        mode,
        live: None,
        expect,
        floor,
        samples: Vec::new(),
        invalid: None,
    }
}

/// Runs the expired frame `packets` times in one test run while the reader drains the ring
/// buffer, then stops the reader.
pub fn measure_punt_rate(
    bench: &Bench,
    layout: StormLayout,
    packets: u32,
) -> anyhow::Result<PuntRate> {
    let before = bench.counters(ProgramRef::Enforcer(layout.fixture))?;
    let read_before = layout.reader.events.load(Ordering::Relaxed);
    let frame = case_frame(Case::Expired, Shape::Ipv4, REPEAT_MODE_MAC);
    let started = Instant::now();
    bench.enforcers[layout.fixture]
        .program()?
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            repeat: packets,
            ..Default::default()
        })
        .context("test run of the punt burst failed")?;
    // The reader may still be draining what the burst left in the ring buffer.
    thread::sleep(Duration::from_millis(50));
    let elapsed = started.elapsed();
    let read = layout.reader.events.load(Ordering::Relaxed) - read_before;
    layout.reader.stop()?;

    let after = bench.counters(ProgramRef::Enforcer(layout.fixture))?;
    let delta = |counter: u32| after[counter as usize] - before[counter as usize];
    Ok(PuntRate {
        packets: packets as u64,
        elapsed,
        read,
        sent: delta(counters::PUNT_SENT),
        lost: delta(counters::PUNT_LOST),
        rate_limited: delta(counters::PUNT_RATE_LIMITED),
    })
}

/// A thread that takes every event from the `PUNTS` ring buffer and counts them.
struct PuntReader {
    stop: Arc<AtomicBool>,
    events: Arc<AtomicU64>,
    handle: JoinHandle<()>,
}

impl PuntReader {
    fn start(map: aya::maps::Map) -> anyhow::Result<Self> {
        let mut ring = RingBuf::try_from(map).context("map PUNTS is not a ring buffer")?;
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(AtomicU64::new(0));
        let handle = {
            let stop = Arc::clone(&stop);
            let events = Arc::clone(&events);
            thread::spawn(move || {
                let deadline = Instant::now() + MAX_READER_LIFE;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let mut drained = 0;
                    while ring.next().is_some() {
                        drained += 1;
                    }
                    events.fetch_add(drained, Ordering::Relaxed);
                    if drained == 0 {
                        thread::sleep(READER_IDLE);
                    }
                }
            })
        };
        Ok(Self {
            stop,
            events,
            handle,
        })
    }

    fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the punt reader thread panicked"))
    }
}
