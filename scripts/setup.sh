#!/usr/bin/env bash
# Installs every prerequisite for building and testing enforcer on Debian 12 (x86_64) as root.
# Idempotent: a second run checks versions and installs nothing.
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
RUST_WEB_VERSION_PREFIX=1.96
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

APT_PACKAGES=(
    # eBPF toolchain: Debian's rustc with a prebuilt core for bpfel-unknown-none.
    rustc-web cargo-web libstd-rust-web-dev-bpf llvm-22-dev
    # Network namespaces, traffic and inspection for the privileged tests and the lab.
    bpftool iproute2 iputils-ping nftables iperf3 curl netcat-openbsd tcpdump ethtool procps
    # Real browser for the portal tests.
    chromium chromium-driver
    # Lint of the shell scripts, run by the pktgen script test.
    shellcheck
)

fail() {
    echo "setup: $*" >&2
    exit 1
}

log() {
    echo "setup: $*"
}

check_host() {
    [[ $(id -u) -eq 0 ]] || fail "must run as root (it installs Debian packages); try: sudo $0"
    [[ -r /etc/os-release ]] || fail "/etc/os-release is missing; enforcer's setup supports Debian 12 only"
    # shellcheck disable=SC1091
    . /etc/os-release
    [[ ${ID:-} == debian && ${VERSION_ID:-} == 12 ]] \
        || fail "found ${PRETTY_NAME:-an unknown system}; this script supports Debian 12 (bookworm), install the packages listed in APT_PACKAGES by hand elsewhere"
    [[ $(uname -m) == x86_64 ]] || fail "found $(uname -m); this script supports x86_64 only"
    command -v cargo >/dev/null || fail "cargo is missing; install a rustup stable toolchain first"
    command -v npm >/dev/null || fail "npm is missing; install Node.js 20 and npm first"
}

installed_version() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$1" 2>/dev/null | awk '$1 == "ii" { print $2 }'
}

install_apt_packages() {
    local missing=()
    for package in "${APT_PACKAGES[@]}"; do
        [[ -n $(installed_version "$package") ]] || missing+=("$package")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "Debian packages present"
        return
    fi

    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq || fail "apt-get update failed; check that the Debian mirrors are reachable"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || fail "apt-get install failed for: ${missing[*]}; the eBPF packages come from bookworm-security, check that it is in /etc/apt/sources.list"
}

# rustc-web and its prebuilt BPF core must come from the same build, or rustc rejects the core
# with E0514; apt does not enforce the pairing.
check_rust_web_pairing() {
    local rustc_version core_version
    rustc_version=$(installed_version rustc-web)
    core_version=$(installed_version libstd-rust-web-dev-bpf)
    [[ $rustc_version == "$core_version" ]] \
        || fail "rustc-web is $rustc_version but libstd-rust-web-dev-bpf is $core_version; they must match, run: apt-get install rustc-web=$core_version or libstd-rust-web-dev-bpf=$rustc_version"
    [[ $rustc_version == "$RUST_WEB_VERSION_PREFIX"* ]] \
        || fail "rustc-web is $rustc_version but $RUST_WEB_VERSION_PREFIX is expected (bpf-linker is built for its LLVM 22); run apt-get update and install rustc-web from bookworm-security"
}

install_bpf_linker() {
    if command -v bpf-linker >/dev/null && bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
        log "bpf-linker $BPF_LINKER_VERSION present"
        return
    fi

    log "installing bpf-linker $BPF_LINKER_VERSION for LLVM 22"
    LLVM_PREFIX=/usr/lib/llvm-22 cargo +stable install bpf-linker --version "$BPF_LINKER_VERSION" \
        --locked --no-default-features --features llvm-22 \
        || fail "cargo install bpf-linker failed; check that crates.io is reachable and llvm-22-dev is installed"
}

install_node_packages() {
    local dir="$ROOT/tests/idp"
    [[ -f $dir/package.json ]] || return 0
    if [[ -d $dir/node_modules/oidc-provider ]] && [[ $dir/node_modules/.package-lock.json -nt $dir/package-lock.json || ! -f $dir/package-lock.json ]]; then
        log "npm packages present"
        return
    fi

    log "installing npm packages for the test identity provider"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) \
        || fail "npm ci failed in $dir; check that the npm registry is reachable"
}

check_kernel() {
    [[ -d /sys/fs/bpf ]] || fail "/sys/fs/bpf is missing; mount bpffs with: mount -t bpf bpf /sys/fs/bpf"
    if ! mountpoint -q /sys/fs/bpf; then
        log "mounting bpffs at /sys/fs/bpf"
        mount -t bpf bpf /sys/fs/bpf || fail "failed to mount bpffs at /sys/fs/bpf"
    fi
}

main() {
    check_host
    install_apt_packages
    check_rust_web_pairing
    install_bpf_linker
    install_node_packages
    check_kernel
    log "ready"
}

main "$@"
