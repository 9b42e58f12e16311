//! The data-path variants: the floor, every verdict case on IPv4, IPv6 and VLAN-tagged IPv4,
//! and the scale sweep over session and prefix counts, hot and cold.

use std::net::IpAddr;

use anyhow::Context as _;
use aya::programs::{TestRun as _, TestRunOptions};
use common::counters;

use crate::{
    Settings,
    fixture::{self, EnforcerFixture, RESOURCE_PORT},
    measure::{Bench, Expect, Mode, ProgramRef, Variant, XDP_DROP, XDP_PASS},
    packets::{Framing, TcpSyn},
};

/// Destination MAC of frames that never enter a network stack.
pub const REPEAT_MODE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// Packet shapes measured for every verdict case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Ipv4,
    Ipv6,
    VlanIpv4,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Ipv4, Shape::Ipv6, Shape::VlanIpv4];

    pub fn label(self) -> &'static str {
        match self {
            Shape::Ipv4 => "IPv4 TCP",
            Shape::Ipv6 => "IPv6 TCP",
            Shape::VlanIpv4 => "802.1Q IPv4 TCP",
        }
    }

    fn framing(self) -> Framing {
        match self {
            Shape::VlanIpv4 => Framing::Vlan,
            _ => Framing::Untagged,
        }
    }

    fn is_v6(self) -> bool {
        self == Shape::Ipv6
    }
}

/// Verdict cases of the full enforcer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    Hit,
    Expired,
    Unprotected,
    UnknownDevice,
}

impl Case {
    pub const ALL: [Case; 4] = [
        Case::Hit,
        Case::Expired,
        Case::Unprotected,
        Case::UnknownDevice,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Case::Hit => "live session hit",
            Case::Expired => "expired session",
            Case::Unprotected => "unprotected destination",
            Case::UnknownDevice => "unknown device",
        }
    }

    fn expect(self) -> Expect {
        let (action, counter) = match self {
            Case::Hit => (XDP_PASS, counters::PASS_SESSION),
            Case::Expired => (XDP_DROP, counters::DENY_EXPIRED),
            Case::Unprotected => (XDP_PASS, counters::PASS_UNPROTECTED),
            Case::UnknownDevice => (XDP_DROP, counters::DENY_UNKNOWN_DEVICE),
        };
        Expect {
            action,
            counter: Some(counter),
        }
    }
}

/// Builds the probe frame of `case` in `shape`, addressed to `dst_mac`.
pub fn case_frame(case: Case, shape: Shape, dst_mac: [u8; 6]) -> Vec<u8> {
    let v6 = shape.is_v6();
    let hot_device = fixture::hot_device(v6);
    let (src, dst): (IpAddr, IpAddr) = match (case, v6) {
        (Case::Hit, false) => (hot_device, fixture::probe_resource_v4(0).into()),
        (Case::Hit, true) => (hot_device, fixture::LIVE_V6.into()),
        (Case::Expired, false) => (hot_device, fixture::EXPIRED_V4.into()),
        (Case::Expired, true) => (hot_device, fixture::EXPIRED_V6.into()),
        (Case::Unprotected, false) => (hot_device, fixture::UNPROTECTED_V4.into()),
        (Case::Unprotected, true) => (hot_device, fixture::UNPROTECTED_V6.into()),
        (Case::UnknownDevice, false) => (
            fixture::UNKNOWN_V4.into(),
            fixture::probe_resource_v4(0).into(),
        ),
        (Case::UnknownDevice, true) => (fixture::UNKNOWN_V6.into(), fixture::LIVE_V6.into()),
    };
    TcpSyn {
        src,
        dst,
        src_port: 40000,
        dst_port: RESOURCE_PORT,
        framing: shape.framing(),
        dst_mac,
    }
    .frame()
}

/// Builds the cold set of `plan`: `flows` IPv4 frames, each of a different TCP flow, cycling through
/// the plan's live probe sessions.
fn cold_frames(plan: &fixture::Plan, flows: usize) -> Vec<Vec<u8>> {
    (0..flows)
        .map(|index| {
            let (device, resource) = plan.cold_pair(index);
            TcpSyn {
                src: fixture::probe_device_v4(device).into(),
                dst: fixture::probe_resource_v4(resource).into(),
                src_port: 1024 + (index % 60000) as u16,
                dst_port: RESOURCE_PORT,
                framing: Framing::Untagged,
                dst_mac: REPEAT_MODE_MAC,
            }
            .frame()
        })
        .collect()
}

/// Indices of the variants the report arranges into tables.
pub struct Layout {
    /// Enforcer fixture with the most sessions and prefixes.
    pub default_enforcer: usize,
    /// Floor variant per shape, hot.
    pub floors: Vec<(Shape, usize)>,
    pub floor_cold: usize,
    /// The clock probe, hot, over the IPv4 floor.
    pub clock: usize,
    /// The parser alone per shape, hot.
    pub parse: Vec<usize>,
    /// (case, shape, variant) at the default fixture, hot.
    pub cases: Vec<(Case, Shape, usize)>,
    /// (fixture, hot variant, cold variant) of the live session hit on IPv4.
    pub scale: Vec<(usize, usize, usize)>,
}

/// Adds the floor, the verdict cases and the scale sweep to `bench`.
pub fn add_data_path(bench: &mut Bench, settings: &Settings) -> anyhow::Result<Layout> {
    let default_enforcer = (0..bench.enforcers.len())
        .max_by_key(|&index| {
            let plan = bench.enforcers[index].plan;
            (plan.sessions, plan.prefixes)
        })
        .context("no enforcer fixture was loaded")?;
    let hot = Mode::Hot {
        repeat: settings.repeat,
    };
    let cold = Mode::Cold {
        passes: settings.cold_passes,
    };

    let mut floors = Vec::new();
    for shape in Shape::ALL {
        let index = bench.push(Variant {
            group: "floor",
            name: format!("floor, {}", shape.label()),
            program: ProgramRef::Floor,
            frames: vec![case_frame(Case::Hit, shape, REPEAT_MODE_MAC)],
            mode: hot,
            live: None,
            expect: Expect {
                action: XDP_PASS,
                counter: None,
            },
            floor: None,
            samples: Vec::new(),
            invalid: None,
        });
        floors.push((shape, index));
    }
    let default_plan = bench.enforcers[default_enforcer].plan;
    let floor_cold = bench.push(Variant {
        group: "floor",
        name: format!("floor, IPv4 TCP, {} flows", settings.cold_flows),
        program: ProgramRef::Floor,
        frames: cold_frames(&default_plan, settings.cold_flows),
        mode: cold,
        live: None,
        expect: Expect {
            action: XDP_PASS,
            counter: None,
        },
        floor: None,
        samples: Vec::new(),
        invalid: None,
    });
    let floor_of = |shape: Shape| {
        floors
            .iter()
            .find(|(candidate, _)| *candidate == shape)
            .map(|(_, index)| *index)
    };

    let clock = bench.push(Variant {
        group: "probe",
        name: "clock read only (bench_clock), IPv4 TCP".to_owned(),
        program: ProgramRef::Clock,
        frames: vec![case_frame(Case::Hit, Shape::Ipv4, REPEAT_MODE_MAC)],
        mode: hot,
        live: None,
        expect: Expect {
            action: XDP_PASS,
            counter: None,
        },
        floor: floor_of(Shape::Ipv4),
        samples: Vec::new(),
        invalid: None,
    });

    let mut parse = Vec::new();
    for shape in Shape::ALL {
        parse.push(bench.push(Variant {
            group: "parse",
            name: format!("parse only (bench_parse), {}", shape.label()),
            program: ProgramRef::Parse,
            frames: vec![case_frame(Case::Hit, shape, REPEAT_MODE_MAC)],
            mode: hot,
            live: None,
            expect: Expect {
                action: XDP_PASS,
                counter: None,
            },
            floor: floor_of(shape),
            samples: Vec::new(),
            invalid: None,
        }));
    }

    let mut scale = Vec::new();
    for fixture_index in 0..bench.enforcers.len() {
        let plan = bench.enforcers[fixture_index].plan;
        let label = plan_label(&bench.enforcers[fixture_index]);
        let hot_index = bench.push(Variant {
            group: "scale",
            name: format!("hit, IPv4 TCP, one flow, {label}"),
            program: ProgramRef::Enforcer(fixture_index),
            frames: vec![case_frame(Case::Hit, Shape::Ipv4, REPEAT_MODE_MAC)],
            mode: hot,
            live: None,
            expect: Case::Hit.expect(),
            floor: floor_of(Shape::Ipv4),
            samples: Vec::new(),
            invalid: None,
        });
        let cold_index = bench.push(Variant {
            group: "scale",
            name: format!("hit, IPv4 TCP, {} flows, {label}", settings.cold_flows),
            program: ProgramRef::Enforcer(fixture_index),
            frames: cold_frames(&plan, settings.cold_flows),
            mode: cold,
            live: None,
            expect: Case::Hit.expect(),
            floor: Some(floor_cold),
            samples: Vec::new(),
            invalid: None,
        });
        scale.push((fixture_index, hot_index, cold_index));
    }

    let default_label = plan_label(&bench.enforcers[default_enforcer]);
    let mut cases = Vec::new();
    for shape in Shape::ALL {
        for case in Case::ALL {
            if case == Case::Hit && shape == Shape::Ipv4 {
                let (_, hot_index, _) = scale
                    .iter()
                    .find(|(fixture_index, _, _)| *fixture_index == default_enforcer)
                    .copied()
                    .context("the default fixture has no scale variant")?;
                cases.push((case, shape, hot_index));
                continue;
            }
            let index = bench.push(Variant {
                group: "cases",
                name: format!("{}, {}, {default_label}", case.label(), shape.label()),
                program: ProgramRef::Enforcer(default_enforcer),
                frames: vec![case_frame(case, shape, REPEAT_MODE_MAC)],
                mode: hot,
                live: None,
                expect: case.expect(),
                floor: floor_of(shape),
                samples: Vec::new(),
                invalid: None,
            });
            cases.push((case, shape, index));
        }
    }

    Ok(Layout {
        default_enforcer,
        floors,
        floor_cold,
        clock,
        parse,
        cases,
        scale,
    })
}

/// Short description of a fixture's map sizes, for example `1M sessions, 10k prefixes`.
pub fn plan_label(fixture: &EnforcerFixture) -> String {
    format!(
        "{} sessions, {} prefixes",
        si(fixture.plan.sessions),
        si(fixture.plan.prefixes)
    )
}

/// Formats a count with a k or M suffix when it is a whole multiple.
pub fn si(count: usize) -> String {
    if count >= 1_000_000 && count.is_multiple_of(1_000_000) {
        format!("{}M", count / 1_000_000)
    } else if count >= 1_000 && count.is_multiple_of(1_000) {
        format!("{}k", count / 1_000)
    } else {
        count.to_string()
    }
}

/// Runs the IPv4 live-session-hit frame once through enforcer fixture `index` and returns the
/// XDP action.
pub fn run_hot_frame_once(bench: &Bench, index: usize) -> anyhow::Result<u32> {
    let frame = case_frame(Case::Hit, Shape::Ipv4, REPEAT_MODE_MAC);
    let result = bench.enforcers[index]
        .program()?
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            repeat: 1,
            ..Default::default()
        })
        .context("test run of the hot frame failed")?;
    Ok(result.return_value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_formats_whole_multiples() {
        assert_eq!(si(1_000_000), "1M");
        assert_eq!(si(10_000), "10k");
        assert_eq!(si(1_500), "1500");
        assert_eq!(si(10), "10");
    }
}
