//! `enforcer-lab`: brings up the lab (client, gateway and resource namespaces, real services, a
//! real identity provider and `enforcer run` on the gateway), prints what to try, and removes
//! everything on Ctrl-C. It also serves the lab's TCP and UDP echo ports.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use enforcer_tests::{
    lab::{self, Lab, LabOptions},
    remove_netns,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
    signal::unix::{SignalKind, signal},
};

/// Namespace prefix of the interactive lab; the printed commands use these names.
const PREFIX: &str = "enforcer-lab-";
const STATE_DIR: &str = "/run/enforcer-lab";
const PIN_ROOT: &str = "/sys/fs/bpf/enforcer-lab";

#[derive(Parser)]
#[command(about = "The enforcer lab: a gateway enforcing real traffic in network namespaces")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring up the lab, print what to try, and remove everything on Ctrl-C.
    Up {
        /// Policy file for the gateway.
        #[arg(long, default_value_os_t = default_policy())]
        policy: PathBuf,
    },
    /// Remove what a crashed lab left behind: namespaces, processes, pins and files.
    Down,
    /// Sign in from the client namespace with headless chromium through the portal.
    Signin {
        /// Account at the lab's identity provider: alice, bob or carol.
        #[arg(default_value = "alice")]
        login: String,
        /// Enter the one-time code too, as the step-up resource requires.
        #[arg(long)]
        otp: bool,
    },
    /// Approve a device code from the portal's device sign-in with headless chromium in the
    /// client namespace, as the user would on a phone.
    Approve {
        /// The user code the portal printed, such as ABCD-EFGH.
        code: String,
        /// Account at the lab's identity provider: alice, bob or carol.
        #[arg(long, default_value = "alice")]
        login: String,
        /// Enter the one-time code too, as the step-up resource requires.
        #[arg(long)]
        otp: bool,
    },
    /// Serve TCP and UDP echo on one address and port until killed.
    Echo {
        /// Address and port to listen on, for example 198.51.100.10:7.
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up { policy } => up(policy).await,
        Command::Down => {
            down();
            Ok(())
        }
        Command::Signin { login, otp } => signin(login, otp).await,
        Command::Approve { code, login, otp } => approve(code, login, otp).await,
        Command::Echo { listen } => echo(listen).await,
    }
}

fn default_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab/policy.toml")
}

/// Returns the path of a binary built next to this one.
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("failed to find the enforcer-lab binary")?;
    let path = me.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing; build the workspace first with `cargo build`",
        path.display()
    );
    Ok(path)
}

fn down() {
    for role in ["client", "gw", "res"] {
        remove_netns(&format!("{PREFIX}{role}"));
    }
    let _ = std::fs::remove_dir_all(PIN_ROOT);
    let _ = std::fs::remove_dir_all(STATE_DIR);
    for role in ["idp", "chromium"] {
        enforcer_tests::oidc::TempDir::remove_stale(role);
    }
}

async fn up(policy: PathBuf) -> anyhow::Result<()> {
    let options = LabOptions {
        prefix: PREFIX.to_owned(),
        state_dir: PathBuf::from(STATE_DIR),
        pin_root: PathBuf::from(PIN_ROOT),
        policy,
        enforcer: sibling_binary("enforcer")?,
        lab_binary: std::env::current_exe().context("failed to find the enforcer-lab binary")?,
        webhook_url: None,
        notify_interval_secs: None,
    };
    down();
    let lab = tokio::task::spawn_blocking(move || Lab::start(options))
        .await
        .context("the lab start task failed")??;
    print_guide(&lab);

    let mut terminate = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    // A closed terminal stops the lab like Ctrl-C does, instead of leaving it behind.
    let mut hangup = signal(SignalKind::hangup()).context("failed to watch SIGHUP")?;
    let mut lab = lab;
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => break,
            _ = ticker.tick() => {
                if let Some(status) = lab.daemon_exited() {
                    say(&format!(
                        "\nenforcer run exited with {status}; the pinned program keeps enforcing. Its log ends with:\n{}\nPress Ctrl-C to remove the lab.",
                        lab.daemon_log_tail()
                    ));
                }
            }
        }
    }
    say("\nstopping the lab and removing its namespaces, pins and files");
    tokio::task::spawn_blocking(move || drop(lab))
        .await
        .context("the lab stop task failed")?;
    Ok(())
}

/// Prints a line, ignoring a closed output (a terminal that went away, or `tee` stopped by
/// the same Ctrl-C), so that the lab still removes what it created.
fn say(text: &str) {
    let _ = writeln!(std::io::stdout(), "{text}");
}

fn print_guide(lab: &Lab) {
    let client = lab.topology.client.name();
    let socket = lab.socket();
    let me = std::env::current_exe()
        .map(|path| path.display().to_string())
        .unwrap_or_default();
    let wiki = lab::RESOURCE_HOSTS[0].v4;
    let files = lab::RESOURCE_HOSTS[1].v4;
    let admin = lab::RESOURCE_HOSTS[2].v4;
    let portal = lab::portal_url("/");
    let issuer = &lab.idp.issuer;
    println!(
        r#"
The lab is up: {client} is alice's laptop, the gateway enforces on gw-client, and
wiki ({wiki}, 1 minute sessions), files ({files}, 8 hours) and admin ({admin}, needs the
one-time code) serve HTTP on port 80 and TCP and UDP echo on port 7.
Identity provider: {issuer}, accounts alice, bob and carol, password "correct horse",
one-time code 424242. Daemon log: {log}

Try, as root in another terminal:
  export ENFORCER_SOCKET={socket}

  # 1. Without a session the gateway resets the connection; the portal lists the prompt.
  ip netns exec {client} curl -sS --max-time 3 http://{wiki}/
  ip netns exec {client} curl -sS {portal}

  # 2. Sign in, with a real browser in the client namespace...
  {me} signin alice
  #    ...or with the device code, from curl, approved as on a phone with the printed code:
  ip netns exec {client} curl -sS -X POST {portal}device
  {me} approve CODE
  ip netns exec {client} curl -sS {portal}device

  # 3. The same requests now pass, over TCP and UDP:
  ip netns exec {client} curl -sS http://{wiki}/
  ip netns exec {client} sh -c 'echo hello | nc -N {files} 7'
  ip netns exec {client} sh -c 'echo hello | nc -u -w 1 {files} 7'

  # 4. Inspect and revoke:
  {enforcer} session list
  {enforcer} explain 192.0.2.10 {wiki} --protocol tcp --port 80
  {enforcer} session revoke --user alice --issuer {issuer}

  # 5. The step-up resource opens only after a sign-in with the one-time code:
  {me} signin alice --otp
  ip netns exec {client} curl -sS --max-time 3 http://{admin}/

  # 6. Stop the daemon: the pinned program keeps enforcing. A restarted daemon adopts it
  #    (nsenter, because `ip netns exec` remounts /sys and hides the bpffs pins):
  pkill -TERM -f 'enforcer run --config {config}'
  nsenter --net=/run/netns/{gateway} {enforcer} run --config {config} &

Wait a minute after signing in: wiki expires and resets, files still passes.
Press Ctrl-C to stop the lab and remove everything it created."#,
        log = lab.daemon_log().display(),
        socket = socket.display(),
        enforcer = lab.options.enforcer.display(),
        config = lab.config_path().display(),
        gateway = lab.topology.gateway.name(),
    );
}

async fn signin(login: String, otp: bool) -> anyhow::Result<()> {
    let client = format!("{PREFIX}client");
    let body = tokio::task::spawn_blocking(move || {
        lab::browser_sign_in(&client, &login, otp.then_some(enforcer_tests::oidc::OTP))
    })
    .await
    .context("the sign-in task failed")??;
    println!("{body}");
    Ok(())
}

async fn approve(code: String, login: String, otp: bool) -> anyhow::Result<()> {
    let client = format!("{PREFIX}client");
    tokio::task::spawn_blocking(move || {
        lab::browser_approve_device_code(
            &client,
            &code,
            &login,
            otp.then_some(enforcer_tests::oidc::OTP),
        )
    })
    .await
    .context("the approval task failed")??;
    say(&format!(
        "approved the code; the portal finishes the sign-in at its next poll: ip netns exec {PREFIX}client curl -sS {}device",
        lab::portal_url("/")
    ));
    Ok(())
}

/// Writes one line of the echo log to stdout and flushes it at once, because stdout is a
/// file here and Rust buffers it.
fn echo_log(line: String) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

async fn echo(listen: SocketAddr) -> anyhow::Result<()> {
    let tcp = TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to listen on TCP {listen}"))?;
    let udp = UdpSocket::bind(listen)
        .await
        .with_context(|| format!("failed to listen on UDP {listen}"))?;

    let udp_task = tokio::spawn(async move {
        let mut buffer = vec![0u8; 65536];
        loop {
            let Ok((length, peer)) = udp.recv_from(&mut buffer).await else {
                continue;
            };
            echo_log(format!("udp {peer} {length} bytes"));
            let _ = udp.send_to(&buffer[..length], peer).await;
        }
    });

    loop {
        let (mut stream, peer) = tcp
            .accept()
            .await
            .context("failed to accept a TCP connection")?;
        echo_log(format!("tcp {peer} connected"));
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 16384];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) => break,
                    Err(err) => {
                        echo_log(format!("tcp {peer} failed: {err}"));
                        break;
                    }
                    Ok(length) => {
                        echo_log(format!("tcp {peer} {length} bytes"));
                        if stream.write_all(&buffer[..length]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            echo_log(format!("tcp {peer} closed"));
        });
        if udp_task.is_finished() {
            anyhow::bail!("the UDP echo task stopped");
        }
    }
}
