#!/usr/bin/env bash
# Drives Linux pktgen from a sender host at the gateway's client-facing interface and reports
# Mpps per verdict from the enforcer's counters, and the gateway's CPU use.
#
# Run it as root on the sender. The kernel needs pktgen (CONFIG_NET_PKTGEN, `modprobe pktgen`);
# the benchmark machines of this repository have none, so `cargo xtask bench` uses
# BPF_PROG_TEST_RUN instead. pktgen sends UDP, so the resources under test must allow UDP (or
# any protocol) on the streams' destination ports.
#
# Each --stream runs on its own pktgen thread (one sender CPU each) and sets one part of the
# mix, for example devices with live sessions, devices without, and unprotected destinations:
#
#   scripts/pktgen.sh --dev eth1 --dst-mac 52:54:00:12:34:56 --gateway root@gw --count 10000000 \
#       --stream hit:192.0.2.10-192.0.2.200:198.51.100.10:443 \
#       --stream deny:203.0.113.10-203.0.113.200:198.51.100.10:443 \
#       --stream unprotected:192.0.2.10-192.0.2.200:198.51.100.99:53
#
# Counters are read on the gateway with `bpftool map dump name COUNTERS` over ssh (or locally
# when --gateway is omitted); the CPU figure comes from the gateway's /proc/stat.
set -euo pipefail

# Verdict counter names in the order of `common::counters` (common/src/lib.rs).
COUNTER_NAMES=(pass_not_ip pass_unprotected pass_session pass_monitor deny_unknown_device
    deny_no_session deny_expired deny_malformed deny_wrong_mac deny_fragment reject_sent
    reject_failed punt_sent punt_rate_limited punt_lost)

PGDIR=/proc/net/pktgen
dev=
dst_mac=
gateway=
count=1000000
max_seconds=60
pkt_size=64
flows=4096
flowlen=8
streams=()

usage() {
    cat <<USAGE
usage: $0 --dev IFACE --dst-mac MAC --stream NAME:SRC_MIN-SRC_MAX:DST:PORT [--stream ...]
          [--gateway SSH_TARGET] [--count PACKETS] [--max-seconds S] [--pkt-size BYTES]
          [--flows N] [--flowlen PACKETS] [--dry-run]

  --dev          sender interface cabled to the gateway's client-facing interface
  --dst-mac      MAC address of the gateway's client-facing interface
  --stream       one traffic stream: a name, a source IPv4 range (the devices), a destination
                 IPv4 address and a UDP destination port; repeat for a mix
  --gateway      ssh target of the gateway (for example root@gw); local when omitted
  --count        packets per stream (default $count); pktgen stops after them
  --max-seconds  stop every stream after this many seconds (default $max_seconds)
  --pkt-size     frame size in bytes without FCS (default $pkt_size)
  --flows        concurrent flows per stream, each a source address and port (default $flows)
  --flowlen      packets per flow before pktgen moves to the next one (default $flowlen)
  --dry-run      check the arguments and print the plan, then exit without sending
USAGE
}

fail() {
    echo "pktgen: $*" >&2
    exit 1
}

# Prints the value of option $1, or fails when the command line ends before it.
value_of() {
    [[ $# -ge 2 && -n $2 && $2 != --* ]] || fail "$1 needs a value; see --help"
    echo "$2"
}

dry_run=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --dev) dev=$(value_of "$@"); shift 2 ;;
        --dst-mac) dst_mac=$(value_of "$@"); shift 2 ;;
        --gateway) gateway=$(value_of "$@"); shift 2 ;;
        --count) count=$(value_of "$@"); shift 2 ;;
        --max-seconds) max_seconds=$(value_of "$@"); shift 2 ;;
        --pkt-size) pkt_size=$(value_of "$@"); shift 2 ;;
        --flows) flows=$(value_of "$@"); shift 2 ;;
        --flowlen) flowlen=$(value_of "$@"); shift 2 ;;
        --stream) streams+=("$(value_of "$@")"); shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; fail "unknown argument $1" ;;
    esac
done

ipv4_re='^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$'
positive_re='^[1-9][0-9]*$'

# Every argument is checked before pktgen is touched, so a typo fails in the first second.
[[ -n $dev ]] || fail "--dev is missing; give the sender interface cabled to the gateway"
[[ -n $dst_mac ]] || fail "--dst-mac is missing; give the MAC of the gateway's client-facing interface"
[[ $dst_mac =~ ^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$ ]] \
    || fail "invalid --dst-mac $dst_mac; give six hex bytes such as 52:54:00:12:34:56"
[[ ${#streams[@]} -gt 0 ]] || fail "no --stream given; add at least one, for example hit:192.0.2.10-192.0.2.200:198.51.100.10:443"
[[ $count =~ $positive_re ]] || fail "invalid --count $count; give a positive number of packets"
[[ $max_seconds =~ $positive_re ]] || fail "invalid --max-seconds $max_seconds; give a positive number of seconds"
[[ $pkt_size =~ $positive_re && $pkt_size -ge 60 && $pkt_size -le 9000 ]] \
    || fail "invalid --pkt-size $pkt_size; give a frame size from 60 to 9000 bytes"
[[ $flows =~ $positive_re ]] || fail "invalid --flows $flows; give a positive number of flows"
[[ $flowlen =~ $positive_re ]] || fail "invalid --flowlen $flowlen; give a positive number of packets"
for stream in "${streams[@]}"; do
    IFS=: read -r name sources dst port extra <<<"$stream"
    [[ -n $name && -z $extra && $sources == *-* && $port =~ ^[0-9]+$ && $port -le 65535 ]] \
        || fail "invalid --stream $stream; expected NAME:SRC_MIN-SRC_MAX:DST:PORT with a port up to 65535"
    for address in "${sources%-*}" "${sources#*-}" "$dst"; do
        [[ $address =~ $ipv4_re ]] || fail "invalid address $address in --stream $stream; pktgen streams are IPv4"
    done
done
echo "pktgen: $count packets per stream, at most $max_seconds s, $pkt_size-byte frames, $flows flows of $flowlen packets each, on $dev to $dst_mac"

if [[ $dry_run -eq 1 ]]; then
    echo "pktgen: --dry-run, so the arguments were checked and nothing was sent"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || fail "must run as root (pktgen is configured through $PGDIR)"
if [[ ! -d $PGDIR ]]; then
    modprobe pktgen 2>/dev/null || true
fi
[[ -d $PGDIR ]] || fail "$PGDIR is missing, so this kernel has no pktgen: build it with CONFIG_NET_PKTGEN or load the module (modprobe pktgen), or run on a sender host that has it"
[[ -d /sys/class/net/$dev ]] || fail "interface $dev not found; list interfaces with ip link"
nthreads=$(find "$PGDIR" -maxdepth 1 -name 'kpktgend_*' | wc -l)
[[ ${#streams[@]} -le $nthreads ]] || fail "${#streams[@]} streams but only $nthreads pktgen threads; give at most $nthreads streams"

# Writes one pktgen command to a control file and fails with pktgen's own result line.
pgset() {
    local file=$1 command=$2
    echo "$command" >"$file"
    if ! grep -q "Result: OK" "$file"; then
        fail "pktgen rejected '$command' in $file: $(grep Result: "$file")"
    fi
}

on_gateway() {
    if [[ -n $gateway ]]; then
        ssh -o BatchMode=yes "$gateway" "$@"
    else
        bash -c "$*"
    fi
}

# Prints the enforcer's counters summed over CPUs, one "name value" line each.
read_counters() {
    on_gateway "bpftool -j map dump name COUNTERS" | python3 -c '
import json, sys
names = sys.argv[1:]
for entry in json.load(sys.stdin):
    key = entry["key"]
    index = key if isinstance(key, int) else int.from_bytes(bytes(int(b, 16) for b in key), "little")
    values = entry.get("values", [])
    total = sum(v["value"] if isinstance(v["value"], int) else int.from_bytes(bytes(int(b, 16) for b in v["value"]), "little") for v in values)
    if index < len(names):
        print(names[index], total)
' "${COUNTER_NAMES[@]}" || fail "failed to read the COUNTERS map on ${gateway:-this host}; is the enforcer loaded and bpftool installed?"
}

# Prints busy and total jiffies of all CPUs on the gateway.
read_cpu() {
    on_gateway "head -1 /proc/stat" | awk '{ idle = $5 + $6; total = 0; for (i = 2; i <= NF; i++) total += $i; print total - idle, total }'
}

stop_all() {
    echo "reset" >"$PGDIR/pgctrl" 2>/dev/null || true
}
trap stop_all EXIT

stop_all
for index in "${!streams[@]}"; do
    IFS=: read -r name sources dst port <<<"${streams[$index]}"
    thread="$PGDIR/kpktgend_$index"
    device="$dev@$index"
    pgset "$thread" "rem_device_all"
    pgset "$thread" "add_device $device"
    control="$PGDIR/$device"
    pgset "$control" "count $count"
    pgset "$control" "pkt_size $pkt_size"
    pgset "$control" "delay 0"
    pgset "$control" "dst_mac $dst_mac"
    pgset "$control" "src_min ${sources%-*}"
    pgset "$control" "src_max ${sources#*-}"
    pgset "$control" "dst $dst"
    pgset "$control" "udp_dst_min $port"
    pgset "$control" "udp_dst_max $port"
    pgset "$control" "udp_src_min 1024"
    pgset "$control" "udp_src_max 65000"
    pgset "$control" "flag IPSRC_RND"
    pgset "$control" "flag UDPSRC_RND"
    pgset "$control" "flows $flows"
    pgset "$control" "flowlen $flowlen"
    echo "pktgen: stream $name on $device: ${sources} -> $dst:$port, $count packets"
done

declare -A before
while read -r name value; do before[$name]=$value; done < <(read_counters)
read -r busy_before total_before < <(read_cpu)
started=$(date +%s.%N)

# pgctrl start blocks until every stream has sent its count; the timeout bounds the run.
timeout "$max_seconds" bash -c "echo start > $PGDIR/pgctrl" || echo "pktgen: stopped after $max_seconds s"
stop_all

elapsed=$(awk -v start="$started" -v end="$(date +%s.%N)" 'BEGIN { print end - start }')
read -r busy_after total_after < <(read_cpu)
echo
echo "sender, per stream:"
for index in "${!streams[@]}"; do
    IFS=: read -r name _ <<<"${streams[$index]}"
    result=$(grep -m1 -A2 "Result:" "$PGDIR/$dev@$index" 2>/dev/null | tr '\n' ' ' || true)
    echo "  $name: $result"
done
echo
printf "gateway verdicts over %.2f s:\n" "$elapsed"
while read -r name value; do
    delta=$((value - ${before[$name]:-0}))
    [[ $delta -gt 0 ]] || continue
    printf "  %-20s %14d packets  %8.3f Mpps\n" "$name" "$delta" \
        "$(awk -v packets="$delta" -v seconds="$elapsed" 'BEGIN { print packets / seconds / 1e6 }')"
done < <(read_counters)
cpu_busy=$(awk -v busy=$((busy_after - busy_before)) -v total=$((total_after - total_before)) \
    'BEGIN { print (total > 0) ? 100 * busy / total : 0 }')
printf "gateway CPU busy: %.1f %% of all CPUs\n" "$cpu_busy"
