//! The `enforcer` binary: the daemon and its admin CLI.

fn main() -> std::process::ExitCode {
    enforcer::cli::entry()
}
