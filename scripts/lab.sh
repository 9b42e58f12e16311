#!/usr/bin/env bash
# Builds enforcer and brings up the lab: a client namespace (alice's laptop), a gateway
# namespace running `enforcer run` with XDP on its client-facing veth, a resource namespace
# with HTTP and echo services, and a real OpenID provider. Ctrl-C removes all of it.
# Arguments go to `enforcer-lab up` (for example `--policy FILE`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ $(id -u) -eq 0 ]] || { echo "lab: must run as root (namespaces and XDP); try: sudo $0" >&2; exit 1; }

cargo build --quiet --bin enforcer --bin enforcer-lab
exec target/debug/enforcer-lab up "$@"
