#!/usr/bin/env bash
# Turns a fresh Debian/Ubuntu host into the vm-sync runner host: a dedicated
# non-root user, the GitHub Actions runner (pinned, checksum-verified) as a
# systemd service with the vm-sync label, gitleaks, the vm-sync CLI on PATH
# (run with the runner's own Node.js), and the SSH key store with pinned VM
# host keys.
#
#   bootstrap-runner.sh install --url https://github.com/OWNER/REPO [options]
#   bootstrap-runner.sh uninstall --url https://github.com/OWNER/REPO [--delete-user] [--delete-dir]
#   bootstrap-runner.sh status [--dir DIR]
#
# --dry-run prints every step (each command, each file with its mode and
# owner) and changes nothing. --root DIR works on a filesystem tree: commands
# that act on the running system (apt-get, systemctl, svc.sh) are printed as
# "would run on a real host" and never run; the user is added to the tree's
# own /etc files.
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
  --root DIR              operate on a filesystem tree under DIR (image building, tests): never runs
                          apt-get, systemctl or svc.sh; prints them as "would run on a real host"
  --dry-run               print every step (commands, files with mode and owner) and change nothing
EOF
}

command=${1:-}
[ $# -gt 0 ] && shift
url="" name="" labels="" run_user=gh-runner dir=/opt/actions-runner ephemeral=false config=""
tofu=false delete_user=false delete_dir=false root="" dry_run=false
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
    --dry-run) dry_run=true; shift ;;
    --token|--pat|--runner-token) die "credentials are never taken from flags (they would show in ps): set GITHUB_PAT or RUNNER_TOKEN in the environment" ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

# Every value below ends up in paths, in files and (the directory) in the
# installed wrapper script: refuse anything but plain names and paths.
[[ $dir =~ ^/[A-Za-z0-9._/-]+$ && ! $dir =~ (^|/)\.\.?(/|$) ]] || die "--dir must be an absolute path of letters, digits, '.', '_', '-' and '/', not '$dir'"
dir=${dir%/}
[[ $run_user =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--user must be a plain user name, not '$run_user'"
if [ -n "$root" ]; then
  [[ $root == /* ]] || die "--root must be an absolute path, not '$root'"
  [ -d "$root" ] || die "--root $root is not a directory"
  root=${root%/}
fi

R() { printf '%s%s' "$root" "$1"; }   # a path inside the target filesystem
changed=()                            # what this run changed (empty: "unchanged")
deferred=()                           # --root: commands left for the real host
here=$(cd "$(dirname "$0")" && pwd)
cli_bundle=$here/../dist/cli.js       # the CLI this checkout built (self-contained, no node_modules)
wrapper_template=$here/vm-sync-wrapper.sh

# ---------------------------------------------------------------- changes
# Every change to the host or the tree goes through one of these, so that
# --dry-run prints exactly the steps a real run takes, and nothing else acts.
quoted() { # ARGS...: one line a shell would split back into ARGS (plain words stay as they are)
  local out="" arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=" $arg"; else out+=" $(printf '%q' "$arg")"; fi
  done
  printf '%s' "${out# }"
}
run() { # COMMAND ARGS...: a command that changes something
  if [ "$dry_run" = true ]; then say "would run: $(quoted "$@")"; return 0; fi
  "$@"
}
host_run() { # COMMAND ARGS...: acts on the running system (packages, services): never under --root
  if [ -n "$root" ]; then
    say "would run on a real host: $(quoted "$@")"
    deferred+=("$(quoted "$@")")
    return 0
  fi
  run "$@"
}
owner_ids() { # root | the runner user: numeric uid:gid (the tree's /etc/passwd under --root, never the host's)
  if [ "$1" = root ]; then printf '0:0'; else printf '%s:%s' "$(uid_of "$1")" "$(gid_of "$1")"; fi
}
make_dir() { # PATH MODE OWNER
  if [ "$dry_run" = true ]; then
    if [ ! -d "$1" ]; then say "would create directory $1 (mode $2, owner $3)"
    elif [ "$(stat -c '%a %u:%g' "$1")" != "${2#0} $(owner_ids "$3")" ]; then say "would set $1 to mode $2, owner $3"
    fi
    return 0
  fi
  mkdir -p "$1"; chmod "$2" "$1"; chown "$(owner_ids "$3")" "$1"
}
put_file() { # PATH MODE OWNER: the content from stdin, written beside PATH and renamed over it (never half-written, never through a symlink)
  if [ "$dry_run" = true ]; then
    cat >/dev/null
    say "would write $1 (mode $2, owner $3)"
    return 0
  fi
  local tmp
  tmp=$(mktemp "$(dirname "$1")/.bootstrap.XXXXXX")
  { cat > "$tmp" && chmod "$2" "$tmp" && chown "$(owner_ids "$3")" "$tmp" && mv -f "$tmp" "$1"; } || { rm -f "$tmp"; die "could not write $1"; }
}
same_content() { [ -f "$2" ] && cmp -s "$1" "$2"; }   # SOURCE DEST

# ---------------------------------------------------------------- helpers
uid_of() { awk -F: -v u="$1" '$1 == u { print $3 }' "$(R /etc/passwd)"; }
gid_of() { awk -F: -v u="$1" '$1 == u { print $4 }' "$(R /etc/passwd)"; }
in_group() { awk -F: -v g="$2" -v u="$1" '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) found = 1 } END { exit !found }' "$(R /etc/group)"; }
as_user() { # run a command as the runner user with a clean environment (plus NAME=VALUE pairs first)
  local env_pairs=() keep_path=$PATH home uid gid
  while [ $# -gt 0 ] && [[ $1 == *=* ]]; do env_pairs+=("$1"); shift; done
  home=$(R "$dir") uid=$(uid_of "$run_user") gid=$(gid_of "$run_user")
  # A pair may be a secret (the registration token). `env -i NAME=VALUE cmd` would show it in ps for as
  # long as env runs, so the environment is cleared and set with shell builtins, which start no program.
  (
    while IFS= read -r exported; do unset "$exported" 2>/dev/null || true; done < <(compgen -e)
    export PATH="$keep_path" HOME="$home" LANG=C.UTF-8
    for pair in "${env_pairs[@]}"; do export "${pair?}"; done
    exec setpriv --reuid "$uid" --regid "$gid" --clear-groups -- "$@"
  )
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
  if [ "$dry_run" = true ]; then say "would download $1 and check its SHA-256 is $2"; return 0; fi
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
  if [ "$(id -u)" -ne 0 ]; then
    [ "$dry_run" = true ] || die "run as root (it creates a user and a systemd service)"
    say "note: not root; a real run must be (sudo -E $prog ...)"
  fi
  [ "$run_user" != root ] || die "the runner must not run as root: choose another --user"
  # The service needs systemd where it runs; a --root tree is not running yet.
  if [ -z "$root" ] && [ ! -d /run/systemd/system ]; then die "systemd is not running here: the runner service needs it"; fi
  if [ ! -f "$(R /etc/passwd)" ] || [ ! -f "$(R /etc/group)" ]; then die "no $(R /etc/passwd) or $(R /etc/group)"; fi
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
  # Free space where the runner goes: measured on the nearest directory that exists (a dry run creates none).
  local parent free_kb
  parent=$(R "$(dirname "$dir")")
  while [ ! -d "$parent" ]; do parent=$(dirname "$parent"); done
  free_kb=$(df -Pk "$parent" | awk 'NR == 2 { print $4 }')
  [ "${free_kb:-0}" -ge 1048576 ] || die "less than 1 GiB free under $(dirname "$dir"): the runner and its work directory need room"
}

parse_url() {
  [ -n "$url" ] || die "--url https://github.com/OWNER/REPO is required"
  [[ $url =~ ^https?://[^/]+/([^/]+/[^/]+)/?$ ]] || die "--url must look like https://github.com/OWNER/REPO, not '$url'"
  repo_path=${BASH_REMATCH[1]%.git}
}

declare -A announced=()
ensure_dir() { # PATH MODE OWNER: created when missing (parents 0755, root's), an existing one left as it is
  [ -d "$1" ] && return 0
  if [ "$dry_run" = true ]; then
    local parent=$1 missing=()
    while parent=$(dirname "$parent") && [ ! -d "$parent" ]; do missing=("$parent" "${missing[@]}"); done
    for parent in "${missing[@]}"; do
      [ -n "${announced[$parent]:-}" ] || say "would create directory $parent (mode 0755, owner root)"
      announced[$parent]=1
    done
    [ -n "${announced[$1]:-}" ] || say "would create directory $1 (mode $2, owner $3)"
    announced[$1]=1
    return 0
  fi
  (umask 022 && mkdir -p "$1") && chmod "$2" "$1" && chown "$(owner_ids "$3")" "$1"
}
no_symlink() { # PATH: root never chmods, chowns or writes through a link the runner user may have planted
  [ ! -L "$1" ] || die "$1 is a symbolic link: refusing to follow it (remove it and run again)"
}
set_mode() { # PATH MODE OWNER: an existing file or directory gets exactly this mode and owner
  no_symlink "$1"
  if [ "$dry_run" = true ]; then
    [ ! -e "$1" ] || [ "$(stat -c '%a %u:%g' "$1")" = "${2#0} $(owner_ids "$3")" ] || say "would set $1 to mode $2, owner $3"
    return 0
  fi
  chmod "$2" "$1" && chown "$(owner_ids "$3")" "$1"
}
append_line() { # FILE LINE: a copy with LINE added, renamed over FILE (same mode and owner; a reader never sees half of it)
  local tmp
  no_symlink "$1"
  tmp=$(mktemp "$1.XXXXXX")
  { cat "$1" > "$tmp" && printf '%s\n' "$2" >> "$tmp" && chmod --reference="$1" "$tmp" && chown --reference="$1" "$tmp" && mv -f "$tmp" "$1"; } || { rm -f "$tmp"; die "could not update $1"; }
}
drop_lines_of() { # FILE NAME: FILE without the entry of NAME (first field), renamed over it
  local tmp
  [ -f "$1" ] || return 0
  tmp=$(mktemp "$1.XXXXXX")
  { awk -F: -v n="$2" '$1 != n' "$1" > "$tmp" && chmod --reference="$1" "$tmp" && chown --reference="$1" "$tmp" && mv -f "$tmp" "$1"; } || { rm -f "$tmp"; die "could not update $1"; }
}
user_files() { local f; for f in /etc/passwd /etc/group /etc/shadow /etc/gshadow; do if [ -f "$(R "$f")" ]; then printf "%s\n" "$(R "$f")"; fi; done; }

prerequisites() {
  local tools=(git rsync ssh ssh-keygen ssh-keyscan curl tar jq setpriv) packages=(git rsync openssh-client curl tar jq util-linux zstd xz-utils bzip2) missing=() tool
  for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  # Not the bootstrap's own: vm-sync compresses release streams with zstd (gzip without it), and the secret
  # scan inflates zstd, xz and bzip2 archives of the tree to read them whole (reported unscanned without).
  if [ -z "$root" ]; then
    for tool in zstd xz bzip2; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  fi
  if [ -n "$root" ]; then
    # The tree's packages belong to whatever builds its image: say what the host it becomes needs.
    host_run apt-get install -y "${packages[@]}"
    [ "${#missing[@]}" -eq 0 ] || die "this host lacks ${missing[*]}, which the bootstrap itself uses: install them first (apt-get install ${packages[*]})"
  elif [ "${#missing[@]}" -gt 0 ]; then
    say "missing: ${missing[*]}"
    run env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
    changed+=("packages")
  fi
  local gitleaks_bin tmp
  gitleaks_bin=$(R /usr/local/bin/gitleaks)
  if [ ! -x "$gitleaks_bin" ] || [ "$(cat "$gitleaks_bin.version" 2>/dev/null)" != "$GITLEAKS_VERSION" ]; then
    ensure_dir "$(dirname "$gitleaks_bin")" 0755 root
    local gitleaks_url="$gitleaks_url_base/v$GITLEAKS_VERSION/gitleaks_${GITLEAKS_VERSION}_linux_$arch.tar.gz"
    if [ "$dry_run" = true ]; then
      download_verified "$gitleaks_url" "$gitleaks_sha256" -
      put_file "$gitleaks_bin" 0755 root </dev/null
      put_file "$gitleaks_bin.version" 0644 root </dev/null
    else
      tmp=$(mktemp -d)
      download_verified "$gitleaks_url" "$gitleaks_sha256" "$tmp/gitleaks.tar.gz"
      tar -xzf "$tmp/gitleaks.tar.gz" -C "$tmp" gitleaks || { rm -rf "$tmp"; die "could not extract gitleaks"; }
      put_file "$gitleaks_bin" 0755 root < "$tmp/gitleaks"
      printf '%s\n' "$GITLEAKS_VERSION" | put_file "$gitleaks_bin.version" 0644 root
      rm -rf "$tmp"
    fi
    changed+=("gitleaks $GITLEAKS_VERSION")
  fi
}

# add_tree_user: --root adds the user to the tree's own /etc files (the way
# `useradd --system --user-group` would: the highest free id from 999 down
# for both uid and gid), so no host tool ever touches a user database.
add_tree_user() {
  local id shadow_day files
  id=$(awk -F: 'FILENAME ~ /passwd$/ || FILENAME ~ /group$/ { used[$3] = 1 } END { for (i = 999; i >= 100; i--) if (!(i in used)) { print i; exit } }' "$(R /etc/passwd)" "$(R /etc/group)")
  [ -n "$id" ] || die "no free system uid/gid (100-999) in $(R /etc/passwd) and $(R /etc/group)"
  files=$(user_files | tr '\n' ' ')
  if [ "$dry_run" = true ]; then say "would add user $run_user (uid and gid $id, home $dir, shell /bin/bash) to ${files% }"; return 0; fi
  shadow_day=$(( $(date +%s) / 86400 ))
  append_line "$(R /etc/passwd)" "$run_user:x:$id:$id::$dir:/bin/bash"
  append_line "$(R /etc/group)" "$run_user:x:$id:"
  if [ -f "$(R /etc/shadow)" ]; then append_line "$(R /etc/shadow)" "$run_user:!:$shadow_day::::::"; fi
  if [ -f "$(R /etc/gshadow)" ]; then append_line "$(R /etc/gshadow)" "$run_user:!::"; fi
}

runner_user() {
  if [ -z "$(uid_of "$run_user")" ]; then
    if [ -n "$root" ]; then add_tree_user
    else run useradd --system --user-group --home-dir "$dir" --no-create-home --shell /bin/bash "$run_user"
    fi
    changed+=("user $run_user")
  fi
  local group
  for group in sudo wheel admin docker; do
    if in_group "$run_user" "$group"; then die "$run_user is in the $group group: a deploy runner must have neither sudo nor docker access"; fi
  done
}

runner_package() {
  local d tmp stage url
  d=$(R "$dir")
  no_symlink "$d"
  ensure_dir "$d" 0755 root
  if [ "$(cat "$d/.vm-sync-runner-version" 2>/dev/null)" = "$RUNNER_VERSION" ]; then return; fi
  url="$runner_url_base/v$RUNNER_VERSION/actions-runner-linux-$arch-$RUNNER_VERSION.tar.gz"
  if [ "$dry_run" = true ]; then
    download_verified "$url" "$runner_sha256" -
    say "would extract it into a new directory beside $d, copy it into $d, write $d/.vm-sync-runner-version (mode 0644) and give $d to $run_user (chown -R)"
    changed+=("runner $RUNNER_VERSION")
    return 0
  fi
  tmp=$(mktemp -d)
  download_verified "$url" "$runner_sha256" "$tmp/runner.tar.gz"
  # Extract beside the target and move in only when complete: nothing half-extracted.
  stage=$(mktemp -d "$d.extract.XXXXXX")
  tar -xzf "$tmp/runner.tar.gz" -C "$stage" || { rm -rf "$stage" "$tmp"; die "could not extract the runner package"; }
  cp -a "$stage/." "$d/"
  rm -rf "$stage" "$tmp"
  printf '%s\n' "$RUNNER_VERSION" | put_file "$d/.vm-sync-runner-version" 0644 root
  chown -R "$(owner_ids "$run_user")" "$d"
  changed+=("runner $RUNNER_VERSION")
}

# install_cli: this checkout's dist/cli.js (one self-contained file) into
# /usr/local/lib/vm-sync, and the `vm-sync` command that runs it with the
# runner's Node. Both belong to root: no job can change what an operator runs.
install_cli() {
  local lib bin wrapper
  [ -f "$cli_bundle" ] || die "no $cli_bundle: run this script from a checkout of vm-sync with its dist/ (git clone, or npm ci && npm run build)"
  [ -f "$wrapper_template" ] || die "no $wrapper_template: run this script from a complete checkout of vm-sync"
  lib=$(R /usr/local/lib/vm-sync)
  bin=$(R /usr/local/bin/vm-sync)
  no_symlink "$lib"
  no_symlink "$bin"
  ensure_dir "$lib" 0755 root
  ensure_dir "$(dirname "$bin")" 0755 root
  if ! same_content "$cli_bundle" "$lib/cli.js"; then
    put_file "$lib/cli.js" 0644 root < "$cli_bundle"
    changed+=("vm-sync CLI")
  fi
  if [ -f "$cli_bundle.map" ] && ! same_content "$cli_bundle.map" "$lib/cli.js.map"; then
    put_file "$lib/cli.js.map" 0644 root < "$cli_bundle.map"
  fi
  # $dir was checked to be a plain absolute path, so it is safe inside the script and in sed.
  wrapper=$(sed "s|@RUNNER_DIR@|$dir|" "$wrapper_template")
  if [ "$(cat "$bin" 2>/dev/null)" != "$wrapper" ]; then
    printf '%s\n' "$wrapper" | put_file "$bin" 0755 root
    changed+=("vm-sync command")
  fi
}

as_runner_in() { # DIR [NAME=VALUE...] COMMAND ARGS...: in DIR as the runner user; a dry run prints it without the values
  local in=$1 shown=()
  shift
  if [ "$dry_run" = true ]; then
    local arg
    for arg in "$@"; do
      if [ "${#shown[@]}" -eq 0 ] || [[ ${shown[-1]} == *=... ]]; then
        if [[ $arg =~ ^[A-Z_]+= ]]; then shown+=("${arg%%=*}=..."); continue; fi
      fi
      shown+=("$arg")
    done
    say "would run as $run_user in $in: $(quoted "${shown[@]}")"
    return 0
  fi
  (cd "$in" && as_user "$@")
}

register() {
  local d state_file wanted current
  d=$(R "$dir")
  state_file="$d/.vm-sync-registration"
  wanted=$(printf 'url=%s\nname=%s\nlabels=%s\nephemeral=%s\n' "$url" "$name" "$all_labels" "$ephemeral")
  current=$(cat "$state_file" 2>/dev/null || true)
  if [ -f "$d/.runner" ] && [ "$current" = "$wanted" ]; then return; fi
  if [ -f "$d/.runner" ]; then
    # Registered with other settings (new labels): drop the local registration, register again with --replace.
    say "registration settings changed: re-registering $name"
    as_runner_in "$d" ./config.sh remove --local
  fi
  local token args
  args=(--unattended --url "$url" --name "$name" --labels "$all_labels" --work _work --replace)
  [ "$ephemeral" = true ] && args+=(--ephemeral)
  if [ "$dry_run" = true ]; then
    if [ -n "${GITHUB_PAT:-}" ]; then say "would mint a registration token with GITHUB_PAT (POST /repos/$repo_path/actions/runners/registration-token)"
    elif [ -n "${RUNNER_TOKEN:-}" ]; then say "would register with RUNNER_TOKEN"
    else say "note: neither GITHUB_PAT nor RUNNER_TOKEN is set; a real run needs one in the environment"
    fi
    as_runner_in "$d" ACTIONS_RUNNER_INPUT_TOKEN=... ./config.sh "${args[@]}"
    put_file "$state_file" 0600 root </dev/null
    changed+=("registration ($all_labels)")
    return 0
  fi
  token=$(repo_token registration-token)
  # The token travels only in the environment; config.sh reads ACTIONS_RUNNER_INPUT_TOKEN and masks it.
  as_runner_in "$d" ACTIONS_RUNNER_INPUT_TOKEN="$token" ./config.sh "${args[@]}" || die "config.sh failed to register the runner"
  token=""
  printf '%s\n' "$wanted" | put_file "$state_file" 0600 root
  changed+=("registration ($all_labels)")
}

service() {
  local d unit
  d=$(R "$dir")
  if [ -n "$root" ]; then
    # The unit and systemctl belong to the system that boots this tree, not to this host.
    host_run env -C "$dir" ./svc.sh install "$run_user"
    host_run env -C "$dir" ./svc.sh start
    return 0
  fi
  if [ ! -f "$d/.service" ]; then
    run env -C "$d" ./svc.sh install "$run_user" || die "svc.sh install failed"
    changed+=("service")
  fi
  if [ "$dry_run" = true ]; then
    say "would run: env -C $(quoted "$d") ./svc.sh start (unless its unit is active), then check that the unit is active"
    return 0
  fi
  unit=$(cat "$d/.service")
  if ! systemctl is-active --quiet "$unit"; then
    run env -C "$d" ./svc.sh start || die "svc.sh start failed"
    changed+=("service started")
  fi
  systemctl is-active --quiet "$unit" || die "the runner service $unit is not active: see journalctl -u $unit"
}

# read_inventory: the config's VMs, keys and known_hosts as JSON, from
# `vm-sync inventory`. `~` in the config means the runner user's home ($dir).
# A real run uses the installed command as the runner user (root never runs the
# runner's node, which that user can replace); the config comes on stdin, so
# that user need not be able to read it. A dry run has installed nothing: it
# uses node from PATH with this checkout's bundle, or says it cannot.
read_inventory() {
  if [ "$dry_run" = true ]; then
    command -v node >/dev/null || return 2
    env HOME="$dir" node "$cli_bundle" inventory --config "$config" || return 1
    return 0
  fi
  as_user HOME="$dir" "$(R /usr/local/bin/vm-sync)" inventory --config /dev/stdin < "$config"
}

key_store() {
  [ -n "$config" ] || return 0
  [ -r "$config" ] || die "cannot read --config $config"
  local inventory rc=0 id host port key name jump
  inventory=$(read_inventory) || rc=$?
  if [ "$rc" -eq 2 ]; then
    say "would provision the key store and pin host keys for the VMs of $config (not listed: no node on PATH before the runner is installed)"
    return 0
  fi
  [ "$rc" -eq 0 ] || die "cannot read $config with vm-sync inventory (its message is above)"
  key_dir=$(R "$(jq -r .key_storage_path <<<"$inventory")")
  known_hosts=$(R "$(jq -r .known_hosts <<<"$inventory")")
  no_symlink "$key_dir"
  if [ ! -d "$key_dir" ]; then ensure_dir "$key_dir" 0700 "$run_user"; changed+=("key store"); fi
  set_mode "$key_dir" 0700 "$run_user"
  if [ ! -e "$known_hosts" ]; then put_file "$known_hosts" 0644 "$run_user" </dev/null; fi
  set_mode "$known_hosts" 0644 "$run_user"
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
  no_symlink "$key"
  no_symlink "$key.pub"
  if [ ! -f "$key" ]; then
    if [ "$dry_run" = true ]; then say "would generate $key (ed25519, mode 0600, owner $run_user) and $key.pub (mode 0644)"
    else ssh-keygen -q -t ed25519 -N '' -C "vm-sync-$id" -f "$key"
    fi
    changed+=("key $id")
  fi
  set_mode "$key" 0600 "$run_user"
  set_mode "$key.pub" 0644 "$run_user"
  [ ! -f "$key.pub" ] || say "public key for $id (add it to ~/.ssh/authorized_keys of its SSH user): $(cat "$key.pub")"
  if [ -f "$known_hosts" ] && ssh-keygen -F "$name" -f "$known_hosts" >/dev/null; then return 0; fi
  if [ -n "$jump" ]; then
    say "$id is behind jump host $jump, which this host cannot scan through: on $jump run 'ssh-keyscan -t ed25519 -p $port $host', check the fingerprint on $id, and add the line as '$name <type> <key>' to $known_hosts"
    return 0
  fi
  if [ "$dry_run" = true ]; then
    if [ -n "${fingerprints[$id]:-}" ]; then say "would pin the ed25519 host key $host:$port offers for $id if it is ${fingerprints[$id]} (ssh-keyscan), into $known_hosts"
    elif [ "$tofu" = true ]; then say "would pin the ed25519 host key $host:$port offers for $id on first use (ssh-keyscan), into $known_hosts"
    else say "would refuse to pin $id's host key without --host-fingerprint $id=SHA256:... or --trust-on-first-use"
    fi
    changed+=("host key $id")
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
  append_line "$known_hosts" "$line"
  changed+=("host key $id")
}

joined() { local IFS=';'; printf '%s' "$*" | sed 's/;/, /g'; }

# finish UNCHANGED DONE: the last lines: what changed (or would), and under --root what is left for the real host.
finish() {
  if [ "$dry_run" = true ]; then
    if [ "${#changed[@]}" -eq 0 ]; then say "dry run: nothing to change"
    else say "dry run: would change: $(joined "${changed[@]}"); nothing was changed"
    fi
  elif [ "${#changed[@]}" -eq 0 ]; then say "unchanged: $1"
  else say "$2: $(joined "${changed[@]}")"
  fi
  if [ "${#deferred[@]}" -gt 0 ]; then
    say "--root: on the host that boots $root, still to run:"
    local step
    for step in "${deferred[@]}"; do printf '  %s\n' "$step"; done
  fi
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
    [ "$dry_run" = false ] || say "dry run: printing each step; nothing is changed"
    prerequisites
    runner_user
    runner_package
    install_cli
    register
    service
    key_store
    if [ -n "$root" ]; then finish "runner $name is installed and registered ($all_labels) in $root" "done"
    else finish "runner $name is installed, registered ($all_labels) and active" "done"
    fi
    ;;
  uninstall)
    parse_url
    [ "$(id -u)" -eq 0 ] || [ "$dry_run" = true ] || die "run as root"
    [ "$dry_run" = false ] || say "dry run: printing each step; nothing is changed"
    d=$(R "$dir")
    if [ -f "$d/.service" ]; then
      if [ -n "$root" ]; then
        host_run env -C "$dir" ./svc.sh stop
        host_run env -C "$dir" ./svc.sh uninstall
      else
        { run env -C "$d" ./svc.sh stop && run env -C "$d" ./svc.sh uninstall; } || die "could not stop and uninstall the service"
      fi
      changed+=("service")
    fi
    if [ -f "$d/.runner" ]; then
      if [ "$dry_run" = true ]; then
        say "would mint a remove token (GITHUB_PAT) or use RUNNER_TOKEN"
        as_runner_in "$d" ACTIONS_RUNNER_INPUT_TOKEN=... ./config.sh remove --unattended
        run rm -f "$d/.vm-sync-registration"
      else
        token=$(repo_token remove-token)
        as_runner_in "$d" ACTIONS_RUNNER_INPUT_TOKEN="$token" ./config.sh remove --unattended ||
          as_runner_in "$d" ./config.sh remove --local || die "config.sh remove failed"
        token=""
        rm -f "$d/.vm-sync-registration"
      fi
      changed+=("registration")
    fi
    # The vm-sync command, when it is the one this script installed.
    if grep -qs 'installed as /usr/local/bin/vm-sync by' "$(R /usr/local/bin/vm-sync)"; then
      run rm -f "$(R /usr/local/bin/vm-sync)"
      run rm -rf "$(R /usr/local/lib/vm-sync)"
      changed+=("vm-sync command")
    fi
    if [ "$delete_dir" = true ] && [ -e "$d" ]; then run rm -rf "$d"; changed+=("$dir"); fi
    if [ "$delete_user" = true ] && [ -n "$(uid_of "$run_user")" ]; then
      if [ -z "$root" ]; then run userdel "$run_user"
      elif [ "$dry_run" = true ]; then say "would remove user $run_user from $(user_files | tr '\n' ' ')"
      else
        while read -r f; do drop_lines_of "$f" "$run_user"; done < <(user_files)
      fi
      changed+=("user $run_user")
    fi
    finish "nothing to uninstall" uninstalled
    ;;
  status)
    d=$(R "$dir")
    if [ ! -f "$d/.vm-sync-runner-version" ]; then say "not installed in $dir"; exit 1; fi
    say "runner $(cat "$d/.vm-sync-runner-version") installed in $dir (it may have updated itself since: vm-sync doctor reads the running version)"
    if [ -f "$d/.vm-sync-registration" ]; then sed 's/^/  /' "$d/.vm-sync-registration"; else say "not registered"; fi
    if [ -x "$(R /usr/local/bin/vm-sync)" ]; then say "vm-sync command: /usr/local/bin/vm-sync"; else say "vm-sync command: not installed"; fi
    if [ -n "$root" ]; then say "service: not checked (--root: the tree's services do not run on this host)"; exit 0; fi
    if [ -f "$d/.service" ] && systemctl is-active --quiet "$(cat "$d/.service")"; then say "service active"; else say "service not active"; exit 1; fi
    ;;
  ""|-h|--help) usage ;;
  *) die "unknown command '$command' (install, uninstall, status)" ;;
esac
