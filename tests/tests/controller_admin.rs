//! The admin socket lets in root and members of the admin group only, checked with the
//! peer credentials of the connecting process.

mod controller_support;

use std::{os::unix::fs::PermissionsExt, process::Command};

use controller_support::{ENFORCER, Gateway, POLICY, text};

/// Admin group of these tests, given as a numeric gid so no group has to exist.
const ADMIN_GID: &str = "4242";

fn lab() -> Gateway {
    let mut lab = Gateway::new(POLICY);
    lab.extra_config = format!("group = \"{ADMIN_GID}\"");
    // The socket's folder must be searchable for the group member to reach the socket.
    std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    lab.start();
    lab
}

/// Runs `enforcer status` as uid and gid 65534 with `extra` setpriv options.
fn status_as_nobody(lab: &Gateway, extra: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534"])
        .args(extra)
        .arg(ENFORCER)
        .arg("--socket")
        .arg(lab.socket())
        .arg("status")
        .output()
        .unwrap()
}

#[test]
fn admin_socket_rejects_other_user() {
    let lab = lab();
    // CAP_DAC_OVERRIDE lets the process past the socket's file mode, so only the daemon's
    // peer credential check can reject it.
    let output = status_as_nobody(
        &lab,
        &[
            "--clear-groups",
            "--inh-caps",
            "+dac_override",
            "--ambient-caps",
            "+dac_override",
        ],
    );
    assert_eq!(output.status.code(), Some(4), "{}", text(&output));
    assert!(
        text(&output).contains("uid 65534 is neither root nor in the admin group"),
        "{}",
        text(&output)
    );
}

#[test]
fn socket_mode_rejects_other_user() {
    let lab = lab();
    let output = status_as_nobody(&lab, &["--clear-groups"]);
    assert_eq!(output.status.code(), Some(4), "{}", text(&output));
    assert!(
        text(&output).contains("permission denied on the admin socket"),
        "{}",
        text(&output)
    );
    assert!(
        text(&output).contains("run the command as root"),
        "{}",
        text(&output)
    );
}

#[test]
fn admin_group_member_is_accepted() {
    let lab = lab();
    let output = status_as_nobody(&lab, &["--groups", ADMIN_GID]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("interface   g0"),
        "{}",
        text(&output)
    );
}

#[test]
fn device_lifecycle_through_cli() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    let enrolled = lab.cli_json(&[
        "device",
        "enroll",
        "phone",
        "--address",
        "192.0.2.50",
        "--address",
        "2001:db8::50",
        "--owner",
        "alice@example.com",
    ]);
    let id = enrolled["id"].as_u64().unwrap();
    assert_eq!(enrolled["source"], "admin");

    let taken = lab.cli(&["device", "enroll", "tablet", "--address", "192.0.2.50"]);
    assert_eq!(taken.status.code(), Some(5), "{}", text(&taken));
    assert!(text(&taken).contains("192.0.2.50"), "{}", text(&taken));

    let shown = lab.cli_json(&["device", "show", "phone"]);
    assert_eq!(shown["device"]["id"].as_u64(), Some(id));
    let explained = lab.cli_json(&["explain", "2001:db8::50", "192.0.2.1", "--protocol", "icmp"]);
    assert_eq!(explained["device"], "phone");

    let policy_device = lab.cli(&["device", "remove", "laptop"]);
    assert_eq!(
        policy_device.status.code(),
        Some(5),
        "{}",
        text(&policy_device)
    );

    let removed = lab.cli(&["device", "remove", "phone"]);
    assert!(removed.status.success(), "{}", text(&removed));
    let missing = lab.cli(&["device", "show", "phone"]);
    assert_eq!(missing.status.code(), Some(3), "{}", text(&missing));
    let list = lab.cli(&["device", "list"]);
    assert!(!text(&list).contains("phone"), "{}", text(&list));
    assert!(text(&list).contains("laptop"), "{}", text(&list));
}

#[test]
fn invalid_device_names_are_rejected() {
    let mut lab = Gateway::new(POLICY);
    lab.start();
    let phone = lab.cli_json(&["device", "enroll", "phone", "--address", "192.0.2.50"]);
    let phone_id = phone["id"].as_u64().expect("a device id").to_string();

    // A name that is a number would be read as a device id by `device show`, `device remove`
    // and `session grant`, so those commands would reach another device.
    let too_long = "d".repeat(65);
    for name in [phone_id.as_str(), "7", "two words", "", too_long.as_str()] {
        let enrolled = lab.cli(&["device", "enroll", name, "--address", "192.0.2.60"]);
        assert!(
            !enrolled.status.success(),
            "name {name:?} was enrolled: {}",
            text(&enrolled)
        );
        assert!(
            text(&enrolled).contains("is invalid"),
            "name {name:?}: {}",
            text(&enrolled)
        );
    }
    let list = lab.cli_json(&["device", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    let shown = lab.cli_json(&["device", "show", &phone_id]);
    assert_eq!(shown["device"]["name"], "phone", "{shown}");
}
