#!/usr/bin/env bash
# Runs the enforcer benchmarks and writes the benchmark page with its plots.
#
# Usage: scripts/bench.sh [--quick] [enforcer-bench options]
# Without --page the full run writes docs/benchmarks.md and docs/benchmarks/*.svg, and a
# --quick smoke run writes target/bench-quick/benchmarks.md instead, so it never replaces the
# committed page. `target/release/enforcer-bench --help` lists every option.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

[[ $(id -u) -eq 0 ]] || { echo "bench: must run as root (BPF programs and network namespaces); try: sudo $0 $*" >&2; exit 1; }

page=docs/benchmarks.md
for arg in "$@"; do
    case $arg in
        --quick) page=target/bench-quick/benchmarks.md ;;
        --page | --page=*) page= ;;
    esac
done

# Release build: the control-plane figures time the daemon and its redb store, whose speed
# depends on the optimisation level. The data-path figures come from the kernel either way.
cargo build --quiet --release -p enforcer-tests --bin enforcer-bench --bin enforcer-under-test
page_args=()
if [[ -n $page ]]; then
    mkdir -p "$(dirname "$page")"
    page_args=(--page "$page")
fi
exec target/release/enforcer-bench --command "cargo xtask bench${*:+ $*}" "${page_args[@]}" "$@"
