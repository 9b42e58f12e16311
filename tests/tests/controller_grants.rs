//! Batch grants through the CLI and the admin socket of the real daemon, and concurrent admin
//! callers, which the daemon must queue rather than fail.

mod controller_support;

use std::{io::Write as _, process::Stdio};

use controller_support::{CLIENT, CLIENT_2, ENFORCER, Gateway, text};

/// Two resources on the gateway, both allowed for alice's two devices.
const POLICY: &str = r#"
[[resource]]
name = "gateway-icmp"
destinations = [{ prefix = "192.0.2.1/32", protocol = "icmp" }]
session = "1h"
users = ["alice@example.com"]
on_expiry = "drop"

[[resource]]
name = "gateway-ssh"
destinations = [{ prefix = "192.0.2.1/32", protocol = "tcp", ports = 22 }]
session = "1h"
users = ["alice@example.com"]
on_expiry = "drop"

[[resource]]
name = "ops-only"
destinations = [{ prefix = "192.0.2.1/32", protocol = "tcp", ports = 23 }]
session = "1h"
users = ["bob@example.com"]
on_expiry = "drop"

[[device]]
name = "laptop"
owner = "alice@example.com"
addresses = ["192.0.2.2"]

[[device]]
name = "desktop"
owner = "alice@example.com"
addresses = ["192.0.2.3"]
"#;

fn lab() -> Gateway {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    lab
}

/// Returns the audit records of kind `grant`.
fn grant_audits(lab: &Gateway) -> usize {
    let audit = lab.cli_json(&["audit", "--limit", "100"]);
    audit
        .as_array()
        .expect("audit is a list")
        .iter()
        .filter(|record| record["kind"] == "grant")
        .count()
}

#[test]
fn comma_separated_resources_grant_both() {
    let lab = lab();
    let granted = lab.cli_json(&[
        "session",
        "grant",
        "laptop",
        "gateway-icmp,gateway-ssh",
        "--duration",
        "1h",
    ]);
    assert_eq!(granted.as_array().map(Vec::len), Some(2), "{granted}");
    assert_eq!(lab.kernel_sessions().len(), 2);
    assert_eq!(grant_audits(&lab), 2);
    assert!(lab.ping_from(CLIENT), "the granted ICMP resource passes");
}

#[test]
fn grants_from_stdin_cover_two_devices() {
    let lab = lab();
    let mut child = std::process::Command::new(ENFORCER)
        .arg("--socket")
        .arg(lab.socket())
        .args(["session", "grant", "--from", "-", "--duration", "1h"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"# device resource\nlaptop gateway-icmp\n\ndesktop gateway-icmp\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("granted 2 session(s)"),
        "{}",
        text(&output)
    );
    assert!(lab.ping_from(CLIENT), "laptop passes");
    assert!(lab.ping_from(CLIENT_2), "desktop passes");
}

#[test]
fn denied_pair_grants_nothing() {
    let lab = lab();
    let output = lab.cli(&[
        "session",
        "grant",
        "laptop",
        "gateway-icmp,ops-only",
        "--duration",
        "1h",
    ]);
    assert_eq!(output.status.code(), Some(4), "{}", text(&output));
    assert!(
        text(&output).contains("nothing in the batch was granted"),
        "{}",
        text(&output)
    );
    assert!(
        lab.kernel_sessions().is_empty(),
        "the allowed pair must not be written either"
    );
    assert_eq!(grant_audits(&lab), 0);
    assert!(!lab.ping_from(CLIENT), "the ICMP resource stays closed");
}

#[test]
fn unknown_resource_in_batch_grants_nothing() {
    let lab = lab();
    let output = lab.cli(&[
        "session",
        "grant",
        "laptop",
        "gateway-icmp,no-such-resource",
        "--duration",
        "1h",
    ]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    assert!(
        text(&output).contains("no-such-resource"),
        "{}",
        text(&output)
    );
    assert!(lab.kernel_sessions().is_empty());
}

#[test]
fn oversized_batch_is_rejected() {
    let lab = lab();
    let lines: String = (0..=enforcer::engine::MAX_GRANT_BATCH)
        .map(|index| format!("laptop resource-{index}\n"))
        .collect();
    let file = lab.dir.path().join("grants.txt");
    std::fs::write(&file, lines).unwrap();
    let output = lab.cli(&[
        "session",
        "grant",
        "--from",
        file.to_str().unwrap(),
        "--duration",
        "1h",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let message = text(&output);
    assert!(
        message.contains(&format!(
            "{} pairs, more than the limit of {}",
            enforcer::engine::MAX_GRANT_BATCH + 1,
            enforcer::engine::MAX_GRANT_BATCH
        )),
        "{message}"
    );
    assert!(lab.kernel_sessions().is_empty());
}

#[test]
fn duplicate_pair_is_rejected() {
    let lab = lab();
    let output = lab.cli(&[
        "session",
        "grant",
        "laptop",
        "gateway-icmp,gateway-icmp",
        "--duration",
        "1h",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("twice"), "{}", text(&output));
    assert!(lab.kernel_sessions().is_empty());
}

#[test]
fn concurrent_callers_are_all_served() {
    let lab = lab();
    // 64 callers connect at once, each with a request that takes the engine lock, so most
    // of them wait in the listen backlog or on the lock. Every caller must get its response.
    const CALLERS: usize = 64;
    let socket = lab.socket();
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CALLERS)
            .map(|index| {
                let socket = socket.clone();
                scope.spawn(move || {
                    let request = if index % 2 == 0 {
                        enforcer::admin::Request::SessionGrant {
                            device: enforcer::admin::DeviceRef::Name(
                                if index % 4 == 0 { "laptop" } else { "desktop" }.to_owned(),
                            ),
                            resource: "gateway-icmp".to_owned(),
                            duration_secs: 3600,
                        }
                    } else {
                        enforcer::admin::Request::Status
                    };
                    match enforcer::admin::client::call(&socket, &request) {
                        Ok(enforcer::admin::Response::Ok { .. }) => Ok(()),
                        Ok(other) => Err(format!("caller {index}: {other:?}")),
                        Err(err) => Err(format!("caller {index}: {err}")),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("caller thread"))
            .collect()
    });
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{failures:#?}\n{}", lab.log());
    assert_eq!(lab.kernel_sessions().len(), 2);
}

#[test]
fn invalid_cli_input_exits_two() {
    let lab = lab();
    let cases: [&[&str]; 3] = [
        &[
            "session",
            "grant",
            "laptop",
            "gateway-icmp,,other",
            "--duration",
            "1h",
        ],
        &["explain", "192.0.2.2", "192.0.2.1", "--protocol", "sctpx"],
        &[
            "session",
            "grant",
            "--from",
            "/nonexistent/grants.txt",
            "--duration",
            "1h",
        ],
    ];
    for args in cases {
        let output = lab.cli(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        assert!(
            !text(&output).contains("invalid digit"),
            "{args:?} leaks the parser's text: {}",
            text(&output)
        );
    }
    let mut json = vec!["--output", "json"];
    json.extend_from_slice(cases[0]);
    let output = lab.cli(&json);
    let error: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(error["error"]["code"], "invalid", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has an empty name"),
        "{error}"
    );
    assert!(lab.kernel_sessions().is_empty());
}

#[test]
fn check_json_reports_errors_and_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "\u{feff}# nothing yet\r\n").unwrap();
    let output = std::process::Command::new(ENFORCER)
        .args(["--output", "json", "check"])
        .arg(&empty)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let error: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(error["error"]["code"], "invalid", "{error}");

    let everything = dir.path().join("everything.toml");
    std::fs::write(
        &everything,
        "[[resource]]\nname = \"all\"\ndestinations = [{ prefix = \"::/0\" }]\nsession = \"1h\"\nusers = [\"alice@example.com\"]\n",
    )
    .unwrap();
    let output = std::process::Command::new(ENFORCER)
        .args(["--output", "json", "check"])
        .arg(&everything)
        .output()
        .unwrap();
    // A warning never changes the exit code.
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["resources"], 1, "{report}");
    let warnings = report["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{report}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains(":3: resource all protects every IPv6 address"),
        "{report}"
    );
}
