#!/bin/sh
# vm-sync on a runner host, installed as /usr/local/bin/vm-sync by
# scripts/bootstrap-runner.sh. It runs the bundled CLI (lib/vm-sync/cli.js: one
# self-contained file, no node_modules) with the Node.js that the GitHub
# Actions runner ships in <runner dir>/externals/nodeNN/bin/node, chosen when
# it runs, so a runner that upgrades itself (and its Node) keeps it working.
#
#   VM_SYNC_NODE        the node binary to use (skips the search)
#   VM_SYNC_RUNNER_DIR  the runner directory (default: the one it was installed for)
#
# The bootstrap replaces the @...@ placeholder below with a validated path.
set -eu

default_runner_dir='@RUNNER_DIR@'
min_major=20

self=$(readlink -f -- "$0")
here=$(dirname -- "$self")
cli=$(dirname -- "$here")/lib/vm-sync/cli.js
# The tree this file sits in: empty on the host itself; the --root directory
# when a tree made with bootstrap-runner.sh --root is used in place.
case $here in
  */usr/local/bin) tree=${here%/usr/local/bin} ;;
  *) tree= ;;
esac
runner_dir=${VM_SYNC_RUNNER_DIR:-$tree$default_runner_dir}

fail() {
  printf 'vm-sync: %s\n' "$*" >&2
  exit 127
}

[ -f "$cli" ] || fail "the CLI bundle $cli is missing: run scripts/bootstrap-runner.sh install again"

uid=$(id -u)
refused=""
# trusted PATH: sets `resolved` to PATH with every symlink resolved, when that
# file and every directory above it belong to root or to this user, and no
# other user may write them: not a group other than root's, not everyone (a
# directory with the sticky bit, like /tmp, keeps others off what they do not
# own). The runner's directory belongs to the runner user, and a job could
# replace its node (even between a check and the exec, through a directory it
# owns): root or an operator must never run what another user can rewrite.
trusted() {
  resolved=$(readlink -f -- "$1") || return 1
  p=$resolved
  while :; do
    owner=$(stat -c %u -- "$p") || return 1
    if [ "$owner" != 0 ] && [ "$owner" != "$uid" ]; then
      refused="$refused $1 ($p belongs to uid $owner)"
      return 1
    fi
    perm=$(stat -c %A -- "$p") || return 1
    group=$(stat -c %g -- "$p") || return 1
    case $perm in
      d????????[tT]) writable= ;;
      ????????w?) writable=1 ;;
      ?????w????) [ "$group" = 0 ] && writable= || writable=1 ;;
      *) writable= ;;
    esac
    if [ -n "$writable" ]; then
      refused="$refused $1 ($p is writable by other users)"
      return 1
    fi
    [ "$p" != / ] || return 0
    p=$(dirname -- "$p")
  done
}

# The bundle is code this user runs too: the same rule as for node.
trusted "$cli" || fail "the CLI bundle $cli is not used, because another user can replace it:$refused. Run scripts/bootstrap-runner.sh install again (it installs it owned by root, mode 0644)."
cli=$resolved
refused=""

node=""
if [ -n "${VM_SYNC_NODE:-}" ]; then
  # An explicit choice is used as given.
  [ -x "$VM_SYNC_NODE" ] || fail "VM_SYNC_NODE=$VM_SYNC_NODE is not an executable file"
  node=$VM_SYNC_NODE
else
  # The newest nodeNN the runner ships. nodeNN_alpine (a musl build) and
  # anything not named node<digits> are skipped.
  best=-1
  for candidate in "$runner_dir"/externals/node*/bin/node; do
    [ -x "$candidate" ] || continue
    major=${candidate#"$runner_dir"/externals/node}
    major=${major%%/*}
    case $major in '' | *[!0-9]*) continue ;; esac
    if [ "$major" -lt "$min_major" ] || [ "$major" -le "$best" ]; then continue; fi
    trusted "$candidate" || continue
    node=$resolved
    best=$major
  done
  if [ -z "$node" ] && command -v node >/dev/null 2>&1; then
    candidate=$(command -v node)
    if trusted "$candidate"; then
      major=$("$resolved" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
      if [ "$major" -ge "$min_major" ] 2>/dev/null; then node=$resolved; fi
    fi
  fi
fi

if [ -z "$node" ]; then
  msg="no Node.js $min_major+ to run with: looked for $runner_dir/externals/node*/bin/node (the Actions runner's own) and node on PATH."
  [ -z "$refused" ] || msg="$msg Not used, because another user can replace them:$refused: run vm-sync as that user (e.g. sudo -u <runner user> vm-sync ...)."
  fail "$msg Install the runner (scripts/bootstrap-runner.sh install), set VM_SYNC_RUNNER_DIR to its directory, or set VM_SYNC_NODE to a Node.js $min_major+ binary."
fi

# vm-sync doctor checks this runner's version.
VM_SYNC_RUNNER_DIR=$runner_dir
export VM_SYNC_RUNNER_DIR
# On a host with a lot of memory V8 lets its young generation grow to 64 MB per
# semi-space; a deploy to a hundred VMs, whose SSH packets are short-lived
# garbage, then peaks at 190-245 MB instead of 130-155 (README, Benchmark).
# NODE_OPTIONS that chooses a size of its own is left to do so.
case " ${NODE_OPTIONS:-} " in
  *" --max-semi-space-size"*) exec "$node" "$cli" "$@" ;;
  *) exec "$node" --max-semi-space-size=2 "$cli" "$@" ;;
esac
