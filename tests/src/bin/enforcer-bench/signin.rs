//! Time from the identity provider's callback reaching the portal to the first packet of the
//! signed-in device that passes.
//!
//! A client and a gateway namespace are joined by a veth pair. The test IdP (`oidc-provider`)
//! and the daemon's portal listen on the gateway's address, and headless chromium signs alice
//! in from the client namespace, so the portal gets requests from the device's own address.
//! The daemon logs the callback's arrival at debug level with a microsecond timestamp.
//! Meanwhile a thread runs the device's TCP SYN through the daemon's pinned program with `BPF_PROG_TEST_RUN` and
//! records the wall time of the first pass. Between sign-ins the session is revoked.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use enforcer::admin::{DeviceRef, Request, Response, RevokeRequest, client};
use enforcer_tests::{
    Netns, address,
    oidc::{self, Browser},
    veth,
};

use crate::{
    control::log_seconds,
    measure::XDP_PASS,
    packets::{Framing, TcpSyn},
    variants::REPEAT_MODE_MAC,
};

const GATEWAY_ADDRESS: &str = "192.0.2.1";
const DEVICE_ADDRESS: &str = "192.0.2.2";
const PORTAL: &str = "192.0.2.1:8080";
const RESOURCE_PORT: u16 = 22;
/// Maximum wait for the first passing packet after a callback.
const MAX_PROBE_TIME: Duration = Duration::from_secs(30);
/// Maximum wait for the daemon's admin socket at start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Measured sign-ins: each the time from the callback log line to the first passing packet.
#[derive(Clone, Debug)]
pub struct SignInFigures {
    pub samples: Vec<Duration>,
}

impl SignInFigures {
    pub fn median(&self) -> Option<Duration> {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied()
    }
}

/// Signs alice in `sign_ins` times through the daemon `enforcer` and the test IdP.
pub fn measure(enforcer: &Path, sign_ins: usize) -> anyhow::Result<SignInFigures> {
    let lab = Lab::new()?;
    let redirect = format!("http://{PORTAL}/callback");
    let idp = {
        // Processes spawned while this thread is in the namespace stay in it.
        let _inside = lab.gateway.enter()?;
        oidc::start_provider_on(GATEWAY_ADDRESS, 0, std::slice::from_ref(&redirect))
            .context("failed to start the test IdP")?
    };
    enforcer_tests::write_secret(&lab.dir.join("client-secret"), oidc::CLIENT_SECRET)?;
    fs::write(lab.dir.join("policy.toml"), POLICY)?;
    fs::write(
        lab.dir.join("enforcer.toml"),
        lab.config(&idp.issuer, &redirect),
    )?;
    let mut daemon = lab.spawn(enforcer)?;
    lab.wait_ready(&mut daemon)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start a tokio runtime")?;
    let samples = {
        let _inside = lab.client.enter()?;
        runtime.block_on(sign_in_repeatedly(&lab, &idp.issuer, sign_ins))?
    };
    drop(daemon);
    Ok(SignInFigures { samples })
}

async fn sign_in_repeatedly(
    lab: &Lab,
    issuer: &str,
    sign_ins: usize,
) -> anyhow::Result<Vec<Duration>> {
    let browser = Browser::start().await.context("failed to start chromium")?;
    let mut samples = Vec::with_capacity(sign_ins);
    for round in 0..sign_ins {
        if round > 0 {
            revoke(&lab.socket())?;
        }
        let callbacks_before = lab.callbacks().len();
        let prober = Prober::start(&lab.program_path())?;

        // The daemon discovers the IdP in the background, so the first sign-in may need a
        // few tries of the portal page: at most 50, 200 ms apart.
        for _ in 0..50 {
            browser.goto(&format!("http://{PORTAL}/login")).await?;
            if browser.current_url().await?.starts_with(issuer) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        browser
            .wait_for_url(&format!("{issuer}/interaction/"))
            .await
            .context("the browser did not reach the IdP's login form")?;
        browser.sign_in("alice", None).await?;
        browser
            .wait_for_url(&format!("http://{PORTAL}/callback"))
            .await
            .context("the IdP did not redirect back to the portal")?;

        let passed_at = prober.wait()?;
        let callbacks = lab.callbacks();
        let Some(callback_at) = callbacks.get(callbacks_before) else {
            bail!(
                "the daemon logged no callback for sign-in {round}:\n{}",
                lab.log()
            );
        };
        let elapsed = passed_at - callback_at;
        if elapsed < 0.0 {
            bail!("the first pass came {:.6} s before the callback", -elapsed);
        }
        samples.push(Duration::from_secs_f64(elapsed));
    }
    Ok(samples)
}

fn revoke(socket: &Path) -> anyhow::Result<()> {
    let request = Request::SessionRevoke {
        selector: RevokeRequest::Device {
            device: DeviceRef::Name("laptop".to_owned()),
        },
    };
    match client::call(socket, &request)? {
        Response::Ok { .. } => Ok(()),
        Response::Error { message, .. } => bail!("the revocation failed: {message}"),
    }
}

/// A thread that runs the device's frame through the pinned program until it passes.
struct Prober {
    handle: thread::JoinHandle<anyhow::Result<f64>>,
    stop: Arc<AtomicBool>,
}

impl Prober {
    fn start(program_path: &Path) -> anyhow::Result<Self> {
        let program = Xdp::from_pin(program_path, XdpAttachType::Interface).with_context(|| {
            format!(
                "failed to open the daemon's program at {}",
                program_path.display()
            )
        })?;
        let frame = TcpSyn {
            src: DEVICE_ADDRESS.parse()?,
            dst: GATEWAY_ADDRESS.parse()?,
            src_port: 40000,
            dst_port: RESOURCE_PORT,
            framing: Framing::Untagged,
            dst_mac: REPEAT_MODE_MAC,
        }
        .frame();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let handle = thread::spawn(move || -> anyhow::Result<f64> {
            let started = Instant::now();
            while !stop_flag.load(Ordering::Relaxed) && started.elapsed() < MAX_PROBE_TIME * 2 {
                let verdict = program
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        repeat: 1,
                        ..Default::default()
                    })
                    .context("test run of the daemon's program failed")?
                    .return_value;
                if verdict == XDP_PASS {
                    return Ok(unix_seconds(SystemTime::now()));
                }
            }
            bail!("the device's frame did not pass within the probe time")
        });
        Ok(Self { handle, stop })
    }

    /// Waits for the first pass, at most `MAX_PROBE_TIME`, and returns its wall time in
    /// Unix seconds.
    fn wait(self) -> anyhow::Result<f64> {
        let deadline = Instant::now() + MAX_PROBE_TIME;
        while !self.handle.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
    }
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// Policy with one TCP resource on the gateway for alice's laptop.
const POLICY: &str = r#"
[[resource]]
name = "gateway-ssh"
destinations = [{ prefix = "192.0.2.1/32", protocol = "tcp", ports = 22 }]
session = "1h"
users = ["alice@example.com"]
on_expiry = "drop"

[[device]]
name = "laptop"
owner = "alice@example.com"
addresses = ["192.0.2.2"]
"#;

/// The namespaces, files and pin folder of the run; removed on drop.
struct Lab {
    // The namespaces drop last, after every process in them has stopped.
    dir: PathBuf,
    pin_root: PathBuf,
    client: Netns,
    gateway: Netns,
}

impl Lab {
    fn new() -> anyhow::Result<Self> {
        let client = Netns::new("bench-si-client")?;
        let gateway = Netns::new("bench-si-gw")?;
        veth(&client, "c0", &gateway, "g0")?;
        address(&client, "c0", &format!("{DEVICE_ADDRESS}/24"))?;
        address(&gateway, "g0", &format!("{GATEWAY_ADDRESS}/24"))?;
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("enforcer-bench-signin-{id}"));
        fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        Ok(Self {
            dir,
            pin_root: PathBuf::from(format!("/sys/fs/bpf/enforcer-bench-signin-{id}")),
            client,
            gateway,
        })
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    fn program_path(&self) -> PathBuf {
        self.pin_root.join("g0").join("program")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Returns the wall times, in Unix seconds, of every callback the daemon logged.
    fn callbacks(&self) -> Vec<f64> {
        self.log()
            .lines()
            .filter(|line| line.contains("sign-in callback received"))
            .filter_map(log_seconds)
            .collect()
    }

    fn config(&self, issuer: &str, redirect: &str) -> String {
        format!(
            "interface = \"g0\"\nxdp_mode = \"skb\"\npin_root = \"{pins}\"\n\
             policy = \"policy.toml\"\n[store]\npath = \"state.redb\"\n\
             [admin]\nsocket = \"admin.sock\"\n[portal]\nlisten = \"{PORTAL}\"\n\
             [idp]\nissuer = {issuer:?}\nclient_id = {client_id:?}\n\
             client_secret_file = \"client-secret\"\nredirect_url = {redirect:?}\n\
             scopes = [\"openid\", \"email\", \"groups\"]\n",
            pins = self.pin_root.display(),
            client_id = oidc::CLIENT_ID,
        )
    }

    fn spawn(&self, enforcer: &Path) -> anyhow::Result<Daemon> {
        let log = fs::File::create(self.log_path()).context("failed to create the daemon log")?;
        // nsenter switches only the network namespace; `ip netns exec` would also remount
        // /sys, which hides the bpffs mount at /sys/fs/bpf.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.gateway.name()))
            .arg(enforcer)
            .args(["run", "--config"])
            .arg(self.dir.join("enforcer.toml"))
            .env("RUST_LOG", "info,enforcer::portal=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("failed to share the daemon log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("failed to start {} run", enforcer.display()))?;
        Ok(Daemon(child))
    }

    fn wait_ready(&self, daemon: &mut Daemon) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if matches!(
                client::call(&self.socket(), &Request::Status),
                Ok(Response::Ok { .. })
            ) {
                return Ok(());
            }
            if let Some(status) = daemon.0.try_wait()? {
                bail!("the daemon exited with {status}:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("the daemon did not reply within 60 s:\n{}", self.log())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.pin_root);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The daemon process; killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
