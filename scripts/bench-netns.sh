#!/bin/sh
# Per-VM rate cap for scripts/bench.mjs (needs root): one network namespace per VM.
#
#   bench-netns.sh up TAG INDEX RATE_MBIT   create namespace vm-sync-bench-TAG-INDEX; prints the VM's address
#   bench-netns.sh down TAG INDEX           delete it (its veth pair goes with it)
#
# The demo fleet's sshd processes all listen on loopback, and loopback is one
# shared interface: it cannot give each VM its own link. So the benchmark moves
# each VM's sshd into its own namespace, joined to the root namespace (where
# vm-sync and the raw rsync runs) by a veth pair 10.251.INDEX.1 <-> 10.251.INDEX.2.
# A tbf qdisc on each end caps the link at RATE_MBIT per direction: the root end
# shapes runner -> VM (the deploy traffic), the namespace end VM -> runner.
set -eu

cmd=$1 tag=$2 index=$3
ns="vm-sync-bench-$tag-$index"
host_if="vb$tag${index}h" # interface names: at most 15 characters
vm_if="vb$tag${index}v"

case "$cmd" in
up)
  rate=$4
  ip netns add "$ns"
  ip link add "$host_if" type veth peer name "$vm_if" netns "$ns"
  ip addr add "10.251.$index.1/24" dev "$host_if"
  ip link set "$host_if" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "10.251.$index.2/24" dev "$vm_if"
  ip -n "$ns" link set "$vm_if" up
  # burst must hold a whole GSO super-packet (64 KiB) or tbf has to split it;
  # latency bounds the queue (about 0.6 MB at 100 Mbit).
  tc qdisc add dev "$host_if" root tbf rate "${rate}mbit" burst 128kb latency 50ms
  tc -n "$ns" qdisc add dev "$vm_if" root tbf rate "${rate}mbit" burst 128kb latency 50ms
  echo "10.251.$index.2"
  ;;
down)
  # Anything still running in the namespace was started by this benchmark (its sshd and sessions).
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
  ;;
*)
  echo "usage: $0 up TAG INDEX RATE_MBIT | down TAG INDEX" >&2
  exit 2
  ;;
esac
