//! Control-plane figures with the real daemon: time to start with a store of many sessions
//! (which includes reconciling them into the kernel maps), admin grants per second, and the
//! time from a revocation returning to the first denied packet.
//!
//! The daemon runs in a namespace created for the run, attached to a veth there, with its own
//! redb store, admin socket and bpffs pin folder. Packets after the revocation go through the
//! daemon's own pinned program with `BPF_PROG_TEST_RUN`.

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use enforcer::{
    admin::{DeviceRef, GrantPair, Request, Response, RevokeRequest, client},
    clock::{Clock as _, SystemClock},
    store::{EnrollmentSource, GrantSource, NewDevice, SessionRecord, Store},
};
use enforcer_tests::Netns;

use crate::{
    fixture::{self, RESOURCE_PORT},
    measure::XDP_DROP,
    variants::{Case, REPEAT_MODE_MAC, Shape, case_frame},
};

const INTERFACE: &str = "bench0";
const OWNER: &str = "bench@example.com";
/// Resources with no stored sessions, the targets of the measured grants: one per grant
/// measurement, so every measured grant writes a new session.
const FRESH_RESOURCE: &str = "fresh";
const CONCURRENT_RESOURCE: &str = "fresh-2";
const BATCH_RESOURCE: &str = "fresh-3";
/// Parallel admin clients of the concurrent grant measurement.
const CONCURRENT_CLIENTS: usize = 8;
/// Maximum time from starting the daemon to its first reply on the admin socket.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// Maximum packets sent after a revocation while waiting for the first denied one.
const MAX_PACKETS_AFTER_REVOKE: usize = 100_000;

/// Sizes of the control-plane run.
#[derive(Clone, Copy, Debug)]
pub struct ControlPlan {
    pub devices: usize,
    pub resources: usize,
    /// Grants measured one at a time, and again spread over the concurrent clients.
    pub grants: usize,
    /// Pairs of the one batch grant request, each device once.
    pub batch: usize,
}

/// Measured control-plane figures.
#[derive(Clone, Debug)]
pub struct ControlFigures {
    pub sessions: usize,
    /// Time to write the stored sessions with the store API, in one transaction.
    pub store_write: Duration,
    /// From spawning `enforcer run` to its first reply on the admin socket.
    pub start_to_ready: Duration,
    /// Between the daemon's "attached" and "reconciled kernel maps" log lines.
    pub reconcile: Option<Duration>,
    pub grants: usize,
    pub sequential: Duration,
    /// The concurrent grants' time, or the error that stopped them (for example a client's
    /// request timeout while the other clients' grants held the daemon).
    pub concurrent: Result<Duration, String>,
    pub batch: usize,
    /// The batch grant request's time, or the error the daemon returned.
    pub batched: Result<Duration, String>,
    /// The `SessionRevoke` request, from sending it to its response.
    pub revoke_call: Duration,
    /// From `SessionRevoke` returning to the first denied packet.
    pub revoke_to_deny: Duration,
    /// Packets that passed after `SessionRevoke` returned.
    pub passed_after_revoke: usize,
    /// The daemon's debug line with the time of each reconcile phase, as `name=ms` pairs.
    pub reconcile_phases: Option<String>,
    /// Reconcile after a restart that adopts the pinned program and its full maps.
    pub restart_reconcile: Option<Duration>,
    pub restart_phases: Option<String>,
}

/// Runs the control-plane measurements with the daemon binary `enforcer`.
pub fn measure(enforcer: &Path, plan: ControlPlan) -> anyhow::Result<ControlFigures> {
    anyhow::ensure!(
        plan.devices >= 1 && plan.resources >= 1,
        "the control-plane run needs at least one device and one resource"
    );
    anyhow::ensure!(
        plan.grants <= plan.devices && plan.batch <= plan.devices,
        "{} grants and a batch of {} requested but only {} devices; grants go to distinct devices",
        plan.grants,
        plan.batch,
        plan.devices
    );
    let lab = Lab::new()?;
    fs::write(lab.policy_path(), policy(plan)).context("failed to write the policy")?;
    fs::write(lab.config_path(), lab.config()).context("failed to write the config")?;

    let (store_write, probe_device) = write_store(&lab.store_path(), plan)?;
    eprintln!(
        "enforcer-bench: stored {} sessions in {:.1} s",
        plan.devices * plan.resources,
        store_write.as_secs_f64()
    );

    let mut daemon = Daemon::spawn(enforcer, &lab)?;
    let start_to_ready = daemon.wait_ready(&lab)?;
    let reconcile = reconcile_time(&lab.log());
    let start_phases = reconcile_phases(&lab.log());
    eprintln!(
        "enforcer-bench: daemon ready after {:.2} s",
        start_to_ready.as_secs_f64()
    );

    let socket = lab.socket_path();
    let sequential = grant_sequentially(&socket, plan.grants, FRESH_RESOURCE)?;
    let concurrent = grant_concurrently(&socket, plan.grants, CONCURRENT_RESOURCE)
        .map_err(|err| format!("{err:#}"));
    let batched =
        grant_batch(&socket, plan.batch, BATCH_RESOURCE).map_err(|err| format!("{err:#}"));
    let (revoke_call, revoke_to_deny, passed_after_revoke) = revoke_and_probe(&lab, probe_device)?;
    daemon.stop()?;

    // SIGTERM leaves the program and its maps pinned, so the second start adopts them and
    // reconciles against a full session map.
    let first_log = lab.log().len();
    let mut daemon = Daemon::spawn(enforcer, &lab)?;
    daemon.wait_ready(&lab)?;
    let restart_log = lab.log().get(first_log..).unwrap_or_default().to_owned();
    let restart_reconcile = reconcile_time(&restart_log);
    let restart_phases = reconcile_phases(&restart_log);
    daemon.stop()?;
    Ok(ControlFigures {
        sessions: plan.devices * plan.resources,
        store_write,
        start_to_ready,
        reconcile,
        grants: plan.grants,
        sequential,
        concurrent,
        batch: plan.batch,
        batched,
        revoke_call,
        revoke_to_deny,
        passed_after_revoke,
        reconcile_phases: start_phases,
        restart_reconcile,
        restart_phases,
    })
}

/// Address of device `index`: the probe device first, then the benchmarking range.
fn device_address(index: usize) -> IpAddr {
    if index == 0 {
        return fixture::hot_device(false);
    }
    IpAddr::V4(Ipv4Addr::new(198, 19, (index >> 8) as u8, index as u8))
}

/// Destination of resource `index`: the probe resource first, then the benchmarking range.
fn resource_address(index: usize) -> Ipv4Addr {
    if index == 0 {
        return fixture::probe_resource_v4(0);
    }
    fixture::filler_prefix_v4(index)
}

fn resource_name(index: usize) -> String {
    format!("r{index}")
}

/// Returns the policy: one TCP resource per index, plus the two without stored sessions.
fn policy(plan: ControlPlan) -> String {
    let mut text = String::new();
    let mut resource = |name: &str, address: Ipv4Addr| {
        let _ = write!(
            text,
            "[[resource]]\nname = \"{name}\"\n\
             destinations = [{{ prefix = \"{address}/32\", protocol = \"tcp\", ports = {RESOURCE_PORT} }}]\n\
             session = \"8h\"\nusers = [\"{OWNER}\"]\non_expiry = \"drop\"\n\n"
        );
    };
    for index in 0..plan.resources {
        resource(&resource_name(index), resource_address(index));
    }
    resource(FRESH_RESOURCE, Ipv4Addr::new(198, 18, 255, 1));
    resource(CONCURRENT_RESOURCE, Ipv4Addr::new(198, 18, 255, 2));
    resource(BATCH_RESOURCE, Ipv4Addr::new(198, 18, 255, 3));
    text
}

/// Enrolls the devices and stores a session for every (device, resource) pair in one
/// transaction. Returns the time taken and the probe device's id.
fn write_store(path: &Path, plan: ControlPlan) -> anyhow::Result<(Duration, u32)> {
    let started = Instant::now();
    let store = Store::open(path).context("failed to open the benchmark store")?;
    let clock = SystemClock::new().context("failed to read the boot id")?;
    let now = clock.now();
    let mut txn = store.begin_write()?;
    let mut device_ids = Vec::with_capacity(plan.devices);
    for index in 0..plan.devices {
        let record = txn.enroll_device(NewDevice {
            name: format!("d{index}"),
            owner: Some(OWNER.to_owned()),
            addresses: vec![device_address(index)],
            mac: None,
            source: EnrollmentSource::Admin,
        })?;
        device_ids.push(record.id);
    }
    for index in 0..plan.resources {
        let resource_id = txn.resource_id(&resource_name(index))?;
        let sessions: Vec<SessionRecord> = device_ids
            .iter()
            .map(|&device_id| SessionRecord {
                device_id,
                resource_id,
                start: now.clone(),
                source: GrantSource::Admin {
                    actor: "enforcer-bench".to_owned(),
                    duration_secs: 8 * 3600,
                },
                user: None,
                amr: Vec::new(),
                acr: None,
            })
            .collect();
        txn.put_sessions(&sessions)?;
    }
    txn.commit()?;
    Ok((started.elapsed(), device_ids[0]))
}

fn call(socket: &Path, request: &Request) -> anyhow::Result<()> {
    match client::call(socket, request)? {
        Response::Ok { .. } => Ok(()),
        Response::Error { code, message } => {
            bail!("the daemon rejected {request:?}: {code:?}: {message}")
        }
    }
}

fn grant(socket: &Path, device: usize, resource: &str) -> anyhow::Result<()> {
    call(
        socket,
        &Request::SessionGrant {
            device: DeviceRef::Name(format!("d{device}")),
            resource: resource.to_owned(),
            duration_secs: 3600,
        },
    )?;
    Ok(())
}

fn grant_sequentially(socket: &Path, grants: usize, resource: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for device in 0..grants {
        grant(socket, device, resource)?;
    }
    Ok(started.elapsed())
}

fn grant_concurrently(socket: &Path, grants: usize, resource: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..CONCURRENT_CLIENTS)
            .map(|worker| {
                scope.spawn(move || -> anyhow::Result<()> {
                    for device in (worker..grants).step_by(CONCURRENT_CLIENTS) {
                        grant(socket, device, resource)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a grant client thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(started.elapsed())
}

/// Grants devices 0 to `count` a session to `resource` in one batch request.
fn grant_batch(socket: &Path, count: usize, resource: &str) -> anyhow::Result<Duration> {
    let grants = (0..count)
        .map(|device| GrantPair {
            device: DeviceRef::Name(format!("d{device}")),
            resource: resource.to_owned(),
        })
        .collect();
    let started = Instant::now();
    call(
        socket,
        &Request::SessionGrantBatch {
            grants,
            duration_secs: 3600,
        },
    )?;
    Ok(started.elapsed())
}

/// Checks that the probe frame passes, revokes its session, and runs the frame through the
/// daemon's pinned program until it is denied. Returns the time of the revocation request,
/// the time from its return to the first denied packet and the packets that passed in
/// between.
fn revoke_and_probe(lab: &Lab, probe_device: u32) -> anyhow::Result<(Duration, Duration, usize)> {
    let program_path = lab.pin_root.join(INTERFACE).join("program");
    let program = Xdp::from_pin(&program_path, XdpAttachType::Interface).with_context(|| {
        format!(
            "failed to open the daemon's program at {}",
            program_path.display()
        )
    })?;
    let frame = case_frame(Case::Hit, Shape::Ipv4, REPEAT_MODE_MAC);
    let verdict = |program: &Xdp| -> anyhow::Result<u32> {
        Ok(program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat: 1,
                ..Default::default()
            })
            .context("test run of the daemon's program failed")?
            .return_value)
    };
    if verdict(&program)? == XDP_DROP {
        bail!(
            "the probe frame is dropped before the revocation; the stored session did not reach the kernel map"
        );
    }

    let sent = Instant::now();
    call(
        &lab.socket_path(),
        &Request::SessionRevoke {
            selector: RevokeRequest::Session {
                device: DeviceRef::Id(probe_device),
                resource: resource_name(0),
            },
        },
    )?;
    let returned = Instant::now();
    let revoke_call = returned - sent;
    for passed in 0..MAX_PACKETS_AFTER_REVOKE {
        if verdict(&program)? == XDP_DROP {
            return Ok((revoke_call, returned.elapsed(), passed));
        }
    }
    bail!("{MAX_PACKETS_AFTER_REVOKE} packets still passed after the revocation returned")
}

/// Returns the time between the daemon's attach and reconcile log lines, from their
/// timestamps.
fn reconcile_time(log: &str) -> Option<Duration> {
    let log = strip_ansi(log);
    let attached = log.lines().find(|line| {
        line.contains("attached XDP program") || line.contains("adopted pinned XDP program")
    })?;
    let reconciled = log
        .lines()
        .find(|line| line.contains("reconciled kernel maps"))?;
    let elapsed = log_seconds(reconciled)? - log_seconds(attached)?;
    (elapsed >= 0.0).then(|| Duration::from_secs_f64(elapsed))
}

/// Returns the phase times of the daemon's "reconcile phases" debug line, such as
/// "read_store_ms=612 read_kernel_ms=0 write_kernel_ms=180 remove_and_purge_ms=3".
fn reconcile_phases(log: &str) -> Option<String> {
    let phases = strip_ansi(log.lines().find(|line| line.contains("reconcile phases"))?);
    let report = strip_ansi(
        log.lines()
            .find(|line| line.contains("reconciled kernel maps"))
            .unwrap_or_default(),
    );
    let fields: Vec<&str> = phases
        .split_whitespace()
        .chain(report.split_whitespace())
        .filter(|field| field.contains("_ms=") || field.starts_with("sessions_"))
        .collect();
    (!fields.is_empty()).then(|| fields.join(" "))
}

/// Returns the Unix time in seconds of a tracing-subscriber log line, which starts with an
/// RFC 3339 UTC timestamp such as 2026-12-04T00:45:12.123456Z.
pub fn log_seconds(line: &str) -> Option<f64> {
    let line = strip_ansi(line);
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut date_parts = date.split('-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: i64 = date_parts.next()?.parse().ok()?;
    let day: i64 = date_parts.next()?.parse().ok()?;
    let mut time_parts = time.split(':');
    let hours: f64 = time_parts.next()?.parse().ok()?;
    let minutes: f64 = time_parts.next()?.parse().ok()?;
    let secs: f64 = time_parts.next()?.parse().ok()?;
    let days = days_from_civil(year, month, day);
    Some(days as f64 * 86400.0 + hours * 3600.0 + minutes * 60.0 + secs)
}

/// Days from 1970-01-01 to the proleptic Gregorian date `year-month-day` (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Removes the terminal colour sequences (`ESC [ ... m`) that tracing-subscriber writes.
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The namespace, files and pin folder of the run; removed on drop.
struct Lab {
    netns: Netns,
    dir: PathBuf,
    pin_root: PathBuf,
}

impl Lab {
    fn new() -> anyhow::Result<Self> {
        let netns = Netns::new("bench-cp")?;
        netns.exec(&[
            "ip", "link", "add", INTERFACE, "type", "veth", "peer", "name", "bench1",
        ])?;
        netns.exec(&["ip", "link", "set", INTERFACE, "up"])?;
        netns.exec(&["ip", "link", "set", "bench1", "up"])?;
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("enforcer-bench-cp-{id}"));
        fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/enforcer-bench-{id}"));
        Ok(Self {
            netns,
            dir,
            pin_root,
        })
    }

    fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("enforcer.toml")
    }

    fn store_path(&self) -> PathBuf {
        self.dir.join("state.redb")
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn config(&self) -> String {
        format!(
            "interface = \"{INTERFACE}\"\nxdp_mode = \"skb\"\npin_root = \"{pins}\"\n\
             policy = \"policy.toml\"\n[store]\npath = \"state.redb\"\n\
             [admin]\nsocket = \"admin.sock\"\n[portal]\nlisten = \"127.0.0.1:0\"\n",
            pins = self.pin_root.display()
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.pin_root);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The running daemon; killed on drop if `stop` was not called.
struct Daemon {
    child: Option<Child>,
    started: Instant,
}

impl Daemon {
    /// Starts `enforcer run`, appending its output to the lab's log.
    fn spawn(enforcer: &Path, lab: &Lab) -> anyhow::Result<Self> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(lab.log_path())
            .context("failed to open the daemon log")?;
        let started = Instant::now();
        // nsenter switches only the network namespace; `ip netns exec` would also remount
        // /sys, which hides the bpffs mount at /sys/fs/bpf.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.netns.name()))
            .arg(enforcer)
            .args(["run", "--config"])
            .arg(lab.config_path())
            .env("RUST_LOG", "info,enforcer::engine::reconcile=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("failed to share the daemon log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("failed to start {} run", enforcer.display()))?;
        Ok(Self {
            child: Some(child),
            started,
        })
    }

    /// Polls the admin socket until the daemon replies and returns the time since spawning.
    fn wait_ready(&mut self, lab: &Lab) -> anyhow::Result<Duration> {
        let socket = lab.socket_path();
        while self.started.elapsed() < START_TIMEOUT {
            if call(&socket, &Request::Status).is_ok() {
                return Ok(self.started.elapsed());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "the daemon exited with {status} before it replied:\n{}",
                    lab.log()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
        bail!(
            "the daemon did not reply within {} s:\n{}",
            START_TIMEOUT.as_secs(),
            lab.log()
        )
    }

    /// Stops the daemon with SIGTERM and waits for it.
    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // nsenter execs the daemon, so the child's pid is the daemon's.
        let status = Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .status()
            .context("failed to run kill")?;
        if !status.success() {
            let _ = child.kill();
        }
        child.wait().context("failed to wait for the daemon")?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_time_from_log_lines() {
        let log = "\x1b[2m2026-12-04T00:43:55.455640Z\x1b[0m INFO enforcer::daemon: attached XDP program\n\
                   2026-12-04T00:43:56.705640Z INFO enforcer::engine::reconcile: reconciled kernel maps\n";
        let elapsed = reconcile_time(log).expect("both lines are found");
        assert!((elapsed.as_secs_f64() - 1.25).abs() < 1e-6, "{elapsed:?}");
    }

    #[test]
    fn log_seconds_is_unix_time() {
        let seconds = log_seconds("2026-12-04T00:43:55.5Z INFO enforcer: started").unwrap();
        // `date -u -d 2026-12-04T00:43:55Z +%s` prints 1796345035.
        assert!((seconds - 1_796_345_035.5).abs() < 1e-6, "{seconds}");
    }

    #[test]
    fn reconcile_time_needs_both_lines() {
        assert!(reconcile_time("2026-12-04T00:43:55Z attached XDP program\n").is_none());
    }
}
