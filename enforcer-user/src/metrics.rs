//! Prometheus metrics in the text exposition format: kernel verdict counters, sessions,
//! punts, sign-ins and map capacity in use.

use std::{fmt::Write as _, sync::atomic::Ordering};

use crate::{daemon::DaemonState, dataplane::maps::KernelMaps};

/// Renders every metric of the daemon. Reading the session map walks it, so the cost grows
/// with the number of sessions.
pub fn render(state: &DaemonState) -> String {
    let engine = state.lock_engine();
    let mut out = String::new();

    match engine.maps().counters() {
        Ok(values) => {
            header(
                &mut out,
                "enforcer_xdp_packets_total",
                "counter",
                "Packets and side effects counted by the XDP program, by counter.",
            );
            for (name, value) in common::counters::NAMES.iter().zip(values) {
                let _ = writeln!(
                    out,
                    "enforcer_xdp_packets_total{{counter=\"{name}\"}} {value}"
                );
            }
        }
        Err(err) => tracing::warn!(error = %err, "failed to read the kernel counters for metrics"),
    }

    let now = engine.now();
    match engine.maps().sessions() {
        Ok(sessions) => {
            let live = sessions
                .iter()
                .filter(|(_, value)| now.boot_ns < value.expires_at_boot_ns)
                .count();
            header(
                &mut out,
                "enforcer_sessions",
                "gauge",
                "Sessions in the kernel map, by state.",
            );
            let _ = writeln!(out, "enforcer_sessions{{state=\"live\"}} {live}");
            let _ = writeln!(
                out,
                "enforcer_sessions{{state=\"expired\"}} {}",
                sessions.len() - live
            );
            header(
                &mut out,
                "enforcer_session_map_capacity",
                "gauge",
                "Maximum entries of the kernel session map.",
            );
            let _ = writeln!(
                out,
                "enforcer_session_map_capacity {}",
                engine.maps().session_capacity()
            );
            header(
                &mut out,
                "enforcer_session_map_used_ratio",
                "gauge",
                "Fraction of the kernel session map in use.",
            );
            let ratio = sessions.len() as f64 / f64::from(engine.maps().session_capacity().max(1));
            let _ = writeln!(out, "enforcer_session_map_used_ratio {ratio}");
        }
        Err(err) => tracing::warn!(error = %err, "failed to read the session map for metrics"),
    }

    let metrics = engine.metrics();
    let events = [
        (
            "enforcer_sign_ins_total",
            "Successful sign-ins.",
            &metrics.sign_ins,
        ),
        (
            "enforcer_enrollments_total",
            "Devices enrolled by their first sign-in.",
            &metrics.enrollments,
        ),
        (
            "enforcer_grants_total",
            "Sessions written by sign-ins and grants.",
            &metrics.grants,
        ),
        (
            "enforcer_revocations_total",
            "Sessions removed by revocations.",
            &metrics.revocations,
        ),
        (
            "enforcer_policy_reloads_total",
            "Policy reloads applied.",
            &metrics.reloads,
        ),
        (
            "enforcer_map_full_errors_total",
            "Kernel writes rejected because the session map was full.",
            &metrics.map_full,
        ),
    ];
    for (name, help, value) in events {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
    }

    let idp = state.idp_health();
    header(
        &mut out,
        "enforcer_idp_up",
        "gauge",
        "1 when the identity provider answered the last check, 0 when it failed, absent before the first check.",
    );
    if let Some(reachable) = idp.reachable {
        let _ = writeln!(out, "enforcer_idp_up {}", u8::from(reachable));
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}
