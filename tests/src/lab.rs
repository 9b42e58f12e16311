//! The lab: a client namespace (a user's device), a gateway namespace that forwards between
//! the client and the resources, and a resource namespace with real services. The
//! `enforcer-lab` binary and the lab scenario test build it through this module.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::XdpMode;
use enforcer::dataplane::Dataplane;

use crate::{
    Netns, address,
    oidc::{ACR_MFA, Browser, CLIENT_ID, CLIENT_SECRET, NodeServer, start_provider_on},
    veth,
};

/// Client-facing interface of the gateway, where the XDP program is attached.
pub const GATEWAY_CLIENT_IF: &str = "gw-client";
pub const GATEWAY_RESOURCE_IF: &str = "gw-res";
pub const CLIENT_IF: &str = "lab0";
pub const RESOURCE_IF: &str = "res0";

pub const CLIENT_V4: &str = "192.0.2.10";
pub const CLIENT_V6: &str = "2001:db8:1::10";
/// Gateway address on the client side: the portal and the identity provider listen here.
pub const GATEWAY_V4: &str = "192.0.2.1";
pub const GATEWAY_V6: &str = "2001:db8:1::1";
pub const GATEWAY_RESOURCE_SIDE_V4: &str = "198.51.100.1";
pub const GATEWAY_RESOURCE_SIDE_V6: &str = "2001:db8:2::1";
/// Secret that signs the lab's webhook deliveries.
pub const WEBHOOK_SECRET: &str = "lab-webhook-secret-0123456789abcdef";

/// One protected service host in the resource namespace.
pub struct ResourceHost {
    pub name: &'static str,
    pub v4: &'static str,
    pub v6: &'static str,
}

/// The resource hosts; the example policy protects each with its own session duration.
pub const RESOURCE_HOSTS: [ResourceHost; 3] = [
    ResourceHost {
        name: "wiki",
        v4: "198.51.100.10",
        v6: "2001:db8:2::10",
    },
    ResourceHost {
        name: "files",
        v4: "198.51.100.20",
        v6: "2001:db8:2::20",
    },
    ResourceHost {
        name: "admin",
        v4: "198.51.100.30",
        v6: "2001:db8:2::30",
    },
];

/// TCP and UDP port of the echo services on every resource host.
pub const ECHO_PORT: u16 = 7;
/// Port of the HTTP server on every resource host.
pub const HTTP_PORT: u16 = 80;

/// The three namespaces, wired and addressed, with forwarding on in the gateway.
pub struct Topology {
    pub client: Netns,
    pub gateway: Netns,
    pub resource: Netns,
}

impl Topology {
    /// Builds the namespaces `<prefix>client`, `<prefix>gw` and `<prefix>res`, replacing any
    /// left over from an earlier run with the same prefix.
    pub fn build(prefix: &str) -> anyhow::Result<Self> {
        let client = Netns::named(&format!("{prefix}client"))?;
        let gateway = Netns::named(&format!("{prefix}gw"))?;
        let resource = Netns::named(&format!("{prefix}res"))?;
        veth(&client, CLIENT_IF, &gateway, GATEWAY_CLIENT_IF)?;
        veth(&gateway, GATEWAY_RESOURCE_IF, &resource, RESOURCE_IF)?;

        address(&client, CLIENT_IF, &format!("{CLIENT_V4}/24"))?;
        address(&client, CLIENT_IF, &format!("{CLIENT_V6}/64"))?;
        address(&gateway, GATEWAY_CLIENT_IF, &format!("{GATEWAY_V4}/24"))?;
        address(&gateway, GATEWAY_CLIENT_IF, &format!("{GATEWAY_V6}/64"))?;
        address(
            &gateway,
            GATEWAY_RESOURCE_IF,
            &format!("{GATEWAY_RESOURCE_SIDE_V4}/24"),
        )?;
        address(
            &gateway,
            GATEWAY_RESOURCE_IF,
            &format!("{GATEWAY_RESOURCE_SIDE_V6}/64"),
        )?;
        for host in &RESOURCE_HOSTS {
            address(&resource, RESOURCE_IF, &format!("{}/24", host.v4))?;
            address(&resource, RESOURCE_IF, &format!("{}/64", host.v6))?;
        }

        // Routes name only the lab's own prefixes; no namespace gets a default route.
        client.exec(&["ip", "route", "add", "198.51.100.0/24", "via", GATEWAY_V4])?;
        client.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "2001:db8:2::/64",
            "via",
            GATEWAY_V6,
        ])?;
        resource.exec(&[
            "ip",
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            GATEWAY_RESOURCE_SIDE_V4,
        ])?;
        resource.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "2001:db8:1::/64",
            "via",
            GATEWAY_RESOURCE_SIDE_V6,
        ])?;
        gateway.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        gateway.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;

        Ok(Self {
            client,
            gateway,
            resource,
        })
    }

    /// Starts an HTTP server and TCP and UDP echo services on every resource host. `lab_binary`
    /// is the `enforcer-lab` binary, whose `echo` subcommand serves the echo ports. Each
    /// service logs to `<state_dir>/services/`, so tests can see what reached the resource.
    pub fn start_services(&mut self, lab_binary: &Path, state_dir: &Path) -> anyhow::Result<()> {
        let logs = state_dir.join("services");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("failed to create {}", logs.display()))?;
        for host in &RESOURCE_HOSTS {
            let folder = state_dir.join("web").join(host.name);
            std::fs::create_dir_all(&folder)
                .with_context(|| format!("failed to create {}", folder.display()))?;
            let page = format!("resource {} reached\n", host.name);
            std::fs::write(folder.join("index.html"), page)
                .with_context(|| format!("failed to write {}", folder.display()))?;

            for bind in [host.v4, host.v6] {
                let folder = folder.to_string_lossy().into_owned();
                let port = HTTP_PORT.to_string();
                self.resource.spawn_logged(
                    &[
                        "python3",
                        "-m",
                        "http.server",
                        "--bind",
                        bind,
                        "--directory",
                        &folder,
                        &port,
                    ],
                    &logs.join(format!("http-{bind}.log")),
                )?;
                let echo = format!("{}", SocketText(bind, ECHO_PORT));
                self.resource.spawn_logged(
                    &[&lab_binary.to_string_lossy(), "echo", "--listen", &echo],
                    &echo_log(state_dir, bind),
                )?;
            }
        }
        Ok(())
    }
}

/// Log of the echo service on `bind`: one line per TCP connection, TCP read and UDP datagram.
pub fn echo_log(state_dir: &Path, bind: &str) -> PathBuf {
    state_dir.join("services").join(format!("echo-{bind}.log"))
}

/// Formats an address and port as `addr:port`, bracketing IPv6.
struct SocketText<'a>(&'a str, u16);

impl std::fmt::Display for SocketText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => write!(f, "[{}]:{}", self.0, self.1),
            _ => write!(f, "{}:{}", self.0, self.1),
        }
    }
}

/// Port of the portal on the gateway's client-side address.
pub const PORTAL_PORT: u16 = 8080;
/// Port of the identity provider on the gateway's client-side address.
pub const IDP_PORT: u16 = 9000;

/// Where a lab keeps its files and which namespaces and pins it owns.
pub struct LabOptions {
    /// Prefix of the three namespace names.
    pub prefix: String,
    /// Folder for the generated config, the policy copy, the store, the web root and logs.
    pub state_dir: PathBuf,
    /// bpffs folder for the program's pins.
    pub pin_root: PathBuf,
    /// Policy file copied into the state folder.
    pub policy: PathBuf,
    /// The `enforcer` binary.
    pub enforcer: PathBuf,
    /// The `enforcer-lab` binary, which serves the echo ports.
    pub lab_binary: PathBuf,
    /// URL, as the gateway namespace reaches it, that receives the responder's webhook.
    pub webhook_url: Option<String>,
    /// Minimum time between two notifications for one device; the daemon's default if `None`.
    pub notify_interval_secs: Option<u64>,
}

/// A running lab: namespaces, services, the identity provider and `enforcer run` on the
/// gateway. Dropping it stops every process and removes the namespaces, pins and state folder.
pub struct Lab {
    pub topology: Topology,
    pub idp: NodeServer,
    daemon: Option<Child>,
    /// Pass-everything XDP program on the client's veth; see `Lab::start`.
    _client_xdp: Dataplane,
    pub options: LabOptions,
}

impl Lab {
    /// Removes what an earlier lab with these options left behind, then builds and starts a
    /// new one, returning once the daemon responds on its admin socket.
    pub fn start(options: LabOptions) -> anyhow::Result<Self> {
        remove_dir(&options.pin_root);
        remove_dir(&options.state_dir);
        std::fs::create_dir_all(&options.state_dir)
            .with_context(|| format!("failed to create {}", options.state_dir.display()))?;

        let mut topology = Topology::build(&options.prefix)?;
        topology.start_services(&options.lab_binary, &options.state_dir)?;

        let idp = {
            // The provider must listen in the gateway namespace, where the client reaches it.
            let _inside = topology.gateway.enter()?;
            start_provider_on(GATEWAY_V4, IDP_PORT, &[portal_url("/callback")])?
        };

        // A native XDP_TX on a veth (the gateway's resets and ICMP errors) reaches the peer
        // only when the peer runs native XDP too. The enforcer program with empty maps passes
        // every packet, so it provides that on the client's side without changing traffic.
        let mut client_xdp = Dataplane::load().context("failed to load the client's XDP")?;
        {
            let _inside = topology.client.enter()?;
            client_xdp
                .attach(CLIENT_IF, XdpMode::Driver)
                .context("failed to attach XDP to the client's veth")?;
        }

        let mut lab = Self {
            topology,
            idp,
            daemon: None,
            _client_xdp: client_xdp,
            options,
        };
        lab.write_config()?;
        lab.start_daemon()?;
        Ok(lab)
    }

    /// Admin socket of the lab's daemon.
    pub fn socket(&self) -> PathBuf {
        self.options.state_dir.join("admin.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.options.state_dir.join("enforcer.toml")
    }

    /// Log file of the lab's daemon (stdout and stderr).
    pub fn daemon_log(&self) -> PathBuf {
        self.options.state_dir.join("enforcer.log")
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let dir = &self.options.state_dir;
        std::fs::copy(&self.options.policy, dir.join("policy.toml")).with_context(|| {
            format!(
                "failed to copy the policy {}",
                self.options.policy.display()
            )
        })?;
        crate::write_secret(&dir.join("client-secret"), CLIENT_SECRET)
            .context("failed to write the client secret")?;
        crate::write_secret(&dir.join("webhook-secret"), WEBHOOK_SECRET)
            .context("failed to write the webhook secret")?;
        let config = format!(
            r#"# Generated by the enforcer lab.
interface = "{GATEWAY_CLIENT_IF}"
link_kind = "ethernet"
xdp_mode = "auto"
pin_root = "{pin_root}"
policy = "policy.toml"

[store]
path = "state.redb"

[admin]
socket = "admin.sock"

[portal]
listen = "{GATEWAY_V4}:{PORTAL_PORT}"

[metrics]
listen = "127.0.0.1:9464"

[idp]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret_file = "client-secret"
redirect_url = "{redirect}"
scopes = ["openid", "email", "groups"]
mfa_acr_values = ["{ACR_MFA}"]

[responder]
portal_url = "{portal}"
{notify}
{webhook}"#,
            pin_root = self.options.pin_root.display(),
            issuer = self.idp.issuer,
            redirect = portal_url("/callback"),
            portal = portal_url("/"),
            notify = match self.options.notify_interval_secs {
                Some(secs) => format!("notify_interval_secs = {secs}"),
                None => String::new(),
            },
            webhook = match &self.options.webhook_url {
                Some(url) => format!(
                    "\n[responder.webhook]\nurl = \"{url}\"\nsecret_file = \"webhook-secret\"\n"
                ),
                None => String::new(),
            },
        );
        std::fs::write(self.config_path(), config).context("failed to write the lab config")
    }

    /// Starts `enforcer run` in the gateway namespace and waits for its admin socket.
    pub fn start_daemon(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log())
            .context("failed to open the daemon log")?;
        // nsenter changes only the network namespace; `ip netns exec` would also remount /sys
        // and hide the bpffs mount the pins live on.
        let netns = format!("--net=/run/netns/{}", self.topology.gateway.name());
        let child = Command::new("nsenter")
            .arg(netns)
            .arg(&self.options.enforcer)
            .args(["run", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("failed to start enforcer run")?;
        self.daemon = Some(child);

        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self
                .daemon
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                bail!(
                    "enforcer run exited with {status}; its log ends with:\n{}",
                    self.daemon_log_tail()
                );
            }
            if self
                .enforcer(&["status"])
                .is_ok_and(|output| output.status.success())
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "enforcer run did not answer on {} within 30 s; its log ends with:\n{}",
            self.socket().display(),
            self.daemon_log_tail()
        )
    }

    /// Returns the last 30 lines of the daemon log, for error messages.
    pub fn daemon_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.daemon_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Returns the daemon's exit status once, the first time it is seen to have exited.
    pub fn daemon_exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.daemon.as_mut()?.try_wait().ok().flatten()?;
        self.daemon = None;
        Some(status)
    }

    /// Stops the daemon with `signal` and waits for it; the pinned program keeps enforcing.
    pub fn stop_daemon(&mut self, signal: libc::c_int) -> anyhow::Result<()> {
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: kill has no memory preconditions; the pid is our own child's.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            child.wait().context("failed to wait for enforcer run")?;
        }
        Ok(())
    }

    /// Runs the admin CLI against the lab's daemon and returns its output.
    pub fn enforcer(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(&self.options.enforcer)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .context("failed to run the enforcer CLI")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.stop_daemon(libc::SIGTERM);
        let _ = Command::new(&self.options.enforcer)
            .args(["detach", "--config"])
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        remove_dir(&self.options.pin_root);
        remove_dir(&self.options.state_dir);
    }
}

/// URL of `path` on the lab's portal, as the client reaches it.
pub fn portal_url(path: &str) -> String {
    format!("http://{GATEWAY_V4}:{PORTAL_PORT}{path}")
}

fn remove_dir(path: &Path) {
    if path.exists() {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Signs `login` in through the portal with headless chromium started inside namespace
/// `client_netns`, and returns the text of the page the portal shows afterwards.
pub fn browser_sign_in(
    client_netns: &str,
    login: &str,
    otp: Option<&str>,
) -> anyhow::Result<String> {
    let login = login.to_owned();
    let otp = otp.map(str::to_owned);
    with_browser_in(client_netns, move |browser| {
        Box::pin(async move {
            browser.goto(&portal_url("/")).await?;
            browser.click("#sign-in").await?;
            browser
                .wait_for_url(&format!("http://{GATEWAY_V4}:{IDP_PORT}/interaction/"))
                .await?;
            browser.sign_in(&login, otp.as_deref()).await?;
            browser.wait_for_url(&portal_url("/callback")).await?;
            browser.body_text().await
        })
    })
}

/// Approves the device code `user_code` as `login` with headless chromium started inside
/// namespace `client_netns`, as a user does on a second device.
pub fn browser_approve_device_code(
    client_netns: &str,
    user_code: &str,
    login: &str,
    otp: Option<&str>,
) -> anyhow::Result<()> {
    let issuer = format!("http://{GATEWAY_V4}:{IDP_PORT}");
    let url = format!("{issuer}/device?user_code={user_code}");
    let login = login.to_owned();
    let otp = otp.map(str::to_owned);
    with_browser_in(client_netns, move |browser| {
        Box::pin(async move {
            browser
                .approve_device_code(&url, &issuer, &login, otp.as_deref())
                .await
        })
    })
}

type BrowserTask<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>> + 'a>>;

/// Runs `task` with a headless chromium inside namespace `client_netns`. A fresh thread
/// enters the namespace, so chromedriver, chromium and every socket of the driver's runtime
/// live in it.
fn with_browser_in<T: Send + 'static>(
    client_netns: &str,
    task: impl for<'a> FnOnce(&'a Browser) -> BrowserTask<'a, T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = PathBuf::from("/run/netns").join(client_netns);
    let target = std::fs::File::open(&path)
        .with_context(|| format!("namespace {client_netns} is missing; is the lab up?"))?;
    std::thread::spawn(move || -> anyhow::Result<T> {
        crate::setns(&target)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to build the browser runtime")?;
        runtime.block_on(async {
            let browser = Browser::start().await?;
            task(&browser).await
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the browser thread panicked"))?
}
