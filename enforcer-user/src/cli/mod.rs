//! The `enforcer` command line: clap definitions and dispatch. Admin commands go through the
//! daemon's admin socket; only `run` and `detach` act locally.

mod human;
mod idp;

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{
        DeviceRef, EXIT_UNREACHABLE, ErrorCode, GrantPair, Request, Response, RevokeRequest, client,
    },
    config::{Config, DEFAULT_ADMIN_SOCKET},
};

/// Zero Trust gateway: per-packet session enforcement in XDP with OpenID Connect sign-in.
#[derive(Parser)]
#[command(name = "enforcer", version)]
pub struct Cli {
    /// Admin socket of the daemon.
    #[arg(long, global = true, env = "ENFORCER_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

/// Output format of admin commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon: attach or adopt the XDP program, reconcile the maps, serve the APIs.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "/etc/enforcer/enforcer.toml")]
        config: PathBuf,
    },
    /// Detach the XDP program and remove its pins; enforcement stops until the next `run`.
    Detach {
        /// Configuration file (TOML) that names the interface and pin folder.
        #[arg(long, short, default_value = "/etc/enforcer/enforcer.toml")]
        config: PathBuf,
    },
    /// Check a policy file without a daemon: every error with its line, exit code 2 if any.
    Check {
        /// Policy file (TOML).
        policy: PathBuf,
    },
    /// Show the interface, XDP mode, program id, counters, store and IdP state.
    Status,
    /// Manage enrolled devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// List, grant and revoke sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Show the policy's resources.
    #[command(subcommand)]
    Resource(ResourceCommand),
    /// Explain the verdict for a packet from SOURCE to DESTINATION.
    Explain(ExplainArgs),
    /// Show kernel counters and engine statistics.
    Stats,
    /// Show the latest audit log entries.
    Audit {
        /// Number of entries, newest last.
        #[arg(long, short = 'n', default_value_t = 50)]
        limit: usize,
    },
    /// Reload the policy file; an invalid file is rejected and the current policy kept.
    Reload,
    /// Check the identity provider configuration.
    #[command(subcommand)]
    Idp(IdpCommand),
    /// Print shell completions to standard output.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to standard output.
    Man,
}

#[derive(Subcommand)]
pub enum IdpCommand {
    /// Run discovery and print the configured and discovered issuer and what is wrong.
    Check {
        /// Configuration file (TOML) with the [idp] section.
        #[arg(long, short, default_value = "/etc/enforcer/enforcer.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Enroll a device with its addresses.
    Enroll {
        name: String,
        /// Address the device sends from (repeat for several).
        #[arg(long = "address", short, required = true)]
        addresses: Vec<IpAddr>,
        /// User (email or subject) who may sign in on the device; anyone when unset.
        #[arg(long)]
        owner: Option<String>,
        /// Source MAC address the device must use (Ethernet interfaces).
        #[arg(long)]
        mac: Option<String>,
    },
    /// List enrolled devices.
    List,
    /// Show a device with its last authentication and sessions.
    Show {
        /// Device id or name.
        device: DeviceRef,
    },
    /// Remove a device and revoke its sessions.
    Remove {
        /// Device id or name.
        device: DeviceRef,
    },
}

#[derive(Subcommand)]
pub enum SessionCommand {
    /// List sessions.
    List {
        /// Only this device (id or name).
        #[arg(long)]
        device: Option<DeviceRef>,
    },
    /// Grant a device sessions to one or more resources, from now. Several pairs are
    /// granted all or nothing, in one request.
    Grant {
        /// Device id or name.
        #[arg(required_unless_present = "from")]
        device: Option<DeviceRef>,
        /// Resource names, separated by commas.
        #[arg(value_delimiter = ',', required_unless_present = "from")]
        resources: Vec<String>,
        /// Read the pairs from FILE ("-" for standard input) instead: one "DEVICE RESOURCE"
        /// pair per line; blank lines and lines starting with # are skipped.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["device", "resources"])]
        from: Option<PathBuf>,
        /// Session duration, such as 30m or 8h.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
    /// Revoke sessions by device, user or resource; prints how many were removed.
    Revoke(RevokeArgs),
}

#[derive(Args)]
#[group(required = true, multiple = true)]
pub struct RevokeArgs {
    /// Device id or name.
    #[arg(long)]
    device: Option<DeviceRef>,
    /// Resource name.
    #[arg(long)]
    resource: Option<String>,
    /// User, by subject or by verified email (a subject match wins); needs --issuer.
    #[arg(long, requires = "issuer", conflicts_with_all = ["device", "resource"])]
    user: Option<String>,
    /// Issuer of --user.
    #[arg(long)]
    issuer: Option<String>,
}

#[derive(Subcommand)]
pub enum ResourceCommand {
    /// List resources with their ids, destinations and durations.
    List,
}

#[derive(Args)]
pub struct ExplainArgs {
    source: IpAddr,
    destination: IpAddr,
    /// IP protocol: tcp, udp, sctp, icmp, icmpv6 or a number.
    #[arg(long, short, default_value = "tcp")]
    protocol: String,
    /// Destination port.
    #[arg(long)]
    port: Option<u16>,
}

/// Parses the command line, sets up logging to standard error and runs the command; the
/// whole `main` of the `enforcer` binary.
pub fn entry() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match main(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("enforcer: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    let request = match cli.command {
        Command::Run { config } => return run(&config),
        Command::Detach { config } => return detach(&config),
        Command::Idp(IdpCommand::Check { config }) => return idp::check(&config, cli.output),
        Command::Check { policy } => return check(&policy, cli.output),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "enforcer",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("failed to write the man page")?;
            return Ok(ExitCode::SUCCESS);
        }
        command => match request_of(command) {
            Ok(request) => request,
            Err(err) => {
                // The request was invalid before it reached the daemon: the same exit code
                // and output shape as the daemon's own `invalid` errors.
                let message = format!("{err:#}");
                match cli.output {
                    Output::Json => println!(
                        "{}",
                        serde_json::json!({ "error": { "code": ErrorCode::Invalid, "message": message } })
                    ),
                    Output::Human => eprintln!("enforcer: {message}"),
                }
                return Ok(ExitCode::from(ErrorCode::Invalid.exit_code()));
            }
        },
    };

    let response = match client::call(&cli.socket, &request) {
        Ok(response) => response,
        Err(err) => {
            eprintln!("enforcer: {err}");
            let code = match err {
                client::ClientError::Denied { .. } => ErrorCode::Denied.exit_code(),
                _ => EXIT_UNREACHABLE,
            };
            return Ok(ExitCode::from(code));
        }
    };
    match response {
        Response::Ok { result } => {
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&result)?),
                Output::Human => print!("{}", human::render(&request, &result)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { code, message } => {
            match cli.output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "error": { "code": code, "message": message } })
                ),
                Output::Human => eprintln!("enforcer: {message}"),
            }
            Ok(ExitCode::from(code.exit_code()))
        }
    }
}

fn request_of(command: Command) -> anyhow::Result<Request> {
    Ok(match command {
        Command::Status => Request::Status,
        Command::Device(DeviceCommand::Enroll {
            name,
            addresses,
            owner,
            mac,
        }) => Request::DeviceEnroll {
            name,
            owner,
            addresses,
            mac,
        },
        Command::Device(DeviceCommand::List) => Request::DeviceList,
        Command::Device(DeviceCommand::Show { device }) => Request::DeviceShow { device },
        Command::Device(DeviceCommand::Remove { device }) => Request::DeviceRemove { device },
        Command::Session(SessionCommand::List { device }) => Request::SessionList { device },
        Command::Session(SessionCommand::Grant {
            device,
            resources,
            from,
            duration,
        }) => grant_request(device, resources, from, duration)?,
        Command::Session(SessionCommand::Revoke(args)) => Request::SessionRevoke {
            selector: revoke_selector(args)?,
        },
        Command::Resource(ResourceCommand::List) => Request::ResourceList,
        Command::Explain(args) => Request::Explain {
            source: args.source,
            destination: args.destination,
            protocol: parse_protocol(&args.protocol)?,
            port: args.port,
        },
        Command::Stats => Request::Stats,
        Command::Audit { limit } => Request::Audit { limit },
        Command::Reload => Request::Reload,
        Command::Run { .. }
        | Command::Detach { .. }
        | Command::Idp(_)
        | Command::Check { .. }
        | Command::Completions { .. }
        | Command::Man => unreachable!("handled before building a request"),
    })
}

/// Builds a single grant for one pair and a batch grant for several.
fn grant_request(
    device: Option<DeviceRef>,
    resources: Vec<String>,
    from: Option<PathBuf>,
    duration: std::time::Duration,
) -> anyhow::Result<Request> {
    let duration_secs = duration.as_secs();
    if resources.iter().any(|resource| resource.trim().is_empty()) {
        anyhow::bail!(
            "the resource list {:?} has an empty name; separate resource names with single commas, such as wiki,files",
            resources.join(",")
        );
    }
    let mut grants = match (from, device) {
        (Some(path), _) => read_grant_pairs(&path)?,
        (None, Some(device)) => resources
            .into_iter()
            .map(|resource| GrantPair {
                device: device.clone(),
                resource,
            })
            .collect(),
        (None, None) => anyhow::bail!("pass a device and resources, or --from FILE"),
    };
    if grants.len() == 1 {
        let pair = grants.remove(0);
        return Ok(Request::SessionGrant {
            device: pair.device,
            resource: pair.resource,
            duration_secs,
        });
    }
    Ok(Request::SessionGrantBatch {
        grants,
        duration_secs,
    })
}

/// Reads "DEVICE RESOURCE" lines from `path`, or from standard input for "-".
fn read_grant_pairs(path: &std::path::Path) -> anyhow::Result<Vec<GrantPair>> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("failed to read grants from stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("failed to read grants from {}", path.display()))?
    };
    let mut grants = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(device), Some(resource), None) = (fields.next(), fields.next(), fields.next())
        else {
            anyhow::bail!(
                "line {} of {} is invalid: {line:?}; expected \"DEVICE RESOURCE\"",
                index + 1,
                path.display()
            );
        };
        grants.push(GrantPair {
            device: device.parse()?,
            resource: resource.to_owned(),
        });
    }
    anyhow::ensure!(
        !grants.is_empty(),
        "{} has no grants; write one \"DEVICE RESOURCE\" pair per line",
        path.display()
    );
    Ok(grants)
}

fn revoke_selector(args: RevokeArgs) -> anyhow::Result<RevokeRequest> {
    Ok(match (args.device, args.resource, args.user, args.issuer) {
        (_, _, Some(subject), Some(issuer)) => RevokeRequest::User { issuer, subject },
        (Some(device), Some(resource), _, _) => RevokeRequest::Session { device, resource },
        (Some(device), None, _, _) => RevokeRequest::Device { device },
        (None, Some(resource), _, _) => RevokeRequest::Resource { resource },
        _ => anyhow::bail!("pass --device, --resource, or --user with --issuer"),
    })
}

fn parse_protocol(text: &str) -> anyhow::Result<u8> {
    Ok(match text {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" => 1,
        "icmpv6" => 58,
        other => other.parse().map_err(|_| {
            anyhow::anyhow!("protocol {other:?} is invalid: use tcp, udp, sctp, icmp, icmpv6 or a number from 0 to 255")
        })?,
    })
}

fn run(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let runtime = tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
    runtime.block_on(crate::daemon::run(config, CancellationToken::new()))?;
    Ok(ExitCode::SUCCESS)
}

fn check(path: &std::path::Path, output: Output) -> anyhow::Result<ExitCode> {
    let file = path.display().to_string();
    let invalid = |messages: Vec<String>| {
        // The same exit code and JSON shape as the daemon's own `invalid` errors.
        match output {
            Output::Json => println!(
                "{}",
                serde_json::json!({ "error": { "code": ErrorCode::Invalid, "message": messages.join("\n") } })
            ),
            Output::Human => {
                for message in &messages {
                    eprintln!("enforcer: {message}");
                }
            }
        }
        Ok(ExitCode::from(ErrorCode::Invalid.exit_code()))
    };
    let policy = match crate::policy::Policy::load(path) {
        Ok(policy) => policy,
        Err(err) => return invalid(vec![err.to_string()]),
    };
    // Ids only need to be distinct here; the daemon's store assigns the real ones.
    let ids = policy
        .resources
        .iter()
        .enumerate()
        .map(|(index, resource)| (resource.name.clone(), index as u32 + 1))
        .collect();
    if let Err(errors) = crate::policy::compile_prefixes(&file, &policy, &ids) {
        return invalid(errors.iter().map(ToString::to_string).collect());
    }
    let warnings = policy.warnings(&file);
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "file": file,
                "resources": policy.resources.len(),
                "devices": policy.devices.len(),
                "warnings": warnings,
            })
        ),
        Output::Human => {
            for warning in &warnings {
                eprintln!("enforcer: warning: {warning}");
            }
            println!(
                "{file} is valid: {} resource(s), {} device(s)",
                policy.resources.len(),
                policy.devices.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn detach(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let folder = config.pin_folder();
    if crate::dataplane::pins::detach(&folder)? {
        tracing::info!(interface = %config.interface, pins = %folder.display(), "detached XDP program");
        println!(
            "detached the XDP program from {} and removed {}",
            config.interface,
            folder.display()
        );
    } else {
        println!("nothing to detach: {} does not exist", folder.display());
    }
    Ok(ExitCode::SUCCESS)
}
