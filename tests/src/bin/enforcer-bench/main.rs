//! enforcer-bench: measures the XDP data path against its floor and against nftables, and
//! writes the benchmark page.
//!
//! Every variant runs once per round and the rounds interleave all variants, so a slow moment
//! of the shared machine hits every variant alike. The page reports medians over rounds and
//! differences to a floor measured in the same round.

mod control;
mod fixture;
mod measure;
mod nft;
mod packets;
mod report;
mod signin;
mod storm;
mod variants;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;

use crate::{
    fixture::{EnforcerFixture, Plan, ProbeFixture},
    measure::Bench,
};

#[derive(Parser, Debug)]
#[command(about = "Benchmark the enforcer XDP program against its floor and nftables")]
struct Options {
    /// Smoke run: small repeat counts and map sizes unless given explicitly.
    #[arg(long)]
    quick: bool,
    /// Interleaved rounds; every variant is measured once per round (at least 5).
    #[arg(long)]
    rounds: Option<usize>,
    /// Packets per hot measurement (BPF_PROG_TEST_RUN repeat count).
    #[arg(long)]
    repeat: Option<u32>,
    /// Distinct flows the cold case cycles through (at least 4096 by default).
    #[arg(long)]
    cold_flows: Option<usize>,
    /// Passes through the cold flow set per measurement.
    #[arg(long)]
    cold_passes: Option<usize>,
    /// Session map sizes, comma separated.
    #[arg(long, value_delimiter = ',')]
    sessions: Option<Vec<usize>>,
    /// Resource prefix counts per address family, comma separated.
    #[arg(long, value_delimiter = ',')]
    prefixes: Option<Vec<usize>>,
    /// Allowed packets per punt-storm measurement, each followed by one other packet.
    #[arg(long)]
    storm_passes: Option<usize>,
    /// Packets per live-frames measurement (the nftables comparison).
    #[arg(long)]
    live_repeat: Option<u32>,
    /// Skip the nftables comparison.
    #[arg(long)]
    no_nft: bool,
    /// Devices of the control-plane run; it stores a session for every device and resource.
    #[arg(long)]
    cp_devices: Option<usize>,
    /// Resources of the control-plane run.
    #[arg(long)]
    cp_resources: Option<usize>,
    /// Admin grants measured one at a time, and again over concurrent clients.
    #[arg(long)]
    cp_grants: Option<usize>,
    /// Pairs of the measured batch grant request (at most the devices of the run).
    #[arg(long)]
    cp_batch: Option<usize>,
    /// Skip the control-plane run with the daemon.
    #[arg(long)]
    no_control: bool,
    /// Sign-ins measured from the IdP callback to the first passing packet; 0 skips them.
    #[arg(long)]
    sign_ins: Option<usize>,
    /// Run only the control-plane measurements and print them; writes no page.
    #[arg(long, conflicts_with_all = ["no_control", "page"])]
    control_only: bool,
    /// The `enforcer` binary the control-plane run starts; defaults to `enforcer-under-test`
    /// beside this binary.
    #[arg(long)]
    enforcer: Option<PathBuf>,
    /// Markdown page to write; plots go to a `benchmarks` folder beside it.
    #[arg(long)]
    page: Option<PathBuf>,
    /// Command line shown on the page.
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
}

/// Resolved settings of one run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub repeat: u32,
    pub cold_flows: usize,
    pub cold_passes: usize,
    pub sessions: Vec<usize>,
    pub prefixes: Vec<usize>,
    pub storm_passes: usize,
    pub live_repeat: u32,
    pub nft: bool,
    pub control: Option<control::ControlPlan>,
    pub sign_ins: usize,
    pub enforcer: PathBuf,
    pub command: String,
}

impl Options {
    fn settings(self) -> anyhow::Result<Settings> {
        let quick = self.quick;
        let pick = |full: usize, smoke: usize| if quick { smoke } else { full };
        let mut sessions = self
            .sessions
            .unwrap_or_else(|| vec![1_000, 100_000, pick(1_000_000, 200_000)]);
        let mut prefixes = self
            .prefixes
            .unwrap_or_else(|| vec![10, 1_000, pick(10_000, 2_000)]);
        sessions.sort_unstable();
        prefixes.sort_unstable();
        let rounds = self.rounds.unwrap_or(pick(11, 5));
        anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
        anyhow::ensure!(!sessions.is_empty(), "--sessions needs at least one size");
        anyhow::ensure!(!prefixes.is_empty(), "--prefixes needs at least one count");
        Ok(Settings {
            quick,
            rounds,
            repeat: self.repeat.unwrap_or(pick(2_000_000, 20_000) as u32),
            cold_flows: self.cold_flows.unwrap_or(4096),
            cold_passes: self.cold_passes.unwrap_or(pick(4, 1)),
            sessions,
            prefixes,
            storm_passes: self.storm_passes.unwrap_or(pick(20_000, 500)),
            live_repeat: self.live_repeat.unwrap_or(pick(200_000, 5_000) as u32),
            nft: !self.no_nft,
            control: (!self.no_control).then(|| control::ControlPlan {
                devices: self.cp_devices.unwrap_or(pick(1000, 20)),
                resources: self.cp_resources.unwrap_or(pick(1000, 20)),
                grants: self.cp_grants.unwrap_or(pick(200, 20)),
                batch: self.cp_batch.unwrap_or(pick(1000, 20)),
            }),
            sign_ins: self.sign_ins.unwrap_or(pick(5, 1)),
            enforcer: match self.enforcer {
                Some(path) => path,
                None => default_enforcer()?,
            },
            command: self.command,
        })
    }
}

/// Returns `enforcer-under-test` in the folder of this binary, where cargo builds it.
fn default_enforcer() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("failed to find the path of enforcer-bench")?;
    let folder = exe
        .parent()
        .context("enforcer-bench has no parent folder")?;
    Ok(folder.join("enforcer-under-test"))
}

/// Map-level control-plane figures: the kernel side of grants, reconcile and revocation.
#[derive(Clone, Debug)]
pub struct MapFigures {
    pub sessions: usize,
    pub batched: bool,
    pub fill: Duration,
    pub single_writes: usize,
    pub single_elapsed: Duration,
    /// Whether the first packet after removing its session was denied.
    pub revoke_denies_next_packet: bool,
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let page = options.page.clone();
    let control_only = options.control_only;
    let settings = options.settings()?;
    enforcer_tests::require_root();
    if control_only {
        let plan = settings
            .control
            .context("the control-plane run is switched off")?;
        let figures = control::measure(&settings.enforcer, plan)?;
        println!("{figures:#?}");
        if settings.sign_ins > 0 {
            let sign_ins = signin::measure(&settings.enforcer, settings.sign_ins)?;
            println!("{sign_ins:#?}");
        }
        return Ok(());
    }

    let mut bench = Bench {
        floor: ProbeFixture::floor()?,
        clock: ProbeFixture::clock()?,
        parse: ProbeFixture::parse()?,
        enforcers: Vec::new(),
        namespaces: Vec::new(),
        variants: Vec::new(),
    };
    for &sessions in &settings.sessions {
        for &prefixes in &settings.prefixes {
            let plan = Plan::new(sessions, prefixes)?;
            let fixture = EnforcerFixture::load(plan).with_context(|| {
                format!("failed to set up {sessions} sessions and {prefixes} prefixes")
            })?;
            eprintln!(
                "enforcer-bench: loaded {sessions} sessions and {prefixes} prefixes (sessions written in {:.2} s)",
                fixture.session_fill.as_secs_f64()
            );
            bench.enforcers.push(fixture);
        }
    }

    let layout = variants::add_data_path(&mut bench, &settings)?;
    let default_plan = bench.enforcers[layout.default_enforcer].plan;
    let storm = storm::add_storm(&mut bench, &settings, default_plan)?;
    let nft = if settings.nft {
        Some(nft::add_comparison(
            &mut bench,
            &settings,
            layout.default_enforcer,
        )?)
    } else {
        None
    };

    bench.validate()?;
    if let Some(nft) = &nft {
        nft::check_verdicts(&mut bench, nft)?;
    }
    bench.run_rounds(settings.rounds)?;
    let map_figures = measure_map_figures(&mut bench, &layout)?;
    let storm = match storm {
        Some(storm) => {
            let variants = (storm.calm, storm.storm);
            let rate = storm::measure_punt_rate(&bench, storm, settings.repeat)?;
            Some((variants, rate))
        }
        None => None,
    };

    let control = match settings.control {
        Some(plan) => Some(control::measure(&settings.enforcer, plan)?),
        None => None,
    };
    let sign_ins = if settings.sign_ins > 0 {
        Some(signin::measure(&settings.enforcer, settings.sign_ins)?)
    } else {
        None
    };

    let results = report::Results {
        settings: &settings,
        bench: &bench,
        layout: &layout,
        nft: nft.as_ref(),
        map_figures: &map_figures,
        storm: storm.as_ref(),
        control: control.as_ref(),
        sign_ins: sign_ins.as_ref(),
    };
    print!("{}", report::text(&results));
    if let Some(page) = page {
        report::write_page(&results, &page)?;
        eprintln!("enforcer-bench: wrote {}", page.display());
    }
    Ok(())
}

/// Measures single and batched session writes and checks that a removed session denies the
/// very next packet, on the largest session map.
fn measure_map_figures(bench: &mut Bench, layout: &variants::Layout) -> anyhow::Result<MapFigures> {
    let index = layout.default_enforcer;
    let fixture = &mut bench.enforcers[index];
    let sessions = fixture.plan.sessions;
    let single_writes = sessions.min(100_000);
    let single_elapsed = fixture.rewrite_sessions_one_by_one(single_writes)?;

    fixture.remove_hot_session()?;
    let verdict = variants::run_hot_frame_once(bench, index);
    bench.enforcers[index].restore_hot_session()?;
    let fixture = &bench.enforcers[index];
    Ok(MapFigures {
        sessions,
        batched: fixture.batched,
        fill: fixture.session_fill,
        single_writes,
        single_elapsed,
        revoke_denies_next_packet: verdict? == measure::XDP_DROP,
    })
}
