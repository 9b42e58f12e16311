//! Support for the privileged tests: network namespaces with unique names that are removed
//! when the guard drops (also when the test panics), veth links between them, and commands run
//! inside them.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

pub mod datapath;
pub mod lab;
pub mod oidc;
pub mod packets;

/// Prefix of every namespace the tests create, so stale ones are easy to find and remove.
pub const NETNS_PREFIX: &str = "enft-";

/// Writes a secret file that only its owner may read, as the daemon requires of secret files.
pub fn write_secret(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};

    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

/// Panics with a clear message unless the tests run as root, which namespaces and XDP need.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged tests need root (network namespaces and XDP); run them with `cargo xtask test` as root"
    );
}

/// Runs `program` with `args` and returns its output, failing when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("failed to start {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed with {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// A network namespace that is deleted, with every process started through it, on drop.
pub struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    /// Creates a namespace named `enft-<role>-<pid>-<n>` with its loopback up.
    pub fn new(role: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{NETNS_PREFIX}{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])?;
        let netns = Self {
            name,
            children: Vec::new(),
        };
        netns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Creates a namespace with exactly `name`, first removing a stale one of that name and
    /// every process left inside it (for example after a crash of a previous run).
    pub fn named(name: &str) -> anyhow::Result<Self> {
        remove_netns(name);
        run("ip", &["netns", "add", name])?;
        let netns = Self {
            name: name.to_owned(),
            children: Vec::new(),
        };
        netns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace and returns its output; fails on a non-zero exit.
    pub fn exec(&self, command: &[&str]) -> anyhow::Result<Output> {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        run("ip", &args)
    }

    /// Runs a command inside the namespace and returns its output whatever its exit status.
    pub fn try_exec(&self, command: &[&str]) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(command)
            .output()
            .with_context(|| format!("failed to run {command:?} in {}", self.name))
    }

    /// Starts a long-running command inside the namespace; it is killed when `self` drops.
    pub fn spawn(&mut self, command: &[&str]) -> anyhow::Result<&mut Child> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to spawn {command:?} in {}", self.name))?;
        self.children.push(child);
        Ok(self.children.last_mut().expect("a child was just pushed"))
    }

    /// Starts a long-running command inside the namespace with stdout and stderr appended to
    /// `log`; it is killed when `self` drops.
    pub fn spawn_logged(&mut self, command: &[&str], log: &std::path::Path) -> anyhow::Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("failed to open {}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(command)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("failed to spawn {command:?} in {}", self.name))?;
        self.children.push(child);
        Ok(())
    }

    /// Moves the calling thread into the namespace until the returned guard drops, so that
    /// interface names resolve there (for example when attaching XDP).
    pub fn enter(&self) -> anyhow::Result<NetnsEntered> {
        let original = File::open("/proc/thread-self/ns/net")
            .context("failed to open the current network namespace")?;
        let target = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("failed to open namespace {}", self.name))?;
        setns(&target)?;
        Ok(NetnsEntered { original })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_netns(&self.name);
    }
}

/// Kills every process inside namespace `name` and deletes it; does nothing if it is absent.
pub fn remove_netns(name: &str) {
    if !std::path::Path::new("/run/netns").join(name).exists() {
        return;
    }
    if let Ok(output) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            // A thread of this process may have entered the namespace; never kill ourselves.
            if pid != std::process::id() {
                // SAFETY: kill has no memory preconditions; a stale pid only yields ESRCH.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Returns the calling thread to its original namespace on drop.
pub struct NetnsEntered {
    original: File,
}

impl Drop for NetnsEntered {
    fn drop(&mut self) {
        if let Err(err) = setns(&self.original) {
            panic!("failed to return to the original network namespace: {err:#}");
        }
    }
}

/// Moves the calling thread into the network namespace opened as `namespace`.
pub fn setns(namespace: &File) -> anyhow::Result<()> {
    // SAFETY: the descriptor is a valid, open namespace file for the duration of the call.
    let result = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).context("setns failed");
    }
    Ok(())
}

/// Connects `a` and `b` with a veth pair named `a_if` (in `a`) and `b_if` (in `b`), both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    run(
        "ip",
        &[
            "-n",
            a.name(),
            "link",
            "add",
            a_if,
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    )?;
    a.exec(&["ip", "link", "set", a_if, "up"])?;
    b.exec(&["ip", "link", "set", b_if, "up"])?;
    Ok(())
}

/// Assigns `address` (with prefix length) to `interface` in `netns`.
pub fn address(netns: &Netns, interface: &str, address: &str) -> anyhow::Result<()> {
    let mut command = vec!["ip", "addr", "add", address, "dev", interface];
    if address.contains(':') {
        // Duplicate address detection would delay IPv6 traffic by about a second.
        command.push("nodad");
    }
    netns.exec(&command)?;
    Ok(())
}
