//! Project tasks: `cargo xtask test` runs the whole suite, `cargo xtask lab` brings up the lab
//! gateway, `cargo xtask bench` measures the data path. Each one first runs `scripts/setup.sh`,
//! so it works on a bare machine.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "enforcer project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install prerequisites (idempotent): Debian packages, bpf-linker, npm packages.
    Setup,
    /// Run rustfmt and clippy checks, the unit tests and the privileged tests.
    Test {
        /// Extra arguments passed to `cargo test`, for example a test name filter.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Bring up the lab: client, gateway and resource namespaces with a real identity provider.
    Lab {
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks and write the benchmark page.
    Bench {
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup(&root),
        Task::Test { args } => {
            setup(&root)?;
            test(&root, &args)
        }
        Task::Lab { args } => {
            setup(&root)?;
            // The lab runs in place of this process, so that Ctrl-C reaches only the lab, which
            // removes what it created before the shell gets its prompt back.
            let error = Command::new("bash")
                .arg("scripts/lab.sh")
                .args(&args)
                .current_dir(&root)
                .exec();
            Err(error).context("failed to start bash scripts/lab.sh")
        }
        Task::Bench { args } => {
            setup(&root)?;
            step(&root, "bash", &["scripts/bench.sh"], &args)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the workspace root")
        .to_path_buf()
}

fn setup(root: &Path) -> anyhow::Result<()> {
    step(root, "bash", &["scripts/setup.sh"], &[])
}

/// Runs `program` with `args` and `extra` in `root`, failing when it exits non-zero.
fn step(root: &Path, program: &str, args: &[&str], extra: &[String]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .args(extra)
        .current_dir(root)
        .status()
        .with_context(|| format!("failed to start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

fn test(root: &Path, args: &[String]) -> anyhow::Result<()> {
    step(root, "cargo", &["fmt", "--all", "--check"], &[])
        .context("rustfmt found unformatted code; run `cargo fmt --all`")?;
    // NOTE: enforcer-ebpf is left out of clippy because it builds only for bpfel-unknown-none,
    // and no clippy exists for Debian's rustc that has the BPF core library.
    step(
        root,
        "cargo",
        &["clippy", "--all-targets", "--", "-D", "warnings"],
        &[],
    )?;

    let totals = cargo_test(root, args)?;
    println!(
        "\nsummary: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if totals.failed > 0 || !totals.success {
        bail!("tests failed");
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    success: bool,
}

/// Runs `cargo test` over the default members, echoing its output, and adds up the
/// `test result:` lines of every test binary.
fn cargo_test(root: &Path, args: &[String]) -> anyhow::Result<Totals> {
    let mut child = Command::new("cargo")
        .args(["test", "--no-fail-fast"])
        .args(args)
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("failed to start cargo test")?;
    let stdout = child.stdout.take().expect("stdout is piped");

    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("failed to read cargo test output")?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            totals.passed += count_before(result, " passed");
            totals.failed += count_before(result, " failed");
            totals.ignored += count_before(result, " ignored");
        }
    }
    totals.success = child
        .wait()
        .context("failed to wait for cargo test")?
        .success();
    Ok(totals)
}

/// Returns the number that precedes `label` in a `test result:` line, or 0.
fn count_before(result: &str, label: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| part.trim().strip_suffix(label.trim_start()))
        .and_then(|part| part.split_whitespace().last())
        .and_then(|number| number.parse().ok())
        .unwrap_or(0)
}
