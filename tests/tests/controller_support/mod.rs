//! A gateway with the real daemon for the controller tests: a client namespace and a gateway
//! namespace joined by a veth pair, the `enforcer` daemon running in the gateway namespace with
//! its own store, admin socket and bpffs pin folder, and the CLI to talk to it.

#![allow(
    dead_code,
    reason = "each test file uses a different part of this module"
)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::sleep,
    time::Duration,
};

use enforcer_tests::{Netns, address, require_root, veth};

/// Client address enrolled as the device under test.
pub const CLIENT: &str = "192.0.2.2";
/// A second client address, enrolled as a second device.
pub const CLIENT_2: &str = "192.0.2.3";
/// Gateway address, the protected resource of the policy.
pub const GATEWAY: &str = "192.0.2.1";

/// Metrics listener inside the gateway namespace, whose loopback belongs to this test alone.
pub const METRICS_LISTEN: &str = "127.0.0.1:9464";

/// Binary of the daemon and CLI.
pub const ENFORCER: &str = env!("CARGO_BIN_EXE_enforcer-under-test");

/// Policy that protects ICMP to the gateway for alice's devices.
pub const POLICY: &str = r#"
[[resource]]
name = "gateway-icmp"
destinations = [{ prefix = "192.0.2.1/32", protocol = "icmp" }]
session = "1h"
users = ["alice@example.com"]
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

/// The lab: namespaces, files and the daemon; everything is removed on drop.
pub struct Gateway {
    // Fields drop in declaration order: the daemon stops before its namespace goes.
    daemon: Option<Child>,
    pub dir: tempfile::TempDir,
    pub pin_root: PathBuf,
    pub client: Netns,
    pub gateway: Netns,
    /// Lines added to the `[admin]` table of the config.
    pub extra_config: String,
    /// Portal listener address inside the gateway namespace.
    pub portal_listen: String,
    /// Top-level keys added to the config.
    pub top_config: String,
    /// The config's `xdp_mode`; generic (`skb`) unless a test needs another.
    pub xdp_mode: String,
}

impl Gateway {
    /// Sets up the namespaces and writes the config and `policy`; the daemon is not started.
    pub fn new(policy: &str) -> Self {
        require_root();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let client = Netns::new("cclient").unwrap();
        let gateway = Netns::new("cgw").unwrap();
        veth(&client, "c0", &gateway, "g0").unwrap();
        address(&client, "c0", "192.0.2.2/24").unwrap();
        address(&client, "c0", "192.0.2.3/24").unwrap();
        address(&gateway, "g0", "192.0.2.1/24").unwrap();

        let dir = tempfile::tempdir().unwrap();
        let pin_root = PathBuf::from(format!(
            "/sys/fs/bpf/enforcer-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let lab = Self {
            daemon: None,
            dir,
            pin_root,
            client,
            gateway,
            extra_config: String::new(),
            portal_listen: "127.0.0.1:0".into(),
            top_config: String::new(),
            xdp_mode: "skb".into(),
        };
        lab.write_policy(policy);
        lab
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("enforcer.toml")
    }

    pub fn pin_folder(&self) -> PathBuf {
        self.pin_root.join("g0")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn write_policy(&self, policy: &str) {
        fs::write(self.policy_path(), policy).unwrap();
    }

    fn write_config(&self) {
        let config = format!(
            r#"
interface = "g0"
xdp_mode = "{mode}"
pin_root = "{pins}"
policy = "policy.toml"
{top}
[store]
path = "state.redb"
[admin]
socket = "admin.sock"
{extra}
[portal]
listen = "{portal}"
[metrics]
listen = "{metrics}"
"#,
            pins = self.pin_root.display(),
            extra = self.extra_config,
            portal = self.portal_listen,
            metrics = METRICS_LISTEN,
            top = self.top_config,
            mode = self.xdp_mode,
        );
        fs::write(self.config_path(), config).unwrap();
    }

    /// Starts the daemon in the gateway namespace and waits until its admin API responds.
    pub fn start(&mut self) {
        assert!(self.daemon.is_none(), "the daemon is already running");
        let child = self.spawn_daemon();
        self.daemon = Some(child);
        for _ in 0..100 {
            if self.cli(&["status"]).status.success() {
                return;
            }
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("the daemon exited with {status}:\n{}", self.log());
            }
            sleep(Duration::from_millis(100));
        }
        panic!("the daemon did not answer within 10 s:\n{}", self.log());
    }

    /// Starts another daemon process on the same config and returns it without waiting.
    pub fn spawn_daemon(&self) -> Child {
        self.write_config();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        // nsenter switches only the network namespace; `ip netns exec` would also remount
        // /sys, which hides the bpffs mount at /sys/fs/bpf.
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.gateway.name()))
            .args([ENFORCER, "run", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Stops the daemon with `signal` (for example "TERM" or "KILL") and waits for it.
    pub fn stop(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.daemon.take().expect("the daemon is running");
        let pid = child.id().to_string();
        // nsenter execs the daemon, so the child's pid is the daemon's.
        let status = Command::new("kill")
            .args(["-s", signal, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {signal} {pid} failed");
        child.wait().unwrap()
    }

    /// Returns the pid of the running daemon.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Waits for a daemon that was killed from outside.
    pub fn reap(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            child.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs the CLI against this daemon's socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(ENFORCER)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    /// Runs the CLI with `--output json` and parses its output; panics when it fails.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let output = self.cli(&all);
        assert!(
            output.status.success(),
            "enforcer {args:?} failed with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Returns whether one ping from `source` to the gateway gets a reply within a second.
    pub fn ping_from(&self, source: &str) -> bool {
        self.client
            .try_exec(&["ping", "-c", "1", "-W", "1", "-I", source, GATEWAY])
            .unwrap()
            .status
            .success()
    }

    /// Sends `count` pings from `source` 10 ms apart and returns how many got no reply.
    pub fn ping_losses(&self, source: &str, count: u32) -> u32 {
        let count_text = count.to_string();
        let output = self
            .client
            .try_exec(&[
                "ping",
                "-q",
                "-c",
                &count_text,
                "-i",
                "0.01",
                "-W",
                "1",
                "-I",
                source,
                GATEWAY,
            ])
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let received = text
            .lines()
            .find_map(|line| {
                let (_, rest) = line.split_once(" transmitted, ")?;
                rest.split_whitespace().next()?.parse::<u32>().ok()
            })
            .unwrap_or(0);
        count - received
    }

    /// Fetches the Prometheus metrics page from inside the gateway namespace.
    pub fn metrics(&self) -> String {
        let url = format!("http://{METRICS_LISTEN}/metrics");
        let output = self
            .gateway
            .exec(&["curl", "-sf", "--max-time", "5", &url])
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    }

    /// Sends `signal` to the running daemon without waiting for it.
    pub fn signal(&self, signal: &str) {
        let pid = self
            .daemon_pid()
            .expect("the daemon is running")
            .to_string();
        let status = Command::new("kill")
            .args(["-s", signal, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {signal} {pid} failed");
    }

    /// Reads the pinned SESSIONS map directly from bpffs.
    pub fn kernel_sessions(&self) -> Vec<(common::SessionKey, common::SessionValue)> {
        let data = aya::maps::MapData::from_pin(self.pin_folder().join("SESSIONS")).unwrap();
        let map = aya::maps::Map::HashMap(data);
        let sessions: aya::maps::HashMap<_, common::SessionKey, common::SessionValue> =
            aya::maps::HashMap::try_from(map).unwrap();
        sessions.iter().map(Result::unwrap).collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.pin_root);
    }
}

/// Returns the text of a CLI output's standard output and standard error.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Asserts that `path` does not exist.
pub fn assert_missing(path: &Path) {
    assert!(!path.exists(), "{} still exists", path.display());
}
