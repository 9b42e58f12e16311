//! Stopping, killing and restarting the real daemon: enforcement continues from the pinned
//! program, a restart adopts it, a crash loses no committed grant and keeps none that was not
//! committed, and `enforcer detach` removes it.

mod controller_support;

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicBool, Ordering},
    thread::sleep,
    time::Duration,
};

use controller_support::{CLIENT, CLIENT_2, Gateway, POLICY, assert_missing, text};

fn grant(lab: &Gateway, device: &str) {
    let output = lab.cli(&[
        "session",
        "grant",
        device,
        "gateway-icmp",
        "--duration",
        "1h",
    ]);
    assert!(output.status.success(), "grant failed: {}", text(&output));
}

#[test]
fn restart_adopts_pinned_program() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    grant(&lab, "laptop");
    let before = lab.cli_json(&["status"]);
    assert_eq!(before["adopted"], false);

    let status = lab.stop("TERM");
    assert!(
        status.success(),
        "SIGTERM must stop the daemon cleanly: {status}\n{}",
        lab.log()
    );
    assert!(
        lab.ping_from(CLIENT),
        "the session must pass while the daemon is down"
    );
    assert!(
        !lab.ping_from(CLIENT_2),
        "no session must pass while the daemon is down"
    );

    lab.start();
    let after = lab.cli_json(&["status"]);
    assert_eq!(after["adopted"], true);
    assert_eq!(after["program_id"], before["program_id"]);
    assert!(
        lab.ping_from(CLIENT),
        "the session must pass after the restart"
    );
    assert!(!lab.ping_from(CLIENT_2));
}

#[test]
fn detach_removes_program_and_pins() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    lab.stop("TERM");
    assert!(!lab.ping_from(CLIENT_2));

    let output = std::process::Command::new(controller_support::ENFORCER)
        .args(["detach", "--config"])
        .arg(lab.config_path())
        .output()
        .unwrap();
    assert!(output.status.success(), "detach failed: {}", text(&output));
    assert_missing(&lab.pin_folder());
    assert_missing(lab.pin_folder().parent().unwrap());
    assert!(lab.ping_from(CLIENT_2), "nothing is enforced after detach");
}

#[test]
fn crash_keeps_exactly_committed_grants() {
    let mut policy = POLICY.to_owned();
    for index in 0..150 {
        policy.push_str(&format!(
            "\n[[device]]\nname = \"bulk{index}\"\nowner = \"alice@example.com\"\naddresses = [\"198.51.100.{}\"]\n",
            index + 1
        ));
    }
    let mut lab = Gateway::new(&policy);
    lab.start();
    grant(&lab, "laptop");

    // Grants stream from a second thread; the daemon is killed after 40 acknowledgements.
    let acknowledged = std::sync::Mutex::new(BTreeSet::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let lab_ref = &lab;
        let streamer = scope.spawn(|| {
            for index in 0..150 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("bulk{index}");
                let output = lab_ref.cli(&[
                    "--output",
                    "json",
                    "session",
                    "grant",
                    &name,
                    "gateway-icmp",
                    "--duration",
                    "1h",
                ]);
                if output.status.success() {
                    acknowledged.lock().unwrap().insert(name);
                }
            }
        });
        for _ in 0..600 {
            if acknowledged.lock().unwrap().len() >= 40 {
                break;
            }
            sleep(Duration::from_millis(10));
        }
        // The daemon is killed by pid while the streamer keeps sending until `stop` is set.
        let pid = lab_ref.daemon_pid().expect("the daemon is running");
        let status = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        stop.store(true, Ordering::Relaxed);
        streamer.join().unwrap();
    });
    lab.reap();
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(
        acknowledged.len() >= 40,
        "only {} grants were acknowledged",
        acknowledged.len()
    );

    assert!(
        lab.ping_from(CLIENT),
        "a committed session must pass while the daemon is down"
    );
    assert!(
        !lab.ping_from(CLIENT_2),
        "no packet may pass without a session while it is down"
    );

    lab.start();
    let kernel: BTreeSet<(u64, u64)> = lab
        .kernel_sessions()
        .into_iter()
        .map(|(key, _)| (u64::from(key.device_id), u64::from(key.resource_id)))
        .collect();
    let stored: BTreeSet<(u64, u64)> = lab
        .cli_json(&["session", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["device_id"].as_u64().unwrap(),
                row["resource_id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kernel, stored,
        "the kernel map must hold exactly the committed sessions"
    );

    let devices = lab.cli_json(&["device", "list"]);
    for name in &acknowledged {
        let id = devices
            .as_array()
            .unwrap()
            .iter()
            .find(|device| device["name"] == name.as_str())
            .and_then(|device| device["id"].as_u64())
            .unwrap();
        assert!(
            kernel.iter().any(|(device_id, _)| *device_id == id),
            "acknowledged grant of {name} (device {id}) is missing from the kernel map"
        );
    }
    assert!(lab.ping_from(CLIENT));
    assert!(!lab.ping_from(CLIENT_2));
}

#[test]
fn second_daemon_exits_already_running() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    let output = lab.spawn_daemon().wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(lab.log().contains("already running"), "{}", lab.log());
    assert!(
        lab.cli(&["status"]).status.success(),
        "the first daemon keeps running"
    );
}

#[test]
fn invalid_policy_prevents_start() {
    let lab = Gateway::new(&POLICY.replace("session = \"1h\"", "session = \"forever\""));
    let status = lab.spawn_daemon().wait().unwrap();
    assert!(!status.success());
    let log = lab.log();
    assert!(log.contains("policy.toml:5"), "{log}");
    assert!(log.contains("\"forever\""), "{log}");
    assert_missing(&lab.pin_folder());
}

#[test]
fn daemon_with_other_store_cannot_take_pins() {
    let mut lab = Gateway::new(POLICY);
    lab.start();

    // The same interface and pins, but its own store, socket and listeners: the store lock
    // cannot see it, so only the lock on the pins can stop it from rewriting the maps.
    let config = std::fs::read_to_string(lab.config_path()).unwrap();
    let other = config
        .replace("state.redb", "other.redb")
        .replace("admin.sock", "other.sock")
        .replace("policy.toml", "other-policy.toml");
    let other = other
        .lines()
        .filter(|line| !line.starts_with("listen"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("[portal]", "[portal]\nlisten = \"127.0.0.1:0\"")
        .replace("[metrics]", "[metrics]\nlisten = \"127.0.0.1:0\"");
    let dir = lab.config_path().parent().unwrap().to_path_buf();
    // The second policy protects only an address that no test sends to, so it opens the
    // client's protected prefix if it ever reaches the maps.
    std::fs::write(
        dir.join("other-policy.toml"),
        "[[resource]]\nname = \"elsewhere\"\ndestinations = [{ prefix = \"203.0.113.99\" }]\nsession = \"1h\"\nusers = [\"alice@example.com\"]\n",
    )
    .unwrap();
    let other_path = dir.join("other.toml");
    std::fs::write(&other_path, other).unwrap();

    let denied_before = !lab.ping_from(CLIENT);
    let enforcer = controller_support::ENFORCER;
    let second = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.gateway.name()))
        .arg(enforcer)
        .args(["run", "--config"])
        .arg(&other_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "the second daemon started: {stderr}"
    );
    assert!(stderr.contains("already running on the pins"), "{stderr}");
    assert!(
        !dir.join("other.redb").exists(),
        "the second daemon opened its store"
    );
    assert!(
        denied_before,
        "the client has no session, so its ping is denied"
    );
    assert!(
        !lab.ping_from(CLIENT),
        "the second daemon's policy opened the gate"
    );
}

#[test]
fn pinned_maps_of_another_layout_are_refused() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    grant(&lab, "laptop");
    lab.stop("TERM");

    // A release whose fragment records were 16 bytes left this pin behind. The pinned
    // program still uses its own map; only the pin path now names one of the old layout.
    let pin = lab.pin_folder().join("FRAGMENTS");
    std::fs::remove_file(&pin).unwrap();
    let created = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args([
            "type",
            "lru_hash",
            "key",
            "40",
            "value",
            "16",
            "entries",
            "1024",
            "name",
            "FRAGMENTS",
        ])
        .output()
        .unwrap();
    assert!(created.status.success(), "bpftool: {}", text(&created));

    let output = lab.spawn_daemon().wait_with_output().unwrap();
    assert!(!output.status.success(), "the daemon must refuse the pins");
    let log = lab.log();
    assert!(
        log.contains(
            "map FRAGMENTS has 40-byte keys and 16-byte values, this program needs 40 and 24"
        ) && log.contains("enforcer detach"),
        "the error must name the map, both layouts and the fix:\n{log}"
    );
    assert!(
        lab.ping_from(CLIENT),
        "the pinned program must keep enforcing: the session passes"
    );
    assert!(
        !lab.ping_from(CLIENT_2),
        "the pinned program must keep enforcing: no session, no pass"
    );

    let detached = std::process::Command::new(controller_support::ENFORCER)
        .args(["detach", "--config"])
        .arg(lab.config_path())
        .output()
        .unwrap();
    assert!(
        detached.status.success(),
        "detach failed: {}",
        text(&detached)
    );
    lab.start();
    assert_eq!(lab.cli_json(&["status"])["adopted"], false);
    assert!(
        lab.ping_from(CLIENT),
        "the stored session must pass on the new program"
    );
    assert!(!lab.ping_from(CLIENT_2));
}

#[test]
fn missing_client_secret_stops_before_attach() {
    let mut lab = Gateway::new(POLICY);
    lab.extra_config = "[idp]\nissuer = \"http://127.0.0.1:9/\"\nclient_id = \"enforcer\"\nclient_secret_file = \"missing-secret\"\nredirect_url = \"http://127.0.0.1:8443/callback\"\n".to_owned();
    let output = lab.spawn_daemon().wait_with_output().unwrap();
    assert!(!output.status.success(), "the daemon must not start");
    let log = lab.log();
    assert_eq!(
        log.matches("failed to read the client secret").count(),
        1,
        "the error must be reported once:\n{log}"
    );
    assert_eq!(
        log.matches("os error 2").count(),
        1,
        "the cause must be reported once:\n{log}"
    );
    assert_missing(&lab.pin_folder());
    assert!(
        lab.ping_from(CLIENT_2),
        "no program may be attached after a failed start"
    );
}
