//! The results as text tables on stdout and as the benchmark page with SVG plots.

use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::Context as _;

use crate::{
    MapFigures, Settings,
    control::ControlFigures,
    measure::{Bench, Summary, Variant},
    nft::NftLayout,
    signin::SignInFigures,
    storm::PuntRate,
    variants::{Case, Layout, Shape, plan_label, si},
};

/// Live session hit over the floor at the largest maps, in nanoseconds.
const MAX_HIT_OVER_FLOOR_NS: f64 = 30.0;
/// Cost at the largest session map over the cost at the smallest.
const MAX_SESSION_SCALING: f64 = 1.2;
/// Enforcer's cost over its floor as a fraction of nftables' cost over its floor.
const MAX_NFT_FRACTION: f64 = 1.0 / 3.0;
/// Time to write the largest session map.
const MAX_RECONCILE_SECONDS: f64 = 2.0;
/// Parallel admin clients of the concurrent grant measurement, as `control` runs them.
const CONCURRENT_GRANT_CLIENTS: usize = 8;
/// Change of the allowed-traffic cost during a punt storm, in percent.
const MAX_STORM_CHANGE_PERCENT: f64 = 10.0;
/// A difference over the floor below this is within the timer's resolution, so ratios of it
/// are not reported.
const MIN_RATIO_DENOMINATOR_NS: f64 = 1.0;

/// Everything a report is made of.
pub struct Results<'a> {
    pub settings: &'a Settings,
    pub bench: &'a Bench,
    pub layout: &'a Layout,
    pub nft: Option<&'a NftLayout>,
    pub map_figures: &'a MapFigures,
    /// (calm variant, storm variant) and the punt burst, when the object can punt.
    pub storm: Option<&'a ((usize, usize), PuntRate)>,
    pub control: Option<&'a ControlFigures>,
    pub sign_ins: Option<&'a SignInFigures>,
}

/// Column names of every variant table.
pub const VARIANT_COLUMNS: [&str; 9] = [
    "group",
    "variant",
    "ns/packet",
    "min",
    "max",
    "over floor",
    "over floor min",
    "over floor max",
    "verdict",
];

/// Column names of the figures table.
pub const FIGURE_COLUMNS: [&str; 4] = ["figure", "target", "measured", "met"];

/// One checked figure.
struct Figure {
    name: String,
    target: String,
    measured: String,
    met: Option<bool>,
}

impl Figure {
    fn met_text(&self) -> &'static str {
        match self.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not measured",
        }
    }
}

fn format_ns(value: f64) -> String {
    format!("{value:.1}")
}

fn variant_row(bench: &Bench, variant: &Variant) -> Vec<String> {
    let summary = Summary::of(&variant.samples);
    let (over_median, over_min, over_max) = match variant.floor {
        Some(floor) => {
            let over = variant.over_floor(&bench.variants[floor]);
            (
                format_ns(over.median),
                format_ns(over.min),
                format_ns(over.max),
            )
        }
        None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
    };
    let verdict = match &variant.invalid {
        Some(problem) => format!("wrong: {problem}"),
        None => "ok".to_owned(),
    };
    vec![
        variant.group.to_owned(),
        variant.name.clone(),
        format_ns(summary.median),
        format_ns(summary.min),
        format_ns(summary.max),
        over_median,
        over_min,
        over_max,
        verdict,
    ]
}

fn markdown_table(columns: &[&str], rows: &[Vec<String>]) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "| {} |", columns.join(" | "));
    let separators: Vec<&str> = columns.iter().map(|_| "---").collect();
    let _ = writeln!(text, "| {} |", separators.join(" | "));
    for row in rows {
        let _ = writeln!(text, "| {} |", row.join(" | "));
    }
    text
}

fn variant_table(bench: &Bench, indices: &[usize]) -> String {
    let rows: Vec<Vec<String>> = indices
        .iter()
        .map(|&index| variant_row(bench, &bench.variants[index]))
        .collect();
    markdown_table(&VARIANT_COLUMNS, &rows)
}

fn over_floor(bench: &Bench, index: usize) -> Option<Summary> {
    let variant = &bench.variants[index];
    let floor = variant.floor?;
    if variant.invalid.is_some() {
        return None;
    }
    Some(variant.over_floor(&bench.variants[floor]))
}

fn figures(results: &Results) -> Vec<Figure> {
    let bench = results.bench;
    let layout = results.layout;
    let mut figures = Vec::new();
    let default_label = plan_label(&bench.enforcers[layout.default_enforcer]);

    let default_scale = layout
        .scale
        .iter()
        .find(|(fixture, _, _)| *fixture == layout.default_enforcer);
    if let Some(&(_, hot, cold)) = default_scale {
        for (index, flows) in [
            (hot, "one flow".to_owned()),
            (cold, format!("{} flows", results.settings.cold_flows)),
        ] {
            let over = over_floor(bench, index);
            figures.push(Figure {
                name: format!("live session hit over floor, {default_label}, {flows}"),
                target: format!("<= {MAX_HIT_OVER_FLOOR_NS} ns"),
                measured: over.map_or("invalid verdict".to_owned(), |over| {
                    format!("{} ns", format_ns(over.median))
                }),
                met: over.map(|over| over.median <= MAX_HIT_OVER_FLOOR_NS),
            });
        }
    }

    figures.extend(session_scaling(results));
    figures.push(nft_figure(results));

    figures.extend(control_figures(results));
    figures.push(storm_figure(results));
    figures
}

/// Cost at the largest over the smallest session map, at the largest prefix count.
fn session_scaling(results: &Results) -> Vec<Figure> {
    let bench = results.bench;
    let layout = results.layout;
    let max_prefixes = bench.enforcers[layout.default_enforcer].plan.prefixes;
    let at_max_prefixes: Vec<&(usize, usize, usize)> = layout
        .scale
        .iter()
        .filter(|(fixture, _, _)| bench.enforcers[*fixture].plan.prefixes == max_prefixes)
        .collect();
    let (Some(smallest), Some(largest)) = (at_max_prefixes.first(), at_max_prefixes.last()) else {
        return Vec::new();
    };
    if smallest.0 == largest.0 {
        return Vec::new();
    }
    let small = si(bench.enforcers[smallest.0].plan.sessions);
    let large = si(bench.enforcers[largest.0].plan.sessions);
    let mut figures = Vec::new();
    for (flows, small_index, large_index) in [
        ("one flow".to_owned(), smallest.1, largest.1),
        (
            format!("{} flows", results.settings.cold_flows),
            smallest.2,
            largest.2,
        ),
    ] {
        let name = format!("cost at {large} over cost at {small} sessions, {flows}");
        let target = format!("<= {MAX_SESSION_SCALING}");
        let (Some(small_over), Some(large_over)) = (
            over_floor(bench, small_index),
            over_floor(bench, large_index),
        ) else {
            figures.push(Figure {
                name,
                target,
                measured: "invalid verdict".to_owned(),
                met: None,
            });
            continue;
        };
        if small_over.median < MIN_RATIO_DENOMINATOR_NS {
            figures.push(Figure {
                name,
                target,
                measured: format!(
                    "{} ns vs {} ns; the smaller cost is within timer resolution",
                    format_ns(large_over.median),
                    format_ns(small_over.median)
                ),
                met: Some(large_over.median - small_over.median < MIN_RATIO_DENOMINATOR_NS),
            });
            continue;
        }
        let ratio = large_over.median / small_over.median;
        figures.push(Figure {
            name,
            target,
            measured: format!(
                "{ratio:.2} ({} ns vs {} ns)",
                format_ns(large_over.median),
                format_ns(small_over.median)
            ),
            met: Some(ratio <= MAX_SESSION_SCALING),
        });
    }
    figures
}

fn control_figures(results: &Results) -> Vec<Figure> {
    let reconcile_target = format!("< {MAX_RECONCILE_SECONDS} s");
    let Some(control) = results.control else {
        let map = results.map_figures;
        return vec![
            Figure {
                name: format!(
                    "write {} sessions into the empty map, the kernel part of reconcile (no daemon run)",
                    si(map.sessions)
                ),
                target: reconcile_target,
                measured: format!("{:.3} s", map.fill.as_secs_f64()),
                met: Some(map.fill.as_secs_f64() < MAX_RECONCILE_SECONDS),
            },
            Figure {
                name:
                    "packet right after removing its session from the map is denied (no daemon run)"
                        .to_owned(),
                target: "denied".to_owned(),
                measured: if map.revoke_denies_next_packet {
                    "denied"
                } else {
                    "passed"
                }
                .to_owned(),
                met: Some(map.revoke_denies_next_packet),
            },
        ];
    };
    let reconcile = control.reconcile.unwrap_or(control.start_to_ready);
    vec![
        Figure {
            name: format!(
                "daemon reconciles {} stored sessions at start",
                si(control.sessions)
            ),
            target: reconcile_target,
            measured: format!("{:.3} s", reconcile.as_secs_f64()),
            met: Some(reconcile.as_secs_f64() < MAX_RECONCILE_SECONDS),
        },
        Figure {
            name: "packets passed after `session revoke` returned".to_owned(),
            target: "0".to_owned(),
            measured: format!(
                "{} (first packet denied {:.1} us after the return)",
                control.passed_after_revoke,
                control.revoke_to_deny.as_secs_f64() * 1e6
            ),
            met: Some(control.passed_after_revoke == 0),
        },
    ]
}

fn control_table(control: &ControlFigures) -> String {
    let rate = |elapsed: std::time::Duration| control.grants as f64 / elapsed.as_secs_f64();
    let with_phases = |elapsed: Option<std::time::Duration>, phases: &Option<String>| {
        let Some(elapsed) = elapsed else {
            return "no log lines".to_owned();
        };
        match phases {
            Some(phases) => format!("{:.3} s (phases: {phases})", elapsed.as_secs_f64()),
            None => format!("{:.3} s", elapsed.as_secs_f64()),
        }
    };
    let reconcile = with_phases(control.reconcile, &control.reconcile_phases);
    let rows = vec![
        vec![
            format!(
                "store {} sessions with the store API, one transaction",
                si(control.sessions)
            ),
            format!("{:.3} s", control.store_write.as_secs_f64()),
        ],
        vec![
            "`enforcer run` from spawn to its first admin reply".to_owned(),
            format!("{:.3} s", control.start_to_ready.as_secs_f64()),
        ],
        vec![
            "reconcile at start, between the attach and reconcile log lines".to_owned(),
            reconcile,
        ],
        vec![
            format!("{} admin grants, one at a time", control.grants),
            format!(
                "{:.3} s, {:.0} per second",
                control.sequential.as_secs_f64(),
                rate(control.sequential)
            ),
        ],
        vec![
            format!(
                "{} admin grants, {CONCURRENT_GRANT_CLIENTS} clients at once",
                control.grants
            ),
            match &control.concurrent {
                Ok(elapsed) => format!(
                    "{:.3} s, {:.0} per second",
                    elapsed.as_secs_f64(),
                    rate(*elapsed)
                ),
                Err(err) => format!("failed: {}", err.replace('|', "/").replace('\n', " ")),
            },
        ],
        vec![
            format!(
                "{} admin grants in one batch request, one store commit",
                control.batch
            ),
            match &control.batched {
                Ok(elapsed) => format!(
                    "{:.3} s, {:.0} per second",
                    elapsed.as_secs_f64(),
                    control.batch as f64 / elapsed.as_secs_f64()
                ),
                Err(err) => format!("failed: {}", err.replace('|', "/").replace('\n', " ")),
            },
        ],
        vec![
            "reconcile at a restart that adopts the pinned program and its full maps".to_owned(),
            with_phases(control.restart_reconcile, &control.restart_phases),
        ],
        vec![
            "`session revoke` of one session, request to response".to_owned(),
            format!("{:.1} ms", control.revoke_call.as_secs_f64() * 1e3),
        ],
        vec![
            "`session revoke` returning to the first denied packet".to_owned(),
            format!(
                "{:.1} us, {} packets passed in between",
                control.revoke_to_deny.as_secs_f64() * 1e6,
                control.passed_after_revoke
            ),
        ],
    ];
    markdown_table(&["daemon", "measured"], &rows)
}

fn storm_figure(results: &Results) -> Figure {
    let name = "allowed-traffic cost change while every other packet is punted".to_owned();
    let target = format!("< {MAX_STORM_CHANGE_PERCENT} %");
    let Some(&((calm, storm), _)) = results.storm else {
        return Figure {
            name,
            target,
            measured: "not measured: the XDP object has no PUNTS ring buffer".to_owned(),
            met: None,
        };
    };
    let (Some(calm), Some(storm)) = (cost(results.bench, calm), cost(results.bench, storm)) else {
        return Figure {
            name,
            target,
            measured: "invalid verdict".to_owned(),
            met: None,
        };
    };
    if calm < MIN_RATIO_DENOMINATOR_NS {
        return Figure {
            name,
            target,
            measured: format!(
                "allowed traffic costs {} ns over the floor, within noise",
                format_ns(calm)
            ),
            met: None,
        };
    }
    let change = (storm - calm) / calm * 100.0;
    Figure {
        name,
        target,
        measured: format!(
            "{change:+.1} % ({} ns vs {} ns)",
            format_ns(storm),
            format_ns(calm)
        ),
        met: Some(change.abs() < MAX_STORM_CHANGE_PERCENT),
    }
}

fn punt_table(rate: &PuntRate) -> String {
    let seconds = rate.elapsed.as_secs_f64();
    let rows = vec![vec![
        si(rate.packets as usize),
        format!("{:.3} s", seconds),
        format!("{:.0}", rate.read as f64 / seconds),
        rate.sent.to_string(),
        rate.read.to_string(),
        rate.lost.to_string(),
        rate.rate_limited.to_string(),
    ]];
    markdown_table(
        &[
            "expired-session packets",
            "wall time",
            "punt events read per second",
            "punt_sent",
            "read by user space",
            "punt_lost",
            "punt_rate_limited",
        ],
        &rows,
    )
}

fn nft_figure(results: &Results) -> Figure {
    let name = "enforcer over floor / nftables over floor, live session hit".to_owned();
    let target = "<= 0.33".to_owned();
    let Some(nft) = results.nft else {
        return Figure {
            name,
            target,
            measured: "not measured: --no-nft".to_owned(),
            met: None,
        };
    };
    let Some(&(_, _, enforcer, nftables)) = nft.cases.first() else {
        return Figure {
            name,
            target,
            measured: "no comparison variant".to_owned(),
            met: None,
        };
    };
    let (Some(enforcer_over), Some(nft_over)) = (
        over_floor(results.bench, enforcer),
        over_floor(results.bench, nftables),
    ) else {
        return Figure {
            name,
            target,
            measured: "invalid verdict".to_owned(),
            met: None,
        };
    };
    if nft_over.median < MIN_RATIO_DENOMINATOR_NS {
        return Figure {
            name,
            target,
            measured: format!(
                "nftables costs {} ns over its floor, within noise",
                format_ns(nft_over.median)
            ),
            met: None,
        };
    }
    let ratio = enforcer_over.median / nft_over.median;
    Figure {
        name,
        target,
        measured: format!(
            "{ratio:.2} ({} ns vs {} ns)",
            format_ns(enforcer_over.median),
            format_ns(nft_over.median)
        ),
        met: Some(ratio <= MAX_NFT_FRACTION),
    }
}

fn figures_table(figures: &[Figure]) -> String {
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|figure| {
            vec![
                figure.name.clone(),
                figure.target.clone(),
                figure.measured.clone(),
                figure.met_text().to_owned(),
            ]
        })
        .collect();
    markdown_table(&FIGURE_COLUMNS, &rows)
}

fn map_table(map: &MapFigures) -> String {
    let single_rate = map.single_writes as f64 / map.single_elapsed.as_secs_f64();
    let batched_rate = map.sessions as f64 / map.fill.as_secs_f64();
    let rows = vec![
        vec![
            format!(
                "write {} existing sessions, one BPF_MAP_UPDATE_ELEM each",
                si(map.single_writes)
            ),
            format!("{:.3} s", map.single_elapsed.as_secs_f64()),
            format!("{single_rate:.0} per second"),
        ],
        vec![
            format!(
                "write {} sessions into the empty map, {}",
                si(map.sessions),
                if map.batched {
                    "batches of 65536"
                } else {
                    "one call each"
                }
            ),
            format!("{:.3} s", map.fill.as_secs_f64()),
            format!("{batched_rate:.0} per second"),
        ],
    ];
    markdown_table(&["session map writes", "time", "rate"], &rows)
}

/// Returns the text printed on stdout: every variant, then the figures and map writes.
pub fn text(results: &Results) -> String {
    let all: Vec<usize> = (0..results.bench.variants.len()).collect();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\n## Variants ({} rounds, ns per packet from BPF_PROG_TEST_RUN)\n",
        results.settings.rounds
    );
    text.push_str(&variant_table(results.bench, &all));
    let _ = writeln!(text, "\n## Figures\n");
    text.push_str(&figures_table(&figures(results)));
    let _ = writeln!(text, "\n## Session map writes\n");
    text.push_str(&map_table(results.map_figures));
    if let Some(control) = results.control {
        let _ = writeln!(text, "\n## Daemon\n");
        text.push_str(&control_table(control));
    }
    if let Some((_, rate)) = results.storm {
        let _ = writeln!(text, "\n## Punt burst\n");
        text.push_str(&punt_table(rate));
    }
    if let Some(sign_ins) = results.sign_ins {
        let _ = writeln!(text, "\n## Sign-in\n");
        text.push_str(&sign_in_table(sign_ins));
    }
    text
}

fn sign_in_table(sign_ins: &SignInFigures) -> String {
    let millis = |value: Option<std::time::Duration>| {
        value.map_or("-".to_owned(), |value| {
            format!("{:.1} ms", value.as_secs_f64() * 1e3)
        })
    };
    let rows = vec![vec![
        sign_ins.samples.len().to_string(),
        millis(sign_ins.median()),
        millis(sign_ins.samples.iter().min().copied()),
        millis(sign_ins.samples.iter().max().copied()),
    ]];
    markdown_table(&["sign-ins", "median", "min", "max"], &rows)
}

fn sign_in_section(sign_ins: &SignInFigures) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "\n## Sign-in to first passing packet\n");
    let _ = writeln!(
        text,
        "A client and a gateway namespace are joined by a veth pair. The test identity provider \
         (`oidc-provider` 8.8.1, Node.js) and the daemon's portal listen on the gateway's \
         address, and headless chromium signs alice in from the client namespace. The time \
         runs from the daemon's debug log line at the arrival of the callback request \
         (microsecond timestamps) to the wall time of the first pass of the device's TCP SYN, \
         which a thread runs through the daemon's pinned program with `BPF_PROG_TEST_RUN` \
         without pause. It covers the code exchange and ID token check with the provider on \
         loopback, the store commit and the kernel write. The session is revoked between \
         sign-ins.\n"
    );
    text.push_str(&sign_in_table(sign_ins));
    text
}

/// Writes the benchmark page to `page` and its plots to a `benchmarks` folder beside it.
pub fn write_page(results: &Results, page: &Path) -> anyhow::Result<()> {
    let folder = page
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("benchmarks");
    fs::create_dir_all(&folder)
        .with_context(|| format!("failed to create {}", folder.display()))?;
    let bench = results.bench;
    let layout = results.layout;

    let case_plot: Vec<usize> = std::iter::once(layout.clock)
        .chain(layout.parse.iter().copied())
        .chain(layout.cases.iter().map(|(_, _, index)| *index))
        .collect();
    let scale_plot: Vec<usize> = layout
        .scale
        .iter()
        .flat_map(|(_, hot, cold)| [*hot, *cold])
        .collect();
    let nft_plot: Vec<usize> = results
        .nft
        .map(|nft| {
            nft.cases
                .iter()
                .flat_map(|(_, _, enforcer, nftables)| [*enforcer, *nftables])
                .collect()
        })
        .unwrap_or_default();
    let plots = [
        (
            "cases.svg",
            "Verdict cases over the floor, one flow",
            &case_plot,
        ),
        (
            "scale.svg",
            "Live session hit over the floor by map size",
            &scale_plot,
        ),
        (
            "nftables.svg",
            "Over the stack floor, live frames",
            &nft_plot,
        ),
    ];
    for (file, title, indices) in plots {
        if indices.is_empty() {
            continue;
        }
        let path = folder.join(file);
        fs::write(&path, bar_chart(title, &bars(bench, indices)))
            .with_context(|| format!("failed to write {}", path.display()))?;
    }

    let floors = layout.floors.iter().map(|(_, index)| *index);
    let case_table: Vec<usize> = floors.chain(case_plot.iter().copied()).collect();
    let scale_table: Vec<usize> = std::iter::once(layout.floor_cold)
        .chain(scale_plot.iter().copied())
        .collect();

    let mut text = String::new();
    page_header(&mut text, results);
    let figures = figures(results);
    let _ = writeln!(text, "## Figures\n");
    text.push_str(&figures_table(&figures));
    text.push_str(&unmet_figures(results, &figures));
    text.push_str(&page_method(results));
    let _ = writeln!(text, "\n## Data path: verdict cases\n");
    let _ = writeln!(
        text,
        "![verdict cases over the floor](benchmarks/cases.svg)\n"
    );
    text.push_str(&variant_table(bench, &case_table));
    text.push_str(&breakdown(results));
    let _ = writeln!(text, "\n## Data path: map sizes, hot and cold\n");
    let _ = writeln!(
        text,
        "![live session hit by map size](benchmarks/scale.svg)\n"
    );
    text.push_str(&variant_table(bench, &scale_table));
    if let Some(nft) = results.nft {
        text.push_str(&nft_section(bench, nft, &nft_plot));
    }
    if let Some(&((calm, storm), rate)) = results.storm {
        text.push_str(&storm_section(bench, calm, storm, &rate));
    }
    let _ = writeln!(text, "\n## Control plane\n");
    if let Some(control) = results.control {
        let _ = writeln!(
            text,
            "`enforcer run` runs in a namespace created for the run, attached in SKB mode to a \
             veth, with its own redb store, admin socket and bpffs pin folder. Its store holds a \
             session for each of {} (device, resource) pairs, written beforehand with the store \
             API. Grants go through the admin socket, each measurement to its own resource \
             without sessions: one request per grant, then {CONCURRENT_GRANT_CLIENTS} clients \
             at once (the daemon applies their requests one after another), then one \
             `session_grant_batch` request. After the revocation returns, \
             the probe frame runs through the daemon's pinned program with \
             `BPF_PROG_TEST_RUN` until it is denied. Then the daemon stops with SIGTERM, which \
             leaves its program and maps pinned, and starts again on the same store, so the \
             second reconcile reads back a full session map. The reconcile phases come from \
             the daemon's debug log line: reading the store and judging each session against \
             the policy, reading the kernel maps back, writing the kernel maps, and removing \
             stale entries with the store purge.\n",
            si(control.sessions)
        );
        text.push_str(&control_table(control));
        let _ = writeln!(text, "\nThe kernel side alone, on the data-path fixture:\n");
    }
    text.push_str(&map_table(results.map_figures));
    text.push_str(MAP_NOTE);
    if let Some(sign_ins) = results.sign_ins {
        text.push_str(&sign_in_section(sign_ins));
    }
    text.push_str(PAGE_GAPS);

    fs::write(page, text).with_context(|| format!("failed to write {}", page.display()))?;
    Ok(())
}

fn bars(bench: &Bench, indices: &[usize]) -> Vec<Bar> {
    indices
        .iter()
        .filter_map(|&index| {
            let over = over_floor(bench, index)?;
            Some(Bar {
                label: bench.variants[index].name.clone(),
                value: over.median,
                low: over.min,
                high: over.max,
            })
        })
        .collect()
}

fn nft_section(bench: &Bench, nft: &NftLayout, plotted: &[usize]) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "\n## Versus nftables\n");
    let _ = writeln!(
        text,
        "The nftables set holds the same {} sessions as (device address . resource address . port) \
         elements with a 24-hour timeout each, and an interval set holds the {} IPv4 resource \
         prefixes. Loading them with `nft -f` took {:.1} s. The rule is \
         `ip daddr @protected ip saddr . ip daddr . tcp dport != @sessions drop` at prerouting, \
         priority raw. Before measuring, a counter in a later chain checks that the rule passes \
         the hit frame and drops the other.\n",
        si(nft.elements),
        si(nft.prefixes),
        nft.load_time.as_secs_f64()
    );
    let _ = writeln!(text, "![over the stack floor](benchmarks/nftables.svg)\n");
    let indices: Vec<usize> = std::iter::once(nft.stack_floor)
        .chain(plotted.iter().copied())
        .collect();
    text.push_str(&variant_table(bench, &indices));
    let _ = writeln!(
        text,
        "\nThe enforcer's denied frame can cost less than the stack floor: the floor program \
         passes its frame into the stack, while the enforcer drops the denied frame in XDP, so \
         that frame never enters the stack at all."
    );
    text
}

fn storm_section(bench: &Bench, calm: usize, storm: usize, rate: &PuntRate) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "\n## Punt storm\n");
    let _ = writeln!(
        text,
        "The storm fixture has the default map sizes and a punt interval of 1 ns, so every \
         denied packet makes a punt instead of being rate-limited per pair, the heaviest punt \
         load the program produces. A thread drains the `PUNTS` ring buffer throughout, as the \
         reauth responder does. Each measurement alternates an allowed frame with a second \
         frame, one test run with repeat 1 each, and times only the allowed frame. Its floor is \
         the floor program run the same way. The figure compares the storm with the same two \
         frames through a second fixture that keeps the default punt interval. There the \
         expired frame takes the same path, but its punt is rate-limited, so the two differ \
         only in the ring buffer write and the reader's work. The row with a hit as the second \
         frame is a reference only: its second frame skips the deny path, so its cache \
         footprint differs from both.\n"
    );
    let floor = bench.variants[calm].floor;
    // `storm::add_storm` pushes the reference variant right before `calm`, and `storm` right
    // after it.
    let indices: Vec<usize> = floor
        .into_iter()
        .chain(calm.saturating_sub(1)..=storm)
        .collect();
    text.push_str(&variant_table(bench, &indices));
    if let (Some(reference), Some(calm_cost)) = (cost(bench, calm - 1), cost(bench, calm)) {
        let _ = writeln!(
            text,
            "\nWith the same program and no punts, the hit after another hit costs {} ns and \
             the hit after a rate-limited expired frame {} ns over the floor. The second frame \
             changes the timed hit by {} ns without any punt, so comparing the storm with the \
             hit-after-hit row measures the second frame's path rather than the punts.",
            format_ns(reference),
            format_ns(calm_cost),
            format_ns(calm_cost - reference)
        );
    }
    let _ = writeln!(
        text,
        "\nThen one test run repeats the expired-session frame; the reader's count over the wall \
         time is the rate of punt events reaching user space, and `punt_lost` counts the \
         events the full ring buffer rejected:\n"
    );
    text.push_str(&punt_table(rate));
    text
}

/// Median over-floor cost of variant `index`, when its verdict was right.
fn cost(bench: &Bench, index: usize) -> Option<f64> {
    over_floor(bench, index).map(|over| over.median)
}

/// Splits the IPv4 hit cost into parts measured by cases that differ from the hit by whole
/// steps of the program, and by the probes that run one step alone.
fn breakdown(results: &Results) -> String {
    let bench = results.bench;
    let find = |case: Case| {
        results
            .layout
            .cases
            .iter()
            .find(|(candidate, shape, _)| *candidate == case && *shape == Shape::Ipv4)
            .and_then(|(_, _, index)| cost(bench, *index))
    };
    let (Some(unprotected), Some(hit)) = (find(Case::Unprotected), find(Case::Hit)) else {
        return String::new();
    };
    let clock = cost(bench, results.layout.clock);
    let parse = results
        .layout
        .parse
        .first()
        .and_then(|&index| cost(bench, index));
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nWhere the IPv4 hit's {} ns over the floor go (differences of medians, so \
         estimates). An unprotected destination stops after the L2/L3 parse and the prefix \
         lookup; the hit goes on through the transport parse, the device lookup, the rule \
         match, the session lookup and the clock read. The unknown-device and expired cases \
         are left out here, because they also punt and may build a reply, so they do not stop \
         earlier than the hit:\n",
        format_ns(hit)
    );
    let _ = writeln!(
        text,
        "- L2/L3 parse and the prefix lookup, the unprotected destination: {} ns",
        format_ns(unprotected)
    );
    if let Some(parse) = parse {
        let _ = writeln!(
            text,
            "  (the enforcer's whole parser alone, the `bench_parse` probe, costs {} ns)",
            format_ns(parse)
        );
    }
    let clock_text = clock.map_or(String::new(), |clock| {
        format!(
            "; the `bpf_ktime_get_boot_ns()` call alone costs {} ns (the `bench_clock` probe)",
            format_ns(clock)
        )
    });
    let _ = writeln!(
        text,
        "- transport parse, device and session lookups, rule match and clock read, hit minus \
         unprotected: {} ns{clock_text}",
        format_ns(hit - unprotected)
    );
    text
}

/// Explains every figure that was not met, with its measured value and what limits it.
fn unmet_figures(results: &Results, figures: &[Figure]) -> String {
    let unmet: Vec<&Figure> = figures.iter().filter(|f| f.met == Some(false)).collect();
    if unmet.is_empty() {
        return String::new();
    }
    let caches = cache_sizes();
    let table_bytes = table_bytes(
        results.bench.enforcers[results.layout.default_enforcer]
            .plan
            .sessions,
    );
    let mut text = String::from("\nFigures not met, and what limits them:\n\n");
    for figure in unmet {
        let limit = if figure.name.starts_with("live session hit")
            && figure.name.contains("one flow")
        {
            "The hit path makes three map lookups (prefix, device, session) and one clock read per packet. The breakdown under the verdict cases splits the cost into the parse with the prefix lookup and the rest.".to_owned()
        } else if figure.name.starts_with("live session hit") {
            format!(
                "Every cold packet follows a test-run syscall, and its device, prefix and session lookups are dependent cache misses. {}.",
                table_against_caches(table_bytes, &caches)
            )
        } else if figure.name.starts_with("cost at") {
            format!(
                "{}. With one flow the entry stays cached and the sizes cost the same.",
                table_against_caches(table_bytes, &caches)
            )
        } else if figure.name.starts_with("enforcer over floor") {
            "The enforcer makes its own lookups, above, against one interval-set and one hash-set lookup of nftables.".to_owned()
        } else if figure.name.starts_with("allowed-traffic cost change") {
            "The two variants differ only in whether the second frame's punt is written to the ring buffer and drained by the reader thread, so the change is what that costs the allowed frame on this 2-CPU machine. The punt storm section has the rows.".to_owned()
        } else if figure.name.starts_with("daemon reconciles") {
            "The reconcile phases in the control-plane table show where the time goes.".to_owned()
        } else {
            "See the tables below.".to_owned()
        };
        let _ = writeln!(
            text,
            "- {}: measured {}. {limit}",
            figure.name, figure.measured
        );
    }
    text
}

/// Estimated memory of a preallocated BPF hash map of `sessions` 8-byte keys and values.
fn table_bytes(sessions: usize) -> u64 {
    (sessions * 64 + sessions.next_power_of_two() * 16) as u64
}

fn format_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// Says how the session table compares with CPU 0's caches: whether it outgrows the last
/// level, or only the levels below it.
fn table_against_caches(table: u64, caches: &[(u32, u64)]) -> String {
    let listed = if caches.is_empty() {
        "unknown cache sizes".to_owned()
    } else {
        let sizes: Vec<String> = caches
            .iter()
            .map(|(level, bytes)| format!("L{level} {}", format_bytes(*bytes)))
            .collect();
        format!("CPU 0's caches of {}", sizes.join(", "))
    };
    let size = format!(
        "The session table is about {} at this size (an estimate: 64 bytes per element plus 16 per bucket), against {listed}",
        format_bytes(table)
    );
    match caches.last() {
        Some((level, last)) if table <= *last => format!(
            "{size}. It fits the L{level} that this virtual CPU reports, which the host shares with other guests. It does not fit the levels below, so each cold session lookup misses them and most likely the TLB too"
        ),
        Some(_) => format!("{size}, so cold session lookups go to memory"),
        None => size,
    }
}

/// Levels and sizes in bytes of CPU 0's unified caches, smallest level first.
fn cache_sizes() -> Vec<(u32, u64)> {
    let mut sizes = Vec::new();
    for index in 0..8 {
        let base = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
        let read = |name: &str| fs::read_to_string(format!("{base}/{name}")).ok();
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
        else {
            continue;
        };
        let (Ok(level), Some(kib)) = (
            level.trim().parse::<u32>(),
            size.trim()
                .strip_suffix('K')
                .and_then(|kib| kib.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if kind.trim() == "Unified" {
            sizes.push((level, kib << 10));
        }
    }
    sizes.sort_unstable();
    sizes
}

fn page_header(text: &mut String, results: &Results) {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |count| count.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());

    let _ = writeln!(text, "# Benchmarks\n");
    let _ = writeln!(
        text,
        "This page is written by `{}`; rerun it to refresh every number and plot.\n",
        results.settings.command
    );
    let _ = writeln!(text, "| | |\n| --- | --- |");
    let _ = writeln!(text, "| command | `{}` |", results.settings.command);
    let _ = writeln!(text, "| date | {date} |");
    let _ = writeln!(text, "| CPUs (`nproc`) | {cpus} |");
    let _ = writeln!(text, "| CPU model | {cpu} |");
    let _ = writeln!(text, "| kernel (`uname -r`) | {kernel} |");
    let _ = writeln!(
        text,
        "| rounds | {} interleaved, {} packets per hot measurement, {} passes over {} flows per cold measurement |\n",
        results.settings.rounds,
        results.settings.repeat,
        results.settings.cold_passes,
        results.settings.cold_flows
    );
}

fn page_method(results: &Results) -> String {
    format!(
        "
## Method

All programs are measured with `BPF_PROG_TEST_RUN`, whose duration is the kernel's own mean time
per run in nanoseconds: it times only the program runs and stops its timer while the thread is
rescheduled. The machine is shared, so every round measures every variant once, the rounds
interleave all variants with a rotating start, and the tables give the median and the range
over rounds. \"over floor\" is the median of the per-round differences between a variant and
its floor measured in the same round, so slow moments of the machine cancel out.

- **floor**: `bench_floor`, an XDP program that returns `XDP_PASS` without reading the frame.
- **one flow (hot)**: one frame repeated {repeat} times by the kernel, so maps and frame stay in
  cache.
- **{flows} flows (cold)**: `BPF_PROG_TEST_RUN` repeats a single frame, so the cold case issues
  one run with repeat 1 per frame and cycles {passes} times through {flows} frames of different
  TCP flows spread over distinct (device, resource) sessions. The kernel copies each frame into
  a fresh buffer, as a NIC would, and consecutive lookups hit different hash buckets. Its floor
  is the floor program run the same way, which also carries the per-run timer cost. With fewer
  sessions than flows, the flows share the sessions.
- Map sizes are set at load time: `SESSIONS` holds exactly the stated number of sessions, each
  LPM trie the stated number of prefixes. Sessions are written with `BPF_MAP_UPDATE_BATCH`.
  Probe frames use the documentation ranges (devices 192.0.2.0/24 and 203.0.113.0/24, resources
  198.51.100.1 to .9, IPv6 in 2001:db8::/32); filler entries that only size the maps use the
  benchmarking range 198.18.0.0/15 and never appear in a frame.
- **Versus nftables**: frames are injected with `BPF_F_TEST_XDP_LIVE_FRAMES` on a veth in a
  namespace created for the run, {live} frames per measurement. The floor program passes them
  into the stack, where the nftables rule filters them; the enforcer filters them in XDP and
  passes allowed frames into a namespace without rules. Both are compared with the floor
  program in the namespace without rules. Passed frames end at a blackhole route.
",
        repeat = results.settings.repeat,
        flows = results.settings.cold_flows,
        passes = results.settings.cold_passes,
        live = results.settings.live_repeat,
    )
}

const MAP_NOTE: &str = "
The map-write rates are the kernel side of a grant and of reconcile: map writes only, without
the store, the policy or the admin API.
";

const PAGE_GAPS: &str = "
## Not measured

- Line rate: no line-rate figure was measured here. This kernel has no pktgen
  (CONFIG_NET_PKTGEN is off and modules are disabled), so every packet figure above comes from
  `BPF_PROG_TEST_RUN`. `scripts/pktgen.sh` drives Linux pktgen from a sender host and reports
  Mpps per verdict from the enforcer's counters. Here only its argument checks and its stop on
  a missing `/proc/net/pktgen` were run (`tests/tests/pktgen_script.rs`).
";

/// One bar of a chart: the median with its range.
struct Bar {
    label: String,
    value: f64,
    low: f64,
    high: f64,
}

/// Draws a horizontal bar chart of `bars` in nanoseconds, with a whisker for each range.
fn bar_chart(title: &str, bars: &[Bar]) -> String {
    const WIDTH: f64 = 960.0;
    const LABEL_WIDTH: f64 = 470.0;
    const ROW: f64 = 24.0;
    const TOP: f64 = 48.0;
    let plot_width = WIDTH - LABEL_WIDTH - 40.0;
    let height = TOP + ROW * bars.len() as f64 + 40.0;
    let min = bars.iter().map(|bar| bar.low).fold(0.0, f64::min);
    let max = bars.iter().map(|bar| bar.high).fold(1.0, f64::max);
    let x = |value: f64| LABEL_WIDTH + (value - min) / (max - min) * plot_width;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let zero = x(0.0);
    let _ = writeln!(
        svg,
        r##"<line x1="{zero:.1}" y1="{}" x2="{zero:.1}" y2="{:.1}" stroke="#444"/>"##,
        TOP - 6.0,
        height - 34.0
    );
    for (row, bar) in bars.iter().enumerate() {
        let y = TOP + ROW * row as f64;
        let (start, end) = (x(bar.value.min(0.0)), x(bar.value.max(0.0)));
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LABEL_WIDTH - 8.0,
            y + 15.0,
            escape(&bar.label)
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{start:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#4a7ab5"/>"##,
            y + 4.0,
            (end - start).max(1.0),
            ROW - 8.0
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#222"/>"##,
            x(bar.low),
            y + 12.0,
            x(bar.high),
            y + 12.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{:.1}</text>"#,
            end.max(x(bar.high)) + 4.0,
            y + 15.0,
            bar.value
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{LABEL_WIDTH}" y="{:.1}">ns per packet over the floor; bar: median, line: range over rounds</text>"#,
        height - 12.0
    );
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
