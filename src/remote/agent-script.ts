/**
 * The POSIX sh program vm-sync runs on a VM for everything that is not rsync:
 * probing the target, the lock, publishing a release, pruning. It is a fixed
 * text; values from the config reach it only as positional arguments quoted by
 * {@link agentCommand}, never spliced into the script.
 *
 * Layout on the VM for a target T = P/N:
 *   P/N                          symlink -> .N.vm-sync/releases/<release>   (layout: atomic)
 *   P/.N.vm-sync/releases/<UTC time>-<sha12>/   complete releases, each with .sync_rev
 *   P/.N.vm-sync/releases/<sha>.partial/        a release being staged (resumable)
 *   P/.N.vm-sync/lock/owner                     "<token> <epoch seconds>"
 *   P/.N.vm-sync/previous-<time>                what stood at T before vm-sync managed it
 *
 * Every operation prints `key=value` lines on success; on failure it exits
 * non-zero and the VM's own error text (disk full, permission denied) on
 * stderr is what vm-sync classifies.
 */
export const AGENT_SCRIPT = `
set -u
umask 022
op=$1
shift
die() { printf 'vm-sync: %s\\n' "$*" >&2; exit 3; }
expand() {
  # shellcheck disable=SC2088 # a literal "~/" prefix from the config, expanded here
  case $1 in
    "~/"*) printf '%s\\n' "$HOME/\${1#"~/"}" ;;
    *) printf '%s\\n' "$1" ;;
  esac
}
flush() { sync -f "$1" 2>/dev/null || sync; }
T=$(expand "$1")
P=$(dirname -- "$T")
N=$(basename -- "$T")
S="$P/.$N.vm-sync"
R="$S/releases"
L="$S/lock"
shift
current_release() {
  if [ -L "$T" ]; then
    link=$(readlink -- "$T")
    case $link in
      ".$N.vm-sync/releases/"*) printf '%s\\n' "$P/$link" ;;
    esac
  fi
}
case $op in
probe)
  printf 'target=%s\\n' "$T"
  if [ -L "$T" ]; then kind=symlink
  elif [ -d "$T" ]; then kind=dir
  elif [ -e "$T" ]; then kind=other
  else kind=absent
  fi
  printf 'kind=%s\\n' "$kind"
  printf 'current=%s\\n' "$(current_release)"
  if [ -e "$T/.sync_rev" ]; then
    if rev=$(head -n 1 -- "$T/.sync_rev" 2>/dev/null); then
      printf 'rev_state=present\\nrev=%s\\n' "$rev"
    else
      printf 'rev_state=unreadable\\n'
    fi
  else
    printf 'rev_state=absent\\n'
  fi
  printf 'rsync=%s\\n' "$(rsync --version 2>/dev/null </dev/null | head -n 1)"
  if [ -r "$L/owner" ]; then printf 'lock=%s\\n' "$(head -n 1 -- "$L/owner")"; fi
  printf 'now=%s\\n' "$(date +%s)"
  ;;
lock)
  token=$1 stale_after=$2
  mkdir -p -- "$S" || die "cannot create $S"
  now=$(date +%s)
  if mkdir -- "$L" 2>/dev/null; then
    printf '%s %s\\n' "$token" "$now" > "$L/owner" || die "cannot write $L/owner"
    printf 'lock=acquired\\n'
    exit 0
  fi
  owner=unknown started=
  if [ -r "$L/owner" ]; then read -r owner started < "$L/owner" || true; fi
  # Between another run's mkdir and its owner write, fall back to the directory's age.
  [ -n "$started" ] || started=$(stat -c %Y -- "$L" 2>/dev/null || echo "$now")
  age=$((now - started))
  if [ "$age" -gt "$stale_after" ]; then
    # Take a stale lock over by renaming it away: only one contender can win the rename.
    if mv -- "$L" "$S/lock.stale.$token" 2>/dev/null; then
      taken=
      read -r taken _ < "$S/lock.stale.$token/owner" 2>/dev/null || true
      if [ "$taken" != "$owner" ] && [ ! -e "$L" ]; then
        # We raced a fresh lock away: put it back and report it held.
        mv -- "$S/lock.stale.$token" "$L" 2>/dev/null
      else
        rm -rf -- "$S/lock.stale.$token"
        if mkdir -- "$L" 2>/dev/null; then
          printf '%s %s\\n' "$token" "$now" > "$L/owner" || die "cannot write $L/owner"
          printf 'lock=acquired\\nstale_owner=%s\\nstale_age=%s\\n' "$owner" "$age"
          exit 0
        fi
      fi
    fi
  fi
  printf 'lock=held\\nowner=%s\\nage=%s\\n' "$owner" "$age"
  ;;
unlock)
  token=$1 owner=
  if [ -r "$L/owner" ]; then read -r owner _ < "$L/owner" || true; fi
  if [ "$owner" = "$token" ]; then rm -rf -- "$L"; printf 'lock=released\\n'
  else printf 'lock=not-ours\\n'
  fi
  ;;
stage-dir)
  sha=$1
  mkdir -p -- "$R" || die "cannot create $R"
  printf 'stage=%s\\n' "$R/$sha.partial"
  cur=$(current_release)
  if [ -n "$cur" ] && [ -d "$cur" ]; then printf 'link_dest=%s\\n' "$cur"
  elif [ ! -L "$T" ] && [ -d "$T" ]; then printf 'link_dest=%s\\n' "$T"
  else printf 'link_dest=\\n'
  fi
  ;;
publish)
  sha=$1 stage=$2
  [ -d "$stage" ] || die "staged release $stage is missing"
  printf '%s\\n' "$sha" > "$stage/.sync_rev.tmp" || die "cannot write .sync_rev"
  mv -f -- "$stage/.sync_rev.tmp" "$stage/.sync_rev" || die "cannot write .sync_rev"
  flush "$stage"
  name="$(date -u +%Y%m%dT%H%M%SZ)-$(printf '%s' "$sha" | cut -c1-12)"
  [ ! -e "$R/$name" ] || name="$name-$$"
  mv -- "$stage" "$R/$name" || die "cannot rename $stage"
  if [ -z "$(current_release)" ] && { [ -e "$T" ] || [ -L "$T" ]; }; then
    # First atomic deploy over something vm-sync did not create: keep it.
    previous="$S/previous-$(date -u +%Y%m%dT%H%M%SZ)"
    mv -- "$T" "$previous" || die "cannot move $T aside"
    printf 'moved_aside=%s\\n' "$previous"
  fi
  ln -s -- ".$N.vm-sync/releases/$name" "$S/link.$$" || die "cannot create symlink"
  mv -f -T -- "$S/link.$$" "$T" || { rm -f -- "$S/link.$$"; die "cannot flip $T"; }
  flush "$P"
  printf 'release=%s\\n' "$R/$name"
  ;;
inplace-begin)
  mkdir -p -- "$T" || die "cannot create $T"
  [ ! -L "$T" ] || die "$T is a symlink (atomic layout): switch layout back to atomic or remove it"
  # A tree that is being rewritten must not claim any commit.
  rm -f -- "$T/.sync_rev" || die "cannot remove $T/.sync_rev"
  printf 'target=%s\\n' "$T"
  ;;
inplace-finish)
  sha=$1
  printf '%s\\n' "$sha" > "$T/.sync_rev.tmp" || die "cannot write .sync_rev"
  flush "$T"
  mv -f -- "$T/.sync_rev.tmp" "$T/.sync_rev" || die "cannot write .sync_rev"
  flush "$T"
  printf 'rev=%s\\n' "$sha"
  ;;
prune)
  keep=$1
  cur=$(current_release)
  cur=$(basename -- "\${cur:-none}")
  for p in "$R"/*.partial; do
    [ -d "$p" ] && rm -rf -- "$p" && printf 'pruned=%s\\n' "$(basename -- "$p")"
  done
  for d in "$R"/*; do
    [ -d "$d" ] && printf '%s\\n' "$(basename -- "$d")"
  done | sort -r | tail -n +"$((keep + 1))" | while IFS= read -r name; do
    [ "$name" = "$cur" ] && continue
    rm -rf -- "\${R:?}/$name" && printf 'pruned=%s\\n' "$name"
  done
  ;;
post)
  sha=$1 cmd=$2
  cd -- "$T" || die "cannot enter $T"
  VM_SYNC_COMMIT=$sha VM_SYNC_TARGET=$T sh -c "$cmd" </dev/null
  ;;
doctor)
  # Can a deploy create its state directory and flip the target here?
  d=$P
  while [ ! -e "$d" ]; do d=$(dirname -- "$d"); done
  printf 'parent=%s\\nexisting=%s\\n' "$P" "$d"
  if [ -d "$d" ] && [ -w "$d" ]; then printf 'writable=1\\n'; else printf 'writable=0\\n'; fi
  printf 'avail_kb=%s\\n' "$(df -Pk -- "$d" 2>/dev/null | awk 'NR == 2 { print $4 }')"
  ;;
*)
  die "unknown operation $op"
  ;;
esac
`;

/** Quotes one word for a POSIX shell: the only way config values reach a VM's shell. */
export function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** The command line that runs one agent operation: `sh -c SCRIPT vm-sync OP TARGET ARGS...`. */
export function agentCommand(op: string, target: string, ...args: string[]): string {
  return ['sh', '-c', AGENT_SCRIPT, 'vm-sync', op, target, ...args].map(shellQuote).join(' ');
}

/** Parses the `key=value` lines an agent operation prints (a repeated key keeps every value). */
export function parseAgentOutput(stdout: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of stdout.split('\n')) {
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    const key = line.slice(0, eq);
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}
