//! The nftables comparison: the same sessions as an nftables set with per-element timeouts,
//! fed the same frames through the same path as the enforcer.
//!
//! Frames enter with `BPF_F_TEST_XDP_LIVE_FRAMES` on a veth in a namespace this module
//! creates. For nftables, the floor program passes them into that namespace's network stack,
//! where the ruleset filters them at prerouting. The enforcer filters them in XDP and passes
//! allowed frames into a namespace without rules. Both are compared with the floor program in
//! the namespace without rules. Passed frames end at a blackhole route, so none leaves the
//! namespace.

use std::{
    fmt::Write as _,
    fs,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use enforcer_tests::Netns;

use crate::{
    Settings,
    measure::{Bench, Expect, Live, Mode, ProgramRef, Variant, XDP_PASS},
    variants::{Case, Shape, case_frame},
};

/// MAC address of the veth the frames arrive on; frames carry it as destination so the stack
/// accepts them as addressed to the host.
const INGRESS_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const INGRESS_INTERFACE: &str = "bench0";
const PEER_INTERFACE: &str = "bench1";
/// Elements per `add element` command in the generated ruleset.
const ELEMENTS_PER_COMMAND: usize = 50_000;

/// Indices of the comparison's variants and how the set was loaded.
pub struct NftLayout {
    pub stack_floor: usize,
    /// (case, label, enforcer variant, nftables variant)
    pub cases: Vec<(Case, &'static str, usize, usize)>,
    pub elements: usize,
    pub prefixes: usize,
    pub load_time: Duration,
}

/// Table and chain that count the frames the benchmark rule let through, present only while
/// the nftables verdicts are checked.
const CHECK_TABLE: &str = "enforcer_bench_check";
const CHECK_CHAIN: &str = "survivors";

/// Checks that the nftables rule passes the hit frame and drops the denied one, by injecting
/// each once while a counter after the rule runs, and marks the variants that differ.
pub fn check_verdicts(bench: &mut Bench, layout: &NftLayout) -> anyhow::Result<()> {
    let Some(&(_, _, _, first)) = layout.cases.first() else {
        return Ok(());
    };
    let Some(live) = bench.variants[first].live else {
        return Ok(());
    };
    let netns = &bench.namespaces[live.netns];
    netns.exec(&["nft", "add", "table", "ip", CHECK_TABLE])?;
    netns.exec(&[
        "nft",
        "add chain ip",
        CHECK_TABLE,
        CHECK_CHAIN,
        "{ type filter hook prerouting priority -299; policy accept; }",
    ])?;
    netns.exec(&["nft", "add rule ip", CHECK_TABLE, CHECK_CHAIN, "counter"])?;

    let mut problems = Vec::new();
    for &(case, _, _, variant) in &layout.cases {
        let before = survivors(&bench.namespaces[live.netns])?;
        bench.inject_once(variant)?;
        let after = survivors(&bench.namespaces[live.netns])?;
        let passed = after > before;
        let expected = case == Case::Hit;
        if passed != expected {
            let verb = if passed { "passed" } else { "dropped" };
            problems.push((variant, format!("nftables {verb} the frame")));
        }
    }
    bench.namespaces[live.netns].exec(&["nft", "delete", "table", "ip", CHECK_TABLE])?;
    for (variant, problem) in problems {
        bench.variants[variant].invalid = Some(problem);
    }
    Ok(())
}

/// Returns the packet count of the check chain's counter.
fn survivors(netns: &Netns) -> anyhow::Result<u64> {
    let output = netns.exec(&["nft", "list", "chain", "ip", CHECK_TABLE, CHECK_CHAIN])?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .skip_while(|word| *word != "packets")
        .nth(1)
        .and_then(|count| count.parse().ok())
        .with_context(|| format!("no packet counter in the output of nft list chain: {text}"))
}

/// Creates the two namespaces, loads the nftables ruleset with the sessions and prefixes of
/// enforcer fixture `enforcer`, and adds the live-frames variants.
pub fn add_comparison(
    bench: &mut Bench,
    settings: &Settings,
    enforcer: usize,
) -> anyhow::Result<NftLayout> {
    let plan = bench.enforcers[enforcer].plan;
    let plain = Netns::new("bench-stack")?;
    let filtered = Netns::new("bench-nft")?;
    let plain_ifindex = prepare_namespace(&plain)?;
    let filtered_ifindex = prepare_namespace(&filtered)?;

    let ruleset = ruleset(&plan);
    let path = std::env::temp_dir().join(format!("enforcer-bench-{}.nft", std::process::id()));
    fs::write(&path, ruleset).with_context(|| format!("failed to write {}", path.display()))?;
    let started = Instant::now();
    let loaded = filtered.exec(&["nft", "-f", &path.to_string_lossy()]);
    let load_time = started.elapsed();
    let _ = fs::remove_file(&path);
    loaded
        .context("nft failed to load the benchmark ruleset; is the nftables package installed?")?;
    eprintln!(
        "enforcer-bench: loaded {} nftables set elements in {:.1} s",
        plan.sessions,
        load_time.as_secs_f64()
    );

    bench.namespaces.push(plain);
    let plain_live = Live {
        netns: bench.namespaces.len() - 1,
        ifindex: plain_ifindex,
    };
    bench.namespaces.push(filtered);
    let filtered_live = Live {
        netns: bench.namespaces.len() - 1,
        ifindex: filtered_ifindex,
    };

    let mode = Mode::Hot {
        repeat: settings.live_repeat,
    };
    let pass = Expect {
        action: XDP_PASS,
        counter: None,
    };
    let hit_frame = case_frame(Case::Hit, Shape::Ipv4, INGRESS_MAC);
    let stack_floor = bench.push(live_variant(
        "stack floor: floor program, no rules",
        ProgramRef::Floor,
        hit_frame,
        plain_live,
        pass,
        None,
        mode,
    ));

    let mut cases = Vec::new();
    for (case, label) in [
        (Case::Hit, "live session hit"),
        (Case::Expired, "no live session (denied)"),
    ] {
        let frame = case_frame(case, Shape::Ipv4, INGRESS_MAC);
        let enforcer_variant = bench.push(live_variant(
            &format!("enforcer, {label}"),
            ProgramRef::Enforcer(enforcer),
            frame.clone(),
            plain_live,
            case_expect(case),
            Some(stack_floor),
            mode,
        ));
        let nft_variant = bench.push(live_variant(
            &format!("nftables, {label}"),
            ProgramRef::Floor,
            frame,
            filtered_live,
            pass,
            Some(stack_floor),
            mode,
        ));
        cases.push((case, label, enforcer_variant, nft_variant));
    }

    Ok(NftLayout {
        stack_floor,
        cases,
        elements: plan.sessions,
        prefixes: plan.prefixes,
        load_time,
    })
}

fn case_expect(case: Case) -> Expect {
    let (action, counter) = match case {
        Case::Hit => (XDP_PASS, common::counters::PASS_SESSION),
        _ => (crate::measure::XDP_DROP, common::counters::DENY_EXPIRED),
    };
    Expect {
        action,
        counter: Some(counter),
    }
}

fn live_variant(
    name: &str,
    program: ProgramRef,
    frame: Vec<u8>,
    live: Live,
    expect: Expect,
    floor: Option<usize>,
    mode: Mode,
) -> Variant {
    Variant {
        group: "nftables",
        name: name.to_owned(),
        program,
        frames: vec![frame],
        mode,
        live: Some(live),
        expect,
        floor,
        samples: Vec::new(),
        invalid: None,
    }
}

/// Adds the ingress veth, enables forwarding so that frames to the blackholed probe
/// resources are dropped by routing without an ICMP error, and returns the veth's ifindex.
fn prepare_namespace(netns: &Netns) -> anyhow::Result<u32> {
    let mac = INGRESS_MAC
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    netns.exec(&[
        "ip",
        "link",
        "add",
        INGRESS_INTERFACE,
        "address",
        &mac,
        "type",
        "veth",
        "peer",
        "name",
        PEER_INTERFACE,
    ])?;
    netns.exec(&["ip", "link", "set", INGRESS_INTERFACE, "up"])?;
    netns.exec(&["ip", "link", "set", PEER_INTERFACE, "up"])?;
    netns.exec(&["sysctl", "-q", "-w", "net.ipv4.conf.all.forwarding=1"])?;
    netns.exec(&["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0"])?;
    netns.exec(&["ip", "route", "add", "blackhole", "198.51.100.0/24"])?;
    let output = netns.exec(&[
        "cat",
        &format!("/sys/class/net/{INGRESS_INTERFACE}/ifindex"),
    ])?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("invalid ifindex {text:?} of {INGRESS_INTERFACE}"))
}

/// Returns the nftables form of the enforcer's policy: a protected destination needs a
/// (device address, resource address, port) element with a timeout.
fn ruleset(plan: &crate::fixture::Plan) -> String {
    let mut text = String::new();
    let prefixes: Vec<String> = plan
        .prefixes_v4()
        .iter()
        .map(|(address, len)| format!("{address}/{len}"))
        .collect();
    let _ = write!(
        text,
        "table ip enforcer_bench {{\n\
         \tset protected {{\n\
         \t\ttype ipv4_addr\n\
         \t\tflags interval\n\
         \t\telements = {{ {} }}\n\
         \t}}\n\
         \tset sessions {{\n\
         \t\ttype ipv4_addr . ipv4_addr . inet_service\n\
         \t\tflags timeout\n\
         \t\tsize {}\n\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tip daddr @protected ip saddr . ip daddr . tcp dport != @sessions drop\n\
         \t}}\n\
         }}\n",
        prefixes.join(", "),
        plan.sessions.next_power_of_two(),
    );
    for chunk in plan.session_tuples().chunks(ELEMENTS_PER_COMMAND) {
        let elements: Vec<String> = chunk
            .iter()
            .map(|tuple| {
                format!(
                    "{} . {} . {} timeout 24h",
                    tuple.device, tuple.resource, tuple.port
                )
            })
            .collect();
        let _ = writeln!(
            text,
            "add element ip enforcer_bench sessions {{ {} }}",
            elements.join(", ")
        );
    }
    text
}
