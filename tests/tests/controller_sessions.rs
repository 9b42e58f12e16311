//! The real daemon in a namespace: grants, expiry, revocation and policy reload seen as the
//! verdicts of real pings through the attached XDP program.

mod controller_support;

use std::{thread::sleep, time::Duration};

use controller_support::{CLIENT, CLIENT_2, Gateway, POLICY, text};

fn grant(lab: &Gateway, device: &str, duration: &str) {
    let output = lab.cli(&[
        "session",
        "grant",
        device,
        "gateway-icmp",
        "--duration",
        duration,
    ]);
    assert!(output.status.success(), "grant failed: {}", text(&output));
}

#[test]
fn grant_lets_only_its_device_pass() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    assert!(
        !lab.ping_from(CLIENT),
        "an enrolled device without a session must be dropped"
    );

    grant(&lab, "laptop", "1h");
    assert!(lab.ping_from(CLIENT), "the granted device must pass");
    assert!(
        !lab.ping_from(CLIENT_2),
        "another device must still be dropped"
    );
}

#[test]
fn expired_session_is_dropped() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    grant(&lab, "laptop", "2s");
    assert!(
        lab.ping_from(CLIENT),
        "the session must pass before it expires"
    );

    sleep(Duration::from_secs(3));
    assert!(
        !lab.ping_from(CLIENT),
        "the session must be dropped after it expired"
    );
    let sessions = lab.cli_json(&["session", "list"]);
    assert_eq!(sessions[0]["live"], false);
    assert_eq!(sessions[0]["in_kernel"], true);
}

#[test]
fn revoke_by_device_name() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    grant(&lab, "laptop", "1h");
    grant(&lab, "desktop", "1h");

    let listed = lab.cli(&["session", "list"]);
    let listing = text(&listed);
    assert!(
        listing.lines().any(|line| line.starts_with("laptop (1) ")),
        "session list prints: {listing}"
    );

    let report = lab.cli_json(&["session", "revoke", "--device", "laptop"]);
    assert_eq!(report["sessions"], 1, "{report}");
    assert!(!lab.ping_from(CLIENT), "a revoked device must be dropped");
    assert!(
        lab.ping_from(CLIENT_2),
        "the other device keeps its session"
    );

    let missing = lab.cli(&["session", "revoke", "--device", "no-such-device"]);
    assert_eq!(missing.status.code(), Some(3), "{}", text(&missing));
}

#[test]
fn revoke_drops_next_packet() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    grant(&lab, "laptop", "1h");
    grant(&lab, "desktop", "1h");
    assert!(lab.ping_from(CLIENT));

    let report = lab.cli_json(&["session", "revoke", "--device", "1"]);
    assert_eq!(report["sessions"], 1);
    assert_eq!(report["kernel_entries"], 1);
    assert!(!lab.ping_from(CLIENT), "a revoked device must be dropped");
    assert!(
        lab.ping_from(CLIENT_2),
        "the other device keeps its session"
    );

    let audit = lab.cli_json(&["audit", "-n", "1"]);
    assert_eq!(audit[0]["kind"], "revocation");
}

#[test]
fn reload_keeps_live_session_passing() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    grant(&lab, "laptop", "1h");

    // 300 pings 10 ms apart run while the policy is reloaded ten times.
    let changed = POLICY.replace(
        "on_expiry = \"drop\"",
        "on_expiry = \"drop\"\n\n[[resource]]\nname = \"other\"\ndestinations = [{ prefix = \"198.51.100.0/24\" }]\nsession = \"2h\"\nusers = [\"alice@example.com\"]",
    );
    std::thread::scope(|scope| {
        let pinger = scope.spawn(|| lab.ping_losses(CLIENT, 300));
        for round in 0..10 {
            let policy = if round % 2 == 0 { &changed } else { POLICY };
            lab.write_policy(policy);
            let output = lab.cli(&["reload"]);
            assert!(output.status.success(), "reload failed: {}", text(&output));
            sleep(Duration::from_millis(200));
        }
        let losses = pinger.join().unwrap();
        assert_eq!(losses, 0, "a live session must pass during every reload");
    });
}

#[test]
fn reload_of_empty_file_changes_nothing() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    grant(&lab, "laptop", "1h");
    assert!(!lab.ping_from(CLIENT_2));

    // A truncated file, as an editor or a copy that has not finished leaves it.
    lab.write_policy("");
    let output = lab.cli(&["reload"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("the policy file is empty"),
        "{}",
        text(&output)
    );
    assert!(lab.ping_from(CLIENT), "the live session must still pass");
    assert!(
        !lab.ping_from(CLIENT_2),
        "the protected prefix must stay protected"
    );
    let sessions = lab.cli_json(&["session", "list"]);
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{sessions}");
}

#[test]
fn reload_removing_user_drops_session() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    grant(&lab, "laptop", "1h");
    assert!(lab.ping_from(CLIENT));

    lab.write_policy(&POLICY.replace(
        "users = [\"alice@example.com\"]",
        "users = [\"bob@example.com\"]",
    ));
    let output = lab.cli(&["reload"]);
    assert!(output.status.success(), "reload failed: {}", text(&output));
    assert!(
        !lab.ping_from(CLIENT),
        "a session the policy no longer allows must be dropped"
    );
    let denied = lab.cli(&[
        "session",
        "grant",
        "desktop",
        "gateway-icmp",
        "--duration",
        "1h",
    ]);
    assert_eq!(denied.status.code(), Some(4), "{}", text(&denied));
}

#[test]
fn invalid_reload_keeps_policy() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    grant(&lab, "laptop", "1h");

    lab.write_policy(&POLICY.replace("192.0.2.1/32", "192.0.2.1/33"));
    let output = lab.cli(&["reload"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let message = text(&output);
    assert!(message.contains("policy.toml:4"), "{message}");
    assert!(message.contains("192.0.2.1/33"), "{message}");
    assert!(
        message.contains("previous policy stays in force"),
        "{message}"
    );
    assert!(lab.ping_from(CLIENT), "the session must still pass");
}

#[test]
fn explain_reports_session_and_verdict() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    let before = lab.cli_json(&["explain", CLIENT, "192.0.2.1", "--protocol", "icmp"]);
    assert_eq!(before["device"], "laptop");
    assert_eq!(before["resource"], "gateway-icmp");
    assert_eq!(before["explanation"]["verdict"], "deny_no_session");

    grant(&lab, "laptop", "1h");
    let after = lab.cli_json(&["explain", CLIENT, "192.0.2.1", "--protocol", "icmp"]);
    assert_eq!(after["explanation"]["verdict"], "pass_session");
    assert_eq!(after["explanation"]["session"]["live"], true);

    let unprotected = lab.cli_json(&[
        "explain",
        CLIENT,
        "192.0.2.1",
        "--protocol",
        "tcp",
        "--port",
        "22",
    ]);
    assert_eq!(unprotected["explanation"]["verdict"], "pass_unprotected");
}

#[test]
fn sighup_reloads_policy() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    grant(&lab, "laptop", "1h");
    assert!(lab.ping_from(CLIENT));

    lab.write_policy(&POLICY.replace(
        "users = [\"alice@example.com\"]",
        "users = [\"bob@example.com\"]",
    ));
    lab.signal("HUP");
    // The reload runs on the daemon's own schedule; wait up to 5 s for its audit entry.
    let mut reloaded = false;
    for _ in 0..50 {
        let audit = lab.cli_json(&["audit", "-n", "1"]);
        if audit[0]["kind"] == "policy_change" {
            assert_eq!(audit[0]["actor"], "signal:SIGHUP");
            reloaded = true;
            break;
        }
        sleep(Duration::from_millis(100));
    }
    assert!(reloaded, "SIGHUP did not reload the policy:\n{}", lab.log());
    assert!(
        !lab.ping_from(CLIENT),
        "the reloaded policy no longer allows the session"
    );
}

#[test]
fn metrics_export_sessions_and_counters() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    grant(&lab, "laptop", "1h");
    assert!(lab.ping_from(CLIENT));
    assert!(!lab.ping_from(CLIENT_2));

    let metrics = lab.metrics();
    assert!(
        metrics.contains("enforcer_sessions{state=\"live\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("enforcer_grants_total 1\n"), "{metrics}");
    assert!(
        metrics.contains("enforcer_session_map_capacity "),
        "{metrics}"
    );
    let passed = counter(&metrics, "pass_session");
    let denied = counter(&metrics, "deny_no_session");
    assert!(passed >= 1, "pass_session is {passed}:\n{metrics}");
    assert!(denied >= 1, "deny_no_session is {denied}:\n{metrics}");
}

fn counter(metrics: &str, name: &str) -> u64 {
    let prefix = format!("enforcer_xdp_packets_total{{counter=\"{name}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

#[test]
fn full_session_map_rejects_grant() {
    let mut lab = Gateway::new(POLICY);
    lab.top_config = "session_capacity = 2".to_owned();
    lab.start();
    let enrolled = lab.cli(&[
        "device",
        "enroll",
        "phone",
        "--address",
        "192.0.2.60",
        "--owner",
        "alice@example.com",
    ]);
    assert!(enrolled.status.success(), "{}", text(&enrolled));
    grant(&lab, "laptop", "1h");
    grant(&lab, "desktop", "1h");

    let full = lab.cli(&[
        "session",
        "grant",
        "phone",
        "gateway-icmp",
        "--duration",
        "1h",
    ]);
    assert_eq!(full.status.code(), Some(1), "{}", text(&full));
    assert!(
        text(&full).contains("map SESSIONS is full (2 entries)"),
        "{}",
        text(&full)
    );
    let sessions = lab.cli_json(&["session", "list"]);
    assert_eq!(
        sessions.as_array().unwrap().len(),
        2,
        "the store must not record the failed grant"
    );
    assert!(lab.metrics().contains("enforcer_map_full_errors_total 1\n"));
    assert!(lab.ping_from(CLIENT), "earlier sessions keep passing");

    let revoked = lab.cli(&["session", "revoke", "--device", "2"]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    grant(&lab, "phone", "1h");
}
