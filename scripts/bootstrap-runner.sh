#!/usr/bin/env bash
# Turns a fresh Debian/Ubuntu host into the vm-sync runner host: a dedicated
# non-root user, the GitHub Actions runner (pinned, checksum-verified) as a
# systemd service with the vm-sync label, gitleaks, and the SSH key store with
# pinned VM host keys.
#
#   bootstrap-runner.sh install --url https://github.com/OWNER/REPO [options]
#   bootstrap-runner.sh uninstall --url https://github.com/OWNER/REPO [--delete-user] [--delete-dir]
#   bootstrap-runner.sh status [--dir DIR]
#
# The credential comes only from the environment, never from a flag:
#   GITHUB_PAT    a token that may administer the repository's runners: used to
#                 mint registration/remove tokens through the REST API
#   RUNNER_TOKEN  a registration (or, for uninstall, remove) token, used as is
# It is never echoed, never on a command line (so never in ps), and the script
# never runs with `set -x`.
set -euo pipefail
set +x
umask 077

# Pinned versions. To move, change version and SHA-256 together (the runner's
# are in its release notes, gitleaks' in its checksums file).
RUNNER_VERSION=2.329.0
RUNNER_SHA256_X64=194f1e1e4bd02f80b7e9633fc546084d8d4e19f3928a324d512ea53430102e1d
GITLEAKS_VERSION=8.30.1
GITLEAKS_SHA256_X64=551f6fc83ea457d62a0d98237cbad105af8d557003051f41f3e7ca7b3f2470eb
GITLEAKS_SHA256_ARM64=e4a487ee7ccd7d3a7f7ec08657610aa3606637dab924210b3aee62570fb4b080

prog=$(basename "$0")
say() { printf '%s: %s\n' "$prog" "$*"; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --url URL               the repository (https://github.com/OWNER/REPO or a GHES URL)   [install, uninstall]
  --name NAME             runner name (default: this host's name)
  --labels L1,L2          extra labels; vm-sync is always added
  --user USER             the runner's user (default gh-runner; never root)
  --dir DIR               install directory (default /opt/actions-runner)
  --ephemeral             register an ephemeral runner (one job, then gone)
  --config FILE           vm-sync.yml: provision its key store and pin its VMs' host keys
  --host-fingerprint VM=SHA256:...   accept VM's host key only with this fingerprint (repeatable; a jump host: jump:NAME=SHA256:...)
  --trust-on-first-use    accept the host keys offered now (prints each fingerprint accepted)
  --delete-user, --delete-dir        uninstall: also remove the user / the directory
  --runner-sha256 HEX, --runner-url-base URL, --gitleaks-sha256 HEX, --gitleaks-url-base URL
                          a mirror, or another architecture's pinned checksum
  --root DIR              operate on a filesystem tree under DIR (image building, tests)
EOF
}

command=${1:-}
[ $# -gt 0 ] && shift
url="" name="" labels="" run_user=gh-runner dir=/opt/actions-runner ephemeral=false config=""
tofu=false delete_user=false delete_dir=false root=""
runner_url_base="https://github.com/actions/runner/releases/download"
gitleaks_url_base="https://github.com/gitleaks/gitleaks/releases/download"
runner_sha256="" gitleaks_sha256=""
declare -A fingerprints=()
while [ $# -gt 0 ]; do
  case $1 in
    --url) url=${2:?--url needs a value}; shift 2 ;;
    --name) name=${2:?}; shift 2 ;;
    --labels) labels=${2:?}; shift 2 ;;
    --user) run_user=${2:?}; shift 2 ;;
    --dir) dir=${2:?}; shift 2 ;;
    --ephemeral) ephemeral=true; shift ;;
    --config) config=${2:?}; shift 2 ;;
    --host-fingerprint)
      pair=${2:?--host-fingerprint needs VM=SHA256:...}
      [[ $pair == *=SHA256:* ]] || die "--host-fingerprint takes VM=SHA256:..., not '$pair'"
      fingerprints[${pair%%=*}]=${pair#*=}; shift 2 ;;
    --trust-on-first-use) tofu=true; shift ;;
    --delete-user) delete_user=true; shift ;;
    --delete-dir) delete_dir=true; shift ;;
    --runner-sha256) runner_sha256=${2:?}; shift 2 ;;
    --runner-url-base) runner_url_base=${2:?}; shift 2 ;;
    --gitleaks-sha256) gitleaks_sha256=${2:?}; shift 2 ;;
    --gitleaks-url-base) gitleaks_url_base=${2:?}; shift 2 ;;
    --root) root=${2:?}; shift 2 ;;
    --token|--pat|--runner-token) die "credentials are never taken from flags (they would show in ps): set GITHUB_PAT or RUNNER_TOKEN in the environment" ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

R() { printf '%s%s' "$root" "$1"; }   # a path inside the target filesystem
changed=()                            # what this run changed (empty: "unchanged")

# ---------------------------------------------------------------- helpers
uid_of() { awk -F: -v u="$1" '$1 == u { print $3 }' "$(R /etc/passwd)"; }
gid_of() { awk -F: -v u="$1" '$1 == u { print $4 }' "$(R /etc/passwd)"; }
in_group() { awk -F: -v g="$2" -v u="$1" '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) found = 1 } END { exit !found }' "$(R /etc/group)"; }
as_user() { # run a command as the runner user with a clean environment (plus NAME=VALUE pairs first)
  local env_pairs=()
  while [ $# -gt 0 ] && [[ $1 == *=* ]]; do env_pairs+=("$1"); shift; done
  env -i PATH="$PATH" HOME="$(R "$dir")" LANG=C.UTF-8 "${env_pairs[@]}" \
    setpriv --reuid "$(uid_of "$run_user")" --regid "$(gid_of "$run_user")" --clear-groups -- "$@"
}
api() { # METHOD PATH: GitHub REST with the PAT read from the environment, sent via curl's stdin config
  local method=$1 path=$2 api_url
  api_url=${GITHUB_API_URL:-}
  if [ -z "$api_url" ]; then
    case $url in
      https://github.com/*) api_url=https://api.github.com ;;
      *) api_url="${url%%/"${repo_path}"}/api/v3" ;;
    esac
  fi
  printf 'header = "Authorization: Bearer %s"\nheader = "Accept: application/vnd.github+json"\n' "$GITHUB_PAT" |
    curl --silent --show-error --fail --config - -X "$method" "$api_url/repos/$repo_path$path"
}
repo_token() { # registration-token | remove-token
  if [ -n "${GITHUB_PAT:-}" ]; then
    api POST "/actions/runners/$1" | jq -er .token || die "could not mint a $1 (is GITHUB_PAT allowed to administer runners of $repo_path?)"
  elif [ -n "${RUNNER_TOKEN:-}" ]; then
    printf '%s' "$RUNNER_TOKEN"
  else
    die "set GITHUB_PAT (to mint tokens) or RUNNER_TOKEN in the environment"
  fi
}
sha256_of() { sha256sum "$1" | awk '{ print $1 }'; }
download_verified() { # URL EXPECTED_SHA256 DEST: refuses and removes the file on a mismatch
  curl --silent --show-error --fail --location --output "$3" "$1" || { rm -f "$3"; die "download failed: $1"; }
  local got
  got=$(sha256_of "$3")
  if [ "$got" != "$2" ]; then
    rm -f "$3"
    die "checksum mismatch for $1: expected $2, got $got. Nothing was installed."
  fi
}

# ---------------------------------------------------------------- steps
preflight() {
  [ "$(id -u)" -eq 0 ] || die "run as root (it creates a user and a systemd service)"
  [ "$run_user" != root ] || die "the runner must not run as root: choose another --user"
  [ -d "$(R /run/systemd/system)" ] || die "systemd is not running here: the runner service needs it"
  case $(uname -m) in
    x86_64) arch=x64 ;;
    aarch64) arch=arm64 ;;
    *) die "unsupported architecture $(uname -m)" ;;
  esac
  if [ -z "$runner_sha256" ]; then
    [ "$arch" = x64 ] || die "no pinned runner checksum for $arch: pass --runner-sha256 from the v$RUNNER_VERSION release notes"
    runner_sha256=$RUNNER_SHA256_X64
  fi
  if [ -z "$gitleaks_sha256" ]; then
    if [ "$arch" = x64 ]; then gitleaks_sha256=$GITLEAKS_SHA256_X64; else gitleaks_sha256=$GITLEAKS_SHA256_ARM64; fi
  fi
  mkdir -p "$(R "$(dirname "$dir")")"
  local free_kb
  free_kb=$(df -Pk "$(R "$(dirname "$dir")")" | awk 'NR == 2 { print $4 }')
  [ "${free_kb:-0}" -ge 1048576 ] || die "less than 1 GiB free under $(dirname "$dir"): the runner and its work directory need room"
}

parse_url() {
  [ -n "$url" ] || die "--url https://github.com/OWNER/REPO is required"
  [[ $url =~ ^https?://[^/]+/([^/]+/[^/]+)/?$ ]] || die "--url must look like https://github.com/OWNER/REPO, not '$url'"
  repo_path=${BASH_REMATCH[1]%.git}
}

prerequisites() {
  local missing=() tool
  for tool in git rsync ssh ssh-keygen ssh-keyscan curl tar jq setpriv; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git rsync openssh-client curl tar jq util-linux >/dev/null
    changed+=("packages")
  fi
  local gitleaks_bin
  gitleaks_bin=$(R /usr/local/bin/gitleaks)
  if [ ! -x "$gitleaks_bin" ] || [ "$(cat "$gitleaks_bin.version" 2>/dev/null)" != "$GITLEAKS_VERSION" ]; then
    local tmp
    tmp=$(mktemp -d)
    download_verified "$gitleaks_url_base/v$GITLEAKS_VERSION/gitleaks_${GITLEAKS_VERSION}_linux_$arch.tar.gz" "$gitleaks_sha256" "$tmp/gitleaks.tar.gz"
    tar -xzf "$tmp/gitleaks.tar.gz" -C "$tmp" gitleaks
    mkdir -p "$(dirname "$gitleaks_bin")"
    install -m 0755 "$tmp/gitleaks" "$gitleaks_bin"
    printf '%s\n' "$GITLEAKS_VERSION" > "$gitleaks_bin.version"
    chmod 0644 "$gitleaks_bin.version"
    rm -rf "$tmp"
    changed+=("gitleaks $GITLEAKS_VERSION")
  fi
}

runner_user() {
  if [ -z "$(uid_of "$run_user")" ]; then
    local prefix=()
    [ -n "$root" ] && prefix=(--prefix "$root")
    useradd "${prefix[@]}" --system --user-group --home-dir "$dir" --no-create-home --shell /bin/bash "$run_user"
    changed+=("user $run_user")
  fi
  local group
  for group in sudo wheel admin docker; do
    if in_group "$run_user" "$group"; then die "$run_user is in the $group group: a deploy runner must have neither sudo nor docker access"; fi
  done
}

runner_package() {
  mkdir -p "$(R "$dir")"
  chmod 0755 "$(R "$dir")"
  if [ "$(cat "$(R "$dir")/.vm-sync-runner-version" 2>/dev/null)" = "$RUNNER_VERSION" ]; then return; fi
  local tmp stage
  tmp=$(mktemp -d)
  download_verified "$runner_url_base/v$RUNNER_VERSION/actions-runner-linux-$arch-$RUNNER_VERSION.tar.gz" "$runner_sha256" "$tmp/runner.tar.gz"
  # Extract beside the target and move in only when complete: nothing half-extracted.
  stage=$(mktemp -d "$(R "$dir").extract.XXXXXX")
  tar -xzf "$tmp/runner.tar.gz" -C "$stage" || { rm -rf "$stage" "$tmp"; die "could not extract the runner package"; }
  cp -a "$stage/." "$(R "$dir")/"
  rm -rf "$stage" "$tmp"
  printf '%s\n' "$RUNNER_VERSION" > "$(R "$dir")/.vm-sync-runner-version"
  chown -R "$(uid_of "$run_user"):$(gid_of "$run_user")" "$(R "$dir")"
  changed+=("runner $RUNNER_VERSION")
}

register() {
  local state_file wanted current
  state_file="$(R "$dir")/.vm-sync-registration"
  wanted=$(printf 'url=%s\nname=%s\nlabels=%s\nephemeral=%s\n' "$url" "$name" "$all_labels" "$ephemeral")
  current=$(cat "$state_file" 2>/dev/null || true)
  if [ -f "$(R "$dir")/.runner" ] && [ "$current" = "$wanted" ]; then return; fi
  if [ -f "$(R "$dir")/.runner" ]; then
    # Registered with other settings (new labels): drop the local registration, register again with --replace.
    say "registration settings changed: re-registering $name"
    (cd "$(R "$dir")" && as_user ./config.sh remove --local) >/dev/null
  fi
  local token args
  token=$(repo_token registration-token)
  args=(--unattended --url "$url" --name "$name" --labels "$all_labels" --work _work --replace)
  [ "$ephemeral" = true ] && args+=(--ephemeral)
  # The token travels only in the environment; config.sh reads ACTIONS_RUNNER_INPUT_TOKEN and masks it.
  (cd "$(R "$dir")" && as_user ACTIONS_RUNNER_INPUT_TOKEN="$token" ./config.sh "${args[@]}") || die "config.sh failed to register the runner"
  token=""
  printf '%s\n' "$wanted" > "$state_file"
  changed+=("registration ($all_labels)")
}

service() {
  local unit
  if [ ! -f "$(R "$dir")/.service" ]; then
    (cd "$(R "$dir")" && ./svc.sh install "$run_user") || die "svc.sh install failed"
    changed+=("service")
  fi
  unit=$(cat "$(R "$dir")/.service")
  if ! systemctl is-active --quiet "$unit"; then
    (cd "$(R "$dir")" && ./svc.sh start) || die "svc.sh start failed"
    changed+=("service started")
  fi
  systemctl is-active --quiet "$unit" || die "the runner service $unit is not active: see journalctl -u $unit"
}

key_store() {
  [ -n "$config" ] || return 0
  local node inventory key_dir known_hosts uid gid
  node=$(command -v node || true)
  [ -n "$node" ] || node=$(find "$(R "$dir")/externals" -path '*/bin/node' -type f 2>/dev/null | sort | tail -n 1)
  [ -n "$node" ] || die "no node to read $config (install Node 20+ or install the runner first)"
  inventory=$("$node" "$(dirname "$0")/../dist/cli.js" inventory --config "$config") || die "cannot read $config"
  key_dir=$(R "$(jq -r .key_storage_path <<<"$inventory")")
  known_hosts=$(R "$(jq -r .known_hosts <<<"$inventory")")
  uid=$(uid_of "$run_user"); gid=$(gid_of "$run_user")
  if [ ! -d "$key_dir" ]; then mkdir -p "$key_dir"; changed+=("key store"); fi
  chmod 0700 "$key_dir"; chown "$uid:$gid" "$key_dir"
  touch "$known_hosts"; chmod 0644 "$known_hosts"; chown "$uid:$gid" "$known_hosts"
  local id host port key name jump offered fp line
  # Jump hosts first: each has its own key and pinned host key, exactly as a VM.
  while IFS=$'\t' read -r id host port key name; do
    provision "$id" "$host" "$port" "$key" "$name" ""
  done < <(jq -r '(.jump_hosts // [])[] | ["jump:" + .name, .host, (.port | tostring), .key_path, .known_hosts_name] | @tsv' <<<"$inventory")
  while IFS=$'\t' read -r id host port key name jump; do
    provision "$id" "$host" "$port" "$key" "$name" "$jump"
  done < <(jq -r '.vms[] | [.id, .host, (.port | tostring), .key_path, .known_hosts_name, (.jump // "")] | @tsv' <<<"$inventory")
}

# provision ID HOST PORT KEY KNOWN_HOSTS_NAME JUMP: the key for one VM or jump host (made once), and its pinned
# host key. A VM behind a jump host cannot be scanned from here: say how to pin it instead.
provision() {
  local id=$1 host=$2 port=$3 key=$4 name=$5 jump=$6 offered fp line
  key=$(R "$key")
  if [ ! -f "$key" ]; then
    ssh-keygen -q -t ed25519 -N '' -C "vm-sync-$id" -f "$key"
    changed+=("key $id")
  fi
  chmod 0600 "$key"; chmod 0644 "$key.pub"; chown "$uid:$gid" "$key" "$key.pub"
  say "public key for $id (add it to ~/.ssh/authorized_keys of its SSH user): $(cat "$key.pub")"
  if ssh-keygen -F "$name" -f "$known_hosts" >/dev/null; then return 0; fi
  if [ -n "$jump" ]; then
    say "$id is behind jump host $jump, which this host cannot scan through: on $jump run 'ssh-keyscan -t ed25519 -p $port $host', check the fingerprint on $id, and add the line as '$name <type> <key>' to $known_hosts"
    return 0
  fi
  offered=$(ssh-keyscan -T 10 -t ed25519 -p "$port" "$host" 2>/dev/null | awk '!/^#/ { print $2, $3; exit }')
  [ -n "$offered" ] || die "$id ($host:$port) offered no ed25519 host key: is sshd running there?"
  fp=$(printf '%s %s\n' "$name" "$offered" | ssh-keygen -l -E sha256 -f - | awk '{ print $2 }')
  line="$name $offered"
  if [ -n "${fingerprints[$id]:-}" ]; then
    [ "${fingerprints[$id]}" = "$fp" ] || die "$id offers $fp, not the expected ${fingerprints[$id]}: refusing to pin it"
    say "pinned $id ($fp, matches --host-fingerprint)"
  elif [ "$tofu" = true ]; then
    say "pinned $id on first use: $fp (compare it with its own: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)"
  else
    die "$id offers host key $fp: confirm it on the host and pass --host-fingerprint $id=$fp (or --trust-on-first-use)"
  fi
  printf '%s\n' "$line" >> "$known_hosts"
  changed+=("host key $id")
}

# ---------------------------------------------------------------- commands
case $command in
  install)
    parse_url
    preflight
    name=${name:-$(hostname -s)}
    [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "--name may contain letters, digits, '.', '_' and '-' only"
    all_labels=vm-sync
    IFS=',' read -r -a extra <<<"$labels"
    for label in "${extra[@]}"; do [ -n "$label" ] && [ "$label" != vm-sync ] && all_labels="$all_labels,$label"; done
    prerequisites
    runner_user
    runner_package
    register
    service
    key_store
    if [ "${#changed[@]}" -eq 0 ]; then say "unchanged: runner $name is installed, registered ($all_labels) and active"
    else say "done: ${changed[*]}"
    fi
    ;;
  uninstall)
    parse_url
    [ "$(id -u)" -eq 0 ] || die "run as root"
    if [ -f "$(R "$dir")/.service" ]; then
      (cd "$(R "$dir")" && ./svc.sh stop && ./svc.sh uninstall) || die "could not stop and uninstall the service"
    fi
    if [ -f "$(R "$dir")/.runner" ]; then
      token=$(repo_token remove-token)
      (cd "$(R "$dir")" && as_user ACTIONS_RUNNER_INPUT_TOKEN="$token" ./config.sh remove --unattended) ||
        (cd "$(R "$dir")" && as_user ./config.sh remove --local) || die "config.sh remove failed"
      token=""
      rm -f "$(R "$dir")/.vm-sync-registration"
    fi
    if [ "$delete_dir" = true ]; then rm -rf "$(R "$dir")"; fi
    if [ "$delete_user" = true ] && [ -n "$(uid_of "$run_user")" ]; then
      prefix=()
      [ -n "$root" ] && prefix=(--prefix "$root")
      userdel "${prefix[@]}" "$run_user"
    fi
    say "uninstalled"
    ;;
  status)
    if [ ! -f "$(R "$dir")/.vm-sync-runner-version" ]; then say "not installed in $dir"; exit 1; fi
    say "runner $(cat "$(R "$dir")/.vm-sync-runner-version") in $dir"
    if [ -f "$(R "$dir")/.vm-sync-registration" ]; then sed 's/^/  /' "$(R "$dir")/.vm-sync-registration"; else say "not registered"; fi
    if [ -f "$(R "$dir")/.service" ] && systemctl is-active --quiet "$(cat "$(R "$dir")/.service")"; then say "service active"; else say "service not active"; exit 1; fi
    ;;
  ""|-h|--help) usage ;;
  *) die "unknown command '$command' (install, uninstall, status)" ;;
esac
