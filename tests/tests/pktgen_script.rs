//! `scripts/pktgen.sh` checks its arguments before it touches pktgen, and stops with a clear
//! message on a kernel without pktgen. No packet is sent: every case fails, or ends with
//! `--dry-run`, before the script writes to /proc/net/pktgen.

use std::{path::PathBuf, process::Command};

const STREAM: &str = "hit:192.0.2.10-192.0.2.200:198.51.100.10:443";
const MAC: &str = "52:54:00:12:34:56";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pktgen.sh")
}

/// Runs the script with `args` and returns its exit code, stdout and stderr.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("bash runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn dry_run_prints_defaults() {
    let (code, stdout, stderr) = run(&[
        "--dev",
        "lo",
        "--dst-mac",
        MAC,
        "--stream",
        STREAM,
        "--dry-run",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("1000000 packets per stream"), "{stdout}");
    assert!(stdout.contains("at most 60 s"), "{stdout}");
    assert!(stdout.contains("64-byte frames"), "{stdout}");
    assert!(stdout.contains("4096 flows of 8 packets"), "{stdout}");
    assert!(stdout.contains("nothing was sent"), "{stdout}");
}

#[test]
fn invalid_arguments_are_rejected() {
    let cases: &[(&[&str], &str)] = &[
        (&["--dev"], "--dev needs a value"),
        (&["--dev", "lo", "--stream", STREAM], "--dst-mac is missing"),
        (
            &[
                "--dev",
                "lo",
                "--dst-mac",
                "52:54:00:12:34",
                "--stream",
                STREAM,
            ],
            "invalid --dst-mac",
        ),
        (&["--dev", "lo", "--dst-mac", MAC], "no --stream given"),
        (
            &[
                "--dev",
                "lo",
                "--dst-mac",
                MAC,
                "--stream",
                STREAM,
                "--count",
                "0",
            ],
            "invalid --count 0",
        ),
        (
            &[
                "--dev",
                "lo",
                "--dst-mac",
                MAC,
                "--stream",
                STREAM,
                "--pkt-size",
                "20",
            ],
            "invalid --pkt-size 20",
        ),
        (
            &[
                "--dev",
                "lo",
                "--dst-mac",
                MAC,
                "--stream",
                STREAM,
                "--flows",
                "x",
            ],
            "invalid --flows x",
        ),
        (
            &[
                "--dev",
                "lo",
                "--dst-mac",
                MAC,
                "--stream",
                "hit:192.0.2.10:198.51.100.10:443",
            ],
            "expected NAME:SRC_MIN-SRC_MAX:DST:PORT",
        ),
        (
            &[
                "--dev",
                "lo",
                "--dst-mac",
                MAC,
                "--stream",
                "hit:192.0.2.10-192.0.2.20:198.51.100.10:70000",
            ],
            "a port up to 65535",
        ),
        (
            &[
                "--dev",
                "lo",
                "--dst-mac",
                MAC,
                "--stream",
                "hit:192.0.2.10-192.0.2.256:198.51.100.10:443",
            ],
            "invalid address 192.0.2.256",
        ),
        (
            &[
                "--dev",
                "lo",
                "--dst-mac",
                MAC,
                "--stream",
                STREAM,
                "--bogus",
            ],
            "unknown argument --bogus",
        ),
    ];
    for (args, expected) in cases {
        let (code, _, stderr) = run(args);
        assert_eq!(code, Some(1), "{args:?} exited with {code:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn missing_pktgen_is_reported() {
    enforcer_tests::require_root();
    if std::path::Path::new("/proc/net/pktgen").exists() {
        eprintln!("skipping test: this kernel has pktgen, so the script would send packets");
        return;
    }
    let (code, _, stderr) = run(&["--dev", "lo", "--dst-mac", MAC, "--stream", STREAM]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("/proc/net/pktgen is missing"), "{stderr}");
}

#[test]
fn script_passes_shellcheck() {
    let found = Command::new("shellcheck").arg("--version").output();
    if found.is_err() {
        eprintln!("skipping test: shellcheck is not installed (scripts/setup.sh installs it)");
        return;
    }
    let output = Command::new("shellcheck")
        .arg(script())
        .output()
        .expect("shellcheck runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
