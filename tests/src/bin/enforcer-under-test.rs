//! The `enforcer` binary built inside the tests crate, so the privileged tests can run the
//! real daemon and CLI as separate processes (cargo builds a crate's own binaries before its
//! integration tests, but not the binaries of its dependencies).

fn main() -> std::process::ExitCode {
    enforcer::cli::entry()
}
